"""Payer billing rules as data.

Everything a payer decides (how minutes become units, the tie-break of the 8-minute
rule, modifier order, the KX thresholds, NCCI handling, which documentation gates a
claim) lives in a rules file (``rules/default.json`` next to this module, or any JSON or
TOML file with the same layout) and is read into the frozen dataclasses below. No payer
rule is a constant in the code.

Layout::

    {"profiles": {"medicare": {...}, "cpt-per-code": {...}},
     "payers": {"Organization/acme": {"profile": "cpt-per-code", "kx": null, ...}}}

A Coverage selects its rules by its ``billing-profile`` code; an entry under
``payers`` (keyed by the Coverage's ``payor`` reference) starts from its ``profile`` and
overrides single settings (nested objects are merged key by key).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal, cast

UnitMethod = Literal["pooled-8-minute", "per-code"]
ResidualRule = Literal["majority", "de-minimis"]
ResidualTie = Literal["assistant", "therapist"]
UnknownTiming = Literal["warn", "hold"]

UNIT_METHODS: tuple[str, ...] = ("pooled-8-minute", "per-code")
TIE_BREAKS: tuple[str, ...] = ("total-minutes", "fee", "code", "code-desc")

RULES_DIRECTORY = Path(__file__).parent / "rules"
DEFAULT_RULES_FILE = RULES_DIRECTORY / "default.json"


class RulesError(ValueError):
    """A rules file that cannot be read."""


@dataclass(frozen=True, slots=True)
class AssistantRules:
    """CQ/CO: services furnished in whole or in part by a therapy assistant."""

    modifiers: Mapping[str, str]  # discipline -> modifier (no entry: no assistant billing)
    de_minimis_percent: Decimal = Decimal(10)
    # majority: a final unit shared by therapist and assistant goes to whoever furnished
    # more of its minutes (CY2022); de-minimis: CQ/CO as soon as the assistant's share of
    # the shared minutes is over the de minimis percentage (CY2020).
    residual_rule: ResidualRule = "majority"
    residual_tie: ResidualTie = "assistant"


@dataclass(frozen=True, slots=True)
class KxRules:
    """The KX modifier once the year's therapy spend passes the threshold."""

    thresholds: Mapping[int, Decimal]  # calendar year -> amount
    groups: Mapping[str, str]  # discipline -> threshold group (PT and SLP share one)
    modifier: str = "KX"
    review_threshold: Decimal | None = None

    def group(self, discipline: str) -> str:
        return self.groups.get(discipline, discipline)


@dataclass(frozen=True, slots=True)
class NcciRules:
    apply: bool = True
    bypass_modifier: str = "59"
    # indicator-1 pair whose time blocks are not documented: append the modifier with a
    # warning ("warn") or hold the claim ("hold")
    unknown_timing: UnknownTiming = "warn"


@dataclass(frozen=True, slots=True)
class CodeRef:
    system: str
    code: str


@dataclass(frozen=True, slots=True)
class PayerRules:
    """The billing rules of one payer (or billing profile)."""

    profile: str
    unit_method: UnitMethod
    tie_break: tuple[str, ...] = ("total-minutes", "code")
    modifier_order: tuple[str, ...] = ()
    max_modifiers: int = 4
    max_diagnosis_pointers: int = 4
    max_diagnoses: int = 12
    discipline_modifiers: Mapping[str, str] = field(default_factory=dict)
    assistant: AssistantRules = field(default_factory=lambda: AssistantRules({}))
    kx: KxRules | None = None
    ncci: NcciRules = field(default_factory=NcciRules)
    bundled_codes: frozenset[str] = frozenset()
    code_substitutions: Mapping[str, CodeRef] = field(default_factory=dict)
    requires_certification: bool = False
    certification_max_days: int = 90
    certification_signature_days: int = 30
    requires_progress_reports: bool = False
    progress_report_max_treatment_days: int = 10
    requires_prior_authorization: bool = False


@dataclass(frozen=True, slots=True)
class BillingRules:
    """All profiles and payer overrides of a rules file."""

    profiles: Mapping[str, PayerRules]
    payers: Mapping[str, PayerRules] = field(default_factory=dict)

    def for_payer(self, profile: str | None, payor: str | None = None) -> PayerRules | None:
        """The rules of a payer (by its reference), else of the billing profile."""
        if payor is not None and payor in self.payers:
            return self.payers[payor]
        return self.profiles.get(profile) if profile is not None else None


