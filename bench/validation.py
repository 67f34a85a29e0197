"""Validation throughput: ``python -m bench.validation``.

Measured in-process, single thread, on resources already parsed (:func:`fhir_server.jsonio.loads`,
as the server parses a body), three levels:

* ``base``: :func:`fhir_server.validation.validate_resource` (structure, cardinality,
  primitive formats, required bindings, references);
* ``base+invariants``: the same, then :func:`fhir_server.validation.check_invariants`
  on a structurally valid resource (what :func:`~fhir_server.validation.validate` does);
* ``base+invariants+profiles``: :func:`fhir_server.validation.validate` with the rehab
  profile of the resource's type (if there is one) and its ``meta.profile``, the known
  extension definitions, and the rehab terminology answering bindings and ``memberOf()``
  (as the server wires it).

Corpora: the demo clinic (``examples/demo-clinic.json``, every resource but the
Organizations, Locations, Conditions and ServiceRequests declares a rehab profile) and
the official R4 examples (``tests/data/r4-examples.ndjson.gz``; with profiles, the ones
whose type has a rehab profile are checked against it, mostly failing it: the cost of a
profile on foreign data).

Each (corpus, level) runs one warm-up pass (compiled profiles and FHIRPath, value set
expansions are cached), then whole passes over the corpus until ``--seconds`` have passed
(at least ``--min-passes``); every call is timed. Throughput is resources validated per
second of validation time; p50/p95 are per resource. Prints a Markdown table and writes
``bench/results/validation.json``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fhir_server import jsonio
from fhir_server import terminology as tx
from fhir_server.errors import Issue, has_errors
from fhir_server.validation import check_invariants, default_registry, validate, validate_resource

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
DEMO = ROOT / "examples" / "demo-clinic.json"
R4_EXAMPLES = ROOT / "tests" / "data" / "r4-examples.ndjson.gz"
PROFILE_BASE = "http://rehabfhir.org/fhir/StructureDefinition/"

Json = dict[str, Any]
Validator = Callable[[Json], list[Issue]]


def rehab_profiles() -> dict[str, str]:
    """Resource type -> URL of its rehab profile (profiles/ in the registry)."""
    registry = default_registry()
    out: dict[str, str] = {}
    for url in registry.urls():
        if not url.startswith(PROFILE_BASE):
            continue
        rtype = registry.type_of(url)
        if rtype and rtype != "Extension":
            out[rtype] = url
    return out


def load_corpora() -> dict[str, list[Json]]:
    bundle = jsonio.loads(DEMO.read_bytes())
    demo = [e["resource"] for e in bundle["entry"]]
    with gzip.open(R4_EXAMPLES, "rb") as f:
        r4 = [jsonio.loads(line) for line in f if line.strip()]
    return {"demo clinic": demo, "R4 examples": r4}


def base(resource: Json) -> list[Issue]:
    return validate_resource(resource)


def base_and_invariants(resource: Json) -> list[Issue]:
    issues = validate_resource(resource)
    if not has_errors(issues):
        issues += check_invariants(resource)
    return issues


def with_profiles(profile_of: dict[str, str]) -> Validator:
    def run(resource: Json) -> list[Issue]:
        url = profile_of.get(str(resource.get("resourceType")))
        return validate(
            resource,
            profiles=[url] if url else [],
            lookup=tx.value_set_membership,
        )

    return run


def measure(
    resources: Sequence[Json], fn: Validator, *, seconds: float, min_passes: int
) -> dict[str, Any]:
    errors = sum(1 for r in resources if has_errors(fn(r)))  # warm-up pass
    samples: list[int] = []
    by_type: dict[str, list[int]] = {}
    types = [str(r.get("resourceType")) for r in resources]
    passes = 0
    clock = time.perf_counter_ns
    deadline = time.perf_counter() + seconds
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    while passes < min_passes or time.perf_counter() < deadline:
        for r, rtype in zip(resources, types, strict=True):
            t0 = clock()
            fn(r)
            took = clock() - t0
            samples.append(took)
            by_type.setdefault(rtype, []).append(took)
        passes += 1
    cpu_share = (time.process_time() - cpu0) / max(time.perf_counter() - wall0, 1e-9)
    total_s = sum(samples) / 1e9
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {
        "resources": len(resources),
        "with_errors": errors,
        "passes": passes,
        "validations": len(samples),
        "resources_per_s": round(len(samples) / total_s, 1),
        "p50_us": round(cuts[49] / 1000, 1),
        "p95_us": round(cuts[94] / 1000, 1),
        "mean_us": round(statistics.fmean(samples) / 1000, 1),
        "max_us": round(max(samples) / 1000, 1),
        # CPU time / wall time of the measure: well under 1 when the machine is shared
        "cpu_share": round(cpu_share, 2),
        "slowest_types_mean_us": dict(
            sorted(
                ((t, round(statistics.fmean(v) / 1000, 1)) for t, v in by_type.items()),
                key=lambda kv: -kv[1],
            )[:5]
        ),
    }


def run(seconds: float, min_passes: int) -> dict[str, Any]:
    profile_of = rehab_profiles()
    levels: dict[str, Validator] = {
        "base": base,
        "base+invariants": base_and_invariants,
        "base+invariants+profiles": with_profiles(profile_of),
    }
    corpora = load_corpora()
    results: list[dict[str, Any]] = []
    for corpus, resources in corpora.items():
        profiled = sum(1 for r in resources if r.get("resourceType") in profile_of)
        for level, fn in levels.items():
            row: dict[str, Any] = {"corpus": corpus, "level": level}
            row.update(measure(resources, fn, seconds=seconds, min_passes=min_passes))
            if level.endswith("profiles"):
                row["with_a_rehab_profile"] = profiled
            results.append(row)
    return {
        "measured": "in-process, single thread, parsed resources, perf_counter_ns per call",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "seconds_per_measure": seconds,
        "corpora": {
            name: {
                "resources": len(rs),
                "types": dict(Counter(str(r.get("resourceType")) for r in rs).most_common()),
            }
            for name, rs in corpora.items()
        },
        "rehab_profiles": profile_of,
        "results": results,
    }


def table(report: dict[str, Any]) -> str:
    lines = [
        "| corpus | level | resources | with errors | resources/s | p50 µs | p95 µs | mean µs "
        "| CPU share |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['corpus']} | {r['level']} | {r['resources']} | {r['with_errors']} "
            f"| {r['resources_per_s']:,.0f} | {r['p50_us']:,.1f} | {r['p95_us']:,.1f} "
            f"| {r['mean_us']:,.1f} | {r['cpu_share']:.2f} |"
        )
    lines.append("")
    lines.append("Slowest resource types (mean µs) at the full level:")
    for r in report["results"]:
        if r["level"].endswith("profiles"):
            slow = ", ".join(f"{t} {us:,.0f}" for t, us in r["slowest_types_mean_us"].items())
            lines.append(f"- {r['corpus']}: {slow}")
    m = report["machine"]
    lines.append("")
    lines.append(
        f"Measured {report['measured']}; {m['cpus']} CPUs, Python {m['python']}, "
        f"{report['seconds_per_measure']} s per measure."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="time per measure (default 3)")
    ap.add_argument("--min-passes", type=int, default=3, help="passes per measure at least")
    ap.add_argument("--no-write", action="store_true", help="do not write the JSON results")
    args = ap.parse_args(argv)
    report = run(args.seconds, args.min_passes)
    print(table(report))
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "validation.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
