"""The storage port: the narrow protocol every store implements.

A store keeps versions of resources. Reads outside a unit of work see committed data
only. All writes happen inside a :class:`UnitOfWork`, which is atomic (all of its
writes become visible together or none do) and serialised with every other unit of
work, so a read-check-write inside one (``If-Match``, conditional create) cannot race.

Stores hold the JSON bytes that interactions produce (resource with ``id`` and
``meta.versionId``/``meta.lastUpdated`` already set) and hand them back unchanged, so
reads need no re-encoding. Search index values are extracted by the search engine from
``NewVersion.resource`` and kept beside each current version.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from fhir_server.search.query import SearchQuery, SearchResult

Method = Literal["create", "update", "patch", "delete"]


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """One version of one resource as the store holds it."""

    resource_type: str
    id: str
    version: int
    last_updated: str  # FHIR instant, UTC, e.g. 2026-11-23T10:00:00.123456Z
    method: Method
    content: bytes | None  # None for a deletion

    @property
    def deleted(self) -> bool:
        return self.content is None


@dataclass(frozen=True, slots=True)
class NewVersion:
    """A version to write. ``version`` must be exactly the current version + 1 (or 1)."""

    resource_type: str
    id: str
    version: int
    last_updated: str
    method: Method
    content: bytes | None  # None for a deletion
    resource: dict[str, Any] | None  # parsed form of ``content``, for indexing

    def stored(self) -> StoredVersion:
        """This version as the store holds it once written."""
        return StoredVersion(
            self.resource_type, self.id, self.version, self.last_updated, self.method, self.content
        )


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    resource_type: str | None = None  # None: whole system
    id: str | None = None  # None: whole type (or system)
    since: str | None = None  # inclusive lower bound on last_updated (instant)
    at: str | None = None  # versions current at this instant (R4 `_at`)
    count: int = 50
    before_seq: int | None = None  # keyset cursor: only versions older than this


@dataclass(frozen=True, slots=True)
class HistoryPage:
    versions: Sequence[StoredVersion]
    next_cursor: int | None  # pass as ``before_seq`` for the next (older) page


class VersionConflict(Exception):
    """Another write got there first: the expected version is no longer current."""

    def __init__(self, resource_type: str, id: str, expected: int, actual: int | None):
        super().__init__(f"{resource_type}/{id}: expected version {expected}, found {actual}")
        self.resource_type = resource_type
        self.id = id
        self.expected = expected
        self.actual = actual


class StoreUnavailable(Exception):
    """The store cannot do it now, for a reason that may pass (its write lock held
    longer than it waits, no space left): nothing of the unit of work was written
    and the same request may succeed later. ``code`` is the OperationOutcome issue
    type that says why (``lock-error``, ``no-store``)."""

    def __init__(self, reason: str, code: Literal["lock-error", "no-store"]) -> None:
        super().__init__(reason)
        self.code = code


class UnitOfWork(Protocol):
    """An atomic, serialised group of reads and writes."""

    async def read(self, resource_type: str, id: str) -> StoredVersion | None: ...

    async def put(self, version: NewVersion) -> StoredVersion:
        """Write a version; raises :class:`VersionConflict` if it is not current + 1.

        A first version (a create) of an id that exists is refused too: by ``put`` once
        the unit has read or searched (it knows what is there, so the caller can go
        on), or else possibly only when the unit ends, which then raises
        :class:`VersionConflict` and writes none of it. Creates with ids chosen by the
        server never meet this; a store may therefore defer creates to the commit.
        """
        ...

    async def search(
        self,
        resource_type: str,
        params: Sequence[tuple[str, str]],
        *,
        base_url: str | None = None,
    ) -> list[str]:
        """Ids of current resources of the type matching the search parameters.

        Used for conditional interactions; sees the unit's own writes. ``base_url`` is
        this server's base, so absolute references on it count as local.
        """
        ...


class ForwardingUnitOfWork:
    """A unit of work that hands everything to another one: subclass it to watch or
    refuse writes (override :meth:`put`) without repeating the rest."""

    def __init__(self, uow: UnitOfWork) -> None:
        self.inner = uow

    async def read(self, resource_type: str, id: str) -> StoredVersion | None:
        return await self.inner.read(resource_type, id)

    async def put(self, version: NewVersion) -> StoredVersion:
        return await self.inner.put(version)

    async def search(
        self,
        resource_type: str,
        params: Sequence[tuple[str, str]],
        *,
        base_url: str | None = None,
    ) -> list[str]:
        return await self.inner.search(resource_type, params, base_url=base_url)


class Store(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def read(self, resource_type: str, id: str) -> StoredVersion | None:
        """The current version (a deletion if the resource was deleted), or None."""
        ...

    async def vread(self, resource_type: str, id: str, version: int) -> StoredVersion | None: ...

    async def history(self, query: HistoryQuery) -> HistoryPage: ...

    def unit_of_work(self) -> AbstractAsyncContextManager[UnitOfWork]: ...

    async def search(self, query: SearchQuery) -> SearchResult:
        """Run a parsed search (the store translates the query model) on committed data."""
        ...

    async def count(self, resource_type: str | None = None) -> int:
        """Number of current (not deleted) resources, of one type or all."""
        ...
