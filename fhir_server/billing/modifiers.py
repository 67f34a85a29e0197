"""Claim line modifiers: assistant (CQ/CO), KX threshold, and their order.

The discipline modifier (GP/GO/GN) and the NCCI bypass modifier are chosen by the claim
builder from the payer rules; this module holds the decisions that need arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from fhir_server.billing.rules import AssistantRules, KxRules

# --- CQ / CO --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UnitSplit:
    """The units of one code split into units billed without and with the assistant
    modifier."""

    plain: int
    assistant: int
    explanation: str


def over_de_minimis(assistant_minutes: int, total_minutes: int, percent: Decimal) -> bool:
    """Whether the assistant furnished more than ``percent`` of the minutes."""
    if assistant_minutes <= 0 or total_minutes <= 0:
        return False
    return Decimal(assistant_minutes) * 100 > percent * Decimal(total_minutes)


def split_timed_units(
    units: int,
    therapist_minutes: int,
    assistant_minutes: int,
    rules: AssistantRules,
    unit_length: int = 15,
) -> UnitSplit:
    """Which billed units of a timed code carry CQ/CO, judged per unit.

    Full units the assistant furnished alone carry the modifier, full units the therapist
    furnished (alone or together with the assistant) do not. The remaining units cover
    the leftover minutes of both: under ``majority`` each goes to whoever furnished more
    of the minutes still unassigned (``residual_tie`` on equal minutes), so two shared
    units of 9-14 minutes each are one with and one without the modifier; under
    ``de-minimis`` they all carry it when the assistant's share of the leftover minutes
    is over the de minimis percentage.
    """
    if units <= 0:
        return UnitSplit(0, 0, "no unit billed")
    if assistant_minutes <= 0:
        return UnitSplit(units, 0, "furnished by the therapist")
    if therapist_minutes <= 0:
        return UnitSplit(0, units, "furnished in whole by the assistant")
    full_a, rest_a = divmod(assistant_minutes, unit_length)
    full_t, rest_t = divmod(therapist_minutes, unit_length)
    if units <= full_a + full_t:  # cannot happen with the payer unit rules; be cautious
        with_mod = min(full_a, units)
        return UnitSplit(units - with_mod, with_mod, f"{with_mod} full unit(s) by the assistant")
    plain, assistant = full_t, full_a
    residual = units - full_a - full_t
    detail = (
        f"full units: {full_t} therapist, {full_a} assistant; "
        f"{residual} shared unit(s) over {rest_t} therapist + {rest_a} assistant min"
    )
    if rules.residual_rule == "de-minimis":
        if over_de_minimis(rest_a, rest_a + rest_t, rules.de_minimis_percent):
            assistant += residual
            detail += f" -> assistant over {rules.de_minimis_percent}%"
        else:
            plain += residual
            detail += f" -> assistant at most {rules.de_minimis_percent}%"
        return UnitSplit(plain, assistant, detail)
    for _ in range(residual):
        to_assistant = rest_a > rest_t or (rest_a == rest_t and rules.residual_tie == "assistant")
        if to_assistant:
            assistant += 1
            rest_a = max(0, rest_a - unit_length)
        else:
            plain += 1
            rest_t = max(0, rest_t - unit_length)
    return UnitSplit(plain, assistant, detail + " -> each to whoever furnished more minutes")


def untimed_assistant(
    therapist: bool,
    assistant: bool,
    therapist_minutes: int | None,
    assistant_minutes: int | None,
    rules: AssistantRules,
) -> tuple[bool, str]:
    """Whether an untimed (per-service) code carries CQ/CO, and why."""
    if not assistant:
        return False, "furnished by the therapist"
    if not therapist:
        return True, "furnished in whole by the assistant"
    if therapist_minutes is None or assistant_minutes is None:
        return True, "assistant took part and the shares are not documented"
    total = therapist_minutes + assistant_minutes
    if over_de_minimis(assistant_minutes, total, rules.de_minimis_percent):
        return True, (
            f"assistant furnished {assistant_minutes} of {total} min, "
            f"over {rules.de_minimis_percent}%"
        )
    return False, (
        f"assistant furnished {assistant_minutes} of {total} min, "
        f"at most {rules.de_minimis_percent}%"
    )


# --- KX -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TherapySpend:
    """Therapy amounts already incurred in a calendar year for a threshold group: a
    configured prior amount (other providers) plus this practice's earlier claims."""

    year: int
    group: str
    prior: Decimal = Decimal(0)
    billed: Decimal = Decimal(0)

    @property
    def total(self) -> Decimal:
        return self.prior + self.billed


@dataclass(frozen=True, slots=True)
class KxLine:
    """A claim line's place in the threshold count."""

    key: int
    year: int
    discipline: str
    amount: Decimal


@dataclass(frozen=True, slots=True)
class KxResult:
    lines: frozenset[int]  # keys of lines that need KX
    notes: Mapping[int, str]  # key -> explanation
    missing_years: frozenset[int]  # years without a configured threshold
    review: Mapping[str, Decimal]  # "year group" -> running total past the review amount


def kx_lines(lines: Sequence[KxLine], spend: Iterable[TherapySpend], rules: KxRules) -> KxResult:
    """Lines (in the order given: date of service, then line order) that bring or keep
    the year-to-date amount of their threshold group over the year's threshold."""
    running: dict[tuple[int, str], Decimal] = {}
    for s in spend:
        key = (s.year, s.group)
        running[key] = running.get(key, Decimal(0)) + s.total
    marked: set[int] = set()
    notes: dict[int, str] = {}
    missing: set[int] = set()
    review: dict[str, Decimal] = {}
    for line in lines:
        group = rules.group(line.discipline)
        key = (line.year, group)
        before = running.get(key, Decimal(0))
        after = before + line.amount
        running[key] = after
        threshold = rules.thresholds.get(line.year)
        if threshold is None:
            missing.add(line.year)
            continue
        if after > threshold:
            marked.add(line.key)
            notes[line.key] = (
                f"{group} {line.year}: year-to-date {before} + {line.amount} = {after} "
                f"> threshold {threshold}"
            )
        else:
            notes[line.key] = (
                f"{group} {line.year}: year-to-date {after} within threshold {threshold}"
            )
        if rules.review_threshold is not None and after > rules.review_threshold:
            review[f"{line.year} {group}"] = after
    return KxResult(frozenset(marked), notes, frozenset(missing), review)


# --- order ----------------------------------------------------------------------------


def order_modifiers(modifiers: Iterable[str], order: Sequence[str]) -> tuple[str, ...]:
    """Modifiers without repeats, in the payer's order; unlisted ones after the listed
    ones, in the order they were added."""
    unique = list(dict.fromkeys(modifiers))
    rank = {m: i for i, m in enumerate(order)}
    return tuple(sorted(unique, key=lambda m: (rank.get(m, len(rank)), unique.index(m))))


ModifierSystem = Literal["cpt", "hcpcs"]


def modifier_system(modifier: str) -> ModifierSystem:
    """Two-digit modifiers are CPT modifiers, the others HCPCS level II."""
    return "cpt" if modifier.isdigit() else "hcpcs"
