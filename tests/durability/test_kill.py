"""A transaction is all-or-nothing even when the server process is killed mid-flight.

The server runs as a real subprocess on a SQLite file. A large transaction Bundle
(Patients whose ``urn:uuid`` fullUrls reference each other) is posted from a thread
and the server is SIGKILLed at several moments while the request is in flight; after a
restart either every resource of the Bundle exists (with its references rewritten) or
none does, the database passes ``PRAGMA integrity_check``, and an earlier committed
write is still there.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port

SIZE = 1500
TAG_SYSTEM = "urn:example:kill-test"
FHIR = {"Content-Type": "application/fhir+json"}
ROOT = Path(__file__).resolve().parents[2]


class Server:
    def __init__(self, db: Path, log: Path) -> None:
        self.db = db
        self.log = log
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/fhir/"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [
            sys.executable, "-m", "fhir_server.cli", "serve",
            "--database", f"sqlite:///{self.db}", "--port", str(self.port), "--no-auth",
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.base + "metadata", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError("server did not start")

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path / "db.sqlite", tmp_path / "server.log")
    s.start()
    try:
        yield s
    finally:
        s.stop()


def chained_bundle(tag: str, size: int = SIZE) -> dict[str, Any]:
    """`size` Patients; each one's `link` points at the previous one by its urn:uuid."""
    urls = [f"urn:uuid:{uuid.uuid4()}" for _ in range(size)]
    entries = []
    for i, url in enumerate(urls):
        patient: dict[str, Any] = {
            "resourceType": "Patient",
            "identifier": [{"system": TAG_SYSTEM, "value": f"{tag}-{i}"}],
            "name": [{"family": f"Kill{tag}", "given": [f"P{i}"]}],
            "gender": "unknown",
        }
        if i:
            patient["link"] = [{"other": {"reference": urls[i - 1]}, "type": "seealso"}]
        entries.append(
            {"fullUrl": url, "resource": patient, "request": {"method": "POST", "url": "Patient"}}
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def patients_by_tag(base: str) -> dict[str, dict[str, dict[str, Any]]]:
    """tag -> identifier value -> current Patient, read through type-level history."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    url: str | None = base + "Patient/_history?_count=1000"
    with httpx.Client(timeout=30) as c:
        while url:
            page = c.get(url)
            assert page.status_code == 200, page.text
            bundle = page.json()
            for e in bundle.get("entry", []):
                res = e.get("resource")
                if res is None:
                    continue
                for ident in res.get("identifier", []):
                    if ident.get("system") == TAG_SYSTEM:
                        tag = ident["value"].rsplit("-", 1)[0]
                        out.setdefault(tag, {})[ident["value"]] = res
            url = next((lk["url"] for lk in bundle.get("link", []) if lk["relation"] == "next"), None)
    return out


def check_chain(tag: str, found: dict[str, dict[str, Any]]) -> None:
    assert len(found) == SIZE
    ids = [found[f"{tag}-{i}"]["id"] for i in range(SIZE)]
    assert len(set(ids)) == SIZE
    for i in range(1, SIZE):
        assert found[f"{tag}-{i}"]["link"][0]["other"]["reference"] == f"Patient/{ids[i - 1]}"


def integrity(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


@dataclass
class Attempt:
    tag: str
    delay: float
    status: int | None = None
    error: str | None = None
    sent: threading.Event = field(default_factory=threading.Event)


def post_bundle(base: str, body: bytes, attempt: Attempt) -> None:
    try:
        with httpx.Client(timeout=60) as c:
            attempt.sent.set()
            r = c.post(base, content=body, headers=FHIR)
            attempt.status = r.status_code
    except httpx.TransportError as exc:  # the server died under us
        attempt.error = repr(exc)
    finally:
        attempt.sent.set()


def test_transaction_survives_sigkill_all_or_nothing(server: Server) -> None:
    with httpx.Client(base_url=server.base, timeout=60) as c:
        # an earlier committed write that every kill must leave alone
        r = c.post("Patient", json={"resourceType": "Patient", "name": [{"family": "Earlier"}]},
                   headers=FHIR)
        assert r.status_code == 201, r.text
        earlier = r.json()
        # how long does a whole transaction take? (also a committed baseline)
        body = httpx.Request("POST", "x", json=chained_bundle("baseline")).content
        started = time.monotonic()
        r = c.post("", content=body, headers=FHIR)
        took = time.monotonic() - started
        assert r.status_code == 200, r.text[:2000]
        assert len(r.json()["entry"]) == SIZE

    # kill early (upload / parsing), in the middle, and late in processing
    attempts = [Attempt(f"round{k}", took * f) for k, f in enumerate((0.1, 0.45, 0.8))]
    for attempt in attempts:
        body = httpx.Request("POST", "x", json=chained_bundle(attempt.tag)).content
        t = threading.Thread(target=post_bundle, args=(server.base, body, attempt))
        t.start()
        attempt.sent.wait(10)
        time.sleep(attempt.delay)
        server.kill()
        t.join(30)
        assert not t.is_alive()
        assert integrity(server.db) == "ok"
        server.start()

    found = patients_by_tag(server.base)
    check_chain("baseline", found.get("baseline", {}))
    outcomes = []
    for attempt in attempts:
        got = found.get(attempt.tag, {})
        assert len(got) in (0, SIZE), f"{attempt.tag}: {len(got)} of {SIZE} committed"
        if attempt.status is not None:  # the client saw the answer: it must have committed
            assert attempt.status == 200 and len(got) == SIZE
        if got:
            check_chain(attempt.tag, got)
        outcomes.append((attempt.delay, attempt.status, len(got)))

    # at least one kill landed while the transaction was being processed
    assert any(status is None and n == 0 for _, status, n in outcomes), (took, outcomes)

    with httpx.Client(base_url=server.base, timeout=30) as c:
        again = c.get(f"Patient/{earlier['id']}")
        assert again.status_code == 200
        assert again.json() == earlier
    server.stop()
    assert integrity(server.db) == "ok"


def test_acknowledged_writes_survive_sigkill(server: Server) -> None:
    """Every create or update the server answered survives a kill that lands while
    other writes are in flight."""
    acked: dict[str, dict[str, Any]] = {}  # id -> the representation the server returned
    in_flight: set[str] = set()  # ids with an update sent but not answered
    lock = threading.Lock()
    stop = threading.Event()

    def writer(k: int) -> None:
        n = 0
        with httpx.Client(base_url=server.base, timeout=10) as c:
            while not stop.is_set():
                n += 1
                body = {"resourceType": "Patient", "identifier": [
                    {"system": TAG_SYSTEM, "value": f"ack{k}-{n}"}]}  # fmt: skip
                try:
                    r = c.post("Patient", json=body, headers=FHIR)
                    if r.status_code != 201:
                        continue
                    created = r.json()
                    with lock:
                        acked[created["id"]] = created
                        in_flight.add(created["id"])
                    created = {**created, "gender": "other"}  # and an update of it
                    r = c.put(f"Patient/{created['id']}", json=created, headers=FHIR)
                    if r.status_code == 200:
                        with lock:
                            acked[created["id"]] = r.json()
                            in_flight.discard(created["id"])
                except httpx.TransportError:
                    return

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    server.kill()
    stop.set()
    for t in threads:
        t.join(15)
    assert len(acked) > 20, "too few writes were acknowledged before the kill"
    assert integrity(server.db) == "ok"
    server.start()
    with httpx.Client(base_url=server.base, timeout=30) as c:
        for id, representation in acked.items():
            r = c.get(f"Patient/{id}")
            assert r.status_code == 200, (id, r.status_code)
            now = r.json()
            if now != representation:  # only an unanswered update may have landed on top
                assert id in in_flight, (representation, now)
                assert now["meta"]["versionId"] == "2" and now["gender"] == "other", now
