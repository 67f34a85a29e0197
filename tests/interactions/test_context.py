"""The per-request contexts keep every server-wide part of the context they come from."""

from __future__ import annotations

import dataclasses
from typing import Any

from fhir_server.interactions.context import Context
from fhir_server.settings import Settings

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
