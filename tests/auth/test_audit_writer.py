"""The audit writer process (``fhir_server.auth.audit_writer``): the queued AuditEvents
built and stored by a child process, the same records as inline, and the trail taking
over when the child is gone."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_server import jsonio
from fhir_server.app import create_app, shareable
from fhir_server.auth.access import Principal
from fhir_server.auth.audit import (
    AuditDraft,
    AuditTrail,
    audit_event,
    draft_of_record,
    draft_record,
)
from fhir_server.auth.audit_writer import AuditWriterProcess, WriterGone
from fhir_server.auth.scopes import Permissions
from fhir_server.interactions.model import FhirRequest
from fhir_server.storage.port import HistoryQuery
from fhir_server.storage.sqlite.store import SqliteStore
from tests.auth.test_wiring import BASE, auth_settings

USER = Principal(
    "app-1",
    "user-7",
    Permissions.of("user/*.rs"),
    fhir_user="Practitioner/pr1",
    issuer="https://issuer.example",
)
BACKEND = Principal("billing", "billing", Permissions.of("system/*.rs"))


def _draft(
    principal: Principal | None,
    method: str,
    path: str,
    params: Sequence[tuple[str, str]] = (),
    *,
    body: bytes | None = None,
    content_type: str | None = None,
    status: int = 200,
) -> AuditDraft:
    headers = {"content-type": content_type} if content_type else {}
    d = AuditDraft(principal, FhirRequest(method, path, params, headers, body), "10.0.0.9", 1.5)
    d.finished = 1_795_000_000.25
    d.status = status
    if status >= 400:
        d.description = "not allowed"
    else:
        d.etag = 'W/"3"'
    return d


DRAFTS = {
    "read": _draft(USER, "GET", "Patient/pa"),
    "vread": _draft(USER, "GET", "Observation/o1/_history/2"),
    "search": _draft(USER, "GET", "Observation", [("subject", "Patient/pa"), ("_count", "5")]),
    "form search": _draft(
        BACKEND,
        "POST",
        "Observation/_search",
        body=b"patient=pa&code=8867-4",
        content_type="application/x-www-form-urlencoded",
    ),
    "operation": _draft(USER, "GET", "Patient/pa/$everything"),
    "refused": _draft(USER, "GET", "Encounter/e1", status=403),
    "no token": _draft(None, "GET", "Patient/pa", status=401),
}


@pytest.mark.parametrize("name", sorted(DRAFTS))
def test_a_record_gives_the_same_audit_event(name: str) -> None:
    """What the writer process builds from a record is what the server would have built
    from the draft (after the JSON trip the record makes)."""
    draft = DRAFTS[name]
    record = draft_record(draft)
    assert record is not None
    trip = jsonio.loads(jsonio.dumps(record))
    assert audit_event(draft_of_record(trip), BASE) == audit_event(draft, BASE)


def test_a_draft_with_writes_has_no_record() -> None:
    from fhir_server.auth.audit import Written
    from fhir_server.storage.port import StoredVersion

    d = _draft(USER, "PUT", "Patient/pa")
    d.writes.append(Written(StoredVersion("Patient", "pa", 2, "x", "update", b"{}"), None))
    assert draft_record(d) is None


def test_only_databases_other_processes_can_open_are_shared() -> None:
    assert shareable("sqlite:///./data/fhir.sqlite")
    assert shareable("sqlite:////var/lib/fhir.sqlite")
    assert shareable("mongodb://db.example/fhir")
    assert not shareable(":memory:")
    assert not shareable("sqlite://")
    assert not shareable("sqlite:///:memory:")


def _events(path: Path) -> list[dict[str, Any]]:
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT content FROM resource WHERE type = 'AuditEvent' AND content IS NOT NULL"
        ).fetchall()
    finally:
        conn.close()
    return [jsonio.loads(r[0]) for r in rows]


async def test_the_writer_process_stores_what_the_server_queued(tmp_path: Path) -> None:
    db = tmp_path / "fhir.sqlite"
    store = SqliteStore(str(db))
    await store.open()
    settings = replace(
        auth_settings(tmp_path), database=f"sqlite:///{db}", audit_writer_process=True
    )
    app = create_app(settings, store)
    audit: AuditTrail = app.state.audit
    assert isinstance(audit.writer, AuditWriterProcess)
    server = app.state.auth_server
    token, _ = server.tokens.issue_access_token(
        subject="u1",
        client_id="app",
        scope="user/*.cruds",
        patient=None,
        fhir_user="Practitioner/pr1",
        lifetime=600,
    )
    h = {"Authorization": f"Bearer {token}"}
    transport = httpx.ASGITransport(app=app)
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://test") as c,
        ):
            writer = audit.writer
            assert writer is not None and writer.alive
            r = await c.put(
                "/fhir/Patient/pa", json={"resourceType": "Patient", "id": "pa"}, headers=h
            )
            assert r.status_code == 201
            for _ in range(30):
                assert (await c.get("/fhir/Patient/pa", headers=h)).status_code == 200
            assert (
                await c.get("/fhir/Patient", params={"_id": "pa"}, headers=h)
            ).status_code == 200
            assert (await c.get("/fhir/Patient/pa")).status_code == 401
            assert await audit.flush() == 32
            assert audit.writer is writer  # no fall-back happened
            events = _events(db)
            # the write's event (with the data, in this process) and the 32 queued ones
            assert len(events) == 33
            reads = [e for e in events if e["subtype"][0]["code"] == "read" and e["outcome"] == "0"]
            assert len(reads) == 30
            assert all(e["entity"][0]["what"]["reference"] == "Patient/pa" for e in reads)
            assert sum(1 for e in events if e["outcome"] == "4") == 1  # the 401
            # stored like any resource: searchable through the API
            found = await c.get(
                "/fhir/AuditEvent",
                params={"subtype": "read", "outcome": "0", "_summary": "count"},
                headers=h,
            )
            assert found.json()["total"] == 30
            for _ in range(3):
                await c.get("/fhir/Patient/pa", headers=h)
        # the lifespan's end handed over what was queued, then stopped the child
        assert not writer.alive
        assert len(_events(db)) == 33 + 1 + 3  # + the AuditEvent search, the 3 reads
    finally:
        await store.close()


class _Gone:
    """A writer process that stored ``written`` records of the batch and then died."""

    def __init__(self, written: int) -> None:
        self.written = written
        self.batches: list[int] = []

    @property
    def alive(self) -> bool:
        return True

    def write(self, records: Sequence[Any]) -> int:
        self.batches.append(len(records))
        raise WriterGone("killed", self.written)

    def close(self) -> None:
        pass


async def test_when_the_writer_is_gone_the_trail_writes_the_rest_inline(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "x.sqlite"))
    await store.open()
    try:
        gone = _Gone(written=2)
        audit = AuditTrail(store, BASE, writer=gone)  # type: ignore[arg-type]
        for i in range(5):
            d = _draft(USER, "GET", f"Patient/p{i}")
            audit.enqueue(d)
        assert await audit.flush() == 5
        assert gone.batches == [5] and audit.writer is None
        rows = store.reader.execute(
            "SELECT content FROM resource WHERE type = 'AuditEvent'"
        ).fetchall()
        # the two the child stored before it went are not written twice
        refs = sorted(jsonio.loads(r[0])["entity"][0]["what"]["reference"] for r in rows)
        assert refs == ["Patient/p2", "Patient/p3", "Patient/p4"]
    finally:
        await store.close()


def test_a_killed_writer_process_is_reported_gone(tmp_path: Path) -> None:
    writer = AuditWriterProcess(f"sqlite:///{tmp_path / 'k.sqlite'}", BASE)
    writer.start()
    try:
        assert writer.write([]) == 0  # up and answering
        record = draft_record(_draft(USER, "GET", "Patient/pa"))
        assert writer.write([record]) == 1
        assert writer._process is not None
        writer._process.kill()
        writer._process.wait(10)
        with pytest.raises(WriterGone):
            writer.write([record])
        assert not writer.alive
    finally:
        writer.close()


def test_the_writer_process_stops_when_asked(tmp_path: Path) -> None:
    writer = AuditWriterProcess(f"sqlite:///{tmp_path / 's.sqlite'}", BASE)
    writer.start()
    assert writer.write([]) == 0
    started = time.monotonic()
    writer.close()
    assert not writer.alive and time.monotonic() - started < 10
    with pytest.raises(WriterGone):
        writer.write([])


async def test_the_child_reports_a_batch_it_cannot_store(tmp_path: Path) -> None:
    """A store error in the child: ``error <n>``, and the child keeps serving."""
    from fhir_server.auth import audit_writer

    class Failing:
        async def open(self) -> None: ...

        async def close(self) -> None: ...

    sent: list[bytes] = []

    class Out:
        def write(self, data: bytes) -> None:
            sent.append(data)

        def flush(self) -> None: ...

    record = draft_record(_draft(USER, "GET", "Patient/pa"))
    batch = jsonio.dumps([record] * (audit_writer.CHUNK + 1))
    stop = b""
    wire = b"".join(len(m).to_bytes(4, "big") + m for m in (batch, stop))

    stored: list[int] = []

    async def store_events(store: Any, events: Sequence[Any]) -> None:
        if stored:  # the first chunk goes in, the second fails
            raise RuntimeError("disk full")
        stored.append(len(events))

    import fhir_server.auth.audit as audit_module

    original = audit_module.store_events
    audit_module.store_events = store_events  # type: ignore[assignment]
    try:
        await audit_writer._serve(Failing(), BASE, io.BytesIO(wire), Out())  # type: ignore[arg-type]
    finally:
        audit_module.store_events = original  # type: ignore[assignment]
    replies = [m[4:].decode() for m in sent]
    assert stored == [audit_writer.CHUNK]
    assert replies == [f"error {audit_writer.CHUNK} RuntimeError('disk full')"]


def test_serve_runs_the_writer_process_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from fhir_server import cli

    seen: list[str] = []
    monkeypatch.setattr(cli, "cmd_serve", lambda args: seen.append(args.audit_writer) or 0)
    assert cli.main(["serve"]) == 0
    assert cli.main(["serve", "--audit-writer", "inline"]) == 0
    assert seen == ["process", "inline"]


class _Slow:
    """A writer process that takes ``delay`` seconds per batch."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.batches: list[int] = []

    @property
    def alive(self) -> bool:
        return True

    def write(self, records: Sequence[Any]) -> int:
        time.sleep(self.delay)
        self.batches.append(len(records))
        return len(records)

    def close(self) -> None:
        pass


