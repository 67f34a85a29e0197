from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt
import pytest

from fhir_server.auth.tokens import (
    KeyRing,
    OidcVerifier,
    SigningKey,
    TokenError,
    TokenIssuer,
)

ISS = "https://fhir.example/auth"
AUD = "https://fhir.example/fhir"


def issuer(keys: KeyRing | None = None, **kw: Any) -> TokenIssuer:
    return TokenIssuer(keys or KeyRing.generate(), ISS, AUD, **kw)


def token(t: TokenIssuer, **kw: Any) -> str:
    return t.issue_access_token(subject="u", client_id="c", scope="user/*.rs", **kw)[0]


def reason(fn: Any, *args: Any) -> str:
    with pytest.raises(TokenError) as err:
        fn(*args)
    return err.value.reason


@pytest.mark.parametrize("alg", ["ES384", "RS384"])
def test_issue_and_verify(alg: str) -> None:
    t = issuer(KeyRing.generate(alg))
    claims = t.verify(token(t, patient="p1", fhir_user="Practitioner/x"))
    assert claims["aud"] == AUD and claims["iss"] == ISS
    assert claims["patient"] == "p1" and claims["fhirUser"] == "Practitioner/x"
    assert jwt.get_unverified_header(token(t))["alg"] == alg


def test_verification_matrix() -> None:
    t = issuer()
    good = token(t)
    # wrong audience
    other_aud = TokenIssuer(t.keys, ISS, "https://elsewhere/fhir")
    assert reason(t.verify, token(other_aud)) == "invalid_audience"
    # wrong issuer
    assert reason(t.verify, token(TokenIssuer(t.keys, "https://evil", AUD))) == "invalid_issuer"
    # expired
    past = issuer(t.keys, clock=lambda: time.time() - 7200)
    assert reason(t.verify, token(past)) == "expired"
    # tampered payload
    head, payload, sig = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["scope"] = "system/*.cruds"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    assert reason(t.verify, f"{head}.{forged}.{sig}") == "invalid_signature"
    # signed by a different key that claims our kid
    stranger = KeyRing([SigningKey.generate("ES384", kid=t.keys.current.kid)])
    assert reason(t.verify, token(issuer(stranger))) == "invalid_signature"
    # signed by an unknown key
    assert reason(t.verify, token(issuer())) == "unknown_key"
    # alg none / HS256 / garbage
    unsigned = jwt.encode({"iss": ISS, "aud": AUD}, "", algorithm="none")
    assert reason(t.verify, unsigned) == "unsupported_algorithm"
    hs = jwt.encode({"iss": ISS}, "secret-secret-secret-secret-secret!", algorithm="HS256")
    assert reason(t.verify, hs) == "unsupported_algorithm"
    assert reason(t.verify, "not.a.jwt") == "malformed"
    assert t.verify(good)["sub"] == "u"


def test_token_error_maps_to_401() -> None:
    err = TokenError("expired", "the token has expired").to_fhir_error()
    assert err.status == 401
    assert err.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
    assert err.issues[0].code == "login"


def test_rotation_keeps_previous_key(tmp_path: Path) -> None:
    ring = KeyRing.generate()
    t = issuer(ring)
    old = token(t)
    ring.rotate()
    new = token(t)
    assert jwt.get_unverified_header(old)["kid"] != jwt.get_unverified_header(new)["kid"]
    assert t.verify(old) and t.verify(new)
    assert len(ring.public_jwks()["keys"]) == 2
    ring.rotate(keep=1)  # the first key drops out
    assert reason(t.verify, old) == "unknown_key"
    assert t.verify(new)
    # persisted and reloaded: same keys, private parts kept out of the public set
    path = tmp_path / "keys.json"
    ring.save(path)
    assert path.stat().st_mode & 0o077 == 0
    again = TokenIssuer(KeyRing.load(path), ISS, AUD)
    assert again.verify(new)
    assert all("d" not in k for k in ring.public_jwks()["keys"])
    assert KeyRing.load_or_create(tmp_path / "new.json").current.alg == "ES384"
    assert (tmp_path / "new.json").exists()


def test_rs384_ring_rotation_to_es384() -> None:
    ring = KeyRing.generate("RS384")
    t = issuer(ring)
    old = token(t)
    ring.rotate("ES384")
    assert t.verify(old)["sub"] == "u"
    assert jwt.get_unverified_header(token(t))["alg"] == "ES384"


# --------------------------------------------------------------------------- OIDC

PROVIDER = "https://idp.example"


class Fetcher:
    def __init__(self, docs: dict[str, Mapping[str, Any]]) -> None:
        self.docs = docs
        self.calls: list[str] = []

    async def __call__(self, url: str) -> Mapping[str, Any]:
        self.calls.append(url)
        return self.docs[url]


def idp_token(ring: KeyRing, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": PROVIDER, "aud": "fhir-api", "sub": "alice", "iat": now, "exp": now + 300}
    body.update(claims)
    return ring.sign(body)


async def test_oidc_verifier_with_local_jwks() -> None:
    ring = KeyRing.generate("RS384")
    v = OidcVerifier(PROVIDER, "fhir-api", jwks=ring.public_jwks())
    assert (await v.verify(idp_token(ring)))["sub"] == "alice"
    for bad, why in [
        (idp_token(ring, aud="other"), "invalid_audience"),
        (idp_token(ring, iss="https://evil"), "invalid_issuer"),
        (idp_token(ring, exp=int(time.time()) - 3600), "expired"),
        (idp_token(KeyRing.generate("RS384")), "unknown_key"),
    ]:
        with pytest.raises(TokenError) as err:
            await v.verify(bad)
        assert err.value.reason == why


async def test_oidc_discovery_and_key_refresh() -> None:
    ring = KeyRing.generate("ES384")
    docs: dict[str, Mapping[str, Any]] = {
        PROVIDER + "/.well-known/openid-configuration": {
            "issuer": PROVIDER,
            "jwks_uri": PROVIDER + "/keys",
        },
        PROVIDER + "/keys": ring.public_jwks(),
    }
    fetch = Fetcher(docs)
    v = await OidcVerifier.discover(PROVIDER, "fhir-api", fetch)
    assert (await v.verify(idp_token(ring)))["sub"] == "alice"
    assert (await v.verify(idp_token(ring)))["sub"] == "alice"
    assert fetch.calls.count(PROVIDER + "/keys") == 1  # cached
    # the provider rotates; a token with the new kid triggers a refetch (once per minute)
    ring.rotate()
    docs[PROVIDER + "/keys"] = ring.public_jwks()
    assert v.keys._remote is not None
    v.keys._remote._fetched -= 120
    assert (await v.verify(idp_token(ring)))["sub"] == "alice"
    assert fetch.calls.count(PROVIDER + "/keys") == 2


async def test_oidc_rejects_key_of_wrong_type() -> None:
    rsa_ring = KeyRing.generate("RS384")
    ec_ring = KeyRing([SigningKey.generate("ES384", kid=rsa_ring.current.kid)])
    v = OidcVerifier(PROVIDER, "fhir-api", jwks=rsa_ring.public_jwks())
    with pytest.raises(TokenError) as err:
        await v.verify(idp_token(ec_ring))
    assert err.value.reason == "unsupported_algorithm"


def test_rotate_signing_key_file(tmp_path: Path) -> None:
    from fhir_server.auth.tokens import rotate_signing_key

    path = tmp_path / "keys.json"
    first = KeyRing.load_or_create(path).current.kid
    kid = rotate_signing_key(path)
    ring = KeyRing.load(path)
    assert ring.current.kid == kid and [k.kid for k in ring.keys] == [kid, first]
