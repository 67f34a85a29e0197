from __future__ import annotations

import base64
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from fastapi import FastAPI

from fhir_server.auth.clients import ClientRegistry, new_client
from fhir_server.auth.config import AuthConfig
from fhir_server.auth.server import JWT_BEARER, AuthServer, s256
from fhir_server.auth.tokens import KeyRing, SigningKey, TokenError

BASE = "http://test/fhir"
TOKEN_URL = "http://test/auth/token"
AUTHORIZE = "http://test/auth/authorize"
REDIRECT = "https://app.example/callback"

APP_KEYS = KeyRing.generate("ES384")  # the backend client's key pair
RS_KEYS = KeyRing.generate("RS384")


async def patients() -> Sequence[tuple[str, str]]:
    return [("pat-ada", "Ada Lovelace"), ("pat-bob", "Bob Builder")]


def make_server(**config: Any) -> tuple[AuthServer, dict[str, str]]:
    registry = ClientRegistry()
    public, _ = new_client(
        client_id="app",
        client_type="public",
        redirect_uris=[REDIRECT],
        scopes="openid fhirUser launch/patient offline_access patient/*.rs user/*.cruds",
        name="Therapy <App>",
    )
    conf, secret = new_client(
        client_id="conf",
        client_type="confidential",
        redirect_uris=[REDIRECT],
        scopes="online_access user/*.rs system/*.rs",
    )
    backend, _ = new_client(
        client_id="backend",
        client_type="confidential",
        scopes="system/*.rs system/Observation.cruds",
        jwks={"keys": APP_KEYS.public_jwks()["keys"] + RS_KEYS.public_jwks()["keys"]},
    )
    for c in (public, conf, backend):
        registry.add(c)
    cfg = AuthConfig(fhir_base_url=BASE, default_user="Practitioner/pt-1", **config)
    server = AuthServer(cfg, registry, patient_lookup=patients)
    assert secret is not None
    return server, {"conf": secret}


@pytest.fixture
async def env() -> AsyncIterator[tuple[AuthServer, httpx.AsyncClient, dict[str, str]]]:
    server, secrets_ = make_server(auto_approve=True)
    app = FastAPI()
    app.include_router(server.router())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield server, c, secrets_


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    return verifier, s256(verifier)


def auth_params(challenge: str | None, **extra: str) -> dict[str, str]:
    p = {
        "response_type": "code",
        "client_id": "app",
        "redirect_uri": REDIRECT,
        "scope": "openid fhirUser launch/patient offline_access patient/Observation.rs "
        "patient/Patient.read",
        "state": "xyz",
        "aud": BASE,
    }
    if challenge is not None:
        p.update(code_challenge=challenge, code_challenge_method="S256")
    p.update(extra)
    return p


def redirect_query(resp: httpx.Response) -> dict[str, str]:
    assert resp.status_code == 302, resp.text
    loc = resp.headers["location"]
    assert loc.startswith(REDIRECT)
    return {k: v[0] for k, v in parse_qs(urlsplit(loc).query).items()}


async def get_code(c: httpx.AsyncClient, challenge: str | None, **extra: str) -> dict[str, str]:
    return redirect_query(await c.get("/auth/authorize", params=auth_params(challenge, **extra)))


async def exchange(c: httpx.AsyncClient, code: str, verifier: str | None) -> httpx.Response:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    form["client_id"] = "app"
    if verifier is not None:
        form["code_verifier"] = verifier
    return await c.post("/auth/token", data=form)


# --------------------------------------------------------------------------- discovery


async def test_well_known_documents(env: Any) -> None:
    server, c, _ = env
    r = await c.get("/fhir/.well-known/smart-configuration")
    assert r.status_code == 200
    doc = r.json()
    assert doc["authorization_endpoint"] == AUTHORIZE
    assert doc["token_endpoint"] == TOKEN_URL
    assert doc["issuer"] == "http://test/auth"
    assert doc["jwks_uri"] == "http://test/auth/jwks"
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert set(doc["token_endpoint_auth_signing_alg_values_supported"]) == {"RS384", "ES384"}
    for cap in (
        "launch-standalone",
        "client-public",
        "client-confidential-symmetric",
        "client-confidential-asymmetric",
        "context-standalone-patient",
        "permission-v1",
        "permission-v2",
        "permission-patient",
        "permission-user",
        "permission-offline",
    ):
        assert cap in doc["capabilities"]
    assert "private_key_jwt" in doc["token_endpoint_auth_methods_supported"]
    assert "client_credentials" in doc["grant_types_supported"]
    jwks = (await c.get("/auth/jwks")).json()
    assert [k["kid"] for k in jwks["keys"]] == [server.keys.current.kid]
    assert "d" not in jwks["keys"][0]
    oidc = (await c.get("/auth/.well-known/openid-configuration")).json()
    assert oidc["issuer"] == doc["issuer"]