async def _audited_reads(audit: AuditTrail, n: int, peak: list[int]) -> None:
    from fhir_server.interactions.context import Context
    from fhir_server.interactions.model import FhirResponse
    from fhir_server.settings import Settings

    ctx = Context(store=audit.store, settings=Settings(database=":memory:"), principal=USER)

    async def read(c: Context, req: FhirRequest) -> FhirResponse:
        peak.append(audit.pending)
        return FhirResponse(200)

    for i in range(n):
        await audit.audited(ctx, FhirRequest("GET", f"Patient/p{i}"), read)


async def test_requests_wait_when_the_writer_falls_behind(tmp_path: Path) -> None:
    """Backpressure: at ``high_water`` waiting records, answers wait for the writer, so
    the queue stays bounded however fast the requests come."""
    store = SqliteStore(str(tmp_path / "b.sqlite"))
    await store.open()
    slow = _Slow(0.02)
    audit = AuditTrail(store, BASE, batch_size=10, high_water=30, writer=slow)  # type: ignore[arg-type]
    audit.start()
    try:
        peak: list[int] = []
        await asyncio.gather(*(_audited_reads(audit, 40, peak) for _ in range(5)))
        assert max(peak) <= audit.high_water + 5  # each of the 5 clients adds one, then waits
        await audit.flush()
        assert sum(slow.batches) == 200
        # the writer process is handed what waits (up to WRITER_BATCH), not batch_size
        assert max(slow.batches) > audit.batch_size
    finally:
        await audit.stop()
        await store.close()


