"""The R4 element model the search extractors need: element types, choice elements.

Built from the FHIRPath engine's R4 model tables (element path -> type, choice element
-> allowed types, type -> parent type). A *context* is what a value's children are
looked up under: a type name (``HumanName``, ``Patient``) or, for backbone elements,
the element path (``Observation.component``).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from fhirpathpy.models import models as _models

_R4: dict[str, Any] = _models["r4"]
_PATH2TYPE: dict[str, str] = _R4["path2Type"]
_CHOICES: dict[str, list[str]] = _R4["choiceTypePaths"]
_ELSEWHERE: dict[str, str] = _R4["pathsDefinedElsewhere"]
_PARENT: dict[str, str] = _R4["type2Parent"]

PRIMITIVES = frozenset(
    {
        "boolean",
        "integer",
        "string",
        "decimal",
        "uri",
        "url",
        "canonical",
        "base64Binary",
        "instant",
        "date",
        "dateTime",
        "time",
        "code",
        "oid",
        "id",
        "markdown",
        "unsignedInt",
        "positiveInt",
        "uuid",
        "xhtml",
    }
)

_SYSTEM_TYPES = {
    "System.String": "string",
    "System.Boolean": "boolean",
    "System.Integer": "integer",
    "System.Decimal": "decimal",
    "System.Date": "date",
    "System.DateTime": "dateTime",
    "System.Time": "time",
}


def _ancestors(name: str) -> list[str]:
    out = []
    while name in _PARENT:
        name = _PARENT[name]
        out.append(name)
    return out


RESOURCE_TYPES: frozenset[str] = frozenset(
    t for t in _PARENT if t not in ("Resource", "DomainResource") and "Resource" in _ancestors(t)
)
DOMAIN_RESOURCE_TYPES: frozenset[str] = frozenset(
    t for t in RESOURCE_TYPES if "DomainResource" in _ancestors(t)
)

# Element paths that are backbone elements (have children but no named type).
_BACKBONES: frozenset[str] = frozenset(
    p.rsplit(".", 1)[0] for p in _PATH2TYPE if p.count(".") >= 2
) - frozenset(_PATH2TYPE)


def choice_type_name(suffix: str) -> str:
    """The FHIR type name of a choice suffix (``DateTime`` -> ``dateTime``)."""
    lowered = suffix[0].lower() + suffix[1:]
    return lowered if lowered in PRIMITIVES else suffix


ChildInfo = tuple[tuple[str, str], ...]  # ((json key, context/type), ...)


@cache
def child(context: str, name: str) -> ChildInfo:
    """The JSON keys and contexts of element ``name`` under ``context``.

    One pair for an ordinary element, one per allowed type for a choice element
    (``value`` -> ``valueQuantity``/``Quantity``, ``valueString``/``string``...), none if
    the element is unknown.
    """
    path = f"{context}.{name}"
    choices = _CHOICES.get(path)
    if choices is not None:
        return tuple((name + t, choice_type_name(t)) for t in choices)
    t = _PATH2TYPE.get(path)
    if t is not None:
        return ((name, _SYSTEM_TYPES.get(t, t)),)
    if path in _ELSEWHERE:
        return ((name, _ELSEWHERE[path]),)
    if path in _BACKBONES:
        return ((name, path),)
    parent = _PARENT.get(context)
    if parent is not None:
        return child(parent, name)
    return ()


@cache
def is_a(type_name: str, wanted: str) -> bool:
    """Whether ``type_name`` is ``wanted`` or derives from it (case-insensitive)."""
    w = wanted.lower()
    if type_name.lower() == w:
        return True
    return any(a.lower() == w for a in _ancestors(type_name))


def is_resource_type(name: str) -> bool:
    return name in RESOURCE_TYPES