# --- parsing -------------------------------------------------------------------------

_PAYER_KEYS = {
    "profile",
    "unit_method",
    "tie_break",
    "modifier_order",
    "max_modifiers",
    "max_diagnosis_pointers",
    "max_diagnoses",
    "discipline_modifiers",
    "assistant",
    "kx",
    "ncci",
    "bundled_codes",
    "code_substitutions",
    "requires_certification",
    "certification_max_days",
    "certification_signature_days",
    "requires_progress_reports",
    "progress_report_max_treatment_days",
    "requires_prior_authorization",
}


def _obj(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise RulesError(f"{where}: expected an object")
    return cast(Mapping[str, Any], value)


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RulesError(f"{where}: expected a non-negative integer")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise RulesError(f"{where}: expected true or false")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise RulesError(f"{where}: expected a non-empty string")
    return value


def _strs(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise RulesError(f"{where}: expected a list of strings")
    return tuple(_str(v, f"{where}[{i}]") for i, v in enumerate(value))


def _str_map(value: Any, where: str) -> dict[str, str]:
    return {str(k): _str(v, f"{where}.{k}") for k, v in _obj(value, where).items()}


def _money(value: Any, where: str) -> Decimal:
    if isinstance(value, bool):
        raise RulesError(f"{where}: expected an amount")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise RulesError(f"{where}: '{value}' is not an amount") from None
    if not amount.is_finite() or amount < 0:
        raise RulesError(f"{where}: '{value}' is not an amount")
    return amount


def _choice(value: Any, allowed: Sequence[str], where: str) -> str:
    text = _str(value, where)
    if text not in allowed:
        raise RulesError(f"{where}: '{text}' is not one of {', '.join(allowed)}")
    return text


def _assistant(value: Any, where: str) -> AssistantRules:
    obj = _obj(value, where)
    unknown = set(obj) - {"modifiers", "de_minimis_percent", "residual_rule", "residual_tie"}
    if unknown:
        raise RulesError(f"{where}: unknown settings {sorted(unknown)}")
    return AssistantRules(
        modifiers=_str_map(obj.get("modifiers", {}), f"{where}.modifiers"),
        de_minimis_percent=_money(obj.get("de_minimis_percent", 10), f"{where}.de_minimis_percent"),
        residual_rule=cast(
            ResidualRule,
            _choice(
                obj.get("residual_rule", "majority"),
                ("majority", "de-minimis"),
                f"{where}.residual_rule",
            ),
        ),
        residual_tie=cast(
            ResidualTie,
            _choice(
                obj.get("residual_tie", "assistant"),
                ("assistant", "therapist"),
                f"{where}.residual_tie",
            ),
        ),
    )


def _kx(value: Any, where: str) -> KxRules | None:
    if value is None:
        return None
    obj = _obj(value, where)
    unknown = set(obj) - {"modifier", "groups", "thresholds", "review_threshold"}
    if unknown:
        raise RulesError(f"{where}: unknown settings {sorted(unknown)}")
    thresholds: dict[int, Decimal] = {}
    for year, amount in _obj(obj.get("thresholds", {}), f"{where}.thresholds").items():
        if not str(year).isdigit():
            raise RulesError(f"{where}.thresholds: '{year}' is not a year")
        thresholds[int(year)] = _money(amount, f"{where}.thresholds.{year}")
    review = obj.get("review_threshold")
    return KxRules(
        thresholds=thresholds,
        groups=_str_map(obj.get("groups", {}), f"{where}.groups"),
        modifier=_str(obj.get("modifier", "KX"), f"{where}.modifier"),
        review_threshold=None if review is None else _money(review, f"{where}.review_threshold"),
    )


def _ncci(value: Any, where: str) -> NcciRules:
    obj = _obj(value, where)
    unknown = set(obj) - {"apply", "bypass_modifier", "unknown_timing"}
    if unknown:
        raise RulesError(f"{where}: unknown settings {sorted(unknown)}")
    return NcciRules(
        apply=_bool(obj.get("apply", True), f"{where}.apply"),
        bypass_modifier=_str(obj.get("bypass_modifier", "59"), f"{where}.bypass_modifier"),
        unknown_timing=cast(
            UnknownTiming,
            _choice(obj.get("unknown_timing", "warn"), ("warn", "hold"), f"{where}.unknown_timing"),
        ),
    )


def _substitutions(value: Any, where: str) -> dict[str, CodeRef]:
    out: dict[str, CodeRef] = {}
    for code, target in _obj(value, where).items():
        t = _obj(target, f"{where}.{code}")
        out[str(code)] = CodeRef(
            _str(t.get("system"), f"{where}.{code}.system"),
            _str(t.get("code"), f"{where}.{code}.code"),
        )
    return out


def parse_payer_rules(profile: str, data: Mapping[str, Any], where: str = "") -> PayerRules:
    """One payer's rules from its (merged) settings object."""
    where = where or profile
    unknown = set(data) - _PAYER_KEYS
    if unknown:
        raise RulesError(f"{where}: unknown settings {sorted(unknown)}")
    tie_break = _strs(data.get("tie_break", ("total-minutes", "code")), f"{where}.tie_break")
    for key in tie_break:
        _choice(key, TIE_BREAKS, f"{where}.tie_break")
    return PayerRules(
        profile=profile,
        unit_method=cast(
            UnitMethod, _choice(data.get("unit_method"), UNIT_METHODS, f"{where}.unit_method")
        ),
        tie_break=tie_break,
        modifier_order=_strs(data.get("modifier_order", ()), f"{where}.modifier_order"),
        max_modifiers=_int(data.get("max_modifiers", 4), f"{where}.max_modifiers"),
        max_diagnosis_pointers=_int(
            data.get("max_diagnosis_pointers", 4), f"{where}.max_diagnosis_pointers"
        ),
        max_diagnoses=_int(data.get("max_diagnoses", 12), f"{where}.max_diagnoses"),
        discipline_modifiers=_str_map(
            data.get("discipline_modifiers", {}), f"{where}.discipline_modifiers"
        ),
        assistant=_assistant(data.get("assistant", {}), f"{where}.assistant"),
        kx=_kx(data.get("kx"), f"{where}.kx"),
        ncci=_ncci(data.get("ncci", {}), f"{where}.ncci"),
        bundled_codes=frozenset(_strs(data.get("bundled_codes", ()), f"{where}.bundled_codes")),
        code_substitutions=_substitutions(
            data.get("code_substitutions", {}), f"{where}.code_substitutions"
        ),
        requires_certification=_bool(
            data.get("requires_certification", False), f"{where}.requires_certification"
        ),
        certification_max_days=_int(
            data.get("certification_max_days", 90), f"{where}.certification_max_days"
        ),
        certification_signature_days=_int(
            data.get("certification_signature_days", 30), f"{where}.certification_signature_days"
        ),
        requires_progress_reports=_bool(
            data.get("requires_progress_reports", False), f"{where}.requires_progress_reports"
        ),
        progress_report_max_treatment_days=_int(
            data.get("progress_report_max_treatment_days", 10),
            f"{where}.progress_report_max_treatment_days",
        ),
        requires_prior_authorization=_bool(
            data.get("requires_prior_authorization", False),
            f"{where}.requires_prior_authorization",
        ),
    )


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_rules(data: Mapping[str, Any]) -> BillingRules:
    """The rules of a parsed rules document."""
    root = _obj(data, "rules")
    profiles_data = _obj(root.get("profiles", {}), "profiles")
    profiles = {
        name: parse_payer_rules(name, _obj(body, f"profiles.{name}"), f"profiles.{name}")
        for name, body in profiles_data.items()
    }
    payers: dict[str, PayerRules] = {}
    for payor, body in _obj(root.get("payers", {}), "payers").items():
        entry = dict(_obj(body, f"payers.{payor}"))
        profile = _str(entry.pop("profile", None), f"payers.{payor}.profile")
        if profile not in profiles_data:
            raise RulesError(f"payers.{payor}.profile: unknown profile '{profile}'")
        merged = _merge(_obj(profiles_data[profile], profile), entry)
        payers[payor] = parse_payer_rules(profile, merged, f"payers.{payor}")
    return BillingRules(profiles=profiles, payers=payers)


def load_rules(path: Path | None = None) -> BillingRules:
    """Read a rules file (``.json`` or ``.toml``); the shipped defaults without a path."""
    path = path or DEFAULT_RULES_FILE
    try:
        if path.suffix.lower() == ".toml":
            data: Any = tomllib.loads(path.read_text("utf-8"))
        else:
            data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise RulesError(f"{path.name}: {exc}") from None
    return parse_rules(_obj(data, path.name))
