"""FHIR R4 (4.0.1) base definitions: element tables, required value sets, search
parameters, compartments and the displays of the R4 code systems.

The tables are generated from the official R4 package by
``scripts/generate_definitions.py`` into ``data/`` (gzip-compressed JSON) and are
loaded lazily on first use and cached; importing this module does no I/O.

Element tables are indexed for the validator: :class:`TypeDef` maps every element
path to its :class:`ElementDef`, and for every path that has children (the type's
root, BackboneElements, contentReference targets) maps each JSON property name to a
:class:`Child`, with choice elements already expanded (``valueQuantity`` ...).
"""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Final, Literal

import orjson

__all__ = [
    "BACKBONE",
    "COMPLEX",
    "FHIR_VERSION",
    "PRIMITIVE",
    "RESOURCE",
    "Child",
    "Constraint",
    "ElementDef",
    "ElementType",
    "TypeDef",
    "ValueSetExpansion",
    "base_constraints",
    "code_system_displays",
    "compartment_definitions",
    "core_profiles",
    "is_primitive_type",
    "mandatory_elements",
    "resource_types",
    "search_parameters",
    "summary_elements",
    "type_definition",
    "type_names",
    "value_set",
    "value_set_codes",
    "value_set_not_checkable_reason",
]

FHIR_VERSION: Final = "4.0.1"
_SD_PREFIX: Final = "http://hl7.org/fhir/StructureDefinition/"

# How a child's content is validated (Child.kind).
PRIMITIVE: Final = 0  # a JSON primitive, optionally with a ``_name`` sibling
COMPLEX: Final = 1  # a data type with its own TypeDef (HumanName, Reference, ...)
BACKBONE: Final = 2  # children defined inline in the same TypeDef (BackboneElement)
RESOURCE: Final = 3  # a whole resource (contained, Bundle.entry.resource, ...)

TypeKind = Literal["resource", "complex-type", "primitive-type"]


@dataclass(frozen=True, slots=True)
class Constraint:
    key: str
    severity: str
    human: str
    expression: str | None
    source: str | None
    best_practice: bool = False


@dataclass(frozen=True, slots=True)
class ElementType:
    code: str
    target_profiles: tuple[str, ...] = ()
    profiles: tuple[str, ...] = ()
    # Resource type names a Reference may point to; None means any resource.
    target_types: frozenset[str] | None = None


@dataclass(slots=True, eq=False)
class ElementDef:
    path: str
    name: str  # last path segment without ``[x]``
    min: int
    max: int | None  # None = unbounded ("*")
    types: tuple[ElementType, ...]
    choice: bool
    content_reference: str | None  # the referenced path, without '#'
    binding_strength: str | None
    binding_value_set: str | None  # canonical URL without ``|version``
    is_summary: bool
    is_modifier: bool
    constraints: tuple[Constraint, ...]

    @property
    def is_array(self) -> bool:
        """Represented as a JSON array (max cardinality above 1)."""
        return self.max is None or self.max > 1

    @property
    def required_binding(self) -> str | None:
        return self.binding_value_set if self.binding_strength == "required" else None


@dataclass(frozen=True, slots=True, eq=False)
class Child:
    """One JSON property allowed in an object."""

    name: str  # JSON property name (choice expanded: ``valueQuantity``)
    element: ElementDef
    type: ElementType | None  # None for backbone / contentReference children
    type_code: str  # the data type; "BackboneElement"/"Element" for inline children
    kind: int  # PRIMITIVE, COMPLEX, BACKBONE or RESOURCE
    content_path: str  # for BACKBONE: the path whose children apply
    array: bool = False  # a JSON array (max cardinality above 1)


@dataclass(slots=True, eq=False)
class TypeDef:
    name: str
    kind: TypeKind
    abstract: bool
    base: str | None
    url: str
    regex: str | None  # primitive types: the value regex (to be matched in full)
    elements: dict[str, ElementDef]  # by path, snapshot order
    children: dict[str, dict[str, Child]] = field(default_factory=dict)  # by parent path
    # by parent path: the mandatory children, each with the JSON property names that
    # satisfy it (choice variants and ``_name`` primitive-extension siblings included)
    required: dict[str, tuple[tuple[ElementDef, tuple[str, ...]], ...]] = field(
        default_factory=dict
    )

    @property
    def root(self) -> ElementDef:
        return self.elements[self.name]

    @property
    def root_children(self) -> dict[str, Child]:
        return self.children[self.name]


@dataclass(frozen=True, slots=True)
class ValueSetExpansion:
    url: str
    pairs: frozenset[tuple[str, str]]  # (system, code)
    codes: frozenset[str]
    systems: frozenset[str]


# --------------------------------------------------------------------------- raw data

_lock = threading.Lock()


def _load(name: str) -> Any:
    ref = resources.files(__package__).joinpath("data", name)
    with ref.open("rb") as fh:
        return orjson.loads(gzip.decompress(fh.read()))


@cache
def _types_raw() -> dict[str, Any]:
    data: dict[str, Any] = _load("types.json.gz")
    return data


