"""Instance and type interactions over plain requests: read, vread, create, update,
patch, delete (plain and conditional). Spec: https://hl7.org/fhir/R4/http.html
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from fhir_server import jsonio
from fhir_server.errors import FhirError, Issue, bad_request, operation_outcome
from fhir_server.interactions import patch as patching
from fhir_server.interactions import resources as res
from fhir_server.interactions import write
from fhir_server.interactions.context import Context
from fhir_server.interactions.model import FhirRequest, FhirResponse
from fhir_server.storage.port import StoredVersion


def _gone(v: StoredVersion) -> FhirError:
    err = FhirError.of(
        410, "deleted", f"{v.resource_type}/{v.id} was deleted (version {v.version})"
    )
    err.headers.update(
        {"ETag": res.etag(v.version), "Last-Modified": res.http_date(v.last_updated)}
    )
    return err


def _not_modified(req: FhirRequest, v: StoredVersion) -> bool:
    inm = req.header("if-none-match")
    if inm:
        return any(
            tag.strip() in (res.etag(v.version), f'"{v.version}"', "*") for tag in inm.split(",")
        )
    ims = req.header("if-modified-since")
    if ims:
        try:
            since = parsedate_to_datetime(ims)
        except (TypeError, ValueError):
            return False
        modified = datetime.strptime(v.last_updated, "%Y-%m-%dT%H:%M:%S.%fZ")
        return modified.replace(tzinfo=UTC, microsecond=0) <= since
    return False


def _version_response(req: FhirRequest, v: StoredVersion, base_url: str) -> FhirResponse:
    headers = res.version_headers(v, base_url)
    headers["Content-Location"] = headers.pop("Location")
    if _not_modified(req, v):
        return FhirResponse(304, headers=headers)
    return FhirResponse(200, content=v.content, headers=headers)


async def read(ctx: Context, req: FhirRequest, resource_type: str, id: str) -> FhirResponse:
    res.check_id(id)
    v = await ctx.current(resource_type, id)
    if v is None:
        raise FhirError.of(404, "not-found", f"{resource_type}/{id} is not known")
    if v.deleted:
        raise _gone(v)
    return _version_response(req, v, ctx.base_url)


async def vread(
    ctx: Context, req: FhirRequest, resource_type: str, id: str, vid: str
) -> FhirResponse:
    res.check_id(id)
    if not vid.isdigit():
        raise FhirError.of(404, "not-found", f"{resource_type}/{id} has no version '{vid}'")
    v = await ctx.store.vread(resource_type, id, int(vid))
    if v is None:
        raise FhirError.of(404, "not-found", f"{resource_type}/{id} has no version {vid}")
    if v.deleted:
        raise _gone(v)
    return _version_response(req, v, ctx.base_url)


def _prefer_return(req: FhirRequest) -> str:
    prefer = req.header("prefer") or ""
    for part in prefer.split(","):
        for token in part.split(";"):
            key, _, value = token.strip().partition("=")
            if key.strip().lower() == "return":
                return value.strip().strip('"').lower()
    return "representation"


def written(
    ctx: Context, req: FhirRequest, result: write.WriteResult, *, location: bool = True
) -> FhirResponse:
    """The response to a create/update/patch, honouring `Prefer: return=`."""
    v = result.version
    headers = res.version_headers(v, ctx.base_url)
    if not location:
        headers.pop("Location")
    mode = _prefer_return(req)
    if mode == "minimal":
        return FhirResponse(result.status, headers=headers)
    if mode == "operationoutcome":
        issues = list(result.issues) or [
            Issue(
                "information",
                "informational",
                f"{v.resource_type}/{v.id} version {v.version}: "
                + ("created" if result.status == 201 else "stored"),
            )
        ]
        return FhirResponse(result.status, resource=operation_outcome(issues), headers=headers)
    # both forms: the HTTP layer sends the bytes, a Bundle response embeds the dict
    return FhirResponse(result.status, resource=result.resource, content=v.content, headers=headers)


def _if_match(req: FhirRequest) -> int | None:
    value = req.header("if-match")
    return res.parse_etag(value) if value else None


async def create(ctx: Context, req: FhirRequest, resource_type: str) -> FhirResponse:
    resource = res.parse_resource(req, resource_type)
    async with ctx.writing() as uow:
        result = await write.create(
            ctx, uow, resource_type, resource, if_none_exist=req.header("if-none-exist")
        )
    return written(ctx, req, result, location=result.status == 201)


async def update(ctx: Context, req: FhirRequest, resource_type: str, id: str) -> FhirResponse:
    res.check_id(id)
    resource = res.parse_resource(req, resource_type)
    async with ctx.writing() as uow:
        result = await write.update(ctx, uow, resource_type, id, resource, if_match=_if_match(req))
    return written(ctx, req, result, location=result.status == 201)


async def conditional_update(ctx: Context, req: FhirRequest, resource_type: str) -> FhirResponse:
    resource = res.parse_resource(req, resource_type)
    params = list(req.params)
    if not params:
        raise bad_request("A conditional update needs search criteria in the URL")
    async with ctx.writing() as uow:
        matches = await uow.search(resource_type, params, base_url=ctx.base_url)
        body_id = resource.get("id")
        if len(matches) > 1:
            raise FhirError.of(
                412,
                "multiple-matches",
                f"The conditional update criteria matched {len(matches)} resources",
            )
        if matches:
            if body_id is not None and body_id != matches[0]:
                raise bad_request(
                    f"The resource id '{body_id}' differs from the matching resource"
                    f" {resource_type}/{matches[0]}",
                    f"{resource_type}.id",
                )
            resource["id"] = matches[0]
            result = await write.update(
                ctx, uow, resource_type, matches[0], resource, if_match=_if_match(req)
            )
        elif isinstance(body_id, str):
            result = await write.update(ctx, uow, resource_type, body_id, resource)
        else:
            result = await write.create(ctx, uow, resource_type, resource)
    return written(ctx, req, result, location=result.status == 201)


def _patched(req: FhirRequest, current: dict[str, Any]) -> dict[str, Any]:
    ctype = req.content_type
    if ctype == "application/json-patch+json":
        ops = req.parsed if req.parsed is not None else res.parse_body(req.body)
        return patching.apply_json_patch(current, ops)
    if ctype in ("application/fhir+json", "application/json"):
        params = res.parse_resource(req, "Parameters")
        return patching.apply_fhirpath_patch(current, params)
    raise FhirError.of(
        415,
        "not-supported",
        f"PATCH accepts application/json-patch+json (JSON Patch) or application/fhir+json"
        f" (FHIRPath Patch Parameters), not '{ctype}'",
    )


async def patch(ctx: Context, req: FhirRequest, resource_type: str, id: str) -> FhirResponse:
    res.check_id(id)
    async with ctx.writing() as uow:
        current = await uow.read(resource_type, id)
        if current is None:
            raise FhirError.of(404, "not-found", f"{resource_type}/{id} is not known")
        if current.deleted or current.content is None:
            raise _gone(current)
        result = await _patch_version(ctx, req, uow, current)
    return written(ctx, req, result, location=False)


async def _patch_version(
    ctx: Context, req: FhirRequest, uow: Any, current: StoredVersion
) -> write.WriteResult:
    assert current.content is not None
    if_match = _if_match(req)
    if if_match is not None and if_match != current.version:
        raise FhirError.of(
            412,
            "conflict",
            f"If-Match expected version {if_match} of {current.resource_type}/{current.id},"
            f" but it is at version {current.version}",
        )
    patched = _patched(req, jsonio.loads(current.content))
    rtype, rid = current.resource_type, current.id
    if patched.get("resourceType") != rtype or patched.get("id") != rid:
        raise FhirError.of(
            422, "processing", "A patch may not change the resourceType or id of a resource"
        )
    try:
        return await write.update(
            ctx, uow, rtype, rid, patched, if_match=current.version, method="patch"
        )
    except FhirError as err:
        # http.html#patch: a patch whose result is not a valid resource is unprocessable
        if err.status == 400:
            err.status = 422
        raise


async def conditional_patch(ctx: Context, req: FhirRequest, resource_type: str) -> FhirResponse:
    params = list(req.params)
    async with ctx.writing() as uow:
        matches = await uow.search(resource_type, params, base_url=ctx.base_url)
        if len(matches) != 1:
            raise FhirError.of(
                412 if matches else 404,
                "multiple-matches" if matches else "not-found",
                f"The conditional patch criteria matched {len(matches)} resources (need 1)",
            )
        current = await uow.read(resource_type, matches[0])
        assert current is not None
        result = await _patch_version(ctx, req, uow, current)
    return written(ctx, req, result, location=False)


async def delete(ctx: Context, req: FhirRequest, resource_type: str, id: str) -> FhirResponse:
    res.check_id(id)
    async with ctx.writing() as uow:
        result = await write.delete(uow, resource_type, id, if_match=_if_match(req))
    headers = {"ETag": res.etag(result.version.version)} if result else {}
    return FhirResponse(204, headers=headers)


async def conditional_delete(ctx: Context, req: FhirRequest, resource_type: str) -> FhirResponse:
    params = list(req.params)
    if not params:
        raise bad_request("A conditional delete needs search criteria in the URL")
    async with ctx.writing() as uow:
        matches = await uow.search(resource_type, params, base_url=ctx.base_url)
        if len(matches) > 1:
            raise FhirError.of(
                412,
                "multiple-matches",
                f"The conditional delete criteria matched {len(matches)} resources;"
                " this server deletes one resource per conditional delete",
            )
        result = await write.delete(uow, resource_type, matches[0]) if matches else None
    headers = {"ETag": res.etag(result.version.version)} if result else {}
    return FhirResponse(204, headers=headers)
