"""The server with authorization on: tokens are required, scopes enforced, and the
authorization server's routes live next to the FHIR API."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI

from fhir_server.app import create_app
from fhir_server.auth.clients import register_client
from fhir_server.auth.server import JWT_BEARER, AuthServer, s256
from fhir_server.auth.tokens import KeyRing
from fhir_server.settings import Settings
from fhir_server.storage.sqlite.store import SqliteStore

BASE = "http://test/fhir"
TOKEN_URL = "http://test/auth/token"
REDIRECT = "https://app.example/callback"
BACKEND_KEYS = KeyRing.generate("ES384")
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


def auth_settings(tmp: Path, **extra: Any) -> Settings:
    return Settings(
        database=":memory:",
        public_base_url=BASE,
        auth_enabled=True,
        auth_clients_path=str(tmp / "clients.json"),
        auth_keys_path=str(tmp / "keys.json"),
        **extra,
    )


def observation(id: str, patient: str, category: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": id,
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": category}]}],
        "code": {"text": f"{category} reading"},
        "subject": {"reference": f"Patient/{patient}"},
        "performer": [{"reference": "Practitioner/pr1"}],
        **extra,
    }


# Two patients; Ada's lab result is derived from Bob's vital signs, so that an
# ``_include`` from Ada's data reaches Bob's.
SEED: tuple[dict[str, Any], ...] = (
    {"resourceType": "Patient", "id": "pa", "name": [{"family": "Lovelace", "given": ["Ada"]}]},
    {"resourceType": "Patient", "id": "pb", "name": [{"family": "Builder", "given": ["Bob"]}]},
    {"resourceType": "Practitioner", "id": "pr1", "name": [{"family": "Therapist"}]},
    observation("oa-vital", "pa", "vital-signs"),
    observation("oa-lab", "pa", "laboratory", derivedFrom=[{"reference": "Observation/ob-vital"}]),
    observation("ob-vital", "pb", "vital-signs"),
)


class Env:
    def __init__(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        self.app = app
        self.client = client

    @property
    def server(self) -> AuthServer:
        server: AuthServer = self.app.state.auth_server
        return server

    def token(self, scope: str, patient: str | None = None, user: str | None = None) -> str:
        token, _ = self.server.tokens.issue_access_token(
            subject="tester", client_id="tests", scope=scope, patient=patient, fhir_user=user
        )
        return token

    def bearer(self, scope: str, patient: str | None = None) -> dict[str, str]:
        return {"Authorization": "Bearer " + self.token(scope, patient)}


@asynccontextmanager
async def open_env(store: SqliteStore, tmp_path: Path) -> AsyncIterator[Env]:
    """An app with authorization on, its clients and keys under ``tmp_path``, seeded."""
    register_client(
        tmp_path / "clients.json",
        client_id="app",
        client_type="public",
        redirect_uris=[REDIRECT],
        scopes="openid fhirUser launch/patient patient/*.rs",
    )
    register_client(
        tmp_path / "clients.json",
        client_id="backend",
        client_type="confidential",
        scopes="system/*.rs",
        jwks=BACKEND_KEYS.public_jwks(),
    )
    app = create_app(auth_settings(tmp_path, auth_auto_approve=True), store)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        env = Env(app, c)
        admin = env.bearer("system/*.cruds")
        for resource in SEED:
            r = await c.put(
                f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource, headers=admin
            )
            assert r.status_code == 201, r.text
        yield env


@pytest.fixture
async def env(store: SqliteStore, tmp_path: Path) -> AsyncIterator[Env]:
    async with open_env(store, tmp_path) as e:
        yield e


def ids(bundle: dict[str, Any]) -> set[str]:
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", ())
        if e.get("search", {}).get("mode") != "outcome"
    }


# --------------------------------------------------------------------------- gate


async def test_metadata_is_public_and_advertises_smart(env: Env) -> None:
    r = await env.client.get("/fhir/metadata")
    assert r.status_code == 200
    security = r.json()["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    uris = {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}
    assert uris == {"token": TOKEN_URL, "authorize": "http://test/auth/authorize"}
    smart = await env.client.get("/fhir/.well-known/smart-configuration")
    assert smart.status_code == 200 and smart.json()["token_endpoint"] == TOKEN_URL


async def test_metadata_of_an_open_server_has_no_security(client: httpx.AsyncClient) -> None:
    r = await client.get("metadata")
    assert "security" not in r.json()["rest"][0]
    assert (await client.get("Patient")).status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/fhir/Patient"),
        ("GET", "/fhir/Patient/pa"),
        ("GET", "/fhir"),
        ("GET", "/fhir/_history"),
        ("POST", "/fhir/Patient"),
        ("DELETE", "/fhir/Patient/pa"),
        ("GET", "/fhir/ValueSet/$expand"),
        ("GET", "/fhir/metadata/extra"),
    ],
)
async def test_everything_else_needs_a_token(env: Env, method: str, path: str) -> None:
    r = await env.client.request(method, path)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["resourceType"] == "OperationOutcome"


async def test_bad_tokens_are_401(env: Env) -> None:
    for header in (
        "Bearer not-a-jwt",
        "Basic dXNlcjpwYXNz",
        "Bearer " + KeyRing.generate().sign({"iss": "http://test/auth", "sub": "x"}),
    ):
        r = await env.client.get("/fhir/Patient", headers={"Authorization": header})
        assert r.status_code == 401, header
    # one of ours, expired
    token, _ = env.server.tokens.issue_access_token(
        subject="x", client_id="tests", scope="system/*.rs", lifetime=-120
    )
    r = await env.client.get("/fhir/Patient", headers={"Authorization": "Bearer " + token})
    assert r.status_code == 401


async def test_missing_scope_is_403(env: Env) -> None:
    h = env.bearer("user/Observation.rs")
    r = await env.client.get("/fhir/Patient/pa", headers=h)
    assert r.status_code == 403
    assert r.json()["issue"][0]["code"] == "forbidden"
    assert (await env.client.get("/fhir/Patient", headers=h)).status_code == 403
    assert (await env.client.get("/fhir/Observation/oa-vital", headers=h)).status_code == 200
    r = await env.client.post("/fhir/Observation", json=observation("x", "pa", "x"), headers=h)
    assert r.status_code == 403
    # an operation needs read of its type
    r = await env.client.get("/fhir/ValueSet/$expand", params={"url": "x"}, headers=h)
    assert r.status_code == 403


async def test_cors(env: Env) -> None:
    r = await env.client.options(
        "/fhir/Patient",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] in ("*", "https://app.example")
    r = await env.client.get(
        "/fhir/Patient", headers={"Origin": "https://app.example", **env.bearer("user/*.rs")}
    )
    assert r.status_code == 200 and "access-control-allow-origin" in r.headers


async def test_batch_entries_are_checked(env: Env) -> None:
    h = env.bearer("patient/*.read", patient="pa")
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": "Observation/oa-vital"}},
            {"request": {"method": "GET", "url": "Observation/ob-vital"}},
            {"request": {"method": "DELETE", "url": "Observation/oa-vital"}},
        ],
    }
    r = await env.client.post("/fhir", json=batch, headers=h)
    assert r.status_code == 200, r.text
    statuses = [e["response"]["status"][:3] for e in r.json()["entry"]]
    assert statuses == ["200", "404", "403"]


async def test_transaction_creates_are_checked(env: Env) -> None:
    h = env.bearer("patient/*.cruds", patient="pa")
    tx = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": observation("t1", "pa", "vital-signs"),
                "request": {"method": "POST", "url": "Observation"},
            },
            {
                "resource": observation("t2", "pb", "vital-signs"),
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    r = await env.client.post("/fhir", json=tx, headers=h)
    assert r.status_code == 403
    tx["entry"] = tx["entry"][:1]
    r = await env.client.post("/fhir", json=tx, headers=h)
    assert r.status_code == 200, r.text


# --------------------------------------------------------------------------- flows


async def test_authorization_code_flow_end_to_end(env: Env) -> None:
    c = env.client
    verifier = secrets.token_urlsafe(48)
    r = await c.get(
        "/auth/authorize",
        params={
            "response_type": "code",
            "client_id": "app",
            "redirect_uri": REDIRECT,
            "scope": "openid fhirUser launch/patient patient/*.rs",
            "state": "s-1",
            "aud": BASE,
            "code_challenge": s256(verifier),
            "code_challenge_method": "S256",
            "patient": "pa",
        },
    )
    assert r.status_code == 302, r.text
    query = {k: v[0] for k, v in parse_qs(urlsplit(r.headers["location"]).query).items()}
    assert query["state"] == "s-1"
    r = await c.post(
        "/auth/token",
        data={
            "grant_type": "authorization_code",
            "code": query["code"],
            "redirect_uri": REDIRECT,
            "client_id": "app",
            "code_verifier": verifier,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["patient"] == "pa"
    h = {"Authorization": "Bearer " + body["access_token"]}
    assert (await c.get("/fhir/Patient/pa", headers=h)).status_code == 200
    assert (await c.get("/fhir/Patient/pb", headers=h)).status_code == 404
    r = await c.get("/fhir/Observation", headers=h)
    assert r.status_code == 200
    assert ids(r.json()) == {"Observation/oa-vital", "Observation/oa-lab"}
    # read-only scopes
    r = await c.put("/fhir/Patient/pa", json=SEED[0], headers=h)
    assert r.status_code == 403


async def test_authorize_without_patient_picks_one_from_the_store(env: Env) -> None:
    verifier = secrets.token_urlsafe(48)
    r = await env.client.get(
        "/auth/authorize",
        params={
            "response_type": "code",
            "client_id": "app",
            "redirect_uri": REDIRECT,
            "scope": "launch/patient patient/Patient.rs",
            "state": "s",
            "aud": BASE,
            "code_challenge": s256(verifier),
            "code_challenge_method": "S256",
            "patient": "nobody",
        },
    )
    # the patient lookup runs a search on the store: an unknown patient is refused
    assert r.status_code == 302
    assert "error=invalid_request" in r.headers["location"]


async def test_backend_services_client_credentials(env: Env) -> None:
    now = int(time.time())
    assertion = BACKEND_KEYS.sign(
        {
            "iss": "backend",
            "sub": "backend",
            "aud": TOKEN_URL,
            "exp": now + 240,
            "jti": str(uuid.uuid4()),
        },
        {"typ": "JWT"},
    )
    r = await env.client.post(
        "/auth/token",
        data={
            "grant_type": "client_credentials",
            "scope": "system/*.rs",
            "client_assertion_type": JWT_BEARER,
            "client_assertion": assertion,
        },
    )
    assert r.status_code == 200, r.text
    h = {"Authorization": "Bearer " + r.json()["access_token"]}
    r = await env.client.get("/fhir/Observation", headers=h)
    assert r.status_code == 200
    assert ids(r.json()) == {
        "Observation/oa-vital",
        "Observation/oa-lab",
        "Observation/ob-vital",
    }
    assert r.json()["total"] == 3
    r = await env.client.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=h)
    assert r.status_code == 403


async def test_keys_and_clients_are_kept_in_the_configured_files(env: Env, tmp_path: Path) -> None:
    assert (tmp_path / "keys.json").is_file()
    assert (tmp_path / "clients.json").is_file()
    assert env.server.config.auto_approve is True


# --------------------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("example.org", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    from fhir_server.cli import is_loopback

    assert is_loopback(host) is loopback


def test_no_auth_is_refused_off_loopback(capsys: pytest.CaptureFixture[str]) -> None:
    from fhir_server.cli import main

    assert main(["serve", "--no-auth", "--host", "0.0.0.0"]) == 2
    assert "--no-auth is only allowed on a loopback address" in capsys.readouterr().err


def test_client_and_keys_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fhir_server.auth.clients import ClientRegistry
    from fhir_server.cli import main

    clients = str(tmp_path / "clients.json")
    rc = main(
        [
            "client", "add", "--id", "desk", "--confidential",
            "--redirect-uri", REDIRECT, "--scope", "openid fhirUser",
            "--role", "front-desk", "--clients", clients,
        ]
    )  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    assert "client secret" in out
    secret = out.rsplit(": ", 1)[1].strip()
    desk = ClientRegistry(clients).get("desk")
    assert desk is not None and desk.check_secret(secret)
    assert "user/Appointment.cruds" in desk.scopes and "openid" in desk.scopes

    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(BACKEND_KEYS.public_jwks()))
    rc = main(
        [
            "client", "add", "--id", "etl", "--confidential", "--scope", "system/*.rs",
            "--jwks", str(jwks), "--clients", clients,
        ]
    )  # fmt: skip
    assert rc == 0 and "secret" not in capsys.readouterr().out
    etl = ClientRegistry(clients).get("etl")
    assert etl is not None and etl.auth_method == "private_key_jwt"
    rc = main(
        ["client", "add", "--id", "x", "--public", "--scope", "bogus/x", "--clients", clients]
    )
    assert rc == 2
    assert main(["client", "remove", "desk", "--clients", clients]) == 0
    assert ClientRegistry(clients).get("desk") is None
    assert main(["client", "remove", "desk", "--clients", clients]) == 1

    keys = str(tmp_path / "keys.json")
    assert main(["keys", "rotate", "--keys", keys]) == 0
    first = KeyRing.load(keys).current.kid
    assert main(["keys", "rotate", "--alg", "RS384", "--keys", keys]) == 0
    ring = KeyRing.load(keys)
    assert ring.current.alg == "RS384" and ring.current.kid != first
    assert ring.get(first) is not None  # the previous key still verifies
