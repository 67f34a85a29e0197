"""``fhir-server serve`` stopped with SIGTERM or SIGINT (a service manager, Ctrl-C) runs
the app's shutdown: the audit records still queued are written, the audit writer
process stops and the server exits -- with either HTTP server."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def _audit_events(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        row = conn.execute("SELECT count(*) FROM resource WHERE type = 'AuditEvent'").fetchone()
        return int(row[0])
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("server", "sig"),
    [("granian", signal.SIGTERM), ("granian", signal.SIGINT), ("uvicorn", signal.SIGTERM)],
)
def test_a_stop_signal_writes_the_queued_audit_records(
    tmp_path: Path, server: str, sig: signal.Signals
) -> None:
    db = tmp_path / "fhir.sqlite"
    port = free_port()
    cmd = [
        sys.executable, "-m", "fhir_server.cli", "serve", "--server", server,
        "--database", f"sqlite:///{db}", "--port", str(port),
        "--clients", str(tmp_path / "clients.json"), "--keys", str(tmp_path / "keys.json"),
    ]  # fmt: skip
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}/fhir"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            try:
                if httpx.get(f"{base}/metadata", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        before = _audit_events(db)
        for i in range(5):  # refused without a token: each one audited, queued
            assert httpx.get(f"{base}/Patient/p{i}", timeout=5).status_code == 401
        proc.send_signal(sig)  # at once: the queue has not been written yet
        # uvicorn re-raises the signal once it has shut down (exit status -sig)
        assert proc.wait(30) in (0, -sig)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
    assert _audit_events(db) == before + 5
    writers = subprocess.run(
        ["pgrep", "-f", f"fhir_server.auth.audit_writer sqlite:///{db}"],
        capture_output=True,
        check=False,
    )
    assert writers.stdout.strip() == b"", "the audit writer process outlived the server"
