"""SQLite-specific behaviour: the index layout (rows addressed by rowid range, and the
rebuild of a database written with an older layout) and the background checkpoints."""

from __future__ import annotations

import asyncio
import gzip
import math
import sqlite3
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_server import jsonio
from fhir_server.app import create_app
from fhir_server.errors import FhirError
from fhir_server.search.parser import parse
from fhir_server.settings import Settings
from fhir_server.storage.port import HistoryQuery, NewVersion
from fhir_server.storage.sqlite import search_index
from fhir_server.storage.sqlite import store as store_module
from fhir_server.storage.sqlite.store import THREAD_MIN_CREATES, SqliteStore


def _patient(i: int) -> dict[str, object]:
    return {
        "resourceType": "Patient",
        "id": f"p{i}",
        "name": [{"family": f"Layout{i}"}],
        "gender": "female" if i % 2 else "male",
    }


async def _fill(store: SqliteStore, n: int) -> None:
    async with store.unit_of_work() as uow:
        for i in range(n):
            r = _patient(i)
            content = jsonio.dumps(r)
            await uow.put(
                NewVersion("Patient", f"p{i}", 1, "2024-01-01T00:00:00Z", "create", content, r)
            )


async def _ids(store: SqliteStore, params: list[tuple[str, str]]) -> list[str]:
    result = await store.search(parse("Patient", params, strict=True))
    return sorted(h.id for h in result.matches)


async def test_rows_live_in_the_rowid_range_of_their_resource(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "a.sqlite"))
    await store.open()
    try:
        await _fill(store, 3)
        rows = store.reader.execute("SELECT rowid, rid FROM idx_string").fetchall()
        assert rows
        for rowid, rid in rows:
            assert rid * search_index.SPAN <= rowid < (rid + 1) * search_index.SPAN
        indexes = {r[0] for r in store.reader.execute("SELECT name FROM sqlite_master")}
        assert not any(name.endswith("_owner") for name in indexes)
    finally:
        await store.close()


async def test_an_older_layout_is_rebuilt_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    store = SqliteStore(str(path))
    await store.open()
    await _fill(store, 4)
    await store.close()
    # an older database: other layout version, rows the new code cannot address
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA user_version = 1")
    for table in search_index.TABLES:
        conn.execute(f"UPDATE {table} SET rowid = -rowid")
    conn.execute("CREATE INDEX idx_string_owner ON idx_string (rid, param)")
    conn.close()

    store = SqliteStore(str(path))
    await store.open()
    try:
        assert store.reader.execute("PRAGMA user_version").fetchone()[0] == search_index.LAYOUT
        stale = "SELECT count(*) FROM idx_string WHERE rowid < 0"
        assert store.reader.execute(stale).fetchone()[0] == 0
        assert await _ids(store, [("family", "Layout2")]) == ["p2"]
        assert await _ids(store, [("gender", "female")]) == ["p1", "p3"]
        assert await _ids(store, [("_sort", "family"), ("_count", "2")]) == ["p0", "p1"]
        # an update replaces the rebuilt rows rather than adding to them
        async with store.unit_of_work() as uow:
            r = _patient(2) | {"name": [{"family": "Renamed"}]}
            await uow.put(
                NewVersion("Patient", "p2", 2, "2024-01-02T00:00:00Z", "update", jsonio.dumps(r), r)
            )
        assert await _ids(store, [("family", "Layout2")]) == []
        assert await _ids(store, [("family", "Renamed")]) == ["p2"]
    finally:
        await store.close()


