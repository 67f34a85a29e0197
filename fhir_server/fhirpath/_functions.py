"""FHIR-specific FHIRPath functions fhirpathpy lacks, and fixes to some it has.

Every entry of :data:`TABLE` is called as ``fn(ctx, inputs, *args)`` with the input
collection as fhirpathpy nodes, and overrides fhirpathpy's function of that name.
"""

from __future__ import annotations

import html
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from fhir_server.fhirpath._fixes import FIXES
from fhir_server.fhirpath._fp import (
    R4_MODEL,
    FP_DateTime,
    FP_Time,
    FP_Type,
    TypeInfo,
    create_node,
    type_is,
)
from fhir_server.fhirpath._nodes import (
    Node,
    child_nodes,
    data_of,
    element_names,
)

_TYPE_PARENTS: dict[str, str] = R4_MODEL["type2Parent"]

# [type]/[id] at the end of a relative or absolute literal reference (optionally
# followed by a version): the type is what resolve() can tell without a lookup.
_LITERAL_REFERENCE = re.compile(
    r"(?:^|/)(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9.\-]{1,64})"
    r"(?:/_history/[A-Za-z0-9.\-]{1,64})?$"
)


def is_resource_type(name: str) -> bool:
    seen = name
    while seen in _TYPE_PARENTS:
        seen = _TYPE_PARENTS[seen]
        if seen == "Resource":
            return True
    return False


# -- resolve() -------------------------------------------------------------------


def resolve(ctx: dict[str, Any], inputs: list[Any]) -> list[Any]:
    """Resolve references without a server lookup.

    ``#id`` finds a contained resource and a Bundle ``fullUrl`` finds that entry's
    resource (both within %rootResource); any other literal reference yields a
    stand-in ``{"resourceType": T, "id": id}`` whose type is the reference's target
    type, so ``where(resolve() is Patient)`` works as search parameters need.
    """
    root = ctx["vars"]["rootResource"]
    out: list[Any] = []
    for item in inputs:
        data = data_of(item)
        if isinstance(data, dict):
            reference, declared = data.get("reference"), data.get("type")
        elif isinstance(data, str):  # canonical / uri
            reference, declared = data, None
        else:
            continue
        target = _resolve_one(root, reference, declared)
        if target is not None:
            out.append(create_node(target))
    return out


def _resolve_one(root: Any, reference: Any, declared: Any) -> dict[str, Any] | None:
    if isinstance(reference, str):
        if reference.startswith("#"):
            return _contained(root, reference[1:])
        in_bundle = _bundle_entry(root, reference)
        if in_bundle is not None:
            return in_bundle
        match = _LITERAL_REFERENCE.search(reference)
        if match and is_resource_type(match["type"]):
            return {"resourceType": match["type"], "id": match["id"]}
    if isinstance(declared, str) and is_resource_type(declared):
        return {"resourceType": declared}
    return None


def _contained(root: Any, local_id: str) -> dict[str, Any] | None:
    if not isinstance(root, dict):
        return None
    if not local_id:
        return root
    for resource in root.get("contained") or []:
        if isinstance(resource, dict) and resource.get("id") == local_id:
            return resource
    return None


def _bundle_entry(root: Any, reference: str) -> dict[str, Any] | None:
    if not isinstance(root, dict) or root.get("resourceType") != "Bundle":
        return None
    for entry in root.get("entry") or []:
        if isinstance(entry, dict) and entry.get("fullUrl") == reference:
            resource = entry.get("resource")
            return resource if isinstance(resource, dict) else None
    return None


# -- primitives ------------------------------------------------------------------


def _primitive_value(item: Any) -> tuple[bool, Any]:
    if isinstance(item, Node):
        ok = item.has_value and not isinstance(item.data, dict | list)
        return ok, item.data
    data = data_of(item)
    if isinstance(data, FP_Type | str | bool | int | float | Decimal):
        return True, data
    return False, None


def has_value(ctx: dict[str, Any], inputs: list[Any]) -> bool:
    """True for a single primitive that has a value (not only extensions)."""
    return len(inputs) == 1 and _primitive_value(inputs[0])[0]


def get_value(ctx: dict[str, Any], inputs: list[Any]) -> list[Any]:
    if len(inputs) != 1:
        return []
    ok, value = _primitive_value(inputs[0])
    return [value] if ok else []


# -- navigation ------------------------------------------------------------------


def children(ctx: dict[str, Any], inputs: list[Any]) -> list[Any]:
    out: list[Any] = []
    for item in inputs:
        for name in element_names(item):
            out.extend(child_nodes(item, name))
    return out


def descendants(ctx: dict[str, Any], inputs: list[Any]) -> list[Any]:
    out: list[Any] = []
    level = children(ctx, inputs)
    while level:
        out.extend(level)
        level = children(ctx, level)
    return out


def extension(ctx: dict[str, Any], inputs: list[Any], url: Any) -> list[Any]:
    if not isinstance(url, str):
        return []
    out: list[Any] = []
    for item in inputs:
        out.extend(
            node
            for node in child_nodes(item, "extension")
            if isinstance(node.data, dict) and node.data.get("url") == url
        )
    return out


def has_extension(ctx: dict[str, Any], inputs: list[Any], url: Any) -> bool:
    """Not an R4 FHIRPath function, but one R4 search parameter uses it."""
    return bool(extension(ctx, inputs, url))


# -- types -----------------------------------------------------------------------


def _is(item: Any, type_info: TypeInfo) -> bool:
    if isinstance(item, Node) and not item.has_value and not _is_complex(item):
        return False
    if _is_date_literal(item):  # fhirpathpy types every date value as DateTime
        return type_info.namespace in (None, TypeInfo.System) and type_info.name == "Date"
    return type_is(item, type_info)


