"""The authorization server (SMART App Launch 2.x on OAuth 2.0) as an ``APIRouter``.

Routes (``auth`` = :attr:`AuthConfig.auth_path`, ``fhir`` = the FHIR base path):

- ``GET  {fhir}/.well-known/smart-configuration``: the SMART discovery document;
- ``GET|POST {auth}/authorize``: authorization code flow, PKCE (S256) required; a
  page to approve (and pick the patient for ``launch/patient``), or, with
  ``auto_approve``, a redirect straight back with the code;
- ``POST {auth}/authorize/decision``: the page's form;
- ``POST {auth}/token``: ``authorization_code`` (PKCE verified), ``refresh_token``
  (rotated: a refresh token works once; presenting a used one revokes its family)
  and ``client_credentials`` (SMART Backend Services);
- ``GET  {auth}/jwks``: the public keys of our tokens;
- ``GET  {auth}/.well-known/openid-configuration``: OpenID Connect discovery.

Clients authenticate with ``client_secret_basic``/``client_secret_post`` (a
confidential symmetric client), ``private_key_jwt`` (a signed JWT assertion, RS384 or
ES384, ``iss`` = ``sub`` = client_id, ``aud`` = the token endpoint, ``exp`` at most 5
minutes ahead, ``jti`` used once) or not at all (a public client: PKCE binds the
code). Errors follow RFC 6749: JSON ``{"error", "error_description"}`` from the token
endpoint, redirects with ``error`` from the authorization endpoint once the client
and redirect URI are known, and a plain error page before that.

Authorization codes, pending approvals, refresh tokens and seen ``jti`` values live in
memory: a restart signs everyone out (access tokens stay valid until they expire).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit, urlunsplit

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from fhir_server.auth import scopes as sc
from fhir_server.auth.access import Authenticator
from fhir_server.auth.clients import Client, ClientRegistry
from fhir_server.auth.config import AuthConfig
from fhir_server.auth.scopes import ScopeSet
from fhir_server.auth.tokens import (
    SIGNING_ALGS,
    Fetcher,
    KeyRing,
    KeySource,
    OidcVerifier,
    TokenError,
    TokenIssuer,
    default_fetcher,
    unverified_claims,
    unverified_header,
    verify_jwt,
)

JWT_BEARER: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_MAX_LIFETIME: Final = 300  # seconds: SMART Backend Services
_VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")
_CHALLENGE = re.compile(r"^[A-Za-z0-9\-_]{43}$")
_FORM = "application/x-www-form-urlencoded"

PatientLookup = Callable[[], Awaitable[Sequence[tuple[str, str]]]]  # (id, display)
UserResolver = Callable[[Request], Awaitable[str | None]]  # -> fhirUser reference

CAPABILITIES: Final = (
    "launch-standalone",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "context-standalone-patient",
    "permission-offline",
    "permission-online",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
    "sso-openid-connect",
    "authorize-post",
)

SCOPES_SUPPORTED: Final = (
    "openid",
    "fhirUser",
    "launch/patient",
    "offline_access",
    "online_access",
    "patient/*.cruds",
    "patient/*.rs",
    "patient/*.read",
    "patient/*.write",
    "user/*.cruds",
    "user/*.rs",
    "user/*.read",
    "user/*.write",
    "system/*.cruds",
    "system/*.rs",
    "system/*.read",
    "system/*.write",
)


class OAuthError(Exception):
    """An RFC 6749 error response."""

    def __init__(
        self,
        error: str,
        description: str,
        status: int = 400,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"error": self.error, "error_description": self.description},
            self.status,
            headers={**_NO_STORE, **self.headers},
        )


_NO_STORE: Final = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _invalid_client(description: str, basic: bool = False) -> OAuthError:
    headers = {"WWW-Authenticate": 'Basic realm="token"'} if basic else {}
    return OAuthError("invalid_client", description, 401, headers)


def s256(verifier: str) -> str:
    """The S256 code challenge of a PKCE code verifier (RFC 7636)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _with_query(uri: str, params: Mapping[str, str | None]) -> str:
    parts = urlsplit(uri)
    extra = urlencode({k: v for k, v in params.items() if v is not None})
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def _single(pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Request parameters; each may appear once (RFC 6749 section 3.1)."""
    out: dict[str, str] = {}
    for k, v in pairs:
        if k in out:
            raise OAuthError("invalid_request", f"parameter '{k}' is given more than once")
        if v != "":
            out[k] = v
    return out


@dataclass(slots=True)
class _Pending:
    """An authorization request waiting for the user's decision."""

    client_id: str
    redirect_uri: str
    redirect_uri_given: bool
    state: str | None
    scopes: ScopeSet
    challenge: str
    nonce: str | None
    user: str | None
    needs_patient: bool
    expires: float


@dataclass(slots=True)
class _Code:
    client_id: str
    redirect_uri: str
    redirect_uri_given: bool
    scopes: ScopeSet
    challenge: str
    nonce: str | None
    user: str | None
    patient: str | None
    expires: float


@dataclass(slots=True)
class _Refresh:
    client_id: str
    scopes: ScopeSet
    user: str | None
    patient: str | None
    family: str
    expires: float
    used: bool = False


@dataclass
class AuthServer:
    """The authorization server's state and endpoints."""

    config: AuthConfig
    clients: ClientRegistry
    keys: KeyRing = field(default_factory=KeyRing.generate)
    patient_lookup: PatientLookup | None = None
    user_resolver: UserResolver | None = None
    fetcher: Fetcher = default_fetcher
    clock: Callable[[], float] = time.time
    tokens: TokenIssuer = field(init=False)
    _pending: dict[str, _Pending] = field(default_factory=dict, init=False)
    _codes: dict[str, _Code] = field(default_factory=dict, init=False)
    _refresh: dict[str, _Refresh] = field(default_factory=dict, init=False)
    _jtis: dict[tuple[str, str], float] = field(default_factory=dict, init=False)
    _client_keys: dict[str, tuple[Client, KeySource]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.tokens = TokenIssuer(
            self.keys,
            self.config.issuer,
            self.config.audience,
            self.config.access_token_lifetime,
            clock=self.clock,
        )

    @classmethod
    def from_config(cls, config: AuthConfig, **kwargs: Any) -> AuthServer:
        """With the clients file and the signing keys the config names."""
        clients = ClientRegistry(config.clients_path)
        keys = KeyRing.load_or_create(config.keys_path, config.signing_alg)
        return cls(config, clients, keys, **kwargs)

    def authenticator(self, external: Sequence[OidcVerifier] = ()) -> Authenticator:
        """Verifies our access tokens (and those of ``external`` providers)."""
        return Authenticator(self.tokens, external, clock=self.clock)

    # ------------------------------------------------------------------ documents

    def smart_configuration(self) -> dict[str, Any]:
        c = self.config
        return {
            "issuer": c.issuer,
            "jwks_uri": c.jwks_url,
            "authorization_endpoint": c.authorize_url,
            "token_endpoint": c.token_url,
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "token_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                "private_key_jwt",
            ],
            "token_endpoint_auth_signing_alg_values_supported": list(SIGNING_ALGS),
            "scopes_supported": list(SCOPES_SUPPORTED),
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "capabilities": list(CAPABILITIES),
        }

    def openid_configuration(self) -> dict[str, Any]:
        c = self.config
        return {
            "issuer": c.issuer,
            "authorization_endpoint": c.authorize_url,
            "token_endpoint": c.token_url,
            "jwks_uri": c.jwks_url,
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [self.keys.current.alg],
            "scopes_supported": ["openid", "fhirUser"],
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nonce", "fhirUser"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                "private_key_jwt",
            ],
            "code_challenge_methods_supported": ["S256"],
        }

    # ------------------------------------------------------------------ authorize

    async def authorize(self, request: Request) -> Response:
        try:
            if request.method == "POST":
                params = _single(await self._form(request))
            else:
                params = _single(request.query_params.multi_items())
        except OAuthError as exc:
            return _error_page(exc.description)
        client_id = params.get("client_id")
        client = self.clients.get(client_id) if client_id else None
        if client is None:
            return _error_page("Unknown or missing client_id")
        given = params.get("redirect_uri")
        if given is None:
            if len(client.redirect_uris) != 1:
                return _error_page("redirect_uri is required")
            redirect_uri = client.redirect_uris[0]
        elif given in client.redirect_uris:
            redirect_uri = given
        else:
            return _error_page("redirect_uri is not registered for this client")
        state = params.get("state")
        try:
            pending = await self._check_authorize(request, client, params, redirect_uri)
            pending.redirect_uri_given = given is not None
            pending.state = state
            if self.config.auto_approve:
                patient = None
                if pending.needs_patient:
                    patient = await self._auto_patient(params.get("patient"))
                return self._approve(pending, patient)
        except OAuthError as exc:
            return _redirect(
                redirect_uri,
                {"error": exc.error, "error_description": exc.description, "state": state},
            )
        self._sweep()
        txn = secrets.token_urlsafe(24)
        self._pending[txn] = pending
        patients: Sequence[tuple[str, str]] = ()
        if pending.needs_patient and self.config.fixed_patient is None:
            patients = await self._patients()
        return _consent_page(
            self.config.authorize_url + "/decision", txn, client, pending, patients
        )

    async def _check_authorize(
        self, request: Request, client: Client, params: Mapping[str, str], redirect_uri: str
    ) -> _Pending:
        if params.get("response_type") != "code":
            raise OAuthError("unsupported_response_type", "response_type must be 'code'")
        challenge = params.get("code_challenge")
        if challenge is None:
            raise OAuthError("invalid_request", "PKCE is required: send code_challenge")
        if params.get("code_challenge_method") != "S256":
            raise OAuthError("invalid_request", "code_challenge_method must be S256")
        if not _CHALLENGE.match(challenge):
            raise OAuthError("invalid_request", "code_challenge is not a S256 challenge")
        aud = params.get("aud")
        if aud is None or aud.rstrip("/") != self.config.audience:
            raise OAuthError("invalid_request", "aud must be this server's FHIR base URL")
        if "launch" in params:
            raise OAuthError("invalid_request", "EHR launch is not supported")
        requested = ScopeSet.parse(params.get("scope", ""))
        granted = requested.restricted_to(client.allowed_scopes)
        # system/ scopes are for backend services; an EHR launch context is not offered
        granted = ScopeSet(
            tuple(r for r in granted.resources if r.level != "system"),
            granted.names - {sc.LAUNCH, sc.LAUNCH_ENCOUNTER},
        )
        user = await self._user(request)
        if user is None:
            granted = ScopeSet(granted.resources, granted.names - {sc.OPENID, sc.FHIR_USER})
        if not granted.resources:
            raise OAuthError("invalid_scope", "none of the requested scopes can be granted")
        needs_patient = sc.LAUNCH_PATIENT in granted or "patient" in granted.levels()
        return _Pending(
            client_id=client.client_id,
            redirect_uri=redirect_uri,
            redirect_uri_given=True,
            state=None,
            scopes=granted,
            challenge=challenge,
            nonce=params.get("nonce"),
            user=user,
            needs_patient=needs_patient,
            expires=self.clock() + 600,
        )

    async def _user(self, request: Request) -> str | None:
        if self.user_resolver is not None:
            return await self.user_resolver(request)
        return self.config.default_user

    async def _patients(self) -> Sequence[tuple[str, str]]:
        if self.patient_lookup is None:
            if self.config.default_patient:
                return [(self.config.default_patient, self.config.default_patient)]
            return []
        return await self.patient_lookup()

    async def _auto_patient(self, requested: str | None) -> str:
        if self.config.fixed_patient is not None:
            return self.config.fixed_patient
        if requested is not None:
            if self.patient_lookup is not None and requested not in {
                p for p, _ in await self.patient_lookup()
            }:
                raise OAuthError("invalid_request", "unknown patient")
            return requested
        if self.config.default_patient is not None:
            return self.config.default_patient
        patients = await self._patients()
        if not patients:
            raise OAuthError("invalid_request", "no patient is available for launch/patient")
        return patients[0][0]

    async def decision(self, request: Request) -> Response:
        try:
            form = _single(await self._form(request))
        except OAuthError as exc:
            return _error_page(exc.description)
        pending = self._pending.pop(form.get("txn", ""), None)
        if pending is None or pending.expires < self.clock():
            return _error_page("This authorization request has expired; start again")
        if form.get("decision") != "approve":
            return _redirect(
                pending.redirect_uri,
                {
                    "error": "access_denied",
                    "error_description": "the user denied access",
                    "state": pending.state,
                },
            )
        patient: str | None = None
        if pending.needs_patient:
            patient = self.config.fixed_patient or form.get("patient")
            if patient is None:
                return _error_page("Choose a patient")
            if self.config.fixed_patient is None and patient not in {
                p for p, _ in await self._patients()
            }:
                return _error_page("Unknown patient")
        return self._approve(pending, patient)

    def _approve(self, pending: _Pending, patient: str | None) -> Response:
        code = secrets.token_urlsafe(32)
        self._codes[code] = _Code(
            client_id=pending.client_id,
            redirect_uri=pending.redirect_uri,
            redirect_uri_given=pending.redirect_uri_given,
            scopes=pending.scopes,
            challenge=pending.challenge,
            nonce=pending.nonce,
            user=pending.user,
            patient=patient,
            expires=self.clock() + self.config.code_lifetime,
        )
        return _redirect(pending.redirect_uri, {"code": code, "state": pending.state})

    # ------------------------------------------------------------------ token

    async def token(self, request: Request) -> Response:
        try:
            ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
            if ctype != _FORM:
                raise OAuthError("invalid_request", f"the token endpoint takes {_FORM}")
            form = _single(await self._form(request))
            client = await self._authenticate_client(request, form)
            grant = form.get("grant_type")
            if grant == "authorization_code":
                body = self._grant_code(client, form)
            elif grant == "refresh_token":
                body = self._grant_refresh(client, form)
            elif grant == "client_credentials":
                body = self._grant_client_credentials(client, form)
            elif grant is None:
                raise OAuthError("invalid_request", "grant_type is required")
            else:
                raise OAuthError("unsupported_grant_type", f"grant_type '{grant}' is not supported")
        except OAuthError as exc:
            return exc.response()
        return JSONResponse(body, 200, headers=_NO_STORE)

    async def _form(self, request: Request) -> list[tuple[str, str]]:
        body = await request.body()
        if len(body) > 64 * 1024:
            raise OAuthError("invalid_request", "the request is too large")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise OAuthError("invalid_request", "the request is not UTF-8") from None
        return parse_qsl(text, keep_blank_values=True)

    async def _authenticate_client(self, request: Request, form: Mapping[str, str]) -> Client:
        header = request.headers.get("authorization")
        if header and header.lower().startswith("basic "):
            try:
                raw = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
                cid, _, secret = raw.partition(":")
                cid, secret = unquote_plus(cid), unquote_plus(secret)
            except (ValueError, UnicodeDecodeError):
                raise _invalid_client("malformed Basic credentials", basic=True) from None
            client = self.clients.get(cid)
            if client is None or not client.check_secret(secret):
                raise _invalid_client("client authentication failed", basic=True)
            if form.get("client_id", cid) != cid:
                raise OAuthError("invalid_request", "client_id does not match the credentials")
            return client
        if "client_assertion" in form or "client_assertion_type" in form:
            if form.get("client_assertion_type") != JWT_BEARER:
                raise _invalid_client(f"client_assertion_type must be {JWT_BEARER}")
            client = await self._verify_assertion(form.get("client_assertion", ""))
            if form.get("client_id", client.client_id) != client.client_id:
                raise OAuthError("invalid_request", "client_id does not match the assertion")
            return client
        form_id = form.get("client_id")
        if form_id is None:
            raise _invalid_client("client authentication is required")
        found = self.clients.get(form_id)
        if found is None:
            raise _invalid_client("unknown client")
        if "client_secret" in form:
            if not found.auth_method.startswith("client_secret") or not found.check_secret(
                form["client_secret"]
            ):
                raise _invalid_client("client authentication failed")
            return found
        if found.is_confidential:
            raise _invalid_client("this client must authenticate")
        return found

    async def _verify_assertion(self, assertion: str) -> Client:
        try:
            header = unverified_header(assertion)
            claims = unverified_claims(assertion)
        except TokenError as exc:
            raise _invalid_client(f"client_assertion: {exc.description}") from None
        alg = header.get("alg")
        if alg not in SIGNING_ALGS:
            raise _invalid_client("client_assertion must be signed with RS384 or ES384")
        iss = claims.get("iss")
        client = self.clients.get(iss) if isinstance(iss, str) else None
        if client is None or not client.asymmetric:
            raise _invalid_client(
                "client_assertion: unknown client or not a private_key_jwt client"
            )
        try:
            key = await self._client_key_source(client).key(header.get("kid"), alg)
            verified = verify_jwt(
                assertion,
                key,
                alg,
                issuer=client.client_id,
                audience=self.config.token_url,
                required=("iss", "sub", "aud", "exp", "jti"),
                subject=client.client_id,
            )
        except TokenError as exc:
            raise _invalid_client(f"client_assertion: {exc.description}") from None
        now = self.clock()
        exp = float(verified["exp"])
        if exp > now + ASSERTION_MAX_LIFETIME + 5:
            raise _invalid_client("client_assertion: exp must be at most 5 minutes ahead")
        self._sweep()
        jti = (client.client_id, str(verified["jti"]))
        if jti in self._jtis:
            raise _invalid_client("client_assertion: jti was already used")
        self._jtis[jti] = exp
        return client

    def _client_key_source(self, client: Client) -> KeySource:
        cached = self._client_keys.get(client.client_id)
        if cached is not None and cached[0] == client:
            return cached[1]
        source = KeySource(client.jwks, client.jwks_uri, self.fetcher)
        self._client_keys[client.client_id] = (client, source)
        return source

    def _grant_code(self, client: Client, form: Mapping[str, str]) -> dict[str, Any]:
        code = form.get("code")
        if code is None:
            raise OAuthError("invalid_request", "code is required")
        entry = self._codes.pop(code, None)
        if entry is None or entry.expires < self.clock():
            raise OAuthError("invalid_grant", "the authorization code is invalid or expired")
        if entry.client_id != client.client_id:
            raise OAuthError("invalid_grant", "the code was issued to another client")
        if entry.redirect_uri_given and form.get("redirect_uri") != entry.redirect_uri:
            raise OAuthError("invalid_grant", "redirect_uri does not match the authorization")
        verifier = form.get("code_verifier")
        if verifier is None:
            raise OAuthError("invalid_request", "PKCE code_verifier is required")
        if not _VERIFIER.match(verifier) or not hmac.compare_digest(
            s256(verifier), entry.challenge
        ):
            raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge")
        return self._token_response(
            client, entry.scopes, entry.user, entry.patient, entry.nonce, family=None
        )

    def _grant_refresh(self, client: Client, form: Mapping[str, str]) -> dict[str, Any]:
        token = form.get("refresh_token")
        if token is None:
            raise OAuthError("invalid_request", "refresh_token is required")
        key = _digest(token)
        entry = self._refresh.get(key)
        now = self.clock()
        if entry is None or entry.expires < now or entry.client_id != client.client_id:
            raise OAuthError("invalid_grant", "the refresh token is invalid or expired")
        if entry.used:
            self._revoke_family(entry.family)
            raise OAuthError("invalid_grant", "the refresh token was already used; revoked")
        scopes = entry.scopes
        if "scope" in form:
            wanted = ScopeSet.parse(form["scope"])
            if wanted.unrecognized or not wanted.subset_of(entry.scopes):
                raise OAuthError("invalid_scope", "scope exceeds what was granted")
            scopes = wanted
        entry.used = True
        return self._token_response(
            client, scopes, entry.user, entry.patient, None, family=entry.family
        )

    def _grant_client_credentials(self, client: Client, form: Mapping[str, str]) -> dict[str, Any]:
        if not client.is_confidential:
            raise OAuthError(
                "unauthorized_client", "client_credentials needs a confidential client"
            )
        requested = ScopeSet.parse(form.get("scope", ""))
        granted = requested.restricted_to(client.allowed_scopes)
        system = ScopeSet(tuple(r for r in granted.resources if r.level == "system"))
        if not system.resources:
            raise OAuthError("invalid_scope", "request system/ scopes this client is allowed")
        access, ttl = self.tokens.issue_access_token(
            subject=client.client_id, client_id=client.client_id, scope=str(system)
        )
        return {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": ttl,
            "scope": str(system),
        }

    def _token_response(
        self,
        client: Client,
        scopes: ScopeSet,
        user: str | None,
        patient: str | None,
        nonce: str | None,
        *,
        family: str | None,
    ) -> dict[str, Any]:
        scope = str(scopes)
        access, ttl = self.tokens.issue_access_token(
            subject=user or client.client_id,
            client_id=client.client_id,
            scope=scope,
            patient=patient,
            fhir_user=user if sc.FHIR_USER in scopes else None,
        )
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": ttl,
            "scope": scope,
        }
        if patient is not None:
            body["patient"] = patient
        offline = sc.OFFLINE_ACCESS in scopes
        if offline or sc.ONLINE_ACCESS in scopes:
            lifetime = (
                self.config.refresh_token_lifetime
                if offline
                else self.config.online_refresh_lifetime
            )
            refresh = secrets.token_urlsafe(32)
            self._sweep()
            self._refresh[_digest(refresh)] = _Refresh(
                client_id=client.client_id,
                scopes=scopes,
                user=user,
                patient=patient,
                family=family or secrets.token_urlsafe(12),
                expires=self.clock() + lifetime,
            )
            body["refresh_token"] = refresh
        if sc.OPENID in scopes and sc.FHIR_USER in scopes and user is not None:
            body["id_token"] = self.tokens.issue_id_token(
                subject=user, client_id=client.client_id, fhir_user=user, nonce=nonce
            )
        return body

    def _revoke_family(self, family: str) -> None:
        for k in [k for k, r in self._refresh.items() if r.family == family]:
            del self._refresh[k]

    def _sweep(self) -> None:
        now = self.clock()
        for jti in [j for j, exp in self._jtis.items() if exp < now]:
            del self._jtis[jti]
        for k in [k for k, c in self._codes.items() if c.expires < now]:
            del self._codes[k]
        for k in [k for k, p in self._pending.items() if p.expires < now]:
            del self._pending[k]
        for k in [k for k, r in self._refresh.items() if r.expires < now]:
            del self._refresh[k]

    # ------------------------------------------------------------------ router

    def router(self, *, discovery: bool = True, endpoints: bool = True) -> APIRouter:
        """The routes: ``discovery``, ``{fhir}/.well-known/smart-configuration`` (include
        it in the app BEFORE the FHIR catch-all route); ``endpoints``, the others."""
        router = APIRouter()
        auth = self.config.auth_path.rstrip("/")
        fhir = self.config.fhir_base_path.rstrip("/")

        async def smart_configuration(request: Request) -> Response:
            return JSONResponse(
                self.smart_configuration(), headers={"Access-Control-Allow-Origin": "*"}
            )

        async def openid_configuration(request: Request) -> Response:
            return JSONResponse(
                self.openid_configuration(), headers={"Access-Control-Allow-Origin": "*"}
            )

        async def jwks(request: Request) -> Response:
            return JSONResponse(
                self.keys.public_jwks(), headers={"Access-Control-Allow-Origin": "*"}
            )

        async def token(request: Request) -> Response:
            response = await self.token(request)
            response.headers["Access-Control-Allow-Origin"] = "*"
            return response

        if discovery:  # a plain route: every FHIR request is matched against it first
            router.add_route(
                fhir + "/.well-known/smart-configuration",
                smart_configuration,
                methods=["GET"],
                include_in_schema=False,
            )
        if not endpoints:
            return router
        router.add_api_route(
            auth + "/.well-known/openid-configuration",
            openid_configuration,
            methods=["GET"],
            include_in_schema=False,
        )
        router.add_api_route(auth + "/jwks", jwks, methods=["GET"], include_in_schema=False)
        router.add_api_route(
            auth + "/authorize", self.authorize, methods=["GET", "POST"], include_in_schema=False
        )
        router.add_api_route(
            auth + "/authorize/decision", self.decision, methods=["POST"], include_in_schema=False
        )
        router.add_api_route(auth + "/token", token, methods=["POST"], include_in_schema=False)
        return router


