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


@dataclass(frozen=True, slots=True)
class Context:
    store: Store
    settings: Settings
    uow: UnitOfWork | None = None  # set while a transaction Bundle is processed
    # Set when authorization is on: verifies each request's bearer token.
    authenticator: Authenticator | None = None
    # The caller of this request (None: authorization is off, or not yet known).
    principal: Principal | None = None

    @property
    def base_url(self) -> str:
        return self.settings.base_url

    def within(self, uow: UnitOfWork) -> Context:
        return replace(self, uow=uow)

    def with_authenticator(self, authenticator: Authenticator | None) -> Context:
        return replace(self, authenticator=authenticator)

    def as_principal(self, principal: Principal | None) -> Context:
        """The context of one request made by ``principal``."""
        return replace(self, principal=principal)

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[UnitOfWork]:
        """The enclosing transaction's unit of work, or a new one for this interaction."""
        if self.uow is not None:
            yield self.uow
        else:
            async with self.store.unit_of_work() as uow:
                yield uow

    async def current(self, resource_type: str, id: str) -> StoredVersion | None:
        if self.uow is not None:
            return await self.uow.read(resource_type, id)
        return await self.store.read(resource_type, id)
