"""What authorization and auditing cost: ``python -m bench.auth_overhead``.

Measured in-process: the ASGI app driven through ``httpx.ASGITransport`` (the HTTP
adapter, routing, scopes and the JSON answer included; no sockets), on one event loop,
``--concurrency`` requests in flight (a closed loop: each task sends its next request
when the previous answer arrives). Three apps share one SQLite store with the same data:

- ``off``: authorization off (``serve --no-auth``), sent the same requests (the bearer
  token included, which it ignores), so that the in-process client's work on the
  token's header does not count as the server's overhead;
- ``auth``: authorization on, and the server process's share of auditing done but
  nothing stored (to split the cost of authorization from the cost of storing the
  records): with ``--audit-writer process`` (the default, as ``serve``) each batch's
  records encoded for the writer process, with ``inline`` the AuditEvents built and
  encoded;
- ``on``: authorization on, as ``serve`` runs it: every request carries a valid bearer
  token (``--scope``, default ``user/*.rs`` with a ``fhirUser``), is authenticated and
  checked against the scopes, and is audited; the app's lifespan runs, so the audit
  trail's background writer stores the AuditEvents (batches of 100 / every 200 ms)
  during the measurement, as in production: through the writer process (on the
  other core), or inline on the same event loop.

Two workloads: ``read`` (``GET Patient/{id}``, random patients) and ``search``
(``GET Observation?subject=Patient/{id}&_count=50``, 50 matches each). The apps
alternate for ``--rounds`` rounds of ``--duration`` seconds each (after a warm-up),
so that a drift of the machine affects both; the figure per app is the median of its
rounds, the overhead is ``1 - on/off``. An ``on`` (``auth``) round ends when the AuditEvents of
its requests are all stored (the writer may lag behind the requests during the round;
that time counts), so its figure includes the whole cost of auditing. The AuditEvents
stored are counted, to show that the audit trail really was written.

Then the latency of reads sent at a fixed ``--rate`` (400/s, below every app's
capacity) with authorization off and on: what authorization and the audit trail's
work (batch writes inline, or handing batches to the writer process) add to an
answer, beyond throughput.

Last, the writer process's work alone (``--writer-events`` records of reads and of
searches decoded, their AuditEvents built and stored in the writer's units on a
fresh store, in this process): AuditEvents per second and CPU per AuditEvent, the
rate of audited requests one writer process can follow on a core of its own.

Prints Markdown tables and writes ``bench/results/auth-overhead.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from fastapi import FastAPI

from fhir_server.app import create_app
from fhir_server.auth import audit_writer
from fhir_server.auth.access import Principal
from fhir_server.auth.audit import (
    AuditDraft,
    AuditTrail,
    audit_event,
    draft_record,
    store_events,
)
from fhir_server.auth.scopes import Permissions
from fhir_server.interactions import resources as res
from fhir_server.interactions.model import FhirRequest
from fhir_server.settings import Settings
from fhir_server.storage.sqlite.store import SqliteStore

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BASE = "http://bench.local/fhir"
GOAL_PERCENT = 15.0


def _patient(i: int) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": f"p{i}",
        "identifier": [{"system": "urn:example:mrn", "value": f"mrn-{i:06d}"}],
        "name": [{"family": f"Family{i}", "given": ["Given", f"G{i % 97}"]}],
        "gender": ("female", "male")[i % 2],
        "birthDate": f"19{40 + i % 60:02d}-0{1 + i % 9}-1{i % 10}",
        "telecom": [{"system": "phone", "value": f"+1-555-{i:07d}"}],
        "address": [{"line": [f"{i} Main St"], "city": "Springfield", "postalCode": "12345"}],
    }


def _observation(pid: str, n: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"{pid}-o{n}",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}], "text": "Pulse"},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": f"2026-10-{1 + n % 28:02d}T10:00:00Z",
        "valueQuantity": {
            "value": 60 + n % 40,
            "unit": "/min",
            "system": "http://unitsofmeasure.org",
            "code": "/min",
        },
    }


async def _seed(client: httpx.AsyncClient, patients: int, observations: int) -> None:
    for start in range(0, patients, 50):
        entries = []
        for i in range(start, min(start + 50, patients)):
            resources = [_patient(i)]
            if i < 20:  # the searched patients
                resources += [_observation(f"p{i}", n) for n in range(observations)]
            entries += [
                {
                    "resource": r,
                    "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
                }
                for r in resources
            ]
        tx = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        r = await client.post("/fhir", json=tx)
        r.raise_for_status()


async def _drive(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    path: Callable[[random.Random], str],
    duration: float,
    concurrency: int,
    seed: int,
) -> tuple[int, int]:
    """(requests answered 200, errors) in ``duration`` seconds."""
    stop = time.perf_counter() + duration
    counts = [0, 0]

    async def worker(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        while time.perf_counter() < stop:
            r = await client.get(path(rng), headers=headers)
            counts[0 if r.status_code == 200 else 1] += 1

    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return counts[0], counts[1]


def _build_only(audit: AuditTrail, process: bool) -> None:
    """Make a trail do what the server process does for its AuditEvents, but not store
    them (to split the cost of authorization from the cost of storing the records):
    with the writer process, the records of a batch encoded for it; inline, the
    AuditEvents built and encoded."""

    async def encode(batch: Sequence[AuditDraft]) -> None:
        orjson.dumps([draft_record(d) for d in batch])

    async def build(batch: Sequence[AuditDraft]) -> None:
        for i, draft in enumerate(batch):
            res.stamp(audit_event(draft, audit.base_url), res.new_id(), 1, res.now_instant())
            if i % 10 == 9:
                await asyncio.sleep(0)

    audit._write = encode if process else build  # type: ignore[method-assign]
    audit.writer = None


async def _measure(
    args: argparse.Namespace,
    store: SqliteStore,
    apps: dict[str, FastAPI],
    clients: dict[str, httpx.AsyncClient],
    headers: dict[str, dict[str, str]],
    path: Callable[[random.Random], str],
    names: Sequence[str],
) -> dict[str, Any]:
    audit: AuditTrail = apps["on"].state.audit
    rounds: dict[str, list[float]] = {n: [] for n in names}
    errors = dict.fromkeys(names, 0)
    for name in names:  # warm-up
        await _drive(clients[name], headers[name], path, args.warmup, args.concurrency, 0)
    for name in ("auth", "on"):
        await apps[name].state.audit.flush()
    audited_before = _audit_count(store)
    answered_on = 0
    for k in range(args.rounds):
        order = names if k % 2 == 0 else tuple(reversed(names))
        for name in order:
            started = time.perf_counter()
            ok, bad = await _drive(
                clients[name], headers[name], path, args.duration, args.concurrency, k + 1
            )
            trail = getattr(apps[name].state, "audit", None)
            if trail is not None:
                # the round's audit events not yet written count in its time
                await trail.flush()
            rounds[name].append(ok / (time.perf_counter() - started))
            errors[name] += bad
            if name == "on":
                answered_on += ok + bad
    audited = _audit_count(store) - audited_before
    rps = {n: statistics.median(rounds[n]) for n in names}
    if not rps["off"]:
        raise RuntimeError(f"no successful request without authorization: {errors}")
    return {
        "off_rps": round(rps["off"], 1),
        "auth_rps": round(rps["auth"], 1),
        "on_rps": round(rps["on"], 1),
        "overhead_percent": round(100 * (1 - rps["on"] / rps["off"]), 1),
        "auth_only_overhead_percent": round(100 * (1 - rps["auth"] / rps["off"]), 1),
        "rounds_rps": {n: [round(x, 1) for x in rounds[n]] for n in names},
        "errors": errors,
        "requests_on": answered_on,
        "audit_events_written": audited,
        "audit_events_dropped": audit.dropped,
    }


async def _paced(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    path: Callable[[random.Random], str],
    rate: float,
    duration: float,
) -> dict[str, float]:
    """Latency (ms) of requests sent at a fixed ``rate`` (8 senders), below every app's
    capacity: what the audit trail's work costs an answer."""
    latencies: list[float] = []
    stop = time.perf_counter() + duration
    senders = 8

    async def sender(k: int) -> None:
        rng = random.Random(k)
        due = time.perf_counter() + k / rate
        while due < stop:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            started = time.perf_counter()
            await client.get(path(rng), headers=headers)
            latencies.append(time.perf_counter() - started)
            due += senders / rate

    await asyncio.gather(*(sender(k) for k in range(senders)))
    latencies.sort()

    def q(p: float) -> float:
        return round(latencies[int(p * (len(latencies) - 1))] * 1e3, 2)

    return {"requests": len(latencies), "p50_ms": q(0.5), "p95_ms": q(0.95), "p99_ms": q(0.99),
            "max_ms": q(1.0)}  # fmt: skip


