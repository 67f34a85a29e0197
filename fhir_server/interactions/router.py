"""Maps a plain request to its interaction. The route table is data: the
CapabilityStatement is generated from the same table, so it cannot drift.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl

from fhir_server import jsonio
from fhir_server.auth import enforce
from fhir_server.auth.access import search_compartment
from fhir_server.auth.audit import refuse_server_written
from fhir_server.errors import FhirError
from fhir_server.interactions import bundle, capabilities, history, rest
from fhir_server.interactions import resources as res
from fhir_server.interactions import search as searching
from fhir_server.interactions.context import Context
from fhir_server.interactions.model import FhirRequest, FhirResponse
from fhir_server.operations import registry as operations

Level = Literal["system", "type", "instance", "version"]
Handler = Callable[..., Awaitable[FhirResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    level: Level
    method: str
    code: str  # the CapabilityStatement interaction code
    handler: Handler
    # "[type]" routes the path `Type`; "_history", "_search" are literal second segments
    shape: tuple[str, ...]


_FORM = "application/x-www-form-urlencoded"


async def _search(
    ctx: Context,
    req: FhirRequest,
    resource_type: str | None,
    form_body: bool = False,
    compartment: tuple[str, str] | None = None,
) -> FhirResponse:
    params = list(req.params)
    if form_body:
        if req.body and req.content_type not in (_FORM, None):
            raise FhirError.of(
                415, "not-supported", f"POST _search takes {_FORM}, not '{req.content_type}'"
            )
        if req.body:
            params += parse_qsl(req.body.decode("utf-8", "replace"), keep_blank_values=True)
    params = [(k, v) for k, v in params if k not in ("_format", "_pretty")]
    bundle = await searching.search(
        ctx.store,
        resource_type,
        params,
        base_url=ctx.base_url,
        strict=_strict(req),
        compartment=compartment,
        raw=True,  # answered as is; the few readers of its entries use jsonio.resource
    )
    return FhirResponse(200, resource=bundle)


def _strict(req: FhirRequest) -> bool:
    prefer = (req.header("prefer") or "").replace(" ", "").lower()
    return "handling=strict" in prefer


async def _search_type(ctx: Context, req: FhirRequest, resource_type: str) -> FhirResponse:
    return await _search(ctx, req, resource_type)


async def _search_post(ctx: Context, req: FhirRequest, resource_type: str) -> FhirResponse:
    return await _search(ctx, req, resource_type, form_body=True)


async def _search_compartment(
    ctx: Context, req: FhirRequest, compartment_type: str, id: str, resource_type: str
) -> FhirResponse:
    res.check_id(id)
    res.check_type(resource_type)
    return await _search(ctx, req, resource_type, compartment=(compartment_type, id))


async def _search_system(ctx: Context, req: FhirRequest) -> FhirResponse:
    return await _search(ctx, req, None)


async def _search_system_post(ctx: Context, req: FhirRequest) -> FhirResponse:
    return await _search(ctx, req, None, form_body=True)


_capability_cache: dict[str, bytes] = {}


async def _capabilities(ctx: Context, req: FhirRequest) -> FhirResponse:
    secured = ctx.settings.auth_enabled
    key = f"{ctx.base_url} auth={secured}"
    if key not in _capability_cache:
        statement = capabilities.build(ctx.settings, ROUTES, date=res.now_instant()[:10])
        if secured:
            from fhir_server.auth.capability import add_security
            from fhir_server.auth.config import AuthConfig

            add_security(statement, AuthConfig.from_settings(ctx.settings))
        _capability_cache[key] = jsonio.dumps(statement)
    return FhirResponse(200, content=_capability_cache[key])


ROUTES: tuple[Route, ...] = (
    Route("system", "GET", "search-system", _search_system, ()),
    Route("system", "POST", "transaction", bundle.process, ()),
    Route("system", "POST", "search-system", _search_system_post, ("_search",)),
    Route("system", "GET", "history-system", history.history, ("_history",)),
    Route("system", "GET", "capabilities", _capabilities, ("metadata",)),
    Route("type", "GET", "search-type", _search_type, ("[type]",)),
    Route("type", "POST", "create", rest.create, ("[type]",)),
    Route("type", "PUT", "update", rest.conditional_update, ("[type]",)),
    Route("type", "PATCH", "patch", rest.conditional_patch, ("[type]",)),
    Route("type", "DELETE", "delete", rest.conditional_delete, ("[type]",)),
    Route("type", "POST", "search-type", _search_post, ("[type]", "_search")),
    Route("type", "GET", "history-type", history.history, ("[type]", "_history")),
    Route("instance", "GET", "read", rest.read, ("[type]", "[id]")),
    Route("instance", "PUT", "update", rest.update, ("[type]", "[id]")),
    Route("instance", "PATCH", "patch", rest.patch, ("[type]", "[id]")),
    Route("instance", "DELETE", "delete", rest.delete, ("[type]", "[id]")),
    Route("instance", "GET", "history-instance", history.history, ("[type]", "[id]", "_history")),
    Route(
        "instance",
        "GET",
        "search-compartment",
        _search_compartment,
        ("[type]", "[id]", "[type]"),
    ),
    Route("version", "GET", "vread", rest.vread, ("[type]", "[id]", "_history", "[vid]")),
)

_LITERALS = {"_history", "_search", "metadata"}
# the routes by number of path segments, in ROUTES order (a request tries only those)
_BY_LENGTH: dict[int, tuple[Route, ...]] = {
    n: tuple(r for r in ROUTES if len(r.shape) == n) for n in {len(r.shape) for r in ROUTES}
}


def _match(shape: tuple[str, ...], parts: list[str]) -> list[str] | None:
    if len(shape) != len(parts):
        return None
    args: list[str] = []
    for want, got in zip(shape, parts, strict=True):
        if want.startswith("["):
            if got in _LITERALS or got.startswith("$"):
                return None
            args.append(got)
        elif want != got:
            return None
    return args


def interaction_of(method: str, path: str) -> tuple[str | None, list[str]]:
    """The interaction a request names, as (CapabilityStatement code, path arguments):
    ``("operation", [type, id, $name])`` for an operation, ``(None, parts)`` when the
    path or method names none. Used to describe requests (audit), not to route them."""
    parts = [p for p in path.split("/") if p]
    if parts and parts[-1].startswith("$"):
        return "operation", parts
    method = "GET" if method == "HEAD" else method
    for route in _BY_LENGTH.get(len(parts), ()):
        if route.method == method:
            args = _match(route.shape, parts)
            if args is not None:
                return route.code, args
    return None, parts


async def _guarded(ctx: Context, req: FhirRequest, route: Route, args: list[str]) -> FhirResponse:
    """Runs a route for an authenticated caller; see :mod:`fhir_server.auth.enforce`."""
    principal = ctx.principal
    assert principal is not None
    code = route.code
    if code in enforce.WRITES:
        refuse_server_written(args[0])
    if code in enforce.READS:
        await enforce.check_read(ctx, principal, code, args)
        response = await route.handler(ctx, req, *args)
        if code == "history-instance" and response.resource is not None:
            await enforce.filter_history(ctx, principal, response.resource, "read")
        return response
    if code in enforce.WRITES:
        return await enforce.guarded_write(ctx, principal, code, route.handler, req, args)
    if code in ("search-type", "search-system", "search-compartment"):
        rtype = args[-1] if code == "search-compartment" else (args[0] if args else None)
        enforce.require(principal, "search-type" if rtype else "search-system", rtype)
        compartment = None
        if code == "search-type":
            compartment = search_compartment(principal, args[0])
        if compartment is None:
            response = await route.handler(ctx, req, *args)
        else:
            form_body = route.shape[-1] == "_search"
            response = await _search(ctx, req, args[0], form_body, compartment=compartment)
        if response.resource is not None:
            if compartment is not None and rtype is not None:
                enforce.restore_links(response.resource, ctx.base_url, compartment, rtype)
            await enforce.filter_search(
                ctx, principal, response.resource, rtype, compartment is not None
            )
        return response
    if code in enforce.HISTORY:
        rtype = args[0] if args else None
        enforce.require(principal, code, rtype)
        response = await route.handler(ctx, req, *args)
        if response.resource is not None:
            await enforce.filter_history(ctx, principal, response.resource, code)
        return response
    if code == "transaction":
        await enforce.check_transaction(ctx, principal, req)
        return await route.handler(ctx, req, *args)
    if code == "capabilities":
        return await route.handler(ctx, req, *args)
    raise FhirError.of(403, "forbidden", f"'{code}' is not available to this access token")


async def dispatch(ctx: Context, req: FhirRequest) -> FhirResponse:
    """Runs the interaction the request names; with a principal on the context, only
    what its scopes allow (403/404, see :mod:`fhir_server.auth.enforce`). Bundle
    entries come back through here, so they are checked one by one.

    With an audit trail on the context, each interaction of an authenticated caller
    is audited (:mod:`fhir_server.auth.audit`): a request, and each entry of a batch;
    the entries of a transaction belong to the transaction's record."""
    if ctx.audit is not None and ctx.principal is not None and ctx.uow is None:
        return await ctx.audit.audited(ctx, req, _dispatch)
    return await _dispatch(ctx, req)


async def _dispatch(ctx: Context, req: FhirRequest) -> FhirResponse:
    parts = [p for p in req.path.split("/") if p]
    method = "GET" if req.method == "HEAD" else req.method
    if parts and parts[-1].startswith("$"):
        if ctx.principal is not None:
            await enforce.check_operation(ctx, ctx.principal, req, parts)
        return await operations.invoke(ctx, req, parts)
    if parts and parts[0] not in _LITERALS:
        res.check_type(parts[0])
    matched_path = False
    for route in _BY_LENGTH.get(len(parts), ()):
        args = _match(route.shape, parts)
        if args is None:
            continue
        matched_path = True
        if route.method == method:
            if ctx.event is not None and ctx.event.interaction is None:
                ctx.event.interaction = (route.code, args)  # (not a transaction's entry)
            if ctx.principal is not None:
                return await _guarded(ctx, req, route, args)
            return await route.handler(ctx, req, *args)
    if matched_path:
        raise FhirError.of(
            405, "not-supported", f"{req.method} is not allowed on '{req.path or '/'}'"
        )
    raise FhirError.of(404, "not-found", f"No FHIR interaction at '{req.path}'")
