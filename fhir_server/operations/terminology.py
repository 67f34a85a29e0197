"""Terminology operations: ValueSet $expand and $validate-code, CodeSystem $lookup,
$subsumes and $validate-code, at type and instance level, by GET (query parameters) or
POST (a Parameters body, optionally with query parameters).

Value sets and code systems are found in the project's terminology (see
:mod:`fhir_server.terminology`), then among the ValueSet/CodeSystem resources stored on
the server (by id for instance-level calls, by canonical ``url`` otherwise). A POSTed
``valueSet`` parameter is expanded or validated against as given.

Errors: an unknown value set or code system is ``404``; missing or malformed parameters
are ``400``; an unknown code in $lookup is ``404``. Specs:
https://hl7.org/fhir/R4/valueset-operation-expand.html,
https://hl7.org/fhir/R4/valueset-operation-validate-code.html,
https://hl7.org/fhir/R4/codesystem-operation-lookup.html,
https://hl7.org/fhir/R4/codesystem-operation-subsumes.html,
https://hl7.org/fhir/R4/codesystem-operation-validate-code.html.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fhir_server import jsonio
from fhir_server.errors import FhirError, bad_request
from fhir_server.interactions.context import Context
from fhir_server.interactions.model import FhirRequest, FhirResponse
from fhir_server.operations.registry import Operation, register
from fhir_server.terminology import registry as tx_registry
from fhir_server.terminology import service
from fhir_server.terminology.model import CodeSystemData
from fhir_server.terminology.registry import Terminology, split_canonical
from fhir_server.terminology.service import Coding

_OD = "http://hl7.org/fhir/OperationDefinition/"
_IGNORED = {"_format", "_pretty", "_summary", "_elements"}
_JSON = {"application/fhir+json", "application/json", "application/json+fhir"}


# ---------------------------------------------------------------------- inputs


@dataclass(slots=True)
class Inputs:
    """Operation parameters by name: strings from the query, typed values (or
    resources) from a Parameters body."""

    values: dict[str, list[Any]] = field(default_factory=dict)

    def add(self, name: str, value: Any) -> None:
        self.values.setdefault(name, []).append(value)

    def has(self, name: str) -> bool:
        return bool(self.values.get(name))

    def first(self, name: str) -> Any:
        items = self.values.get(name)
        return items[0] if items else None

    def all(self, name: str) -> list[Any]:
        return list(self.values.get(name, ()))

    def string(self, name: str) -> str | None:
        value = self.first(name)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise bad_request(f"Parameter '{name}' must be a non-empty string")
        return value

    def boolean(self, name: str, default: bool = False) -> bool:
        value = self.first(name)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if value in ("true", "false"):
            return bool(value == "true")
        raise bad_request(f"Parameter '{name}' must be true or false, not '{value}'")

    def integer(self, name: str) -> int | None:
        value = self.first(name)
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and value.isdigit():
            number = int(value)
        else:
            raise bad_request(f"Parameter '{name}' must be a non-negative integer, not '{value}'")
        if number < 0:
            raise bad_request(f"Parameter '{name}' must not be negative")
        return number

    def coding(self, name: str) -> Coding | None:
        """A Coding (POST) or ``system|code`` (GET)."""
        value = self.first(name)
        if value is None:
            return None
        if isinstance(value, str):
            system, sep, code = value.rpartition("|")
            if not code:
                raise bad_request(f"Parameter '{name}' must be a Coding or 'system|code'")
            return Coding(system if sep and system else None, code)
        coding = Coding.from_json(value) if isinstance(value, Mapping) else None
        if coding is None:
            raise bad_request(f"Parameter '{name}' must be a Coding with a code")
        return coding

    def codeable_concept(self, name: str) -> list[Coding] | None:
        value = self.first(name)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise bad_request(f"Parameter '{name}' must be a CodeableConcept (POST it)")
        codings = [
            c
            for c in (
                Coding.from_json(x) for x in value.get("coding") or () if isinstance(x, Mapping)
            )
            if c is not None
        ]
        if not codings:
            raise bad_request(f"Parameter '{name}' has no coding with a code")
        return codings

    def resource(self, name: str, resource_type: str) -> dict[str, Any] | None:
        value = self.first(name)
        if value is None:
            return None
        if not isinstance(value, dict) or value.get("resourceType") != resource_type:
            raise bad_request(f"Parameter '{name}' must be a {resource_type} resource")
        return value


_VALUE_PREFIX = "value"


def _from_parameters(body: Any, inputs: Inputs) -> None:
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise bad_request("The body of a terminology operation must be a Parameters resource")
    for p in body.get("parameter") or ():
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            raise bad_request("Every Parameters.parameter needs a name")
        if "resource" in p:
            inputs.add(p["name"], p["resource"])
            continue
        values = [k for k in p if k.startswith(_VALUE_PREFIX)]
        if len(values) != 1:
            raise bad_request(f"Parameter '{p['name']}' needs exactly one value[x]")
        inputs.add(p["name"], p[values[0]])


def _inputs(req: FhirRequest) -> Inputs:
    inputs = Inputs()
    for name, value in req.params:
        if name not in _IGNORED:
            inputs.add(name, value)
    if req.method == "POST":
        if req.parsed is not None:
            _from_parameters(req.parsed, inputs)
        elif req.body:
            if req.content_type not in _JSON:
                raise FhirError.of(
                    415, "not-supported", "POST a Parameters resource as application/fhir+json"
                )
            try:
                body = jsonio.loads(req.body)
            except jsonio.JsonError as exc:
                raise bad_request(str(exc)) from None
            _from_parameters(body, inputs)
    return inputs


# ---------------------------------------------------------------------- resolving


async def _stored_by_url(ctx: Context, resource_type: str, url: str) -> dict[str, Any] | None:
    """A stored CodeSystem/ValueSet with this canonical URL (``url|version`` allowed)."""
    from fhir_server.interactions import search as searching

    base, version = split_canonical(url)
    params = [("url", base)] + ([("version", version)] if version else [])
    try:
        bundle = await searching.search(
            ctx.store, resource_type, params, base_url=ctx.base_url, strict=False
        )
    except FhirError:
        return None
    for entry in bundle.get("entry") or ():
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if (
            isinstance(resource, dict)
            and resource.get("url") == base
            and (version is None or resource.get("version") == version)
        ):
            return resource
    return None


async def _stored_by_id(ctx: Context, resource_type: str, id: str) -> dict[str, Any] | None:
    version = await ctx.current(resource_type, id)
    if version is None or version.deleted or version.content is None:
        return None
    resource: dict[str, Any] = jsonio.loads(version.content)
    return resource


async def _with_dependencies(
    ctx: Context, tx: Terminology, extra: list[dict[str, Any]]
) -> Terminology:
    """``tx`` with ``extra`` resources on top, plus the stored code systems and value
    sets their composes refer to (recursively) that ``tx`` does not know."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    queue = list(extra)
    seen: set[tuple[str, str]] = set()
    while queue:
        resource = queue.pop()
        compose = resource.get("compose") if resource.get("resourceType") == "ValueSet" else None
        if not isinstance(compose, dict):
            continue
        for component in [*(compose.get("include") or ()), *(compose.get("exclude") or ())]:
            if not isinstance(component, dict):
                continue
            wanted: list[tuple[str, str]] = []
            system = component.get("system")
            if isinstance(system, str):
                wanted.append(("CodeSystem", system))
            wanted += [
                ("ValueSet", u) for u in component.get("valueSet") or () if isinstance(u, str)
            ]
            for rtype, url in wanted:
                if (rtype, url) in seen:
                    continue
                seen.add((rtype, url))
                known = tx.code_system(url) if rtype == "CodeSystem" else tx.value_set(url)
                if known is not None:
                    continue
                stored = await _stored_by_url(ctx, rtype, url)
                if stored is not None:
                    found[(rtype, url)] = stored
                    queue.append(stored)
    resources = [*extra, *found.values()]
    return tx.overlay(resources) if resources else tx


