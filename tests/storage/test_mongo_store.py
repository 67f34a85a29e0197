"""What the MongoDB store does beyond the contract suite: indexes, version succession
between processes (two stores on one database), sequence numbers."""

from __future__ import annotations

import uuid

import pytest

from fhir_server.storage.mongodb.index import INDEXES
from fhir_server.storage.mongodb.store import MongoStore
from fhir_server.storage.port import HistoryQuery, NewVersion, VersionConflict
from tests.storage import mongo_support
from tests.storage.mongo_support import mongodb_uri
from tests.storage.test_contract import put, version

REUSED = (mongodb_uri,)


async def opened(database: str) -> MongoStore:
    store = mongo_support.make_store(database)
    assert isinstance(store, MongoStore)
    await store.open()
    return store


async def test_indexes_are_made_at_open_idempotently(mongodb_uri: str) -> None:
    name = f"fhir_test_{uuid.uuid4().hex[:12]}"
    first = await opened(name)
    second = await opened(name)  # the same indexes again: no error
    try:
        info = await first.resources.index_information()
        assert {n for n, _ in INDEXES} <= set(info)
        history = await first.versions.index_information()
        assert history["version"]["unique"] is True
        assert history["version"]["key"] == [("t", 1), ("i", 1), ("v", 1)]
    finally:
        await MongoStore.close(second)
        await first.close()


async def test_a_stale_writer_in_another_process_gets_a_conflict(mongodb_uri: str) -> None:
    """Two stores on one database stand for two server processes: no shared lock."""
    name = f"fhir_test_{uuid.uuid4().hex[:12]}"
    a = await opened(name)
    b = await opened(name)
    try:
        await put(a, version("Patient", "x", 1))
        with pytest.raises(VersionConflict):
            async with b.unit_of_work() as stale:
                current = await stale.read("Patient", "x")
                assert current is not None and current.version == 1
                await put(a, version("Patient", "x", 2))  # commits first
                await stale.put(version("Patient", "x", current.version + 1))
        got = await b.read("Patient", "x")
        assert got is not None and got.version == 2
        assert await b.vread("Patient", "x", 3) is None
        # and two creates of one new resource: one wins
        with pytest.raises(VersionConflict):
            async with b.unit_of_work() as late:
                assert await late.read("Patient", "new") is None
                await put(a, version("Patient", "new", 1))
                await late.put(version("Patient", "new", 1))
        page = await a.history(HistoryQuery("Patient", "new"))
        assert [v.version for v in page.versions] == [1]
    finally:
        await MongoStore.close(b)
        await a.close()


async def test_sequence_numbers_increase_and_differ_between_stores(mongodb_uri: str) -> None:
    name = f"fhir_test_{uuid.uuid4().hex[:12]}"
    a = await opened(name)
    b = await opened(name)
    try:
        seqs = [a.next_seq() for _ in range(1000)]
        assert seqs == sorted(set(seqs))
        assert b.next_seq() & 0xFFF != a.next_seq() & 0xFFF
    finally:
        await MongoStore.close(b)
        await a.close()


async def test_hostile_ids_and_content_are_plain_values(mongodb_uri: str) -> None:
    any_store = await opened(f"fhir_test_{uuid.uuid4().hex[:12]}")
    try:
        await _hostile(any_store)
    finally:
        await any_store.close()


async def _hostile(any_store: MongoStore) -> None:
    for rid in ("$gt", "a.b", "{$ne:1}"):
        await put(any_store, version("Patient", rid, 1, gender="other"))
        got = await any_store.read("Patient", rid)
        assert got is not None and got.id == rid
    content = b'{"resourceType":"Patient","id":"q","name":[{"family":"{\\"$gt\\": \\"\\"}"}]}'
    async with any_store.unit_of_work() as uow:
        await uow.put(
            NewVersion(
                "Patient",
                "q",
                1,
                "2026-01-01T00:00:00.000000Z",
                "create",
                content,
                {"resourceType": "Patient", "id": "q", "name": [{"family": '{"$gt": ""}'}]},
            )
        )
        assert await uow.search("Patient", [("name:exact", '{"$gt": ""}')]) == ["q"]
        assert await uow.search("Patient", [("_id", "$gt")]) == ["$gt"]
    got = await any_store.read("Patient", "q")
    assert got is not None and got.content == content
    assert await any_store.count("Patient") == 4
