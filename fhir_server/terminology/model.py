"""Indexed, read-only views of CodeSystem resources: concepts with their properties,
designations and is-a hierarchy.

A :class:`CodeSystemData` is built once from a CodeSystem resource (or from the codes of
the R4 base value sets) and then only read. Fragments of external code systems (CPT,
ICD-10-CM, LOINC, ...) are ordinary code systems with ``content = fragment``: a code
missing from a fragment is *unknown here*, not *invalid*.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

# A property value as written in CodeSystem.concept.property.value[x] (a Coding stays a
# dict).
PropertyValue = str | bool | int | Decimal | dict[str, Any]

NOT_SELECTABLE = "notSelectable"
_VALUE_KEYS = (
    "valueCode",
    "valueBoolean",
    "valueInteger",
    "valueString",
    "valueDecimal",
    "valueDateTime",
    "valueCoding",
)


@dataclass(frozen=True, slots=True)
class Designation:
    value: str
    language: str | None = None
    use: Mapping[str, Any] | None = None  # a Coding

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.language:
            out["language"] = self.language
        if self.use:
            out["use"] = dict(self.use)
        out["value"] = self.value
        return out


@dataclass(frozen=True, slots=True, eq=False)
class Concept:
    """One concept of a code system."""

    system: str
    code: str
    display: str | None = None
    definition: str | None = None
    designations: tuple[Designation, ...] = ()
    # property code -> values (a property may repeat, e.g. ``discipline``)
    properties: Mapping[str, tuple[PropertyValue, ...]] = field(default_factory=dict)
    parents: tuple[str, ...] = ()
    children: tuple[str, ...] = ()
    version: str | None = None

    @property
    def abstract(self) -> bool:
        """A grouping concept that is not for use in records (``notSelectable``)."""
        return self.first(NOT_SELECTABLE) is True

    @property
    def inactive(self) -> bool:
        status = self.first("status")
        return self.first("inactive") is True or status in ("retired", "inactive")

    def values(self, name: str) -> tuple[PropertyValue, ...]:
        return self.properties.get(name, ())

    def first(self, name: str) -> PropertyValue | None:
        values = self.properties.get(name)
        return values[0] if values else None

    def coding(self) -> dict[str, Any]:
        out: dict[str, Any] = {"system": self.system}
        if self.version:
            out["version"] = self.version
        out["code"] = self.code
        if self.display:
            out["display"] = self.display
        return out


@dataclass(eq=False)
class CodeSystemData:
    """A code system, indexed by code."""

    url: str
    version: str | None
    content: str  # complete | fragment | example | not-present | supplement
    concepts: dict[str, Concept]
    name: str | None = None
    title: str | None = None
    id: str | None = None
    case_sensitive: bool = True
    property_types: dict[str, str] = field(default_factory=dict)  # code -> FHIR type
    property_descriptions: dict[str, str] = field(default_factory=dict)
    resource: dict[str, Any] | None = None  # the CodeSystem resource, when there is one
    origin: str = "package"  # package | r4-base | store
    _folded: dict[str, str] | None = None

    @property
    def complete(self) -> bool:
        return self.content == "complete"

    def get(self, code: str) -> Concept | None:
        concept = self.concepts.get(code)
        if concept is None and not self.case_sensitive:
            if self._folded is None:
                self._folded = {c.lower(): c for c in self.concepts}
            real = self._folded.get(code.lower())
            concept = self.concepts.get(real) if real is not None else None
        return concept

    def __iter__(self) -> Iterator[Concept]:
        return iter(self.concepts.values())

    def __len__(self) -> int:
        return len(self.concepts)

    def descendants(self, code: str) -> list[str]:
        """Codes below ``code`` (not including it), depth first in definition order."""
        out: list[str] = []
        seen: set[str] = {code}
        stack = list(reversed(self.concepts[code].children)) if code in self.concepts else []
        while stack:
            c = stack.pop()
            if c in seen:
                continue
            seen.add(c)
            out.append(c)
            stack.extend(reversed(self.concepts[c].children if c in self.concepts else ()))
        return out

    def ancestors(self, code: str) -> set[str]:
        out: set[str] = set()
        stack = list(self.concepts[code].parents) if code in self.concepts else []
        while stack:
            c = stack.pop()
            if c not in out:
                out.add(c)
                stack.extend(self.concepts[c].parents if c in self.concepts else ())
        return out

    def subsumes(self, a: str, b: str) -> str:
        """The $subsumes outcome of A against B: equivalent | subsumes | subsumed-by |
        not-subsumed. Both codes must be known."""
        if a == b:
            return "equivalent"
        if a in self.ancestors(b):
            return "subsumes"
        if b in self.ancestors(a):
            return "subsumed-by"
        return "not-subsumed"


def _property_value(prop: Mapping[str, Any]) -> PropertyValue | None:
    for key in _VALUE_KEYS:
        if key in prop:
            value: PropertyValue = prop[key]
            return value
    return None


def from_resource(resource: Mapping[str, Any], origin: str = "package") -> CodeSystemData:
    """Index a CodeSystem resource (nested ``concept`` and ``parent``/``child``
    properties both give the hierarchy)."""
    url = str(resource.get("url", ""))
    version = resource.get("version")
    version = str(version) if version is not None else None
    raw: dict[str, dict[str, Any]] = {}
    parents: dict[str, list[str]] = {}
    children: dict[str, list[str]] = {}

    def link(parent: str, child: str) -> None:
        if parent not in parents.setdefault(child, []):
            parents[child].append(parent)
        if child not in children.setdefault(parent, []):
            children[parent].append(child)

    def walk(items: Any, parent: str | None) -> None:
        if not isinstance(items, list):
            return
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("code"), str):
                continue
            code = item["code"]
            raw.setdefault(code, item)
            if parent is not None:
                link(parent, code)
            walk(item.get("concept"), code)

    walk(resource.get("concept"), None)
    parsed: dict[str, tuple[dict[str, list[PropertyValue]], tuple[Designation, ...]]] = {}
    for code, item in raw.items():
        props: dict[str, list[PropertyValue]] = {}
        for p in item.get("property") or ():
            if not isinstance(p, dict) or not isinstance(p.get("code"), str):
                continue
            value = _property_value(p)
            if value is None:
                continue
            if p["code"] == "parent" and isinstance(value, str):
                link(value, code)
            elif p["code"] == "child" and isinstance(value, str):
                link(code, value)
            else:
                props.setdefault(p["code"], []).append(value)
        designations = tuple(
            Designation(value=d["value"], language=d.get("language"), use=d.get("use"))
            for d in item.get("designation") or ()
            if isinstance(d, dict) and isinstance(d.get("value"), str)
        )
        parsed[code] = (props, designations)
    concepts = {
        code: Concept(
            system=url,
            code=code,
            display=item.get("display"),
            definition=item.get("definition"),
            designations=parsed[code][1],
            properties={k: tuple(v) for k, v in parsed[code][0].items()},
            parents=tuple(parents.get(code, ())),
            children=tuple(children.get(code, ())),
            version=version,
        )
        for code, item in raw.items()
    }
    types = {}
    descriptions = {}
    for p in resource.get("property") or ():
        if isinstance(p, dict) and isinstance(p.get("code"), str):
            types[p["code"]] = str(p.get("type", "string"))
            if isinstance(p.get("description"), str):
                descriptions[p["code"]] = p["description"]
    return CodeSystemData(
        url=url,
        version=version,
        content=str(resource.get("content", "complete")),
        concepts=concepts,
        name=resource.get("name"),
        title=resource.get("title"),
        id=resource.get("id"),
        case_sensitive=resource.get("caseSensitive") is not False,
        property_types=types,
        property_descriptions=descriptions,
        resource=dict(resource),
        origin=origin,
    )
