"""Rules of the R4 specification for conformance resources that their definitions
do not express as invariants (https://hl7.org/fhir/R4/searchparameter.html,
capabilitystatement.html):

* SearchParameter, ``type`` composite: a composite parameter combines two or more
  values (search.html#combining), so it defines at least two ``component``\\ s;
* SearchParameter ``derivedFrom``: "the details in the search parameter must be
  consistent with the definition from which it is defined" -- when that definition is
  known (the R4 core search parameters), the ``type`` is the same and every ``base``
  resource type is one of its bases (a derived parameter is a subset of the original,
  not a parameter of other resources);
* CapabilityStatement ``rest.resource.searchParam`` / ``rest.searchParam`` with a
  ``definition`` that is a known search parameter: ``type`` is that parameter's type
  (the statement documents the parameter, it cannot change how it is interpreted).

Only resources of these two types are looked at (:func:`check_conformance` returns at
once for any other type), so the cost on ordinary writes is one dict lookup.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any, Final

from fhir_server import definitions
from fhir_server.errors import Issue

__all__ = ["check_conformance", "core_search_parameter"]


@cache
def _core_search_parameters() -> dict[str, dict[str, Any]]:
    return {sp["url"]: sp for sp in definitions.search_parameters() if "url" in sp}


def core_search_parameter(url: str) -> dict[str, Any] | None:
    """An R4 core SearchParameter by canonical URL (``|version`` ignored)."""
    return _core_search_parameters().get(url.split("|", 1)[0])


def _search_parameter(sp: dict[str, Any], where: str, issues: list[Issue]) -> None:
    kind = sp.get("type")
    if kind == "composite":
        components = sp.get("component")
        count = len(components) if isinstance(components, list) else 0
        if count < 2:
            issues.append(
                Issue(
                    "error",
                    "business-rule",
                    "a composite SearchParameter combines two or more values, so it must "
                    f"define at least two components (found {count})",
                    (where,),
                )
            )
    derived = sp.get("derivedFrom")
    origin = core_search_parameter(derived) if isinstance(derived, str) else None
    if origin is None:
        return
    if isinstance(kind, str) and kind != origin.get("type"):
        issues.append(
            Issue(
                "error",
                "business-rule",
                f"the type {kind} is not the type {origin.get('type')} of the SearchParameter "
                f"{derived} it is derived from",
                (f"{where}.type",),
            )
        )
    bases = sp.get("base")
    allowed = origin.get("base") or []
    for i, base in enumerate(bases if isinstance(bases, list) else ()):
        if isinstance(base, str) and base not in allowed:
            issues.append(
                Issue(
                    "error",
                    "business-rule",
                    f"the resource type {base} is not a base of the SearchParameter {derived} "
                    f"it is derived from ({', '.join(allowed)})",
                    (f"{where}.base[{i}]",),
                )
            )


def _search_params(params: Any, where: str, issues: list[Issue]) -> None:
    for i, param in enumerate(params if isinstance(params, list) else ()):
        if not isinstance(param, dict):
            continue
        url, kind = param.get("definition"), param.get("type")
        origin = core_search_parameter(url) if isinstance(url, str) else None
        if origin is not None and isinstance(kind, str) and kind != origin.get("type"):
            issues.append(
                Issue(
                    "error",
                    "business-rule",
                    f"the type {kind} does not match the type {origin.get('type')} of the "
                    f"SearchParameter {url} it names as its definition",
                    (f"{where}[{i}]",),
                )
            )


def _capability_statement(cs: dict[str, Any], where: str, issues: list[Issue]) -> None:
    for r, rest in enumerate(cs.get("rest") or ()):
        if not isinstance(rest, dict):
            continue
        at = f"{where}.rest[{r}]"
        _search_params(rest.get("searchParam"), f"{at}.searchParam", issues)
        for n, resource in enumerate(rest.get("resource") or ()):
            if isinstance(resource, dict):
                _search_params(
                    resource.get("searchParam"), f"{at}.resource[{n}].searchParam", issues
                )


_RULES: Final[dict[str, Callable[[dict[str, Any], str, list[Issue]], None]]] = {
    "SearchParameter": _search_parameter,
    "CapabilityStatement": _capability_statement,
}


def check_conformance(resource: dict[str, Any], where: str) -> list[Issue]:
    """The issues of a SearchParameter or CapabilityStatement under the rules above
    (none for other resource types)."""
    rule = _RULES.get(resource.get("resourceType"))  # type: ignore[arg-type]
    if rule is None:
        return []
    issues: list[Issue] = []
    rule(resource, where, issues)
    return issues
