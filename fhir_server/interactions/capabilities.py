"""The CapabilityStatement, generated from what the server really routes.

Spec: https://hl7.org/fhir/R4/capabilitystatement.html and http.html#capabilities.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cache
from typing import Any, Protocol

from fhir_server import definitions
from fhir_server.operations.registry import declared
from fhir_server.search import fulltext, registry
from fhir_server.settings import Settings

SOFTWARE = {"name": "Rehab FHIR Server", "version": "0.1.0"}
FORMATS = ["application/fhir+json", "application/json", "json"]


class RouteLike(Protocol):
    @property
    def level(self) -> str: ...

    @property
    def code(self) -> str: ...


TYPE_INTERACTIONS = frozenset(
    {
        "read",
        "vread",
        "update",
        "patch",
        "delete",
        "history-instance",
        "history-type",
        "create",
        "search-type",
    }
)
SYSTEM_INTERACTIONS = frozenset({"transaction", "batch", "search-system", "history-system"})


@cache
def _search_params(resource_type: str) -> list[dict[str, Any]]:
    """The parameters the search engine really supports for the type."""
    params = registry.default_registry().for_type(resource_type)
    full_text = fulltext.indexed(resource_type)
    return [
        {"name": code, "definition": p.url, "type": p.type}
        for code, p in sorted(params.items())
        if p.indexable
        or code in ("_id", "_lastUpdated")
        or (code in ("_text", "_content") and full_text)
    ]


def build(settings: Settings, routes: Iterable[RouteLike], *, date: str) -> dict[str, Any]:
    routes = list(routes)
    type_codes = sorted({r.code for r in routes} & TYPE_INTERACTIONS)
    system_codes = sorted({r.code for r in routes} & SYSTEM_INTERACTIONS)
    if "transaction" in system_codes:
        system_codes.append("batch")
    resources = []
    for rtype in sorted(definitions.resource_types()):
        entry: dict[str, Any] = {
            "type": rtype,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{rtype}",
            "interaction": [{"code": c} for c in type_codes],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalRead": "full-support",
            "conditionalUpdate": True,
            "conditionalDelete": "single",
            "referencePolicy": ["literal", "logical"],
            "searchParam": _search_params(rtype),
        }
        ops = _operations(rtype, ("type", "instance"))
        if ops:
            entry["operation"] = ops
        resources.append(entry)
    rest: dict[str, Any] = {
        "mode": "server",
        "resource": resources,
        "compartment": sorted(
            c["url"] for c in definitions.compartment_definitions() if c.get("search")
        )
        if any(r.code == "search-compartment" for r in routes)
        else [],
        "interaction": [{"code": c} for c in sorted(set(system_codes))],
    }
    system_ops = _operations(None, ("system",))
    if system_ops:
        rest["operation"] = system_ops
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "publisher": "Rehab FHIR Server",
        "kind": "instance",
        "software": SOFTWARE,
        "implementation": {"description": "Rehab FHIR Server", "url": settings.base_url},
        "fhirVersion": "4.0.1",
        "format": FORMATS,
        "patchFormat": ["application/json-patch+json", "application/fhir+json"],
        "rest": [rest],
    }


def _operations(rtype: str | None, levels: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    for op in sorted(declared(), key=lambda o: o.name):
        if not any(level in op.levels for level in levels):
            continue
        if rtype is not None and op.resource_types is not None and rtype not in op.resource_types:
            continue
        out.append({"name": op.name, "definition": op.definition})
    return out
