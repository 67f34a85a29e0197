"""Value sets for binding checks: the terminology lookup callable and a small local
expander.

Binding checks only need "which (system, code) pairs does this value set contain":
:data:`TerminologyLookup` is that question as a callable, so the validator does not
depend on a terminology service. :func:`base_lookup` answers for the value sets of the
R4 base definitions' required bindings; :func:`expand_local` expands a ValueSet
resource against local CodeSystems for what can be expanded without a terminology
server (enumerated concepts, whole complete code systems, ``is-a``/``descendent-of``/
``=`` filters on local code systems, included value sets, an ``expansion``). Anything
else -- SNOMED CT, LOINC, UCUM and other external systems without an enumeration --
gives None: not checkable locally.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any

from fhir_server import definitions

__all__ = ["Codes", "TerminologyLookup", "base_lookup", "chain", "expand_local"]

Codes = Collection[tuple[str, str]]
# value set canonical URL (optionally with |version) -> its (system, code) pairs, or
# None when the value set is unknown or cannot be expanded
TerminologyLookup = Callable[[str], Codes | None]


def base_lookup(url: str) -> Codes | None:
    """The value sets of the R4 base definitions' required bindings."""
    return definitions.value_set_codes(url)


def chain(*lookups: TerminologyLookup) -> TerminologyLookup:
    """The first answer that is not None."""

    def lookup(url: str) -> Codes | None:
        for fn in lookups:
            found = fn(url)
            if found is not None:
                return found
        return None

    return lookup


class _NotLocal(Exception):
    pass


def expand_local(
    value_set: Mapping[str, Any],
    code_systems: Mapping[str, Mapping[str, Any]],
    value_sets: Mapping[str, Mapping[str, Any]],
    fallback: TerminologyLookup | None = None,
) -> frozenset[tuple[str, str]] | None:
    """The (system, code) pairs of a ValueSet resource, or None when it needs codes
    that are not available locally. ``code_systems``/``value_sets`` are keyed by
    canonical URL (without version); ``fallback`` answers for included value sets
    that are not in ``value_sets``."""
    try:
        return frozenset(_expand(value_set, code_systems, value_sets, fallback, ()))
    except _NotLocal:
        return None


def _expand(
    vs: Mapping[str, Any],
    code_systems: Mapping[str, Mapping[str, Any]],
    value_sets: Mapping[str, Mapping[str, Any]],
    fallback: TerminologyLookup | None,
    stack: tuple[str, ...],
) -> set[tuple[str, str]]:
    url = str(vs.get("url", ""))
    if url in stack:
        raise _NotLocal
    stack = (*stack, url)
    expansion = vs.get("expansion")
    if isinstance(expansion, dict) and isinstance(expansion.get("contains"), list):
        if expansion.get("total", 0) and len(expansion["contains"]) < expansion.get("total", 0):
            raise _NotLocal  # a partial expansion
        return set(_contains(expansion["contains"]))
    compose = vs.get("compose")
    if not isinstance(compose, dict):
        raise _NotLocal
    out: set[tuple[str, str]] = set()
    for inc in compose.get("include") or ():
        out |= _include(inc, code_systems, value_sets, fallback, stack)
    for exc in compose.get("exclude") or ():
        out -= _include(exc, code_systems, value_sets, fallback, stack)
    return out


def _contains(items: Iterable[Any]) -> Iterator[tuple[str, str]]:
    for c in items:
        if not isinstance(c, dict):
            continue
        if isinstance(c.get("system"), str) and isinstance(c.get("code"), str):
            yield c["system"], c["code"]
        yield from _contains(c.get("contains") or ())


def _include(
    inc: Mapping[str, Any],
    code_systems: Mapping[str, Mapping[str, Any]],
    value_sets: Mapping[str, Mapping[str, Any]],
    fallback: TerminologyLookup | None,
    stack: tuple[str, ...],
) -> set[tuple[str, str]]:
    part: set[tuple[str, str]] | None = None
    system = inc.get("system")
    if isinstance(system, str):
        concepts = inc.get("concept")
        if concepts:
            codes = {c["code"] for c in concepts if isinstance(c, dict) and "code" in c}
        else:
            codes = _all_codes(system, code_systems)
        for flt in inc.get("filter") or ():
            codes &= _filter(system, flt, code_systems)
        part = {(system, c) for c in codes}
    for ref in inc.get("valueSet") or ():
        key = str(ref).split("|", 1)[0]
        other: set[tuple[str, str]]
        if key in value_sets:
            other = _expand(value_sets[key], code_systems, value_sets, fallback, stack)
        else:
            found = fallback(key) if fallback is not None else None
            if found is None:
                raise _NotLocal
            other = set(found)
        part = other if part is None else part & other
    return part or set()


def _code_system(system: str, code_systems: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Any]:
    cs = code_systems.get(system)
    if cs is None or cs.get("content") not in ("complete", None):
        raise _NotLocal
    return cs


def _walk(
    concepts: Iterable[Any], parent: str | None = None
) -> Iterator[tuple[Mapping[str, Any], str | None]]:
    for c in concepts:
        if isinstance(c, dict) and isinstance(c.get("code"), str):
            yield c, parent
            yield from _walk(c.get("concept") or (), c["code"])


def _all_codes(system: str, code_systems: Mapping[str, Mapping[str, Any]]) -> set[str]:
    cs = _code_system(system, code_systems)
    return {str(c["code"]) for c, _ in _walk(cs.get("concept") or ())}


def _filter(
    system: str, flt: Mapping[str, Any], code_systems: Mapping[str, Mapping[str, Any]]
) -> set[str]:
    op, prop, value = flt.get("op"), flt.get("property"), str(flt.get("value", ""))
    cs = _code_system(system, code_systems)
    if prop == "concept" and op in ("is-a", "descendent-of", "is-not-a"):
        children: dict[str, set[str]] = {}
        every: set[str] = set()
        for c, parent in _walk(cs.get("concept") or ()):
            every.add(str(c["code"]))
            if parent is not None:
                children.setdefault(parent, set()).add(str(c["code"]))
        below: set[str] = set()
        todo = [value]
        while todo:
            for child in children.get(todo.pop(), ()):
                if child not in below:
                    below.add(child)
                    todo.append(child)
        if op == "descendent-of":
            return below
        if op == "is-a":
            return below | {value}
        return every - below - {value}
    if op in ("=", "in") and isinstance(prop, str):
        wanted = set(value.split(",")) if op == "in" else {value}
        out = set()
        for c, _ in _walk(cs.get("concept") or ()):
            for p in c.get("property") or ():
                if p.get("code") == prop:
                    v = next((str(x) for k, x in p.items() if k.startswith("value")), None)
                    if v in wanted:
                        out.add(str(c["code"]))
        return out
    raise _NotLocal
