"""Signed JWTs: our authorization server's tokens, and tokens of others.

- :class:`KeyRing`: the server's signing keys as a private JWKS (ES384 by default,
  RS384 possible). The first key signs; the previous ones still verify until they
  are rotated out, so rotation never invalidates tokens already issued. Each key has a
  ``kid`` that tokens carry in their header.
- :class:`TokenIssuer`: issues access tokens and OpenID Connect id_tokens, and
  verifies access tokens: signature (by ``kid``), issuer, audience (the FHIR base
  URL) and expiry.
- :class:`OidcVerifier`: verifies tokens of an external OpenID Connect provider
  against its issuer, audience and JWKS (a JWKS given as data, or fetched from a URL
  through an injectable async fetcher and cached; unknown ``kid`` -> one refetch).
- :func:`verify_jwt`: the verification both use (also for client assertions).

Every failure is a :class:`TokenError` with a short ``reason``; the API maps it to
``401`` with ``WWW-Authenticate: Bearer error="invalid_token"``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from fhir_server.errors import FhirError, Issue

log = logging.getLogger("fhir_server.auth")

SigningAlg = Literal["ES384", "RS384"]
SIGNING_ALGS: Final[tuple[str, ...]] = ("ES384", "RS384")
# What external OpenID Connect providers commonly sign with.
OIDC_ALGS: Final[tuple[str, ...]] = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512")

_EC_CURVES: Final = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}

Fetcher = Callable[[str], Awaitable[Mapping[str, Any]]]


class TokenError(Exception):
    """A token that must not be accepted. ``reason`` is one of: ``malformed``,
    ``expired``, ``not_yet_valid``, ``invalid_audience``, ``invalid_issuer``,
    ``invalid_signature``, ``unknown_key``, ``unsupported_algorithm``,
    ``missing_claim``, ``keys_unavailable``."""

    def __init__(self, reason: str, description: str) -> None:
        super().__init__(description)
        self.reason = reason
        self.description = description

    def to_fhir_error(self) -> FhirError:
        """``401`` with the RFC 6750 challenge."""
        desc = self.description.replace('"', "'")
        return FhirError(
            401,
            (Issue("error", "login", f"Invalid access token: {self.description}"),),
            {"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{desc}"'},
        )


# --------------------------------------------------------------------------- keys


def _new_kid() -> str:
    return secrets.token_urlsafe(12)


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    alg: str
    private_key: Any  # ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    created: int = 0

    @classmethod
    def generate(cls, alg: str = "ES384", kid: str | None = None) -> SigningKey:
        key: Any
        if alg == "ES384":
            key = ec.generate_private_key(ec.SECP384R1())
        elif alg == "RS384":
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            raise ValueError(f"unsupported signing algorithm '{alg}' (use ES384 or RS384)")
        return cls(kid or _new_kid(), alg, key, int(time.time()))

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any]) -> SigningKey:
        alg = jwk.get("alg")
        if alg not in SIGNING_ALGS:
            raise ValueError(f"signing key with unsupported alg {alg!r}")
        parsed = jwt.PyJWK(dict(jwk), algorithm=alg)
        if "d" not in jwk:
            raise ValueError("a signing key needs its private part")
        return cls(str(jwk["kid"]), alg, parsed.key, int(jwk.get("iat", 0)))

    def _jwk(self, key: Any) -> dict[str, Any]:
        impl = ECAlgorithm if self.alg.startswith("ES") else RSAAlgorithm
        out: dict[str, Any] = dict(impl.to_jwk(key, as_dict=True))
        out.update({"kid": self.kid, "alg": self.alg, "use": "sig"})
        return out

    def private_jwk(self) -> dict[str, Any]:
        out = self._jwk(self.private_key)
        out["iat"] = self.created
        return out

    def public_jwk(self) -> dict[str, Any]:
        return self._jwk(self.private_key.public_key())


class KeyRing:
    """The signing keys: ``keys[0]`` signs, all verify."""

    def __init__(self, keys: Sequence[SigningKey]) -> None:
        if not keys:
            raise ValueError("a key ring needs at least one key")
        self._keys = list(keys)

    @classmethod
    def generate(cls, alg: str = "ES384") -> KeyRing:
        return cls([SigningKey.generate(alg)])

    @classmethod
    def from_jwks(cls, jwks: Mapping[str, Any]) -> KeyRing:
        return cls([SigningKey.from_jwk(k) for k in jwks.get("keys", ())])

    @classmethod
    def load(cls, path: str | Path) -> KeyRing:
        return cls.from_jwks(json.loads(Path(path).read_text("utf-8")))

    @classmethod
    def load_or_create(cls, path: str | Path | None, alg: str = "ES384") -> KeyRing:
        """The keys in ``path``; a new key (saved there) when the file is missing.
        ``None``: a new key kept in memory only."""
        if path is None:
            return cls.generate(alg)
        p = Path(path)
        if p.exists():
            return cls.load(p)
        ring = cls.generate(alg)
        ring.save(p)
        return ring

    def save(self, path: str | Path) -> None:
        """Write the private JWKS atomically, readable by the owner only."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(self.private_jwks(), indent=1).encode()
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=p.name, suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, p)

    @property
    def current(self) -> SigningKey:
        return self._keys[0]

    @property
    def keys(self) -> tuple[SigningKey, ...]:
        return tuple(self._keys)

    def rotate(self, alg: str | None = None, keep: int = 1) -> SigningKey:
        """A new signing key; the ``keep`` most recent previous keys still verify."""
        key = SigningKey.generate(alg or self.current.alg)
        self._keys = [key, *self._keys[: max(keep, 0)]]
        return key

    def get(self, kid: str) -> SigningKey | None:
        for k in self._keys:
            if k.kid == kid:
                return k
        return None

    def public_jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk() for k in self._keys]}

    def private_jwks(self) -> dict[str, Any]:
        return {"keys": [k.private_jwk() for k in self._keys]}

    def sign(self, claims: Mapping[str, Any], headers: Mapping[str, Any] | None = None) -> str:
        key = self.current
        head = {"kid": key.kid, "typ": "JWT", **(headers or {})}
        return jwt.encode(dict(claims), key.private_key, algorithm=key.alg, headers=head)

    def verification_key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        if kid is None:
            raise TokenError("unknown_key", "the token names no key (kid)")
        key = self.get(kid)
        if key is None:
            raise TokenError("unknown_key", "the token was signed with an unknown key")
        if key.alg != alg:
            raise TokenError("unsupported_algorithm", f"key {kid} does not sign with {alg}")
        return jwt.PyJWK(key.public_jwk(), algorithm=alg)


