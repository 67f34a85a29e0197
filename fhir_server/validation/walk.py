"""Walking a resource's JSON along its type definitions."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fhir_server.definitions import PRIMITIVE, Child, TypeDef


def complex_items(
    obj: dict[str, Any], td: TypeDef, path: str, expr: str
) -> Iterator[tuple[str, Child, dict[str, Any], str]]:
    """(key, definition, item, FHIRPath expression) of each object-valued item of
    ``obj``'s known non-primitive elements (``obj`` is of ``td`` at ``path``); unknown
    elements and values that are not objects are left to the structure validator."""
    kids = td.children.get(path)
    if kids is None:
        return
    for key, value in obj.items():
        child = kids.get(key)
        if child is None or child.kind == PRIMITIVE:
            continue
        many = type(value) is list
        for i, item in enumerate(value if many else (value,)):
            if type(item) is dict:
                yield key, child, item, (f"{expr}.{key}[{i}]" if many else f"{expr}.{key}")
