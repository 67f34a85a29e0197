"""Bulk Data export kick-off (FHIR Bulk Data Access 2.0, ``$export``):
https://hl7.org/fhir/uv/bulkdata/export.html

* ``GET|POST [base]/$export`` -- every resource type;
* ``GET|POST [base]/Patient/$export`` -- the compartments of all patients;
* ``GET|POST [base]/Group/[id]/$export`` -- the compartments of the Group's active
  Patient members (``404`` for an unknown Group).

The kick-off needs ``Prefer: respond-async`` and, when an ``Accept`` header is sent,
one that allows ``application/fhir+json``. It answers ``202 Accepted`` with the job's
status URL in ``Content-Location``; the job runs in the background
(:mod:`fhir_server.operations.export_jobs`), and the status URL and the files are
served by :mod:`fhir_server.api.export`.

Parameters (query parameters, or with ``POST`` a Parameters body; repeated parameters
and comma-separated values add up):

* ``_outputFormat``: ``application/fhir+ndjson`` (default), ``application/ndjson`` or
  ``ndjson``;
* ``_since``: an instant; only resources changed after it;
* ``_type``: resource types (at patient and group level, types of the Patient
  compartment);
* ``_typeFilter``: ``[type]?[search query]`` -- a resource of that type is exported
  when it matches one of its type's queries (search parameters only: no ``_sort``,
  ``_include``, ``_count`` ...);
* ``_elements``: ``[element]`` or ``[type].[element]``: the top-level elements kept
  (plus the mandatory ones; such resources are tagged ``SUBSETTED``);
* ``patient`` (patient and group level): references to the Patients whose
  compartments are exported.

Other parameters are an error (``400``), as are parameters not supported at the
level; with ``Prefer: handling=lenient`` they are ignored instead and reported in the
job's error file. An unknown resource type is always an error.

Authorization (with a principal on the context): the types need ``user/`` or
``system/`` scopes; without ``_type`` the export holds the types the token may search
(see :func:`fhir_server.auth.enforce.export_types`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import parse_qsl

from fhir_server import definitions
from fhir_server.errors import FhirError, Issue, bad_request, operation_outcome
from fhir_server.interactions import resources as res
from fhir_server.interactions.context import Context
from fhir_server.interactions.model import FhirRequest, FhirResponse
from fhir_server.operations.export_jobs import (
    ExportSpec,
    Level,
    any_of,
    compartment_types,
    request_url,
)
from fhir_server.operations.registry import Operation, register
from fhir_server.search.query import Clause

_BULK: Final = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/"
EXPORT: Final = _BULK + "export"
PATIENT_EXPORT: Final = _BULK + "patient-export"
GROUP_EXPORT: Final = _BULK + "group-export"

OUTPUT_FORMATS: Final = frozenset({"application/fhir+ndjson", "application/ndjson", "ndjson"})
_PARAMETERS: Final = frozenset(
    {"_outputFormat", "_since", "_type", "_typeFilter", "_elements", "patient"}
)
_IGNORED: Final = frozenset({"_format", "_pretty"})
# search result parameters, which have no meaning in a _typeFilter query
_RESULT_PARAMETERS: Final = frozenset(
    {
        "_count",
        "_cursor",
        "_sort",
        "_include",
        "_revinclude",
        "_summary",
        "_elements",
        "_total",
        "_contained",
        "_containedType",
        "_type",
        "_format",
        "_pretty",
    }
)
_INSTANT = re.compile(
    r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)"
    r"(\.\d{1,9})?(Z|[+-]((0\d|1[0-3]):[0-5]\d|14:00))"
)
_ELEMENT = re.compile(r"[A-Za-z][A-Za-z0-9]*")


def _tokens(header: str | None) -> set[str]:
    """The preferences of a ``Prefer`` header, lower case without spaces."""
    out: set[str] = set()
    for part in re.split(r"[,;]", header or ""):
        token = part.replace(" ", "").lower()
        if token:
            out.add(token)
    return out


def _check_accept(accept: str | None) -> None:
    if not accept:
        return  # application/fhir+json is assumed
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        if media in ("application/fhir+json", "*/*", "application/*"):
            return
    raise bad_request(
        f"The $export kick-off answers in application/fhir+json, which 'Accept: {accept}'"
        " does not allow"
    )


def _value(param: dict[str, Any]) -> str:
    name = param["name"]
    reference = param.get("valueReference")
    if isinstance(reference, dict) and isinstance(reference.get("reference"), str):
        return str(reference["reference"])
    for key, value in param.items():
        if key.startswith("value") and isinstance(value, str):
            return value
    raise bad_request(f"The $export parameter '{name}' needs a string, code, instant or reference")


def _parameters(req: FhirRequest) -> list[tuple[str, str]]:
    """The kick-off's parameters: the query's, then a Parameters body's."""
    pairs = [(k, v) for k, v in req.params if k not in _IGNORED]
    body: Any = req.parsed
    if body is None and req.method == "POST" and req.body:
        body = res.parse_body(req.body)
    if body is None:
        return pairs
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise bad_request("The body of a $export kick-off must be a Parameters resource")
    for param in body.get("parameter") or ():
        if not isinstance(param, dict) or not isinstance(param.get("name"), str):
            raise bad_request("Each parameter of the Parameters body needs a name")
        pairs.append((param["name"], _value(param)))
    return pairs


