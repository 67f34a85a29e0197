"""The per-request contexts keep every server-wide part of the context they come from."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from fhir_server import jsonio
from fhir_server.errors import FhirError
from fhir_server.interactions.context import Context
from fhir_server.settings import Settings
from fhir_server.storage.port import NewVersion
from fhir_server.storage.sqlite.store import SqliteStore

PER_REQUEST = {"principal", "peer", "event", "uow"}


def test_request_contexts_keep_the_server_parts() -> None:
    # a distinct object in every field, so that a field left out shows
    fields = {f.name: object() for f in dataclasses.fields(Context)}
    fields["settings"] = Settings()
    ctx = Context(**fields)
    derived: dict[str, Any] = {
        "as_principal": ctx.as_principal(object(), "10.0.0.1"),  # type: ignore[arg-type]
        "auditing": ctx.auditing(object()),  # type: ignore[arg-type]
        "within": ctx.within(object()),  # type: ignore[arg-type]
    }
    for how, other in derived.items():
        for f in dataclasses.fields(Context):
            if f.name not in PER_REQUEST:
                assert getattr(other, f.name) is getattr(ctx, f.name), (how, f.name)


async def test_a_conflict_found_when_the_unit_ends_is_a_409(tmp_path: Path) -> None:
    """A store may refuse a blind create of an existing id only at the end of the unit
    of work (storage/port.py); the write then fails as a 409, not as a server error."""
    store = SqliteStore(str(tmp_path / "c.sqlite"))
    await store.open()
    ctx = Context(store, Settings())
    resource = {"resourceType": "Patient", "id": "same"}
    blind = NewVersion(
        "Patient", "same", 1, "2026-01-01T00:00:00Z", "create", jsonio.dumps(resource), resource
    )
    try:
        async with ctx.writing() as uow:
            await uow.put(blind)
        with pytest.raises(FhirError) as refused:
            async with ctx.writing() as uow:
                await uow.put(blind)
        assert refused.value.status == 409
        assert "Patient/same" in (refused.value.issues[0].diagnostics or "")
    finally:
        await store.close()
