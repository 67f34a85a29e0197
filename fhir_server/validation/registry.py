"""The StructureDefinition registry: profiles and extension definitions by canonical URL.

A :class:`ProfileRegistry` knows

* the R4 base types (their snapshots come from the generated tables),
* the core package's profiles and extension definitions (vital signs,
  SimpleQuantity, every core extension), from :func:`fhir_server.definitions.core_profiles`,
* whatever is added: the JSON files of a directory (:meth:`ProfileRegistry.load_directory`,
  the repository's ``profiles/`` for :func:`default_registry`), or resources created
  through the API (:meth:`ProfileRegistry.add`).

Besides StructureDefinitions it keeps the ValueSets and CodeSystems it is given, and
answers binding checks for them (:meth:`ProfileRegistry.value_set_codes`, expanded
locally by :func:`~fhir_server.validation.valuesets.expand_local`), and the
Questionnaires QuestionnaireResponses are validated against
(:meth:`ProfileRegistry.questionnaire`, by canonical URL and version).

It also keeps, when given (:data:`SUPPORTING_TYPES`: the supporting files of an offline
validation; the server keeps only :data:`DEFINITION_TYPES` from writes), the
ImplementationGuides whose ``global`` profiles apply to every resource of their type
(:meth:`ProfileRegistry.global_profiles`) and the Measures MeasureReports are checked
against (:meth:`ProfileRegistry.measure`).

Snapshots are generated on first use from the differential (a StructureDefinition
that carries a snapshot keeps it) and cached with the compiled profile; adding or
replacing a definition drops the caches.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any, Final

from fhir_server import definitions
from fhir_server.validation.snapshot import (
    Element,
    SnapshotError,
    base_snapshot,
    element_ids,
    generate_snapshot,
)
from fhir_server.validation.valuesets import Codes, base_lookup, expand_local

__all__ = [
    "PROFILES_DIR",
    "SUPPORTING_TYPES",
    "ProfileRegistry",
    "RegistryError",
    "canonical",
    "default_registry",
]

SD_BASE: Final = "http://hl7.org/fhir/StructureDefinition/"
# The repository's profiles directory (absent in an installed package).
PROFILES_DIR: Final = Path(__file__).resolve().parents[2] / "profiles"
# The resource types a registry keeps.
DEFINITION_TYPES: Final = frozenset(
    {"StructureDefinition", "ValueSet", "CodeSystem", "Questionnaire"}
)
# Resource types a registry keeps when they are given to it, besides the definitions:
# ImplementationGuides (their global profiles) and Measures (for MeasureReports).
SUPPORTING_TYPES: Final = frozenset({"ImplementationGuide", "Measure"})


class RegistryError(ValueError):
    """A resource that cannot be registered."""


def canonical(url: str) -> str:
    """A canonical URL without its ``|version``."""
    return url.split("|", 1)[0]


def base_type_of(url: str) -> str | None:
    """``http://hl7.org/fhir/StructureDefinition/Patient`` -> ``Patient``."""
    url = canonical(url)
    if url.startswith(SD_BASE):
        name = url[len(SD_BASE) :]
        if name in definitions.type_names():
            return name
    return None


