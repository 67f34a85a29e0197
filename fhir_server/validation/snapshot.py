"""Snapshot generation: a profile's differential applied over its base's snapshot.

https://hl7.org/fhir/R4/profiling.html#snapshot. Elements are FHIR JSON
``ElementDefinition`` objects; :func:`generate_snapshot` returns the snapshot's element
list. The base of a profile is another profile (its snapshot, generated first) or a
base type, whose snapshot is rebuilt from the generated R4 element tables
(:func:`base_snapshot`).

Every differential element is located by its ``id`` (computed from ``path`` and the
slices in effect when a differential has no ids):

* an element already in the snapshot is constrained in place;
* a new slice (``Observation.component:systolic``) is a copy of the sliced element and
  its children, inserted after the sliced element's last slice;
* a child of an element whose type's children are not in the snapshot yet
  (``Observation.code.coding``) first expands that element with the children of its
  type -- from the type's profile when it names a known one, else from the base type --
  or of the element its ``contentReference`` points to;
* a type-specific name of a choice element (``Observation.valueQuantity``) constrains
  ``value[x]`` itself when it restricts the element to that type, and otherwise is the
  type slice ``value[x]:valueQuantity`` (slicing by ``type`` on ``$this``).

Constraining merges the differential's properties into the element: cardinality,
types, binding, fixed[x]/pattern[x], min/maxValue[x], maxLength, slicing, mustSupport,
and the constraints, which are added to those inherited.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, Final

from fhir_server import definitions

__all__ = [
    "SnapshotError",
    "base_snapshot",
    "element_ids",
    "generate_snapshot",
]

Element = dict[str, Any]
# profile URL -> its snapshot elements, or None when unknown
SnapshotSource = Callable[[str], list[Element] | None]

_SD: Final = "http://hl7.org/fhir/StructureDefinition/"
_EXTENSION_SLICING: Final = {
    "discriminator": [{"type": "value", "path": "url"}],
    "description": "Extensions are always sliced by (at least) url",
    "rules": "open",
}
# Differential properties that replace the snapshot's.
_REPLACED: Final = (
    "min",
    "max",
    "type",
    "binding",
    "maxLength",
    "mustSupport",
    "isModifier",
    "isModifierReason",
    "isSummary",
    "contentReference",
    "short",
    "definition",
    "meaningWhenMissing",
    "orderMeaning",
    "label",
    "code",
    "sliceIsConstraining",
)
_VALUE_PREFIXES: Final = ("fixed", "pattern", "minValue", "maxValue", "defaultValue")


class SnapshotError(ValueError):
    """The differential cannot be applied to its base."""


# --------------------------------------------------------------------------- base types


@lru_cache(maxsize=512)
def _base_snapshot(type_name: str) -> tuple[Element, ...]:
    td = definitions.type_definition(type_name)
    out: list[Element] = []
    for ed in td.elements.values():
        el: Element = {
            "id": ed.path,
            "path": ed.path,
            "min": ed.min,
            "max": "*" if ed.max is None else str(ed.max),
        }
        if ed.types:
            types: list[dict[str, Any]] = []
            for t in ed.types:
                tr: dict[str, Any] = {"code": t.code}
                if t.profiles:
                    tr["profile"] = list(t.profiles)
                if t.target_profiles:
                    tr["targetProfile"] = list(t.target_profiles)
                types.append(tr)
            el["type"] = types
        if ed.content_reference:
            el["contentReference"] = "#" + ed.content_reference
        if ed.binding_strength:
            binding: dict[str, Any] = {"strength": ed.binding_strength}
            if ed.binding_value_set:
                binding["valueSet"] = ed.binding_value_set
            el["binding"] = binding
        if ed.constraints:
            el["constraint"] = [
                {
                    k: v
                    for k, v in (
                        ("key", c.key),
                        ("severity", c.severity),
                        ("human", c.human),
                        ("expression", c.expression),
                        ("source", c.source),
                    )
                    if v is not None
                }
                for c in ed.constraints
            ]
        if ed.is_modifier:
            el["isModifier"] = True
        if ed.is_summary:
            el["isSummary"] = True
        if "." in ed.path and ed.name in ("extension", "modifierExtension"):
            el["slicing"] = copy.deepcopy(_EXTENSION_SLICING)
        out.append(el)
    return tuple(out)


def base_snapshot(type_name: str) -> list[Element]:
    """The snapshot of a base resource or data type, rebuilt from the R4 tables (a fresh
    copy). KeyError for an unknown type."""
    return copy.deepcopy(list(_base_snapshot(type_name)))


def _is_base_url(url: str) -> str | None:
    if url.startswith(_SD):
        name = url[len(_SD) :].split("|", 1)[0]
        if name in definitions.type_names():
            return name
    return None


# --------------------------------------------------------------------------- ids


def element_ids(elements: Sequence[Element]) -> list[str]:
    """The id of every element: its ``id``, or one computed from ``path`` and the
    slices in effect (an element below a slice entry belongs to that slice)."""
    out: list[str] = []
    # path -> id of the most recent element at that path (a slice entry gives the id
    # its descendants continue)
    current: dict[str, str] = {}
    for el in elements:
        path: str = el["path"]
        given = el.get("id")
        if isinstance(given, str) and given:
            eid = given
        else:
            parent_path, _, last = path.rpartition(".")
            prefix = current.get(parent_path, parent_path) if parent_path else ""
            name = last
            if el.get("sliceName"):
                name = f"{last}:{el['sliceName']}"
            eid = f"{prefix}.{name}" if prefix else name
        out.append(eid)
        current[path] = eid
        # forget deeper paths: a new element at this path starts a new context
        for p in [p for p in current if p.startswith(path + ".")]:
            del current[p]
    return out


def _segments(eid: str) -> list[str]:
    """Split an id on the dots that separate elements (slice names may hold dots only
    in theory; FHIR ids do not)."""
    return eid.split(".")


def _parent_id(eid: str) -> str:
    return eid.rpartition(".")[0]


# --------------------------------------------------------------------------- generation


class _Builder:
    def __init__(self, elements: list[Element], source: SnapshotSource, url: str) -> None:
        self.els = elements
        self.source = source
        self.url = url
        self._index: dict[str, int] | None = None
        self._choice_types: dict[str, list[dict[str, Any]]] = {}  # before restriction
        self._restricted: set[str] = set()

    # -- lookup

    def index(self) -> dict[str, int]:
        if self._index is None:
            self._index = {e["id"]: i for i, e in enumerate(self.els)}
        return self._index

    def find(self, eid: str) -> int | None:
        return self.index().get(eid)

    def insert(self, at: int, new: list[Element]) -> None:
        self.els[at:at] = new
        self._index = None

    def subtree_end(self, i: int, include_slices: bool) -> int:
        """Index after the last descendant of element i (and its slices)."""
        eid = self.els[i]["id"]
        prefixes = (eid + ".", eid + ":") if include_slices else (eid + ".",)
        j = i + 1
        while j < len(self.els) and self.els[j]["id"].startswith(prefixes):
            j += 1
        return j

    # -- making elements exist

    def ensure(self, eid: str) -> int:
        """The index of the element with this id, creating slices, expanding types and
        resolving type-specific choice names as needed."""
        i = self.find(eid)
        if i is not None:
            return i
        parent, _, last = eid.rpartition(".")
        if not parent:
            raise SnapshotError(f"no element '{eid}' in the base of {self.url}")
        name, sep, slice_name = last.partition(":")
        if sep:
            return self.make_slice(f"{parent}.{name}" if parent else name, slice_name)
        pi = self.ensure(parent)
        if self.find(eid) is None and not self.has_children(pi):
            self.expand(pi)
        i = self.find(eid)
        if i is not None:
            return i
        choice = self.choice_for(parent, name)
        if choice is not None:
            base_id, type_code = choice
            return self.type_slice(base_id, name, type_code)
        raise SnapshotError(f"no element '{eid}' in the base of {self.url}")

    def has_children(self, i: int) -> bool:
        return i + 1 < len(self.els) and self.els[i + 1]["id"].startswith(self.els[i]["id"] + ".")

    def choice_for(self, parent: str, name: str) -> tuple[str, str] | None:
        """``valueQuantity`` under ``parent`` -> (id of ``value[x]``, ``Quantity``)."""
        for k in range(1, len(name)):
            if name[k].isupper():
                base_id = f"{parent}.{name[:k]}[x]"
                i = self.find(base_id)
                if i is None:
                    continue
                suffix = name[k:]
                for t in self.els[i].get("type", ()):
                    code = t.get("code", "")
                    if code[:1].upper() + code[1:] == suffix:
                        return base_id, code
        return None

    def type_slice(self, base_id: str, name: str, type_code: str) -> int:
        """``value[x]:valueQuantity``: using a type-specific name restricts the choice to
        the types so named (slicing closed, by type) and constrains that type's slice."""
        existing = self.find(f"{base_id}:{name}")
        if existing is not None:
            return existing
        el = self.els[self.ensure(base_id)]
        original = self._choice_types.setdefault(base_id, copy.deepcopy(el.get("type") or []))
        chosen = [t for t in original if t.get("code") == type_code]
        if base_id not in self._restricted:
            self._restricted.add(base_id)
            el["type"] = []
            el.setdefault(
                "slicing",
                {
                    "discriminator": [{"type": "type", "path": "$this"}],
                    "ordered": False,
                    "rules": "closed",
                },
            )
        if not any(t.get("code") == type_code for t in el["type"]):
            el["type"].extend(copy.deepcopy(chosen))
        si = self.make_slice(base_id, name)
        self.els[si]["type"] = copy.deepcopy(chosen)
        return si

    def make_slice(self, sliced_id: str, slice_name: str) -> int:
        existing = self.find(f"{sliced_id}:{slice_name}")
        if existing is not None:
            return existing
        if "/" in slice_name:  # a re-slice of a slice
            base_name, _, _ = slice_name.rpartition("/")
            base_i = self.ensure(f"{sliced_id}:{base_name}")
        else:
            base_i = self.ensure(sliced_id)
        base_el = self.els[base_i]
        end_children = self.subtree_end(base_i, include_slices=False)
        template = copy.deepcopy(self.els[base_i:end_children])
        new_id = f"{sliced_id}:{slice_name}"
        old_id = base_el["id"]
        for k, el in enumerate(template):
            el["id"] = new_id + el["id"][len(old_id) :]
            if k == 0:
                el["sliceName"] = slice_name
                el.pop("slicing", None)
        at = self.subtree_end(self.ensure(sliced_id), include_slices=True)
        self.insert(at, template)
        i = self.find(new_id)
        assert i is not None
        return i

    def expand(self, i: int) -> None:
        """Insert the children of element i's type (it has none in the snapshot)."""
        el = self.els[i]
        eid, path = el["id"], el["path"]
        ref = el.get("contentReference")
        if isinstance(ref, str):
            # the children of the element referred to, as the base type defines them
            # (not as this profile constrains them there)
            target = ref.split("#", 1)[-1]
            type_name = target.split(".", 1)[0]
            source = base_snapshot(type_name) if type_name in definitions.type_names() else self.els
            children = [
                e for e in source if e["path"].startswith(target + ".") and e["id"] == e["path"]
            ]
            if not children:
                raise SnapshotError(f"contentReference {ref} of {eid} has no children")
            new = []
            for e in children:
                c = copy.deepcopy(e)
                c["id"] = eid + e["id"][len(target) :]
                c["path"] = path + e["path"][len(target) :]
                new.append(c)
            self.insert(i + 1, new)
            return
        types = el.get("type") or []
        codes = {t.get("code") for t in types}
        if len(codes) != 1:
            raise SnapshotError(
                f"{eid} has {len(codes)} types: its children can only be constrained "
                "when a single type is allowed"
            )
        t = types[0]
        code: str = t["code"]
        type_snapshot: list[Element] | None = None
        for profile in t.get("profile") or ():
            type_snapshot = self.source(profile)
            if type_snapshot is not None:
                break
        if type_snapshot is None:
            if code not in definitions.type_names():
                raise SnapshotError(f"{eid} has the unknown type '{code}'")
            type_snapshot = base_snapshot(code)
        root_path = type_snapshot[0]["path"]
        root_id = str(type_snapshot[0].get("id") or root_path)
        new = []
        for e in type_snapshot[1:]:
            c = copy.deepcopy(e)
            c["id"] = eid + str(c.get("id") or c["path"])[len(root_id) :]
            c["path"] = path + c["path"][len(root_path) :]
            new.append(c)
        self.insert(i + 1, new)

    # -- applying the differential

    def apply(self, eid: str, diff: Element) -> None:
        _merge(self.els[self.ensure(eid)], diff)