async def _value_set(
    ctx: Context, tx: Terminology, inputs: Inputs, rid: str | None
) -> tuple[Terminology, dict[str, Any]]:
    """The value set the operation is about, and the terminology to evaluate it in."""
    posted = inputs.resource("valueSet", "ValueSet")
    url = inputs.string("url")
    version = inputs.string("valueSetVersion")
    if rid is not None:
        vs = tx.by_id("ValueSet", rid)
        if vs is not None:
            return tx, vs
        stored = await _stored_by_id(ctx, "ValueSet", rid)
        if stored is None:
            raise FhirError.of(404, "not-found", f"ValueSet/{rid} is not known")
        return await _with_dependencies(ctx, tx, [stored]), stored
    if posted is not None:
        return await _with_dependencies(ctx, tx, [posted]), posted
    if url is None:
        raise bad_request(
            "Name the value set: an instance id, the url parameter or a valueSet resource",
            "url",
        )
    vs = tx.value_set(url, version)
    if vs is not None:
        return tx, vs
    canonical = f"{split_canonical(url)[0]}|{version}" if version else url
    stored = await _stored_by_url(ctx, "ValueSet", canonical)
    if stored is None:
        raise FhirError.of(404, "not-found", f"Unknown value set '{canonical}'")
    return await _with_dependencies(ctx, tx, [stored]), stored


