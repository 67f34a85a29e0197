"""Builds the ASGI app from settings: the only place that wires adapters together."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from fhir_server import terminology, validation
from fhir_server.api import http
from fhir_server.interactions.context import Context
from fhir_server.settings import Settings
from fhir_server.storage.port import Store

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


def make_store(database: str) -> Store:
    if database.startswith("sqlite://"):
        from fhir_server.storage.sqlite.store import SqliteStore

        path = database.removeprefix("sqlite://")
        path = path[1:] if path.startswith("/") else path  # sqlite:///rel, sqlite:////abs
        return SqliteStore(path or ":memory:")
    if database == ":memory:":
        from fhir_server.storage.sqlite.store import SqliteStore

        return SqliteStore(":memory:")
    if database.startswith(("mongodb://", "mongodb+srv://")):
        from fhir_server.storage.mongodb.store import MongoStore

        return MongoStore(database)
    raise ValueError(
        f"unsupported database URL '{database}'"
        " (use sqlite:///path or mongodb://host/db?replicaSet=rs0)"
    )


def create_app(settings: Settings, store: Store | None = None) -> FastAPI:
    """The app; it opens and closes its store unless one (already open) is given."""
    # Bindings to the rehab value sets are checked through the local terminology.
    validation.set_terminology(terminology.value_set_membership)
    owned = store is None
    store = store or make_store(settings.database)
    ctx = Context(store=store, settings=settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owned:
            await store.open()
        try:
            yield
        finally:
            if owned:
                await store.close()

    app = FastAPI(
        title="Rehab FHIR Server",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.context = ctx
    base = settings.base_path.rstrip("/")

    async def endpoint(request: Request) -> Response:
        path = request.path_params.get("path", "")
        return await http.handle(request, ctx, path)

    app.add_api_route(base, endpoint, methods=METHODS, include_in_schema=False)
    app.add_api_route(base + "/", endpoint, methods=METHODS, include_in_schema=False)
    app.add_api_route(base + "/{path:path}", endpoint, methods=METHODS, include_in_schema=False)
    return app
