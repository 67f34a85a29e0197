"""Helpers for the search tests: loading resources into a store, building queries."""

from __future__ import annotations

import gzip
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fhir_server import jsonio
from fhir_server.storage.port import NewVersion, Store

EXAMPLES = Path(__file__).resolve().parent.parent / "data" / "r4-examples.ndjson.gz"
STAMP = "2024-01-01T00:00:00.000000Z"


def load_examples() -> list[dict[str, Any]]:
    """The official R4 examples, one resource per (type, id)."""
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    with gzip.open(EXAMPLES, "rt", encoding="utf-8") as f:
        for line in f:
            r = jsonio.loads(line)
            key = (r["resourceType"], r.get("id"))
            if r.get("id") and key not in seen:
                seen.add(key)
                out.append(r)
    return out


async def put_all(store: Store, resources: Iterable[dict[str, Any]]) -> None:
    """Create (or update, if already there) each resource."""
    async with store.unit_of_work() as uow:
        for r in resources:
            current = await uow.read(r["resourceType"], r["id"])
            version = current.version + 1 if current else 1
            await uow.put(
                NewVersion(
                    r["resourceType"],
                    r["id"],
                    version,
                    r.get("meta", {}).get("lastUpdated", STAMP),
                    "update" if current else "create",
                    jsonio.dumps(r),
                    r,
                )
            )


async def delete(store: Store, resource_type: str, id: str) -> None:
    async with store.unit_of_work() as uow:
        current = await uow.read(resource_type, id)
        assert current is not None
        await uow.put(
            NewVersion(resource_type, id, current.version + 1, STAMP, "delete", None, None)
        )


def escape(value: str) -> str:
    """Escape a search value's separators."""
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("$", "\\$").replace("|", "\\|")
