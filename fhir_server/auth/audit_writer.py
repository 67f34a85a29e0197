"""An audit writer process: stores the queued AuditEvents on another CPU core.

Indexing one AuditEvent (a dozen search parameters, the full-text words, about twenty
index rows) costs about as much CPU as the read it records, and a Python process
serves requests on one core. With ``Settings.audit_writer_process`` on (``fhir-server
serve`` turns it on for a database other processes can open: a SQLite file or
MongoDB), the :class:`~fhir_server.auth.audit.AuditTrail` hands each batch of queued
interactions to this child process as compact records (the caller, the request line,
the outcome: :func:`~fhir_server.auth.audit.draft_record`), and the child builds the
AuditEvents and stores them through its own store connection: the server process
pays for a list of values and one JSON encoding per batch, the child for the rest.

The child is ``python -m fhir_server.auth.audit_writer DATABASE BASE_URL FACTORY`` (a fresh
interpreter in its own session). Protocol, over its stdin/stdout, each message a
4-byte big-endian length and the bytes (the server side sends one batch at a time
and waits for its answer, in a worker thread so that the event loop keeps serving):

- server -> child: a JSON array of records, or an empty message to stop;
- child -> server: ``ok <n>`` once the AuditEvents of the ``n`` records are
  committed, or ``error <n> <reason>`` when only the first ``n`` were (the child
  keeps running).

The child commits in chunks of :data:`CHUNK` events, so that a write of the server
process never waits long for the database's write lock (SQLite: one writer at a
time across processes). The lock is held only while a chunk's rows are inserted
(the SQLite store builds them before it begins), about 60 ms for 250 events here;
larger chunks make each event cheaper (a commit rewrites the same hot index pages
whatever it holds: 76 us of COMMIT per event in chunks of 50, 30 us in chunks of
500).

When the child cannot be reached (it died, or never started) :meth:`write` raises
:class:`WriterGone` and the trail writes inline from then on (logged): records are
delayed, never dropped for that reason. Writes that change data keep their
AuditEvent and Provenance in their own unit of work, in the server process: this
path only carries the records of reads, searches, operations and failures, which
the trail already queues (see :mod:`fhir_server.auth.audit`).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import IO, Any, Final

import orjson

from fhir_server.storage.port import Store

log = logging.getLogger("fhir_server.audit")

CHUNK: Final = 250  # AuditEvents per unit of work in the child
STOP: Final = b""

StoreFactory = Callable[[str], Store]


class WriterGone(Exception):
    """The writer process cannot take more work; ``written`` events of the batch were
    stored before it went."""

    def __init__(self, reason: str, written: int = 0) -> None:
        super().__init__(reason)
        self.written = written


class AuditWriterProcess:
    """The server side of the writer process (see the module doc)."""

    def __init__(
        self, database: str, base_url: str, factory: str = "fhir_server.app:make_store"
    ) -> None:
        self.database = database
        self.base_url = base_url  # the server's, named in its AuditEvents
        self.factory = factory  # "module:function" making the child's store from the URL
        self._process: subprocess.Popen[bytes] | None = None
        self._io = threading.Lock()  # one batch in flight

    def start(self) -> None:
        # A fresh interpreter (not a fork of the server, with its threads and sockets)
        self._process = subprocess.Popen(
            [sys.executable, "-m", __name__, self.database, self.base_url, self.factory],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,  # the server's Ctrl-C is for the server; it stops us
        )

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def write(self, records: Sequence[Any]) -> int:
        """Store the AuditEvents of ``records`` (see
        :func:`fhir_server.auth.audit.draft_record`; blocking: call it from a worker
        thread); the number of records done. :class:`WriterGone` when the child is gone
        or failed part-way."""
        process = self._process
        if process is None or process.stdin is None or process.stdout is None:
            raise WriterGone("the audit writer process is not running")
        with self._io:
            try:
                _send(process.stdin, orjson.dumps(list(records)))
                reply = _receive(process.stdout)
            except (OSError, EOFError) as exc:
                raise WriterGone(f"the audit writer process is gone ({exc!r})") from exc
        status, _, rest = reply.decode("utf-8", "replace").partition(" ")
        count, _, reason = rest.partition(" ")
        if status == "ok":
            return int(count)
        raise WriterGone(reason or "the audit writer process failed", int(count or 0))

    def close(self, timeout: float = 30.0) -> None:
        """Ask the child to stop (after what it has) and wait for it."""
        process, self._process = self._process, None
        if process is None:
            return
        try:
            with self._io:
                if process.stdin is not None:
                    _send(process.stdin, STOP)
                    process.stdin.close()
        except OSError:
            pass
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("the audit writer process did not stop; terminating it")
            process.terminate()
            process.wait(5)
        if process.stdout is not None:
            process.stdout.close()


def _send(out: IO[bytes], message: bytes) -> None:
    out.write(len(message).to_bytes(4, "big") + message)
    out.flush()


def _receive(source: IO[bytes]) -> bytes:
    head = source.read(4)
    if len(head) < 4:
        raise EOFError("the other side closed the pipe")
    size = int.from_bytes(head, "big")
    body = source.read(size)
    if len(body) < size:
        raise EOFError("the other side closed the pipe")
    return body


# --------------------------------------------------------------------------- the child


def main(argv: Sequence[str]) -> int:
    """The writer process: ``python -m fhir_server.auth.audit_writer DATABASE BASE_URL
    FACTORY``; stores each batch read from stdin, answers on stdout, until told to stop."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    database, base_url, factory = argv
    module, _, name = factory.partition(":")
    make: StoreFactory = getattr(importlib.import_module(module), name)
    asyncio.run(_serve(make(database), base_url, sys.stdin.buffer, sys.stdout.buffer))
    return 0


def events(records: Sequence[Any], base_url: str) -> list[dict[str, Any]]:
    """The AuditEvents of records as the child receives them (a record that cannot be
    read is logged and skipped)."""
    from fhir_server.auth.audit import build_events, draft_of_record

    drafts = []
    for record in records:
        try:
            drafts.append(draft_of_record(record))
        except Exception:  # a bug: skip the record rather than block the queue
            log.exception("audit writer: unreadable record %r", record)
    return build_events(drafts, base_url)


async def _serve(store: Store, base_url: str, source: IO[bytes], out: IO[bytes]) -> None:
    from fhir_server.auth.audit import store_events

    await store.open()
    try:
        while True:
            try:
                message = _receive(source)
            except (EOFError, OSError):
                return  # the server process is gone
            if message == STOP:
                return
            records = orjson.loads(message)
            written = 0
            try:
                for start in range(0, len(records), CHUNK):
                    chunk = records[start : start + CHUNK]
                    await store_events(store, events(chunk, base_url))
                    written += len(chunk)
            except Exception as exc:  # reported to the server, which takes over
                log.exception("audit writer: storing a batch failed")
                _send(out, f"error {written} {exc!r}".encode())
                continue
            _send(out, f"ok {written}".encode())
    finally:
        await store.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