def _is_date_literal(item: Any) -> bool:
    return isinstance(item, FP_DateTime) and "T" not in str(item.asStr)


def _is_complex(item: Node) -> bool:
    path = str(item.path)
    return "." in path or path[:1].isupper()


def of_type(ctx: dict[str, Any], inputs: list[Any], type_info: TypeInfo) -> list[Any]:
    return [item for item in inputs if _is(item, type_info)]


def as_type(ctx: dict[str, Any], inputs: list[Any], type_info: TypeInfo) -> list[Any]:
    """``as``: R4 search parameters apply it to collections, so it filters each item."""
    return of_type(ctx, inputs, type_info)


def is_type(ctx: dict[str, Any], inputs: list[Any], type_info: TypeInfo) -> list[bool]:
    if not inputs:
        return []
    if len(inputs) > 1:
        raise ValueError("'is' needs a single item on its left")
    return [_is(inputs[0], type_info)]


# -- FHIRPath 2.0/2.1 string and precision functions ------------------------------


def _one_string(inputs: list[Any]) -> str | None:
    if len(inputs) != 1:
        return None
    value = data_of(inputs[0])
    return value if isinstance(value, str) else None


def matches_full(ctx: dict[str, Any], inputs: list[Any], regex: Any) -> list[bool]:
    text = _one_string(inputs)
    if text is None or not isinstance(regex, str):
        return []
    return [re.fullmatch(regex, text, re.DOTALL) is not None]


def escape(ctx: dict[str, Any], inputs: list[Any], target: Any) -> list[str]:
    text = _one_string(inputs)
    if text is None or target not in ("html", "json"):
        return []
    return [html.escape(text) if target == "html" else json.dumps(text)[1:-1]]


def unescape(ctx: dict[str, Any], inputs: list[Any], target: Any) -> list[str]:
    text = _one_string(inputs)
    if text is None or target not in ("html", "json"):
        return []
    return [html.unescape(text) if target == "html" else _JSON_ESCAPE.sub(_unescaped, text)]


_JSON_ESCAPE = re.compile(r'\\(u[0-9a-fA-F]{4}|["\\/bfnrt])')
_JSON_SIMPLE = {
    '"': '"',
    "\\": "\\",
    "/": "/",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}


def _unescaped(match: re.Match[str]) -> str:
    code = match[1]
    return chr(int(code[1:], 16)) if code[0] == "u" else _JSON_SIMPLE[code]


_TIMEZONE = re.compile(r"(Z|[+-]\d{2}:\d{2})$")


def precision(ctx: dict[str, Any], inputs: list[Any]) -> list[int]:
    """Digits of precision: decimal places, or the digits of a date/time."""
    if len(inputs) != 1:
        return []
    value = data_of(inputs[0])
    if isinstance(value, Decimal):
        exponent = value.as_tuple().exponent
        return [max(0, -exponent) if isinstance(exponent, int) else 0]
    if isinstance(value, FP_DateTime | FP_Time):
        text = _TIMEZONE.sub("", str(value.asStr))
        return [sum(ch.isdigit() for ch in text)]
    return []


# -- narrative -------------------------------------------------------------------

_XHTML = "{http://www.w3.org/1999/xhtml}"
_FORBIDDEN_ELEMENTS = frozenset(
    {
        "html", "head", "body", "title", "meta", "base", "link", "style", "script",
        "noscript", "form", "input", "button", "select", "textarea", "frame",
        "frameset", "iframe", "object", "embed", "applet",
    }
)  # fmt: skip


def html_checks(ctx: dict[str, Any], inputs: list[Any]) -> bool:
    """The R4 narrative rules: an XHTML div without active or external content."""
    return all(_narrative_ok(data_of(item)) for item in inputs)


def _narrative_ok(div: Any) -> bool:
    if not isinstance(div, str):
        return False
    try:
        root = ET.fromstring(div)
    except ET.ParseError:
        return False
    if root.tag != _XHTML + "div":
        return False
    for element in root.iter():
        if not isinstance(element.tag, str) or not element.tag.startswith(_XHTML):
            return False
        if element.tag[len(_XHTML) :] in _FORBIDDEN_ELEMENTS:
            return False
        if any(name.lower().startswith("on") for name in element.attrib):
            return False
    return True


# -- the table -------------------------------------------------------------------

Fn = Callable[..., Any]


def _entry(fn: Fn, arity: dict[int, list[str]] | None = None) -> dict[str, Any]:
    return {"fn": fn} if arity is None else {"fn": fn, "arity": arity}


_TYPE_ARG = {1: ["TypeSpecifier"]}
_TYPE_OP = {2: ["Any", "TypeSpecifier"]}

TABLE: dict[str, dict[str, Any]] = {
    **FIXES,
    "resolve": _entry(resolve),
    "hasValue": _entry(has_value),
    "getValue": _entry(get_value),
    "children": _entry(children),
    "descendants": _entry(descendants),
    "extension": _entry(extension, {1: ["String"]}),
    "hasExtension": _entry(has_extension, {1: ["String"]}),
    "ofType": _entry(of_type, _TYPE_ARG),
    "as": _entry(as_type, _TYPE_ARG),
    "asOp": _entry(as_type, _TYPE_OP),
    "is": _entry(is_type, _TYPE_ARG),
    "isOp": _entry(is_type, _TYPE_OP),
    "htmlChecks": _entry(html_checks),
    "matchesFull": _entry(matches_full, {1: ["String"]}),
    "escape": _entry(escape, {1: ["String"]}),
    "unescape": _entry(unescape, {1: ["String"]}),
    "precision": _entry(precision),
}
