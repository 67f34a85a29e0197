"""Search benchmark on a synthetic rehab clinic: ``python -m bench.search --size 100000``.

Measured in-process, single thread: each search goes through the search interaction
function (:func:`fhir_server.interactions.search.search`: parse, SQL on the SQLite
store's reader connection, the Bundle built as the server answers it, with the stored
resources embedded as they are) and the Bundle is serialised to JSON bytes -- no HTTP
(``bench.run`` measures the HTTP server). The database is generated once
per size and seed (:mod:`bench.synthetic`) and cached under ``bench/.data/``; the load
time of the generation is kept next to it and reported.

Latency: each query is run ``--repeat`` times with values drawn from the data (other
patients, encounters, dates...), after a warm-up; p50/p95 of the wall time per call.
Throughput: searches/s over ``--duration`` seconds of ``_count=50`` pages, one after
the other. Prints a Markdown table and writes ``bench/results/search-<size>.json``;
``--summary`` writes ``bench/results/search.md`` (every size side by side) from those.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from bench import synthetic

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"
RESULTS = HERE / "results"
BASE = "http://bench.local/fhir"
GOALS = {"selective_p95_ms": 20.0, "count50_searches_per_s": 500.0}

Params = list[tuple[str, str]]
SERVICE_TYPE = {
    "resourceType": "SearchParameter",
    "url": f"{synthetic.BASE}/SearchParameter/encounter-service-type",
    "name": "service-type",
    "status": "active",
    "code": "service-type",
    "base": ["Encounter"],
    "type": "token",
    "expression": "Encounter.serviceType",
}


def db_path(size: int, seed: int) -> Path:
    return DATA / f"clinic-{size}-seed{seed}.sqlite"


async def ensure_database(size: int, seed: int) -> dict[str, Any]:
    """The cached database for (size, seed), generated if missing; its load figures."""
    from fhir_server.storage.sqlite.store import SqliteStore

    path = db_path(size, seed)
    meta_path = path.with_suffix(".load.json")
    if path.exists() and meta_path.exists():
        loaded: dict[str, Any] = json.loads(meta_path.read_text())
        return loaded
    DATA.mkdir(parents=True, exist_ok=True)
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        p.unlink(missing_ok=True)
    print(f"generating {size:,} resources into {path.name} ...", file=sys.stderr)
    store = SqliteStore(str(path))
    await store.open()
    tick = [time.perf_counter()]

    def progress(n: int) -> None:
        if time.perf_counter() - tick[0] > 15:
            tick[0] = time.perf_counter()
            print(f"  {n:,}", file=sys.stderr)

    try:
        stats = await synthetic.load_into_store(
            store, synthetic.generate(size, seed), progress=progress
        )
        started = time.perf_counter()
        store.writer.execute("PRAGMA optimize")
        optimize_s = time.perf_counter() - started
    finally:
        await store.close()
    meta = {
        "resources": stats.resources,
        "load_seconds": round(stats.seconds, 1),
        "load_resources_per_s": round(stats.per_second),
        "optimize_seconds": round(optimize_s, 1),
        "batch": 5000,
        "file_bytes": path.stat().st_size,
    }
    meta_path.write_text(json.dumps(meta, indent=2))
    return meta


class Samples:
    """Values drawn from the database (ids, identifiers, names, dates)."""

    def __init__(self, conn: sqlite3.Connection, seed: int) -> None:
        rng = random.Random(seed)
        self.rng = rng

        def ids(rtype: str, n: int) -> list[str]:
            lo, hi = conn.execute(
                "SELECT min(rid), max(rid) FROM resource WHERE type = ?", (rtype,)
            ).fetchone()
            out: list[str] = []
            while len(out) < n:
                row = conn.execute(
                    "SELECT id FROM resource WHERE rid >= ? AND type = ? ORDER BY rid LIMIT 1",
                    (rng.randint(lo, hi), rtype),
                ).fetchone()
                if row:
                    out.append(row[0])
            return out

        self.patients = ids("Patient", 200)
        self.encounters = ids("Encounter", 200)
        self.roles = ids("PractitionerRole", 50)
        self.mrns = [f"MRN{int(p.removeprefix('pat-')):07d}" for p in self.patients]
        self.families: list[str] = []
        for p in self.patients[:50]:
            row = conn.execute(
                "SELECT content FROM resource WHERE type = 'Patient' AND id = ?", (p,)
            ).fetchone()
            self.families.append(json.loads(row[0])["name"][0]["family"])
        self.days = [
            synthetic.START + timedelta(days=rng.randint(30, 700)) for _ in range(100)
        ]

    def pick(self, items: Sequence[Any]) -> Any:
        return self.rng.choice(items)


def _ms(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)

    def rank(q: float) -> float:
        return xs[min(len(xs) - 1, max(0, round(q * len(xs)) - 1))] * 1000

    return {"p50_ms": round(rank(0.50), 2), "p95_ms": round(rank(0.95), 2), "mean_ms": round(statistics.fmean(xs) * 1000, 2)}


def queries(s: Samples) -> list[tuple[str, str, str, Callable[[], Params]]]:
    """(name, kind, resource type, params maker) of the latency queries."""
    disc = synthetic.DISCIPLINE
    mrn = synthetic.MRN_SYSTEM

    def day_range() -> Params:
        d: date = s.pick(s.days)
        return [("date", f"ge{d.isoformat()}"), ("date", f"lt{(d + timedelta(days=1)).isoformat()}")]

    return [
        ("token: Patient?identifier=mrn|MRN… (1 hit)", "selective", "Patient",
         lambda: [("identifier", f"{mrn}|{s.pick(s.mrns)}")]),
        ("token: Encounter?service-type=…|SLP&subject=Patient/x", "selective", "Encounter",
         lambda: [("service-type", f"{disc}|SLP"), ("subject", f"Patient/{s.pick(s.patients)}")]),
        ("token: Encounter?service-type=…|PT (62% of encounters, first page of 20)", "broad", "Encounter",
         lambda: [("service-type", f"{disc}|PT")]),
        ("token: same, _total=none", "broad", "Encounter",
         lambda: [("service-type", f"{disc}|PT"), ("_total", "none")]),
        ("string: Patient?family=<name>", "selective", "Patient",
         lambda: [("family", s.pick(s.families))]),
        ("date: Encounter?date=ge<day>&date=lt<day+1>", "selective", "Encounter", day_range),
        ("reference: Procedure?encounter=Encounter/x", "selective", "Procedure",
         lambda: [("encounter", f"Encounter/{s.pick(s.encounters)}")]),
        ("reference: Observation?subject=Patient/x", "selective", "Observation",
         lambda: [("subject", f"Patient/{s.pick(s.patients)}")]),
        ("chain: Encounter?subject:Patient.identifier=mrn|…", "selective", "Encounter",
         lambda: [("subject:Patient.identifier", f"{mrn}|{s.pick(s.mrns)}")]),
        ("_has: Patient?_has:Encounter:subject:date=<day>", "selective", "Patient",
         lambda: [("_has:Encounter:subject:date", s.pick(s.days).isoformat())]),
        ("_include: Encounter?subject=Patient/x&_include=Encounter:subject", "selective", "Encounter",
         lambda: [("subject", f"Patient/{s.pick(s.patients)}"), ("_include", "Encounter:subject")]),
        ("_revinclude: Encounter?_id=x&_revinclude=Procedure:encounter", "selective", "Encounter",
         lambda: [("_id", s.pick(s.encounters)), ("_revinclude", "Procedure:encounter")]),
        ("sort: Encounter?subject=Patient/x&_sort=-date", "selective", "Encounter",
         lambda: [("subject", f"Patient/{s.pick(s.patients)}"), ("_sort", "-date")]),
        ("token :in: Procedure?code:in=<timed codes>&subject=Patient/x", "selective", "Procedure",
         lambda: [("code:in", f"{synthetic.BASE}/ValueSet/therapy-timed-codes"),
                  ("subject", f"Patient/{s.pick(s.patients)}")]),
    ]


async def run(store: Any, rtype: str, params: Params) -> dict[str, Any]:
    from fhir_server import jsonio
    from fhir_server.interactions.search import search

    bundle = await search(store, rtype, params, base_url=BASE, strict=True, raw=True)
    jsonio.dumps(bundle)  # what the HTTP answer costs on top
    return bundle


async def latency(store: Any, maker: Callable[[], Params], rtype: str, repeat: int) -> tuple[dict[str, float], float]:
    for _ in range(max(3, repeat // 10)):
        await run(store, rtype, maker())
    times: list[float] = []
    hits = 0
    for _ in range(repeat):
        params = maker()
        t0 = time.perf_counter()
        bundle = await run(store, rtype, params)
        times.append(time.perf_counter() - t0)
        hits += sum(1 for e in bundle.get("entry", ()) if e["search"]["mode"] != "outcome")
    return _ms(times), hits / repeat


async def throughput_pages(store: Any, rtype: str, first: Params, duration: float) -> dict[str, Any]:
    """Follow ``next`` links of a ``_count=50`` search (restarting at the end)."""
    n = entries = 0
    params = first
    end = time.perf_counter() + duration
    started = time.perf_counter()
    while time.perf_counter() < end:
        bundle = await run(store, rtype, params)
        n += 1
        entries += len(bundle.get("entry", ()))
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        params = parse_qsl(urlsplit(nxt[0]).query) if nxt else first
    took = time.perf_counter() - started
    return {"searches_per_s": round(n / took, 1), "entries_per_search": round(entries / n, 1), "searches": n}


async def throughput_each(store: Any, rtype: str, maker: Callable[[], Params], duration: float) -> dict[str, Any]:
    n = entries = 0
    end = time.perf_counter() + duration
    started = time.perf_counter()
    while time.perf_counter() < end:
        bundle = await run(store, rtype, maker())
        n += 1
        entries += len(bundle.get("entry", ()))
    took = time.perf_counter() - started
    return {"searches_per_s": round(n / took, 1), "entries_per_search": round(entries / n, 1), "searches": n}


async def bench(size: int, seed: int, repeat: int, duration: float) -> dict[str, Any]:
    from fhir_server.storage.sqlite import search_index
    from fhir_server.storage.sqlite.store import SqliteStore

    load = await ensure_database(size, seed)
    path = db_path(size, seed)
    if "service_type_reindex_seconds" in load:
        # registered before the store opens, so that a rebuild of an index of an older
        # layout (at open) indexes it too
        search_index.registry().add(SERVICE_TYPE)
    with sqlite3.connect(path) as conn:
        (layout,) = conn.execute("PRAGMA user_version").fetchone()
    store = SqliteStore(str(path))
    started = time.perf_counter()
    await store.open()
    if layout != search_index.LAYOUT:
        load["index_layout"] = search_index.LAYOUT
        load[f"index_layout_{layout}_upgraded_at_open_seconds"] = round(
            time.perf_counter() - started, 1
        )
        path.with_suffix(".load.json").write_text(json.dumps(load, indent=2))
    try:
        if "service_type_reindex_seconds" not in load:
            # R4 Encounter has no service-type parameter: the rehab one, registered as
            # the write path does for a SearchParameter (indexing existing Encounters)
            started = time.perf_counter()
            # (in one database transaction; the store is idle here)
            store.writer.execute("BEGIN IMMEDIATE")
            _, n = search_index.register_search_parameter(store.writer, SERVICE_TYPE)
            store.writer.execute("COMMIT")
            load["service_type_reindex_seconds"] = round(time.perf_counter() - started, 1)
            load["service_type_reindexed"] = n
            db_path(size, seed).with_suffix(".load.json").write_text(json.dumps(load, indent=2))
        else:
            search_index.registry().add(SERVICE_TYPE)
        s = Samples(store.reader, seed)
        rows = []
        for name, kind, rtype, maker in queries(s):
            figures, hits = await latency(store, maker, rtype, repeat)
            rows.append({"query": name, "kind": kind, **figures, "entries": round(hits, 1)})
        disc = synthetic.DISCIPLINE
        tp = {
            "Encounter?service-type=PT&_count=50, following next links": await throughput_pages(
                store, "Encounter", [("service-type", f"{disc}|PT"), ("_count", "50")], duration
            ),
            "Encounter?service-type=PT&_count=50&_total=none, following next links": await throughput_pages(
                store, "Encounter",
                [("service-type", f"{disc}|PT"), ("_count", "50"), ("_total", "none")], duration,
            ),
            "Procedure?subject=Patient/<random>&_count=50": await throughput_each(
                store, "Procedure", lambda: [("subject", f"Patient/{s.pick(s.patients)}"), ("_count", "50")], duration
            ),
            "Encounter?date=<random day>&_count=50": await throughput_each(
                store, "Encounter", lambda: [("date", s.pick(s.days).isoformat()), ("_count", "50")], duration
            ),
        }
        counts = dict(
            store.reader.execute(
                "SELECT type, count(*) FROM resource WHERE content IS NOT NULL GROUP BY type"
            ).fetchall()
        )
    finally:
        await store.close()
    selective = [
        r["p95_ms"]
        for r in rows
        if r["kind"] == "selective" and r["query"].startswith(("token", "reference"))
    ]
    return {
        "size": size,
        "seed": seed,
        "measured": "in-process, single thread, through fhir_server.interactions.search.search on a SqliteStore (no HTTP)",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "sqlite": sqlite3.sqlite_version, "platform": platform.platform()},
        "load": load,
        "resources_by_type": counts,
        "repeat": repeat,
        "latency": rows,
        "throughput": tp,
        "goals": GOALS,
        "goals_met": {
            "selective_p95_ms": max(selective) < GOALS["selective_p95_ms"],
            "count50_searches_per_s": min(
                v["searches_per_s"] for k, v in tp.items() if "_total=none" in k or "random" in k
            ) >= GOALS["count50_searches_per_s"],
        },
    }


def markdown(report: dict[str, Any]) -> str:
    load = report["load"]
    out = [
        f"## Search, {report['size']:,} resources (seed {report['seed']})",
        "",
        f"Measured {report['measured']}; {report['machine']['cpus']} CPUs, Python {report['machine']['python']}, SQLite {report['machine']['sqlite']}.",
        f"Load: {load['resources']:,} resources in {load['load_seconds']:,} s ({load['load_resources_per_s']:,}/s, units of work of {load['batch']:,}); database {load['file_bytes'] / 1e9:.2f} GB.",
        "",
        "| query | p50 ms | p95 ms | entries |",
        "|---|---:|---:|---:|",
    ]
    for r in report["latency"]:
        out.append(f"| {r['query']} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['entries']} |")
    out += ["", "| throughput (`_count=50`) | searches/s | entries/search |", "|---|---:|---:|"]
    for name, v in report["throughput"].items():
        out.append(f"| {name} | {v['searches_per_s']:,.0f} | {v['entries_per_search']} |")
    out += ["", "Goals: " + ", ".join(f"{k} {'met' if ok else 'NOT met'}" for k, ok in report["goals_met"].items())]
    return "\n".join(out)


def cell(text: str) -> str:
    """``text`` in a Markdown table cell (``|`` escaped)."""
    return text.replace("|", "\\|")


def summary(reports: list[dict[str, Any]]) -> str:
    """One Markdown table of several sizes' results (latency p50/p95 side by side, then
    throughput), for the README."""
    reports = sorted(reports, key=lambda r: r["size"])
    sizes = [f"{r['size']:,}" for r in reports]
    machine = reports[0]["machine"]
    out = [
        "## Search benchmark (`python -m bench.search`)",
        "",
        f"Synthetic rehab clinic ({', '.join(sizes)} resources, seed {reports[0]['seed']});"
        f" {reports[0]['measured']}; {machine['cpus']} CPUs, Python {machine['python']},"
        f" SQLite {machine['sqlite']}. Measured {', '.join(r['when'] for r in reports)}.",
        "",
        "| query | " + " | ".join(f"p50 ms ({n}) | p95 ms ({n})" for n in sizes) + " |",
        "|---|" + "---:|---:|" * len(reports),
    ]
    by_query = [{row["query"]: row for row in r["latency"]} for r in reports]
    for name in by_query[0]:
        cells = []
        for rows in by_query:
            row = rows.get(name)
            cells += [f"{row['p50_ms']:.2f}", f"{row['p95_ms']:.2f}"] if row else ["", ""]
        out.append(f"| {cell(name)} | " + " | ".join(cells) + " |")
    out += [
        "",
        "| throughput (`_count=50`) | " + " | ".join(f"searches/s ({n})" for n in sizes) + " |",
        "|---|" + "---:|" * len(reports),
    ]
    for name in reports[0]["throughput"]:
        cells = [
            f"{r['throughput'][name]['searches_per_s']:,.0f}" if name in r["throughput"] else ""
            for r in reports
        ]
        out.append(f"| {cell(name)} | " + " | ".join(cells) + " |")
    out += ["", "Goals (p95 < 20 ms for selective searches, >= 500 searches/s for `_count=50`):"]
    for r in reports:
        met = ", ".join(f"{k} {'met' if ok else 'NOT met'}" for k, ok in r["goals_met"].items())
        out.append(f"- {r['size']:,}: {met}")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=200, help="runs per latency query")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per throughput phase")
    ap.add_argument(
        "--summary",
        action="store_true",
        help="write bench/results/search.md from the search-<size>.json results (no run)",
    )
    args = ap.parse_args(argv)
    if args.summary:
        reports = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("search-*.json"))]
        text = summary(reports)
        (RESULTS / "search.md").write_text(text)
        print(text)
        return
    report = asyncio.run(bench(args.size, args.seed, args.repeat, args.duration))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"search-{args.size}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))


if __name__ == "__main__":
    main()
