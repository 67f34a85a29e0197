"""NCCI procedure-to-procedure (PTP) pairs among the codes billed on one date.

The table is passed in as :class:`PtpPair` values (the terminology adapter builds them
from the CMS file loader). For each pair in force whose two codes are both billed:

* modifier indicator 0: the codes are never billed together -> ``not-allowed``;
* indicator 1 and the services were in separate time blocks -> ``bypass``: the bypass
  modifier goes on the column-2 code;
* indicator 1 and the time blocks overlap -> ``overlap``: not distinct, so no modifier;
* indicator 1 and the time blocks are not documented -> ``unknown-timing``;
* indicator 9 (not applicable): no finding.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Literal

Action = Literal["not-allowed", "bypass", "overlap", "unknown-timing"]


@dataclass(frozen=True, slots=True)
class PtpPair:
    column1: str
    column2: str
    modifier_indicator: int
    effective: date | None = None
    deletion: date | None = None  # first day the edit is no longer in force
    rationale: str = ""

    def in_force(self, on: date) -> bool:
        return (self.effective is None or self.effective <= on) and (
            self.deletion is None or on < self.deletion
        )


Interval = tuple[datetime, datetime]


@dataclass(frozen=True, slots=True)
class TimedCode:
    """A code billed on the date with the time blocks it was furnished in (empty when
    a block of it has no documented start and end)."""

    code: str
    blocks: tuple[Interval, ...] = ()
    complete: bool = False  # every service of the code has a start and an end


@dataclass(frozen=True, slots=True)
class NcciFinding:
    pair: PtpPair
    action: Action

    @property
    def column2(self) -> str:
        return self.pair.column2

    def describe(self) -> str:
        p = self.pair
        head = f"NCCI pair {p.column1}/{p.column2} (modifier indicator {p.modifier_indicator})"
        return {
            "not-allowed": f"{head}: never billed together; {p.column2} cannot be billed",
            "bypass": f"{head}: separate time blocks, modifier on {p.column2}",
            "overlap": f"{head}: same time block, so not distinct; {p.column2} cannot be billed",
            "unknown-timing": f"{head}: time blocks not documented; distinct services assumed",
        }[self.action]


def _overlap(a: Sequence[Interval], b: Sequence[Interval]) -> bool:
    return any(s1 < e2 and s2 < e1 for s1, e1 in a for s2, e2 in b)


def distinct(a: TimedCode, b: TimedCode) -> bool | None:
    """True when the codes' time blocks are documented and never overlap, False when
    some overlap, None when it cannot be told."""
    if a.blocks and b.blocks and _overlap(a.blocks, b.blocks):
        return False
    if a.complete and b.complete and a.blocks and b.blocks:
        return True
    return None


def evaluate(codes: Sequence[TimedCode], pairs: Iterable[PtpPair], on: date) -> list[NcciFinding]:
    """The findings among the codes billed together (one patient, one rendering provider,
    one date of service), ordered by column 1 then column 2."""
    by_code = {c.code.upper(): c for c in codes}
    findings: list[NcciFinding] = []
    for pair in pairs:
        c1, c2 = pair.column1.upper(), pair.column2.upper()
        if c1 == c2 or c1 not in by_code or c2 not in by_code or not pair.in_force(on):
            continue
        if pair.modifier_indicator == 0:
            findings.append(NcciFinding(pair, "not-allowed"))
        elif pair.modifier_indicator == 1:
            d = distinct(by_code[c1], by_code[c2])
            action: Action = "bypass" if d else "overlap" if d is False else "unknown-timing"
            findings.append(NcciFinding(pair, action))
    findings.sort(key=lambda f: (f.pair.column1, f.pair.column2))
    return findings