# --------------------------------------------------------------------------- pages


def _redirect(uri: str, params: Mapping[str, str | None]) -> Response:
    return RedirectResponse(_with_query(uri, params), status_code=302, headers=_NO_STORE)


_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:36rem;margin:2rem auto;padding:0 1rem}"
    "li{margin:.3rem 0}button{margin-right:.5rem;padding:.4rem 1rem}"
)


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    doc = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(
        doc,
        status,
        headers={
            **_NO_STORE,
            "X-Frame-Options": "DENY",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
            "form-action 'self'; frame-ancestors 'none'",
        },
    )


def _error_page(message: str) -> HTMLResponse:
    return _page("Authorization failed", f"<p>{html.escape(message)}</p>", 400)


def _consent_page(
    action: str,
    txn: str,
    client: Client,
    pending: _Pending,
    patients: Sequence[tuple[str, str]],
) -> HTMLResponse:
    e = html.escape
    scopes = "".join(f"<li><code>{e(s)}</code></li>" for s in pending.scopes.strings())
    picker = ""
    if patients:
        items = "".join(
            f"<li><label><input type='radio' name='patient' value='{e(pid, quote=True)}'"
            f"{' checked' if i == 0 else ''}> {e(name)} <small>({e(pid)})</small></label></li>"
            for i, (pid, name) in enumerate(patients)
        )
        picker = f"<h2>Patient</h2><ul style='list-style:none;padding:0'>{items}</ul>"
    elif pending.needs_patient:
        picker = "<p>Patient id: <input name='patient' required></p>"
    who = e(client.name or client.client_id)
    body = (
        f"<p><strong>{who}</strong> asks for access:</p><ul>{scopes}</ul>"
        f"<form method='post' action='{e(action, quote=True)}'>"
        f"<input type='hidden' name='txn' value='{e(txn, quote=True)}'>{picker}"
        "<button name='decision' value='approve'>Allow</button>"
        "<button name='decision' value='deny'>Deny</button></form>"
    )
    return _page("Authorize application", body)
