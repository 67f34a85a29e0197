"""Server settings: one immutable value built by the CLI (or tests) and passed down."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Settings:
    database: str = "sqlite:///./data/fhir.sqlite"
    host: str = "127.0.0.1"
    port: int = 8080
    base_path: str = "/fhir"
    # Public base URL; derived from host/port/base_path when not given.
    public_base_url: str | None = None
    max_body_bytes: int = 32 * 1024 * 1024
    default_page_size: int = 20
    max_page_size: int = 1000
    # Validate every write against the R4 base definitions.
    validate_writes: bool = True
    # Profiles every resource of a type must conform to, as (resource type, profile
    # canonical URL) pairs; checked on writes and by $validate.
    required_profiles: tuple[tuple[str, str], ...] = ()
    # Bulk Data export ($export): where the NDJSON files are written (None: an
    # ``export`` directory next to the SQLite file; a temporary directory for an
    # in-memory database; ./data/export otherwise), and how long, in seconds, the files
    # of a finished export stay available.
    export_path: str | None = None
    export_retention: int = 24 * 3600

    # SMART on FHIR authorization. Off for the library (tests, embedding); the
    # ``serve`` command turns it on unless ``--no-auth``. ``auth_*`` fields are read
    # by :meth:`fhir_server.auth.config.AuthConfig.from_settings` (None: its default).
    auth_enabled: bool = False
    auth_clients_path: str | None = "./data/clients.json"  # registered clients
    auth_keys_path: str | None = "./data/auth-keys.json"  # private signing keys (JWKS)
    # Approve every authorization request without a page (tests and demos only).
    auth_auto_approve: bool = False
    auth_fixed_patient: str | None = None  # launch every launch/patient with it
    auth_default_patient: str | None = None  # when the request names no patient
    auth_default_user: str | None = None  # fhirUser of the approver, e.g. Practitioner/x
    auth_access_token_lifetime: int = 3600  # seconds
    # Tokens of external OpenID Connect providers accepted as well, as (issuer, JWKS
    # URL) pairs; their audience must be this server's base URL.
    auth_external_issuers: tuple[tuple[str, str], ...] = ()
    # Origins allowed to call the API from a browser (CORS).
    auth_cors_origins: tuple[str, ...] = ("*",)
    # Store the queued AuditEvents (of reads, searches...) from a separate process,
    # on another CPU core (see fhir_server.auth.audit_writer). Needs a database other
    # processes can open (a SQLite file, MongoDB); off for the library, on for serve.
    audit_writer_process: bool = False

    @property
    def base_url(self) -> str:
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        return f"http://{self.host}:{self.port}{self.base_path}"
