"""PATCH bodies: JSON Patch (RFC 6902) and FHIRPath Patch, as pure functions.

Spec: https://hl7.org/fhir/R4/http.html#patch and https://hl7.org/fhir/R4/fhirpatch.html

Both functions return a new resource and leave their input untouched; the whole patch
applies or none of it does. A patch document that is malformed raises FhirError 400;
a well-formed patch that cannot be applied to this resource (a failed ``test``, a path
that selects nothing, ...) raises FhirError 422. The issue's diagnostics name the
failing operation by its 0-based index. Neither function validates the result against
the structure definitions: the caller does that.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from fhir_server import definitions
from fhir_server.errors import FhirError, bad_request, error
from fhir_server.fhirpath import (
    ElementInfo,
    FhirPathError,
    Location,
    compile_expression,
    element_info,
    locate,
)

__all__ = [
    "Repeats",
    "apply_fhirpath_patch",
    "apply_json_patch",
    "element_repeats",
    "parse_pointer",
]

Json = Any
Repeats = Callable[[str], bool | None]
"""Whether an element repeats (max ``*``), by ElementDefinition path, e.g.
``HumanName.given``; None when unknown."""


class _Failure(Exception):
    """An operation that cannot be applied to this resource (-> 422)."""


def _copy(value: Json) -> Json:
    """Deep copy of JSON data (scalars, FhirDecimal included, are immutable)."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _unprocessable(diagnostics: str, *expression: str) -> FhirError:
    return FhirError(422, (error("processing", diagnostics, *expression),))


# =================================================================================
# JSON Patch (RFC 6902)
# =================================================================================

_NEEDS = {
    "add": ("value",),
    "remove": (),
    "replace": ("value",),
    "move": ("from",),
    "copy": ("from",),
    "test": ("value",),
}
_BAD_ESCAPE = re.compile(r"~(?![01])")
_ARRAY_INDEX = re.compile(r"0|[1-9][0-9]*")


@dataclass(frozen=True, slots=True)
class _JsonOp:
    op: str
    path: tuple[str, ...]
    path_text: str
    source: tuple[str, ...] | None
    value: Json

    def describe(self) -> str:
        return f"{self.op} {self.path_text or '(root)'}"


def parse_pointer(text: str) -> tuple[str, ...]:
    """An RFC 6901 JSON Pointer as its reference tokens (``~1`` is ``/``, ``~0`` is ``~``)."""
    if text == "":
        return ()
    if not text.startswith("/"):
        raise ValueError(f"JSON Pointer '{text}' does not start with '/'")
    tokens = text[1:].split("/")
    if any(_BAD_ESCAPE.search(t) for t in tokens):
        raise ValueError(f"JSON Pointer '{text}' has a '~' not followed by 0 or 1")
    return tuple(t.replace("~1", "/").replace("~0", "~") for t in tokens)


def _parse_json_patch(operations: Any) -> list[_JsonOp]:
    if not isinstance(operations, list):
        raise bad_request("A JSON Patch document must be a JSON array of operations")
    return [_parse_json_op(i, raw) for i, raw in enumerate(operations)]


def _parse_json_op(i: int, raw: Any) -> _JsonOp:
    if not isinstance(raw, dict):
        raise bad_request(f"JSON Patch operation {i} is not a JSON object")
    op = raw.get("op")
    if op not in _NEEDS:
        raise bad_request(
            f"JSON Patch operation {i}: 'op' must be one of {', '.join(_NEEDS)}, not {op!r}"
        )
    for member in ("path", *_NEEDS[op]):
        if member not in raw:
            raise bad_request(f"JSON Patch operation {i} ({op}) has no '{member}'")
    path = _pointer(i, op, raw, "path")
    source = _pointer(i, op, raw, "from") if "from" in _NEEDS[op] else None
    return _JsonOp(op, path, raw["path"], source, raw.get("value"))


def _pointer(i: int, op: str, raw: dict[str, Any], member: str) -> tuple[str, ...]:
    text = raw[member]
    if not isinstance(text, str):
        raise bad_request(f"JSON Patch operation {i} ({op}): '{member}' must be a string")
    try:
        return parse_pointer(text)
    except ValueError as exc:
        raise bad_request(f"JSON Patch operation {i} ({op}): {exc}") from None