# --------------------------------------------------------------------------- auth code


async def test_authorization_code_with_pkce(env: Any) -> None:
    server, c, _ = env
    verifier, challenge = pkce()
    q = await get_code(c, challenge, patient="pat-bob", nonce="n-1")
    assert q["state"] == "xyz"
    r = await exchange(c, q["code"], verifier)
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["token_type"] == "Bearer"
    assert body["patient"] == "pat-bob"
    assert body["expires_in"] == 3600
    assert set(body["scope"].split()) == {
        "openid",
        "fhirUser",
        "launch/patient",
        "offline_access",
        "patient/Observation.rs",
        "patient/Patient.read",
    }
    claims = server.tokens.verify(body["access_token"])
    assert claims["patient"] == "pat-bob" and claims["client_id"] == "app"
    assert claims["fhirUser"] == "Practitioner/pt-1"
    ident = jwt.decode(body["id_token"], options={"verify_signature": False})
    assert ident["aud"] == "app" and ident["fhirUser"] == "Practitioner/pt-1"
    assert ident["nonce"] == "n-1"
    assert "refresh_token" in body
    # the access token authenticates against the FHIR API
    principal = await server.authenticator().authenticate("Bearer " + body["access_token"])
    assert principal.patient == "pat-bob"
    assert principal.permissions.allows("read", "Observation")
    # a code works once
    again = await exchange(c, q["code"], verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


async def test_bad_verifier_fails(env: Any) -> None:
    _, c, _ = env
    _, challenge = pkce()
    q = await get_code(c, challenge)
    r = await exchange(c, q["code"], secrets.token_urlsafe(48))
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    q = await get_code(c, challenge)
    r = await exchange(c, q["code"], None)
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"


async def test_missing_or_plain_pkce_is_refused(env: Any) -> None:
    _, c, _ = env
    q = await get_code(c, None)
    assert q["error"] == "invalid_request" and q["state"] == "xyz"
    assert "code" not in q
    q = await get_code(c, "a" * 43, code_challenge_method="plain")
    assert q["error"] == "invalid_request"


async def test_authorize_request_errors(env: Any) -> None:
    _, c, _ = env
    _, challenge = pkce()
    # unknown client / unregistered redirect: no redirect, an error page
    r = await c.get("/auth/authorize", params=auth_params(challenge, client_id="nobody"))
    assert r.status_code == 400 and "text/html" in r.headers["content-type"]
    r = await c.get(
        "/auth/authorize", params=auth_params(challenge, redirect_uri="https://evil/cb")
    )
    assert r.status_code == 400 and "location" not in r.headers
    # wrong aud, wrong response type, nothing grantable
    assert (await get_code(c, challenge, aud="https://other/fhir"))["error"] == "invalid_request"
    assert (await get_code(c, challenge, response_type="token"))[
        "error"
    ] == "unsupported_response_type"
    assert (await get_code(c, challenge, scope="system/*.rs openid"))["error"] == "invalid_scope"
    assert (await get_code(c, challenge, patient="pat-zed"))["error"] == "invalid_request"


async def test_scopes_are_narrowed_to_the_client(env: Any) -> None:
    _, c, _ = env
    verifier, challenge = pkce()
    q = await get_code(c, challenge, scope="patient/Observation.cruds user/Claim.rs system/*.*")
    body = (await exchange(c, q["code"], verifier)).json()
    assert body["scope"].split() == ["patient/Observation.rs", "user/Claim.rs"]
    assert "refresh_token" not in body and "id_token" not in body


async def test_refresh_with_rotation(env: Any) -> None:
    server, c, _ = env
    verifier, challenge = pkce()
    q = await get_code(c, challenge)
    first = (await exchange(c, q["code"], verifier)).json()
    form = {"grant_type": "refresh_token", "client_id": "app"}
    r = await c.post("/auth/token", data={**form, "refresh_token": first["refresh_token"]})
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["patient"] == first["patient"]
    assert server.tokens.verify(second["access_token"])["scope"] == first["scope"]
    # narrower scope on refresh is fine; wider is not
    r = await c.post(
        "/auth/token",
        data={
            **form,
            "refresh_token": second["refresh_token"],
            "scope": "patient/Observation.rs offline_access",
        },
    )
    assert r.status_code == 200 and r.json()["scope"] == "offline_access patient/Observation.rs"
    third = r.json()
    r = await c.post(
        "/auth/token",
        data={**form, "refresh_token": third["refresh_token"], "scope": "user/*.cruds"},
    )
    assert r.json()["error"] == "invalid_scope"
    # reusing a rotated refresh token fails and revokes the whole family
    r = await c.post("/auth/token", data={**form, "refresh_token": first["refresh_token"]})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    r = await c.post("/auth/token", data={**form, "refresh_token": third["refresh_token"]})
    assert r.json()["error"] == "invalid_grant"
    # another client cannot use it
    q = await get_code(c, challenge)
    fresh = (await exchange(c, q["code"], verifier)).json()["refresh_token"]
    r = await c.post("/auth/token", data={**form, "client_id": "conf", "refresh_token": fresh})
    assert r.status_code == 401  # conf must authenticate


async def test_confidential_symmetric_client(env: Any) -> None:
    _, c, secrets_ = env
    verifier, challenge = pkce()
    q = await get_code(c, challenge, client_id="conf", scope="online_access user/Observation.rs")
    form = {
        "grant_type": "authorization_code",
        "code": q["code"],
        "redirect_uri": REDIRECT,
        "code_verifier": verifier,
    }
    # no credentials -> invalid_client (401)
    r = await c.post("/auth/token", data={**form, "client_id": "conf"})
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    q = await get_code(c, challenge, client_id="conf", scope="online_access user/Observation.rs")
    form["code"] = q["code"]
    r = await c.post("/auth/token", data=form, auth=("conf", "wrong"))
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
    q = await get_code(c, challenge, client_id="conf", scope="online_access user/Observation.rs")
    form["code"] = q["code"]
    r = await c.post("/auth/token", data=form, auth=("conf", secrets_["conf"]))
    assert r.status_code == 200, r.text
    assert "refresh_token" in r.json()  # online_access
    # client_secret_post works too
    q = await get_code(c, challenge, client_id="conf", scope="user/Observation.rs")
    form["code"] = q["code"]
    r = await c.post(
        "/auth/token", data={**form, "client_id": "conf", "client_secret": secrets_["conf"]}
    )
    assert r.status_code == 200, r.text
    assert "refresh_token" not in r.json()
    # a code cannot be redeemed by another client
    q = await get_code(c, challenge, client_id="conf", scope="user/Observation.rs")
    r = await exchange(c, q["code"], verifier)
    assert r.json()["error"] == "invalid_grant"


async def test_token_endpoint_errors(env: Any) -> None:
    _, c, _ = env
    r = await c.post("/auth/token", json={"grant_type": "authorization_code"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    r = await c.post("/auth/token", data={"grant_type": "password", "client_id": "app"})
    assert r.json()["error"] == "unsupported_grant_type"
    r = await c.post("/auth/token", data={"grant_type": "client_credentials"})
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    r = await c.post(
        "/auth/token",
        content="grant_type=a&grant_type=b&client_id=app",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.json()["error"] == "invalid_request"
    r = await c.post("/auth/token", data={"grant_type": "client_credentials", "client_id": "app"})
    assert r.json()["error"] == "unauthorized_client"


# --------------------------------------------------------------------------- consent page


async def test_consent_page_and_patient_picker() -> None:
    server, _ = make_server()
    app = FastAPI()
    app.include_router(server.router())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as c:
        verifier, challenge = pkce()
        r = await c.get("/auth/authorize", params=auth_params(challenge))
        assert r.status_code == 200 and "text/html" in r.headers["content-type"]
        page = r.text
        assert "Ada Lovelace" in page and "pat-bob" in page
        assert "Therapy &lt;App&gt;" in page  # escaped
        txn = page.split("name='txn' value='")[1].split("'")[0]
        r = await c.post(
            "/auth/authorize/decision",
            data={"txn": txn, "patient": "pat-ada", "decision": "approve"},
        )
        q = redirect_query(r)
        body = (await exchange(c, q["code"], verifier)).json()
        assert body["patient"] == "pat-ada"
        # the transaction is single use
        r = await c.post("/auth/authorize/decision", data={"txn": txn, "decision": "approve"})
        assert r.status_code == 400
        # deny
        r = await c.get("/auth/authorize", params=auth_params(challenge))
        txn = r.text.split("name='txn' value='")[1].split("'")[0]
        r = await c.post("/auth/authorize/decision", data={"txn": txn, "decision": "deny"})
        assert redirect_query(r)["error"] == "access_denied"
        # a patient that the lookup does not know is refused
        r = await c.get("/auth/authorize", params=auth_params(challenge))
        txn = r.text.split("name='txn' value='")[1].split("'")[0]
        r = await c.post(
            "/auth/authorize/decision",
            data={"txn": txn, "patient": "pat-zed", "decision": "approve"},
        )
        assert r.status_code == 400


# --------------------------------------------------------------------------- backend


def assertion(
    keys: KeyRing = APP_KEYS,
    *,
    aud: str = TOKEN_URL,
    iss: str = "backend",
    sub: str | None = None,
    exp_in: int = 240,
    jti: str | None = None,
    alg: str | None = None,
) -> str:
    now = int(time.time())
    claims = {
        "iss": iss,
        "sub": sub or iss,
        "aud": aud,
        "exp": now + exp_in,
        "jti": jti or str(uuid.uuid4()),
    }
    if alg is not None:  # sign with another algorithm, same key material family
        key = keys.current
        material: Any = "s" * 48 if alg.startswith("HS") else key.private_key
        return jwt.encode(claims, material, algorithm=alg, headers={"kid": key.kid})
    return keys.sign(claims)


async def backend(c: httpx.AsyncClient, token: str, scope: str = "system/*.rs") -> httpx.Response:
    return await c.post(
        "/auth/token",
        data={
            "grant_type": "client_credentials",
            "scope": scope,
            "client_assertion_type": JWT_BEARER,
            "client_assertion": token,
        },
    )


async def test_client_credentials_good(env: Any) -> None:
    server, c, _ = env
    r = await backend(c, assertion(), "system/*.rs system/Observation.cruds system/Claim.c")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["scope"] == "system/*.rs system/Observation.cruds"
    assert "refresh_token" not in body and "patient" not in body
    claims = server.tokens.verify(body["access_token"])
    assert claims["sub"] == "backend" and claims["client_id"] == "backend"
    r = await backend(c, assertion(RS_KEYS))  # RS384 works as well
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda: assertion(RS_KEYS, alg="RS256"), "RS384 or ES384"),
        (lambda: assertion(alg="HS256"), "RS384 or ES384"),
        (lambda: assertion(exp_in=-60), "expired"),
        (lambda: assertion(exp_in=3600), "5 minutes"),
        (lambda: assertion(aud="https://other/token"), "not meant"),
        (lambda: assertion(sub="someone-else"), "subject"),
        (lambda: assertion(iss="app"), "private_key_jwt"),
        (
            lambda: assertion(KeyRing([SigningKey.generate("ES384", kid=APP_KEYS.current.kid)])),
            "signature",
        ),
        (lambda: assertion(KeyRing.generate("ES384")), "no known key"),
        (lambda: "garbage", "well-formed"),
    ],
)
async def test_client_credentials_bad_assertions(env: Any, make: Any, why: str) -> None:
    _, c, _ = env
    r = await backend(c, make())
    assert r.status_code == 401, r.text
    assert r.json()["error"] == "invalid_client"
    assert why in r.json()["error_description"]


async def test_client_credentials_jti_reuse_and_scope(env: Any) -> None:
    _, c, _ = env
    token = assertion(jti="once")
    assert (await backend(c, token)).status_code == 200
    r = await backend(c, token)
    assert r.status_code == 401 and "jti" in r.json()["error_description"]
    r = await backend(c, assertion(), "user/*.rs patient/*.rs")
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope"
    r = await c.post(
        "/auth/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:other",
            "client_assertion": assertion(),
        },
    )
    assert r.status_code == 401


