"""What every interaction gets: the store, the settings, and (in a transaction) its unit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from fhir_server.settings import Settings
from fhir_server.storage.port import Store, StoredVersion, UnitOfWork

if TYPE_CHECKING:
    from fhir_server.auth.access import Authenticator, Principal
    from fhir_server.auth.audit import AuditDraft, AuditTrail


@dataclass(frozen=True, slots=True)
class Context:
    store: Store
    settings: Settings
    uow: UnitOfWork | None = None  # set while a transaction Bundle is processed
    # Set when authorization is on: verifies each request's bearer token.
    authenticator: Authenticator | None = None
    # The caller of this request (None: authorization is off, or not yet known).
    principal: Principal | None = None
    # Set when authorization is on: records AuditEvents (and Provenance of writes).
    audit: AuditTrail | None = None
    # The audit record of the interaction in progress (set by the router).
    event: AuditDraft | None = None
    # The network address of the caller, when known.
    peer: str | None = None

    @property
    def base_url(self) -> str:
        return self.settings.base_url

    def within(self, uow: UnitOfWork) -> Context:
        return replace(self, uow=uow)

    def with_authenticator(self, authenticator: Authenticator | None) -> Context:
        return replace(self, authenticator=authenticator)

    def with_audit(self, audit: AuditTrail | None) -> Context:
        return replace(self, audit=audit)

    # The two below run on every request with authorization on: direct construction
    # (dataclasses.replace costs several times as much).

    def as_principal(self, principal: Principal | None, peer: str | None = None) -> Context:
        """The context of one request made by ``principal`` (from ``peer``)."""
        return Context(
            self.store,
            self.settings,
            self.uow,
            self.authenticator,
            principal,
            self.audit,
            self.event,
            peer,
        )

    def auditing(self, event: AuditDraft) -> Context:
        """The context of one audited interaction."""
        return Context(
            self.store,
            self.settings,
            self.uow,
            self.authenticator,
            self.principal,
            self.audit,
            event,
            self.peer,
        )

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[UnitOfWork]:
        """The enclosing transaction's unit of work, or a new one for this interaction.

        In an audited interaction the new unit records what is written, and the
        interaction's AuditEvent and Provenance are written in it before it commits
        (see :mod:`fhir_server.auth.audit`): a committed write always has both."""
        if self.uow is not None:
            yield self.uow
            return
        async with self.store.unit_of_work() as uow:
            if self.audit is None or self.event is None:
                yield uow
                return
            yield self.audit.recording(uow, self.event)
            await self.audit.record_writes(uow, self.event)

    async def current(self, resource_type: str, id: str) -> StoredVersion | None:
        if self.uow is not None:
            return await self.uow.read(resource_type, id)
        return await self.store.read(resource_type, id)
