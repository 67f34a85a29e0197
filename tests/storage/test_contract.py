"""The storage contract: what every store must do (see storage/port.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fhir_server import jsonio
from fhir_server.search.parser import parse
from fhir_server.storage.port import HistoryQuery, NewVersion, Store, VersionConflict


def version(
    rtype: str, id: str, v: int, *, at: str | None = None, deleted: bool = False, **body: Any
) -> NewVersion:
    instant = at or f"2026-01-01T00:00:{v:02d}.000000Z"
    if deleted:
        return NewVersion(rtype, id, v, instant, "delete", None, None)
    resource = {"resourceType": rtype, "id": id, "meta": {"versionId": str(v)}, **body}
    method = "create" if v == 1 else "update"
    return NewVersion(rtype, id, v, instant, method, jsonio.dumps(resource), resource)


async def put(store: Store, *versions: NewVersion) -> None:
    async with store.unit_of_work() as uow:
        for v in versions:
            await uow.put(v)


async def test_put_read_vread(any_store: Store) -> None:
    v1 = version("Patient", "p1", 1, gender="male")
    await put(any_store, v1)
    current = await any_store.read("Patient", "p1")
    assert current is not None
    assert (current.version, current.content, current.method) == (1, v1.content, "create")
    assert current.last_updated == v1.last_updated and not current.deleted
    await put(any_store, version("Patient", "p1", 2, gender="female"))
    assert (await any_store.read("Patient", "p1")).version == 2  # type: ignore[union-attr]
    old = await any_store.vread("Patient", "p1", 1)
    assert old is not None and old.content == v1.content
    assert await any_store.vread("Patient", "p1", 3) is None
    assert await any_store.read("Patient", "nope") is None
    assert await any_store.read("Observation", "p1") is None


async def test_version_must_follow(any_store: Store) -> None:
    with pytest.raises(VersionConflict):
        await put(any_store, version("Patient", "p2", 2))
    await put(any_store, version("Patient", "p2", 1))
    with pytest.raises(VersionConflict):
        await put(any_store, version("Patient", "p2", 1))
    with pytest.raises(VersionConflict):
        await put(any_store, version("Patient", "p2", 3))


async def test_a_refused_first_version_leaves_the_unit_of_work_usable(any_store: Store) -> None:
    """A create of an existing id, in a unit that has looked at the database, is a
    conflict at once; the unit of work goes on and commits the rest, and the existing
    resource is unchanged."""
    await put(any_store, version("Patient", "u1", 1))
    async with any_store.unit_of_work() as uow:
        assert await uow.read("Patient", "u0") is None
        with pytest.raises(VersionConflict) as refused:
            await uow.put(version("Patient", "u1", 1))
        assert refused.value.actual == 1
        await uow.put(version("Patient", "u2", 1))
    assert (await any_store.read("Patient", "u2")) is not None
    page = await any_store.history(HistoryQuery("Patient", "u1"))
    assert [v.version for v in page.versions] == [1]


async def test_a_blind_create_of_an_existing_id_fails_the_unit(any_store: Store) -> None:
    """Without a read first, the conflict may only show when the unit ends: then
    nothing of the unit is written (not the creates before or after it either)."""
    await put(any_store, version("Patient", "b1", 1, gender="male"))
    with pytest.raises(VersionConflict) as refused:
        async with any_store.unit_of_work() as uow:
            await uow.put(version("Patient", "b0", 1))
            await uow.put(version("Patient", "b1", 1, gender="female"))
            await uow.put(version("Patient", "b2", 1))
    assert (refused.value.resource_type, refused.value.id) == ("Patient", "b1")
    assert refused.value.actual == 1
    assert await any_store.read("Patient", "b0") is None
    assert await any_store.read("Patient", "b2") is None
    current = await any_store.read("Patient", "b1")
    assert current is not None and b'"male"' in (current.content or b"")
    assert [
        v.version for v in (await any_store.history(HistoryQuery("Patient", "b1"))).versions
    ] == [1]


async def test_the_same_id_created_twice_in_a_unit_is_refused(any_store: Store) -> None:
    with pytest.raises(VersionConflict):
        async with any_store.unit_of_work() as uow:
            await uow.put(version("Patient", "t1", 1))
            await uow.put(version("Patient", "t1", 1))
    assert await any_store.read("Patient", "t1") is None


async def test_delete_keeps_history(any_store: Store) -> None:
    await put(any_store, version("Patient", "d", 1))
    await put(any_store, version("Patient", "d", 2, deleted=True))
    current = await any_store.read("Patient", "d")
    assert current is not None and current.deleted and current.version == 2
    assert current.method == "delete"
    assert (await any_store.vread("Patient", "d", 1)) is not None
    assert await any_store.count("Patient") == 0
    await put(any_store, version("Patient", "d", 3))
    assert await any_store.count("Patient") == 1


async def test_unit_of_work_is_atomic(any_store: Store) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with any_store.unit_of_work() as uow:
            await uow.put(version("Patient", "a1", 1))
            assert (await uow.read("Patient", "a1")) is not None  # sees its own write
            raise Boom
    assert await any_store.read("Patient", "a1") is None
    assert (await any_store.history(HistoryQuery("Patient", "a1"))).versions == ()


async def test_uncommitted_writes_are_invisible_outside(any_store: Store) -> None:
    async with any_store.unit_of_work() as uow:
        await uow.put(version("Patient", "iso", 1))
        assert await any_store.read("Patient", "iso") is None
    assert await any_store.read("Patient", "iso") is not None


async def test_units_of_work_are_serialised(any_store: Store) -> None:
    await put(any_store, version("Patient", "c", 1))

    async def bump() -> str:
        try:
            async with any_store.unit_of_work() as uow:
                current = await uow.read("Patient", "c")
                assert current is not None
                await asyncio.sleep(0)  # give the other unit every chance to interleave
                await uow.put(version("Patient", "c", current.version + 1))
            return "ok"
        except VersionConflict:
            return "conflict"

    results = await asyncio.gather(*(bump() for _ in range(10)))
    # serialised read-check-write: every unit saw the previous one's commit
    assert results == ["ok"] * 10
    assert (await any_store.read("Patient", "c")).version == 11  # type: ignore[union-attr]


async def test_history_order_paging_since_at(any_store: Store) -> None:
    await put(any_store, version("Patient", "h", 1, at="2026-01-01T00:00:01.000000Z"))
    await put(any_store, version("Observation", "o", 1, at="2026-01-01T00:00:02.000000Z"))
    await put(any_store, version("Patient", "h", 2, at="2026-01-01T00:00:03.000000Z"))
    await put(any_store, version("Patient", "h", 3, at="2026-01-01T00:00:04.000000Z", deleted=True))
    inst = await any_store.history(HistoryQuery("Patient", "h"))
    assert [v.version for v in inst.versions] == [3, 2, 1] and inst.next_cursor is None
    typ = await any_store.history(HistoryQuery("Patient"))
    assert [(v.id, v.version) for v in typ.versions] == [("h", 3), ("h", 2), ("h", 1)]
    system = await any_store.history(HistoryQuery())
    assert [(v.resource_type, v.version) for v in system.versions] == [
        ("Patient", 3),
        ("Patient", 2),
        ("Observation", 1),
        ("Patient", 1),
    ]
    page1 = await any_store.history(HistoryQuery(count=2))
    assert len(page1.versions) == 2 and page1.next_cursor is not None
    await put(any_store, version("Observation", "o", 2, at="2026-01-01T00:00:05.000000Z"))
    page2 = await any_store.history(HistoryQuery(count=2, before_seq=page1.next_cursor))
    assert [(v.resource_type, v.version) for v in page2.versions] == [
        ("Observation", 1),
        ("Patient", 1),
    ]
    since = await any_store.history(HistoryQuery(since="2026-01-01T00:00:03.000000Z"))
    assert {(v.resource_type, v.version) for v in since.versions} == {
        ("Patient", 3),
        ("Patient", 2),
        ("Observation", 2),
    }
    at = await any_store.history(HistoryQuery("Patient", "h", at="2026-01-01T00:00:03.500000Z"))
    assert [v.version for v in at.versions] == [2]
    assert (await any_store.history(HistoryQuery("Patient", "none"))).versions == ()


async def test_search_sees_committed_and_unit_sees_its_own(any_store: Store) -> None:
    await put(any_store, version("Patient", "s1", 1, gender="female"))
    await put(any_store, version("Patient", "s2", 1, gender="male"))
    result = await any_store.search(parse("Patient", [("gender", "female")], base_url="http://x"))
    assert [m.id for m in result.matches] == ["s1"]
    async with any_store.unit_of_work() as uow:
        await uow.put(version("Patient", "s3", 1, gender="female"))
        assert sorted(await uow.search("Patient", [("gender", "female")])) == ["s1", "s3"]
        await uow.put(version("Patient", "s1", 2, deleted=True))
        assert await uow.search("Patient", [("gender", "female")]) == ["s3"]
    result = await any_store.search(parse("Patient", [("gender", "female")], base_url="http://x"))
    assert [m.id for m in result.matches] == ["s3"]


async def test_count(any_store: Store) -> None:
    await put(any_store, version("Patient", "n1", 1), version("Patient", "n2", 1))
    await put(any_store, version("Observation", "n3", 1))
    assert await any_store.count("Patient") == 2
    assert await any_store.count() == 3
