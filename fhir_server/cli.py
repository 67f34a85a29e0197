"""The `fhir-server` command: serve, load, validate, and the authorization server's
clients (`client add|remove`) and signing keys (`keys rotate`)."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from fhir_server.settings import Settings

DEFAULT_DATABASE = Settings().database
DEFAULT_CLIENTS = Settings().auth_clients_path or "./data/clients.json"
DEFAULT_KEYS = Settings().auth_keys_path or "./data/auth-keys.json"
ROLES = ("therapist", "assistant", "front-desk", "biller", "auditor")
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


def default_server() -> str:
    """granian when it is installed (the ``granian`` extra), else uvicorn."""
    import importlib.util

    return "granian" if importlib.util.find_spec("granian") is not None else "uvicorn"


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cmd_serve(args: argparse.Namespace) -> int:
    if args.no_auth and not is_loopback(args.host):
        print(
            f"refusing to serve without authorization on '{args.host}': --no-auth is only"
            " allowed on a loopback address (127.0.0.1, ::1, localhost); drop --no-auth"
            " to require SMART on FHIR access tokens",
            file=sys.stderr,
        )
        return 2
    settings = replace(
        _settings(args),
        auth_enabled=not args.no_auth,
        audit_writer_process=args.audit_writer == "process",
        auth_auto_approve=args.auth_auto_approve,
        auth_clients_path=args.clients,
        auth_keys_path=args.keys,
        auth_external_issuers=tuple(
            (issuer, jwks_uri) for issuer, jwks_uri in args.external_issuer or ()
        ),
    )
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
    if settings.auth_enabled:
        print(
            f"SMART on FHIR: {settings.base_url}/.well-known/smart-configuration"
            f" (clients in {settings.auth_clients_path};"
            " register one with `fhir-server client add`)",
            file=sys.stderr,
        )
        if settings.auth_auto_approve:
            print("warning: every authorization request is approved", file=sys.stderr)
    else:
        print("warning: authorization is off (--no-auth)", file=sys.stderr)
    if args.server == "granian":
        asyncio.run(_serve_granian(app, settings))
    else:
        import uvicorn

        uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
    return 0


async def _serve_granian(app: Any, settings: Settings) -> None:
    """Granian's embedded server, stopped gracefully on SIGINT and SIGTERM: it installs
    no signal handlers itself, and without these a stop skipped the app's shutdown
    (queued audit records written, export files removed, the store closed)."""
    from granian.constants import Interfaces
    from granian.server.embed import Server

    server = Server(app, address=settings.host, port=settings.port, interface=Interfaces.ASGI)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, server.stop)
    await server.serve()


def cmd_validate(args: argparse.Namespace) -> int:
    from fhir_server.validation.cli import validate_files
    from fhir_server.validation.options import ValidationOptions

    options = ValidationOptions(
        security_checks=args.security_checks,
        html_in_markdown=args.html_in_markdown,
        unknown_extensions=args.unknown_extensions,
        allowed_extension_domains=tuple(args.allow_extension_domain),
        example_urls=args.example_urls,
        validate_contained=args.validate_contained,
        resolve_references=args.resolve_references,
        wrong_displays=args.wrong_displays,
    )
    return validate_files(
        [Path(f) for f in args.files],
        profile=args.profile,
        options=options,
        allow_comments=args.allow_json_comments,
    )


def cmd_client_add(args: argparse.Namespace) -> int:
    from fhir_server.auth.clients import ClientError, register_client
    from fhir_server.auth.scopes import role_scopes

    scopes: list[str] = list(args.scope.split()) if args.scope else []
    if args.role:
        scopes += role_scopes(args.role).strings()
    if not scopes:
        print("give the client's scopes with --scope and/or --role", file=sys.stderr)
        return 2
    jwks = None
    if args.jwks:
        try:
            jwks = json.loads(Path(args.jwks).read_text("utf-8"))
        except (OSError, ValueError) as exc:
            print(f"cannot read the JWKS file {args.jwks}: {exc}", file=sys.stderr)
            return 2
    try:
        client, secret = register_client(
            args.clients,
            client_id=args.id,
            client_type="public" if args.public else "confidential",
            redirect_uris=args.redirect_uri or (),
            scopes=list(dict.fromkeys(scopes)),
            jwks=jwks,
            jwks_uri=args.jwks_uri,
            name=args.name,
        )
    except (ClientError, ValueError) as exc:
        print(f"cannot register the client: {exc}", file=sys.stderr)
        return 2
    print(f"registered client '{client.client_id}' ({client.auth_method}) in {args.clients}")
    print(f"scopes: {' '.join(client.scopes)}")
    if secret is not None:
        print(f"client secret (shown once, only its hash is kept): {secret}")
    return 0


def cmd_client_remove(args: argparse.Namespace) -> int:
    from fhir_server.auth.clients import ClientRegistry

    if not ClientRegistry(args.clients).remove(args.id):
        print(f"no client '{args.id}' in {args.clients}", file=sys.stderr)
        return 1
    print(f"removed client '{args.id}'")
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from fhir_server.auth.tokens import rotate_signing_key

    kid = rotate_signing_key(args.keys, args.alg, keep=args.keep)
    print(f"new signing key {kid} in {args.keys}; restart the server to use it")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fhir-server", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the FHIR server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--database", default=DEFAULT_DATABASE)
    serve.add_argument("--demo", action="store_true", help="load the demo clinic first")
    serve.add_argument(
        "--server",
        choices=("uvicorn", "granian"),
        default=default_server(),
        help="HTTP server (default: granian when installed; it measured about twice"
        " uvicorn's read throughput, see bench/)",
    )
    serve.add_argument(
        "--no-auth",
        action="store_true",
        help="serve without authorization (only on a loopback address)",
    )
    serve.add_argument(
        "--auth-auto-approve",
        action="store_true",
        help="approve every authorization request without asking (tests, demos)",
    )
    serve.add_argument(
        "--audit-writer",
        choices=("process", "inline"),
        default="process",
        help="store the audit records of reads and searches from a separate process, on"
        " another CPU core (default), or inline in the server process",
    )
    serve.add_argument("--clients", default=DEFAULT_CLIENTS, help="registered clients (JSON)")
    serve.add_argument("--keys", default=DEFAULT_KEYS, help="token signing keys (JWKS)")
    serve.add_argument(
        "--external-issuer",
        nargs=2,
        action="append",
        metavar=("ISSUER", "JWKS_URL"),
        help="also accept access tokens of this OpenID Connect issuer, verified with the"
        " keys at JWKS_URL (their audience must be this server's base URL; repeat)",
    )
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
    check.add_argument(
        "--unknown-extensions",
        choices=("accept", "error"),
        default="accept",
        help="whether an extension with no known definition is accepted (as on writes, the"
        " default) or an error",
    )
    check.add_argument(
        "--allow-extension-domain",
        action="append",
        default=[],
        metavar="PREFIX",
        help="with --unknown-extensions error: accept unknown extensions whose URL starts"
        " with PREFIX (repeat)",
    )
    check.add_argument(
        "--security-checks",
        action="store_true",
        help="HTML tags in string values are errors",
    )
    check.add_argument(
        "--no-html-in-markdown",
        dest="html_in_markdown",
        action="store_false",
        help="raw HTML tags in markdown values are errors",
    )
    check.add_argument(
        "--no-example-urls",
        dest="example_urls",
        action="store_false",
        help="URLs in domains reserved for examples (example.org ...) are errors",
    )
    check.add_argument(
        "--ignore-contained",
        dest="validate_contained",
        action="store_false",
        help="do not validate the content of contained resources (nor dom-3)",
    )
    check.add_argument(
        "--resolve-references",
        action="store_true",
        help="references between the resources of a Parameters must resolve among them",
    )
    check.add_argument(
        "--wrong-displays",
        choices=("warning", "error"),
        default="warning",
        help="severity of a Coding.display that is not its R4 code system's display (a"
        " warning, as on writes, by default)",
    )
    check.add_argument(
        "--allow-json-comments",
        action="store_true",
        help="accept // and /* */ comments in the files' JSON (not FHIR JSON; for files"
        " kept by hand)",
    )
    check.set_defaults(func=cmd_validate)
    client = sub.add_parser("client", help="register or remove OAuth clients")
    client_sub = client.add_subparsers(dest="client_command", required=True)
    add = client_sub.add_parser("add", help="register (or replace) a client")
    add.add_argument("--id", required=True, help="the client_id")
    kind = add.add_mutually_exclusive_group(required=True)
    kind.add_argument("--public", action="store_true", help="a public client (PKCE only)")
    kind.add_argument("--confidential", action="store_true", help="a confidential client")
    add.add_argument("--redirect-uri", action="append", help="allowed redirect URI (repeat)")
    add.add_argument("--scope", help="the scopes it may ask for, space-separated")
    add.add_argument("--role", choices=ROLES, help="add a staff role's default scopes")
    keys_source = add.add_mutually_exclusive_group()
    keys_source.add_argument("--jwks", help="file of the client's public keys (private_key_jwt)")
    keys_source.add_argument("--jwks-uri", help="URL of the client's public keys")
    add.add_argument("--name", help="shown on the approval page")
    add.add_argument("--clients", default=DEFAULT_CLIENTS)
    add.set_defaults(func=cmd_client_add)
    remove = client_sub.add_parser("remove", help="remove a client")
    remove.add_argument("id")
    remove.add_argument("--clients", default=DEFAULT_CLIENTS)
    remove.set_defaults(func=cmd_client_remove)
    keys = sub.add_parser("keys", help="manage the token signing keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    rotate = keys_sub.add_parser("rotate", help="add a new signing key; keep the previous one")
    rotate.add_argument("--alg", choices=("ES384", "RS384"), default=None)
    rotate.add_argument("--keep", type=int, default=1, help="previous keys still verifying")
    rotate.add_argument("--keys", default=DEFAULT_KEYS)
    rotate.set_defaults(func=cmd_keys_rotate)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
