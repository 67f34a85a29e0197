"""How a resource is returned: `_summary`, `_elements`, `Prefer: return=`.

Spec: https://hl7.org/fhir/R4/search.html#summary, #elements and
https://hl7.org/fhir/R4/http.html#ops (Prefer).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fhir_server import definitions
from fhir_server.errors import bad_request

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "Resource encoded in summary mode",
}

SUMMARY_MODES = ("true", "false", "text", "data", "count")


def _mark_subsetted(resource: dict[str, Any]) -> None:
    meta = dict(resource.get("meta") or {})
    tags = list(meta.get("tag") or [])
    if not any(t.get("code") == "SUBSETTED" for t in tags if isinstance(t, dict)):
        tags.append(dict(SUBSETTED))
    meta["tag"] = tags
    resource["meta"] = meta


def summary_mode(params: Sequence[tuple[str, str]]) -> str | None:
    value = next((v for k, v in params if k == "_summary"), None)
    if value is None:
        return None
    if value not in SUMMARY_MODES:
        raise bad_request(
            f"_summary must be one of {', '.join(SUMMARY_MODES)}, not '{value}'", "_summary"
        )
    return None if value == "false" else value


def elements_list(params: Sequence[tuple[str, str]]) -> list[str] | None:
    values = [v for k, v in params if k == "_elements"]
    if not values:
        return None
    names: list[str] = []
    for v in values:
        for name in v.split(","):
            name = name.strip()
            if name:
                # R4 allows "Type.element" too; keep the element name
                names.append(name.split(".", 1)[1] if "." in name else name)
    return names


def apply_summary(resource: dict[str, Any], mode: str) -> dict[str, Any]:
    rtype = resource.get("resourceType", "")
    if mode == "text":
        keep = {"resourceType", "id", "meta", "text"} | set(definitions.mandatory_elements(rtype))
    elif mode == "data":
        keep = set(resource) - {"text"}
    elif mode == "true":
        keep = {"resourceType", "id", "meta"} | set(definitions.summary_elements(rtype))
    else:
        return resource
    out = {k: v for k, v in resource.items() if k in keep}
    _mark_subsetted(out)
    return out


def apply_elements(resource: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    rtype = resource.get("resourceType", "")
    keep = {"resourceType", "id", "meta"} | set(names) | set(definitions.mandatory_elements(rtype))
    out = {k: v for k, v in resource.items() if k in keep or _choice_match(k, names)}
    _mark_subsetted(out)
    return out


def _choice_match(key: str, names: Sequence[str]) -> bool:
    # `_elements=value` selects valueQuantity, valueString, ...
    return any(n and key.startswith(n) and key[len(n) : len(n) + 1].isupper() for n in names)


def shape(
    resource: dict[str, Any], summary: str | None, elements: Sequence[str] | None
) -> dict[str, Any]:
    if summary and summary != "count":
        resource = apply_summary(resource, summary)
    if elements:
        resource = apply_elements(resource, elements)
    return resource
