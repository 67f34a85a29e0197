"""Invariants of the unit rules, over random minutes."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from fhir_server.billing.units import eight_minute_units, midpoint_units, pooled_units

CODES = ["97110", "97112", "97116", "97140", "97530", "97535", "97035", "97032"]

minutes_by_code = st.dictionaries(
    st.sampled_from(CODES), st.integers(min_value=0, max_value=180), max_size=len(CODES)
)
tie_breaks = st.lists(
    st.sampled_from(["total-minutes", "fee", "code", "code-desc"]), max_size=3, unique=True
)


@given(minutes_by_code, tie_breaks)
def test_total_units_follow_the_table(minutes: dict[str, int], tie: list[str]) -> None:
    r = pooled_units(minutes, tie)
    assert sum(r.units.values()) == r.total_units == eight_minute_units(sum(minutes.values()))


@given(minutes_by_code, tie_breaks)
def test_each_code_gets_its_full_blocks_and_at_most_one_more(
    minutes: dict[str, int], tie: list[str]
) -> None:
    r = pooled_units(minutes, tie)
    for code, m in minutes.items():
        assert m // 15 <= r.units[code] <= m // 15 + 1


@given(minutes_by_code, tie_breaks, st.randoms(use_true_random=False))
def test_order_of_the_codes_does_not_matter(
    minutes: dict[str, int], tie: list[str], rnd: random.Random
) -> None:
    shuffled_items = list(minutes.items())
    rnd.shuffle(shuffled_items)
    assert pooled_units(dict(shuffled_items), tie).units == pooled_units(minutes, tie).units


@given(minutes_by_code)
def test_a_larger_remainder_never_loses_to_a_smaller_one(minutes: dict[str, int]) -> None:
    r = pooled_units(minutes)
    extra = {c for c in minutes if r.units[c] > minutes[c] // 15}
    for winner in extra:
        for other in set(minutes) - extra:
            assert minutes[winner] % 15 >= minutes[other] % 15


@given(minutes_by_code, st.sampled_from(CODES), st.integers(min_value=0, max_value=180))
def test_cpt_rule_of_a_code_ignores_the_other_codes(
    minutes: dict[str, int], code: str, own: int
) -> None:
    alone = midpoint_units(own, 15)
    together = {**minutes, code: own}
    assert {c: midpoint_units(m, 15) for c, m in together.items()}[code] == alone
    assert alone == own // 15 + (1 if own % 15 >= 8 else 0)


@given(st.integers(min_value=0, max_value=1000), st.sampled_from([15, 30, 60]))
def test_midpoint_rule_bounds(minutes: int, length: int) -> None:
    units = midpoint_units(minutes, length)
    assert minutes // length <= units <= minutes // length + 1
    assert units * length - length // 2 <= minutes + length // 2  # never a unit below half


@given(st.integers(min_value=0, max_value=1000))
def test_a_single_code_is_billed_the_same_by_both_rules(minutes: int) -> None:
    assert pooled_units({"97110": minutes}).total_units == midpoint_units(minutes, 15)
