"""Checks of FHIR primitive values as they appear in JSON.

The JSON type comes from the JSON format rules (booleans are JSON ``true``/``false``,
integers and decimals are JSON numbers, everything else is a JSON string); the
lexical rules are the ``regex`` of each primitive type's StructureDefinition, matched
in full. Those regexes are written for XML Schema / Java, where ``\\s`` is ASCII
whitespace, so they are compiled with ``re.ASCII`` (otherwise a non-breaking space in
a string would be rejected).

Each checker returns ``None`` when the value is fine, else ``(issue code, message)``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from functools import cache
from typing import Any, Final

from fhir_server import definitions
from fhir_server.errors import IssueCode
from fhir_server.validation.options import (
    ValidationOptions,
    html_tag_in_markdown,
    html_tag_in_string,
    is_example_url,
)

Problem = tuple[IssueCode, str]
Checker = Callable[[Any], Problem | None]

INT32_MIN: Final = -(2**31)
INT32_MAX: Final = 2**31 - 1

# base64Binary's published regex, ``(\s*([0-9a-zA-Z\+/=]){4}\s*)+``, backtracks badly
# on large attachments; this one accepts the same language in linear time.
_BASE64_FAST: Final = re.compile(r"\s*(?:[0-9a-zA-Z+/=]{4}\s*)+", re.ASCII)

_DAYS: Final = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

# a urn:uuid: URI holds a UUID (RFC 4122: 8-4-4-4-12 hex digits; the uuid type asks
# for lowercase, but official examples use uppercase in uri elements)
_URN_UUID: Final = re.compile(
    r"urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_URI_TYPES: Final = frozenset({"uri", "url", "canonical"})


def _describe(value: Any) -> str:
    if value is True or value is False:
        return "JSON boolean " + ("true" if value else "false")
    if isinstance(value, int | float | Decimal):
        return f"JSON number {value}"
    if isinstance(value, str):
        return f"string '{_short(value)}'"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    if value is None:
        return "null"
    return type(value).__name__


def _a(type_name: str) -> str:
    return ("an " if type_name[0] in "aeiouAEIOU" else "a ") + type_name


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _valid_calendar_date(text: str) -> bool:
    """The regexes allow 2021-02-31; dates SHALL be valid dates."""
    if len(text) < 10 or text[4] != "-" or text[7] != "-":
        return True  # year or year-month only
    year, month, day = int(text[0:4]), int(text[5:7]), int(text[8:10])
    if month == 2 and day == 29:
        return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    return day <= _DAYS[month - 1]


def _boolean(value: Any) -> Problem | None:
    if value is True or value is False:
        return None
    return (
        "structure",
        f"expected a JSON boolean (true or false) for a boolean, found {_describe(value)}",
    )


def _integer_checker(type_name: str, low: int) -> Checker:
    def check(value: Any) -> Problem | None:
        if type(value) is not int:
            return (
                "structure",
                f"expected a JSON integer for {_a(type_name)}, found {_describe(value)}",
            )
        if value < low or value > INT32_MAX:
            return "value", f"{value} is out of range for {_a(type_name)} ({low}..{INT32_MAX})"
        return None

    return check


def _decimal(value: Any) -> Problem | None:
    if type(value) is int or isinstance(value, float | Decimal):
        if isinstance(value, Decimal) and not value.is_finite():
            return "value", f"{value} is not a valid decimal"
        return None
    return "structure", f"expected a JSON number for a decimal, found {_describe(value)}"


MAX_STRING = 1024 * 1024


def _string_checker(type_name: str, pattern: re.Pattern[str] | None, dates: bool) -> Checker:
    match = pattern.fullmatch if pattern is not None else None
    uri = type_name in _URI_TYPES

    def check(value: Any) -> Problem | None:
        if not isinstance(value, str):
            return (
                "structure",
                f"expected a JSON string for {_a(type_name)}, found {_describe(value)}",
            )
        if not value:
            return "value", f"empty string is not a valid {type_name} (use no value instead)"
        # datatypes.html#string: "strings SHALL NOT exceed 1MB (1024*1024 characters)";
        # counted in UTF-8 bytes as the reference validator does (base64 data included)
        if len(value) > MAX_STRING // 4 and len(value.encode()) > MAX_STRING:
            return "value", f"the value is longer than the maximum of 1 MB ({MAX_STRING} bytes)"
        if match is not None and match(value) is None:
            return "value", f"'{_short(value)}' is not a valid {type_name}"
        if dates and not _valid_calendar_date(value):
            return "value", f"'{value}' is not a valid {type_name}: no such calendar date"
        if uri and value.startswith("urn:uuid:") and _URN_UUID.fullmatch(value) is None:
            return (
                "value",
                f"'{_short(value)}' is not a valid urn:uuid: (a UUID is 8-4-4-4-12 hex digits)",
            )
        return None

    return check


def _xhtml(value: Any) -> Problem | None:
    if not isinstance(value, str):
        return "structure", f"expected a JSON string for xhtml, found {_describe(value)}"
    if not value.lstrip().startswith("<div"):
        return "value", "narrative xhtml must be a single <div> element"
    return None


@cache
def checker(type_name: str) -> Checker:
    """The checker of one primitive type (cached; regexes compiled once)."""
    if type_name == "boolean":
        return _boolean
    if type_name == "integer":
        return _integer_checker(type_name, INT32_MIN)
    if type_name == "unsignedInt":
        return _integer_checker(type_name, 0)
    if type_name == "positiveInt":
        return _integer_checker(type_name, 1)
    if type_name == "decimal":
        return _decimal
    if type_name == "xhtml":
        return _xhtml
    td = definitions.type_definition(type_name)
    pattern: re.Pattern[str] | None
    if type_name == "base64Binary":
        pattern = _BASE64_FAST
    else:
        pattern = re.compile(td.regex, re.ASCII) if td.regex else None
    return _string_checker(type_name, pattern, type_name in ("date", "dateTime", "instant"))


def check(type_name: str, value: Any) -> Problem | None:
    return checker(type_name)(value)


def _example_url(value: str) -> str | None:
    return value if is_example_url(value) else None


@cache
def policy_checker(type_name: str, options: ValidationOptions) -> Checker:
    """The checker of a primitive type with the checks ``options`` add (see
    :mod:`.options`): HTML in strings or markdown, example URLs."""
    base = checker(type_name)
    found: Callable[[str], str | None]
    if type_name == "string" and options.security_checks:
        found = html_tag_in_string
        message = (
            "the string contains text that looks like an HTML tag ({}): strings are plain "
            "text, and embedded markup is not allowed for security reasons"
        )
    elif type_name == "markdown" and not options.html_in_markdown:
        found = html_tag_in_markdown
        message = (
            "the markdown contains a raw HTML tag ({}): it will (or should) be escaped by "
            "the presentation layer; escape it as \\< if it is meant as text"
        )
    elif type_name in _URI_TYPES and not options.example_urls:
        found = _example_url
        message = "example URLs are not allowed in this context ({})"
    else:
        return base

    def check(value: Any) -> Problem | None:
        problem = base(value)
        if problem is not None or not isinstance(value, str):
            return problem
        hit = found(value)
        return None if hit is None else ("invalid", message.format(_short(hit)))

    return check