@cache
def _constraints() -> tuple[Constraint, ...]:
    return tuple(
        Constraint(
            key=c["key"],
            severity=c["severity"],
            human=c["human"],
            expression=c.get("expression"),
            source=c.get("source"),
            best_practice=bool(c.get("bestPractice")),
        )
        for c in _types_raw()["constraints"]
    )


@cache
def _value_sets_raw() -> dict[str, Any]:
    data: dict[str, Any] = _load("valuesets.json.gz")["valueSets"]
    return data


# --------------------------------------------------------------------------- public API


@cache
def resource_types() -> frozenset[str]:
    """All concrete resource types (``Patient`` ... ; not Resource/DomainResource)."""
    return frozenset(_types_raw()["resourceTypes"])


@cache
def type_names() -> frozenset[str]:
    """Every defined type: resources (incl. abstract), complex and primitive types."""
    return frozenset(_types_raw()["types"])


@cache
def _primitive_types() -> frozenset[str]:
    return frozenset(n for n, t in _types_raw()["types"].items() if t["kind"] == "primitive-type")


def is_primitive_type(name: str) -> bool:
    return name in _primitive_types()


_typedefs: dict[str, TypeDef] = {}


def type_definition(name: str) -> TypeDef:
    """The element table of a resource or data type; KeyError if unknown."""
    td = _typedefs.get(name)
    if td is None:
        with _lock:
            td = _typedefs.get(name)
            if td is None:
                td = _build_type(name)
                _typedefs[name] = td
    return td


@cache
def summary_elements(resource_type: str) -> frozenset[str]:
    """Top-level JSON property names kept by ``_summary=true``: the elements flagged
    isSummary plus the mandatory ones. Choice elements are expanded
    (``deceasedBoolean``, ``deceasedDateTime``) and primitive elements come with their
    ``_name`` sibling (``_birthDate``), so a consumer can filter a resource's keys
    directly; ``resourceType`` is not an element and is not listed. KeyError if the
    type is unknown."""
    return _top_level(resource_type, summary=True)


@cache
def mandatory_elements(resource_type: str) -> frozenset[str]:
    """Top-level JSON property names of the elements with min cardinality >= 1 (same
    conventions as :func:`summary_elements`)."""
    return _top_level(resource_type, summary=False)


def _top_level(resource_type: str, *, summary: bool) -> frozenset[str]:
    names: set[str] = set()
    for name, child in type_definition(resource_type).root_children.items():
        el = child.element
        if el.min >= 1 or (summary and el.is_summary):
            names.add(name)
            if child.kind == PRIMITIVE:
                names.add("_" + name)
    return frozenset(names)


_value_set_cache: dict[str, ValueSetExpansion | None] = {}


def value_set(url: str) -> ValueSetExpansion | None:
    """The expansion of a value set used by a required binding in the base spec, or
    None if it is unknown or cannot be checked locally (external code systems such as
    BCP-13 mime types, ISO 4217 currencies or UCUM). ``url`` may carry ``|version``."""
    try:
        return _value_set_cache[url]
    except KeyError:
        vs = _value_set_cache[url] = _value_set(url.split("|", 1)[0])
        return vs


@cache
def _value_set(url: str) -> ValueSetExpansion | None:
    entry = _value_sets_raw().get(url)
    if entry is None or "codes" not in entry:
        return None
    by_system: dict[str, list[str]] = entry["codes"]
    pairs = frozenset((s, c) for s, codes in by_system.items() for c in codes)
    return ValueSetExpansion(
        url=url,
        pairs=pairs,
        codes=frozenset(c for _, c in pairs),
        systems=frozenset(by_system),
    )


def value_set_codes(url: str) -> frozenset[tuple[str, str]] | None:
    """The (system, code) pairs of a value set; None = unknown / not checkable."""
    vs = value_set(url)
    return None if vs is None else vs.pairs


def value_set_not_checkable_reason(url: str) -> str | None:
    """Why a value set known to the tables cannot be expanded (None otherwise)."""
    entry = _value_sets_raw().get(url.split("|", 1)[0])
    return None if entry is None else entry.get("notCheckable")


@cache
def _raw_json(name: str) -> bytes:
    ref = resources.files(__package__).joinpath("data", name)
    with ref.open("rb") as fh:
        return gzip.decompress(fh.read())


def search_parameters() -> list[dict[str, Any]]:
    """All 1,400 R4 SearchParameters, trimmed to url, code, name, base, type,
    expression, target, modifier, comparator, multipleOr/And, chain, component,
    xpathUsage, description and id. Each call returns fresh objects."""
    out: list[dict[str, Any]] = orjson.loads(_raw_json("search-parameters.json.gz"))
    return out


def core_profiles() -> list[dict[str, Any]]:
    """The profiles and extension definitions of the R4 core package (``derivation =
    constraint``: vital signs, SimpleQuantity, every core extension ...) as
    differentials trimmed for validation (no snapshots: they are generated). Fresh
    objects."""
    out: list[dict[str, Any]] = orjson.loads(_raw_json("profiles.json.gz"))
    return out


