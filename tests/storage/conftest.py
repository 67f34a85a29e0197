"""The stores the storage contract suite runs on.

Every implementation of :class:`fhir_server.storage.port.Store` registers a factory
here; each contract test runs once per store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from fhir_server.storage.port import Store
from fhir_server.storage.sqlite.store import SqliteStore
from tests.storage import mongo_support

StoreFactory = Callable[[Path], Awaitable[Store]]


async def _sqlite_memory(tmp: Path) -> Store:
    return SqliteStore(":memory:")


async def _sqlite_file(tmp: Path) -> Store:
    return SqliteStore(str(tmp / "contract.sqlite"))


STORE_FACTORIES: dict[str, StoreFactory] = {
    "sqlite-memory": _sqlite_memory,
    "sqlite-file": _sqlite_file,
    "mongodb": mongo_support.store_factory,  # a MongoDB server or the stand-in
}


@pytest.fixture(params=sorted(STORE_FACTORIES))
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    store = await STORE_FACTORIES[request.param](tmp_path)
    await store.open()
    try:
        yield store
    finally:
        await store.close()