def apply_json_patch(resource: dict[str, Any], operations: Any) -> dict[str, Any]:
    """Apply an RFC 6902 JSON Patch document to a copy of ``resource``."""
    ops = _parse_json_patch(operations)
    doc: Json = _copy(resource)
    for i, op in enumerate(ops):
        try:
            doc = _JSON_APPLY[op.op](doc, op)
        except _Failure as exc:
            raise _unprocessable(
                f"JSON Patch operation {i} ({op.describe()}) failed: {exc}"
            ) from None
    if not isinstance(doc, dict):
        raise _unprocessable("The patched document is not a JSON object, so not a resource")
    return doc


def _show(tokens: Sequence[str]) -> str:
    return "".join("/" + t.replace("~", "~0").replace("/", "~1") for t in tokens) or "(root)"


def _step(node: Json, token: str, tokens: Sequence[str]) -> Json:
    if isinstance(node, dict):
        if token not in node:
            raise _Failure(f"path {_show(tokens)} does not exist")
        return node[token]
    if isinstance(node, list):
        return node[_existing_index(node, token, tokens)]
    raise _Failure(f"path {_show(tokens)} does not exist ({_show(tokens[:-1])} is not a container)")


def _existing_index(array: list[Any], token: str, tokens: Sequence[str]) -> int:
    if not _ARRAY_INDEX.fullmatch(token) or int(token) >= len(array):
        raise _Failure(f"path {_show(tokens)} does not exist (no array element '{token}')")
    return int(token)


def _get(doc: Json, path: Sequence[str]) -> Json:
    node = doc
    for n, token in enumerate(path):
        node = _step(node, token, path[: n + 1])
    return node


def _parent(doc: Json, path: Sequence[str]) -> Json:
    return _get(doc, path[:-1])


