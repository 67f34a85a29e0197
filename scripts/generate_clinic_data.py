"""Generate a synthetic rehab clinic (see ``bench/synthetic.py``): NDJSON or a database.

    python scripts/generate_clinic_data.py --size 100000 --out clinic/          # NDJSON.gz
    python scripts/generate_clinic_data.py --size 100000 --sqlite clinic.sqlite  # loaded

The same ``--size`` and ``--seed`` always give the same resources. ``--sqlite`` writes
through the SQLite store's units of work (``--batch`` resources each) into a new
database file and prints the load rate.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import synthetic


async def _load(path: Path, size: int, seed: int, batch: int) -> None:
    from fhir_server.storage.sqlite.store import SqliteStore

    if path.exists():
        raise SystemExit(f"{path} exists; give a new file")
    store = SqliteStore(str(path))
    await store.open()
    last = [time.perf_counter()]

    def progress(n: int) -> None:
        now = time.perf_counter()
        if now - last[0] > 10 or n == size:
            last[0] = now
            print(f"  {n:>10,} resources", file=sys.stderr)

    try:
        stats = await synthetic.load_into_store(
            store, synthetic.generate(size, seed), batch=batch, progress=progress
        )
        store.writer.execute("PRAGMA optimize")
    finally:
        await store.close()
    print(
        f"loaded {stats.resources:,} resources in {stats.seconds:.1f} s"
        f" ({stats.per_second:,.0f} resources/s) into {path}"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=100_000, help="total number of resources")
    ap.add_argument("--seed", type=int, default=7)
    target = ap.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=Path, help="directory for <Type>.ndjson.gz files")
    target.add_argument("--sqlite", type=Path, help="new SQLite database file to load")
    ap.add_argument("--no-gzip", action="store_true", help="plain .ndjson files")
    ap.add_argument("--batch", type=int, default=5000, help="resources per unit of work")
    args = ap.parse_args(argv)
    if args.sqlite is not None:
        asyncio.run(_load(args.sqlite, args.size, args.seed, args.batch))
        return
    started = time.perf_counter()
    counts = synthetic.write_ndjson(
        synthetic.generate(args.size, args.seed), args.out, gz=not args.no_gzip
    )
    for rtype, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"{rtype:<18} {n:>10,}")
    print(f"{sum(counts.values()):,} resources in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
