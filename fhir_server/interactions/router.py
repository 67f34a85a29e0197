"""Maps a plain request to its interaction. The route table is data: the
CapabilityStatement is generated from the same table, so it cannot drift.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl

from fhir_server import jsonio
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
    key = ctx.base_url
    if key not in _capability_cache:
        statement = capabilities.build(ctx.settings, ROUTES, date=res.now_instant()[:10])
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


async def dispatch(ctx: Context, req: FhirRequest) -> FhirResponse:
    parts = [p for p in req.path.split("/") if p]
    method = "GET" if req.method == "HEAD" else req.method
    if parts and parts[-1].startswith("$"):
        return await operations.invoke(ctx, req, parts)
    if parts and parts[0] not in _LITERALS:
        res.check_type(parts[0])
    matched_path = False
    for route in ROUTES:
        args = _match(route.shape, parts)
        if args is None:
            continue
        matched_path = True
        if route.method == method:
            return await route.handler(ctx, req, *args)
    if matched_path:
        raise FhirError.of(
            405, "not-supported", f"{req.method} is not allowed on '{req.path or '/'}'"
        )
    raise FhirError.of(404, "not-found", f"No FHIR interaction at '{req.path}'")
