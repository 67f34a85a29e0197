"""The MongoDB store (PyMongo's asyncio API; needs a replica set or a sharded cluster).

Collections (in the database named by the URL's path, ``fhir`` by default):

- ``resources``: one document per resource, its current version, ``_id`` = ``Type/id``:
  ``t`` type, ``i`` id, ``v`` version, ``lu`` lastUpdated, ``m`` method, ``c`` the JSON
  bytes (None for a deletion), ``live`` (not deleted), ``seq`` (order of creation, the
  default sort and paging key) and the search index arrays of
  :mod:`fhir_server.storage.mongodb.index`. ``read`` is a lookup by ``_id``.
- ``history``: every version, ``_id`` = a global sequence number (history order and
  paging cursor), with a unique index on ``(t, i, v)``: ``vread`` is one lookup on it and
  no two writers can both create the same version.
- ``counters``: the node numbers of the processes (see :meth:`MongoStore.next_seq`).

Custom search parameters (as in the SQLite store): storing a SearchParameter adds it to
the registry in use and, in the same unit of work, rewrites that parameter's index
entries of the current resources of its base types; :meth:`MongoStore.open` adds the
stored SearchParameters to the registry again.

Units of work are MongoDB multi-document transactions (snapshot read concern, majority
write concern, on the primary), hence the replica set requirement, checked at
:meth:`MongoStore.open`. Writes outside transactions use retryable writes.

Concurrency: within one process units of work run one at a time under an asyncio lock
(as in the SQLite store), so read-check-write units never race each other and never
abort on a write conflict. Across processes, version succession is enforced by the
database, not by the read: a new resource is an insert (unique ``_id``), an update is
conditional on the version read (``{_id, v: expected}``), and the history insert hits
the unique ``(t, i, v)`` index; any of these failing, or the server aborting the
transaction for a write conflict, raises :class:`VersionConflict` (the unit's body is
the caller's code and is not re-run).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fhir_server import jsonio
from fhir_server.search import parser
from fhir_server.search.query import ESTIMATE_CAP, Hit, SearchQuery, SearchResult
from fhir_server.storage.mongodb import query as mq
from fhir_server.storage.mongodb.index import (
    INDEX_FIELDS,
    INDEXES,
    Document,
    empty_index_fields,
    index_fields,
    param_types,
    registry,
    stale_keys,
    with_param_reindexed,
)
from fhir_server.storage.port import (
    HistoryPage,
    HistoryQuery,
    Method,
    NewVersion,
    StoredVersion,
    UnitOfWork,
    VersionConflict,
)

try:  # the ``mongodb`` extra
    from pymongo import ASCENDING, AsyncMongoClient, IndexModel, ReturnDocument
    from pymongo.asynchronous.client_session import AsyncClientSession
    from pymongo.asynchronous.collection import AsyncCollection
    from pymongo.asynchronous.database import AsyncDatabase
    from pymongo.errors import (
        ConnectionFailure,
        DuplicateKeyError,
        OperationFailure,
        PyMongoError,
    )
    from pymongo.read_concern import ReadConcern
    from pymongo.read_preferences import ReadPreference
    from pymongo.write_concern import WriteConcern
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "the MongoDB store needs PyMongo: pip install 'fhir-server[mongodb]'"
    ) from exc

log = logging.getLogger(__name__)

DEFAULT_DATABASE = "fhir"
_VERSION_FIELDS: Document = {"_id": 0, "t": 1, "i": 1, "v": 1, "lu": 1, "m": 1, "c": 1}
WRITE_CONFLICT = 112
MAX_INCLUDES = 1000
_NODE_BITS = 12
_SEQ_EPOCH_US = 1_577_836_800_000_000  # 2020-01-01T00:00:00Z


class StandaloneServerError(RuntimeError):
    """The server cannot run multi-document transactions (a standalone mongod)."""


def _version(doc: Document) -> StoredVersion:
    method: Method = doc["m"]
    content = doc.get("c")
    return StoredVersion(
        doc["t"], doc["i"], doc["v"], doc["lu"], method, bytes(content) if content else None
    )


def _is_conflict(err: PyMongoError) -> bool:
    if isinstance(err, DuplicateKeyError):
        return True
    if isinstance(err, OperationFailure):
        if err.code == WRITE_CONFLICT or err.has_error_label("TransientTransactionError"):
            return True
        return "conflict" in str(err).lower()
    return False


class _MongoUnitOfWork:
    def __init__(self, store: MongoStore, session: AsyncClientSession) -> None:
        self._store = store
        self._session = session
        self.written: list[NewVersion] = []

    async def read(self, resource_type: str, id: str) -> StoredVersion | None:
        doc = await self._store.resources.find_one(
            {"_id": f"{resource_type}/{id}"}, _VERSION_FIELDS, session=self._session
        )
        return _version(doc) if doc else None

    async def put(self, version: NewVersion) -> StoredVersion:
        store, s = self._store, self._session
        key = f"{version.resource_type}/{version.id}"
        expected = version.version - 1
        if version.resource_type == "SearchParameter" and version.resource is not None:
            # a custom search parameter becomes searchable, existing data indexed for it
            # (before this version's own index entries are extracted, as in SQLite)
            await self._register_search_parameter(version.resource)
        try:
            current = await store.resources.find_one({"_id": key}, {"v": 1}, session=s)
            found = current["v"] if current else None
            if expected != (found or 0):
                raise VersionConflict(version.resource_type, version.id, expected, found)
            seq = store.next_seq()
            await store.versions.insert_one(
                {
                    "_id": seq,
                    "t": version.resource_type,
                    "i": version.id,
                    "v": version.version,
                    "lu": version.last_updated,
                    "m": version.method,
                    "c": version.content,
                },
                session=s,
            )
            fields: Document = {
                "v": version.version,
                "lu": version.last_updated,
                "m": version.method,
                "c": version.content,
                "live": version.content is not None,
                **(
                    index_fields(version.resource_type, version.resource)
                    if version.resource is not None
                    else empty_index_fields()
                ),
            }
            if current is None:
                await store.resources.insert_one(
                    {"_id": key, "t": version.resource_type, "i": version.id, "seq": seq, **fields},
                    session=s,
                )
            else:
                result = await store.resources.update_one(
                    {"_id": key, "v": found}, {"$set": fields}, session=s
                )
                if result.matched_count != 1:
                    raise VersionConflict(version.resource_type, version.id, expected, None)
        except PyMongoError as err:
            if _is_conflict(err):
                raise VersionConflict(version.resource_type, version.id, expected, None) from err
            raise
        self.written.append(version)
        return version.stored()

    async def _register_search_parameter(self, resource: dict[str, Any]) -> None:
        """Add a SearchParameter to the registry in use and index the current resources
        of its base types for it, in this unit of work (only its entries are rewritten).
        Invalid definitions raise a 400 ``FhirError`` before anything is written."""
        reg = registry()
        old = reg.by_url(str(resource.get("url") or ""))
        param = reg.add(resource)
        if not param.indexable:
            return
        projection: Document = {"c": 1, **{f: 1 for f in INDEX_FIELDS}}
        for t in param_types(param):
            if reg.get(t, param.code) is not param:
                continue  # a parameter of the type itself has that code
            stale = stale_keys(t, param, old)
            cursor = self._store.resources.find(
                {"t": t, "live": True}, projection, session=self._session
            )
            async for doc in cursor:
                fields = with_param_reindexed(doc, t, jsonio.loads(bytes(doc["c"])), param, stale)
                await self._store.resources.update_one(
                    {"_id": doc["_id"]}, {"$set": fields}, session=self._session
                )

    async def search(
        self,
        resource_type: str,
        params: Sequence[tuple[str, str]],
        *,
        base_url: str | None = None,
    ) -> list[str]:
        query = parser.parse(
            resource_type, params, registry=registry(), base_url=base_url, strict=True
        )
        match = await self._store.translator(base_url, self._session).filter(query)
        cursor = self._store.resources.find(match, {"_id": 0, "i": 1}, session=self._session).sort(
            "seq", ASCENDING
        )
        return [doc["i"] async for doc in cursor]


class MongoStore:
    """Store on a MongoDB replica set (or sharded cluster), from a ``mongodb://`` URL."""

    def __init__(self, url: str, database: str | None = None) -> None:
        self.url = url
        self._database_name = database
        self._client: AsyncMongoClient[Document] | None = None
        self._db: AsyncDatabase[Document] | None = None
        self._lock = asyncio.Lock()
        self._node = 0
        self._last_tick = 0

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        client: AsyncMongoClient[Document] = AsyncMongoClient(
            self.url, w="majority", retryWrites=True, appname="fhir-server"
        )
        try:
            db = (
                client.get_database(self._database_name)
                if self._database_name
                else client.get_default_database(DEFAULT_DATABASE)
            )
            db = db.with_options(
                write_concern=WriteConcern("majority"), read_concern=ReadConcern("majority")
            )
            await self._check_transactions(client, db)
            await db.history.create_indexes(
                [
                    IndexModel([("t", 1), ("i", 1), ("v", 1)], name="version", unique=True),
                    IndexModel([("t", 1), ("_id", -1)], name="type_seq"),
                    IndexModel([("lu", 1)], name="updated"),
                ]
            )
            await db.resources.create_indexes(
                [IndexModel(list(fields), name=name) for name, fields in INDEXES]
            )
        except BaseException:
            await client.close()
            raise
        self._client, self._db = client, db
        self._node = await self._claim_node()
        # custom SearchParameters stored earlier are known again (their documents exist)
        reg = registry()
        cursor = db.resources.find({"t": "SearchParameter", "live": True}, {"_id": 0, "c": 1})
        async for doc in cursor:
            reg.add(jsonio.loads(bytes(doc["c"])))

    async def _claim_node(self) -> int:
        """This process's node number: a counter taken at each open (distinct for any
        4096 stores opened one after another)."""
        doc = await self.db.counters.find_one_and_update(
            {"_id": "nodes"}, {"$inc": {"n": 1}}, upsert=True, return_document=ReturnDocument.AFTER
        )
        assert doc is not None
        return int(doc["n"]) % (1 << _NODE_BITS)

    async def _check_transactions(
        self, client: AsyncMongoClient[Document], db: AsyncDatabase[Document]
    ) -> None:
        """Fail fast unless the server runs multi-document transactions."""
        try:
            hello = await client.admin.command("hello")
        except ConnectionFailure as err:
            raise ConnectionError(f"cannot reach MongoDB at {self._redacted()}: {err}") from err
        if "setName" in hello or hello.get("msg") == "isdbgrid":
            return
        # A standalone server: transactions work only on a replica set member or mongos.
        # Probe once, so that a server that does support them (e.g. a test stand-in) runs.
        try:
            async with client.start_session() as session:
                await session.start_transaction()
                try:
                    await db.counters.find_one({"_id": "probe"}, session=session)
                finally:
                    await session.abort_transaction()
        except OperationFailure as err:
            raise StandaloneServerError(
                f"MongoDB at {self._redacted()} is a standalone server: the MongoDB store"
                " needs multi-document transactions, i.e. a replica set (even of one node:"
                " start mongod with --replSet and run rs.initiate()) or a sharded cluster"
                f" ({err})"
            ) from err
        log.warning("MongoDB at %s is not a replica set but runs transactions", self._redacted())

    def _redacted(self) -> str:
        rest = self.url.partition("://")[2]
        host = rest.rpartition("@")[2].partition("/")[0].partition("?")[0]
        return host or self.url

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        self._client = self._db = None

    @property
    def client(self) -> AsyncMongoClient[Document]:
        if self._client is None:
            raise RuntimeError("store is not open")
        return self._client

    @property
    def db(self) -> AsyncDatabase[Document]:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    @property
    def resources(self) -> AsyncCollection[Document]:
        return self.db.resources

    @property
    def versions(self) -> AsyncCollection[Document]:
        return self.db.history

    def next_seq(self) -> int:
        """The next history sequence number: microseconds since 2020 (made strictly
        increasing in this process) and this process's node number in the low bits.

        Numbers are made without touching the database, so writers never contend on a
        counter (a hot document would make every pair of concurrent transactions
        conflict); versions from different processes are ordered by their clocks.
        """
        now = time.time_ns() // 1000 - _SEQ_EPOCH_US
        self._last_tick = max(now, self._last_tick + 1)
        return (self._last_tick << _NODE_BITS) | self._node

    def translator(
        self, base: str | None, session: AsyncClientSession | None = None
    ) -> mq.Translator:
        async def resolve(match: Document, projection: Document) -> list[Document]:
            projection = {"_id": 0, **projection}
            cursor = self.resources.find(match, projection, session=session)
            return [doc async for doc in cursor.limit(mq.MAX_IDS + 1)]

        return mq.Translator(resolve, base)

    # ------------------------------------------------------------------ reads

    async def read(self, resource_type: str, id: str) -> StoredVersion | None:
        doc = await self.resources.find_one({"_id": f"{resource_type}/{id}"}, _VERSION_FIELDS)
        return _version(doc) if doc else None

    async def vread(self, resource_type: str, id: str, version: int) -> StoredVersion | None:
        doc = await self.versions.find_one(
            {"t": resource_type, "i": id, "v": version}, _VERSION_FIELDS
        )
        return _version(doc) if doc else None

    async def history(self, query: HistoryQuery) -> HistoryPage:
        match: Document = {}
        if query.resource_type is not None:
            match["t"] = query.resource_type
            if query.id is not None:
                match["i"] = query.id
        if query.since is not None:
            match["lu"] = {"$gte": query.since}
        if query.at is not None:
            match["lu"] = {**match.get("lu", {}), "$lte": query.at}
        pipeline: list[Document] = [{"$match": match}]
        if query.at is not None:
            # the version current at `at`: the latest written at or before it
            pipeline += [
                {"$sort": {"t": 1, "i": 1, "v": -1}},
                {"$group": {"_id": {"t": "$t", "i": "$i"}, "doc": {"$first": "$$ROOT"}}},
                {"$replaceRoot": {"newRoot": "$doc"}},
            ]
        if query.before_seq is not None:
            pipeline.append({"$match": {"_id": {"$lt": query.before_seq}}})
        pipeline += [{"$sort": {"_id": -1}}, {"$limit": query.count + 1}]
        cursor = await self.db.history.aggregate(pipeline)
        docs = [doc async for doc in cursor]
        more = len(docs) > query.count
        docs = docs[: query.count]
        return HistoryPage(
            tuple(_version(d) for d in docs), int(docs[-1]["_id"]) if more and docs else None
        )

    async def count(self, resource_type: str | None = None) -> int:
        match: Document = {"live": True}
        if resource_type is not None:
            match = {"t": resource_type, "live": True}
        return int(await self.resources.count_documents(match))

    async def search(self, query: SearchQuery) -> SearchResult:
        """Run a parsed search on committed data."""
        match = await self.translator(query.base_url).filter(query)
        nkeys = len(query.sort)
        docs: list[Document] = []
        more = False
        page: mq.Page | None = None
        if query.count > 0:
            extra = ("x_ref",) if query.includes else ()
            page = mq.page_pipeline(query, match, extra)
            cursor = await self.resources.aggregate(page.pipeline)
            docs = [doc async for doc in cursor]
            more = len(docs) > query.count
            docs = docs[: query.count]
            if not page.forward:
                docs.reverse()
        # counted on the first page only and carried in the cursors: later pages report
        # the total as of the first page (Bundle.total: when the search was executed)
        total: int | None = None
        if query.total != "none":
            if query.cursor is not None:
                total = mq.carried_total(query)
                if total is None and query.total == "accurate":  # a cursor without one
                    total = int(await self.resources.count_documents(match))
            elif not more and query.count > 0:
                total = len(docs)
            elif query.total == "accurate":
                total = int(await self.resources.count_documents(match))
            else:
                # estimate (the default): exact while cheap, nothing beyond the cap
                capped = int(await self.resources.count_documents(match, limit=ESTIMATE_CAP + 1))
                total = capped if capped <= ESTIMATE_CAP else None
        next_cursor = previous_cursor = None
        if docs and page is not None:
            forward, paged = page.forward, page.has_cursor
            if (forward and more) or (not forward and paged):
                next_cursor = mq.cursor_of(docs[-1], nkeys, "n", total)
            if (forward and paged) or (not forward and more):
                previous_cursor = mq.cursor_of(docs[0], nkeys, "p", total)
        return SearchResult(
            matches=[Hit(d["t"], d["i"], bytes(d["c"]), "match") for d in docs],
            includes=await self._includes(query, docs),
            total=total,
            next_cursor=next_cursor,
            previous_cursor=previous_cursor,
        )

    async def _includes(self, query: SearchQuery, matches: list[Document]) -> list[Hit]:
        if not query.includes or not matches:
            return []
        seen = {(d["t"], d["i"]) for d in matches}
        out: list[Hit] = []
        frontier = matches
        first_round = True
        projection: Document = {"_id": 0, "t": 1, "i": 1, "c": 1, "x_ref": 1}
        for _ in range(5):
            found: list[Document] = []
            for inc in query.includes:
                if not first_round and not inc.iterate:
                    continue
                if inc.reverse:
                    match = mq.revinclude_sources_filter(inc, frontier, query.base_url)
                else:
                    match = mq.include_targets_filter(inc, frontier, query.base_url)
                if match is not None:
                    cursor = self.resources.find(match, projection).limit(MAX_INCLUDES + 1)
                    found.extend([doc async for doc in cursor])
            first_round = False
            frontier = []
            for doc in found:
                if (doc["t"], doc["i"]) in seen:
                    continue
                seen.add((doc["t"], doc["i"]))
                out.append(Hit(doc["t"], doc["i"], bytes(doc["c"]), "include"))
                frontier.append(doc)
            if not frontier or not any(i.iterate for i in query.includes) or len(out) > 1000:
                break
        return out

    # ------------------------------------------------------------------ writes

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[UnitOfWork]:
        async with self._lock, self.client.start_session() as session:
            await session.start_transaction(
                read_concern=ReadConcern("snapshot"),
                write_concern=WriteConcern("majority"),
                read_preference=ReadPreference.PRIMARY,
            )
            uow = _MongoUnitOfWork(self, session)
            try:
                yield uow
            except BaseException:
                if session.in_transaction:
                    await session.abort_transaction()
                raise
            await self._commit(session, uow)

    async def _commit(self, session: AsyncClientSession, uow: _MongoUnitOfWork) -> None:
        for attempt in range(3):
            try:
                await session.commit_transaction()
                return
            except PyMongoError as err:
                if (
                    isinstance(err, OperationFailure | ConnectionFailure)
                    and err.has_error_label("UnknownTransactionCommitResult")
                    and attempt < 2
                ):
                    continue  # committing again is safe: same transaction
                if _is_conflict(err) and uow.written:
                    v = uow.written[0]
                    raise VersionConflict(v.resource_type, v.id, v.version - 1, None) from err
                raise