async def test_reference_url_and_identifier_indexes_hold_only_their_rows(
    tmp_path: Path,
) -> None:
    """Layout 4: the url and identifier indexes of references are partial; a database
    of layout 3 (full indexes) gets them replaced on open, and searches on either use
    them and still find the right resources."""
    path = tmp_path / "refs.sqlite"
    store = SqliteStore(str(path))
    await store.open()
    obs = [
        {
            "resourceType": "Observation",
            "id": "local",
            "status": "final",
            "code": {"text": "x"},
            "subject": {"reference": "Patient/p1"},
        },
        {
            "resourceType": "Observation",
            "id": "absolute",
            "status": "final",
            "code": {"text": "x"},
            "subject": {"reference": "http://other.org/fhir/Patient/p9"},
        },
        {
            "resourceType": "Observation",
            "id": "ident",
            "status": "final",
            "code": {"text": "x"},
            "subject": {"identifier": {"system": "urn:mrn", "value": "m-7"}},
        },
    ]
    async with store.unit_of_work() as uow:
        for r in obs:
            content = jsonio.dumps(r)
            await uow.put(
                NewVersion(
                    "Observation", str(r["id"]), 1, "2024-01-01T00:00:00Z", "create", content, r
                )
            )
    await store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP INDEX idx_ref_url")
    conn.execute("DROP INDEX idx_ref_identifier")
    conn.execute("CREATE INDEX idx_ref_url ON idx_ref (param, url, rid)")
    conn.execute("CREATE INDEX idx_ref_identifier ON idx_ref (param, id_value, rid)")
    conn.execute("PRAGMA user_version = 3")
    conn.close()

    store = SqliteStore(str(path))
    await store.open()
    try:
        db = store.reader
        assert db.execute("PRAGMA user_version").fetchone()[0] == search_index.LAYOUT
        sql = {r[0]: r[1] for r in db.execute("SELECT name, sql FROM sqlite_master")}
        assert "WHERE url IS NOT NULL" in sql["idx_ref_url"]
        assert "WHERE id_value IS NOT NULL" in sql["idx_ref_identifier"]
        entries = db.execute(
            "SELECT count(*) FROM idx_ref INDEXED BY idx_ref_url WHERE url IS NOT NULL"
        ).fetchone()[0]
        with_url, total = db.execute(
            "SELECT count(url), count(*) FROM idx_ref NOT INDEXED"
        ).fetchone()
        assert entries == with_url == 2  # subject and patient of the absolute reference
        assert total > with_url

        async def ids(params: list[tuple[str, str]]) -> list[str]:
            result = await store.search(parse("Observation", params, strict=True))
            return sorted(h.id for h in result.matches)

        assert await ids([("subject", "http://other.org/fhir/Patient/p9")]) == ["absolute"]
        assert await ids([("subject:identifier", "urn:mrn|m-7")]) == ["ident"]
        assert await ids([("subject", "Patient/p1")]) == ["local"]
        assert await ids([("subject:missing", "false")]) == ["absolute", "ident", "local"]
        for query in (
            "SELECT rid FROM idx_ref WHERE param = 1 AND url = 'u'",
            "SELECT rid FROM idx_ref WHERE param = 1 AND id_value = 'v'",
        ):
            plan = " ".join(str(r[-1]) for r in db.execute("EXPLAIN QUERY PLAN " + query))
            assert "USING COVERING INDEX idx_ref_" in plan, plan
    finally:
        await store.close()


async def test_a_rebuild_indexes_stored_search_parameters(tmp_path: Path) -> None:
    """The SearchParameters stored in the database are known before its index is
    rebuilt, so their rows are rebuilt too."""
    from fhir_server import definitions
    from fhir_server.search import registry as registries

    official = registries.default_registry()
    registries.use(registries.Registry.from_definitions(definitions.search_parameters()))
    try:
        path = tmp_path / "custom.sqlite"
        store = SqliteStore(str(path))
        await store.open()
        nickname = {
            "resourceType": "SearchParameter",
            "id": "nickname",
            "url": "http://example.org/SearchParameter/patient-nickname",
            "name": "nickname",
            "status": "active",
            "description": "a nickname",
            "code": "nickname",
            "base": ["Patient"],
            "type": "string",
            "expression": "Patient.name.given",
        }
        async with store.unit_of_work() as uow:
            await uow.put(
                NewVersion(
                    "SearchParameter",
                    "nickname",
                    1,
                    "2024-01-01T00:00:00Z",
                    "create",
                    jsonio.dumps(nickname),
                    nickname,
                )
            )
            r = {"resourceType": "Patient", "id": "n1", "name": [{"given": ["Bob"]}]}
            await uow.put(
                NewVersion("Patient", "n1", 1, "2024-01-01T00:00:00Z", "create", jsonio.dumps(r), r)
            )
        assert await _ids(store, [("nickname", "bo")]) == ["n1"]
        await store.close()
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA user_version = 1")
        conn.close()
        # a new process: only the official parameters until the store is opened
        registries.use(registries.Registry.from_definitions(definitions.search_parameters()))
        store = SqliteStore(str(path))
        await store.open()
        try:
            assert await _ids(store, [("nickname", "bo")]) == ["n1"]
        finally:
            await store.close()
    finally:
        registries.use(official)


async def test_a_newer_layout_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite"
    store = SqliteStore(str(path))
    await store.open()
    await store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA user_version = {search_index.LAYOUT + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="newer than this server"):
        await SqliteStore(str(path)).open()


def test_too_many_rows_for_one_resource_is_a_422() -> None:
    search_index._check_span(search_index.SPAN)
    with pytest.raises(FhirError) as err:
        search_index._check_span(search_index.SPAN + 1)
    assert err.value.status == 422