class _Kickoff:
    """The checks of one kick-off; unsupported things are errors, or with
    ``handling=lenient`` warnings (:attr:`warnings`)."""

    def __init__(self, ctx: Context, level: Level, lenient: bool) -> None:
        self.ctx = ctx
        self.level = level
        self.lenient = lenient
        self.warnings: list[Issue] = []
        self.candidates = (
            tuple(sorted(definitions.resource_types()))
            if level == "system"
            else compartment_types()
        )

    def unsupported(self, message: str, where: str) -> None:
        if not self.lenient:
            raise FhirError.of(400, "not-supported", message, where)
        self.warnings.append(Issue("warning", "not-supported", f"Ignored: {message}", (where,)))

    def single(self, values: dict[str, list[str]], name: str) -> str | None:
        found = values.get(name, [])
        if len(found) > 1:
            raise bad_request(f"'{name}' may only be given once", name)
        return found[0] if found else None

    def since(self, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().replace(" ", "+")  # an unescaped '+' arrives as a space
        if not _INSTANT.fullmatch(value):
            raise bad_request(
                f"_since must be an instant such as 2024-01-31T12:00:00Z, not '{value}'", "_since"
            )
        return value

    def types(self, values: Sequence[str]) -> list[str]:
        known = definitions.resource_types()
        out: list[str] = []
        for raw in values:
            for t in (x.strip() for x in raw.split(",")):
                if not t:
                    continue
                if t not in known:
                    raise bad_request(f"Unknown resource type '{t}' in _type", "_type")
                if t not in self.candidates:
                    self.unsupported(f"{t} is not in the Patient compartment", "_type")
                elif t not in out:
                    out.append(t)
        return out

    def type_filters(
        self, values: Sequence[str], types: Sequence[str], requested: bool
    ) -> dict[str, tuple[Clause, ...]]:
        from fhir_server.search.parser import parse

        known = definitions.resource_types()
        queries: dict[str, list[tuple[Clause, ...]]] = {}
        for raw in values:
            for item in (x.strip() for x in raw.split(",")):
                if not item:
                    continue
                rtype, _, query = item.partition("?")
                if rtype not in known:
                    raise bad_request(
                        f"Unknown resource type '{rtype}' in _typeFilter", "_typeFilter"
                    )
                if rtype not in types:
                    if requested or rtype not in self.candidates:
                        self.unsupported(
                            f"_typeFilter '{item}' names a type that is not exported", "_typeFilter"
                        )
                    continue  # (else a type the token may not read: nothing to filter)
                pairs = parse_qsl(query, keep_blank_values=True)
                result = [n for n, _ in pairs if n.partition(":")[0] in _RESULT_PARAMETERS]
                if result:
                    raise FhirError.of(
                        400,
                        "not-supported",
                        f"_typeFilter '{item}': {', '.join(result)} cannot be used in a"
                        " _typeFilter (search parameters only)",
                        "_typeFilter",
                    )
                parsed = parse(rtype, pairs, strict=True, base_url=self.ctx.base_url)
                queries.setdefault(rtype, []).append(parsed.clauses)
        # a query without conditions matches every resource of its type
        return {t: any_of(qs) for t, qs in queries.items() if all(qs)}

    def elements(self, values: Sequence[str], types: Sequence[str]) -> dict[str, tuple[str, ...]]:
        known = definitions.resource_types()
        plain: list[str] = []
        qualified: dict[str, list[str]] = {}
        for raw in values:
            for item in (x.strip() for x in raw.split(",")):
                if not item:
                    continue
                rtype, dot, name = item.rpartition(".")
                if (dot and rtype not in known) or not _ELEMENT.fullmatch(name):
                    raise bad_request(
                        f"_elements: '{item}' is not an element or [type].[element]", "_elements"
                    )
                if dot:
                    qualified.setdefault(rtype, []).append(name)
                else:
                    plain.append(name)
        out: dict[str, tuple[str, ...]] = {}
        for t in types:
            names = [*plain, *qualified.get(t, ())]
            if names:
                out[t] = tuple(dict.fromkeys(names))
        return out

    def patients(self, values: Sequence[str]) -> tuple[str, ...]:
        base = self.ctx.base_url.rstrip("/") + "/"
        out: list[str] = []
        for raw in values:
            for ref in (x.strip() for x in raw.split(",")):
                if not ref:
                    continue
                local = ref.removeprefix(base)
                kind, _, pid = local.partition("/")
                if kind != "Patient" or not res.ID_RE.fullmatch(pid):
                    raise bad_request(
                        f"patient: '{ref}' is not a reference to a Patient", "patient"
                    )
                out.append(pid)
        return tuple(dict.fromkeys(out))


async def _members(ctx: Context, group_id: str) -> tuple[str, ...]:
    """The ids of the Group's Patient members (``inactive`` ones left out)."""
    from fhir_server import jsonio

    stored = await ctx.current("Group", group_id)
    if stored is None or stored.content is None:
        raise FhirError.of(404, "not-found", f"Group/{group_id} is not known")
    group = jsonio.loads_stored(stored.content)
    base = ctx.base_url.rstrip("/") + "/"
    out: list[str] = []
    for member in group.get("member") or ():
        if not isinstance(member, dict) or member.get("inactive") is True:
            continue
        ref = (member.get("entity") or {}).get("reference")
        if isinstance(ref, str):
            kind, _, pid = ref.removeprefix(base).partition("/")
            if kind == "Patient" and res.ID_RE.fullmatch(pid):
                out.append(pid)
    return tuple(dict.fromkeys(out))


async def kick_off(
    ctx: Context, req: FhirRequest, resource_type: str | None, rid: str | None
) -> FhirResponse:
    jobs = ctx.exports
    if jobs is None:
        raise FhirError.of(501, "not-supported", "Bulk export is not available on this server")
    if req.method == "HEAD":
        raise FhirError.of(405, "not-supported", "HEAD does not start an export; use GET or POST")
    prefer = _tokens(req.header("prefer"))
    if "respond-async" not in prefer:
        raise bad_request("$export runs asynchronously: send the header 'Prefer: respond-async'")
    _check_accept(req.header("accept"))
    level: Level = "system" if resource_type is None else "patient" if rid is None else "group"
    check = _Kickoff(ctx, level, "handling=lenient" in prefer)
    values: dict[str, list[str]] = {}
    for name, value in _parameters(req):
        if name in _PARAMETERS and not (name == "patient" and level == "system"):
            values.setdefault(name, []).append(value)
        else:
            check.unsupported(f"'{name}' is not a parameter of this $export", name)
    output_format = check.single(values, "_outputFormat")
    if output_format is not None:
        output_format = output_format.replace(" ", "+")  # an unescaped '+' arrives as a space
    if output_format is not None and output_format.split(";")[0].strip() not in OUTPUT_FORMATS:
        raise FhirError.of(
            400,
            "not-supported",
            f"_outputFormat '{output_format}' is not supported; this server writes"
            " application/fhir+ndjson",
            "_outputFormat",
        )
    since = check.since(check.single(values, "_since"))
    requested = check.types(values["_type"]) if "_type" in values else None
    types = list(check.candidates) if requested is None else requested
    if ctx.principal is not None:
        from fhir_server.auth.enforce import export_types

        types = export_types(ctx.principal, check.candidates, requested)
    filters = check.type_filters(values.get("_typeFilter", ()), types, requested is not None)
    elements = check.elements(values.get("_elements", ()), types)
    patients = check.patients(values["patient"]) if "patient" in values else None
    if level == "group":
        assert rid is not None
        members = await _members(ctx, rid)
        if patients is not None:
            wanted = set(patients)
            members = tuple(p for p in members if p in wanted)
        patients = members
    spec = ExportSpec(
        request=request_url(
            ctx.base_url, req.path, _query_of(req) if req.method in ("GET", "HEAD") else ()
        ),
        level=level,
        types=tuple(types),
        since=since,
        patients=patients,
        filters=filters,
        elements=elements,
        principal=ctx.principal,
        warnings=tuple(check.warnings),
    )
    job = jobs.start(spec, res.now_instant())
    url = jobs.status_url(job)
    accepted = Issue("information", "informational", f"The export has started; its status: {url}")
    return FhirResponse(
        202, resource=operation_outcome([accepted]), headers={"Content-Location": url}
    )


def _query_of(req: FhirRequest) -> list[tuple[str, str]]:
    return [(k, v) for k, v in req.params if k not in _IGNORED]


_METHODS: Final = frozenset({"GET", "POST"})

SYSTEM: Final = register(
    Operation(
        name="export",
        definition=EXPORT,
        levels=frozenset({"system"}),
        handler=kick_off,
        methods=_METHODS,
    )
)
PATIENT: Final = register(
    Operation(
        name="export",
        definition=PATIENT_EXPORT,
        levels=frozenset({"type"}),
        handler=kick_off,
        resource_types=frozenset({"Patient"}),
        methods=_METHODS,
    )
)
GROUP: Final = register(
    Operation(
        name="export",
        definition=GROUP_EXPORT,
        levels=frozenset({"instance"}),
        handler=kick_off,
        resource_types=frozenset({"Group"}),
        methods=_METHODS,
    )
)
