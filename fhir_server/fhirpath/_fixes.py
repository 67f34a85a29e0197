"""Corrections to fhirpathpy functions where it departs from the FHIRPath spec.

Each is a small wrapper around fhirpathpy's own implementation (looked up in its
registry) or a short replacement; :data:`FIXES` is merged into the invocation table.
Found by running the official FHIRPath test suite (see tests/fhirpath).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from fhir_server.fhirpath._fp import REGISTRY, get_data
from fhir_server.fhirpath._nodes import data_of

Fn = Callable[..., Any]


def _base(name: str) -> Fn:
    fn: Fn = REGISTRY[name]["fn"]
    return fn


def _empty_arg_gives_empty(name: str) -> dict[str, Any]:
    """String functions: an empty argument makes the result empty (not an error)."""
    base = _base(name)

    def fn(ctx: dict[str, Any], inputs: list[Any], *args: Any) -> Any:
        if any(isinstance(a, list) and not a for a in args):
            return []
        return base(ctx, inputs, *args)

    return _with(name, fn)


def _single_string(inputs: list[Any]) -> str | None:
    if len(inputs) != 1:
        if len(inputs) > 1:
            raise ValueError("expected a single string")
        return None
    value = data_of(inputs[0])
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def starts_with(ctx: dict[str, Any], inputs: list[Any], prefix: Any) -> Any:
    text = _single_string(inputs)
    if text is None or not isinstance(prefix, str):
        return []
    return text.startswith(prefix)


def ends_with(ctx: dict[str, Any], inputs: list[Any], suffix: Any) -> Any:
    text = _single_string(inputs)
    if text is None or not isinstance(suffix, str):
        return []
    return text.endswith(suffix)


def replace_matches(ctx: dict[str, Any], inputs: list[Any], regex: Any, repl: Any) -> Any:
    text = _single_string(inputs)
    if text is None or not isinstance(regex, str) or not isinstance(repl, str):
        return []
    if regex == "":
        return text
    return _base("replaceMatches")(ctx, inputs, regex, repl)


def to_string(ctx: dict[str, Any], inputs: list[Any]) -> Any:
    if len(inputs) != 1:
        return []
    value = get_data(inputs[0])
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return []
    return str(value)


_TRUE_STRINGS = frozenset({"true", "t", "yes", "y", "1", "1.0"})
_FALSE_STRINGS = frozenset({"false", "f", "no", "n", "0", "0.0"})


def to_boolean(ctx: dict[str, Any], inputs: list[Any]) -> Any:
    if len(inputs) != 1:
        return []
    value = get_data(inputs[0])
    if isinstance(value, bool):
        return value
    if isinstance(value, int | Decimal) and value in (0, 1):
        return value == 1
    if isinstance(value, str) and value.lower() in _TRUE_STRINGS | _FALSE_STRINGS:
        return value.lower() in _TRUE_STRINGS
    return []


def converts_to_boolean(ctx: dict[str, Any], inputs: list[Any]) -> Any:
    if len(inputs) != 1:
        return []
    return isinstance(to_boolean(ctx, inputs), bool)


def round_fn(ctx: dict[str, Any], inputs: list[Any], precision: Any = None) -> Any:
    if not inputs:
        return []
    if len(inputs) > 1:
        raise ValueError("round() needs a single number")
    value = get_data(inputs[0])
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise ValueError(f"round() needs a number, got {value!r}")
    places = 0 if precision is None or precision == [] else int(precision)
    if places < 0:
        raise ValueError("round() precision must be >= 0")
    return Decimal(value).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def not_fn(ctx: dict[str, Any], inputs: list[Any]) -> Any:
    if len(inputs) > 1:
        raise ValueError("not() needs a single boolean")
    return _base("not")(ctx, inputs)


def single(ctx: dict[str, Any], inputs: list[Any]) -> Any:
    if len(inputs) > 1:
        raise ValueError("single() was given more than one item")
    return inputs


def iif(ctx: dict[str, Any], inputs: list[Any], cond: Fn, ok: Fn, fail: Fn | None = None) -> Any:
    if len(inputs) > 1:
        raise ValueError("iif() cannot be called on a collection of more than one item")
    criterion = cond(inputs)
    if len(criterion) > 1:
        raise ValueError("iif() criterion must be a single boolean")
    if criterion and not isinstance(get_data(criterion[0]), bool):
        raise ValueError("iif() criterion must be a boolean")
    return _base("iif")(ctx, inputs, cond, ok, fail)


def _pairwise(base: Fn, ctx: dict[str, Any], left: list[Any], right: list[Any]) -> Any:
    """Collection equality: same length and equal item by item, in order."""
    if len(left) != len(right):
        return [False]
    results = [base(ctx, [a], [b]) for a, b in zip(left, right, strict=True)]
    if any(r == [] or r == [None] for r in results):
        return []
    return [all(r == [True] for r in results)]


def equal(ctx: dict[str, Any], left: list[Any], right: list[Any]) -> Any:
    if len(left) <= 1 or len(right) <= 1:
        return _base("=")(ctx, left, right)
    return _pairwise(_base("="), ctx, left, right)


def unequal(ctx: dict[str, Any], left: list[Any], right: list[Any]) -> Any:
    result = equal(ctx, left, right)
    return [not result[0]] if result and isinstance(result[0], bool) else result


def _equivalent_collections(ctx: dict[str, Any], left: list[Any], right: list[Any]) -> bool:
    """Equivalence ignores order: every item has a distinct equivalent partner."""
    if len(left) != len(right):
        return False
    unmatched = list(right)
    for item in left:
        for i, other in enumerate(unmatched):
            if _base("~")(ctx, [item], [other]) == [True]:
                del unmatched[i]
                break
        else:
            return False
    return True


def equivalent(ctx: dict[str, Any], left: list[Any], right: list[Any]) -> Any:
    if len(left) <= 1 and len(right) <= 1:
        return _base("~")(ctx, left, right)
    return [_equivalent_collections(ctx, left, right)]


def not_equivalent(ctx: dict[str, Any], left: list[Any], right: list[Any]) -> Any:
    result = equivalent(ctx, left, right)
    return [not result[0]]


def _plain(inputs: list[Any]) -> list[Any]:
    return [get_data(item) for item in inputs]


def sum_fn(ctx: dict[str, Any], inputs: list[Any]) -> Any:
    values = _plain(inputs)
    if not values:
        return 0
    return _base("sum")(ctx, values)


def min_fn(ctx: dict[str, Any], inputs: list[Any]) -> Any:
    return _base("min")(ctx, _plain(inputs))


def max_fn(ctx: dict[str, Any], inputs: list[Any]) -> Any:
    return _base("max")(ctx, _plain(inputs))


def avg_fn(ctx: dict[str, Any], inputs: list[Any]) -> Any:
    return _base("avg")(ctx, _plain(inputs))


def _with(name: str, fn: Fn) -> dict[str, Any]:
    """fhirpathpy's registry entry for ``name`` (its arity etc.) with another function."""
    entry: dict[str, Any] = {**REGISTRY[name], "fn": fn}
    return entry