async def test_checkpoints_run_in_the_background_and_stop_with_the_store(tmp_path: Path) -> None:
    def checkpointers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "sqlite-checkpoint"}

    others = checkpointers()  # of stores other tests keep open
    path = tmp_path / "ckpt.sqlite"
    store = SqliteStore(str(path))
    await store.open()
    try:
        before = path.stat().st_size
        await _fill(store, 200)  # far below the writer's own autocheckpoint threshold
        assert path.stat().st_size == before  # committed pages are in the WAL only
        for _ in range(100):
            if path.stat().st_size > before:
                break
            await asyncio.sleep(0.05)
        assert path.stat().st_size > before, "no background checkpoint copied the WAL"
        assert len(checkpointers() - others) == 1
    finally:
        await store.close()
    assert checkpointers() <= others


def test_date_stats_remember_committed_and_pending_figures() -> None:
    stats = search_index.DateStats()
    unit: dict[int, tuple[int, int]] = {}
    assert stats.raises(7, 100, 0, unit)  # unknown: the statement is needed
    assert not stats.raises(7, 50, 0, unit)  # within what this unit already wrote
    other: dict[int, tuple[int, int]] = {}  # a unit that overlaps (or follows a rollback)
    assert stats.raises(7, 50, 0, other)  # another unit's pending figure is not known
    stats.commit(other)
    assert not stats.raises(7, 50, 0, {}) and not stats.raises(7, 10, 0, {})
    later: dict[int, tuple[int, int]] = {}
    assert stats.raises(7, 10, 1, later)  # several rows: raises 'multi'
    assert stats.raises(7, 60, 1, later)
    stats.commit(later)
    assert stats.committed[7] == (60, 1)
    stats.commit(unit)  # committed after: figures only grow
    assert stats.committed[7] == (100, 1)


async def test_writes_that_raise_no_date_figure_skip_the_statement(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "d.sqlite"))
    await store.open()
    statements: list[str] = []
    store.writer.set_trace_callback(statements.append)

    def obs(i: int, when: str) -> NewVersion:
        r = {
            "resourceType": "Observation",
            "id": f"o{i}",
            "status": "final",
            "code": {"text": "x"},
            "effectiveDateTime": when,
        }
        return NewVersion(
            "Observation", f"o{i}", 1, "2024-01-01T00:00:00Z", "create", jsonio.dumps(r), r
        )

    def upserts() -> int:
        n = sum("idx_date_stats" in s for s in statements)
        statements.clear()
        return n

    try:
        async with store.unit_of_work() as uow:
            await uow.put(obs(1, "2024-03-01"))  # a day wide: new figures
        assert upserts() == 1
        async with store.unit_of_work() as uow:
            await uow.put(obs(2, "2024-03-05"))  # no wider than what is known
        assert upserts() == 0
        with pytest.raises(RuntimeError):
            async with store.unit_of_work() as uow:
                await uow.put(obs(3, "2024"))  # a year wide, rolled back
                raise RuntimeError("abort")
        statements.clear()  # (a unit that only creates sends nothing before it commits)
        async with store.unit_of_work() as uow:
            await uow.put(obs(4, "2024"))  # so it is written again
        assert upserts() == 1
        (span,) = store.reader.execute("SELECT max(span) FROM idx_date_stats").fetchone()
        assert span >= 365 * 86_400 * 1_000_000 - 1
    finally:
        store.writer.set_trace_callback(None)
        await store.close()


def _index_rows(store: SqliteStore) -> dict[str, list[tuple[Any, ...]]]:
    """Every index row, with the resource's type/id instead of its rid."""
    conn = store.reader
    ids = {rid: (t, i) for rid, t, i in conn.execute("SELECT rid, type, id FROM resource")}
    tables: dict[str, list[tuple[Any, ...]]] = {}
    for table in (*search_index.TABLES, "idx_date_stats"):
        rows = conn.execute(f"SELECT rowid, * FROM {table}").fetchall()
        if table == "idx_date_stats":
            tables[table] = sorted(rows)
            continue
        tables[table] = sorted((ids[r[1]], r[0] - r[1] * search_index.SPAN, *r[2:]) for r in rows)
    tables["idx_fulltext"] = sorted(
        (ids[r[0]], *r[1:]) for r in conn.execute("SELECT rowid, text, content FROM idx_fulltext")
    )
    return tables


