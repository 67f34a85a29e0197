"""From documented minutes to billed units.

* :func:`eight_minute_units` - the Medicare table (CMS Pub. 100-04 Ch.5 §20.2) for the
  total timed minutes of one date of service and one discipline.
* :func:`pooled_units` - the Medicare 8-minute rule over several 15-minute codes: the
  total from the table, distributed by full 15-minute blocks and then by the largest
  remainders; equal remainders are settled by a configurable tie-break.
* :func:`midpoint_units` - each code on its own: a unit once more than half of it is
  reached (the CPT "substantial portion" rule for 15-minute codes, and the midpoint rule
  for 30-minute and hourly codes).

Pure functions over plain values; every result carries a short explanation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

FIFTEEN = 15


def eight_minute_units(total_minutes: int) -> int:
    """Units for a total of timed minutes: 0-7 -> 0, 8-22 -> 1, 23-37 -> 2, ..."""
    if total_minutes < 0:
        raise ValueError("minutes cannot be negative")
    return 0 if total_minutes < 8 else (total_minutes + 7) // FIFTEEN


def midpoint_units(minutes: int, unit_length: int = FIFTEEN) -> int:
    """Units of one code on its own: full units plus one when the rest is more than half
    a unit (15-minute codes: 8 minutes or more)."""
    if minutes < 0:
        raise ValueError("minutes cannot be negative")
    if unit_length <= 0:
        raise ValueError("a unit must last at least one minute")
    full, rest = divmod(minutes, unit_length)
    return full + (1 if 2 * rest > unit_length else 0)


@dataclass(frozen=True, slots=True)
class PooledUnits:
    """The 8-minute rule over the 15-minute codes of one date and discipline."""

    total_minutes: int
    total_units: int
    units: Mapping[str, int]
    remainder_units: tuple[str, ...]  # codes that got a unit for their remainder
    tie: tuple[str, ...]  # codes with equal remainders at the cut, if a tie was broken

    def explain(self, code: str, minutes: int) -> str:
        full = minutes // FIFTEEN
        text = f"{full} full 15-minute block(s), remainder {minutes % FIFTEEN} min"
        if code in self.remainder_units:
            text += ", +1 unit for the remainder"
            if code in self.tie:
                text += " (tie-break)"
        return text


def _ranked(
    codes: Sequence[str],
    minutes: Mapping[str, int],
    tie_break: Sequence[str],
    fees: Mapping[str, Decimal],
) -> list[str]:
    """Codes by largest remainder, equal remainders settled by ``tie_break`` keys and
    finally by code, so the result never depends on the input order."""
    ranked = sorted(codes)
    for key in reversed(tie_break):
        if key == "total-minutes":
            ranked.sort(key=lambda c: minutes[c], reverse=True)
        elif key == "fee":
            ranked.sort(key=lambda c: fees.get(c, Decimal(0)), reverse=True)
        elif key == "code":
            ranked.sort()
        elif key == "code-desc":
            ranked.sort(reverse=True)
        else:
            raise ValueError(f"unknown tie-break '{key}'")
    ranked.sort(key=lambda c: minutes[c] % FIFTEEN, reverse=True)
    return ranked


def pooled_units(
    minutes: Mapping[str, int],
    tie_break: Sequence[str] = ("total-minutes", "code"),
    fees: Mapping[str, Decimal] | None = None,
) -> PooledUnits:
    """The Medicare 8-minute rule: ``minutes`` are the direct timed minutes per 15-minute
    code of one date of service and one discipline."""
    if any(m < 0 for m in minutes.values()):
        raise ValueError("minutes cannot be negative")
    total = sum(minutes.values())
    units_total = eight_minute_units(total)
    units = {code: m // FIFTEEN for code, m in minutes.items()}
    rest = units_total - sum(units.values())
    ranked = _ranked(list(minutes), minutes, tie_break, fees or {})
    winners = tuple(ranked[:rest]) if rest > 0 else ()
    for code in winners:
        units[code] += 1
    tie: tuple[str, ...] = ()
    if 0 < rest < len(ranked):
        cut = minutes[ranked[rest - 1]] % FIFTEEN
        if minutes[ranked[rest]] % FIFTEEN == cut:
            tie = tuple(c for c in ranked if minutes[c] % FIFTEEN == cut)
    return PooledUnits(total, units_total, units, winners, tie)