FIXES: dict[str, dict[str, Any]] = {
    **{
        name: _empty_arg_gives_empty(name)
        for name in ("indexOf", "substring", "contains", "replace", "matches", "split", "join")
    },
    "startsWith": _with("startsWith", starts_with),
    "endsWith": _with("endsWith", ends_with),
    "replaceMatches": _with("replaceMatches", replace_matches),
    "toString": _with("toString", to_string),
    "toBoolean": _with("toBoolean", to_boolean),
    "convertsToBoolean": _with("convertsToBoolean", converts_to_boolean),
    "round": {"fn": round_fn, "arity": {0: [], 1: ["Integer"]}},
    "not": _with("not", not_fn),
    "single": _with("single", single),
    "iif": _with("iif", iif),
    "sum": _with("sum", sum_fn),
    "min": _with("min", min_fn),
    "max": _with("max", max_fn),
    "avg": _with("avg", avg_fn),
    "=": _with("=", equal),
    "!=": _with("!=", unequal),
    "~": _with("~", equivalent),
    "!~": _with("!~", not_equivalent),
}


def number_literal(ctx: dict[str, Any], parent_data: Any, node: dict[str, Any]) -> list[Any]:
    """``1.0`` is a Decimal, not the Integer 1 (fhirpathpy folds integral decimals)."""
    text: str = node["text"]
    return [Decimal(text)] if "." in text else [int(text)]


_STRING_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|.)", re.DOTALL)
_STRING_ESCAPES = {"r": "\r", "n": "\n", "t": "\t", "f": "\f"}


def _unescape(match: re.Match[str]) -> str:
    code = match[1]
    if len(code) == 5:
        return chr(int(code[1:], 16))
    return _STRING_ESCAPES.get(code, code)  # \' \" \` \\ \/ stand for themselves


def string_literal(ctx: dict[str, Any], parent_data: Any, node: dict[str, Any]) -> list[Any]:
    """Unescape a string literal in one pass (fhirpathpy turns ``\\\\n`` into ``\\`` + newline)."""
    text: str = node["text"]
    return [_STRING_ESCAPE.sub(_unescape, text[1:-1])]
