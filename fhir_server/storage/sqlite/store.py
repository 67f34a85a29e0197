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
  network. Large imports should use the ``load`` command rather than the API. The
  exception is the end of a unit of work: its creates (kept until then, see
  :class:`_SqliteUnitOfWork`) and its COMMIT run on a commit thread (from
  :data:`THREAD_MIN_CREATES` creates on) as a few set-based statements, each one call
  into SQLite without the GIL, while the event loop already prepares the next unit.
  About a third of a 100-entry transaction's CPU moved to the second core that way
  (over HTTP: 1,386 resources/s at best before, 1,768-2,125 in the quick spells of
  the machine after; see the README's Performance section).
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
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson

from fhir_server import jsonio
from fhir_server.search.query import SearchQuery, SearchResult
from fhir_server.storage.port import (
    HistoryPage,
    HistoryQuery,
    Method,
    NewVersion,
    StoredVersion,
    StoreUnavailable,
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

# The commit thread needs the GIL back after each statement while the event loop keeps
# it busy; CPython makes a running thread hand it over after the switch interval (5 ms
# by default), which made a commit of ~12 statements slower than preparing the next
# unit of work. 1 ms: 100-entry transactions ran at ~1,950 resources/s instead of
# ~1,700 (in-process, 4 at a time).
COMMIT_SWITCH_INTERVAL = 0.001
# Units with fewer creates commit on the event loop thread: for one create, the
# commit thread cost more CPU in all than it took off the loop (1,430-1,710 us per
# POST in all instead of 1,170; 8 at a time in-process), as every statement of a
# unit hands the GIL over and back.
THREAD_MIN_CREATES = 8
# How long a connection waits for another one's lock (another process's unit of work,
# usually the audit writer's) before the request fails with 503
BUSY_TIMEOUT_MS = 10_000
# The most content a unit of work keeps in memory before it writes its creates (in its
# transaction, begun then): a large import or Binary resources stay bounded.
DEFER_BYTES = 32 * 1024 * 1024
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
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
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


# First versions written as a batch (see _Deferred): ?1 is the rid of the first one.
_BATCH_VERSIONS = (
    " SELECT ?1 + (value->>0), value->>1, value->>2, value->>3, value->>4, value->>5,"
    " CAST(value->>6 AS BLOB) FROM json_each(?2)"
)
_BATCH_RESOURCE = (
    "INSERT INTO resource (rid, type, id, version, last_updated, method, content)" + _BATCH_VERSIONS
)
_BATCH_HISTORY = (
    "INSERT INTO history (rid, type, id, version, last_updated, method, content)" + _BATCH_VERSIONS
)


class _Deferred:
    """The first versions (creates) a unit of work has written but not yet sent to the
    database, with their index rows: written as a few set-based statements when the
    unit needs the database or commits. Their rids are assigned then, in order, after
    the largest one there is (the unit holds the write lock)."""

    __slots__ = ("batch", "keys", "size", "versions")

    def __init__(self) -> None:
        self.versions: list[tuple[int, str, str, int, str, str, str]] = []
        self.keys: set[tuple[str, str]] = set()
        self.batch = search_index.Batch()
        self.size = 0  # bytes of content kept

    def add(self, v: NewVersion, indexed: search_index.Indexed) -> None:
        n = len(self.versions)
        assert v.content is not None
        self.versions.append(
            (n, v.resource_type, v.id, v.version, v.last_updated, v.method, v.content.decode())
        )
        self.keys.add((v.resource_type, v.id))
        self.batch.add(n, indexed)
        self.size += len(v.content)

    def statements(self) -> list[tuple[str, tuple[Any, ...]]]:
        """(SQL, parameters after the first rid); the first one inserts the resources."""
        versions = (orjson.dumps(self.versions),)
        return [
            (_BATCH_RESOURCE, versions),
            (_BATCH_HISTORY, versions),
            *self.batch.statements(),
        ]


def _unavailable(exc: sqlite3.OperationalError) -> StoreUnavailable | None:
    """The transient failures of SQLite as :class:`StoreUnavailable` (None for the
    others, which are bugs or damage)."""
    name = getattr(exc, "sqlite_errorname", "")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return StoreUnavailable(
            f"the database is busy (its write lock was held for more than"
            f" {BUSY_TIMEOUT_MS / 1000:g} s): {exc}",
            "lock-error",
        )
    if name == "SQLITE_FULL":
        return StoreUnavailable(f"the database has no space left: {exc}", "no-store")
    return None


def _begin(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        raise _unavailable(exc) or exc from None


def _write_deferred(
    conn: sqlite3.Connection,
    statements: list[tuple[str, tuple[Any, ...]]],
    keys: set[tuple[str, str]],
) -> None:
    """Run :meth:`_Deferred.statements` inside the writer's transaction. A resource that
    exists already fails the first statement: :class:`VersionConflict` for it."""
    (first,) = conn.execute("SELECT coalesce(max(rid), 0) + 1 FROM resource").fetchone()
    try:
        conn.execute(statements[0][0], (first, *statements[0][1]))
    except sqlite3.IntegrityError:
        for resource_type, id in sorted(keys):
            found = _current_row(conn, resource_type, id)
            if found is not None:
                raise VersionConflict(resource_type, id, 0, found[1]) from None
        raise
    for sql, params in statements[1:]:
        conn.execute(sql, (first, *params))


def _commit(
    conn: sqlite3.Connection,
    begun: bool,
    statements: list[tuple[str, tuple[Any, ...]]],
    keys: set[tuple[str, str]],
) -> None:
    """A unit of work's end: its kept creates, then COMMIT (on the commit thread, or on
    the event loop's for a small unit, see :data:`THREAD_MIN_CREATES`)."""
    try:
        if not begun:
            _begin(conn)
        if statements:
            _write_deferred(conn, statements, keys)
        conn.execute("COMMIT")
    except BaseException as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.OperationalError):
            raise _unavailable(exc) or exc from None
        raise


class _SqliteUnitOfWork:
    """A unit of work on the writer connection.

    It begins its database transaction (``BEGIN IMMEDIATE``) only when it first needs
    the database: a read, a search, or a write other than a create. Creates are
    validated and indexed at once but kept in :class:`_Deferred` until then, or until
    the commit, which runs on the store's commit thread: a unit that only creates
    (a transaction Bundle of POSTs, a batch of AuditEvents) leaves the event loop free
    to prepare the next unit while SQLite writes this one. A create of an id that
    exists is refused by :meth:`put` once the unit has begun, and by the commit (the
    whole unit then fails with :class:`VersionConflict`) before.
    """

    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        self.conn = store.writer
        self.begun = False
        self.deferred = _Deferred()
        self.date_figures: dict[int, tuple[int, int]] = {}  # see DateStats

    async def _connection(self) -> sqlite3.Connection:
        """The writer connection inside this unit's transaction, its deferred creates
        written."""
        conn = self.conn
        if not self.begun:
            await self._store.settled()
            _begin(conn)
            self.begun = True
        if self.deferred.versions:
            _write_deferred(conn, self.deferred.statements(), self.deferred.keys)
            self.deferred = _Deferred()
        return conn

    def _index(self, v: NewVersion) -> search_index.Indexed:
        """The version's index rows, without the date figures known to be stored."""
        assert v.resource is not None
        indexed = search_index.index(v.resource_type, v.resource)
        stats, pending = self._store.date_stats, self.date_figures
        indexed.figures = [f for f in indexed.figures if stats.raises(*f, pending)]
        return indexed

    async def read(self, resource_type: str, id: str) -> StoredVersion | None:
        return _read_current(await self._connection(), resource_type, id)

    async def put(self, version: NewVersion) -> StoredVersion:
        if (
            version.version == 1
            and version.resource is not None
            and version.resource_type != "SearchParameter"
        ):
            await self._defer(version)
        else:
            await self._write(version)
        return version.stored()

    async def _defer(self, version: NewVersion) -> None:
        key = (version.resource_type, version.id)
        found = None
        if key in self.deferred.keys:
            found = 1
        elif self.begun:  # the connection is this unit's: the check is exact
            row = _current_row(self.conn, *key)
            found = row and row[1]
        if found:
            raise VersionConflict(version.resource_type, version.id, 0, found)
        self.deferred.add(version, self._index(version))
        if self.deferred.size > DEFER_BYTES:
            await self._connection()  # begins the unit's transaction and writes them

    async def _write(self, version: NewVersion) -> None:
        conn = await self._connection()
        row: tuple[int, int] | None = None
        if version.version == 1:
            try:
                rid = _insert_new(conn, version)
            except sqlite3.IntegrityError:
                found = _current_row(conn, version.resource_type, version.id)
                raise VersionConflict(
                    version.resource_type, version.id, 0, found[1] if found else None
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
        if row is not None:
            search_index.delete(conn, rid)
        if version.resource is not None:
            search_index.write_indexed(conn, rid, self._index(version))

    async def search(
        self,
        resource_type: str,
        params: Sequence[tuple[str, str]],
        *,
        base_url: str | None = None,
    ) -> list[str]:
        conn = await self._connection()
        return search_index.search_ids(conn, resource_type, params, base_url=base_url)


def _insert_new(conn: sqlite3.Connection, version: NewVersion) -> int:
    rid = conn.execute(
        "INSERT INTO resource (type, id, version, last_updated, method, content)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        _columns(version),
    ).lastrowid
    assert rid is not None
    return rid


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
        self.date_stats = search_index.DateStats()
        # commits run here, one at a time, in the order units of work end
        self._committer: ThreadPoolExecutor | None = None
        self._last_commit: asyncio.Future[None] | None = None

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
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-commit")
        if sys.getswitchinterval() > COMMIT_SWITCH_INTERVAL:
            sys.setswitchinterval(COMMIT_SWITCH_INTERVAL)

    async def close(self) -> None:
        await self.settled()
        if self._committer is not None:
            self._committer.shutdown()
            self._committer = None
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

    async def settled(self) -> None:
        """Wait until every unit of work handed to the commit thread has ended (the
        writer connection is free)."""
        last = self._last_commit
        if last is not None and not last.done():
            await asyncio.wait([last])

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[UnitOfWork]:
        async with self._lock:
            uow = _SqliteUnitOfWork(self)
            try:
                yield uow
            except BaseException as exc:
                if uow.begun:
                    uow.conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError):
                    raise _unavailable(exc) or exc from None
                raise
            if not uow.begun and not uow.deferred.versions:
                return  # it neither read nor wrote anything
            assert self._committer is not None
            deferred = uow.deferred
            statements = deferred.statements() if deferred.versions else []
            if len(deferred.versions) < THREAD_MIN_CREATES:
                # a small unit: handing it to the commit thread costs more than it saves
                if not uow.begun:
                    await self.settled()
                _commit(uow.conn, uow.begun, statements, deferred.keys)
                commit = None
            else:
                commit = asyncio.get_running_loop().run_in_executor(
                    self._committer, _commit, uow.conn, uow.begun, statements, deferred.keys
                )
                self._last_commit = commit
        # the lock is free: the next unit runs (without the database until this commit
        # has ended) while the commit thread writes this one
        if commit is not None:
            await asyncio.shield(commit)
        self.date_stats.commit(uow.date_figures)
        if self._checkpointer is not None:
            self._checkpointer.committed()
