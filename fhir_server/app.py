"""Builds the ASGI app from settings: the only place that wires adapters together."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhir_server import jsonio, terminology, validation
from fhir_server.api import export as export_api
from fhir_server.api import http
from fhir_server.interactions.context import Context
from fhir_server.interactions.model import FhirRequest
from fhir_server.operations.export_jobs import ExportJobs
from fhir_server.settings import Settings
from fhir_server.storage.port import Store

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


_MONGODB: Final = ("mongodb://", "mongodb+srv://")


def _sqlite_path(database: str) -> str | None:
    """The SQLite file (or ``:memory:``) a database URL names; None for another store."""
    if database == ":memory:":
        return database
    if not database.startswith("sqlite://"):
        return None
    path = database.removeprefix("sqlite://")
    path = path[1:] if path.startswith("/") else path  # sqlite:///rel, sqlite:////abs
    return path or ":memory:"


def make_store(database: str) -> Store:
    path = _sqlite_path(database)
    if path is not None:
        from fhir_server.storage.sqlite.store import SqliteStore

        return SqliteStore(path)
    if database.startswith(_MONGODB):
        from fhir_server.storage.mongodb.store import MongoStore

        return MongoStore(database)
    raise ValueError(
        f"unsupported database URL '{database}'"
        " (use sqlite:///path or mongodb://host/db?replicaSet=rs0)"
    )


def shareable(database: str) -> bool:
    """Whether another process can open the same database (not an in-memory one)."""
    if database.startswith(_MONGODB):
        return True
    path = _sqlite_path(database)
    return path is not None and path != ":memory:" and "mode=memory" not in path


def export_directory(settings: Settings) -> Path | None:
    """Where Bulk Data exports write their files: ``settings.export_path``, else an
    ``export`` directory next to the SQLite file; None (a temporary directory) for an
    in-memory database; ``./data/export`` for MongoDB."""
    if settings.export_path:
        return Path(settings.export_path)
    path = _sqlite_path(settings.database)
    if path is None:
        return Path("./data/export")
    return None if path == ":memory:" else Path(path).parent / "export"


def create_app(settings: Settings, store: Store | None = None) -> FastAPI:
    """The app; it opens and closes its store unless one (already open) is given."""
    # Bindings to the rehab value sets are checked through the local terminology.
    validation.set_terminology(terminology.value_set_membership)
    owned = store is None
    store = store or make_store(settings.database)
    # this server's definitions: the packaged ones, then those written through the API
    profiles = validation.default_registry().copy()
    exports = ExportJobs(
        store,
        export_directory(settings),
        base_url=settings.base_url,
        retention=settings.export_retention,
        requires_access_token=settings.auth_enabled,
    )
    ctx = Context(store=store, settings=settings, profiles=profiles, exports=exports)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owned:
            await store.open()
        await load_definitions(store, profiles)
        exports.open()  # removes the export files an earlier process left
        audit = getattr(app.state, "audit", None)
        if audit is not None:
            audit.start()  # writes the queued audit events in batches
        try:
            yield
        finally:
            await exports.close()  # export jobs do not survive a restart
            if audit is not None:
                await audit.stop()  # what is still queued is written
            if owned:
                await store.close()

    app = FastAPI(
        title="Rehab FHIR Server",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    if settings.auth_enabled:
        ctx = _with_auth(app, ctx)
    app.state.context = ctx
    base = settings.base_path.rstrip("/")
    export_api.add_routes(app, ctx, base)  # Bulk Data status and files

    async def endpoint(request: Request) -> Response:
        path = request.path_params.get("path", "")
        return await http.handle(request, ctx, path)

    # Plain Starlette routes: the endpoint takes the request as it is, so FastAPI's
    # dependency resolution (a few dozen microseconds per request) has nothing to do
    for path in (base, base + "/", base + "/{path:path}"):
        app.router.add_route(path, endpoint, methods=METHODS, include_in_schema=False)
    if settings.auth_enabled and base:
        # after the FHIR API, which takes nearly every request (routes are tried in order)
        app.include_router(app.state.auth_server.router(discovery=False))
    return app


def _with_auth(app: FastAPI, ctx: Context) -> Context:
    """SMART on FHIR: the authorization server's routes (registered before the FHIR
    catch-all routes), CORS, the authenticator every FHIR request goes through, and
    the audit trail (AuditEvent, Provenance) its lifespan starts and stops."""
    from fhir_server.auth.audit import AuditTrail
    from fhir_server.auth.config import AuthConfig
    from fhir_server.auth.server import AuthServer
    from fhir_server.auth.tokens import OidcVerifier

    settings = ctx.settings

    async def patients() -> list[tuple[str, str]]:
        """The patients offered at launch (id, display name), from the search."""
        from fhir_server.interactions.router import dispatch

        req = FhirRequest("GET", "Patient", params=[("_count", "100")])
        bundle = (await dispatch(ctx, req)).resource or {}
        out: list[tuple[str, str]] = []
        for entry in bundle.get("entry", ()):
            resource = jsonio.resource(entry.get("resource")) or {}
            if resource.get("resourceType") == "Patient" and isinstance(resource.get("id"), str):
                out.append((resource["id"], _display_name(resource)))
        return out

    server = AuthServer.from_config(AuthConfig.from_settings(settings), patient_lookup=patients)
    external = [
        OidcVerifier(issuer, settings.base_url, jwks_uri=jwks_uri)
        for issuer, jwks_uri in settings.auth_external_issuers
    ]
    app.state.auth_server = server
    # Before the FHIR API's catch-all route: the discovery document under its base (and
    # everything when the base is the root); the others go after it (create_app).
    if settings.base_path.strip("/"):
        app.router.routes.extend(server.router(endpoints=False).routes)  # as they are
    else:
        app.include_router(server.router())
    app.add_middleware(
        _BrowserCors,
        allow_origins=list(settings.auth_cors_origins),
        allow_methods=METHODS,
        allow_headers=[
            "Authorization",
            "Content-Type",
            "Accept",
            "Prefer",
            "If-Match",
            "If-None-Match",
            "If-None-Exist",
            "If-Modified-Since",
        ],
        expose_headers=[
            "Location",
            "ETag",
            "Last-Modified",
            "Content-Location",
            "WWW-Authenticate",
            "X-Progress",
            "Retry-After",
            "Expires",
        ],
    )
    # The audit trail exists only with authorization on: with --no-auth (loopback
    # only, local development) nothing is audited; see fhir_server.auth.audit.
    writer = None
    if settings.audit_writer_process and shareable(settings.database):
        from fhir_server.auth.audit_writer import AuditWriterProcess

        writer = AuditWriterProcess(settings.database, settings.base_url)
    audit = AuditTrail(ctx.store, settings.base_url, writer=writer)
    app.state.audit = audit
    return ctx.with_authenticator(server.authenticator(external)).with_audit(audit)


class _BrowserCors:
    """CORS (Starlette's middleware) for requests that carry an ``Origin`` header, the
    browsers'; any other request only gets ``Vary: Origin``, as that middleware would
    give it, without its per-request cost."""

    def __init__(self, app: ASGIApp, /, **options: Any) -> None:
        from starlette.middleware.cors import CORSMiddleware

        self.app = app
        self.cors = CORSMiddleware(app, **options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or any(k == b"origin" for k, _ in scope["headers"]):
            await self.cors(scope, receive, send)
            return

        async def vary(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"vary", b"Origin")]
            await send(message)

        await self.app(scope, receive, vary)


def _display_name(patient: dict[str, object]) -> str:
    names = patient.get("name")
    if isinstance(names, list) and names and isinstance(names[0], dict):
        name = names[0]
        if isinstance(name.get("text"), str):
            return str(name["text"])
        given = name.get("given")
        parts = [str(g) for g in given] if isinstance(given, list) else []
        if isinstance(name.get("family"), str):
            parts.append(str(name["family"]))
        if parts:
            return " ".join(parts)
    return str(patient.get("id", ""))


async def load_definitions(store: Store, profiles: validation.ProfileRegistry) -> int:
    """Add the definitions stored earlier (StructureDefinition, ValueSet, CodeSystem,
    Questionnaire) to the server's registry; the number added."""
    from fhir_server.interactions.context import register_definitions
    from fhir_server.search.parser import parse

    found: list[dict[str, Any] | str] = []
    for rtype in sorted(validation.DEFINITION_TYPES):
        cursor: str | None = None
        while True:
            params = [("_count", "1000")] + ([("_cursor", cursor)] if cursor else [])
            result = await store.search(parse(rtype, params))
            found += [jsonio.loads(hit.content) for hit in result.matches]
            cursor = result.next_cursor
            if cursor is None:
                break
    register_definitions(profiles, found)
    return len(found)