async def _code_system(
    ctx: Context, tx: Terminology, rid: str | None, url: str | None, version: str | None
) -> CodeSystemData:
    if rid is not None:
        known = tx.by_id("CodeSystem", rid)
        if known is not None:
            cs = tx.code_system(str(known.get("url", "")), known.get("version"))
            if cs is not None:
                return cs
        resource = await _stored_by_id(ctx, "CodeSystem", rid)
        if resource is None:
            raise FhirError.of(404, "not-found", f"CodeSystem/{rid} is not known")
        cs = tx.overlay([resource]).code_system(
            str(resource.get("url", "")), resource.get("version")
        )
        if cs is None:
            raise bad_request(f"CodeSystem/{rid} has no url")
        return cs
    if url is None:
        raise bad_request("Name the code system: an instance id or the system parameter", "system")
    found = tx.code_system(url, version)
    if found is not None:
        return found
    canonical = f"{split_canonical(url)[0]}|{version}" if version else url
    stored = await _stored_by_url(ctx, "CodeSystem", canonical)
    if stored is not None:
        cs = tx.overlay([stored]).code_system(url, version)
        if cs is not None:
            return cs
    raise FhirError.of(404, "not-found", f"Unknown code system '{canonical}'")


def _terminology() -> Terminology:
    return tx_registry.default()


# ---------------------------------------------------------------------- handlers


async def expand(
    ctx: Context, req: FhirRequest, resource_type: str | None, rid: str | None
) -> FhirResponse:
    inputs = _inputs(req)
    tx, vs = await _value_set(ctx, _terminology(), inputs, rid)
    result = service.expand(
        tx,
        vs,
        text=inputs.string("filter"),
        offset=inputs.integer("offset") or 0,
        count=inputs.integer("count"),
        include_designations=inputs.boolean("includeDesignations"),
        include_definition=inputs.boolean("includeDefinition"),
        active_only=inputs.boolean("activeOnly"),
        exclude_not_for_ui=inputs.boolean("excludeNotForUI"),
    )
    return FhirResponse(200, resource=result)


def _codings(inputs: Inputs, system_param: str) -> tuple[list[Coding], bool]:
    """The codings to validate and whether they came as one CodeableConcept."""
    cc = inputs.codeable_concept("codeableConcept")
    if cc is not None:
        return cc, True
    coding = inputs.coding("coding")
    if coding is not None:
        return [coding], False
    code = inputs.string("code")
    if code is None:
        raise bad_request("Give the code to validate: code (+system), coding or codeableConcept")
    system = inputs.string(system_param)
    version = inputs.string("systemVersion") or inputs.string("version")
    return [Coding(system, code, inputs.string("display"), version)], False


