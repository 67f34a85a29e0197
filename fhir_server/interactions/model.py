"""Plain request/response values that interactions work on (no HTTP framework types)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

JSON_TYPES = ("application/fhir+json", "application/json")
FHIR_JSON = "application/fhir+json"


@dataclass(frozen=True, slots=True)
class FhirRequest:
    method: str  # GET, HEAD, POST, PUT, PATCH, DELETE
    path: str  # relative to the FHIR base, without leading slash or query
    params: Sequence[tuple[str, str]] = ()
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes | None = None
    # The body already parsed (entries of a Bundle arrive parsed); takes precedence.
    parsed: Any = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def param(self, name: str) -> str | None:
        for k, v in self.params:
            if k == name:
                return v
        return None

    @property
    def content_type(self) -> str | None:
        value = self.headers.get("content-type")
        if value is None:
            return None
        return value.split(";", 1)[0].strip().lower()


@dataclass(slots=True)
class FhirResponse:
    """A response: a parsed resource, pre-encoded resource bytes, or nothing."""

    status: int
    resource: dict[str, Any] | None = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
