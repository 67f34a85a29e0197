"""The unit rules of the billing reference, section 1: every worked example."""

from __future__ import annotations

import pytest

from fhir_server.billing.units import eight_minute_units, midpoint_units, pooled_units

# 1a: the 8-minute table (T -> units), at both ends of every range and beyond 97.
TABLE = [
    (0, 7, 0),
    (8, 22, 1),
    (23, 37, 2),
    (38, 52, 3),
    (53, 67, 4),
    (68, 82, 5),
    (83, 97, 6),
    (98, 112, 7),
    (113, 127, 8),
]


@pytest.mark.parametrize(("low", "high", "units"), TABLE)
def test_eight_minute_table(low: int, high: int, units: int) -> None:
    assert eight_minute_units(low) == units
    assert eight_minute_units(high) == units
    if low:
        assert eight_minute_units(low - 1) == units - 1


def test_eight_minute_table_adds_one_unit_per_15_minutes() -> None:
    for t in range(8, 600):
        assert eight_minute_units(t + 15) == eight_minute_units(t) + 1


# 1a: the CMS worked examples (inputs -> expected units).


def test_cms_example_24_and_23_minutes() -> None:
    r = pooled_units({"97112": 24, "97110": 23})
    assert r.total_minutes == 47 and r.total_units == 3
    assert dict(r.units) == {"97112": 2, "97110": 1}
    assert r.tie == ()


def test_cms_example_20_and_20_minutes_is_a_tie() -> None:
    r = pooled_units({"97112": 20, "97110": 20})
    assert r.total_minutes == 40 and r.total_units == 3
    assert sorted(r.units.values()) == [1, 2]  # either code may get two units
    assert set(r.tie) == {"97110", "97112"}


@pytest.mark.parametrize(
    ("tie_break", "winner"),
    [(("code",), "97110"), (("code-desc",), "97112"), (("total-minutes", "code"), "97110")],
)
def test_cms_example_tie_break_is_configurable(tie_break: tuple[str, ...], winner: str) -> None:
    r = pooled_units({"97112": 20, "97110": 20}, tie_break)
    assert r.units[winner] == 2 and r.remainder_units == (winner,)


def test_tie_break_by_fee() -> None:
    from decimal import Decimal

    fees = {"97112": Decimal("36"), "97110": Decimal("32")}
    assert pooled_units({"97112": 20, "97110": 20}, ("fee", "code"), fees).units["97112"] == 2


def test_cms_example_33_and_7_minutes_remainder_beats() -> None:
    r = pooled_units({"97110": 33, "97140": 7})
    assert r.total_minutes == 40 and r.total_units == 3
    assert dict(r.units) == {"97110": 2, "97140": 1}  # its 7-minute remainder beats 3


def test_cms_example_four_codes_49_minutes() -> None:
    r = pooled_units({"97110": 18, "97140": 13, "97116": 10, "97035": 8})
    assert r.total_minutes == 49 and r.total_units == 3
    assert dict(r.units) == {"97110": 1, "97140": 1, "97116": 1, "97035": 0}


def test_cms_example_three_codes_7_minutes_each() -> None:
    r = pooled_units({"97112": 7, "97110": 7, "97140": 7})
    assert r.total_minutes == 21 and r.total_units == 1
    assert sorted(r.units.values()) == [0, 0, 1]  # 1 unit, one code
    assert r.units["97110"] == 1  # the default tie-break: lowest code


def test_pooled_units_below_eight_minutes_bills_nothing() -> None:
    assert pooled_units({"97110": 7}).total_units == 0
    assert pooled_units({}).total_units == 0


def test_explanation_names_tie_break() -> None:
    r = pooled_units({"97112": 20, "97110": 20})
    assert "tie-break" in r.explain("97110", 20)
    assert "tie-break" not in r.explain("97112", 20)


# 1b: CPT "substantial portion" rule, each code on its own.


@pytest.mark.parametrize(
    ("minutes", "units"),
    [(0, 0), (7, 0), (8, 1), (15, 1), (22, 1), (23, 2), (24, 2), (33, 2), (37, 2), (38, 3)],
)
def test_cpt_rule_per_code(minutes: int, units: int) -> None:
    assert midpoint_units(minutes, 15) == units


@pytest.mark.parametrize(
    ("minutes", "cpt", "medicare"),
    [((24, 23), 4, 3), ((33, 7), 2, 3), ((10, 10, 10), 3, 2)],
)
def test_cpt_rule_against_medicare(minutes: tuple[int, ...], cpt: int, medicare: int) -> None:
    assert sum(midpoint_units(m, 15) for m in minutes) == cpt
    codes = {f"9711{i}": m for i, m in enumerate(minutes)}
    assert pooled_units(codes).total_units == medicare


# 1c: codes of other lengths use the midpoint rule.


@pytest.mark.parametrize(
    ("minutes", "units"), [(15, 0), (16, 1), (30, 1), (45, 1), (46, 2), (60, 2)]
)
def test_thirty_minute_code(minutes: int, units: int) -> None:
    assert midpoint_units(minutes, 30) == units  # 97550


@pytest.mark.parametrize(
    ("minutes", "units"), [(30, 0), (31, 1), (60, 1), (90, 1), (91, 2), (120, 2)]
)
def test_hourly_code(minutes: int, units: int) -> None:
    assert midpoint_units(minutes, 60) == units  # 92605, 96105, 96125


def test_negative_minutes_are_refused() -> None:
    with pytest.raises(ValueError):
        eight_minute_units(-1)
    with pytest.raises(ValueError):
        midpoint_units(-1)
    with pytest.raises(ValueError):
        pooled_units({"97110": -1})
    with pytest.raises(ValueError):
        pooled_units({"97110": 20, "97112": 20}, ("alphabet",))