def _merge(el: Element, diff: Element) -> None:
    for key in _REPLACED:
        if key in diff:
            el[key] = copy.deepcopy(diff[key])
    for key, value in diff.items():
        if key.startswith(_VALUE_PREFIXES):
            prefix = next(p for p in _VALUE_PREFIXES if key.startswith(p))
            for old in [k for k in el if k.startswith(prefix)]:
                del el[old]
            el[key] = copy.deepcopy(value)
    if "slicing" in diff:
        merged = dict(el.get("slicing") or {})
        merged.update(copy.deepcopy(diff["slicing"]))
        el["slicing"] = merged
    if "sliceName" in diff:
        el["sliceName"] = diff["sliceName"]
    if diff.get("constraint"):
        constraints = list(el.get("constraint") or [])
        keys = {c.get("key") for c in constraints}
        for c in diff["constraint"]:
            if c.get("key") not in keys:
                constraints.append(copy.deepcopy(c))
        el["constraint"] = constraints


def _choice_alias(builder: _Builder, eid: str) -> str:
    """The id a differential id means, with type-specific choice names
    (``Observation.valueQuantity``) turned into type slices (``value[x]:valueQuantity``)."""
    segments = _segments(eid)
    out = [segments[0]]
    for seg in segments[1:]:
        parent = ".".join(out)
        candidate = f"{parent}.{seg}"
        if ":" not in seg and builder.find(candidate) is None:
            pi = builder.find(parent)
            if pi is not None and not builder.has_children(pi):
                with contextlib.suppress(SnapshotError):  # reported by ensure()
                    builder.expand(pi)
            if builder.find(candidate) is None:
                choice = builder.choice_for(parent, seg)
                if choice is not None:
                    base_id, type_code = choice
                    builder.type_slice(base_id, seg, type_code)
                    seg = f"{base_id.rpartition('.')[2]}:{seg}"
        out.append(seg)
    return ".".join(out)


