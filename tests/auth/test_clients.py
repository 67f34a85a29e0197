from __future__ import annotations

import json
from pathlib import Path

import pytest

from fhir_server.auth.clients import (
    Client,
    ClientError,
    ClientRegistry,
    hash_secret,
    new_client,
    register_client,
    verify_secret,
)
from fhir_server.auth.tokens import KeyRing


def test_secret_hashing() -> None:
    stored = hash_secret("s3cret")
    assert stored.startswith("scrypt$") and "s3cret" not in stored
    assert verify_secret("s3cret", stored)
    assert not verify_secret("s3cret!", stored)
    assert not verify_secret("s3cret", "garbage")


def test_register_and_reload(tmp_path: Path) -> None:
    path = tmp_path / "clients.json"
    app, secret = register_client(
        path,
        client_id="app",
        client_type="public",
        redirect_uris=["https://app.example/cb"],
        scopes="launch/patient patient/*.rs",
    )
    assert secret is None and app.auth_method == "none"
    conf, secret = register_client(
        path, client_id="billing", client_type="confidential", scopes="user/Claim.cruds"
    )
    assert secret and conf.auth_method == "client_secret_basic"
    keys = KeyRing.generate()
    svc, _ = register_client(
        path,
        client_id="svc",
        client_type="confidential",
        scopes="system/*.rs",
        jwks=keys.public_jwks(),
    )
    assert svc.auth_method == "private_key_jwt"
    assert path.stat().st_mode & 0o077 == 0
    data = json.loads(path.read_text())
    assert secret not in path.read_text()
    assert {c["client_id"] for c in data["clients"]} == {"app", "billing", "svc"}
    registry = ClientRegistry(path)
    loaded = registry.get("billing")
    assert loaded is not None and loaded.check_secret(secret)
    assert registry.get("svc") == svc
    # a registry that is already open sees clients registered later
    register_client(path, client_id="late", client_type="public", redirect_uris=["x:/cb"])
    assert registry.get("late") is not None
    assert registry.remove("late") and registry.get("late") is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"client_type": "public", "scopes": "nonsense/scope"},
        {"client_type": "public", "redirect_uris": ["/relative"]},
        {"client_type": "public", "redirect_uris": ["https://a/cb#frag"]},
        {"client_type": "public", "auth_method": "private_key_jwt", "jwks": {"keys": []}},
        {"client_type": "confidential", "auth_method": "none"},
        {"client_type": "confidential", "auth_method": "private_key_jwt"},
        {"client_type": "confidential", "jwks": {"nokeys": 1}},
        {"client_type": "public", "client_id": "has space"},
    ],
)
def test_invalid_registrations(kwargs: dict[str, object]) -> None:
    with pytest.raises(ClientError):
        new_client(**kwargs)  # type: ignore[arg-type]


def test_from_json_roundtrip() -> None:
    c, _ = new_client(client_type="public", redirect_uris=["https://a/cb"], scopes="openid")
    assert Client.from_json(c.to_json()) == c