async def test_deferred_creates_store_exactly_what_single_writes_store(tmp_path: Path) -> None:
    """Creates of a unit of work are written at its end as a few set-based statements
    over JSON arrays; everything else writes a resource's rows one by one
    (``search_index.write``). Both must leave the same rows: the official R4 examples
    cover every kind of index value, infinite range bounds and non-ASCII text included."""
    examples = {
        (e["resourceType"], e["id"]): e
        for e in (
            jsonio.loads(line)
            for line in gzip.decompress(
                (Path(__file__).parents[1] / "data" / "r4-examples.ndjson.gz").read_bytes()
            ).splitlines()
        )
        if e.get("resourceType") != "SearchParameter"
    }
    assert len(examples) > 700
    versions = [
        NewVersion(t, i, 1, "2024-01-01T00:00:00Z", "create", jsonio.dumps(e), e)
        for (t, i), e in examples.items()
    ]
    stores = [SqliteStore(str(tmp_path / f"{k}.sqlite")) for k in ("deferred", "single")]
    for s in stores:
        await s.open()
    try:
        deferred, single = stores
        for chunk in range(0, len(versions), 100):
            async with deferred.unit_of_work() as uow:
                for v in versions[chunk : chunk + 100]:
                    await uow.put(v)
        conn = single.writer
        conn.execute("BEGIN IMMEDIATE")
        for v in versions:
            rid = conn.execute(
                "INSERT INTO resource (type, id, version, last_updated, method, content)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (v.resource_type, v.id, v.version, v.last_updated, v.method, v.content),
            ).lastrowid
            assert rid is not None and v.resource is not None
            search_index.write(conn, rid, v.resource_type, v.resource, fresh=True)
        conn.execute("COMMIT")
        a, b = _index_rows(deferred), _index_rows(single)
        assert sum(len(rows) for rows in a.values()) > 8_000
        assert any(math.isinf(r[4]) for r in a["idx_quantity"])  # an open range
        for table in a:
            assert a[table] == b[table], table
        for v in versions[::50]:
            stored = await deferred.read(v.resource_type, v.id)
            assert stored is not None and stored.content == v.content
            assert await deferred.vread(v.resource_type, v.id, 1) == stored
    finally:
        for s in stores:
            await s.close()


async def test_a_unit_that_only_creates_is_written_by_the_commit_thread(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "c.sqlite"))
    await store.open()
    seen: list[tuple[str, str]] = []
    store.writer.set_trace_callback(lambda sql: seen.append((threading.current_thread().name, sql)))

    def patient(id: str) -> NewVersion:
        r = {"resourceType": "Patient", "id": id, "gender": "other"}
        return NewVersion("Patient", id, 1, "2024-01-01T00:00:00Z", "create", jsonio.dumps(r), r)

    many = THREAD_MIN_CREATES
    loop_thread = threading.current_thread().name
    try:
        async with store.unit_of_work() as uow:
            for i in range(many):
                await uow.put(patient(f"c{i}"))
        assert seen, "nothing reached the database"
        assert {name.partition("_")[0] for name, _ in seen} == {"sqlite-commit"}
        assert sum(sql.startswith("INSERT INTO resource") for _, sql in seen) == 1  # one batch
        seen.clear()
        async with store.unit_of_work() as uow:  # a small unit: on the loop's thread
            await uow.put(patient("small"))
        assert seen and {name for name, _ in seen} == {loop_thread}
        assert sum(sql.startswith("INSERT INTO resource") for _, sql in seen) == 1
        seen.clear()
        async with store.unit_of_work() as uow:  # reads first: begins on the loop's thread
            assert await uow.read("Patient", "c0") is not None
            for i in range(many):
                await uow.put(patient(f"r{i}"))
        assert seen[0] == (loop_thread, "BEGIN IMMEDIATE")
        assert seen[-1][1] == "COMMIT"
        assert await store.count("Patient") == 2 * many + 1
    finally:
        store.writer.set_trace_callback(None)
        await store.close()


