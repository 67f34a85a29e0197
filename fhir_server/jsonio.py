"""Lossless JSON for FHIR resources.

FHIR decimals carry their precision in their text (``1.50`` is not ``1.5``), so JSON
numbers with a fraction or exponent are parsed into :class:`FhirDecimal`, a ``Decimal``
that remembers the exact text it was written as, and are written back as that text.
Integers stay Python ints. Everything else is plain dicts/lists/strings.

Duplicate object keys are rejected (a JSON object with a repeated property is not
valid FHIR JSON and silently keeping one of the values would lose data).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson


class FhirDecimal(Decimal):
    """A decimal that serialises back to the exact text it was parsed from."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> FhirDecimal:
        self = super().__new__(cls, text)
        self.text = text
        return self

    def __repr__(self) -> str:
        return f"FhirDecimal({self.text!r})"


class JsonError(ValueError):
    """The body is not JSON (or not JSON FHIR accepts)."""


class _DuplicateKey(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _DuplicateKey(k)
            seen.add(k)
    return out


def _reject_constant(name: str) -> Any:
    raise JsonError(f"{name} is not a valid JSON number")


_decoder = json.JSONDecoder(
    parse_float=FhirDecimal,
    object_pairs_hook=_pairs,
    parse_constant=_reject_constant,
)


def loads(data: bytes | str) -> Any:
    """Parse JSON text, keeping decimal text and rejecting duplicate keys."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
        if text.startswith("\ufeff"):
            text = text[1:]
        return _decoder.decode(text)
    except _DuplicateKey as exc:
        raise JsonError(f"duplicate JSON property '{exc.args[0]}'") from None
    except UnicodeDecodeError as exc:
        raise JsonError(f"body is not UTF-8: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise JsonError(
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise JsonError("JSON nested too deeply") from None


# Content this server stored was written by :func:`dumps` from a dict, so it has no
# repeated keys to look for: the C scanner builds the objects itself (2-3x faster).
_stored_decoder = json.JSONDecoder(parse_float=FhirDecimal, parse_constant=_reject_constant)


def loads_stored(data: bytes) -> Any:
    """Parse resource content as this server stored it (written by :func:`dumps`):
    as :func:`loads` gives it, without the check for repeated keys that such content
    cannot have."""
    try:
        return _stored_decoder.decode(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return loads(data)  # not what this server writes: the careful path says why


class Stored(bytes):
    """Resource content as this server stored it (written by :func:`dumps`), placed
    in a larger document to be serialised as it is, without parsing it first (a
    search Bundle of stored resources). :func:`resource` gives the dict."""

    __slots__ = ()


def resource(value: Any) -> Any:
    """``value`` itself, or the parsed resource of a :class:`Stored` one."""
    return loads_stored(value) if isinstance(value, Stored) else value


def _default(obj: Any) -> Any:
    if isinstance(obj, Stored):
        return orjson.Fragment(bytes(obj))
    if isinstance(obj, FhirDecimal):
        return orjson.Fragment(obj.text)
    if isinstance(obj, Decimal):
        return orjson.Fragment(str(obj))
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def _default_pretty(obj: Any) -> Any:
    if isinstance(obj, Stored):
        return loads_stored(obj)  # a fragment would be written unindented
    return _default(obj)


def dumps(obj: Any, *, pretty: bool = False) -> bytes:
    """Serialise to UTF-8 JSON bytes; FhirDecimal values keep their text."""
    if pretty:
        return orjson.dumps(obj, default=_default_pretty, option=orjson.OPT_INDENT_2)
    return orjson.dumps(obj, default=_default)