async def test_client_jwks_url_is_fetched_through_the_fetcher() -> None:
    server, _ = make_server()
    fetched: list[str] = []

    async def fetcher(url: str) -> dict[str, Any]:
        fetched.append(url)
        return APP_KEYS.public_jwks()

    client, _ = new_client(
        client_id="remote",
        client_type="confidential",
        scopes="system/*.rs",
        jwks_uri="https://remote.example/jwks.json",
    )
    server.clients.add(client)
    server.fetcher = fetcher
    app = FastAPI()
    app.include_router(server.router())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as c:
        r = await backend(c, assertion(iss="remote"))
        assert r.status_code == 200, r.text
        assert fetched == ["https://remote.example/jwks.json"]


async def test_expired_access_token_is_401(env: Any) -> None:
    server, _, _ = env
    tok, _ = server.tokens.issue_access_token(
        subject="x", client_id="app", scope="user/*.rs", lifetime=-10
    )
    with pytest.raises(TokenError):
        server.tokens.verify(tok)
    from fhir_server.errors import FhirError

    with pytest.raises(FhirError) as err:
        await server.authenticator().authenticate("Bearer " + tok)
    assert err.value.status == 401
    with pytest.raises(FhirError) as err:
        await server.authenticator().authenticate(None)
    assert err.value.status == 401
    basic = base64.b64encode(b"a:b").decode()
    with pytest.raises(FhirError):
        await server.authenticator().authenticate("Basic " + basic)