def _audit_count(store: SqliteStore) -> int:
    row = store.reader.execute("SELECT count(*) FROM resource WHERE type = 'AuditEvent'").fetchone()
    return int(row[0])


async def _writer_capacity(n: int) -> dict[str, Any]:
    """What the writer process does per AuditEvent, measured in this process on a fresh
    store: ``n`` records decoded, their AuditEvents built and stored in units of
    ``audit_writer.CHUNK``. Events per second and CPU per event (all threads of the
    process, the store's commit thread included): the audited request rate that one
    writer process can follow on a core of its own."""
    who = Principal("bench-client", "bench-user", Permissions(), None, "Practitioner/bench")
    now = time.time()

    def read(i: int) -> AuditDraft:
        d = AuditDraft(who, FhirRequest("GET", f"Patient/p{i}"), "127.0.0.1", now, now, 200)
        d.etag = 'W/"1"'
        d.interaction = ("read", ["Patient", f"p{i}"])
        return d

    def search(i: int) -> AuditDraft:
        params = [("subject", f"Patient/p{i % 20}"), ("_count", "50")]
        d = AuditDraft(who, FhirRequest("GET", "Observation", params), "127.0.0.1", now, now, 200)
        d.interaction = ("search-type", ["Observation"])
        return d

    out: dict[str, Any] = {"events": n, "chunk": audit_writer.CHUNK}
    for workload, make in (("read", read), ("search", search)):
        with tempfile.TemporaryDirectory(prefix="audit-writer-bench-") as tmp:
            store = SqliteStore(str(Path(tmp) / "audit.sqlite"))
            await store.open()
            try:
                records = orjson.loads(orjson.dumps([draft_record(make(i)) for i in range(n)]))
                cpu, wall = time.process_time(), time.perf_counter()
                for start in range(0, n, audit_writer.CHUNK):
                    chunk = records[start : start + audit_writer.CHUNK]
                    await store_events(store, audit_writer.events(chunk, BASE))
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            finally:
                await store.close()
        out[workload] = {
            "events_per_s": round(n / wall, 1),
            "cpu_us_per_event": round(cpu / n * 1e6, 1),
        }
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = tempfile.TemporaryDirectory(prefix="auth-bench-")
    db = Path(tmp.name) / "bench.sqlite"
    store = SqliteStore(str(db))
    await store.open()
    base = Settings(database=f"sqlite:///{db}", public_base_url=BASE)
    secured = replace(
        base,
        auth_enabled=True,
        audit_writer_process=args.audit_writer == "process",
        auth_clients_path=str(Path(tmp.name) / "clients.json"),
        auth_keys_path=str(Path(tmp.name) / "keys.json"),
    )
    apps: dict[str, FastAPI] = {
        "off": create_app(base, store),
        "auth": create_app(secured, store),
        "on": create_app(secured, store),
    }
    _build_only(apps["auth"].state.audit, args.audit_writer == "process")
    server = apps["on"].state.auth_server
    token, _ = server.tokens.issue_access_token(
        subject="bench-user",
        client_id="bench-client",
        scope=args.scope,
        patient=args.patient,
        fhir_user="Practitioner/bench",
        lifetime=24 * 3600,
    )
    bearer = {"Authorization": f"Bearer {token}"}
    # the same requests for every app (the app without authorization ignores the
    # token): what the client spends on sending it is not the server's overhead
    headers = {"off": bearer, "auth": bearer, "on": bearer}
    for name in ("auth", "on"):  # the same signing keys, so the token is valid for both
        assert apps[name].state.auth_server.keys.current.kid == server.keys.current.kid
    clients = {
        name: httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench")
        for name, app in apps.items()
    }
    await _seed(clients["off"], args.patients, args.observations)
    searched = 1 if args.patient else 20
    workloads: dict[str, Callable[[random.Random], str]] = {
        "read": lambda rng: f"/fhir/Patient/p{rng.randrange(args.patients)}",
        "search": lambda rng: (
            f"/fhir/Observation?subject=Patient/p{rng.randrange(searched)}&_count=50"
        ),
    }
    if args.patient:  # a patient-level token reads its own patient only
        workloads["read"] = lambda rng: f"/fhir/Patient/{args.patient}"
    results: dict[str, Any] = {}
    names = ("off", "auth", "on")
    try:
        async with contextlib.AsyncExitStack() as stack:
            for name in ("auth", "on"):
                await stack.enter_async_context(apps[name].router.lifespan_context(apps[name]))
            for workload, path in workloads.items():
                results[workload] = await _measure(args, store, apps, clients, headers, path, names)
            latency = {
                name: await _paced(clients[name], headers[name], workloads["read"], args.rate, 6.0)
                for name in ("off", "on")
            }
    finally:
        for c in clients.values():
            await c.aclose()
        await store.close()
        tmp.cleanup()
    writer = await _writer_capacity(args.writer_events)
    return {
        "measured": "authorization + audit overhead, in-process (httpx ASGITransport)",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "platform": platform.platform(),
        },
        "config": {
            "scope": args.scope,
            "patient": args.patient,
            "audit_writer": args.audit_writer,
            "patients": args.patients,
            "observations_per_searched_patient": args.observations,
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "fixed_rate_per_s": args.rate,
            "warmup_s": args.warmup,
        },
        "goal_overhead_percent": GOAL_PERCENT,
        "results": results,
        "read_latency_at_fixed_rate": {"rate_per_s": args.rate, **latency},
        "audit_writer_alone": writer,
    }


