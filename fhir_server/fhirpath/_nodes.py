"""Navigation over FHIR JSON that knows where every result lives.

fhirpathpy walks FHIR JSON as ``ResourceNode`` wrappers. Its own member navigation
treats a primitive and its ``_name`` companion (the primitive's id/extensions) as two
separate items, so ``Patient.birthDate.count()`` is 2 when the date has an extension,
and its nodes do not say which JSON object and key they were read from.

This module replaces that navigation: :func:`child_nodes` returns :class:`Node`
objects that merge the primitive value with its ``_name`` companion (``data`` is the
value, ``_data`` the companion) and record their location -- the JSON object holding
them, the property key and the list index -- so callers such as FHIRPath Patch can
modify exactly what an expression selected.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fhir_server.fhirpath._fp import R4_MODEL, FP_Quantity, ResourceNode

_PATH_TO_TYPE: dict[str, str] = R4_MODEL["path2Type"]
_CHOICE_TYPES: dict[str, list[str]] = R4_MODEL["choiceTypePaths"]
_DEFINED_ELSEWHERE: dict[str, str] = R4_MODEL["pathsDefinedElsewhere"]


@dataclass(frozen=True, slots=True)
class Where:
    """Where a node was read from: ``container[key]`` (``[index]`` if it repeats).

    ``parent_type`` is the model path of the container and ``name`` the element
    name (``value`` for the JSON key ``valueQuantity``).
    """

    container: dict[str, Any]
    key: str
    index: int | None
    parent_type: str | None
    name: str


class Node(ResourceNode):
    """A ResourceNode that knows the JSON object, key and index it was read from.

    ``has_value`` is False for a primitive that only has an id/extensions (its
    ``data`` is then the ``_name`` object, as fhirpathpy expects).
    """

    where: Where
    has_value: bool

    def __init__(self, data: Any, path: str, companion: Any, where: Where, has_value: bool) -> None:
        super().__init__(data, path, companion, None, where.index)  # type: ignore[no-untyped-call]
        self.where = where
        self.has_value = has_value


def data_of(item: Any) -> Any:
    return item.data if isinstance(item, ResourceNode) else item


def element_container(item: Any) -> dict[str, Any] | None:
    """The JSON object holding an item's children (a primitive's ``_name`` object)."""
    data = data_of(item)
    if isinstance(data, dict):
        return data
    companion = item._data if isinstance(item, ResourceNode) else None
    return companion if isinstance(companion, dict) else None


def type_path(item: Any) -> str | None:
    """The model path of an item: a type name, or a backbone element's path."""
    if isinstance(item, ResourceNode):
        data = item.data
        if isinstance(data, dict) and isinstance(data.get("resourceType"), str):
            return str(data["resourceType"])
        return item.path  # type: ignore[no-any-return]
    if isinstance(item, dict) and isinstance(item.get("resourceType"), str):
        return str(item["resourceType"])
    return None


def _model_path(parent_path: str | None, name: str) -> str:
    path = f"{parent_path}.{name}" if parent_path else name
    return _DEFINED_ELSEWHERE.get(path, path)


def _child_type(model_path: str, name: str) -> str:
    found = _PATH_TO_TYPE.get(model_path)
    if found is not None:
        return found
    if name == "extension" or name == "modifierExtension":
        return "Extension"
    generic = _PATH_TO_TYPE.get(f"Element.{name}")
    if generic is not None:
        return generic
    return model_path  # a backbone element: its own path is its "type"


def _json_keys(container: dict[str, Any], model_path: str, name: str) -> Iterator[tuple[str, str]]:
    """(JSON key, model path) pairs an element name can appear under."""
    choices = _CHOICE_TYPES.get(model_path)
    if not choices:
        yield name, model_path
        return
    for suffix in choices:
        key = name + suffix
        if key in container or "_" + key in container:
            yield key, model_path + suffix


def child_nodes(item: Any, name: str) -> list[Node]:
    """The children called ``name`` of one item, in document order."""
    if isinstance(data_of(item), FP_Quantity):
        return []
    container = element_container(item)
    if container is None:
        return []
    parent_type = type_path(item)
    model_path = _model_path(parent_type, name)
    out: list[Node] = []
    for key, path in _json_keys(container, model_path, name):
        where = Where(container, key, None, parent_type, name)
        out.extend(_nodes_at(where, _child_type(path, name)))
    return out


def _nodes_at(where: Where, type_name: str) -> list[Node]:
    value = where.container.get(where.key)
    companion = where.container.get("_" + where.key)
    if not isinstance(value, list) and not isinstance(companion, list):
        node = _make(value, companion, type_name, where)
        return [node] if node is not None else []
    values = value if isinstance(value, list) else []
    companions = companion if isinstance(companion, list) else []
    out: list[Node] = []
    for i in range(max(len(values), len(companions))):
        v = values[i] if i < len(values) else None
        c = companions[i] if i < len(companions) else None
        at = Where(where.container, where.key, i, where.parent_type, where.name)
        node = _make(v, c, type_name, at)
        if node is not None:
            out.append(node)
    return out


def _make(value: Any, companion: Any, type_name: str, where: Where) -> Node | None:
    if value is not None:
        return Node(value, type_name, companion, where, True)
    if isinstance(companion, dict):
        return Node(companion, type_name, None, where, False)
    return None


def element_names(item: Any) -> list[str]:
    """The names of the elements present in an item (choice suffixes removed)."""
    container = element_container(item)
    if container is None:
        return []
    parent = type_path(item)
    names: dict[str, None] = {}
    for key in container:
        if key == "resourceType":
            continue
        names[_element_name(parent, key.lstrip("_"))] = None
    return list(names)


def _element_name(parent: str | None, key: str) -> str:
    for i in range(1, len(key)):
        if key[i].isupper():
            base = key[:i]
            suffixes = _CHOICE_TYPES.get(_model_path(parent, base))
            if suffixes and key[i:] in suffixes:
                return base
    return key


@dataclass(frozen=True, slots=True)
class ElementInfo:
    """What the R4 model says about one child element of a type.

    ``path`` is the ElementDefinition path (``Patient.contact``, ``HumanName.given``).
    ``type`` is the element's type code, or for a backbone element its own path (the
    type its children hang off); None for a choice element, whose allowed type
    suffixes (``Quantity``, ``String``...) are in ``choices``.
    """

    path: str
    type: str | None
    choices: tuple[str, ...] = ()


def element_info(parent_type: str, name: str) -> ElementInfo | None:
    """The model's view of element ``name`` of ``parent_type`` (None if unknown)."""
    literal = f"{parent_type}.{name}"
    path = _model_path(parent_type, name)
    choices = _CHOICE_TYPES.get(path)
    if choices:
        return ElementInfo(literal, None, tuple(choices))
    if path in _PATH_TO_TYPE:
        return ElementInfo(literal, _PATH_TO_TYPE[path])
    if path in _PARENT_PATHS:  # a backbone element
        return ElementInfo(literal, path)
    if name in ("extension", "modifierExtension"):
        return ElementInfo(literal, "Extension")
    if name == "id":
        return ElementInfo(literal, "System.String")
    return None


# Every model path that has children of its own: types and backbone elements.
_PARENT_PATHS = frozenset(known.rsplit(".", 1)[0] for known in _PATH_TO_TYPE)