# --------------------------------------------------------------------------- verification


def unverified_header(token: str) -> dict[str, Any]:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise TokenError("malformed", "the token is not a well-formed JWT") from exc
    return dict(header)


def unverified_claims(token: str) -> dict[str, Any]:
    """The claims without any check: only to find out who claims to have signed."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise TokenError("malformed", "the token is not a well-formed JWT") from exc
    return dict(claims)


def _check_key_fits(jwk: Mapping[str, Any], alg: str) -> None:
    kty = jwk.get("kty")
    if alg.startswith(("RS", "PS")):
        ok = kty == "RSA"
    elif alg.startswith("ES"):
        ok = kty == "EC" and jwk.get("crv") == _EC_CURVES.get(alg)
    else:
        ok = False
    if not ok or jwk.get("alg") not in (None, alg):
        raise TokenError("unsupported_algorithm", f"the key does not fit algorithm {alg}")
    if jwk.get("use") not in (None, "sig"):
        raise TokenError("unknown_key", "the key is not for signatures")


def jwk_for(jwks: Mapping[str, Any], kid: str | None, alg: str) -> jwt.PyJWK | None:
    """The key of a public JWKS that verifies a token with ``kid``/``alg``."""
    keys = [k for k in jwks.get("keys", ()) if isinstance(k, Mapping)]
    if kid is not None:
        keys = [k for k in keys if k.get("kid") == kid]
    else:
        keys = [k for k in keys if k.get("alg") in (None, alg)]
        if len(keys) != 1:
            return None
    if not keys:
        return None
    _check_key_fits(keys[0], alg)
    try:
        return jwt.PyJWK(dict(keys[0]), algorithm=alg)
    except jwt.PyJWTError as exc:
        raise TokenError("unknown_key", "the signing key is not usable") from exc


def verify_jwt(
    token: str,
    key: jwt.PyJWK,
    alg: str,
    *,
    issuer: str | Iterable[str] | None,
    audience: str | Iterable[str] | None,
    required: Sequence[str] = ("exp", "iss", "aud"),
    leeway: float = 0,
    subject: str | None = None,
) -> dict[str, Any]:
    """Check signature, ``iss``, ``aud``, ``exp``/``nbf``/``iat`` and the required claims."""
    options: dict[str, Any] = {"require": list(required)}
    if audience is None:
        options["verify_aud"] = False
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[alg],
            audience=audience if audience is None or isinstance(audience, str) else list(audience),
            issuer=issuer if issuer is None or isinstance(issuer, str) else list(issuer),
            subject=subject,
            leeway=leeway,
            options=options,  # type: ignore[arg-type]
        )
    except jwt.ExpiredSignatureError as exc:
        raise TokenError("expired", "the token has expired") from exc
    except jwt.ImmatureSignatureError as exc:
        raise TokenError("not_yet_valid", "the token is not valid yet") from exc
    except jwt.InvalidAudienceError as exc:
        raise TokenError("invalid_audience", "the token is not meant for this server") from exc
    except jwt.InvalidIssuerError as exc:
        raise TokenError("invalid_issuer", "the token has an unexpected issuer") from exc
    except jwt.exceptions.InvalidSubjectError as exc:
        raise TokenError("invalid_subject", "the token has an unexpected subject") from exc
    except jwt.MissingRequiredClaimError as exc:
        raise TokenError("missing_claim", f"the token lacks the '{exc.claim}' claim") from exc
    except jwt.InvalidSignatureError as exc:
        raise TokenError("invalid_signature", "the token signature does not verify") from exc
    except jwt.InvalidAlgorithmError as exc:
        raise TokenError("unsupported_algorithm", "the token algorithm is not allowed") from exc
    except jwt.PyJWTError as exc:
        raise TokenError("malformed", f"the token is not valid ({type(exc).__name__})") from exc
    return dict(claims)


# --------------------------------------------------------------------------- our tokens


@dataclass
class TokenIssuer:
    """Issues and verifies the access tokens of our authorization server."""

    keys: KeyRing
    issuer: str  # the authorization server's URL
    audience: str  # the FHIR base URL
    lifetime: int = 3600
    leeway: float = 0
    clock: Callable[[], float] = time.time

    def issue_access_token(
        self,
        *,
        subject: str,
        client_id: str,
        scope: str,
        patient: str | None = None,
        fhir_user: str | None = None,
        lifetime: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> tuple[str, int]:
        """A signed access token and its lifetime in seconds."""
        now = int(self.clock())
        ttl = self.lifetime if lifetime is None else lifetime
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "client_id": client_id,
            "scope": scope,
            "iat": now,
            "exp": now + ttl,
            "jti": secrets.token_urlsafe(16),
        }
        if patient is not None:
            claims["patient"] = patient
        if fhir_user is not None:
            claims["fhirUser"] = fhir_user
        if extra:
            claims.update(extra)
        return self.keys.sign(claims, {"typ": "at+jwt"}), ttl

    def issue_id_token(
        self,
        *,
        subject: str,
        client_id: str,
        fhir_user: str | None,
        nonce: str | None = None,
        lifetime: int | None = None,
    ) -> str:
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": client_id,
            "sub": subject,
            "iat": now,
            "exp": now + (self.lifetime if lifetime is None else lifetime),
        }
        if fhir_user is not None:
            claims["fhirUser"] = fhir_user
        if nonce is not None:
            claims["nonce"] = nonce
        return self.keys.sign(claims)

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a valid access token; :class:`TokenError` otherwise."""
        header = unverified_header(token)
        alg = header.get("alg")
        if alg not in SIGNING_ALGS:
            raise TokenError("unsupported_algorithm", f"algorithm {alg!r} is not accepted")
        key = self.keys.verification_key(header.get("kid"), alg)
        return verify_jwt(
            token,
            key,
            alg,
            issuer=self.issuer,
            audience=self.audience,
            required=("exp", "iss", "aud", "sub", "scope"),
            leeway=self.leeway,
        )


