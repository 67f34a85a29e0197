"""NCCI procedure-to-procedure pairs (billing reference section 4)."""

from __future__ import annotations

from datetime import UTC, date, datetime

from fhir_server.billing.ncci import PtpPair, TimedCode, distinct, evaluate

ON = date(2026, 10, 14)
PAIRS = [
    PtpPair("97140", "97530", 1),
    PtpPair("97012", "97140", 1),
    PtpPair("97161", "97140", 1),
    PtpPair("97110", "97164", 1),
    PtpPair("97113", "97110", 1),
    PtpPair("97530", "97116", 1),
    PtpPair("97150", "97535", 1),
    PtpPair("97150", "97110", 1),
    PtpPair("97999", "97110", 0),  # an indicator-0 pair (illustrative)
    PtpPair("97161", "97530", 1, date(2020, 1, 1), date(2020, 1, 1)),  # never in force
    PtpPair("97032", "97035", 9),
]


def block(h1: int, m1: int, h2: int, m2: int) -> tuple[datetime, datetime]:
    return (datetime(2026, 10, 14, h1, m1, tzinfo=UTC), datetime(2026, 10, 14, h2, m2, tzinfo=UTC))


def code(c: str, *blocks: tuple[datetime, datetime]) -> TimedCode:
    return TimedCode(c, blocks, complete=bool(blocks))


def test_separate_time_blocks_bypass_with_modifier_on_column_2() -> None:
    found = evaluate(
        [code("97140", block(9, 0, 9, 15)), code("97530", block(9, 15, 9, 30))], PAIRS, ON
    )
    assert [(f.column2, f.action) for f in found] == [("97530", "bypass")]
    assert "modifier on 97530" in found[0].describe()


def test_same_time_block_is_not_distinct() -> None:
    found = evaluate(
        [code("97140", block(9, 0, 9, 20)), code("97530", block(9, 10, 9, 30))], PAIRS, ON
    )
    assert [f.action for f in found] == ["overlap"]


def test_undocumented_time_blocks() -> None:
    found = evaluate([code("97140"), code("97530", block(9, 0, 9, 15))], PAIRS, ON)
    assert [f.action for f in found] == ["unknown-timing"]
    assert distinct(code("97140"), code("97530")) is None


def test_indicator_zero_is_never_allowed() -> None:
    found = evaluate([code("97110"), code("97999")], PAIRS, ON)
    assert [(f.pair.column1, f.action) for f in found] == [("97999", "not-allowed")]


def test_reevaluation_gets_the_modifier() -> None:
    found = evaluate(
        [code("97110", block(9, 0, 9, 30)), code("97164", block(9, 30, 10, 0))], PAIRS, ON
    )
    assert [(f.column2, f.action) for f in found] == [("97164", "bypass")]


def test_pairs_not_in_force_and_indicator_nine_are_ignored() -> None:
    assert evaluate([code("97161"), code("97530")], PAIRS, ON) == []
    assert evaluate([code("97032"), code("97035")], PAIRS, ON) == []
    late = [PtpPair("97140", "97530", 1, effective=date(2027, 1, 1))]
    assert evaluate([code("97140"), code("97530")], late, ON) == []


def test_several_pairs_among_the_codes_of_a_day() -> None:
    codes = [
        code("97150", block(9, 0, 9, 30)),
        code("97110", block(9, 30, 9, 45)),
        code("97113", block(10, 0, 10, 15)),
    ]
    found = evaluate(codes, PAIRS, ON)
    assert [(f.pair.column1, f.column2) for f in found] == [("97113", "97110"), ("97150", "97110")]
    assert {f.action for f in found} == {"bypass"}


def test_pairs_from_the_terminology_file_format() -> None:
    from fhir_server.billing.adapter import ptp_pairs
    from fhir_server.terminology.ncci import parse_ptp

    rows = [
        "Column 1\tColumn 2\t*\tEffective\tDeletion\tModifier\tRationale",
        "97140\t97530\t\t20200101\t*\t1\tsame time block",
    ]
    pairs = ptp_pairs(parse_ptp(rows))
    assert pairs == [PtpPair("97140", "97530", 1, date(2020, 1, 1), None, "same time block")]
