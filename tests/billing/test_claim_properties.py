"""Invariants of whole claims over random sessions."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_server.billing import build_claim
from fhir_server.billing.units import eight_minute_units, midpoint_units
from tests.billing.builders import COMMERCIAL, billing_input, encounter, procedure

TIMED = ["97110", "97112", "97116", "97140", "97530", "97035"]
PTA = "PractitionerRole/role-pta-lee"

services = st.lists(
    st.tuples(
        st.sampled_from(TIMED),
        st.integers(min_value=1, max_value=60),
        st.sampled_from(["therapist", "assistant"]),
    ),
    min_size=1,
    max_size=8,
)


def _procs(rows: list[tuple[str, int, str]]) -> list[dict[str, object]]:
    return [
        procedure(
            f"p{i}",
            code,
            mins,
            function=fn,
            actor=PTA if fn == "assistant" else "PractitionerRole/role-pt-jones",
        )
        for i, (code, mins, fn) in enumerate(rows)
    ]


@settings(max_examples=60, deadline=None)
@given(services, st.randoms(use_true_random=False))
def test_medicare_claim_units_and_order_independence(
    rows: list[tuple[str, int, str]], rnd: random.Random
) -> None:
    procs = _procs(rows)
    draft = build_claim(billing_input([encounter()], procs))
    shuffled = list(procs)
    rnd.shuffle(shuffled)
    again = build_claim(billing_input([encounter()], shuffled))
    assert draft.lines == again.lines and draft.claim == again.claim
    total = sum(m for _, m, _ in rows)
    assert sum(line.units for line in draft.lines) == eight_minute_units(total)
    seen: dict[tuple[str, bool], int] = {}
    for line in draft.lines:
        key = (line.code, line.assistant)
        assert key not in seen  # one line per code (and assistant modifier) per date
        seen[key] = line.units
        assert ("CQ" in line.modifiers) is line.assistant
        assert line.modifiers[-1] in ("GP", "KX") and len(line.modifiers) <= 4
    for code in {c for c, _, _ in rows}:
        minutes = sum(m for c, m, _ in rows if c == code)
        billed = sum(n for (c, _), n in seen.items() if c == code)
        assert minutes // 15 <= billed <= minutes // 15 + 1
        if all(fn == "therapist" for c, _, fn in rows if c == code):
            assert (code, True) not in seen


@settings(max_examples=40, deadline=None)
@given(services)
def test_per_code_payer_bills_each_code_on_its_own(rows: list[tuple[str, int, str]]) -> None:
    draft = build_claim(billing_input([encounter()], _procs(rows), rules=COMMERCIAL))
    for code in {c for c, _, _ in rows}:
        minutes = sum(m for c, m, _ in rows if c == code)
        billed = sum(line.units for line in draft.lines if line.code == code)
        assert billed == midpoint_units(minutes, 15)
