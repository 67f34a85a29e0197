"""HTTP <-> plain request/response. Nothing FHIR-semantic happens here beyond the
HTTP-level rules: media types, body size, `_format`/`_pretty`, `_summary`/`_elements`
on single-resource reads, HEAD, bearer-token authentication when the context has an
authenticator (every request but ``GET metadata``; the principal rides on the context
to the router, which enforces the scopes; a ``401`` is audited here, everything after
it by the router), and mapping errors to OperationOutcome (the
one place where that happens).
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from fhir_server import jsonio
from fhir_server.errors import FhirError, Issue, operation_outcome
from fhir_server.interactions import representation
from fhir_server.interactions.context import Context
from fhir_server.interactions.model import FHIR_JSON, FhirRequest, FhirResponse
from fhir_server.interactions.router import dispatch

log = logging.getLogger("fhir_server")

CONTENT_TYPE = f"{FHIR_JSON}; charset=utf-8"
_JSON_FORMATS = {"json", "application/json", "application/fhir+json", "application/json+fhir"}
_BODY_TYPES = {
    "application/fhir+json",
    "application/json",
    "application/json+fhir",
    "application/json-patch+json",
    "application/x-www-form-urlencoded",
}
_READS = {"read", "vread"}


def _accepts_json(accept: str | None, fmt: str | None) -> bool:
    if fmt is not None:
        return fmt.split(";")[0].strip().lower() in _JSON_FORMATS
    if not accept:
        return True
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        if (
            media in _JSON_FORMATS
            or media in ("*/*", "application/*", "")
            or media.endswith("+json")
        ):
            return True
    return False


def error_response(err: FhirError, pretty: bool = False) -> Response:
    body = jsonio.dumps(operation_outcome(err.issues), pretty=pretty)
    return Response(body, err.status, headers=err.headers, media_type=CONTENT_TYPE)


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise FhirError.of(413, "too-long", f"The body exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise FhirError.of(413, "too-long", f"The body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _is_single_read(req: FhirRequest) -> bool:
    parts = [p for p in req.path.split("/") if p]
    return req.method in ("GET", "HEAD") and (
        (len(parts) == 2 and not parts[1].startswith(("_", "$")))
        or (len(parts) == 4 and parts[2] == "_history")
    )


def _encode(req: FhirRequest, resp: FhirResponse, pretty: bool) -> bytes | None:
    summary = elements = None
    if _is_single_read(req) and resp.status == 200:
        summary = representation.summary_mode(req.params)
        elements = representation.elements_list(req.params)
    if resp.resource is None and resp.content is None:
        return None
    if not (pretty or summary or elements):
        return resp.content if resp.content is not None else jsonio.dumps(resp.resource)
    resource: Any = (
        resp.resource if resp.resource is not None else jsonio.loads(resp.content or b"")
    )
    if summary or elements:
        resource = representation.shape(resource, summary, elements)
    return jsonio.dumps(resource, pretty=pretty)


def _is_public(req: FhirRequest) -> bool:
    """Requests served without a token: the CapabilityStatement only."""
    return req.method in ("GET", "HEAD") and req.path == "metadata"


async def authenticate(request: Request, ctx: Context, req: FhirRequest) -> Context:
    """The context of the request's caller: with an authenticator, the bearer token's
    principal rides on it (``401`` without a valid token, audited); unchanged without
    one, and for the public requests."""
    if ctx.authenticator is None or _is_public(req):
        return ctx
    client = request.scope.get("client")  # (host, port), as Request.client reads it
    peer = client[0] if client else None
    try:
        principal = await ctx.authenticator.authenticate(request.headers.get("authorization"))
    except FhirError as err:
        if ctx.audit is not None:
            ctx.audit.unauthenticated(req, peer, err)
        raise
    return ctx.as_principal(principal, peer)


async def handle(request: Request, ctx: Context, path: str) -> Response:
    params = list(request.query_params.multi_items())
    fmt = request.query_params.get("_format")
    pretty = request.query_params.get("_pretty") == "true"
    try:
        if not _accepts_json(request.headers.get("accept"), fmt):
            raise FhirError.of(
                406, "not-supported", "This server serves JSON only (application/fhir+json)"
            )
        body: bytes | None = None
        if request.method in ("POST", "PUT", "PATCH"):
            body = await _read_body(request, ctx.settings.max_body_bytes)
            ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
            if body and ctype not in _BODY_TYPES:
                raise FhirError.of(
                    415,
                    "not-supported",
                    f"Unsupported Content-Type '{ctype or '(none)'}'; send application/fhir+json",
                )
        req = FhirRequest(
            method=request.method,
            path=path.strip("/"),
            params=params,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
        )
        ctx = await authenticate(request, ctx, req)
        resp = await dispatch(ctx, req)
        content = _encode(req, resp, pretty)
    except FhirError as err:
        return error_response(err, pretty)
    except Exception:  # a bug, not the client's fault: say so without leaking internals
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        internal = FhirError(
            500, (Issue("fatal", "exception", "Internal server error; the error was logged"),)
        )
        return error_response(internal, pretty)
    if request.method == "HEAD":
        content = None
    headers = dict(resp.headers)
    if content is None:
        return Response(status_code=resp.status, headers=headers)
    return Response(content, resp.status, headers=headers, media_type=CONTENT_TYPE)