async def validate_code(
    ctx: Context, req: FhirRequest, resource_type: str | None, rid: str | None
) -> FhirResponse:
    inputs = _inputs(req)
    tx = _terminology()
    if resource_type == "CodeSystem":
        codings, _ = _codings(inputs, "url")
        url = inputs.string("url") or next((c.system for c in codings if c.system), None)
        cs = await _code_system(ctx, tx, rid, url, inputs.string("version"))
        return FhirResponse(200, resource=service.validate_in_code_system(cs, codings))
    tx, vs = await _value_set(ctx, tx, inputs, rid)
    codings, _ = _codings(inputs, "system")
    result = service.validate_in_value_set(tx, vs, codings, abstract_ok=inputs.boolean("abstract"))
    return FhirResponse(200, resource=result)


async def lookup(
    ctx: Context, req: FhirRequest, resource_type: str | None, rid: str | None
) -> FhirResponse:
    inputs = _inputs(req)
    coding = inputs.coding("coding")
    code = coding.code if coding else inputs.string("code")
    system = (coding.system if coding else None) or inputs.string("system")
    if code is None:
        raise bad_request("$lookup needs code and system, or coding", "code")
    if system is None and rid is None:
        raise bad_request("$lookup needs the system of the code", "system")
    cs = await _code_system(ctx, _terminology(), rid, system, inputs.string("version"))
    concept = cs.get(code)
    if concept is None:
        where = "the local fragment of " if not cs.complete else ""
        raise FhirError.of(404, "not-found", f"Unknown code '{code}' in {where}'{cs.url}'")
    properties = [p for p in inputs.all("property") if isinstance(p, str)]
    return FhirResponse(200, resource=service.lookup(cs, concept, properties))


async def subsumes(
    ctx: Context, req: FhirRequest, resource_type: str | None, rid: str | None
) -> FhirResponse:
    inputs = _inputs(req)
    coding_a, coding_b = inputs.coding("codingA"), inputs.coding("codingB")
    code_a = coding_a.code if coding_a else inputs.string("codeA")
    code_b = coding_b.code if coding_b else inputs.string("codeB")
    if code_a is None or code_b is None:
        raise bad_request("$subsumes needs codeA and codeB (or codingA and codingB)")
    systems = {c.system for c in (coding_a, coding_b) if c is not None and c.system}
    if len(systems) > 1:
        raise bad_request("codingA and codingB must be from the same code system")
    system = inputs.string("system") or (systems.pop() if systems else None)
    if system is None and rid is None:
        raise bad_request("$subsumes needs the system of the codes", "system")
    cs = await _code_system(ctx, _terminology(), rid, system, inputs.string("version"))
    return FhirResponse(200, resource=service.subsumes(cs, code_a, code_b))


_BOTH = frozenset({"GET", "POST"})
_LEVELS: frozenset[Any] = frozenset({"type", "instance"})

EXPAND = register(
    Operation(
        name="expand",
        definition=_OD + "ValueSet-expand",
        levels=_LEVELS,
        handler=expand,
        resource_types=frozenset({"ValueSet"}),
        methods=_BOTH,
    )
)
# One $validate-code serves ValueSet and CodeSystem (the registry keys operations by
# name); the CapabilityStatement names the ValueSet definition for both.
VALIDATE_CODE = register(
    Operation(
        name="validate-code",
        definition=_OD + "ValueSet-validate-code",
        levels=_LEVELS,
        handler=validate_code,
        resource_types=frozenset({"ValueSet", "CodeSystem"}),
        methods=_BOTH,
    )
)
LOOKUP = register(
    Operation(
        name="lookup",
        definition=_OD + "CodeSystem-lookup",
        levels=_LEVELS,
        handler=lookup,
        resource_types=frozenset({"CodeSystem"}),
        methods=_BOTH,
    )
)
SUBSUMES = register(
    Operation(
        name="subsumes",
        definition=_OD + "CodeSystem-subsumes",
        levels=_LEVELS,
        handler=subsumes,
        resource_types=frozenset({"CodeSystem"}),
        methods=_BOTH,
    )
)
