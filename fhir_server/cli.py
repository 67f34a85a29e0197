"""The `fhir-server` command: serve, load."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from fhir_server.settings import Settings

DEFAULT_DATABASE = Settings().database
DEMO_DIR = Path(__file__).resolve().parent.parent / "examples"


def _settings(args: argparse.Namespace) -> Settings:
    return Settings(
        database=args.database,
        host=getattr(args, "host", "127.0.0.1"),
        port=getattr(args, "port", 8080),
    )


def _conformance_files() -> list[Path]:
    root = DEMO_DIR.parent
    return [
        f
        for d in (root / "profiles", root / "terminology")
        if d.is_dir()
        for f in sorted(d.glob("*.json"))
    ]


def _files(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(
                f for f in p.rglob("*") if f.name.endswith((".json", ".ndjson", ".ndjson.gz"))
            )
        else:
            out.append(p)
    return out


async def _load(settings: Settings, files: list[Path], quiet: bool = False) -> int:
    from tqdm import tqdm

    from fhir_server.app import make_store
    from fhir_server.interactions.context import Context
    from fhir_server.loader import LoadReport, load_resources, read_file

    store = make_store(settings.database)
    await store.open()
    ctx = Context(store=store, settings=settings)
    total = LoadReport()
    try:
        with tqdm(unit=" resources", disable=quiet, file=sys.stderr) as bar:
            for f in files:
                bar.set_description(f.name)
                report = await load_resources(
                    ctx,
                    read_file(f),
                    progress=bar.update,
                    errors=lambda m: tqdm.write(f"error: {m}", file=sys.stderr),
                )
                total.merge(report)
    finally:
        await store.close()
    print(
        f"loaded {total.written} resources ({total.unchanged} unchanged,"
        f" {total.transactions} transactions, {total.failed} failed)",
        file=sys.stderr,
    )
    return 1 if total.failed else 0


def cmd_load(args: argparse.Namespace) -> int:
    return asyncio.run(_load(_settings(args), _files(args.files), args.quiet))


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    # The rehab IG's conformance resources are served like any other resource.
    rc = asyncio.run(_load(settings, _conformance_files(), quiet=True))
    if rc:
        print("the conformance resources did not load cleanly", file=sys.stderr)
    if args.demo:
        rc = asyncio.run(_load(settings, _files([str(DEMO_DIR)]), quiet=True))
        if rc:
            print("the demo data did not load cleanly", file=sys.stderr)
    from fhir_server.app import create_app

    app = create_app(settings)
    print(f"FHIR R4 server at {settings.base_url}", file=sys.stderr)
    if args.server == "granian":
        from granian.constants import Interfaces
        from granian.server.embed import Server

        server = Server(app, address=settings.host, port=settings.port, interface=Interfaces.ASGI)
        asyncio.run(server.serve())
    else:
        import uvicorn

        uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from fhir_server.validation.cli import validate_files

    return validate_files([Path(f) for f in args.files], profile=args.profile)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fhir-server", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the FHIR server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--database", default=DEFAULT_DATABASE)
    serve.add_argument("--demo", action="store_true", help="load the demo clinic first")
    serve.add_argument("--server", choices=("uvicorn", "granian"), default="uvicorn")
    serve.set_defaults(func=cmd_serve)
    load = sub.add_parser("load", help="import Bundles and NDJSON files")
    load.add_argument("files", nargs="+")
    load.add_argument("--database", default=DEFAULT_DATABASE)
    load.add_argument("--quiet", action="store_true")
    load.set_defaults(func=cmd_load)
    check = sub.add_parser(
        "validate", help="validate resources/Bundles offline; prints OperationOutcomes"
    )
    check.add_argument("files", nargs="+")
    check.add_argument("--profile", help="canonical URL of a profile to validate against")
    check.set_defaults(func=cmd_validate)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
