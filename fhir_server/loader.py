"""Bulk import of Bundles and NDJSON into a store (the `load` command, the demo data).

Transaction and batch Bundles go through the transaction/batch processor exactly as if
POSTed. Every other resource (single resources, collection/searchset entries, NDJSON
lines) is written with update semantics when it has an id (so loading the same file
twice changes nothing: an unchanged resource is skipped) and create semantics when not,
in units of work of ``chunk`` resources.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fhir_server import jsonio
from fhir_server.errors import FhirError
from fhir_server.interactions import bundle, write
from fhir_server.interactions.context import Context
from fhir_server.interactions.model import FhirRequest


@dataclass(slots=True)
class LoadReport:
    written: int = 0
    unchanged: int = 0
    failed: int = 0
    transactions: int = 0

    def merge(self, other: LoadReport) -> None:
        self.written += other.written
        self.unchanged += other.unchanged
        self.failed += other.failed
        self.transactions += other.transactions


def _open(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def read_file(path: Path) -> Iterator[dict[str, Any]]:
    """Resources (or whole transaction/batch Bundles) found in a file."""
    data = _open(path)
    stem = path.name.removesuffix(".gz")
    if stem.endswith(".ndjson"):
        for n, line in enumerate(data.splitlines(), 1):
            if line.strip():
                try:
                    yield jsonio.loads(line)
                except jsonio.JsonError as exc:
                    raise ValueError(f"{path}:{n}: {exc}") from None
        return
    try:
        item = jsonio.loads(data)
    except jsonio.JsonError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if item.get("resourceType") == "Bundle" and item.get("type") in ("collection", "searchset"):
        for entry in item.get("entry", []):
            if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                yield entry["resource"]
        return
    yield item


async def _same(ctx: Context, resource: dict[str, Any]) -> bool:
    current = await ctx.current(resource["resourceType"], resource["id"])
    if current is None or current.content is None:
        return False
    stored = jsonio.loads(current.content)
    stored.pop("meta", None)
    mine = {k: v for k, v in resource.items() if k != "meta"}
    return bool(stored == mine)


def _written_entries(response: dict[str, Any] | None) -> int:
    """Entries of a transaction/batch response that created or updated a resource."""
    entries = (response or {}).get("entry", [])
    return sum(
        1
        for e in entries
        if str(e.get("response", {}).get("status", "")).startswith(("200", "201"))
    )


async def _drop_unchanged_puts(ctx: Context, bundle: dict[str, Any]) -> int:
    """Leave out PUT entries whose resource is already stored as written (idempotent load).

    Only entries without conditional URLs and not referred to by other entries' fullUrl
    are dropped, so the transaction means the same with or without them.
    """
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        return 0
    kept: list[Any] = []
    for entry in entries:
        request = entry.get("request") if isinstance(entry, dict) else None
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if (
            isinstance(request, dict)
            and request.get("method") == "PUT"
            and isinstance(resource, dict)
            and isinstance(resource.get("id"), str)
            and request.get("url") == f"{resource.get('resourceType')}/{resource['id']}"
            and not str(entry.get("fullUrl", "")).startswith("urn:")
            and await _same(ctx, resource)
        ):
            continue
        kept.append(entry)
    dropped = len(entries) - len(kept)
    bundle["entry"] = kept
    return dropped


async def load_resources(
    ctx: Context,
    items: Iterable[dict[str, Any]],
    *,
    chunk: int = 500,
    progress: Callable[[int], None] | None = None,
    errors: Callable[[str], None] | None = None,
) -> LoadReport:
    report = LoadReport()
    batch: list[dict[str, Any]] = []

    async def flush() -> None:
        if not batch:
            return
        async with ctx.store.unit_of_work() as uow:
            tx = ctx.within(uow)
            for resource in batch:
                try:
                    rtype = resource.get("resourceType")
                    if not isinstance(rtype, str):
                        raise FhirError.of(400, "structure", "no resourceType")
                    rid = resource.get("id")
                    if isinstance(rid, str) and await _same(tx, resource):
                        report.unchanged += 1
                    elif isinstance(rid, str):
                        await write.update(tx, uow, rtype, rid, resource)
                        report.written += 1
                    else:
                        await write.create(tx, uow, rtype, resource)
                        report.written += 1
                except FhirError as err:
                    report.failed += 1
                    if errors:
                        errors(f"{resource.get('resourceType')}/{resource.get('id')}: {err}")
        if progress:
            progress(len(batch))
        batch.clear()

    for item in items:
        if item.get("resourceType") == "Bundle" and item.get("type") in ("transaction", "batch"):
            await flush()
            report.unchanged += await _drop_unchanged_puts(ctx, item)
            try:
                response = await bundle.process(ctx, FhirRequest("POST", "", parsed=item))
                report.transactions += 1
                report.written += _written_entries(response.resource)
            except FhirError as err:
                report.failed += 1
                if errors:
                    errors(f"Bundle {item.get('id', '')}: {err}")
            if progress:
                progress(len(item.get("entry", [])))
            continue
        batch.append(item)
        if len(batch) >= chunk:
            await flush()
    await flush()
    return report