async def test_a_write_lock_held_too_long_answers_503(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holding the database's write lock for longer than the store
    waits (the audit writer, a `load`) is a temporary condition: 503 with Retry-After
    and an OperationOutcome that says so, whichever path the unit of work takes, and
    nothing written."""
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_MS", 200)
    path = tmp_path / "busy.sqlite"
    store = SqliteStore(str(path))
    await store.open()
    app = create_app(
        Settings(database=f"sqlite:///{path}", public_base_url="http://test/fhir"), store
    )
    patient = {"resourceType": "Patient", "gender": "other"}
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": patient, "request": {"method": "POST", "url": "Patient"}}
            for _ in range(THREAD_MIN_CREATES)
        ],
    }
    other = sqlite3.connect(path, isolation_level=None)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test/fhir/") as c:
            other.execute("BEGIN IMMEDIATE")
            answers = [
                await c.post("Patient", json=patient),  # one create: commits on the loop
                await c.post("", json=bundle),  # many: on the commit thread
                await c.put("Patient/p1", json={**patient, "id": "p1"}),  # reads first
            ]
            for r in answers:
                assert r.status_code == 503, r.text
                assert r.headers["Retry-After"] == "1"
                issue = r.json()["issue"][0]
                assert issue["code"] == "lock-error" and "busy" in issue["diagnostics"]
            # the commit failed, not the transaction's last entry
            assert "entry" not in answers[1].json()["issue"][0]["diagnostics"]
            other.execute("ROLLBACK")
            assert await store.count() == 0
            assert (await c.post("Patient", json=patient)).status_code == 201
            assert (await c.post("", json=bundle)).status_code == 200
            assert await store.count() == 1 + THREAD_MIN_CREATES
    finally:
        other.close()
        await store.close()


def _patient_version(id: str, v: int = 1, **body: Any) -> NewVersion:
    r = {"resourceType": "Patient", "id": id, "meta": {"versionId": str(v)}, **body}
    method = "create" if v == 1 else "update"
    return NewVersion("Patient", id, v, f"2024-01-01T00:00:0{v}Z", method, jsonio.dumps(r), r)


async def test_a_unit_sees_its_kept_creates_in_searches_and_updates(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "own.sqlite"))
    await store.open()
    try:
        async with store.unit_of_work() as uow:
            for i in range(THREAD_MIN_CREATES):
                await uow.put(_patient_version(f"k{i}", name=[{"family": f"Kept{i}"}]))
            # a search writes the kept creates first, then sees them
            assert await uow.search("Patient", [("family", "Kept3")]) == ["k3"]
            await uow.put(_patient_version("k3", 2, gender="female"))
            await uow.put(_patient_version("late", gender="male"))  # kept again
        history = await store.history(HistoryQuery("Patient", "k3"))
        assert [v.version for v in history.versions] == [2, 1]
        found = await store.search(parse("Patient", [("family", "Kept3")]))
        assert [h.id for h in found.matches] == []  # version 2 has no name
        found = await store.search(parse("Patient", [("gender", "female")]))
        assert [h.id for h in found.matches] == ["k3"]
        assert await store.read("Patient", "late") is not None
    finally:
        await store.close()


async def test_the_next_unit_reads_what_the_previous_one_is_committing(tmp_path: Path) -> None:
    """A unit that only creates hands its commit to the commit thread and lets the next
    unit run; that unit's first read waits for the commit, so it sees the creates."""
    store = SqliteStore(str(tmp_path / "next.sqlite"))
    await store.open()
    ended = asyncio.Event()
    try:

        async def creates() -> None:
            async with store.unit_of_work() as uow:
                for i in range(50 * THREAD_MIN_CREATES):
                    await uow.put(_patient_version(f"n{i}"))
                ended.set()  # the unit's body is done; its commit follows

        async def reads() -> int:
            await ended.wait()
            async with store.unit_of_work() as uow:
                last = await uow.read("Patient", f"n{50 * THREAD_MIN_CREATES - 1}")
                return 0 if last is None else last.version

        _, version = await asyncio.gather(creates(), reads())
        assert version == 1
    finally:
        await store.close()


async def test_a_unit_keeps_a_bounded_amount_of_creates_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past DEFER_BYTES of kept content a unit writes its creates in its transaction
    (begun then): memory stays bounded and the unit is still all or nothing."""
    monkeypatch.setattr(store_module, "DEFER_BYTES", 300)
    store = SqliteStore(str(tmp_path / "big.sqlite"))
    await store.open()
    seen: list[tuple[str, str]] = []
    store.writer.set_trace_callback(lambda sql: seen.append((threading.current_thread().name, sql)))
    loop_thread = threading.current_thread().name
    narrative = {"status": "generated", "div": "x" * 100}
    try:
        async with store.unit_of_work() as uow:
            for i in range(10):
                await uow.put(_patient_version(f"b{i}", text=narrative))
            inserted_before_the_end = sum(s.startswith("INSERT INTO resource") for _, s in seen)
            assert (loop_thread, "BEGIN IMMEDIATE") in seen
        assert inserted_before_the_end >= 3
        assert await store.count("Patient") == 10
        with pytest.raises(RuntimeError):
            async with store.unit_of_work() as uow:
                for i in range(10):
                    await uow.put(_patient_version(f"r{i}", text=narrative))
                raise RuntimeError("abort")
        assert await store.count("Patient") == 10
    finally:
        store.writer.set_trace_callback(None)
        await store.close()
