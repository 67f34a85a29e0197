"""Benchmark: ``python -m bench.run`` (or ``make bench``). See bench/README.md.

For each HTTP server (uvicorn, granian) it starts ``fhir-server serve`` in a subprocess
on a fresh SQLite file, runs the load generator (:mod:`bench.loadgen`, another
process) phase by phase, prints a Markdown table and writes a JSON report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
PHASES = ("create", "read", "read_rate", "transaction")
GOALS = {
    "transaction_resources_per_s": 1500.0,
    "reads_per_s": 1500.0,
    "read_p95_ms": 10.0,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib: float | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "ram_gib": mem_gib,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "sqlite": sqlite3.sqlite_version,
        "packages": {
            d: version(d) for d in ("fhir-server", "uvicorn", "granian", "fastapi", "orjson")
        },
    }


@contextmanager
def server_process(kind: str, workdir: Path) -> Iterator[tuple[int, int]]:
    """A running server: yields (port, pid)."""
    port = free_port()
    db = workdir / f"{kind}.sqlite"
    cmd = [
        sys.executable, "-m", "fhir_server.cli", "serve",
        "--database", f"sqlite:///{db}", "--port", str(port), "--server", kind, "--no-auth",
    ]  # fmt: skip
    log = (workdir / f"{kind}.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        url = f"http://127.0.0.1:{port}/fhir/metadata"
        while True:
            if proc.poll() is not None:
                log.flush()
                raise RuntimeError(
                    f"{kind} server exited:\n{(workdir / f'{kind}.log').read_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind} server did not start")
            time.sleep(0.1)
        yield port, proc.pid
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:9]]
    return parts[3] + parts[4], sum(parts)


def wait_quiet(max_wait: float, threshold: float = 0.25) -> float:
    """Wait (up to `max_wait` s) until other work uses under `threshold` cores."""
    started = time.monotonic()
    if max_wait <= 0 or not Path("/proc/stat").exists():
        return 0.0
    cores = os.cpu_count() or 1
    while time.monotonic() - started < max_wait:
        idle0, total0 = _cpu_times()
        time.sleep(0.5)
        idle1, total1 = _cpu_times()
        if total1 > total0 and (1 - (idle1 - idle0) / (total1 - total0)) * cores < threshold:
            break
    return round(time.monotonic() - started, 1)


def run_phase(config: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.loadgen"],
        input=json.dumps(config).encode(),
        capture_output=True,
        cwd=ROOT,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{out.stderr.decode()[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def calibrate(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The load generator's own ceiling: reads against a server that does no work."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.nullserver", str(port)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the null server did not start") from None
                time.sleep(0.05)
        ids_file = workdir / "null-ids.txt"
        ids_file.write_text("x\n")
        return run_phase(
            {
                "host": "127.0.0.1",
                "port": port,
                "base_path": "/fhir",
                "phase": "read",
                "duration": min(args.duration, 4.0),
                "warmup": 0.5,
                "concurrency": args.concurrency,
                "server_pid": proc.pid,
                "ids_file": str(ids_file),
            }
        )
    finally:
        proc.terminate()
        proc.wait(10)


def bench_server(kind: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    ids_file = str(workdir / f"{kind}-ids.txt")
    with server_process(kind, workdir) as (port, pid):
        for phase in args.phases:
            config: dict[str, Any] = {
                "host": "127.0.0.1",
                "port": port,
                "base_path": "/fhir",
                "phase": phase,
                "duration": args.duration,
                "warmup": args.warmup,
                "concurrency": args.concurrency,
                "server_pid": pid,
                "ids_file": ids_file,
                "rate": args.read_rate,
                "bundle_size": args.bundle_size,
            }
            if phase == "transaction":
                config["concurrency"] = args.tx_concurrency
            if phase == "read_rate":
                config["concurrency"] = max(args.concurrency, 32)
            print(f"  {kind}: {phase} ...", file=sys.stderr, flush=True)
            waited = wait_quiet(args.quiet_wait)
            results[phase] = run_phase(config)
            if args.quiet_wait > 0:
                results[phase]["waited_for_quiet_s"] = waited
    return results


def goals(servers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind, r in servers.items():
        checks: dict[str, Any] = {}
        if "transaction" in r:
            value = r["transaction"]["resources_per_s"]
            checks["transaction_resources_per_s"] = {
                "value": value, "goal": f">= {GOALS['transaction_resources_per_s']:g}",
                "met": value >= GOALS["transaction_resources_per_s"],
            }  # fmt: skip
        if "read" in r:
            value = r["read"]["requests_per_s"]
            checks["reads_per_s"] = {
                "value": value, "goal": f">= {GOALS['reads_per_s']:g}",
                "met": value >= GOALS["reads_per_s"],
            }  # fmt: skip
        for phase in ("read", "read_rate"):
            if phase in r:
                value = r[phase]["p95_ms"]
                checks[f"{phase}_p95_ms"] = {
                    "value": value, "goal": f"< {GOALS['read_p95_ms']:g}",
                    "met": value < GOALS["read_p95_ms"],
                }  # fmt: skip
        out[kind] = checks
    return out


LABELS = {
    "create": "create (POST Patient)",
    "read": "read (GET Patient/id)",
    "read_rate": "read at fixed rate",
    "transaction": "transaction",
}


DISTURBED = 0.3  # cores used by other work during a measurement before it is flagged


def _row(kind: str, label: str, r: dict[str, Any]) -> str:
    other = r.get("other_cpu_cores")
    flag = " (*)" if other is not None and other > DISTURBED else ""
    per_req = r.get("server_cpu_ms_per_request")
    return (
        f"| {kind} | {label}{flag} | {r['concurrency']} | {r['requests_per_s']:,.0f} "
        f"| {r['resources_per_s']:,.0f} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} "
        f"| {r['p99_ms']:.2f} | {r['errors']} | {r.get('server_cpu_share', 0):.0%} "
        f"| {'n/a' if per_req is None else f'{per_req:.3f}'} "
        f"| {r['loadgen_cpu_share']:.0%} | {'n/a' if other is None else f'{other:.0%}'} |"
    )


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"Machine: {m['cores']} cores, {m['cpu_model']}, {m['ram_gib']} GiB RAM, "
        f"{m['implementation']} {m['python']}, SQLite {m['sqlite']}",
        "",
        "| server | phase | conc. | requests/s | resources/s | p50 ms | p95 ms | p99 ms "
        "| errors | server CPU | server CPU ms/req | loadgen CPU | other CPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    cal = report.get("loadgen_calibration")
    if cal:
        lines.append(_row("null server", "read (load generator ceiling)", cal))
    for kind, phases in report["servers"].items():
        for phase, r in phases.items():
            label = LABELS.get(phase, phase)
            if phase == "read_rate":
                label += f" ({r['target_rate']:g}/s)"
            if phase == "transaction":
                label += f" ({r['bundle_size']} entries)"
            lines.append(_row(kind, label, r))
    lines += [
        "",
        "CPU columns are in cores (100% = one core busy for the whole measurement); "
        "'other' is CPU used meanwhile by everything else, including the kernel's loopback "
        "networking. 'server CPU ms/req' is server CPU time per successful request (per "
        f"Bundle for transactions). (*): other work used more than {DISTURBED:g} cores during "
        "the measurement, so its throughput and latency understate the server.",
    ]
    lines += ["", "| server | goal | value | target | met |", "|---|---|---:|---|---|"]
    for kind, checks in report["goals"].items():
        for name, c in checks.items():
            lines.append(
                f"| {kind} | {name} | {c['value']:,} | {c['goal']} | {'yes' if c['met'] else 'NO'} |"
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    p.add_argument("--servers", default="uvicorn,granian", help="comma-separated")
    p.add_argument("--phases", default=",".join(PHASES), help="comma-separated, in order")
    p.add_argument("--duration", type=float, default=6.0, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=1.5, help="unmeasured seconds per phase")
    p.add_argument("--concurrency", type=int, default=8, help="connections (create, read)")
    p.add_argument("--tx-concurrency", type=int, default=4, help="connections (transaction)")
    p.add_argument("--read-rate", type=float, default=1500.0, help="arrivals/s for read_rate")
    p.add_argument("--bundle-size", type=int, default=100)
    p.add_argument(
        "--quiet-wait", type=float, default=0.0, metavar="SECONDS",
        help="before each phase, wait up to this long for other work on the machine to stop",
    )  # fmt: skip
    p.add_argument(
        "--no-calibrate", dest="calibrate", action="store_false",
        help="skip measuring the load generator against a do-nothing server",
    )  # fmt: skip
    p.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    args = p.parse_args(argv)
    args.servers = [s for s in args.servers.split(",") if s]
    args.phases = [s for s in args.phases.split(",") if s]
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        p.error(f"unknown phases: {', '.join(sorted(unknown))}")
    if ("read" in args.phases or "read_rate" in args.phases) and "create" not in args.phases:
        p.error("the read phases read what the create phase created; keep 'create'")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "config": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "concurrency": args.concurrency,
            "tx_concurrency": args.tx_concurrency,
            "read_rate": args.read_rate,
            "bundle_size": args.bundle_size,
            "bundle_mix": "half Patients, half Observations referencing them by urn:uuid",
        },
        "servers": {},
    }
    with tempfile.TemporaryDirectory(prefix="fhir-bench-") as tmp:
        if args.calibrate:
            print("calibrating the load generator", file=sys.stderr, flush=True)
            report["loadgen_calibration"] = calibrate(args, Path(tmp))
        for kind in args.servers:
            print(f"benchmarking {kind}", file=sys.stderr, flush=True)
            report["servers"][kind] = bench_server(kind, args, Path(tmp))
    report["goals"] = goals(report["servers"])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
