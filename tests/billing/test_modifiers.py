"""Modifiers (billing reference section 3): CQ/CO per unit, KX, order."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest

from fhir_server.billing.modifiers import (
    KxLine,
    TherapySpend,
    kx_lines,
    order_modifiers,
    over_de_minimis,
    split_timed_units,
    untimed_assistant,
)
from fhir_server.billing.rules import KxRules
from fhir_server.billing.units import pooled_units
from tests.billing.builders import MEDICARE

ASSISTANT = MEDICARE.assistant


def _kx() -> KxRules:
    assert MEDICARE.kx is not None
    return MEDICARE.kx


KX = _kx()


# --- CQ/CO: more than 10% by the assistant, judged per unit for timed codes ----------


def test_de_minimis_is_more_than_ten_percent() -> None:
    assert not over_de_minimis(3, 30, Decimal(10))  # exactly 10%: not "more than"
    assert over_de_minimis(4, 30, Decimal(10))
    assert not over_de_minimis(0, 30, Decimal(10))


def test_therapist_alone_and_assistant_alone() -> None:
    s = split_timed_units(2, 30, 0, ASSISTANT)
    assert (s.plain, s.assistant) == (2, 0)
    whole = split_timed_units(2, 0, 30, ASSISTANT)
    assert (whole.plain, whole.assistant) == (0, 2)
    assert "in whole" in whole.explanation


def test_cms_scenario_assistant_full_unit_and_shared_last_unit() -> None:
    """PTA 23 and PT 13 minutes of 97110, PT 30 minutes of 97140: 66 minutes, 4 units.
    97110 (36 min, 2 units): the PTA's full 15 minutes are one unit with CQ; the last
    unit (PTA 8, PT 13) goes to the PT, who furnished more of it."""
    units = pooled_units({"97110": 36, "97140": 30})
    assert units.total_units == 4 and dict(units.units) == {"97110": 2, "97140": 2}
    s = split_timed_units(units.units["97110"], 13, 23, ASSISTANT)
    assert (s.plain, s.assistant) == (1, 1)
    s = split_timed_units(units.units["97140"], 30, 0, ASSISTANT)
    assert (s.plain, s.assistant) == (2, 0)


def test_shared_single_unit_goes_to_the_assistant_with_more_minutes() -> None:
    s = split_timed_units(1, 5, 10, ASSISTANT)  # PTA 10 + PT 5 = one unit
    assert (s.plain, s.assistant) == (0, 1)


def test_shared_single_unit_goes_to_the_therapist_with_more_minutes() -> None:
    s = split_timed_units(1, 13, 8, ASSISTANT)
    assert (s.plain, s.assistant) == (1, 0)


def test_two_shared_units_of_9_to_14_minutes_each_split() -> None:
    for t, a in [(9, 14), (14, 9), (10, 14), (14, 14), (12, 12)]:
        s = split_timed_units(2, t, a, ASSISTANT)
        assert (s.plain, s.assistant) == (1, 1), (t, a)


def test_assistant_minutes_at_most_de_minimis_in_the_last_unit() -> None:
    s = split_timed_units(1, 13, 1, ASSISTANT)  # 1 of 14 minutes
    assert (s.plain, s.assistant) == (1, 0)


def test_equal_shares_follow_the_configured_tie() -> None:
    assert split_timed_units(1, 8, 8, ASSISTANT).assistant == 1
    therapist_tie = replace(ASSISTANT, residual_tie="therapist")
    assert split_timed_units(1, 8, 8, therapist_tie).assistant == 0


def test_de_minimis_residual_rule_is_a_setting() -> None:
    cy2020 = replace(ASSISTANT, residual_rule="de-minimis")
    s = split_timed_units(1, 13, 8, cy2020)  # 8 of 21 minutes > 10%
    assert (s.plain, s.assistant) == (0, 1)
    s = split_timed_units(1, 13, 1, cy2020)  # 1 of 14 minutes <= 10%
    assert (s.plain, s.assistant) == (1, 0)


def test_assistant_leftover_without_a_unit_is_not_billed() -> None:
    s = split_timed_units(1, 15, 5, ASSISTANT)  # 20 minutes -> 1 unit (the PT's)
    assert (s.plain, s.assistant) == (1, 0)


def test_thirty_minute_code_split() -> None:
    s = split_timed_units(2, 30, 20, ASSISTANT, unit_length=30)
    assert (s.plain, s.assistant) == (1, 1)


@pytest.mark.parametrize(
    ("t", "a", "expected"),
    [(27, 3, False), (26, 4, True), (29, 1, False), (0, 30, True)],
)
def test_untimed_codes_use_the_whole_service(t: int, a: int, expected: bool) -> None:
    with_mod, _ = untimed_assistant(t > 0, a > 0, t, a, ASSISTANT)
    assert with_mod is expected


def test_untimed_shared_without_minutes_gets_the_modifier() -> None:
    with_mod, why = untimed_assistant(True, True, None, None, ASSISTANT)
    assert with_mod and "not documented" in why
    assert untimed_assistant(True, False, None, None, ASSISTANT)[0] is False


def test_no_assistant_modifier_for_slp() -> None:
    assert "SLP" not in ASSISTANT.modifiers
    assert ASSISTANT.modifiers == {"PT": "CQ", "OT": "CO"}


# --- KX ------------------------------------------------------------------------------


def test_thresholds_of_the_reference() -> None:
    assert KX.thresholds == {
        2023: Decimal(2230),
        2024: Decimal(2330),
        2025: Decimal(2410),
        2026: Decimal(2480),
    }
    assert KX.group("PT") == KX.group("SLP") != KX.group("OT")
    assert KX.review_threshold == Decimal(3000)


def test_kx_from_the_line_that_passes_the_threshold() -> None:
    spend = [TherapySpend(2026, "PT-SLP", prior=Decimal("2000"), billed=Decimal("400"))]
    lines = [
        KxLine(0, 2026, "PT", Decimal("70")),  # 2470: within 2480
        KxLine(1, 2026, "PT", Decimal("10")),  # 2480: equal, not over
        KxLine(2, 2026, "SLP", Decimal("1")),  # 2481: over (PT and SLP share the threshold)
        KxLine(3, 2026, "PT", Decimal("50")),  # stays over
        KxLine(4, 2026, "OT", Decimal("500")),  # OT has its own threshold
    ]
    r = kx_lines(lines, spend, KX)
    assert r.lines == {2, 3}
    assert "2481 > threshold 2480" in r.notes[2]


def test_kx_uses_the_threshold_of_the_year() -> None:
    spend = [TherapySpend(2024, "OT", billed=Decimal("2400"))]
    r = kx_lines([KxLine(0, 2024, "OT", Decimal("1"))], spend, KX)
    assert r.lines == {0}  # 2401 > 2330 (2024), but would be within 2025's 2410
    r = kx_lines([KxLine(0, 2025, "OT", Decimal("1"))], spend, KX)
    assert r.lines == set()


def test_kx_year_without_threshold_and_review_amount() -> None:
    r = kx_lines([KxLine(0, 2031, "PT", Decimal("10"))], [], KX)
    assert r.missing_years == {2031} and not r.lines
    spend = [TherapySpend(2026, "PT-SLP", prior=Decimal("2990"))]
    r = kx_lines([KxLine(0, 2026, "PT", Decimal("20"))], spend, KX)
    assert r.lines == {0} and r.review == {"2026 PT-SLP": Decimal("3010")}


# --- order -----------------------------------------------------------------------------


def test_default_order_cq_59_discipline_kx() -> None:
    order = MEDICARE.modifier_order
    assert order_modifiers(["GP", "KX", "59", "CQ"], order) == ("CQ", "59", "GP", "KX")
    assert order_modifiers(["GO", "CO", "XU"], order) == ("CO", "XU", "GO")


def test_order_is_per_payer_and_keeps_unknown_modifiers_last() -> None:
    assert order_modifiers(["GP", "KX", "CQ"], ["GP", "CQ", "KX"]) == ("GP", "CQ", "KX")
    assert order_modifiers(["GA", "GP", "GP"], ["GP"]) == ("GP", "GA")