def _table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A titled Markdown table, the first column left-aligned and the others right."""
    return [
        "",
        title,
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def markdown(report: dict[str, Any]) -> str:
    c = report["config"]
    lines = [
        f"Authorization + audit overhead (scope `{c['scope']}`"
        + (f", patient {c['patient']}" if c["patient"] else "")
        + f"; {c['concurrency']} in flight, median of {c['rounds']} x {c['duration_s']} s)",
        "",
        "| workload | auth off | auth on, audit not stored | auth on + audit | overhead"
        " (not stored) | overhead | AuditEvents stored / requests |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in report["results"].items():
        lines.append(
            f"| {name} | {r['off_rps']:,.0f} req/s | {r['auth_rps']:,.0f} req/s"
            f" | {r['on_rps']:,.0f} req/s | {r['auth_only_overhead_percent']:.1f} %"
            f" | **{r['overhead_percent']:.1f} %**"
            f" | {r['audit_events_written']:,} / {r['requests_on']:,} |"
        )
    lat = report["read_latency_at_fixed_rate"]
    lines += _table(
        f"Read latency at a fixed {lat['rate_per_s']:,.0f} requests/s (ms):",
        ("app", "p50", "p95", "p99", "max"),
        [
            (n, f"{r['p50_ms']:.2f}", f"{r['p95_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['max_ms']:.1f}")
            for n, r in ((n, lat[n]) for n in ("off", "on"))
        ],
    )
    w = report["audit_writer_alone"]
    lines += _table(
        f"The writer process's work alone ({w['events']:,} records, units of {w['chunk']}):",
        ("workload", "AuditEvents/s", "CPU per AuditEvent"),
        [
            (n, f"{r['events_per_s']:,.0f}", f"{r['cpu_us_per_event']:.0f} us")
            for n, r in ((n, w[n]) for n in ("read", "search"))
        ],
    )
    lines.append("")
    lines.append(f"Goal: overhead under {report['goal_overhead_percent']:.0f} %.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.auth_overhead", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per app and workload")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--observations", type=int, default=60, help="per searched patient")
    parser.add_argument("--scope", default="user/*.rs", help="the token's scopes")
    parser.add_argument("--patient", help="the token's patient (with patient/ scopes)")
    parser.add_argument(
        "--rate", type=float, default=400.0, help="requests/s of the fixed-rate latency run"
    )
    parser.add_argument(
        "--audit-writer",
        choices=("process", "inline"),
        default="process",
        help="where the queued AuditEvents are stored (as `serve --audit-writer`)",
    )
    parser.add_argument(
        "--writer-events", type=int, default=5000, help="records of the writer-alone run"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "auth-overhead.json")
    args = parser.parse_args(argv)
    report = asyncio.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    print(f"\nwritten to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
