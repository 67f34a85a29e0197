"""Errors as values: every failure the server reports is a :class:`FhirError`.

Interactions, operations, validation and storage raise ``FhirError`` (or return
``Issue`` lists); the API layer maps it to an OperationOutcome and an HTTP status in
exactly one place (:func:`fhir_server.api.responses.error_response`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Severity = Literal["fatal", "error", "warning", "information"]

# https://hl7.org/fhir/R4/valueset-issue-type.html (the codes used here)
IssueCode = Literal[
    "invalid",
    "structure",
    "required",
    "value",
    "invariant",
    "security",
    "login",
    "forbidden",
    "processing",
    "not-supported",
    "duplicate",
    "multiple-matches",
    "not-found",
    "deleted",
    "too-long",
    "code-invalid",
    "extension",
    "too-costly",
    "business-rule",
    "conflict",
    "exception",
    "informational",
    "incomplete",
    "throttled",
    "lock-error",
    "no-store",
    "timeout",
    "transient",
]


@dataclass(frozen=True, slots=True)
class Issue:
    """One OperationOutcome.issue."""

    severity: Severity
    code: IssueCode
    diagnostics: str
    expression: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            out["expression"] = list(self.expression)
        return out


def error(code: IssueCode, diagnostics: str, *expression: str) -> Issue:
    return Issue("error", code, diagnostics, tuple(expression))


def operation_outcome(issues: Iterable[Issue]) -> dict[str, Any]:
    items = [i.to_json() for i in issues]
    if not items:
        items = [{"severity": "information", "code": "informational", "diagnostics": "All OK"}]
    return {"resourceType": "OperationOutcome", "issue": items}


@dataclass(slots=True)
class FhirError(Exception):
    """A failure with its HTTP status and the issues that explain it."""

    status: int
    issues: Sequence[Issue] = field(default_factory=tuple)
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status}: " + "; ".join(i.diagnostics for i in self.issues)

    @classmethod
    def of(cls, status: int, code: IssueCode, diagnostics: str, *expression: str) -> FhirError:
        return cls(status, (error(code, diagnostics, *expression),))


def has_errors(issues: Iterable[Issue]) -> bool:
    return any(i.severity in ("error", "fatal") for i in issues)


def bad_request(diagnostics: str, *expression: str) -> FhirError:
    return FhirError.of(400, "invalid", diagnostics, *expression)


def not_found(diagnostics: str) -> FhirError:
    return FhirError.of(404, "not-found", diagnostics)
