"""Value normalisation: date ranges, numbers, strings, escaping."""

from __future__ import annotations

from decimal import Decimal

import pytest

from fhir_server.search import values

DAY = 86_400_000_000


@pytest.mark.parametrize(
    ("text", "width"),
    [
        ("2024", 366 * DAY),
        ("2023", 365 * DAY),
        ("2024-02", 29 * DAY),
        ("2023-02", 28 * DAY),
        ("2024-02-29", DAY),
        ("2024-02-29T10:15Z", 60_000_000),
        ("2024-02-29T10:15:00Z", 1_000_000),
        ("2024-02-29T10:15:00.5Z", 100_000),
        ("2024-02-29T10:15:00.123456789Z", 1),
    ],
)
def test_date_ranges_follow_precision(text: str, width: int) -> None:
    span = values.date_range(text)
    assert span is not None
    assert span[1] - span[0] + 1 == width


def test_timezones_and_epoch() -> None:
    assert values.date_range("1970-01-01T00:00:00Z") == (0, 999_999)
    assert values.date_range("1970-01-01T01:00:00+01:00") == (0, 999_999)
    assert values.date_range("1969-12-31T19:00:00-05:00") == (0, 999_999)
    assert values.date_range("0001-01-01")[0] < 0  # type: ignore[index]


@pytest.mark.parametrize("text", ["2024-13", "2023-02-29", "24-01-01", "2024-01-01T25:00Z", "x"])
def test_invalid_dates(text: str) -> None:
    assert values.date_range(text) is None


def test_format_instant_round_trips() -> None:
    for text in ("2024-02-29T10:15:00.123456Z", "1901-12-13T20:45:52.000001Z"):
        lo, _ = values.date_range(text)  # type: ignore[misc]
        assert values.format_instant(lo) == text


def test_number_ranges() -> None:
    assert values.number_range(Decimal("100")) == (99.5, 100.5)
    assert values.number_range(Decimal("1.50")) == (1.495, 1.505)
    assert values.number_range(Decimal("1e2")) == (50.0, 150.0)


def test_normalize() -> None:
    assert values.normalize("Zoë ÖLMEZ") == "zoe olmez"
    assert values.normalize("Straße") == "strasse"
    assert values.normalize("ABC") == "abc"


def test_escaping() -> None:
    assert values.split_escaped(r"a\,b,c", ",") == [r"a\,b", "c"]
    assert values.split_escaped(r"s|c|v", "|", 1) == ["s", "c|v"]
    assert values.unescape(r"a\,b\|c\$d\\e") == r"a,b|c$d\e"


@pytest.mark.parametrize(
    ("uri", "prefixes"),
    [
        (
            "http://acme.org/fhir/ValueSet/a",
            [
                "http://acme.org/fhir/ValueSet/a",
                "http://acme.org/fhir/ValueSet",
                "http://acme.org/fhir",
            ],
        ),
        ("http://acme.org/", ["http://acme.org/"]),
        ("urn:oid:1.2.3", ["urn:oid:1.2.3"]),
    ],
)
def test_uri_prefixes_stop_at_the_authority(uri: str, prefixes: list[str]) -> None:
    assert values.uri_prefixes(uri) == prefixes