def _add(doc: Json, path: Sequence[str], value: Json) -> Json:
    if not path:
        return value
    parent, last = _parent(doc, path), path[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif _ARRAY_INDEX.fullmatch(last) and int(last) <= len(parent):
            parent.insert(int(last), value)
        else:
            raise _Failure(f"array index '{last}' is out of range for {_show(path[:-1])}")
    else:
        raise _Failure(f"{_show(path[:-1])} is not an object or array")
    return doc


def _remove(doc: Json, path: Sequence[str]) -> Json:
    if not path:
        raise _Failure("cannot remove the whole document")
    parent, last = _parent(doc, path), path[-1]
    if isinstance(parent, dict):
        _step(parent, last, path)
        del parent[last]
    elif isinstance(parent, list):
        del parent[_existing_index(parent, last, path)]
    else:
        raise _Failure(f"path {_show(path)} does not exist")
    return doc


def _json_add(doc: Json, op: _JsonOp) -> Json:
    return _add(doc, op.path, _copy(op.value))


def _json_remove(doc: Json, op: _JsonOp) -> Json:
    return _remove(doc, op.path)


def _json_replace(doc: Json, op: _JsonOp) -> Json:
    if not op.path:
        return _copy(op.value)
    parent, last = _parent(doc, op.path), op.path[-1]
    if isinstance(parent, dict):
        _step(parent, last, op.path)  # must exist
        parent[last] = _copy(op.value)
    elif isinstance(parent, list):
        parent[_existing_index(parent, last, op.path)] = _copy(op.value)
    else:
        raise _Failure(f"path {_show(op.path)} does not exist")
    return doc


def _json_move(doc: Json, op: _JsonOp) -> Json:
    assert op.source is not None
    value = _get(doc, op.source)
    if op.path == op.source:
        return doc
    if op.path[: len(op.source)] == op.source:
        raise _Failure(f"cannot move {_show(op.source)} into one of its own children")
    doc = _remove(doc, op.source)
    return _add(doc, op.path, value)


def _json_copy(doc: Json, op: _JsonOp) -> Json:
    assert op.source is not None
    return _add(doc, op.path, _copy(_get(doc, op.source)))


def _json_test(doc: Json, op: _JsonOp) -> Json:
    if not json_equal(_get(doc, op.path), op.value):
        raise _Failure(f"the value at {_show(op.path)} is not the value the test expects")
    return doc


_JSON_APPLY: dict[str, Callable[[Json, _JsonOp], Json]] = {
    "add": _json_add,
    "remove": _json_remove,
    "replace": _json_replace,
    "move": _json_move,
    "copy": _json_copy,
    "test": _json_test,
}


def _is_number(value: Json) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def json_equal(a: Json, b: Json) -> bool:
    """RFC 6902 equality: same JSON type and value (numbers compare numerically)."""
    if _is_number(a) or _is_number(b):
        return _is_number(a) and _is_number(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


# =================================================================================
# FHIRPath Patch
# =================================================================================

_TYPES = ("add", "insert", "delete", "replace", "move")
_REQUIRED = {
    "add": ("path", "name", "value"),
    "insert": ("path", "value", "index"),
    "delete": ("path",),
    "replace": ("path", "value"),
    "move": ("path", "source", "destination"),
}
_STRING_PARTS = ("type", "path", "name")
_INTEGER_PARTS = ("index", "source", "destination")
_ALWAYS_REPEATING = frozenset({"extension", "modifierExtension", "contained"})
# A path ending in a plain element name: what to look in when the collection is empty.
_LAST_STEP = re.compile(r"(?P<parent>.+)\.(?P<name>[A-Za-z][A-Za-z0-9]*)")


@dataclass(frozen=True, slots=True)
class _Value:
    """A ``value`` part: a value[x] (with its ``_value[x]``), a resource, or parts."""

    json: Json = None
    companion: dict[str, Any] | None = None
    suffix: str | None = None  # "Date" for valueDate, "HumanName" for valueHumanName
    parts: tuple[tuple[str, _Value], ...] | None = None


@dataclass(frozen=True, slots=True)
class _FpOp:
    number: int
    type: str
    path: str
    name: str | None = None
    value: _Value | None = None
    index: int | None = None
    source: int | None = None
    destination: int | None = None

    def describe(self) -> str:
        return f"{self.type} at {self.path}"


def element_repeats(path: str) -> bool | None:
    """The R4 definitions' answer to "is this element a JSON array?" (None: unknown)."""
    try:
        typedef = definitions.type_definition(path.split(".", 1)[0])
    except KeyError:
        return None
    element = typedef.elements.get(path) or typedef.elements.get(path + "[x]")
    return None if element is None else element.is_array


def apply_fhirpath_patch(
    resource: dict[str, Any],
    parameters: dict[str, Any],
    *,
    repeats: Repeats | None = element_repeats,
) -> dict[str, Any]:
    """Apply a FHIRPath Patch (a Parameters resource) to a copy of ``resource``.

    ``repeats`` tells whether an element repeats (by ElementDefinition path), so that
    ``add`` creates a JSON array or a single value; by default the R4 definitions
    answer. Where it answers None (or is None) the JSON decides: an existing array
    repeats, an existing value does not, extension/modifierExtension/contained always
    repeat, and anything else absent is added as a single value.
    """
    ops = _parse_fhirpath_patch(parameters)
    doc: dict[str, Any] = _copy(resource)
    for op in ops:
        try:
            _FP_APPLY[op.type](doc, op, repeats)
        except _Failure as exc:
            raise _unprocessable(
                f"FHIRPath Patch operation {op.number} ({op.describe()}) failed: {exc}",
                f"Parameters.parameter[{op.number}]",
            ) from None
    return doc


# -- parsing ---------------------------------------------------------------------


def _malformed(number: int | None, message: str) -> FhirError:
    where = f"FHIRPath Patch operation {number}: " if number is not None else "FHIRPath Patch: "
    expression = (f"Parameters.parameter[{number}]",) if number is not None else ()
    return bad_request(where + message, *expression)


def _parse_fhirpath_patch(parameters: Any) -> list[_FpOp]:
    if not isinstance(parameters, dict) or parameters.get("resourceType") != "Parameters":
        raise _malformed(None, "the body must be a Parameters resource")
    items = parameters.get("parameter", [])
    if not isinstance(items, list):
        raise _malformed(None, "Parameters.parameter must be an array")
    return [_parse_operation(i, item) for i, item in enumerate(items)]


def _parse_operation(number: int, item: Any) -> _FpOp:
    if not isinstance(item, dict) or item.get("name") != "operation":
        raise _malformed(number, "every parameter must be named 'operation'")
    parts = _parts_by_name(number, item.get("part"))
    op_type = _string_part(number, parts, "type")
    if op_type not in _TYPES:
        raise _malformed(number, f"type must be one of {', '.join(_TYPES)}, not {op_type!r}")
    for name in _REQUIRED[op_type]:
        if name not in parts:
            raise _malformed(number, f"a {op_type} operation needs a '{name}' part")
    path = _string_part(number, parts, "path")
    assert path is not None
    _check_path(number, path)
    return _FpOp(
        number=number,
        type=op_type,
        path=path,
        name=_string_part(number, parts, "name"),
        value=_parse_value(number, parts["value"]) if "value" in parts else None,
        index=_integer_part(number, parts, "index"),
        source=_integer_part(number, parts, "source"),
        destination=_integer_part(number, parts, "destination"),
    )


def _parts_by_name(number: int, parts: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(parts, list):
        raise _malformed(number, "an operation needs its parts (type, path, ...)")
    out: dict[str, dict[str, Any]] = {}
    for part in parts:
        name = part.get("name") if isinstance(part, dict) else None
        if name not in (*_STRING_PARTS, *_INTEGER_PARTS, "value"):
            raise _malformed(number, f"unknown part {name!r}")
        if name in out:
            raise _malformed(number, f"the '{name}' part is repeated")
        out[name] = part
    return out


def _value_keys(part: dict[str, Any]) -> list[str]:
    return [k for k in part if k.startswith("value")]


def _string_part(number: int, parts: dict[str, dict[str, Any]], name: str) -> str | None:
    if name not in parts:
        return None
    keys = _value_keys(parts[name])
    value = parts[name][keys[0]] if len(keys) == 1 else None
    if not isinstance(value, str) or not value:
        raise _malformed(number, f"the '{name}' part must have a string value")
    return value


def _integer_part(number: int, parts: dict[str, dict[str, Any]], name: str) -> int | None:
    if name not in parts:
        return None
    value = parts[name].get("valueInteger")
    if not isinstance(value, int) or isinstance(value, bool):
        raise _malformed(number, f"the '{name}' part must have a valueInteger")
    return value


def _check_path(number: int, path: str) -> None:
    try:
        compile_expression(path)
    except FhirPathError as exc:
        raise _malformed(number, f"path is not valid FHIRPath: {exc.reason}") from None


def _parse_value(number: int, part: dict[str, Any]) -> _Value:
    keys = _value_keys(part)
    nested = part.get("part")
    given = len(keys) + ("resource" in part) + (nested is not None)
    if given != 1:
        raise _malformed(number, "a value needs exactly one of value[x], resource or parts")
    if keys:
        companion = part.get("_" + keys[0])
        return _Value(
            part[keys[0]], companion if isinstance(companion, dict) else None, keys[0][5:]
        )
    if "resource" in part:
        return _Value(part["resource"])
    if not isinstance(nested, list) or not nested:
        raise _malformed(number, "a value given as parts needs at least one part")
    return _Value(parts=tuple(_parse_named_value(number, p) for p in nested))


def _parse_named_value(number: int, part: Any) -> tuple[str, _Value]:
    name = part.get("name") if isinstance(part, dict) else None
    if not isinstance(name, str) or not name:
        raise _malformed(number, "every part of a value needs a name")
    return name, _parse_value(number, part)


# -- shared helpers ----------------------------------------------------------------


def _select(doc: dict[str, Any], op: _FpOp) -> list[Location]:
    try:
        return locate(doc, op.path)
    except FhirPathError as exc:
        raise _Failure(exc.reason) from None


def _repeats(repeats: Repeats | None, info: ElementInfo, existing: Json) -> bool:
    answer = repeats(info.path) if repeats is not None else None
    if answer is not None:
        return answer
    if existing is not None:
        return isinstance(existing, list)
    return info.path.rsplit(".", 1)[-1] in _ALWAYS_REPEATING


def _element(parent_type: str | None, name: str) -> ElementInfo:
    info = element_info(parent_type, name) if parent_type else None
    if info is None:
        raise _Failure(f"{parent_type or 'this element'} has no element '{name}'")
    return info


def _key_for(info: ElementInfo, value: _Value) -> str:
    """The JSON property for a value of this element (``valueQuantity`` for value[x])."""
    name = info.path.rsplit(".", 1)[-1]
    if not info.choices:
        return name
    if value.suffix is None or value.suffix not in info.choices:
        given = value.suffix or "a value without a type"
        raise _Failure(f"{info.path} cannot hold {given} (allowed: {', '.join(info.choices)})")
    return name + value.suffix


def _materialize(value: _Value, type_path: str | None, repeats: Repeats | None) -> Json:
    if value.parts is None:
        return _copy(value.json)
    if not type_path or type_path.startswith("System.") or type_path[:1].islower():
        raise _Failure("a value given as parts must be for a complex element")
    out: dict[str, Any] = {}
    for name, part in value.parts:
        info = _element(type_path, name)
        _put(out, _key_for(info, part), part, info, repeats)
    return out


def _put(
    container: dict[str, Any], key: str, value: _Value, info: ElementInfo, repeats: Repeats | None
) -> None:
    """Add a value for an element to an object: appended if it repeats, else set."""
    new = _materialize(value, info.type, repeats)
    if _repeats(repeats, info, container.get(key)):
        items = container.setdefault(key, [])
        if not isinstance(items, list):
            raise _Failure(f"{key} is not a list")
        items.append(new)
        _align_companion(container, key, len(items) - 1, value.companion)
        return
    if key in container or (info.choices and _has_choice(container, info)):
        raise _Failure(f"{info.path} already has a value (use replace)")
    container[key] = new
    if value.companion is not None:
        container["_" + key] = _copy(value.companion)


def _has_choice(container: dict[str, Any], info: ElementInfo) -> bool:
    name = info.path.rsplit(".", 1)[-1]
    return any(name + suffix in container for suffix in info.choices)


def _align_companion(
    container: dict[str, Any], key: str, index: int, companion: dict[str, Any] | None
) -> None:
    """Keep ``_key`` (primitive ids/extensions) aligned with the ``key`` array."""
    companions = container.get("_" + key)
    if companion is None and not isinstance(companions, list):
        return
    size = len(container.get(key) or [])
    if not isinstance(companions, list):
        companions = []
    companions.extend([None] * (size - len(companions)))
    del companions[size:]
    companions[index] = _copy(companion)
    container["_" + key] = companions
    _tidy(container, key)


def _tidy(container: dict[str, Any], key: str) -> None:
    """Drop an emptied array and a ``_key`` array that carries nothing."""
    if container.get(key) == []:
        del container[key]
    companions = container.get("_" + key)
    if isinstance(companions, list) and all(c is None for c in companions):
        del container["_" + key]


def _prune(node: Json) -> bool:
    """Drop the empty objects and arrays a delete leaves behind; True if ``node`` is empty.

    FHIR JSON never has empty objects/arrays, so this applies to the whole resource.
    Null entries of ``_name`` arrays stay (they keep primitive arrays aligned).
    """
    if isinstance(node, dict):
        for key in [k for k, v in node.items() if _prune(v)]:
            del node[key]
        return not node
    if isinstance(node, list):
        node[:] = [item for item in node if not (isinstance(item, dict) and _prune(item))]
        return all(item is None for item in node)
    return False


def _single(locations: list[Location], op: _FpOp, doing: str) -> Location:
    if not locations:
        raise _Failure(f"No content found at {op.path} when {doing}")
    if len(locations) > 1:
        raise _Failure(f"{op.path} matches {len(locations)} elements; it must match one")
    return locations[0]


def _list_of(
    locations: list[Location], op: _FpOp
) -> tuple[dict[str, Any], str, ElementInfo | None]:
    """The one JSON array the located elements all belong to."""
    first = locations[0]
    for loc in locations:
        if loc.parent is None or loc.index is None:
            raise _Failure(f"{op.path} does not select the items of a list")
        if loc.parent is not first.parent or loc.key != first.key:
            raise _Failure(f"{op.path} selects items of more than one list")
    assert first.parent is not None and first.key is not None
    return first.parent, first.key, first.element


# -- the operations ----------------------------------------------------------------


def _fp_delete(doc: dict[str, Any], op: _FpOp, repeats: Repeats | None) -> None:
    locations = _select(doc, op)
    if not locations:
        return  # deleting nothing is not an error
    loc = _single(locations, op, "deleting")
    if loc.parent is None or loc.key is None:
        raise _Failure("cannot delete the resource itself")
    _remove_at(loc.parent, loc.key, loc.index)
    _prune(doc)


def _remove_at(parent: dict[str, Any], key: str, index: int | None) -> None:
    if index is None:
        parent.pop(key, None)
        parent.pop("_" + key, None)
        return
    for name in (key, "_" + key):
        items = parent.get(name)
        if isinstance(items, list) and index < len(items):
            del items[index]
    _tidy(parent, key)


def _fp_replace(doc: dict[str, Any], op: _FpOp, repeats: Repeats | None) -> None:
    loc = _single(_select(doc, op), op, "replacing")
    assert op.value is not None
    if loc.parent is None or loc.key is None:
        raise _Failure("cannot replace the resource itself (use update)")
    info = loc.element
    key = _key_for(info, op.value) if info is not None else loc.key
    new = _materialize(op.value, loc.type if info is None or not info.choices else None, repeats)
    if loc.index is not None:
        loc.parent[loc.key][loc.index] = new
        _align_companion(loc.parent, loc.key, loc.index, op.value.companion)
        return
    _remove_at(loc.parent, loc.key, None)
    loc.parent[key] = new
    if op.value.companion is not None:
        loc.parent["_" + key] = _copy(op.value.companion)


def _fp_add(doc: dict[str, Any], op: _FpOp, repeats: Repeats | None) -> None:
    target = _single(_select(doc, op), op, "adding")
    assert op.name is not None and op.value is not None
    container = _children_of(target)
    info = _element(target.type, op.name)
    _put(container, _key_for(info, op.value), op.value, info, repeats)


def _children_of(loc: Location) -> dict[str, Any]:
    """The JSON object new children of a located element go in."""
    if isinstance(loc.value, dict):
        return loc.value
    if loc.parent is None or loc.key is None:
        raise _Failure("the path does not select an element that can have children")
    # a primitive: its children (id, extension) live in the "_name" companion
    companion_key = "_" + loc.key
    if loc.index is None:
        companion = loc.parent.setdefault(companion_key, {})
        assert isinstance(companion, dict)
        return companion
    companions = loc.parent.get(companion_key)
    if not isinstance(companions, list) or companions[loc.index] is None:
        _align_companion(loc.parent, loc.key, loc.index, {})
    item = loc.parent[companion_key][loc.index]
    assert isinstance(item, dict)
    return item


def _fp_insert(doc: dict[str, Any], op: _FpOp, repeats: Repeats | None) -> None:
    assert op.value is not None and op.index is not None
    locations = _select(doc, op)
    if locations:
        parent, key, info = _list_of(locations, op)
    else:
        parent, key, info = _empty_list_at(doc, op)
    items = parent.get(key, [])
    if not isinstance(items, list):
        raise _Failure(f"{op.path} is not a list")
    if not 0 <= op.index <= len(items):
        raise _Failure(f"index {op.index} is out of range (the list has {len(items)} items)")
    type_path = info.type if info is not None else None
    new = _materialize(op.value, type_path, repeats)
    parent[key] = items
    items.insert(op.index, new)
    companions = parent.get("_" + key)
    if isinstance(companions, list):
        companions.insert(op.index, None)
    _align_companion(parent, key, op.index, op.value.companion)


def _empty_list_at(doc: dict[str, Any], op: _FpOp) -> tuple[dict[str, Any], str, ElementInfo]:
    """For ``insert`` into a list that does not exist yet: its parent and name."""
    match = _LAST_STEP.fullmatch(op.path)
    if match is None:
        raise _Failure(f"No content found at {op.path} when inserting")
    parent_op = _FpOp(op.number, op.type, match["parent"])
    target = _single(_select(doc, parent_op), parent_op, "inserting")
    info = _element(target.type, match["name"])
    return _children_of(target), match["name"], info


def _fp_move(doc: dict[str, Any], op: _FpOp, repeats: Repeats | None) -> None:
    assert op.source is not None and op.destination is not None
    locations = _select(doc, op)
    if not locations:
        raise _Failure(f"No content found at {op.path} when moving")
    parent, key, _ = _list_of(locations, op)
    items = parent[key]
    for what, at in (("source", op.source), ("destination", op.destination)):
        if not 0 <= at < len(items):
            raise _Failure(f"{what} {at} is out of range (the list has {len(items)} items)")
    items.insert(op.destination, items.pop(op.source))
    companions = parent.get("_" + key)
    if isinstance(companions, list):
        companions.extend([None] * (len(items) - len(companions)))
        companions.insert(op.destination, companions.pop(op.source))


_FP_APPLY: dict[str, Callable[[dict[str, Any], _FpOp, Repeats | None], None]] = {
    "add": _fp_add,
    "insert": _fp_insert,
    "delete": _fp_delete,
    "replace": _fp_replace,
    "move": _fp_move,
}