def generate_snapshot(
    sd: dict[str, Any],
    base: list[Element] | None,
    source: SnapshotSource,
) -> list[Element]:
    """The snapshot of a constraint StructureDefinition.

    ``base`` is the snapshot of its ``baseDefinition`` (None: the base type's, from the
    R4 tables); ``source`` finds the snapshots of the profiles named in types (used to
    expand an element whose type has a profile)."""
    url = sd.get("url", "(no url)")
    sd_type = sd.get("type")
    if base is None:
        name = _is_base_url(str(sd.get("baseDefinition", ""))) or sd_type
        if not isinstance(name, str) or name not in definitions.type_names():
            raise SnapshotError(f"{url}: unknown base {sd.get('baseDefinition')}")
        base = base_snapshot(name)
    else:
        base = copy.deepcopy(base)
    for el, eid in zip(base, element_ids(base), strict=True):
        el["id"] = eid
    builder = _Builder(base, source, str(url))
    diff: list[Element] = list((sd.get("differential") or {}).get("element") or [])
    if not diff:
        return builder.els
    root = base[0]["path"]
    for d, eid in zip(diff, element_ids(diff), strict=True):
        if not isinstance(d.get("path"), str):
            raise SnapshotError(f"{url}: a differential element has no path")
        if eid.split(".", 1)[0].split(":", 1)[0] != root:
            raise SnapshotError(f"{url}: differential element '{eid}' is not under {root}")
        target = _choice_alias(builder, eid)
        builder.apply(target, d)
    return builder.els
