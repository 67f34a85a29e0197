"""Fixtures of the search tests that run on every store."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from fhir_server.storage.port import Store
from fhir_server.storage.sqlite.store import SqliteStore
from tests.storage import mongo_support
from tests.storage.mongo_support import mongodb_uri

__all__ = ["each_store", "mongodb_uri"]


@pytest.fixture(params=["sqlite", "mongodb"])
async def each_store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """An empty store of each kind (MongoDB: the test server or the stand-in)."""
    s: Store
    if request.param == "mongodb":
        request.getfixturevalue("mongodb_uri")
        s = mongo_support.make_store()
    else:
        s = SqliteStore(":memory:")
    await s.open()
    try:
        yield s
    finally:
        await s.close()
