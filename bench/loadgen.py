"""Load generator: runs one benchmark phase against a running server, in its own process.

Reads a JSON configuration on stdin and writes a JSON result on stdout. Phases:

- ``create``: POST a Patient per request (closed loop: each connection sends its next
  request when the previous answer arrived). Writes the created ids to ``ids_file``.
- ``read``: GET ``Patient/{id}`` of random existing ids (closed loop).
- ``read_rate``: the same reads at a fixed arrival rate (open loop); latency counts from
  each request's scheduled start, so a stalled server cannot hide queueing delay.
- ``transaction``: POST transaction Bundles of ``bundle_size`` entries (half Patients,
  half Observations referencing them by ``urn:uuid``), closed loop.

Besides latencies it reports the CPU time used by this process and by the server
process (from ``/proc``) during the measured window, and the machine's idle share, so
one can see which side is saturated.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from bench.httpclient import HttpConnection

Request = tuple[str, str, bytes | None]  # method, target, body


@dataclass
class Config:
    host: str
    port: int
    base_path: str
    phase: str
    duration: float
    warmup: float
    concurrency: int
    server_pid: int | None = None
    ids_file: str | None = None
    rate: float = 1500.0
    bundle_size: int = 100
    seed: int = 1

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Config:
        return cls(**data)


@dataclass
class Recorder:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    ids: list[str] = field(default_factory=list)


# -- request bodies ----------------------------------------------------------------------


def patient(i: int) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:example:bench", "value": f"bench-{i}"}],
        "active": True,
        "name": [{"use": "official", "family": f"Bench{i % 997}", "given": ["Load", f"T{i}"]}],
        "gender": ("female", "male", "other", "unknown")[i % 4],
        "birthDate": f"{1930 + i % 80}-{1 + i % 12:02d}-{1 + i % 28:02d}",
        "address": [{"line": [f"{i} Main St"], "city": "Springfield", "postalCode": "12345"}],
        "telecom": [{"system": "phone", "value": f"555-{i % 10000:04d}", "use": "home"}],
    }


def observation(i: int, subject: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
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
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}], "text": "HR"},
        "subject": {"reference": subject},
        "effectiveDateTime": "2024-03-01T10:00:00Z",
        "valueQuantity": {
            "value": 50 + i % 60,
            "unit": "beats/minute",
            "system": "http://unitsofmeasure.org",
            "code": "/min",
        },
    }


def transaction_bundle(size: int, start: int) -> bytes:
    entries: list[dict[str, Any]] = []
    patients = size - size // 2
    urls = [f"urn:uuid:{uuid.uuid4()}" for _ in range(patients)]
    for k, url in enumerate(urls):
        entries.append(
            {
                "fullUrl": url,
                "resource": patient(start + k),
                "request": {"method": "POST", "url": "Patient"},
            }
        )
    for k in range(size // 2):
        entries.append(
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": observation(start + k, urls[k % patients]),
                "request": {"method": "POST", "url": "Observation"},
            }
        )
    return orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})


# -- CPU accounting ----------------------------------------------------------------------


def process_cpu(pid: int | None) -> float | None:
    """CPU seconds (user + system, all threads) used so far by a process."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime


def machine_idle() -> tuple[float, float, float] | None:
    """(idle, total, steal) jiffies of all CPUs so far (guest time is part of user)."""
    try:
        with open("/proc/stat") as f:
            parts = [int(x) for x in f.readline().split()[1:9]]
    except OSError:
        return None
    return float(parts[3] + parts[4]), float(sum(parts)), float(parts[7])


# -- the phases --------------------------------------------------------------------------


def make_requests(cfg: Config) -> Callable[[int], Request]:
    base = cfg.base_path.rstrip("/")
    rng = random.Random(cfg.seed)
    if cfg.phase == "create":
        bodies = [orjson.dumps(patient(i)) for i in range(512)]
        return lambda n: ("POST", f"{base}/Patient", bodies[n % len(bodies)])
    if cfg.phase in ("read", "read_rate"):
        assert cfg.ids_file, "read phases need ids_file"
        with open(cfg.ids_file) as f:
            ids = [line.strip() for line in f if line.strip()]
        assert ids, "no ids to read"
        targets = [f"{base}/Patient/{i}" for i in ids]
        return lambda n: ("GET", targets[rng.randrange(len(targets))], None)
    if cfg.phase == "transaction":
        bundles = [transaction_bundle(cfg.bundle_size, k * cfg.bundle_size) for k in range(16)]
        return lambda n: ("POST", base, bundles[n % len(bundles)])
    raise SystemExit(f"unknown phase {cfg.phase!r}")


async def _send(
    conn: HttpConnection, req: Request, rec: Recorder | None, started: float, keep_ids: bool
) -> None:
    method, target, body = req
    try:
        resp = await conn.request(method, target, body)
    except (OSError, asyncio.IncompleteReadError, ValueError):
        await conn.close()
        if rec is not None:
            rec.errors += 1
        return
    done = time.perf_counter()
    if rec is None:
        return
    rec.statuses[resp.status] += 1
    if resp.status >= 300:
        rec.errors += 1
        return
    rec.latencies.append(done - started)
    if keep_ids:
        location = resp.headers.get(b"location", b"").decode()
        rec.ids.append(location.split("/Patient/")[1].split("/")[0])