# --------------------------------------------------------------------------- remote keys


async def default_fetcher(url: str) -> Mapping[str, Any]:
    """GET a JSON document (JWKS, OpenID configuration) with the standard library."""

    def get() -> Mapping[str, Any]:
        if not url.startswith(("https://", "http://localhost", "http://127.0.0.1")):
            raise ValueError(f"refusing to fetch keys over plain http: {url}")
        req = urllib.request.Request(url, headers={"Accept": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            body = resp.read(1024 * 1024 + 1)
        if len(body) > 1024 * 1024:
            raise ValueError(f"document at {url} is too large")
        data = json.loads(body)
        if not isinstance(data, dict):
            raise ValueError(f"document at {url} is not a JSON object")
        return data

    return await asyncio.to_thread(get)


@dataclass
class RemoteJwks:
    """A JWKS fetched from a URL, cached; refetched when a ``kid`` is unknown (at most
    once per ``min_refresh`` seconds) or when older than ``max_age``."""

    url: str
    fetcher: Fetcher = default_fetcher
    min_refresh: float = 60
    max_age: float = 3600
    clock: Callable[[], float] = time.monotonic
    _jwks: Mapping[str, Any] | None = field(default=None, init=False)
    _fetched: float = field(default=float("-inf"), init=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)

    async def _refresh(self) -> None:
        async with self._lock:
            if self.clock() - self._fetched < self.min_refresh and self._jwks is not None:
                return
            try:
                jwks = await self.fetcher(self.url)
            except Exception as exc:
                log.warning("could not fetch JWKS %s: %s", self.url, exc)
                if self._jwks is None:
                    raise TokenError(
                        "keys_unavailable", "the signing keys are unavailable"
                    ) from exc
                return
            self._jwks = jwks
            self._fetched = self.clock()

    async def key(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        if self._jwks is None or self.clock() - self._fetched > self.max_age:
            await self._refresh()
        assert self._jwks is not None
        found = jwk_for(self._jwks, kid, alg)
        if found is None and self.clock() - self._fetched >= self.min_refresh:
            await self._refresh()
            found = jwk_for(self._jwks, kid, alg)
        return found


class KeySource:
    """Public keys that verify someone's tokens: a JWKS given as data or at a URL."""

    def __init__(
        self,
        jwks: Mapping[str, Any] | None = None,
        jwks_uri: str | None = None,
        fetcher: Fetcher = default_fetcher,
    ) -> None:
        if (jwks is None) == (jwks_uri is None):
            raise ValueError("give either a JWKS or a JWKS URL")
        self._jwks = jwks
        self._remote = RemoteJwks(jwks_uri, fetcher) if jwks_uri is not None else None

    async def key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        if self._remote is not None:
            found = await self._remote.key(kid, alg)
        else:
            assert self._jwks is not None
            found = jwk_for(self._jwks, kid, alg)
        if found is None:
            raise TokenError("unknown_key", "no known key verifies this token")
        return found


class OidcVerifier:
    """Verifies ID/access tokens of an external OpenID Connect provider."""

    def __init__(
        self,
        issuer: str,
        audience: str | Sequence[str],
        *,
        jwks: Mapping[str, Any] | None = None,
        jwks_uri: str | None = None,
        fetcher: Fetcher = default_fetcher,
        algorithms: Sequence[str] = OIDC_ALGS,
        leeway: float = 30,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.algorithms = tuple(algorithms)
        self.leeway = leeway
        self.keys = KeySource(jwks, jwks_uri, fetcher)

    @classmethod
    async def discover(
        cls,
        issuer: str,
        audience: str | Sequence[str],
        fetcher: Fetcher = default_fetcher,
        **kwargs: Any,
    ) -> OidcVerifier:
        """From the provider's ``/.well-known/openid-configuration``."""
        config = await fetcher(issuer.rstrip("/") + "/.well-known/openid-configuration")
        if config.get("issuer") != issuer:
            raise ValueError(f"the OpenID configuration names issuer {config.get('issuer')!r}")
        jwks_uri = config.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise ValueError("the OpenID configuration has no jwks_uri")
        return cls(issuer, audience, jwks_uri=jwks_uri, fetcher=fetcher, **kwargs)

    def claims_issuer(self, token: str) -> str | None:
        iss = unverified_claims(token).get("iss")
        return iss if isinstance(iss, str) else None

    async def verify(self, token: str) -> dict[str, Any]:
        header = unverified_header(token)
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise TokenError("unsupported_algorithm", f"algorithm {alg!r} is not accepted")
        key = await self.keys.key(header.get("kid"), alg)
        return verify_jwt(
            token,
            key,
            alg,
            issuer=self.issuer,
            audience=self.audience,
            required=("exp", "iss", "aud", "sub"),
            leeway=self.leeway,
        )


def rotate_signing_key(path: str | Path, alg: str | None = None, keep: int = 1) -> str:
    """Rotate the keys kept in ``path`` (created when missing): a new signing key, the
    ``keep`` previous ones still verify. Returns the new key's ``kid``. A running
    server picks the new key up when restarted."""
    ring = KeyRing.load_or_create(path, alg or "ES384")
    key = ring.rotate(alg, keep)
    ring.save(path)
    return key.kid
