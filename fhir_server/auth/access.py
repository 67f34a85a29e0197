"""Per-request access control: who is calling, and what may they see or change.

- :class:`Authenticator` turns the ``Authorization`` header into a :class:`Principal`
  (our own access tokens, or tokens of configured external OpenID Connect
  providers) or raises a ``401`` :class:`~fhir_server.errors.FhirError`.
- :func:`can` decides one interaction, exactly when given the resource.
- :func:`patient_compartment_filter` / :func:`search_compartment` restrict a search to
  the principal's patient (R4 Patient CompartmentDefinition); and
  :func:`resource_in_patient_compartment` checks a single resource (reads, writes,
  ``_include``\\ d resources) through the compartment parameters' FHIRPath expressions.

Choices: a ``patient/`` scope grants nothing without a patient in context; for a
resource type that is not in the Patient compartment (Practitioner, Medication,
Organization ...) a ``patient/`` scope is not limited by the compartment.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from fhir_server.auth.scopes import Permissions, resource_matches
from fhir_server.auth.tokens import OidcVerifier, TokenError, TokenIssuer, unverified_claims
from fhir_server.errors import FhirError, Issue

log = logging.getLogger("fhir_server.auth")


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request, from a verified access token."""

    client_id: str
    subject: str
    permissions: Permissions
    patient: str | None = None  # the patient in context (``patient`` claim)
    fhir_user: str | None = None  # e.g. ``Practitioner/pt-1``
    issuer: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)

    @property
    def scope(self) -> str:
        return str(self.permissions.scopes)

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> Principal:
        scope = claims.get("scope")
        if scope is None and isinstance(claims.get("scp"), list):
            scope = " ".join(str(s) for s in claims["scp"])
        client_id = claims.get("client_id") or claims.get("azp") or claims.get("cid") or ""
        patient = claims.get("patient")
        fhir_user = claims.get("fhirUser")
        return cls(
            client_id=str(client_id),
            subject=str(claims.get("sub", "")),
            permissions=Permissions.of(scope if isinstance(scope, str) else None),
            patient=patient if isinstance(patient, str) and patient else None,
            fhir_user=fhir_user if isinstance(fhir_user, str) and fhir_user else None,
            issuer=claims.get("iss") if isinstance(claims.get("iss"), str) else None,
            claims=dict(claims),
        )


def unauthorized(description: str, realm: str = "fhir") -> FhirError:
    """``401`` asking for a bearer token (no token, or not a bearer token)."""
    return FhirError(
        401,
        (Issue("error", "login", description),),
        {"WWW-Authenticate": f'Bearer realm="{realm}"'},
    )


def forbidden(description: str = "The access token does not permit this interaction") -> FhirError:
    """``403``: authenticated, but not allowed."""
    return FhirError(
        403,
        (Issue("error", "forbidden", description),),
        {"WWW-Authenticate": 'Bearer error="insufficient_scope"'},
    )


