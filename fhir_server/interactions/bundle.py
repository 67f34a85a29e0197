"""batch and transaction (https://hl7.org/fhir/R4/http.html#transaction).

A transaction is all-or-nothing: every entry runs inside one unit of work, in the
spec's order (DELETE, then POST, then PUT/PATCH, then GET/HEAD), after every
``fullUrl`` of a created or updated resource has been given its server identity and
every reference to it (``urn:uuid:``, absolute or conditional ``Type?query``) has been
rewritten. The response entries follow the request order. A batch runs each entry on
its own and reports each entry's outcome.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from fhir_server import jsonio
from fhir_server.errors import FhirError, Issue, bad_request, operation_outcome
from fhir_server.interactions import resources as res
from fhir_server.interactions import write
from fhir_server.interactions.context import Context
from fhir_server.interactions.model import FhirRequest, FhirResponse
from fhir_server.interactions.rest import written
from fhir_server.storage.port import UnitOfWork

_CONDITIONAL_REF = re.compile(r"^[A-Z][A-Za-z]+\?")
_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}


@dataclass(slots=True)
class _Entry:
    index: int
    method: str
    url: str  # relative: `Type`, `Type/id`, `Type?query`, ...
    full_url: str | None
    resource: Any
    headers: dict[str, str] = field(default_factory=dict)
    assigned_id: str | None = None  # POST in a transaction: id chosen before processing
    existing: bool = False  # POST with If-None-Exist that matched

    @property
    def where(self) -> str:
        return f"Bundle.entry[{self.index}]"

    @property
    def path(self) -> str:
        return urlsplit(self.url).path.strip("/")

    @property
    def query(self) -> list[tuple[str, str]]:
        return parse_qsl(urlsplit(self.url).query, keep_blank_values=True)


def _relative_url(ctx: Context, url: str, where: str) -> str:
    if url.startswith(ctx.base_url + "/"):
        return url[len(ctx.base_url) + 1 :]
    if "://" in url:
        raise bad_request(f"The request url '{url}' is not on this server", f"{where}.request.url")
    return url.lstrip("/")


def _parse_entries(ctx: Context, bundle: dict[str, Any]) -> list[_Entry]:
    raw = bundle.get("entry", [])
    if not isinstance(raw, list):
        raise bad_request("Bundle.entry must be an array", "Bundle.entry")
    entries: list[_Entry] = []
    for i, e in enumerate(raw):
        where = f"Bundle.entry[{i}]"
        if not isinstance(e, dict):
            raise bad_request("A Bundle entry must be an object", where)
        request = e.get("request")
        if not isinstance(request, dict):
            raise bad_request("Each entry of a batch or transaction needs a request", where)
        method = request.get("method")
        url = request.get("url")
        if method not in _ORDER:
            raise bad_request(f"Unsupported request.method '{method}'", f"{where}.request.method")
        if not isinstance(url, str) or not url:
            raise bad_request("request.url is required", f"{where}.request.url")
        headers = {
            h: request[k]
            for k, h in (
                ("ifNoneExist", "if-none-exist"),
                ("ifMatch", "if-match"),
                ("ifNoneMatch", "if-none-match"),
                ("ifModifiedSince", "if-modified-since"),
            )
            if isinstance(request.get(k), str)
        }
        resource = e.get("resource")
        if method in ("POST", "PUT") and resource is None:
            raise bad_request(f"A {method} entry needs a resource", f"{where}.resource")
        full_url = e.get("fullUrl") if isinstance(e.get("fullUrl"), str) else None
        entries.append(
            _Entry(i, method, _relative_url(ctx, url, where), full_url, resource, headers)
        )
    return entries


async def process(ctx: Context, req: FhirRequest) -> FhirResponse:
    bundle = res.parse_resource(req, "Bundle")
    kind = bundle.get("type")
    if kind not in ("batch", "transaction"):
        raise bad_request(
            f"POST to the base takes a batch or transaction Bundle, not type '{kind}'",
            "Bundle.type",
        )
    entries = _parse_entries(ctx, bundle)
    if ctx.event is not None:
        ctx.event.note_bundle(kind)
    prefer = req.header("prefer")
    if kind == "batch":
        responses = [await _batch_entry(ctx, e, prefer) for e in entries]
        rtype = "batch-response"
    else:
        responses = await _transaction(ctx, entries, prefer)
        rtype = "transaction-response"
    out: dict[str, Any] = {"resourceType": "Bundle", "type": rtype, "entry": responses}
    if not responses:
        del out["entry"]
    return FhirResponse(200, resource=out)


# -- batch ---------------------------------------------------------------------------


async def _batch_entry(ctx: Context, e: _Entry, prefer: str | None) -> dict[str, Any]:
    try:
        response = await _execute(ctx, e, prefer)
    except FhirError as err:
        return _error_entry(err, e)
    return _response_entry(response)


def _error_entry(err: FhirError, e: _Entry) -> dict[str, Any]:
    issues = [_in_entry(i, e) for i in err.issues]
    return {"response": {"status": _status(err.status), "outcome": operation_outcome(issues)}}


def _status(code: int) -> str:
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)


def _response_entry(r: FhirResponse) -> dict[str, Any]:
    response: dict[str, Any] = {"status": _status(r.status)}
    if "Location" in r.headers:
        response["location"] = r.headers["Location"]
    if "ETag" in r.headers:
        response["etag"] = r.headers["ETag"]
    resource = r.resource
    if resource is None and r.content is not None:
        resource = jsonio.loads(r.content)
    if resource is not None and resource.get("meta", {}).get("lastUpdated"):
        response["lastModified"] = resource["meta"]["lastUpdated"]
    entry: dict[str, Any] = {}
    if resource is not None and resource.get("resourceType") == "OperationOutcome":
        response["outcome"] = resource
    elif resource is not None:
        if "Location" in r.headers or "Content-Location" in r.headers:
            loc = r.headers.get("Location") or r.headers["Content-Location"]
            entry["fullUrl"] = loc.split("/_history/")[0]
        entry["resource"] = resource
    entry["response"] = response
    return entry


async def _execute(ctx: Context, e: _Entry, prefer: str | None) -> FhirResponse:
    # the router imports this module, so it is looked up at call time
    from fhir_server.interactions.router import dispatch

    path, _, query = e.url.partition("?")
    headers = dict(e.headers)
    if prefer:
        headers["prefer"] = prefer
    if e.method == "PATCH" and isinstance(e.resource, dict):
        if e.resource.get("resourceType") == "Binary":
            # JSON Patch travels in a Binary resource inside Bundles
            data = e.resource.get("data")
            if not isinstance(data, str):
                raise bad_request("A Binary patch needs data", f"{e.where}.resource.data")
            headers["content-type"] = str(e.resource.get("contentType", ""))
            try:
                body: Any = res.parse_body(base64.b64decode(data, validate=True))
            except binascii.Error:
                raise bad_request("Binary.data is not base64", f"{e.where}.resource.data") from None
        else:
            headers["content-type"] = "application/fhir+json"
            body = e.resource
    else:
        headers["content-type"] = "application/fhir+json"
        body = e.resource
    sub = FhirRequest(
        method=e.method,
        path=path.strip("/"),
        params=parse_qsl(query, keep_blank_values=True),
        headers=headers,
        parsed=body,
    )
    return await dispatch(ctx, sub)


# -- transaction ---------------------------------------------------------------------


async def _transaction(
    ctx: Context, entries: list[_Entry], prefer: str | None
) -> list[dict[str, Any]]:
    results: dict[int, dict[str, Any]] = {}
    current: _Entry | None = None
    try:
        # ctx.writing(): when audited, one AuditEvent and one Provenance for the
        # whole transaction are written in its unit of work
        async with ctx.writing() as uow:
            tx = ctx.within(uow)
            identities = await _assign_identities(uow, entries, ctx.base_url)
            for e in entries:
                if e.resource is not None:
                    await _rewrite_references(uow, e.resource, identities, e.where, ctx.base_url)
            for e in sorted(entries, key=lambda x: (_ORDER[x.method], x.index)):
                current = e
                results[e.index] = await _transaction_entry(tx, uow, e, prefer)
            current = None  # what fails from here on (the commit) is the whole Bundle's
    except FhirError as err:
        if current is not None:
            err.issues = tuple(_in_entry(i, current) for i in err.issues)
        raise
    return [results[e.index] for e in entries]


def _in_entry(issue: Issue, e: _Entry) -> Issue:
    """Say which entry an issue belongs to (the whole transaction failed because of it)."""
    return Issue(
        issue.severity,
        issue.code,
        f"{e.where} ({e.method} {e.url}): {issue.diagnostics}",
        issue.expression or (e.where,),
    )


def _type_and_id(e: _Entry) -> tuple[str, str | None]:
    parts = e.path.split("/")
    return parts[0], parts[1] if len(parts) > 1 else None


async def _assign_identities(
    uow: UnitOfWork, entries: list[_Entry], base_url: str
) -> dict[str, str]:
    """fullUrl -> `Type/id` for every entry that creates or updates a resource."""
    identities: dict[str, str] = {}
    touched: dict[str, int] = {}
    for e in entries:
        rtype, rid = _type_and_id(e)
        if e.method not in ("POST", "PUT", "DELETE", "PATCH"):
            continue
        res.check_type(rtype)
        query = e.query
        if e.method == "POST":
            if rid is not None:
                raise bad_request(
                    "A POST entry's url must be a resource type", f"{e.where}.request.url"
                )
            criteria = e.headers.get("if-none-exist")
            matches = (
                await uow.search(rtype, write.criteria_params(criteria), base_url=base_url)
                if criteria
                else []
            )
            if len(matches) > 1:
                raise FhirError.of(
                    412,
                    "multiple-matches",
                    f"ifNoneExist '{criteria}' matched {len(matches)} resources",
                )
            e.existing = bool(matches)
            e.assigned_id = matches[0] if matches else res.new_id()
            rid = e.assigned_id
        elif rid is None and query and e.method in ("PUT", "DELETE", "PATCH"):
            matches = await uow.search(rtype, query, base_url=base_url)
            if len(matches) > 1:
                raise FhirError.of(
                    412,
                    "multiple-matches",
                    f"The conditional {e.method} '{e.url}' matched {len(matches)} resources",
                )
            if matches:
                rid = matches[0]
            elif e.method == "PUT":
                body_id = e.resource.get("id") if isinstance(e.resource, dict) else None
                rid = body_id if isinstance(body_id, str) else res.new_id()
            if rid is not None:
                e.url = f"{rtype}/{rid}"
                if isinstance(e.resource, dict) and e.method == "PUT":
                    e.resource["id"] = rid
        if rid is None:
            continue
        key = f"{rtype}/{rid}"
        if key in touched and not (e.method == "POST" and e.existing):
            raise bad_request(
                f"{key} is written by entries {touched[key]} and {e.index} of one transaction",
                e.where,
            )
        touched[key] = e.index
        if e.full_url:
            identities[e.full_url] = key
    return identities


def _references(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            yield node
        for value in node.values():
            if isinstance(value, dict | list):
                yield from _references(value)
    elif isinstance(node, list):
        for item in node:
            yield from _references(item)


async def _rewrite_references(
    uow: UnitOfWork, resource: Any, identities: dict[str, str], where: str, base_url: str
) -> None:
    for ref in _references(resource):
        target = ref["reference"]
        if target in identities:
            ref["reference"] = identities[target]
        elif target.startswith("urn:uuid:") or target.startswith("urn:oid:"):
            # an internal reference to a fullUrl not in this transaction
            if not any(c.get("id") == target for c in resource.get("contained", []) or []):
                raise FhirError.of(
                    404,
                    "not-found",
                    f"Reference '{target}' points to no entry of this transaction",
                    f"{where}.resource",
                )
        elif _CONDITIONAL_REF.match(target):
            rtype, _, query = target.partition("?")
            res.check_type(rtype)
            matches = await uow.search(
                rtype, parse_qsl(query, keep_blank_values=True), base_url=base_url
            )
            if len(matches) != 1:
                raise FhirError.of(
                    412 if matches else 404,
                    "multiple-matches" if matches else "not-found",
                    f"Conditional reference '{target}' matched {len(matches)} resources (need 1)",
                    f"{where}.resource",
                )
            ref["reference"] = f"{rtype}/{matches[0]}"


async def _transaction_entry(
    ctx: Context, uow: UnitOfWork, e: _Entry, prefer: str | None
) -> dict[str, Any]:
    if e.method == "POST":
        rtype, _ = _type_and_id(e)
        resource = res.expect_resource(e.resource, rtype, f"{e.where}.resource")
        if e.existing:
            current = await uow.read(rtype, e.assigned_id or "")
            assert current is not None
            result = write.WriteResult(current, 200, None)
        else:
            result = await write.create(ctx, uow, rtype, resource, id=e.assigned_id)
        sub = FhirRequest("POST", rtype, headers={"prefer": prefer} if prefer else {})
        response = written(ctx, sub, result)
        response.headers.setdefault(
            "Location", res.version_headers(result.version, ctx.base_url)["Location"]
        )
        return _response_entry(response)
    return _response_entry(await _execute(ctx, e, prefer))
