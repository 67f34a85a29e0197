"""FHIR date/dateTime/instant text -> UTC instants (the store's sortable text form)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_DT_RE = re.compile(
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d+))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?"
)

INSTANT_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def format_instant(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime(INSTANT_FORMAT)


def parse_lower_bound(value: str) -> datetime:
    """The earliest moment a (possibly partial) FHIR date/dateTime/instant denotes.

    A value without a time zone is taken as UTC (the spec leaves it to the server).
    Raises ValueError for text that is not a FHIR date/dateTime/instant.
    """
    m = _DT_RE.fullmatch(value.strip())
    if not m:
        raise ValueError(f"not a FHIR dateTime: {value!r}")
    frac = (m["f"] or "0")[:6].ljust(6, "0")
    dt = datetime(
        int(m["y"]),
        int(m["m"] or 1),
        int(m["d"] or 1),
        int(m["H"] or 0),
        int(m["M"] or 0),
        int(m["S"] or 0),
        int(frac),
        tzinfo=UTC,
    )
    tz = m["tz"]
    if tz and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        dt -= sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
    return dt


def instant_lower_bound(value: str) -> str:
    return format_instant(parse_lower_bound(value))
