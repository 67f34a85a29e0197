"""Value set expansion: ``ValueSet.compose`` evaluated over a :class:`Terminology`.

Supported (https://hl7.org/fhir/R4/valueset.html#compose): ``include``/``exclude`` with
``system`` (+``version``), an enumerated ``concept`` list, ``filter`` and ``valueSet``
imports (their intersection with the rest of the include). Filter operators:

- on ``concept`` (or ``code``): ``is-a``, ``descendent-of`` (also spelled
  ``descendant-of``), ``is-not-a``, ``generalizes``, ``=``, ``in``, ``not-in``,
  ``regex``;
- on ``display``: ``=``, ``regex``;
- on any concept property: ``=``, ``in``, ``not-in``, ``regex``, ``exists``. A property
  that repeats matches when any of its values does; ``not-in`` also matches concepts
  without the property. Booleans compare as ``true``/``false``.

Regular expressions must match the whole value and are limited to 200 characters.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from fhir_server.errors import FhirError
from fhir_server.terminology.model import CodeSystemData, Concept, Designation, PropertyValue
from fhir_server.terminology.registry import Terminology

MAX_DEPTH = 10  # nested valueSet imports
MAX_REGEX = 200


@dataclass(frozen=True, slots=True)
class Item:
    """One entry of an expansion."""

    system: str
    code: str
    display: str | None = None
    version: str | None = None
    abstract: bool = False
    inactive: bool = False
    designations: tuple[Designation, ...] = ()
    definition: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.system, self.code)

    def contains(self, *, designations: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"system": self.system}
        if self.abstract:
            out["abstract"] = True
        if self.inactive:
            out["inactive"] = True
        if self.version:
            out["version"] = self.version
        out["code"] = self.code
        if self.display:
            out["display"] = self.display
        if designations and self.designations:
            out["designation"] = [d.to_json() for d in self.designations]
        return out


def _item(concept: Concept, display: str | None = None) -> Item:
    return Item(
        system=concept.system,
        code=concept.code,
        display=display or concept.display,
        version=concept.version,
        abstract=concept.abstract,
        inactive=concept.inactive,
        designations=concept.designations,
        definition=concept.definition,
    )


def _processing(message: str, status: int = 400) -> FhirError:
    return FhirError.of(status, "not-supported" if status == 400 else "not-found", message)


def _text(value: PropertyValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return str(value.get("code", ""))
    if isinstance(value, Decimal):
        return getattr(value, "text", None) or str(value)
    return str(value)


def _regex(pattern: str) -> re.Pattern[str]:
    if len(pattern) > MAX_REGEX:
        raise _processing(f"regex filter longer than {MAX_REGEX} characters")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise _processing(f"invalid regex filter '{pattern}': {exc}") from None


def _split(value: str) -> set[str]:
    return {v.strip() for v in value.split(",") if v.strip()}


class Expander:
    """Expands value sets over one terminology (results are cached on it)."""

    def __init__(self, terminology: Terminology) -> None:
        self.tx = terminology

    # ------------------------------------------------------------------ public

    def expand_url(self, url: str) -> list[Item]:
        vs = self.tx.value_set(url)
        if vs is None:
            raise _processing(f"Unknown value set '{url}'", 404)
        return self.expand(vs)

    def expand(self, value_set: Mapping[str, Any], depth: int = 0) -> list[Item]:
        """All items of the value set, in definition order, without duplicates."""
        url = value_set.get("url")
        if isinstance(url, str) and self.tx.value_set(url) is value_set:
            key = ("expansion", url, value_set.get("version"))
            items: list[Item] = self.tx.cached(key, lambda: self._expand(value_set, depth))
            return items
        return self._expand(value_set, depth)

    # ------------------------------------------------------------------ compose

    def _expand(self, value_set: Mapping[str, Any], depth: int) -> list[Item]:
        if depth > MAX_DEPTH:
            raise _processing("value set imports nest too deeply (a cycle?)")
        compose = value_set.get("compose")
        if not isinstance(compose, Mapping):
            expansion = value_set.get("expansion")
            if isinstance(expansion, Mapping):
                return list(_flatten(expansion.get("contains") or ()))
            raise _processing(
                f"ValueSet '{value_set.get('url') or value_set.get('id')}' has no compose "
                "and no expansion"
            )
        inactive_ok = compose.get("inactive") is not False
        out: dict[tuple[str, str], Item] = {}
        for include in compose.get("include") or ():
            for item in self._component(include, depth):
                if item.inactive and not inactive_ok:
                    continue
                out.setdefault(item.key, item)
        for exclude in compose.get("exclude") or ():
            for item in self._component(exclude, depth):
                out.pop(item.key, None)
        return list(out.values())

    def _component(self, component: Mapping[str, Any], depth: int) -> list[Item]:
        system = component.get("system")
        imports = [self._import(u, depth) for u in component.get("valueSet") or ()]
        if system is None:
            if not imports:
                raise _processing("a compose include/exclude needs a system or a valueSet")
            first, *rest = imports
            keys = set.intersection(*({i.key for i in r} for r in rest)) if rest else None
            return [i for i in first if keys is None or i.key in keys]
        if not isinstance(system, str):
            raise _processing("compose system must be a string")
        version = component.get("version")
        cs = self.tx.code_system(system, version if isinstance(version, str) else None)
        items = self._from_system(system, cs, component)
        for imported in imports:
            keys = {i.key for i in imported}
            items = [i for i in items if i.key in keys]
        return items

    def _import(self, url: Any, depth: int) -> list[Item]:
        if not isinstance(url, str):
            raise _processing("compose valueSet must be a canonical URL")
        vs = self.tx.value_set(url)
        if vs is None:
            raise _processing(f"Unknown value set '{url}' (imported by a compose)", 404)
        return self.expand(vs, depth + 1)

    def _from_system(
        self, system: str, cs: CodeSystemData | None, component: Mapping[str, Any]
    ) -> list[Item]:
        concepts = component.get("concept")
        filters = component.get("filter")
        if concepts:
            out = []
            for c in concepts:
                code = c.get("code") if isinstance(c, Mapping) else None
                if not isinstance(code, str):
                    continue
                known = cs.get(code) if cs is not None else None
                display = c.get("display")
                if known is not None:
                    out.append(_item(known, display if isinstance(display, str) else None))
                elif cs is not None and cs.complete:
                    continue  # not a code of that system: not a member
                else:
                    out.append(Item(system, code, display if isinstance(display, str) else None))
            if filters:
                if cs is None:
                    raise _processing(f"Cannot filter the unknown code system '{system}'", 404)
                allowed = {c.code for c in self._filtered(cs, filters)}
                out = [i for i in out if i.code in allowed]
            return out
        if cs is None:
            raise _processing(
                f"The code system '{system}' is not known here, so its codes cannot be listed",
                404,
            )
        selected: Iterable[Concept] = self._filtered(cs, filters) if filters else cs
        return [_item(c) for c in selected]

    # ------------------------------------------------------------------ filters

    def _filtered(self, cs: CodeSystemData, filters: Iterable[Any]) -> list[Concept]:
        result: list[Concept] | None = None
        for f in filters:
            if not isinstance(f, Mapping):
                raise _processing("a compose filter must be an object")
            prop, op, value = f.get("property"), f.get("op"), f.get("value")
            if not isinstance(prop, str) or not isinstance(op, str) or not isinstance(value, str):
                raise _processing("a compose filter needs property, op and value")
            selected = self._apply(cs, prop, op, value)
            if result is None:
                result = selected
            else:
                keep = {c.code for c in selected}
                result = [c for c in result if c.code in keep]
        return result if result is not None else list(cs)

    def _apply(self, cs: CodeSystemData, prop: str, op: str, value: str) -> list[Concept]:
        if prop in ("concept", "code"):
            return self._concept_filter(cs, op, value)
        if prop == "display":
            if op == "=":
                return [c for c in cs if (c.display or "") == value]
            if op == "regex":
                pattern = _regex(value)
                return [c for c in cs if pattern.fullmatch(c.display or "")]
            raise _processing(f"filter op '{op}' is not supported on display")
        if op == "=":
            return [c for c in cs if any(_text(v) == value for v in c.values(prop))]
        if op == "in":
            wanted = _split(value)
            return [c for c in cs if any(_text(v) in wanted for v in c.values(prop))]
        if op == "not-in":
            unwanted = _split(value)
            return [c for c in cs if not any(_text(v) in unwanted for v in c.values(prop))]
        if op == "regex":
            pattern = _regex(value)
            return [c for c in cs if any(pattern.fullmatch(_text(v)) for v in c.values(prop))]
        if op == "exists":
            want = value.strip().lower() == "true"
            return [c for c in cs if bool(c.values(prop)) == want]
        raise _processing(f"filter op '{op}' is not supported on property '{prop}'")

    def _concept_filter(self, cs: CodeSystemData, op: str, value: str) -> list[Concept]:
        if op in ("is-a", "descendent-of", "descendant-of", "is-not-a", "generalizes", "="):
            root = cs.get(value)
            if root is None:
                if op == "is-not-a":
                    return list(cs)
                return []
            if op == "=":
                return [root]
            if op == "generalizes":
                up = cs.ancestors(root.code) | {root.code}
                return [c for c in cs if c.code in up]
            below = cs.descendants(root.code)
            if op == "is-a":
                return [root, *(cs.concepts[c] for c in below)]
            if op in ("descendent-of", "descendant-of"):
                return [cs.concepts[c] for c in below]
            excluded = {root.code, *below}
            return [c for c in cs if c.code not in excluded]
        if op == "in":
            wanted = _split(value)
            return [c for c in cs if c.code in wanted]
        if op == "not-in":
            unwanted = _split(value)
            return [c for c in cs if c.code not in unwanted]
        if op == "regex":
            pattern = _regex(value)
            return [c for c in cs if pattern.fullmatch(c.code)]
        raise _processing(f"filter op '{op}' is not supported on concept")


def _flatten(contains: Iterable[Any]) -> Iterable[Item]:
    for c in contains:
        if not isinstance(c, Mapping):
            continue
        if isinstance(c.get("system"), str) and isinstance(c.get("code"), str):
            yield Item(
                c["system"],
                c["code"],
                c.get("display"),
                c.get("version"),
                abstract=c.get("abstract") is True,
                inactive=c.get("inactive") is True,
            )
        yield from _flatten(c.get("contains") or ())


def matches_text(item: Item, text: str) -> bool:
    """The ``filter`` parameter of $expand: every word of ``text`` occurs (case
    insensitive) in the code, the display or a designation."""
    words = text.lower().split()
    if not words:
        return True
    hay = " ".join([item.code, item.display or "", *(d.value for d in item.designations)]).lower()
    return all(w in hay for w in words)