class Authenticator:
    """Verifies bearer tokens: ours (``issuer``) and external providers' (``external``,
    chosen by the token's ``iss``).

    A verified token's principal is kept (up to ``cache_size`` tokens, the oldest
    forgotten first) until the token's ``exp``: a client sends the same token with
    every request, and checking its signature each time would cost more than many
    reads. Only valid tokens are kept, keyed by the whole token string, so a changed
    byte is verified afresh. Access tokens cannot be revoked here (they are short-lived;
    refresh tokens are what gets revoked), so keeping them changes no decision."""

    def __init__(
        self,
        issuer: TokenIssuer | None = None,
        external: Sequence[OidcVerifier] = (),
        *,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer
        self.external = {v.issuer: v for v in external}
        self.cache_size = cache_size
        self.clock = clock
        self._verified: dict[str, tuple[Principal, float]] = {}

    async def verify(self, token: str) -> Principal:
        """The principal of a token; :class:`TokenError` when it is not valid."""
        hit = self._verified.get(token)
        if hit is not None:
            if self.clock() < hit[1]:
                return hit[0]
            del self._verified[token]
        iss = unverified_claims(token).get("iss")
        if self.issuer is not None and iss == self.issuer.issuer:
            claims = self.issuer.verify(token)
        elif isinstance(iss, str) and iss in self.external:
            claims = await self.external[iss].verify(token)
        else:
            raise TokenError("invalid_issuer", "the token has an unexpected issuer")
        principal = Principal.from_claims(claims)
        exp = claims.get("exp")
        if isinstance(exp, int | float) and self.cache_size > 0:
            while len(self._verified) >= self.cache_size:
                del self._verified[next(iter(self._verified))]
            self._verified[token] = (principal, float(exp))
        return principal

    async def authenticate(self, authorization: str | None) -> Principal:
        """From the ``Authorization`` header to the principal, or a ``401``."""
        if not authorization:
            raise unauthorized("This server requires a bearer access token")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise unauthorized("The Authorization header must be 'Bearer <token>'")
        try:
            return await self.verify(token)
        except TokenError as exc:
            raise exc.to_fhir_error() from None


# --------------------------------------------------------------------------- compartment


def _split_union(expression: str) -> list[str]:
    """Top-level ``|`` branches of a FHIRPath expression."""
    out: list[str] = []
    depth = 0
    quote: str | None = None
    start = 0
    for i, ch in enumerate(expression):
        if quote:
            if ch == quote and expression[i - 1] != "\\":
                quote = None
        elif ch in "'`":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            out.append(expression[start:i].strip())
            start = i + 1
    out.append(expression[start:].strip())
    return [b for b in out if b]


@cache
def _compartment_entries() -> dict[str, tuple[str, ...]]:
    from fhir_server.definitions import compartment_definitions

    for cd in compartment_definitions():
        if cd.get("code") == "Patient":
            return {
                e["code"]: tuple(e.get("param", ()))
                for e in cd.get("resource", ())
                if e.get("param")
            }
    return {}


@cache
def _compartment_expressions() -> dict[str, tuple[tuple[str, str], ...]]:
    """resource type -> ((param code, FHIRPath expression of that type), ...)."""
    from fhir_server.definitions import search_parameters

    entries = _compartment_entries()
    wanted = {(t, c) for t, codes in entries.items() for c in codes}
    found: dict[tuple[str, str], str] = {}
    for sp in search_parameters():
        code = sp.get("code")
        expression = sp.get("expression")
        if not isinstance(code, str) or not isinstance(expression, str):
            continue
        for base in sp.get("base") or ():
            if (base, code) in wanted:
                branches = [
                    b for b in _split_union(expression) if b.startswith((f"{base}.", f"({base}."))
                ]
                if branches:
                    found[(base, code)] = " | ".join(branches)
    out: dict[str, tuple[tuple[str, str], ...]] = {}
    for rtype, codes in entries.items():
        out[rtype] = tuple((c, found[(rtype, c)]) for c in codes if (rtype, c) in found)
    return out


def compartment_params(resource_type: str) -> tuple[str, ...]:
    """The search parameters that put a resource of this type in a Patient's
    compartment (empty: the type is not in the compartment)."""
    return _compartment_entries().get(resource_type, ())


def _references(value: Any) -> list[str]:
    if isinstance(value, dict):
        ref = value.get("reference")
        return [ref] if isinstance(ref, str) else []
    if isinstance(value, str):
        return [value]
    return []


def _is_patient_ref(ref: str, patient_id: str, base_url: str | None) -> bool:
    ref = ref.split("/_history/", 1)[0]
    if ref == f"Patient/{patient_id}":
        return True
    if base_url:
        return ref == f"{base_url.rstrip('/')}/Patient/{patient_id}"
    return False


def resource_in_patient_compartment(
    resource: Mapping[str, Any], patient_id: str, base_url: str | None = None
) -> bool:
    """Is the resource in ``Patient/<patient_id>``'s compartment? The Patient itself
    is; another resource is when one of its compartment parameters refers to the
    patient (relative reference, or absolute under ``base_url``)."""
    from fhir_server.fhirpath import evaluate

    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        return False
    if rtype == "Patient" and resource.get("id") == patient_id:
        return True
    for code, expression in _compartment_expressions().get(rtype, ()):
        try:
            values = evaluate(dict(resource), expression)
        except Exception:
            log.debug("compartment parameter %s.%s failed", rtype, code, exc_info=True)
            continue
        for v in values:
            if any(_is_patient_ref(r, patient_id, base_url) for r in _references(v)):
                return True
    return False


def in_compartment_scope(resource_type: str) -> bool:
    """Does the Patient compartment govern this type (``Patient`` included)?"""
    return resource_type == "Patient" or bool(compartment_params(resource_type))


# --------------------------------------------------------------------------- decisions


def can(
    principal: Principal,
    interaction: str,
    resource_type: str | None,
    resource: Mapping[str, Any] | None = None,
    params: Sequence[tuple[str, str]] | None = None,
    *,
    base_url: str | None = None,
) -> bool:
    """May the principal perform the interaction?

    ``interaction`` is a CapabilityStatement interaction code (``read``, ``vread``,
    ``search-type``, ``create``, ``update``, ``patch``, ``delete``,
    ``history-instance`` ...). With ``resource`` the answer is exact: scope
    parameters and, for ``patient/`` scopes, the patient compartment are checked on
    it. Without it, the answer is "for some resources of the type" (a search then
    needs :func:`patient_compartment_filter` and, when
    :func:`needs_result_filter`, a check of each result).
    """
    if resource is not None and resource_type is None:
        rt = resource.get("resourceType")
        resource_type = rt if isinstance(rt, str) else None
    for scope in principal.permissions.granting(interaction, resource_type):
        if scope.parameters:
            if resource is not None:
                if not resource_matches(resource, scope.parameters):
                    continue
            elif params is not None:
                from fhir_server.auth.scopes import params_satisfy

                if not params_satisfy(params, scope.parameters):
                    continue
        if scope.level == "patient":
            if principal.patient is None:
                continue
            if (
                resource is not None
                and resource_type is not None
                and in_compartment_scope(resource_type)
                and not resource_in_patient_compartment(resource, principal.patient, base_url)
            ):
                continue
        return True
    return False


def patient_compartment_filter(
    principal: Principal, resource_type: str, interaction: str = "search-type"
) -> list[tuple[str, str]] | None:
    """Search parameters that restrict a search to the principal's patient, as
    alternatives (a resource qualifies when it matches ANY of them); ``None`` when no
    restriction applies (a ``user/``/``system/`` scope grants the type, or the type
    is not in the Patient compartment, or there is no patient in context).
    """
    if principal.patient is None:
        return None
    if not principal.permissions.patient_only(interaction, resource_type):
        return None
    pid = principal.patient
    if resource_type == "Patient":
        return [("_id", pid), ("link", f"Patient/{pid}")]
    codes = compartment_params(resource_type)
    if not codes:
        return None
    return [(code, f"Patient/{pid}") for code in codes]


def search_compartment(
    principal: Principal, resource_type: str, interaction: str = "search-type"
) -> tuple[str, str] | None:
    """The same restriction as :func:`patient_compartment_filter`, in the form the
    search takes for ``[base]/Patient/[id]/[type]``: ``("Patient", id)`` or None."""
    if patient_compartment_filter(principal, resource_type, interaction) is None:
        return None
    assert principal.patient is not None
    return ("Patient", principal.patient)


def needs_result_filter(principal: Principal, interaction: str, resource_type: str | None) -> bool:
    """Must each result be checked with :func:`can` (resource given)? False when a
    scope without parameters grants the type at ``user``/``system`` level, or when
    every grant is an unconditional ``patient/`` scope (then the compartment filter
    is exact)."""
    grants = principal.permissions.granting(interaction, resource_type)
    if any(s.level != "patient" and not s.parameters for s in grants):
        return False
    if grants and all(s.level == "patient" and not s.parameters for s in grants):
        return resource_type is None
    return True
