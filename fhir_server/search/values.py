"""Value normalisation shared by index extraction and query parsing.

- strings: :func:`normalize` (accents removed, case folded) so that the default string
  search is a case- and accent-insensitive prefix match;
- dates: :func:`date_range` turns a FHIR date/dateTime/instant (or a search date) into a
  closed range ``[lo, hi]`` of integer microseconds since 1970-01-01T00:00:00Z, the
  range being implied by the value's precision (``2013`` is the whole year);
- numbers: :func:`number_range` gives the half-open range implied by a decimal's
  precision (``100`` is ``[99.5, 100.5)``, ``1.50`` is ``[1.495, 1.505)``).

Values without a timezone are taken as UTC.
"""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal, InvalidOperation
from functools import lru_cache

# Open ends of date ranges (a Period without start/end).
MIN_TIME = -(2**62)
MAX_TIME = 2**62

_US_PER_SECOND = 1_000_000
_US_PER_DAY = 86_400 * _US_PER_SECOND

_DATE_RE = re.compile(
    r"(?P<y>[0-9]{4})"
    r"(?:-(?P<m>[0-9]{2})"
    r"(?:-(?P<d>[0-9]{2})"
    r"(?:T(?P<hh>[0-9]{2}):(?P<mi>[0-9]{2})"
    r"(?::(?P<ss>[0-9]{2})(?:\.(?P<frac>[0-9]+))?)?"
    r"(?P<tz>Z|[+-][0-9]{2}:[0-9]{2})?"
    r")?)?)?"
)


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date."""
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _days_in_month(y: int, m: int) -> int:
    if m == 2:
        return 29 if (y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)) else 28
    return 30 if m in (4, 6, 9, 11) else 31


@lru_cache(maxsize=8192)
def date_range(text: str) -> tuple[int, int] | None:
    """The closed range of microseconds covered by a date/dateTime/instant, or None."""
    m = _DATE_RE.fullmatch(text)
    if m is None:
        return None
    y = int(m["y"])
    if m["m"] is None:
        return (
            _days_from_civil(y, 1, 1) * _US_PER_DAY,
            _days_from_civil(y + 1, 1, 1) * _US_PER_DAY - 1,
        )
    mo = int(m["m"])
    if not 1 <= mo <= 12:
        return None
    if m["d"] is None:
        start = _days_from_civil(y, mo, 1) * _US_PER_DAY
        return start, start + _days_in_month(y, mo) * _US_PER_DAY - 1
    d = int(m["d"])
    if not 1 <= d <= _days_in_month(y, mo):
        return None
    day = _days_from_civil(y, mo, d) * _US_PER_DAY
    if m["hh"] is None:
        return day, day + _US_PER_DAY - 1
    hh, mi = int(m["hh"]), int(m["mi"])
    if hh > 24 or mi > 59 or (hh == 24 and mi != 0):
        return None
    start = day + (hh * 3600 + mi * 60) * _US_PER_SECOND
    tz = m["tz"]
    if tz and tz != "Z":
        offset = (int(tz[1:3]) * 3600 + int(tz[4:6]) * 60) * _US_PER_SECOND
        start -= offset if tz[0] == "+" else -offset
    if m["ss"] is None:
        return start, start + 60 * _US_PER_SECOND - 1
    ss = int(m["ss"])
    if ss > 60:
        return None
    start += ss * _US_PER_SECOND
    frac = m["frac"]
    if not frac:
        return start, start + _US_PER_SECOND - 1
    digits = min(len(frac), 6)
    start += int(frac[:digits].ljust(6, "0"))
    return start, start + 10 ** (6 - digits) - 1


def format_instant(us: int) -> str:
    """Microseconds since the epoch as a FHIR instant (UTC)."""
    days, rest = divmod(us, _US_PER_DAY)
    # civil_from_days
    z = days + 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + (3 if mp < 10 else -9)
    y += m <= 2
    secs, micro = divmod(rest, _US_PER_SECOND)
    hh, secs = divmod(secs, 3600)
    mi, ss = divmod(secs, 60)
    return f"{y:04d}-{m:02d}-{d:02d}T{hh:02d}:{mi:02d}:{ss:02d}.{micro:06d}Z"


def normalize(text: str) -> str:
    """Lower-case and accent-free form used for string search."""
    if text.isascii():
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def parse_decimal(text: str) -> Decimal | None:
    try:
        value = Decimal(text)
    except (InvalidOperation, ValueError):
        return None
    if not value.is_finite():
        return None
    return value


def number_range(value: Decimal) -> tuple[float, float]:
    """The half-open range ``[lo, hi)`` implied by the precision of ``value``."""
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    half = Decimal(5).scaleb(exponent - 1)
    return float(value - half), float(value + half)


def unescape(text: str) -> str:
    """Undo search value escaping (``\\,`` ``\\$`` ``\\|`` ``\\\\``)."""
    if "\\" not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def split_escaped(text: str, sep: str, maxsplit: int = -1) -> list[str]:
    """Split on ``sep`` where it is not escaped with a backslash (parts stay escaped)."""
    if sep not in text:
        return [text]
    parts: list[str] = []
    start = 0
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == sep and (maxsplit < 0 or len(parts) < maxsplit):
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def uri_prefixes(uri: str) -> list[str]:
    """``uri`` and its parents, down to the authority: the values a ``:above`` search
    on a uri matches (search.html#uri)."""
    out = [uri]
    scheme_end = uri.find("://")
    floor = uri.find("/", scheme_end + 3) if scheme_end >= 0 else -1
    current = uri.rstrip("/")
    while True:
        cut = current.rfind("/")
        if cut <= floor or cut < 0:
            break
        current = current[:cut]
        out.append(current)
    return out
