"""The embedded SQLite store (the default; nothing to install).

Design:
- ``resource`` holds the current version of each resource (one row per type/id, with a
  stable integer key ``rid`` that search index rows refer to); ``history`` holds every
  version, ordered by a global sequence that history paging uses as its cursor.
- WAL journal, ``synchronous=NORMAL``: a committed unit of work survives a process kill;
  an interrupted one leaves nothing behind (SQLite's atomic commit).
- One writer connection used only inside units of work, which run one at a time under
  an asyncio lock and ``BEGIN IMMEDIATE`` (which also serialises writers in other
  processes); one reader connection for everything else, which sees committed data only.
- SQLite calls are quick and run on the event loop thread; they never wait on the
  network. Large imports should use the ``load`` command rather than the API.
- WAL checkpoints (copying committed pages from the WAL into the database file, with
  an fsync) run on a background thread with its own connection, woken after commits,
  rather than inside the writer's COMMIT: they took about a fifth of the SQLite time
  of a 100-entry transaction on the event loop thread, and sqlite3 releases the GIL
  while it checkpoints. The writer still checkpoints by itself if the WAL grows past
  :data:`WAL_SAFETY_PAGES` (the background thread fell behind or stopped).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import tempfile
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fhir_server import jsonio
from fhir_server.search.query import SearchQuery, SearchResult
from fhir_server.storage.port import (
    HistoryPage,
    HistoryQuery,
    Method,
    NewVersion,
    StoredVersion,
    UnitOfWork,
    VersionConflict,
)
from fhir_server.storage.sqlite import search_index

SCHEMA = """
CREATE TABLE IF NOT EXISTS resource (
    rid INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    last_updated TEXT NOT NULL,
    method TEXT NOT NULL,
    content BLOB,
    UNIQUE (type, id)
);
CREATE INDEX IF NOT EXISTS resource_type_updated ON resource (type, last_updated);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    rid INTEGER NOT NULL,
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    last_updated TEXT NOT NULL,
    method TEXT NOT NULL,
    content BLOB,
    UNIQUE (rid, version)
);
CREATE INDEX IF NOT EXISTS history_type_seq ON history (type, seq);
CREATE INDEX IF NOT EXISTS history_updated ON history (last_updated);
"""

_VERSION_COLS = "type, id, version, last_updated, method, content"

WAL_SAFETY_PAGES = 20000  # the writer's own autocheckpoint (about 80 MB of WAL)
CHECKPOINT_BATCH_SECONDS = 0.5  # commits within this window share one checkpoint

log = logging.getLogger(__name__)


class _Checkpointer:
    """Runs ``PRAGMA wal_checkpoint(PASSIVE)`` on its own thread after commits, at most
    once per :data:`CHECKPOINT_BATCH_SECONDS` (pages written again meanwhile are copied
    once)."""

    def __init__(self, path: str) -> None:
        self._conn = connect(path)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def committed(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if self._stop.wait(CHECKPOINT_BATCH_SECONDS):
                break
            self._wake.clear()
            try:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:  # the writer's safety autocheckpoint still works
                log.warning("background WAL checkpoint failed: %s", exc)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join()
        self._conn.close()


def _row_to_version(row: Sequence[Any]) -> StoredVersion:
    method: Method = row[4]
    return StoredVersion(row[0], row[1], row[2], row[3], method, row[5])


def connect(path: str) -> sqlite3.Connection:
    if path != ":memory:" and not path.startswith("file:"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, uri=True)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA foreign_keys=OFF")
    conn.execute("PRAGMA cache_size=-65536")
    conn.execute("PRAGMA mmap_size=268435456")
    conn.execute("PRAGMA temp_store=MEMORY")
    return conn


def _columns(v: NewVersion) -> tuple[str, str, int, str, str, bytes | None]:
    """A version's values for the ``type, id, version, last_updated, method, content``
    columns of ``resource`` and ``history``."""
    return (v.resource_type, v.id, v.version, v.last_updated, v.method, v.content)


def _current_row(conn: sqlite3.Connection, resource_type: str, id: str) -> tuple[int, int] | None:
    """(rid, version) of a stored resource, deleted or not."""
    row = conn.execute(
        "SELECT rid, version FROM resource WHERE type = ? AND id = ?", (resource_type, id)
    ).fetchone()
    return None if row is None else (int(row[0]), int(row[1]))


def _read_current(conn: sqlite3.Connection, resource_type: str, id: str) -> StoredVersion | None:
    row = conn.execute(
        f"SELECT {_VERSION_COLS} FROM resource WHERE type = ? AND id = ?", (resource_type, id)
    ).fetchone()
    return _row_to_version(row) if row else None


class _SqliteUnitOfWork:
    def __init__(self, conn: sqlite3.Connection, stats: search_index.DateStats) -> None:
        self._conn = conn
        self._stats = stats

    async def read(self, resource_type: str, id: str) -> StoredVersion | None:
        return _read_current(self._conn, resource_type, id)

    async def put(self, version: NewVersion) -> StoredVersion:
        conn = self._conn
        row: tuple[int, int] | None = None
        if version.version == 1:
            # a first version: the resource must not exist, which the UNIQUE (type, id)
            # constraint checks while inserting (no lookup first: most writes create)
            try:
                rid = self._insert_new(version)
            except sqlite3.IntegrityError:
                found = _current_row(conn, version.resource_type, version.id)
                current = found[1] if found else None
                raise VersionConflict(
                    version.resource_type, version.id, version.version - 1, current
                ) from None
        else:
            row = _current_row(conn, version.resource_type, version.id)
            if row is None or version.version != row[1] + 1:
                raise VersionConflict(
                    version.resource_type, version.id, version.version - 1, row and row[1]
                )
            rid = row[0]
            conn.execute(
                "UPDATE resource SET version = ?, last_updated = ?, method = ?, content = ?"
                " WHERE rid = ?",
                (version.version, version.last_updated, version.method, version.content, rid),
            )
        conn.execute(
            "INSERT INTO history (rid, type, id, version, last_updated, method, content)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (rid, *_columns(version)),
        )
        if version.resource_type == "SearchParameter" and version.resource is not None:
            # a custom search parameter becomes searchable, existing data indexed for it
            search_index.register_search_parameter(conn, version.resource)
        if version.resource is None:
            search_index.delete(conn, rid)
        else:
            search_index.write(
                conn,
                rid,
                version.resource_type,
                version.resource,
                fresh=row is None,
                stats=self._stats,
            )
        return StoredVersion(
            version.resource_type,
            version.id,
            version.version,
            version.last_updated,
            version.method,
            version.content,
        )

    def _insert_new(self, version: NewVersion) -> int:
        rid = self._conn.execute(
            "INSERT INTO resource (type, id, version, last_updated, method, content)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            _columns(version),
        ).lastrowid
        assert rid is not None
        return rid

    async def search(
        self,
        resource_type: str,
        params: Sequence[tuple[str, str]],
        *,
        base_url: str | None = None,
    ) -> list[str]:
        return search_index.search_ids(self._conn, resource_type, params, base_url=base_url)


class SqliteStore:
    """Store on one SQLite database file (or ``:memory:`` for tests)."""

    def __init__(self, path: str) -> None:
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        if path == ":memory:":
            # A throwaway database file rather than a shared-cache in-memory database:
            # shared cache locks whole tables, so a reader would fail (not wait) while a
            # unit of work is open, instead of reading the last committed state as WAL
            # readers do.
            self._tmpdir = tempfile.TemporaryDirectory(prefix="fhir-store-")
            path = str(Path(self._tmpdir.name) / "store.sqlite")
        self.path = path
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()
        self._checkpointer: _Checkpointer | None = None
        self._date_stats = search_index.DateStats()

    async def open(self) -> None:
        self._writer = connect(self.path)
        self._writer.executescript(SCHEMA)
        # custom SearchParameters stored earlier are known again (their rows exist), and
        # before a rebuild of the index of an older layout, which indexes them too
        for (content,) in self._writer.execute(
            "SELECT content FROM resource WHERE type = 'SearchParameter' AND content IS NOT NULL"
        ).fetchall():
            search_index.registry().add(jsonio.loads(content))
        search_index.create_schema(self._writer)
        self._writer.execute(f"PRAGMA wal_autocheckpoint = {WAL_SAFETY_PAGES}")
        self._checkpointer = _Checkpointer(self.path)
        self._reader = connect(self.path)

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        for conn in (self._reader, self._writer):
            if conn is not None:
                conn.close()
        self._reader = self._writer = None
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    @property
    def reader(self) -> sqlite3.Connection:
        if self._reader is None:
            raise RuntimeError("store is not open")
        return self._reader

    @property
    def writer(self) -> sqlite3.Connection:
        if self._writer is None:
            raise RuntimeError("store is not open")
        return self._writer

    async def read(self, resource_type: str, id: str) -> StoredVersion | None:
        return _read_current(self.reader, resource_type, id)

    async def vread(self, resource_type: str, id: str, version: int) -> StoredVersion | None:
        row = self.reader.execute(
            f"SELECT {_VERSION_COLS} FROM history WHERE rid ="
            " (SELECT rid FROM resource WHERE type = ? AND id = ?) AND version = ?",
            (resource_type, id, version),
        ).fetchone()
        return _row_to_version(row) if row else None

    async def history(self, query: HistoryQuery) -> HistoryPage:
        where: list[str] = []
        args: list[Any] = []
        if query.id is not None:
            row = self.reader.execute(
                "SELECT rid FROM resource WHERE type = ? AND id = ?",
                (query.resource_type, query.id),
            ).fetchone()
            if row is None:
                return HistoryPage((), None)
            where.append("rid = ?")
            args.append(row[0])
        elif query.resource_type is not None:
            where.append("type = ?")
            args.append(query.resource_type)
        if query.since is not None:
            where.append("last_updated >= ?")
            args.append(query.since)
        if query.at is not None:
            # the version current at `at`: written at or before it, not superseded by then
            where.append("last_updated <= ?")
            args.append(query.at)
            where.append(
                "NOT EXISTS (SELECT 1 FROM history h2 WHERE h2.rid = history.rid"
                " AND h2.version > history.version AND h2.last_updated <= ?)"
            )
            args.append(query.at)
        if query.before_seq is not None:
            where.append("seq < ?")
            args.append(query.before_seq)
        sql = f"SELECT seq, {_VERSION_COLS} FROM history"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(query.count + 1)
        rows = self.reader.execute(sql, args).fetchall()
        more = len(rows) > query.count
        rows = rows[: query.count]
        versions = [_row_to_version(r[1:]) for r in rows]
        return HistoryPage(versions, rows[-1][0] if more and rows else None)

    async def search(self, query: SearchQuery) -> SearchResult:
        """Run a parsed search (see :mod:`fhir_server.search`) on committed data."""
        return search_index.search(self.reader, query)

    async def count(self, resource_type: str | None = None) -> int:
        if resource_type is None:
            row = self.reader.execute(
                "SELECT count(*) FROM resource WHERE content IS NOT NULL"
            ).fetchone()
        else:
            row = self.reader.execute(
                "SELECT count(*) FROM resource WHERE type = ? AND content IS NOT NULL",
                (resource_type,),
            ).fetchone()
        return int(row[0])

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[UnitOfWork]:
        async with self._lock:
            conn = self.writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteUnitOfWork(conn, self._date_stats)
            except BaseException:
                self._date_stats.rollback()
                conn.execute("ROLLBACK")
                raise
            else:
                try:
                    conn.execute("COMMIT")
                except BaseException:
                    self._date_stats.rollback()
                    raise
                self._date_stats.commit()
                if self._checkpointer is not None:
                    self._checkpointer.committed()