@cache
def _displays_raw() -> dict[str, dict[str, str]]:
    data: dict[str, dict[str, str]] = _load("displays.json.gz")["codeSystems"]
    return data


def code_system_displays(system: str) -> dict[str, str] | None:
    """The displays (code -> display) of a complete code system of the R4 package
    (``http://hl7.org/fhir/...``, ``http://terminology.hl7.org/CodeSystem/...`` and the
    few others it carries in full); None for any other system. Concepts without a
    display are absent. The table is loaded on first use; do not modify the result."""
    return _displays_raw().get(system)


def base_constraints() -> tuple[Constraint, ...]:
    """Every distinct constraint of the base definitions."""
    return _constraints()


def compartment_definitions() -> list[dict[str, Any]]:
    """The Patient, Encounter, RelatedPerson, Practitioner and Device
    CompartmentDefinitions (id, url, name, code, search, resource). Fresh objects."""
    out: list[dict[str, Any]] = orjson.loads(_raw_json("compartments.json.gz"))
    return out


# --------------------------------------------------------------------------- building


def _element(raw: dict[str, Any], constraints: tuple[Constraint, ...]) -> ElementDef:
    path: str = raw["path"]
    last = path.rsplit(".", 1)[-1]
    choice = last.endswith("[x]")
    types = []
    for t in raw.get("types", ()):
        targets = tuple(t.get("targetProfile", ()))
        target_types: frozenset[str] | None = None
        if targets:
            names = frozenset(p.removeprefix(_SD_PREFIX) for p in targets)
            if names <= resource_types():  # not Resource, nor a profile's URL
                target_types = names
        types.append(
            ElementType(
                code=t["code"],
                target_profiles=targets,
                profiles=tuple(t.get("profile", ())),
                target_types=target_types,
            )
        )
    binding = raw.get("binding") or {}
    vs = binding.get("valueSet")
    max_raw = raw.get("max", "*")
    cref = raw.get("contentReference")
    return ElementDef(
        path=path,
        name=last[:-3] if choice else last,
        min=int(raw.get("min", 0)),
        max=None if max_raw == "*" else int(max_raw),
        types=tuple(types),
        choice=choice,
        content_reference=cref[1:] if cref and cref.startswith("#") else cref,
        binding_strength=binding.get("strength"),
        binding_value_set=vs.split("|", 1)[0] if vs else None,
        is_summary=bool(raw.get("isSummary")),
        is_modifier=bool(raw.get("isModifier")),
        constraints=tuple(constraints[i] for i in raw.get("constraints", ())),
    )


def _build_type(name: str) -> TypeDef:
    raw = _types_raw()["types"][name]  # KeyError for unknown types
    constraints = _constraints()
    elements: dict[str, ElementDef] = {}
    for e in raw["elements"]:
        ed = _element(e, constraints)
        elements[ed.path] = ed
    td = TypeDef(
        name=name,
        kind=raw["kind"],
        abstract=raw["abstract"],
        base=raw.get("base"),
        url=raw["url"],
        regex=raw.get("regex"),
        elements=elements,
    )
    has_children = {p.rsplit(".", 1)[0] for p in elements if "." in p}
    children: dict[str, dict[str, Child]] = {}
    for ed in elements.values():
        if "." not in ed.path:
            continue
        parent = ed.path.rsplit(".", 1)[0]
        bucket = children.setdefault(parent, {})
        for child in _children_of(ed, has_children):
            bucket[child.name] = child
    td.children = children
    required: dict[str, tuple[tuple[ElementDef, tuple[str, ...]], ...]] = {}
    for parent, bucket in children.items():
        names: dict[int, tuple[ElementDef, list[str]]] = {}
        for c in bucket.values():
            if c.element.min >= 1:
                entry = names.setdefault(id(c.element), (c.element, []))
                entry[1].append(c.name)
                if c.kind == PRIMITIVE:
                    entry[1].append("_" + c.name)
        required[parent] = tuple((e, tuple(n)) for e, n in names.values())
    td.required = required
    return td


def _children_of(ed: ElementDef, has_children: set[str]) -> list[Child]:
    array = ed.is_array
    if ed.content_reference is not None:
        return [Child(ed.name, ed, None, "BackboneElement", BACKBONE, ed.content_reference, array)]
    if ed.choice:
        return [
            Child(
                ed.name + t.code[0].upper() + t.code[1:],
                ed,
                t,
                t.code,
                _kind(t.code),
                ed.path,
                array,
            )
            for t in ed.types
        ]
    if not ed.types:
        # Only the root carries no type; nothing to expose.
        return []
    t = ed.types[0]
    if t.code in ("BackboneElement", "Element") and ed.path in has_children:
        return [Child(ed.name, ed, t, t.code, BACKBONE, ed.path, array)]
    return [Child(ed.name, ed, t, t.code, _kind(t.code), ed.path, array)]


def _kind(code: str) -> int:
    if code == "Resource":
        return RESOURCE
    if is_primitive_type(code):
        return PRIMITIVE
    return COMPLEX
