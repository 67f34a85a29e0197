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

    @property
    def base_url(self) -> str:
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        return f"http://{self.host}:{self.port}{self.base_path}"
