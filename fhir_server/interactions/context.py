"""What every interaction gets: the store, the settings, and (in a transaction) its unit."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from fhir_server import jsonio
from fhir_server.errors import FhirError, Issue
from fhir_server.settings import Settings
from fhir_server.storage.port import (
    ForwardingUnitOfWork,
    NewVersion,
    Store,
    StoredVersion,
    StoreUnavailable,
    UnitOfWork,
    VersionConflict,
)
from fhir_server.validation.registry import DEFINITION_TYPES, ProfileRegistry, RegistryError

if TYPE_CHECKING:
    from fhir_server.auth.access import Authenticator, Principal
    from fhir_server.auth.audit import AuditDraft, AuditTrail
    from fhir_server.operations.export_jobs import ExportJobs

log = logging.getLogger(__name__)


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
    # The definitions writes and $validate are checked against (None: the default
    # registry). Definitions written through the API are added to it once committed.
    profiles: ProfileRegistry | None = None
    # The Bulk Data export jobs of this server (None: $export is not available).
    exports: ExportJobs | None = None

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
            self.profiles,
            self.exports,
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
            self.profiles,
            self.exports,
        )

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[UnitOfWork]:
        """The enclosing transaction's unit of work, or a new one for this interaction.

        In an audited interaction the new unit records what is written, and the
        interaction's AuditEvent and Provenance are written in it before it commits
        (see :mod:`fhir_server.auth.audit`): a committed write always has both. What
        the store reports of a unit (a conflict it found when the unit ended, being
        unable to write for now) becomes the interaction's 409 or 503 here."""
        if self.uow is not None:
            yield self.uow
            return
        written: list[dict[str, Any] | str] = []
        try:
            async with self.store.unit_of_work() as store_uow:
                uow: UnitOfWork = (
                    _Definitions(store_uow, written) if self.profiles is not None else store_uow
                )
                if self.audit is None or self.event is None:
                    yield uow
                else:
                    yield self.audit.recording(uow, self.event)
                    await self.audit.record_writes(uow, self.event)
        except VersionConflict as exc:  # found by the store when the unit ended
            raise conflict(exc) from None
        except StoreUnavailable as exc:  # nothing was written; worth trying again
            raise FhirError(
                503, (Issue("error", exc.code, f"Try again later: {exc}"),), {"Retry-After": "1"}
            ) from None
        if self.profiles is not None and written:
            register_definitions(self.profiles, written)

    async def current(self, resource_type: str, id: str) -> StoredVersion | None:
        if self.uow is not None:
            return await self.uow.read(resource_type, id)
        return await self.store.read(resource_type, id)


def conflict(exc: VersionConflict) -> FhirError:
    """The 409 of a write that met another one (see :meth:`UnitOfWork.put`)."""
    return FhirError.of(
        409, "conflict", f"{exc.resource_type}/{exc.id} was changed concurrently: {exc}"
    )


class _Definitions(ForwardingUnitOfWork):
    """A unit of work that notes the definitions (StructureDefinition, ValueSet,
    CodeSystem, Questionnaire) written in it: the resource, or its URL when deleted."""

    def __init__(self, uow: UnitOfWork, written: list[dict[str, Any] | str]) -> None:
        super().__init__(uow)
        self._written = written

    async def put(self, version: NewVersion) -> StoredVersion:
        if version.resource_type in DEFINITION_TYPES:
            if version.resource is not None:
                self._written.append(version.resource)
            else:
                old = await self.inner.read(version.resource_type, version.id)
                url = jsonio.loads(old.content).get("url") if old and old.content else None
                if isinstance(url, str):
                    self._written.append(url)
        return await self.inner.put(version)


def register_definitions(
    profiles: ProfileRegistry, written: Sequence[dict[str, Any] | str]
) -> None:
    """Bring the registry up to date with committed definitions (a URL: deleted). A
    definition the registry cannot take (e.g. a StructureDefinition without type) is
    stored but not used for validation; that is logged."""
    for item in written:
        if isinstance(item, str):
            profiles.remove(item)
            continue
        try:
            profiles.add(item)
        except RegistryError as exc:
            log.warning("%s is stored but not used for validation: %s", item.get("url"), exc)