async def closed_loop(
    cfg: Config, make: Callable[[int], Request], seconds: float, rec: Recorder | None
) -> float:
    stop_at = time.perf_counter() + seconds
    counter = iter(range(1 << 62))
    keep_ids = cfg.phase == "create"

    async def worker() -> None:
        conn = HttpConnection(cfg.host, cfg.port)
        try:
            while time.perf_counter() < stop_at:
                req = make(next(counter))
                await _send(conn, req, rec, time.perf_counter(), keep_ids)
        finally:
            await conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(cfg.concurrency)))
    return time.perf_counter() - start


async def open_loop(
    cfg: Config, make: Callable[[int], Request], seconds: float, rec: Recorder | None
) -> float:
    """Requests start at a fixed rate whatever the server does (up to `concurrency`
    connections in flight; beyond that they wait for a connection, and that wait counts
    in their latency)."""
    pool: asyncio.Queue[HttpConnection] = asyncio.Queue()
    conns = [HttpConnection(cfg.host, cfg.port) for _ in range(cfg.concurrency)]
    for c in conns:
        await c.connect()
        pool.put_nowait(c)
    tasks: set[asyncio.Task[None]] = set()

    async def one(n: int, scheduled: float) -> None:
        conn = await pool.get()
        try:
            await _send(conn, make(n), rec, scheduled, False)
        finally:
            pool.put_nowait(conn)

    total = int(seconds * cfg.rate)
    start = time.perf_counter()
    for n in range(total):
        scheduled = start + n / cfg.rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(n, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    for c in conns:
        await c.close()
    return elapsed


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    rank = math.ceil(q / 100 * len(sorted_values))  # nearest-rank
    return sorted_values[min(len(sorted_values), max(1, rank)) - 1]


async def run(cfg: Config) -> dict[str, Any]:
    make = make_requests(cfg)
    loop = open_loop if cfg.phase == "read_rate" else closed_loop
    if cfg.warmup > 0:
        await loop(cfg, make, cfg.warmup, None)
    rec = Recorder()
    cpu0, srv0, idle0 = time.process_time(), process_cpu(cfg.server_pid), machine_idle()
    elapsed = await loop(cfg, make, cfg.duration, rec)
    cpu1, srv1, idle1 = time.process_time(), process_cpu(cfg.server_pid), machine_idle()
    lat = sorted(rec.latencies)
    ok = len(lat)
    per_request = cfg.bundle_size if cfg.phase == "transaction" else 1
    result: dict[str, Any] = {
        "phase": cfg.phase,
        "concurrency": cfg.concurrency,
        "elapsed_s": round(elapsed, 3),
        "requests_ok": ok,
        "errors": rec.errors,
        "statuses": {str(k): v for k, v in sorted(rec.statuses.items())},
        "requests_per_s": round(ok / elapsed, 1),
        "resources_per_s": round(ok * per_request / elapsed, 1),
        "p50_ms": round(percentile(lat, 50) * 1000, 2),
        "p95_ms": round(percentile(lat, 95) * 1000, 2),
        "p99_ms": round(percentile(lat, 99) * 1000, 2),
        "max_ms": round(lat[-1] * 1000, 2) if lat else None,
        "loadgen_cpu_share": round((cpu1 - cpu0) / elapsed, 3),
    }
    if cfg.phase == "read_rate":
        result["target_rate"] = cfg.rate
    if cfg.phase == "transaction":
        result["bundle_size"] = cfg.bundle_size
    if srv0 is not None and srv1 is not None:
        result["server_cpu_share"] = round((srv1 - srv0) / elapsed, 3)
        # CPU the server spent per request: unlike throughput, barely affected when
        # other work on the machine competes for the cores
        if ok:
            result["server_cpu_ms_per_request"] = round((srv1 - srv0) / ok * 1000, 3)
    if idle0 and idle1 and idle1[1] > idle0[1]:
        total = idle1[1] - idle0[1]
        steal = (idle1[2] - idle0[2]) / total
        busy = 1 - (idle1[0] - idle0[0]) / total - steal
        cores = os.cpu_count() or 1
        result["machine_busy_share"] = round(busy, 3)  # of all cores
        # CPU (in cores) used by anything else on the machine during the measurement,
        # and CPU the hypervisor gave to other guests (steal)
        others = busy * cores - result["loadgen_cpu_share"]
        others -= result.get("server_cpu_share", 0.0)
        result["other_cpu_cores"] = round(max(0.0, others), 2)
        result["steal_cores"] = round(steal * cores, 2)
    if cfg.phase == "create" and cfg.ids_file:
        with open(cfg.ids_file, "w") as f:
            f.write("\n".join(rec.ids))
    return result


def main() -> int:
    cfg = Config.from_json(json.load(sys.stdin))
    result = asyncio.run(run(cfg))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