class ProfileRegistry:
    """StructureDefinitions, ValueSets, CodeSystems and Questionnaires by canonical URL."""

    def __init__(self, *, core: bool = True) -> None:
        self._lock = threading.RLock()
        self._sds: dict[str, dict[str, Any]] = {}
        self._value_sets: dict[str, dict[str, Any]] = {}
        self._code_systems: dict[str, dict[str, Any]] = {}
        # canonical URL -> the registered versions, the latest registration last
        self._questionnaires: dict[str, list[dict[str, Any]]] = {}
        self._guides: dict[str, dict[str, Any]] = {}
        self._measures: dict[str, list[dict[str, Any]]] = {}
        self._snapshots: dict[str, list[Element]] = {}
        self._compiled: dict[str, Any] = {}
        self._codes: dict[str, Codes | None] = {}
        self._errors: dict[str, str] = {}
        self._core = core
        self._core_loaded = not core

    def copy(self) -> ProfileRegistry:
        """A registry with the same definitions that can change on its own (a server's
        registry starts as a copy of :func:`default_registry`)."""
        with self._lock:
            self._ensure_core()
            other = ProfileRegistry(core=False)
            other._sds = dict(self._sds)
            other._value_sets = dict(self._value_sets)
            other._code_systems = dict(self._code_systems)
            other._questionnaires = {k: list(v) for k, v in self._questionnaires.items()}
            other._guides = dict(self._guides)
            other._measures = {k: list(v) for k, v in self._measures.items()}
            other._core = self._core
            return other

    # ------------------------------------------------------------------ contents

    def _ensure_core(self) -> None:
        if self._core_loaded:
            return
        with self._lock:
            if self._core_loaded:
                return
            for sd in definitions.core_profiles():
                self._sds.setdefault(sd["url"], sd)
            self._core_loaded = True

    def add(self, resource: dict[str, Any]) -> list[str]:
        """Register a StructureDefinition, ValueSet, CodeSystem, Questionnaire,
        ImplementationGuide or Measure (or every one of them in a Bundle); returns the
        URLs registered. A later definition with the same URL replaces the earlier one
        (for a Questionnaire or a Measure: the one with the same URL and version)."""
        rt = resource.get("resourceType")
        if rt == "Bundle":
            urls: list[str] = []
            for entry in resource.get("entry") or ():
                r = entry.get("resource") if isinstance(entry, dict) else None
                if isinstance(r, dict) and (
                    r.get("resourceType") in DEFINITION_TYPES
                    or r.get("resourceType") in SUPPORTING_TYPES
                ):
                    urls += self.add(r)
            return urls
        url = resource.get("url")
        if not isinstance(url, str) or not url:
            raise RegistryError(f"a {rt} without a url cannot be registered")
        url = canonical(url)
        with self._lock:
            if rt == "StructureDefinition":
                if not isinstance(resource.get("type"), str):
                    raise RegistryError(f"StructureDefinition {url} has no type")
                if not (resource.get("snapshot") or resource.get("differential")):
                    raise RegistryError(
                        f"StructureDefinition {url} has neither snapshot nor differential"
                    )
                self._ensure_core()
                self._sds[url] = resource
            elif rt == "ValueSet":
                self._value_sets[url] = resource
            elif rt == "CodeSystem":
                self._code_systems[url] = resource
            elif rt in ("Questionnaire", "Measure"):
                kept = self._questionnaires if rt == "Questionnaire" else self._measures
                version = resource.get("version")
                versions = [q for q in kept.get(url, ()) if q.get("version") != version]
                kept[url] = [*versions, resource]
                return [url]  # nothing compiled depends on a Questionnaire or Measure
            elif rt == "ImplementationGuide":
                self._guides[url] = resource
                return [url]
            else:
                raise RegistryError(f"a {rt} is not a definition the validator uses")
            self._invalidate()
        return [url]

    def remove(self, url: str) -> None:
        url = canonical(url)
        with self._lock:
            self._sds.pop(url, None)
            self._value_sets.pop(url, None)
            self._code_systems.pop(url, None)
            self._questionnaires.pop(url, None)
            self._guides.pop(url, None)
            self._measures.pop(url, None)
            self._invalidate()

    def _invalidate(self) -> None:
        self._snapshots.clear()
        self._compiled.clear()
        self._codes.clear()
        self._errors.clear()

    def load_directory(self, directory: Path) -> tuple[list[str], list[str]]:
        """Register the StructureDefinitions, ValueSets, CodeSystems and Questionnaires
        among the JSON files of a directory (recursively). Returns (URLs registered,
        problems: files that are not JSON or not such resources are reported, not
        raised)."""
        loaded: list[str] = []
        problems: list[str] = []
        if not directory.is_dir():
            return loaded, problems
        for path in sorted(directory.rglob("*.json")):
            try:
                data = json.loads(path.read_text(encoding="utf-8-sig"))
            except (OSError, ValueError) as exc:
                problems.append(f"{path.name}: {exc}")
                continue
            if not isinstance(data, dict) or (
                data.get("resourceType") not in DEFINITION_TYPES
                and data.get("resourceType") not in SUPPORTING_TYPES
                and data.get("resourceType") != "Bundle"
            ):
                continue
            try:
                loaded += self.add(data)
            except RegistryError as exc:
                problems.append(f"{path.name}: {exc}")
        return loaded, problems

    def add_all(self, resources: Iterable[dict[str, Any]]) -> None:
        for r in resources:
            self.add(r)

    # ------------------------------------------------------------------ lookup

    def get(self, url: str) -> dict[str, Any] | None:
        """The StructureDefinition registered for a URL (not base types)."""
        self._ensure_core()
        return self._sds.get(canonical(url))

    def knows(self, url: str) -> bool:
        return base_type_of(url) is not None or self.get(url) is not None

    def type_of(self, url: str) -> str | None:
        """The type a profile constrains (``Patient`` ...), None if unknown."""
        base = base_type_of(url)
        if base is not None:
            return base
        sd = self.get(url)
        t = sd.get("type") if sd else None
        return t if isinstance(t, str) else None

    def definition_type(self, url: str) -> str | None:
        """The resource type of the definition a canonical URL resolves to here
        (StructureDefinition, ValueSet, CodeSystem, Questionnaire), None if unknown."""
        if self.knows(url):
            return "StructureDefinition"
        if self.knows_value_set(url):
            return "ValueSet"
        if self.code_system(url) is not None:
            return "CodeSystem"
        if self.questionnaire(url) is not None:
            return "Questionnaire"
        return None

    def urls(self) -> list[str]:
        self._ensure_core()
        return sorted(self._sds)

    def error(self, url: str) -> str | None:
        """Why the snapshot of a registered profile could not be built, if it failed."""
        return self._errors.get(canonical(url))

    def snapshot(self, url: str) -> list[Element] | None:
        """The snapshot elements of a profile or base type (None: unknown, or its
        snapshot could not be generated -- see :meth:`error`)."""
        url = canonical(url)
        cached = self._snapshots.get(url)
        if cached is not None:
            return cached
        base = base_type_of(url)
        if base is not None and self.get(url) is None:
            elements = base_snapshot(base)
            self._snapshots[url] = elements
            return elements
        with self._lock:
            return self._build(url, ())

    def _build(self, url: str, stack: tuple[str, ...]) -> list[Element] | None:
        cached = self._snapshots.get(url)
        if cached is not None:
            return cached
        sd = self.get(url)
        if sd is None:
            base = base_type_of(url)
            return base_snapshot(base) if base else None
        if url in stack:
            self._errors[url] = "the profile derives from itself"
            return None
        try:
            elements = self._generate(url, sd, (*stack, url))
        except SnapshotError as exc:
            self._errors[url] = str(exc)
            return None
        self._snapshots[url] = elements
        return elements

    def _generate(self, url: str, sd: dict[str, Any], stack: tuple[str, ...]) -> list[Element]:
        snapshot = (sd.get("snapshot") or {}).get("element")
        if snapshot:
            import copy

            elements: list[Element] = copy.deepcopy(snapshot)
            for el, eid in zip(elements, element_ids(elements), strict=True):
                el["id"] = eid
            return elements
        base_url = sd.get("baseDefinition")
        base: list[Element] | None = None
        if isinstance(base_url, str) and self.get(base_url) is not None:
            base = self._build(canonical(base_url), stack)
            if base is None:
                raise SnapshotError(
                    f"the base profile {base_url} failed: {self._errors.get(canonical(base_url))}"
                )
        elif isinstance(base_url, str) and base_type_of(base_url) is None:
            raise SnapshotError(f"the base definition {base_url} is unknown")

        def source(profile: str) -> list[Element] | None:
            key = canonical(profile)
            if key in stack:
                return None
            return self._build(key, stack) if self.get(key) is not None else None

        return generate_snapshot(sd, base, source)

    def compiled(self, url: str) -> Any:
        """The compiled profile (:class:`fhir_server.validation.profile.Profile`)."""
        from fhir_server.validation.profile import compile_profile

        url = canonical(url)
        found = self._compiled.get(url)
        if found is not None:
            return found
        elements = self.snapshot(url)
        if elements is None:
            return None
        with self._lock:
            found = self._compiled.get(url)
            if found is None:
                found = compile_profile(url, self.type_of(url) or "", elements)
                self._compiled[url] = found
        return found

    # ------------------------------------------------------------------ terminology

    def value_set_codes(self, url: str) -> Codes | None:
        """(system, code) pairs of a value set registered here or bound as required in
        the base definitions; None when unknown or not expandable locally."""
        key = canonical(url)
        if key in self._codes:
            return self._codes[key]
        vs = self._value_sets.get(key)
        found: Codes | None
        if vs is not None:
            found = expand_local(vs, self._code_systems, self._value_sets, base_lookup)
        else:
            found = base_lookup(key)
        self._codes[key] = found
        return found

    def code_system(self, url: str) -> dict[str, Any] | None:
        return self._code_systems.get(canonical(url))

    def knows_value_set(self, url: str) -> bool:
        """Whether a value set is registered here or listed by the base definitions
        (even one that cannot be expanded locally)."""
        key = canonical(url)
        return (
            key in self._value_sets
            or definitions.value_set(key) is not None
            or definitions.value_set_not_checkable_reason(key) is not None
        )

    def expand(self, value_set: dict[str, Any]) -> Codes | None:
        """The (system, code) pairs of a ValueSet resource that is not registered (one
        contained in another resource), expanded against the registered code systems
        and value sets; None when it cannot be expanded locally."""
        return expand_local(value_set, self._code_systems, self._value_sets, base_lookup)

    # ------------------------------------------------------------------ questionnaires

    def questionnaire(self, url: str) -> dict[str, Any] | None:
        """The Questionnaire registered for a canonical URL: with ``|version``, the one
        with that version; without, the latest registered. ``Questionnaire/id`` finds
        one whose URL ends with it."""
        return _versioned(self._questionnaires, url, "Questionnaire/")

    def measure(self, url: str) -> dict[str, Any] | None:
        """The Measure registered for a canonical URL (as :meth:`questionnaire`)."""
        return _versioned(self._measures, url, "Measure/")

    # ------------------------------------------------------------------ guides

    def global_profiles(self, resource_type: str) -> list[tuple[str, str]]:
        """(profile, ImplementationGuide URL) of every ``ImplementationGuide.global``
        registered for a resource type: R4 "a profile that all resources of that type
        must conform to" in the context of the guide."""
        if not self._guides:
            return []
        found: list[tuple[str, str]] = []
        for url, guide in self._guides.items():
            entries = guide.get("global")
            if not isinstance(entries, list):
                continue
            for g in entries:
                if (
                    isinstance(g, dict)
                    and g.get("type") == resource_type
                    and isinstance(g.get("profile"), str)
                ):
                    found.append((g["profile"], url))
        return found


def _versioned(
    kept: dict[str, list[dict[str, Any]]], url: str, relative: str
) -> dict[str, Any] | None:
    """The resource kept for a canonical URL: with ``|version``, the one with that
    version; without, the latest registered. A relative ``Type/id`` finds one whose URL
    ends with it."""
    base, _, version = url.partition("|")
    found = kept.get(base)
    if not found and base.startswith(relative):
        # a relative reference (as in the R4 examples): the one whose URL ends so
        found = next((qs for key, qs in kept.items() if key.endswith("/" + base)), None)
    if not found:
        return None
    if not version:
        return found[-1]
    return next((q for q in reversed(found) if q.get("version") == version), None)


@cache
def default_registry() -> ProfileRegistry:
    """The server's registry: the core definitions and the repository's ``profiles/``."""
    registry = ProfileRegistry()
    registry.load_directory(PROFILES_DIR)
    return registry