async def test_requests_do_not_wait_on_a_failing_writer(tmp_path: Path) -> None:
    """A store that refuses the batches must not stop the server: the records are kept
    (up to ``max_pending``) and requests go on."""
    store = SqliteStore(str(tmp_path / "f.sqlite"))
    await store.open()
    audit = AuditTrail(store, BASE, batch_size=10, high_water=30, max_pending=1000)

    async def refused(batch: Any) -> None:
        raise RuntimeError("disk full")

    audit._write = refused  # type: ignore[method-assign]
    audit.start()
    try:
        peak: list[int] = []
        await asyncio.wait_for(_audited_reads(audit, 100, peak), timeout=10)
        assert audit.pending == 100 and audit.dropped == 0
    finally:
        audit._closing = True
        audit.writer = None
        if audit._task is not None:
            assert audit._wake is not None
            audit._wake.set()
            await audit._task
        await store.close()


async def test_the_writer_process_stores_on_mongodb() -> None:
    """The child opens the server's database from its URL, whichever the store."""
    from urllib.parse import urlsplit, urlunsplit

    from tests.storage.mongo_support import make_store, server_uri

    store = make_store()  # a throwaway database, dropped on close
    await store.open()
    try:
        parts = urlsplit(server_uri())
        url = urlunsplit(parts._replace(path="/" + store.db.name))  # type: ignore[attr-defined]
        writer = AuditWriterProcess(url, BASE)
        writer.start()
        try:
            records = [draft_record(_draft(USER, "GET", f"Patient/p{i}")) for i in range(3)]
            assert writer.write(records) == 3
        finally:
            writer.close()
        page = await store.history(HistoryQuery("AuditEvent"))
        refs = sorted(
            jsonio.loads(v.content or b"{}")["entity"][0]["what"]["reference"]
            for v in page.versions
        )
        assert refs == ["Patient/p0", "Patient/p1", "Patient/p2"]
    finally:
        await store.close()
