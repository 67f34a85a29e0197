"""Settings of the authorization server: one immutable value, built from the server's
:class:`~fhir_server.settings.Settings` (fields it does not have take defaults here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fhir_server.settings import Settings


@dataclass(frozen=True, slots=True)
class AuthConfig:
    fhir_base_url: str  # the audience of our access tokens
    auth_path: str = "/auth"  # where the authorization server's routes live
    fhir_base_path: str = "/fhir"  # where /.well-known/smart-configuration lives
    # Public URL of the authorization server (the token issuer); derived from the
    # FHIR base URL's origin and ``auth_path`` when not given.
    issuer_url: str | None = None
    clients_path: str | None = None  # JSON file of registered clients (None: memory)
    keys_path: str | None = None  # private JWKS file (None: a new key per start)
    signing_alg: str = "ES384"
    access_token_lifetime: int = 3600
    refresh_token_lifetime: int = 30 * 24 * 3600  # offline_access
    online_refresh_lifetime: int = 12 * 3600  # online_access
    code_lifetime: int = 60
    # Testing/demo: approve every authorization request without a page; the patient
    # comes from the request's ``patient`` parameter, else ``default_patient``, else
    # the first patient the lookup returns.
    auto_approve: bool = False
    # Launch every ``launch/patient`` request with this patient (no picker).
    fixed_patient: str | None = None
    default_patient: str | None = None
    # The fhirUser of whoever approves (until a login is plugged in), e.g.
    # ``Practitioner/pt-1``.
    default_user: str | None = None

    @property
    def issuer(self) -> str:
        if self.issuer_url:
            return self.issuer_url.rstrip("/")
        parts = urlsplit(self.fhir_base_url)
        return f"{parts.scheme}://{parts.netloc}{self.auth_path.rstrip('/')}"

    @property
    def audience(self) -> str:
        return self.fhir_base_url.rstrip("/")

    @property
    def authorize_url(self) -> str:
        return self.issuer + "/authorize"

    @property
    def token_url(self) -> str:
        return self.issuer + "/token"

    @property
    def jwks_url(self) -> str:
        return self.issuer + "/jwks"

    @property
    def introspection_url(self) -> str:
        return self.issuer + "/introspect"

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> AuthConfig:
        """From the server settings; ``auth_*`` fields on Settings (when present)
        and keyword overrides take precedence over the defaults."""
        values: dict[str, Any] = {
            "fhir_base_url": settings.base_url,
            "fhir_base_path": settings.base_path,
        }
        for name in cls.__dataclass_fields__:
            attr = name if name.startswith("auth_") else f"auth_{name}"
            value = getattr(settings, attr, None)
            if value is not None:
                values[name] = value
        values.update(overrides)
        return cls(**values)
