"""Where code systems, value sets and concept maps come from.

:class:`Terminology` holds CodeSystem, ValueSet and ConceptMap resources indexed by
canonical URL (and version) and by id. The shared instance (:func:`default`) is built
once from the JSON resources under the repository's ``terminology/`` folder (or the
folder named by the ``FHIR_TERMINOLOGY_DIR`` environment variable), and falls back to
the R4 base value sets that :mod:`fhir_server.definitions` carries (codes only, no
displays). :meth:`Terminology.overlay` layers further resources on top, e.g. ValueSets
that clients stored on the server, for one request.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from fhir_server import definitions, jsonio
from fhir_server.terminology.model import CodeSystemData, Concept, from_resource

ENV_DIRECTORY = "FHIR_TERMINOLOGY_DIR"
_T = TypeVar("_T")
KINDS = ("CodeSystem", "ValueSet", "ConceptMap")


def default_directory() -> Path:
    """The folder the shared terminology is read from."""
    env = os.environ.get(ENV_DIRECTORY)
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "terminology"


def split_canonical(url: str) -> tuple[str, str | None]:
    """``url|version`` -> (url, version)."""
    base, sep, version = url.partition("|")
    return base, (version if sep and version else None)


def read_directory(directory: Path) -> list[dict[str, Any]]:
    """The CodeSystem/ValueSet/ConceptMap resources of ``*.json`` files in a folder (a
    Bundle's entries count too). Other files and resource types are ignored."""
    out: list[dict[str, Any]] = []
    if not directory.is_dir():
        return out
    for path in sorted(directory.glob("*.json")):
        data = jsonio.loads(path.read_bytes())
        items = (
            [e.get("resource") for e in data.get("entry", ()) if isinstance(e, dict)]
            if isinstance(data, dict) and data.get("resourceType") == "Bundle"
            else [data]
        )
        out.extend(r for r in items if isinstance(r, dict) and r.get("resourceType") in KINDS)
    return out


class Terminology:
    """CodeSystems, ValueSets and ConceptMaps by canonical URL and by id."""

    def __init__(
        self,
        resources: Iterable[Mapping[str, Any]] = (),
        *,
        parent: Terminology | None = None,
        r4_base: bool = False,
        origin: str = "package",
    ) -> None:
        self.parent = parent
        self.r4_base = r4_base
        self._code_systems: dict[str, list[CodeSystemData]] = {}
        self._value_sets: dict[str, list[dict[str, Any]]] = {}
        self._concept_maps: dict[str, list[dict[str, Any]]] = {}
        self._by_id: dict[tuple[str, str], dict[str, Any]] = {}
        self._cache: dict[Any, Any] = {}
        self._lock = threading.Lock()
        for resource in resources:
            self.add(resource, origin=origin)

    # ------------------------------------------------------------------ building

    def add(self, resource: Mapping[str, Any], *, origin: str = "package") -> None:
        rtype = resource.get("resourceType")
        url = resource.get("url")
        rid = resource.get("id")
        if isinstance(rid, str) and rtype in KINDS:
            self._by_id[(str(rtype), rid)] = dict(resource)
        if not isinstance(url, str):
            return
        if rtype == "CodeSystem":
            self._add_code_system(from_resource(resource, origin))
        elif rtype == "ValueSet":
            self._value_sets.setdefault(url, []).append(dict(resource))
        elif rtype == "ConceptMap":
            self._concept_maps.setdefault(url, []).append(dict(resource))
        self._cache.clear()

    def _add_code_system(self, cs: CodeSystemData) -> None:
        versions = self._code_systems.setdefault(cs.url, [])
        for i, other in enumerate(versions):
            if other.version == cs.version:
                versions[i] = _merge(other, cs)
                return
        versions.append(cs)

    def overlay(self, resources: Iterable[Mapping[str, Any]], origin: str = "store") -> Terminology:
        """A view with ``resources`` added on top of this one (this one is unchanged)."""
        return Terminology(resources, parent=self, origin=origin)

    # ------------------------------------------------------------------ queries

    def code_system(self, url: str, version: str | None = None) -> CodeSystemData | None:
        url, v = split_canonical(url)
        version = version or v
        found = _pick(self._code_systems.get(url), version, lambda c: c.version)
        if found is not None:
            return found
        if self.parent is not None:
            return self.parent.code_system(url, version)
        if self.r4_base:
            return _r4_base_code_systems().get(url)
        return None

    def value_set(self, url: str, version: str | None = None) -> dict[str, Any] | None:
        url, v = split_canonical(url)
        version = version or v
        found = _pick(self._value_sets.get(url), version, lambda r: r.get("version"))
        if found is not None:
            return found
        if self.parent is not None:
            return self.parent.value_set(url, version)
        if self.r4_base:
            return _r4_base_value_set(url)
        return None

    def concept_map(self, url: str, version: str | None = None) -> dict[str, Any] | None:
        url, v = split_canonical(url)
        found = _pick(self._concept_maps.get(url), version or v, lambda r: r.get("version"))
        if found is None and self.parent is not None:
            return self.parent.concept_map(url, version or v)
        return found

    def by_id(self, resource_type: str, id: str) -> dict[str, Any] | None:
        found = self._by_id.get((resource_type, id))
        if found is None and self.parent is not None:
            return self.parent.by_id(resource_type, id)
        return found

    def lookup(self, system: str, code: str, version: str | None = None) -> Concept | None:
        cs = self.code_system(system, version)
        return None if cs is None else cs.get(code)

    def urls(self, resource_type: str) -> list[str]:
        """Canonical URLs of the resources of one kind held here (and in parents; not the
        R4 base)."""
        tables: dict[str, Mapping[str, Any]] = {
            "CodeSystem": self._code_systems,
            "ValueSet": self._value_sets,
            "ConceptMap": self._concept_maps,
        }
        table = tables[resource_type]
        mine = list(table)
        if self.parent is not None:
            mine += [u for u in self.parent.urls(resource_type) if u not in table]
        return mine

    def resources(self) -> list[dict[str, Any]]:
        """Every resource held here (not in parents), in insertion order."""
        return list(self._by_id.values())

    def cached(self, key: Any, build: Any) -> Any:
        """A value computed once per terminology (e.g. expansions)."""
        try:
            return self._cache[key]
        except KeyError:
            pass
        value = build()
        with self._lock:
            self._cache[key] = value
        return value


def _pick(
    items: list[_T] | None, version: str | None, version_of: Callable[[_T], Any]
) -> _T | None:
    if not items:
        return None
    if version is None:
        return items[-1]
    for item in items:
        if version_of(item) == version:
            return item
    return None


def _merge(a: CodeSystemData, b: CodeSystemData) -> CodeSystemData:
    """Two fragments of the same code system and version: one view of both."""
    concepts = dict(a.concepts)
    concepts.update(b.concepts)
    content = "complete" if "complete" in (a.content, b.content) else a.content
    return CodeSystemData(
        url=a.url,
        version=a.version,
        content=content,
        concepts=concepts,
        name=a.name or b.name,
        title=a.title or b.title,
        id=a.id,
        case_sensitive=a.case_sensitive,
        property_types={**b.property_types, **a.property_types},
        property_descriptions={**b.property_descriptions, **a.property_descriptions},
        resource=a.resource,
        origin=a.origin,
    )


# ---------------------------------------------------------------------- R4 base


def _r4_value_set_table() -> Mapping[str, Any]:
    # The generated definitions hold the required-binding value sets of the R4 base as
    # {url: {"version":..., "codes": {system: [code, ...]}}}.
    raw = getattr(definitions, "_value_sets_raw", None)
    table = raw() if callable(raw) else {}
    return table if isinstance(table, Mapping) else {}


@cache
def _r4_base_value_set(url: str) -> dict[str, Any] | None:
    expansion = definitions.value_set(url)
    if expansion is None:
        return None
    by_system: dict[str, list[str]] = {}
    for system, code in sorted(expansion.pairs):
        by_system.setdefault(system, []).append(code)
    name = url.rsplit("/", 1)[-1]
    return {
        "resourceType": "ValueSet",
        "id": f"r4-{name}",
        "url": url,
        "version": definitions.FHIR_VERSION,
        "name": name,
        "status": "active",
        "compose": {
            "include": [
                {"system": s, "concept": [{"code": c} for c in codes]}
                for s, codes in by_system.items()
            ]
        },
    }


@cache
def _r4_base_code_systems() -> dict[str, CodeSystemData]:
    codes: dict[str, set[str]] = {}
    for entry in _r4_value_set_table().values():
        if not isinstance(entry, Mapping):
            continue
        for system, items in (entry.get("codes") or {}).items():
            codes.setdefault(system, set()).update(items)
    out: dict[str, CodeSystemData] = {}
    for system, items in codes.items():
        out[system] = from_resource(
            {
                "resourceType": "CodeSystem",
                "url": system,
                # Only the codes used by required bindings are known, without displays.
                "content": "fragment",
                "concept": [{"code": c} for c in sorted(items)],
            },
            origin="r4-base",
        )
    return out


_default: Terminology | None = None
_default_lock = threading.Lock()


def default() -> Terminology:
    """The shared terminology: the project's resources over the R4 base."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Terminology(read_directory(default_directory()), r4_base=True)
    return _default


def reset_default() -> None:
    """Forget the shared terminology (it is read again on next use)."""
    global _default
    with _default_lock:
        _default = None
