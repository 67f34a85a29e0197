"""Registered OAuth clients, kept as data in a JSON file.

A client is public (a browser or native app: PKCE, no secret), confidential with a
shared secret (``client_secret_basic``/``client_secret_post``; only a salted scrypt
hash is stored) or confidential with a key pair (``private_key_jwt``: its JWKS, or
the URL of its JWKS). ``scopes`` are what it may ever be granted; a request for more
is narrowed to them.

The file is a JSON object ``{"clients": [...]}``; writes are atomic. The CLI calls
:func:`register_client`; the authorization server reads through :class:`ClientRegistry`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from fhir_server.auth.scopes import ScopeSet

ClientType = Literal["public", "confidential"]
AuthMethod = Literal["none", "client_secret_basic", "client_secret_post", "private_key_jwt"]
AUTH_METHODS: Final = ("none", "client_secret_basic", "client_secret_post", "private_key_jwt")

# scrypt parameters (RFC 7914): n=2**14, r=8, p=1 uses 16 MiB and a few ms.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_secret(secret: str) -> str:
    """``scrypt$n$r$p$salt$hash`` for storage."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        secret.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_secret(secret: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        want = _unb64(digest)
        got = hashlib.scrypt(
            secret.encode(),
            salt=_unb64(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(want),
            maxmem=256 * 1024 * 1024,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


class ClientError(ValueError):
    """An invalid client registration."""


@dataclass(frozen=True, slots=True)
class Client:
    client_id: str
    client_type: ClientType
    redirect_uris: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    auth_method: AuthMethod = "none"
    jwks: Mapping[str, Any] | None = None
    jwks_uri: str | None = None
    secret_hash: str | None = None
    name: str | None = None

    @property
    def allowed_scopes(self) -> ScopeSet:
        return ScopeSet.parse(self.scopes)

    @property
    def is_confidential(self) -> bool:
        return self.client_type == "confidential"

    @property
    def asymmetric(self) -> bool:
        return self.auth_method == "private_key_jwt"

    def check_secret(self, secret: str) -> bool:
        return self.secret_hash is not None and verify_secret(secret, self.secret_hash)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "client_id": self.client_id,
            "client_type": self.client_type,
            "token_endpoint_auth_method": self.auth_method,
            "redirect_uris": list(self.redirect_uris),
            "scope": " ".join(self.scopes),
        }
        if self.name:
            out["client_name"] = self.name
        if self.jwks is not None:
            out["jwks"] = dict(self.jwks)
        if self.jwks_uri is not None:
            out["jwks_uri"] = self.jwks_uri
        if self.secret_hash is not None:
            out["secret_hash"] = self.secret_hash
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Client:
        client = cls(
            client_id=str(data["client_id"]),
            client_type=data.get("client_type", "public"),
            redirect_uris=tuple(data.get("redirect_uris", ())),
            scopes=tuple(str(data.get("scope", "")).split()),
            auth_method=data.get("token_endpoint_auth_method", "none"),
            jwks=data.get("jwks"),
            jwks_uri=data.get("jwks_uri"),
            secret_hash=data.get("secret_hash"),
            name=data.get("client_name"),
        )
        client.validate()
        return client

    def validate(self) -> None:
        if not self.client_id or any(c.isspace() for c in self.client_id):
            raise ClientError("client_id must be a non-empty string without spaces")
        if self.client_type not in ("public", "confidential"):
            raise ClientError("client_type must be 'public' or 'confidential'")
        if self.auth_method not in AUTH_METHODS:
            raise ClientError(f"token_endpoint_auth_method must be one of {AUTH_METHODS}")
        if self.client_type == "public" and self.auth_method != "none":
            raise ClientError("a public client authenticates with 'none'")
        if self.client_type == "confidential" and self.auth_method == "none":
            raise ClientError("a confidential client needs an authentication method")
        if self.auth_method.startswith("client_secret") and not self.secret_hash:
            raise ClientError("a client_secret client needs a secret")
        if self.auth_method == "private_key_jwt" and (self.jwks is None) == (self.jwks_uri is None):
            raise ClientError("a private_key_jwt client needs exactly one of jwks and jwks_uri")
        if self.jwks is not None and not isinstance(self.jwks.get("keys"), list):
            raise ClientError("jwks must be a JSON Web Key Set ({'keys': [...]})")
        for uri in self.redirect_uris:
            parts = urlsplit(uri)
            if not parts.scheme or parts.fragment:
                raise ClientError(f"redirect URI '{uri}' must be absolute, without a fragment")
        bad = ScopeSet.parse(self.scopes).unrecognized
        if bad:
            raise ClientError(f"unknown scopes: {' '.join(bad)}")


class ClientRegistry:
    """Clients by id, kept in a JSON file (or in memory when ``path`` is None)."""

    def __init__(self, path: str | Path | None = None, clients: Iterable[Client] = ()) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._clients: dict[str, Client] = {c.client_id: c for c in clients}
        self._mtime: float | None = None
        if self.path is not None:
            self._reload()

    def _reload(self) -> None:
        assert self.path is not None
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return
        if mtime == self._mtime:
            return
        data = json.loads(self.path.read_text("utf-8"))
        self._clients = {
            c.client_id: c for c in (Client.from_json(d) for d in data.get("clients", ()))
        }
        self._mtime = mtime

    def get(self, client_id: str) -> Client | None:
        if self.path is not None:
            with self._lock:
                self._reload()  # picks up clients registered by the CLI meanwhile
        return self._clients.get(client_id)

    def all(self) -> list[Client]:
        return list(self._clients.values())

    def add(self, client: Client) -> None:
        client.validate()
        with self._lock:
            if self.path is not None:
                self._reload()
            self._clients[client.client_id] = client
            if self.path is not None:
                self._save()

    def remove(self, client_id: str) -> bool:
        with self._lock:
            if self.path is not None:
                self._reload()
            found = self._clients.pop(client_id, None) is not None
            if found and self.path is not None:
                self._save()
            return found

    def _save(self) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {"clients": [c.to_json() for c in self._clients.values()]}
        data = json.dumps(body, indent=1).encode()
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        self._mtime = self.path.stat().st_mtime


def new_client(
    *,
    client_type: ClientType,
    redirect_uris: Iterable[str] = (),
    scopes: str | Iterable[str] = (),
    client_id: str | None = None,
    secret: str | None = None,
    jwks: Mapping[str, Any] | None = None,
    jwks_uri: str | None = None,
    name: str | None = None,
    auth_method: AuthMethod | None = None,
) -> tuple[Client, str | None]:
    """A validated client and, for a new shared-secret client, its secret in clear
    (shown once; only its hash is kept). The auth method follows from what is given:
    a JWKS (or URL) -> ``private_key_jwt``; confidential otherwise ->
    ``client_secret_basic`` with a generated secret unless one is given."""
    if auth_method is None:
        if client_type == "public":
            auth_method = "none"
        elif jwks is not None or jwks_uri is not None:
            auth_method = "private_key_jwt"
        else:
            auth_method = "client_secret_basic"
    clear: str | None = None
    secret_hash: str | None = None
    if auth_method.startswith("client_secret"):
        clear = secret or secrets.token_urlsafe(32)
        secret_hash = hash_secret(clear)
    client = Client(
        client_id=client_id or secrets.token_urlsafe(12),
        client_type=client_type,
        redirect_uris=tuple(redirect_uris),
        scopes=tuple(scopes.split() if isinstance(scopes, str) else scopes),
        auth_method=auth_method,
        jwks=jwks,
        jwks_uri=jwks_uri,
        secret_hash=secret_hash,
        name=name,
    )
    client.validate()
    return client, clear if secret is None else None


def register_client(path: str | Path, **kwargs: Any) -> tuple[Client, str | None]:
    """Register (or replace, by client_id) a client in the JSON file at ``path``;
    see :func:`new_client` for the arguments. Returns the client and the generated
    secret, if one was generated."""
    client, clear = new_client(**kwargs)
    ClientRegistry(path).add(client)
    return client, clear


def with_secret(client: Client, secret: str) -> Client:
    return replace(client, secret_hash=hash_secret(secret))
