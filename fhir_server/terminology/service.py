"""The terminology operations as plain functions over a :class:`Terminology`:
$expand, $validate-code (ValueSet and CodeSystem), $lookup and $subsumes. They take
already-resolved resources and return FHIR resources (a ValueSet with its expansion, or
Parameters); parsing requests and finding resources is the operation layer's job
(:mod:`fhir_server.operations.terminology`).

Specs: https://hl7.org/fhir/R4/valueset-operation-expand.html,
valueset-operation-validate-code.html, codesystem-operation-lookup.html,
codesystem-operation-subsumes.html, codesystem-operation-validate-code.html.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from fhir_server.errors import FhirError
from fhir_server.terminology.expansion import Expander, Item, matches_text
from fhir_server.terminology.model import CodeSystemData, Concept, PropertyValue
from fhir_server.terminology.registry import Terminology

MAX_EXPANSION = 10_000  # larger expansions need count (paging)
_VALUE_SET_META = (
    "resourceType",
    "id",
    "meta",
    "url",
    "identifier",
    "version",
    "name",
    "title",
    "status",
    "experimental",
    "date",
    "publisher",
    "description",
    "copyright",
)


@dataclass(frozen=True, slots=True)
class Coding:
    """A coding to validate (from code+system, coding, or a codeableConcept)."""

    system: str | None
    code: str
    display: str | None = None
    version: str | None = None

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Coding | None:
        code = value.get("code")
        if not isinstance(code, str):
            return None
        system, display, version = value.get("system"), value.get("display"), value.get("version")
        return cls(
            system if isinstance(system, str) else None,
            code,
            display if isinstance(display, str) else None,
            version if isinstance(version, str) else None,
        )

    def text(self) -> str:
        return f"{self.system}#{self.code}" if self.system else self.code


# ---------------------------------------------------------------------- Parameters


def _value(value: PropertyValue) -> tuple[str, Any]:
    if isinstance(value, bool):
        return "valueBoolean", value
    if isinstance(value, int):
        return "valueInteger", value
    if isinstance(value, Decimal):
        return "valueDecimal", value
    if isinstance(value, dict):
        return "valueCoding", value
    return "valueString", value


def parameters(params: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(params)}


def _param(name: str, kind: str, value: Any) -> dict[str, Any]:
    return {"name": name, f"value{kind}": value}


# ---------------------------------------------------------------------- $expand


def expand(
    tx: Terminology,
    value_set: Mapping[str, Any],
    *,
    text: str | None = None,
    offset: int = 0,
    count: int | None = None,
    include_designations: bool = False,
    include_definition: bool = False,
    active_only: bool = False,
    exclude_not_for_ui: bool = False,
) -> dict[str, Any]:
    """The value set with an ``expansion`` (paged by offset/count)."""
    items = Expander(tx).expand(value_set)
    if active_only:
        items = [i for i in items if not i.inactive]
    if exclude_not_for_ui:
        items = [i for i in items if not i.abstract]
    if text:
        items = [i for i in items if matches_text(i, text)]
    total = len(items)
    if count is None and total > MAX_EXPANSION:
        raise FhirError.of(
            422,
            "too-costly",
            f"The expansion has {total} codes; page it with count (at most {MAX_EXPANSION})",
        )
    page = items[offset:] if count is None else items[offset : offset + count]
    out = {k: value_set[k] for k in _VALUE_SET_META if k in value_set}
    out.setdefault("resourceType", "ValueSet")
    out.setdefault("status", "active")
    if include_definition and "compose" in value_set:
        out["compose"] = value_set["compose"]
    used = sorted({(i.system, i.version) for i in items}, key=lambda sv: (sv[0], sv[1] or ""))
    params: list[dict[str, Any]] = []
    if text:
        params.append(_param("filter", "String", text))
    params.append(_param("offset", "Integer", offset))
    if count is not None:
        params.append(_param("count", "Integer", count))
    if include_designations:
        params.append(_param("includeDesignations", "Boolean", True))
    if active_only:
        params.append(_param("activeOnly", "Boolean", True))
    if exclude_not_for_ui:
        params.append(_param("excludeNotForUI", "Boolean", True))
    for system, version in used:
        params.append(
            _param("used-codesystem", "Uri", f"{system}|{version}" if version else system)
        )
    out["expansion"] = {
        "identifier": f"urn:uuid:{uuid.uuid4()}",
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "total": total,
        "offset": offset,
        "parameter": params,
    }
    if page:
        out["expansion"]["contains"] = [i.contains(designations=include_designations) for i in page]
    return out


# ---------------------------------------------------------------------- $validate-code


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def _displays(item: Item, concept: Concept | None) -> list[str]:
    out = [d for d in (item.display, concept.display if concept else None) if d]
    out += [d.value for d in item.designations]
    if concept is not None:
        out += [d.value for d in concept.designations]
    return out


def _check_display(
    coding: Coding, displays: Sequence[str], complete: bool
) -> tuple[bool, str | None]:
    """(still valid, message) for a display given by the client."""
    if coding.display is None or not displays:
        return True, None
    if _norm(coding.display) in {_norm(d) for d in displays}:
        return True, None
    message = (
        f"The display '{coding.display}' does not match the display of {coding.text()}: "
        f"'{displays[0]}'"
    )
    if complete:
        return False, message
    # A fragment of an external code system (CPT, ICD-10-CM, ...) carries local
    # descriptions only: another display may well be the official one.
    return True, message + " (the local code system is a fragment: warning only)"


def validate_in_value_set(
    tx: Terminology,
    value_set: Mapping[str, Any],
    codings: Sequence[Coding],
    *,
    abstract_ok: bool = False,
) -> dict[str, Any]:
    """Parameters(result, message?, display?) for codings of one CodeableConcept (valid
    when any coding is) or for a single coding."""
    items = Expander(tx).expand(value_set)
    by_key = {i.key: i for i in items}
    vs_name = str(value_set.get("url") or value_set.get("id") or "the value set")
    messages: list[str] = []
    for coding in codings:
        system = coding.system
        if system is None:
            systems = {i.system for i in items if i.code == coding.code}
            if len(systems) != 1:
                messages.append(
                    f"The code '{coding.code}' has no system and it cannot be inferred "
                    f"from {vs_name}"
                )
                continue
            system = systems.pop()
        cs = tx.code_system(system, coding.version)
        concept = cs.get(coding.code) if cs is not None else None
        code = concept.code if concept is not None else coding.code
        item = by_key.get((system, code))
        if item is None:
            if cs is not None and cs.complete and concept is None:
                messages.append(f"Unknown code '{coding.code}' in the code system '{system}'")
            else:
                messages.append(
                    f"The code {system}#{coding.code} is not in the value set {vs_name}"
                )
            continue
        if item.abstract and not abstract_ok:
            messages.append(
                f"The code {system}#{code} is an abstract (not selectable) concept of {vs_name}"
            )
            continue
        ok, message = _check_display(
            Coding(system, code, coding.display), _displays(item, concept), bool(cs and cs.complete)
        )
        display = item.display or (concept.display if concept else None)
        if ok:
            out = [_param("result", "Boolean", True)]
            if message:
                out.append(_param("message", "String", message))
            if display:
                out.append(_param("display", "String", display))
            return parameters(out)
        messages.append(message or "invalid display")
    out = [_param("result", "Boolean", False)]
    if messages:
        out.append(_param("message", "String", "; ".join(messages)))
    return parameters(out)


def validate_in_code_system(cs: CodeSystemData, codings: Sequence[Coding]) -> dict[str, Any]:
    """Parameters(result, message?, display?) for $validate-code on a CodeSystem."""
    messages: list[str] = []
    for coding in codings:
        if coding.system is not None and coding.system != cs.url:
            messages.append(f"The coding's system '{coding.system}' is not {cs.url}")
            continue
        concept = cs.get(coding.code)
        if concept is None:
            where = "the local fragment of " if not cs.complete else ""
            messages.append(f"Unknown code '{coding.code}' in {where}the code system '{cs.url}'")
            continue
        ok, message = _check_display(
            Coding(cs.url, concept.code, coding.display),
            [d for d in [concept.display, *(x.value for x in concept.designations)] if d],
            cs.complete,
        )
        if ok:
            out = [_param("result", "Boolean", True)]
            if message:
                out.append(_param("message", "String", message))
            if concept.display:
                out.append(_param("display", "String", concept.display))
            return parameters(out)
        messages.append(message or "invalid display")
    out = [_param("result", "Boolean", False)]
    if messages:
        out.append(_param("message", "String", "; ".join(messages)))
    return parameters(out)


# ---------------------------------------------------------------------- $lookup


def lookup(cs: CodeSystemData, concept: Concept, properties: Sequence[str] = ()) -> dict[str, Any]:
    """Parameters(name, version?, display, designation*, property*) for $lookup.

    Without requested ``properties`` every property is returned, with ``parent`` and
    ``child``; ``definition`` and ``designation`` when requested or when nothing was."""
    wanted = set(properties)
    everything = not wanted
    out: list[dict[str, Any]] = [_param("name", "String", cs.name or cs.title or cs.url)]
    if cs.version:
        out.append(_param("version", "String", cs.version))
    out.append(_param("display", "String", concept.display or concept.code))
    if concept.abstract:
        out.append(_param("abstract", "Boolean", True))
    if concept.definition and (everything or "definition" in wanted):
        out.append(
            {
                "name": "property",
                "part": [
                    _param("code", "Code", "definition"),
                    _param("value", "String", concept.definition),
                ],
            }
        )
    if everything or "designation" in wanted:
        for d in concept.designations:
            part: list[dict[str, Any]] = []
            if d.language:
                part.append(_param("language", "Code", d.language))
            if d.use:
                part.append(_param("use", "Coding", dict(d.use)))
            part.append(_param("value", "String", d.value))
            out.append({"name": "designation", "part": part})
    for code, values in concept.properties.items():
        if not (everything or code in wanted):
            continue
        for value in values:
            kind, v = _value(value)
            if cs.property_types.get(code) == "code" and kind == "valueString":
                kind = "valueCode"
            part = [_param("code", "Code", code), {"name": "value", kind: v}]
            if code in cs.property_descriptions:
                part.append(_param("description", "String", cs.property_descriptions[code]))
            out.append({"name": "property", "part": part})
    for code, related in (("parent", concept.parents), ("child", concept.children)):
        if everything or code in wanted:
            for other in related:
                out.append(
                    {
                        "name": "property",
                        "part": [_param("code", "Code", code), _param("value", "Code", other)],
                    }
                )
    return parameters(out)


def subsumes(cs: CodeSystemData, code_a: str, code_b: str) -> dict[str, Any]:
    """Parameters(outcome) for $subsumes; both codes must be in the code system."""
    concepts = []
    for label, code in (("codeA", code_a), ("codeB", code_b)):
        concept = cs.get(code)
        if concept is None:
            raise FhirError.of(
                404 if cs.complete else 422,
                "not-found" if cs.complete else "processing",
                f"Unknown code '{code}' ({label}) in the code system '{cs.url}'",
            )
        concepts.append(concept)
    outcome = cs.subsumes(concepts[0].code, concepts[1].code)
    return parameters([_param("outcome", "Code", outcome)])
