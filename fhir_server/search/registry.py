"""The search parameter registry: which parameters each resource type has.

Built from the official R4 SearchParameter definitions (``Resource`` parameters such
as ``_id``, ``_lastUpdated``, ``_tag``, ``_profile``, ``_security``, ``_source`` apply
to every type; ``DomainResource`` ones to domain resources), and extensible with
custom SearchParameter resources (:meth:`Registry.add`). A parameter is keyed by
``(resource type, code)``; a definition with several bases is registered for each.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from fhir_server.errors import bad_request
from fhir_server.search import model

ParamType = Literal[
    "number", "date", "string", "token", "reference", "composite", "quantity", "uri", "special"
]
PARAM_TYPES: frozenset[str] = frozenset(
    ("number", "date", "string", "token", "reference", "composite", "quantity", "uri", "special")
)

# Parameters the definitions list that are not real search parameters.
_EXCLUDED_URLS = frozenset({"http://hl7.org/fhir/SearchParameter/example"})

# Parameters handled by the engine itself rather than through an index expression.
RESULT_PARAMETERS = frozenset(
    {
        "_sort",
        "_count",
        "_include",
        "_revinclude",
        "_summary",
        "_total",
        "_elements",
        "_contained",
        "_containedType",
        "_format",
        "_pretty",
        "_cursor",
        "_type",
    }
)


@dataclass(frozen=True, slots=True)
class Component:
    definition: str  # url of the component's SearchParameter
    expression: str  # relative to the composite's value


@dataclass(frozen=True, slots=True)
class SearchParam:
    url: str
    code: str
    type: ParamType
    base: tuple[str, ...]
    expression: str | None
    targets: tuple[str, ...] = ()
    modifiers: tuple[str, ...] = ()
    comparators: tuple[str, ...] = ()
    components: tuple[Component, ...] = ()
    chains: tuple[str, ...] = ()

    @property
    def indexable(self) -> bool:
        return bool(self.expression) and self.type != "special"


def _param_from_json(sp: Mapping[str, Any]) -> SearchParam:
    ptype = sp.get("type")
    if ptype not in PARAM_TYPES:
        raise bad_request(f"SearchParameter type '{ptype}' is not supported")
    code = sp.get("code")
    if not isinstance(code, str) or not code:
        raise bad_request("SearchParameter.code is required")
    base = tuple(b for b in sp.get("base", ()) if isinstance(b, str))
    return SearchParam(
        url=str(sp.get("url") or f"urn:search-parameter:{code}"),
        code=code,
        type=ptype,
        base=base,
        expression=sp.get("expression") or None,
        targets=tuple(sp.get("target", ())),
        modifiers=tuple(sp.get("modifier", ())),
        comparators=tuple(sp.get("comparator", ())),
        components=tuple(
            Component(c["definition"], c["expression"]) for c in sp.get("component", ())
        ),
        chains=tuple(sp.get("chain", ())),
    )


@dataclass
class Registry:
    """Search parameters by resource type and code."""

    _by_type: dict[str, dict[str, SearchParam]] = field(default_factory=dict)
    _by_url: dict[str, SearchParam] = field(default_factory=dict)
    version: int = 0  # bumped on every change (extraction plans are cached per version)

    @classmethod
    def from_definitions(cls, definitions: Iterable[Mapping[str, Any]]) -> Registry:
        reg = cls()
        for sp in definitions:
            if sp.get("url") in _EXCLUDED_URLS or not sp.get("base"):
                continue
            reg._register(_param_from_json(sp))
        return reg

    def _register(self, param: SearchParam) -> None:
        old = self._by_url.get(param.url)
        if old is not None:
            for b in old.base:
                self._by_type.get(b, {}).pop(old.code, None)
        self._by_url[param.url] = param
        for b in param.base:
            self._by_type.setdefault(b, {})[param.code] = param
        self.version += 1

    def add(self, search_parameter: Mapping[str, Any]) -> SearchParam:
        """Register (or replace, by url) a custom SearchParameter resource."""
        param = _param_from_json(search_parameter)
        for b in param.base:
            if b not in ("Resource", "DomainResource") and not model.is_resource_type(b):
                raise bad_request(f"SearchParameter.base '{b}' is not a resource type")
        self._register(param)
        return param

    def get(self, resource_type: str | None, code: str) -> SearchParam | None:
        """The parameter ``code`` of ``resource_type`` (None: the common parameters)."""
        if resource_type is not None:
            p = self._by_type.get(resource_type, {}).get(code)
            if p is not None:
                return p
            if resource_type in model.DOMAIN_RESOURCE_TYPES:
                p = self._by_type.get("DomainResource", {}).get(code)
                if p is not None:
                    return p
        return self._by_type.get("Resource", {}).get(code)

    def by_url(self, url: str) -> SearchParam | None:
        return self._by_url.get(url)

    def for_type(self, resource_type: str) -> dict[str, SearchParam]:
        """All parameters of a resource type, common ones included."""
        out = dict(self._by_type.get("Resource", {}))
        if resource_type in model.DOMAIN_RESOURCE_TYPES:
            out.update(self._by_type.get("DomainResource", {}))
        out.update(self._by_type.get(resource_type, {}))
        return out

    def common(self, resource_types: Iterable[str]) -> dict[str, SearchParam]:
        """Parameters shared (same definition) by all the given types."""
        types = list(resource_types)
        if not types:
            return dict(self._by_type.get("Resource", {}))
        first = self.for_type(types[0])
        return {
            code: p
            for code, p in first.items()
            if all(self.for_type(t).get(code) == p for t in types[1:])
        }


_active: Registry | None = None


def default_registry() -> Registry:
    """The registry in use: the official R4 parameters (built once on first use), plus
    whatever custom parameters were added to it, or the one given to :func:`use`."""
    global _active
    if _active is None:
        from fhir_server import definitions

        _active = Registry.from_definitions(definitions.search_parameters())
    return _active


def use(registry: Registry | None) -> None:
    """Make ``registry`` the one in use (None: back to the official parameters).

    Resources indexed under another registry should be reindexed.
    """
    global _active
    _active = registry
