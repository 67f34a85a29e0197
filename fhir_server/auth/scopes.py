"""SMART on FHIR scopes (App Launch 1.0 and 2.x) and the permissions they grant.

A scope string is split on spaces into :class:`Scope` values. Clinical scopes have the
form ``<level>/<type>.<permissions>[?<parameters>]``:

- level: ``patient`` (the patient in context), ``user`` (what the user may see) or
  ``system`` (a backend service);
- type: a resource type or ``*``;
- permissions: SMART v2 letters ``c r u d s`` in that order (``rs``, ``cruds``), or the
  SMART v1 words ``read`` (= ``rs``), ``write`` (= ``cud``) and ``*`` (= ``cruds``);
- parameters (v2 only): search parameters the resource must match, e.g.
  ``patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory``.
  Several parameters in one scope must all match; a resource matches a token
  parameter when one of its codes has the value (and the system, when one is given).

Other scopes (``openid``, ``fhirUser``, ``launch``, ``launch/patient``,
``offline_access``, ``online_access`` ...) are kept as names. Strings that fit no
form are kept in :attr:`ScopeSet.unrecognized` and grant nothing.

:class:`Permissions` answers: may this principal perform an interaction on a resource
type (and, when given, on this resource or with these search parameters)? Whether a
``patient/`` grant also needs the resource to be in the patient's compartment is
answered by :meth:`Permissions.patient_only`; :mod:`fhir_server.auth.access` applies
the compartment.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Final, Literal
from urllib.parse import parse_qsl

log = logging.getLogger("fhir_server.auth")

Level = Literal["patient", "user", "system"]
LEVELS: Final = ("patient", "user", "system")

# SMART v2 permission letters, in the order the spec requires.
LETTERS: Final = "cruds"
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}

# FHIR interactions (CapabilityStatement codes, plus short aliases) -> the SMART letter
# that permits them (SMART App Launch 2.x, "Scopes for requesting clinical data").
INTERACTION_LETTER: Final[Mapping[str, str]] = {
    "create": "c",
    "read": "r",
    "vread": "r",
    "history-instance": "r",
    "update": "u",
    "patch": "u",
    "delete": "d",
    "search": "s",
    "search-type": "s",
    "search-system": "s",
    "history-type": "s",
    "history-system": "s",
}

# Scopes that are names, not clinical data access.
OPENID: Final = "openid"
FHIR_USER: Final = "fhirUser"
PROFILE: Final = "profile"
LAUNCH: Final = "launch"
LAUNCH_PATIENT: Final = "launch/patient"
LAUNCH_ENCOUNTER: Final = "launch/encounter"
OFFLINE_ACCESS: Final = "offline_access"
ONLINE_ACCESS: Final = "online_access"
NAMED_SCOPES: Final = frozenset(
    {
        OPENID,
        FHIR_USER,
        PROFILE,
        LAUNCH,
        LAUNCH_PATIENT,
        LAUNCH_ENCOUNTER,
        OFFLINE_ACCESS,
        ONLINE_ACCESS,
    }
)

_CLINICAL = re.compile(
    r"^(?P<level>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]+)\."
    r"(?P<perm>read|write|\*|c?r?u?d?s?)(?:\?(?P<query>.*))?$"
)


class ScopeError(ValueError):
    """A scope string that is not a valid SMART scope."""


@dataclass(frozen=True, slots=True)
class ResourceScope:
    """One clinical-data scope (``patient/Observation.rs?category=laboratory``)."""

    level: Level
    resource_type: str  # a type name or "*"
    permissions: frozenset[str]  # letters of "cruds"
    parameters: tuple[tuple[str, str], ...] = ()
    v1: bool = False
    text: str = ""

    @property
    def letters(self) -> str:
        return "".join(c for c in LETTERS if c in self.permissions)

    def normalized(self) -> str:
        """The scope in SMART v2 form (``patient/Observation.read`` -> ``.rs``)."""
        out = f"{self.level}/{self.resource_type}.{self.letters}"
        if self.parameters:
            out += "?" + "&".join(f"{k}={v}" for k, v in self.parameters)
        return out

    def applies_to(self, letter: str, resource_type: str | None) -> bool:
        if letter not in self.permissions:
            return False
        return self.resource_type == "*" or self.resource_type == resource_type

    def covered_by(self, other: ResourceScope) -> bool:
        """True when ``other`` grants at least everything this scope grants."""
        if other.level != self.level:
            return False
        if other.resource_type not in ("*", self.resource_type):
            return False
        if not self.permissions <= other.permissions:
            return False
        # More parameters = narrower: other's parameters must all be among ours.
        return set(other.parameters) <= set(self.parameters)

    def narrowed_to(self, other: ResourceScope) -> ResourceScope | None:
        """The part of this scope that ``other`` also grants (None: nothing)."""
        if other.level != self.level:
            return None
        if other.resource_type == "*":
            rtype = self.resource_type
        elif self.resource_type in ("*", other.resource_type):
            rtype = other.resource_type
        else:
            return None
        perms = self.permissions & other.permissions
        if not perms:
            return None
        params = tuple(dict.fromkeys((*self.parameters, *other.parameters)))
        scope = ResourceScope(self.level, rtype, frozenset(perms), params)
        return ResourceScope(self.level, rtype, frozenset(perms), params, text=scope.normalized())


@cache
def _resource_types() -> frozenset[str]:
    from fhir_server.definitions import resource_types

    return resource_types()


def parse_scope(text: str) -> ResourceScope | str:
    """One scope: a :class:`ResourceScope`, or the name of a non-clinical scope.

    Raises :class:`ScopeError` for a string that is neither.
    """
    if text in NAMED_SCOPES:
        return text
    m = _CLINICAL.match(text)
    if m is None:
        raise ScopeError(f"'{text}' is not a SMART scope")
    level: Level = m["level"]  # type: ignore[assignment]
    rtype = m["type"]
    if rtype != "*" and rtype not in _resource_types():
        raise ScopeError(f"'{rtype}' in scope '{text}' is not a resource type")
    perm = m["perm"]
    v1 = perm in _V1
    letters = _V1[perm] if v1 else perm
    if not letters:
        raise ScopeError(f"scope '{text}' grants no permission")
    query = m["query"]
    params: tuple[tuple[str, str], ...] = ()
    if query is not None:
        if v1:
            raise ScopeError(f"SMART v1 scope '{text}' cannot carry parameters")
        try:
            pairs = parse_qsl(query, keep_blank_values=False, strict_parsing=True)
        except ValueError as exc:
            raise ScopeError(f"scope '{text}' has malformed parameters") from exc
        if not pairs:
            raise ScopeError(f"scope '{text}' has an empty parameter list")
        params = tuple(pairs)
    return ResourceScope(level, rtype, frozenset(letters), params, v1, text)


@dataclass(frozen=True, slots=True)
class ScopeSet:
    """A parsed scope string."""

    resources: tuple[ResourceScope, ...] = ()
    names: frozenset[str] = frozenset()
    unrecognized: tuple[str, ...] = ()

    @classmethod
    def parse(cls, scope: str | Iterable[str] | None) -> ScopeSet:
        items = scope.split() if isinstance(scope, str) else list(scope or ())
        resources: list[ResourceScope] = []
        names: set[str] = set()
        bad: list[str] = []
        for item in dict.fromkeys(items):
            try:
                parsed = parse_scope(item)
            except ScopeError:
                bad.append(item)
                continue
            if isinstance(parsed, str):
                names.add(parsed)
            else:
                resources.append(parsed)
        return cls(tuple(resources), frozenset(names), tuple(bad))

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __str__(self) -> str:
        return " ".join(self.strings())

    def strings(self) -> list[str]:
        """The scopes as they were given (recognized ones only), names first."""
        ordered = sorted(self.names, key=lambda n: _NAME_ORDER.get(n, len(_NAME_ORDER)))
        return [*ordered, *(r.text or r.normalized() for r in self.resources)]

    @property
    def is_empty(self) -> bool:
        return not self.resources and not self.names

    def levels(self) -> frozenset[str]:
        return frozenset(r.level for r in self.resources)

    def restricted_to(self, allowed: ScopeSet) -> ScopeSet:
        """The scopes of this set that ``allowed`` grants (narrowed where needed):
        what a client may get of what it asked for."""
        names = self.names & allowed.names
        out: list[ResourceScope] = []
        for r in self.resources:
            if any(r.covered_by(a) for a in allowed.resources):
                out.append(r)
                continue
            for a in allowed.resources:
                n = r.narrowed_to(a)
                if n is not None and n not in out:
                    out.append(n)
        return ScopeSet(tuple(out), frozenset(names), ())

    def subset_of(self, other: ScopeSet) -> bool:
        return self.names <= other.names and all(
            any(r.covered_by(o) for o in other.resources) for r in self.resources
        )


_NAME_ORDER = {n: i for i, n in enumerate(sorted(NAMED_SCOPES))}


# --------------------------------------------------------------------------- matching


@dataclass(frozen=True, slots=True)
class _Param:
    type: str
    expression: str


@cache
def _search_param(resource_type: str, code: str) -> _Param | None:
    from fhir_server.search.registry import default_registry

    sp = default_registry().get(resource_type, code)
    if sp is None or not sp.expression:
        return None
    return _Param(sp.type, sp.expression)


def _token_values(value: Any) -> Iterable[tuple[str | None, str]]:
    """(system, code) pairs of a token-valued element."""
    if isinstance(value, bool):
        yield None, "true" if value else "false"
    elif isinstance(value, str | int):
        yield None, str(value)
    elif isinstance(value, dict):
        if "coding" in value:  # CodeableConcept
            for c in value.get("coding") or ():
                yield from _token_values(c)
        elif "code" in value:  # Coding, Quantity
            yield value.get("system"), str(value["code"])
        elif "value" in value:  # Identifier, ContactPoint
            yield value.get("system"), str(value["value"])


def _token_matches(values: list[Any], wanted: str) -> bool:
    """FHIR token semantics: ``code``, ``system|code``, ``|code`` (no system) and
    ``system|`` (any code of the system)."""
    pairs = [p for v in values for p in _token_values(v)]
    if "|" not in wanted:
        return any(c == wanted for _, c in pairs)
    system, _, code = wanted.partition("|")
    if not code:
        return any(s == system for s, _ in pairs)
    return any(c == code and (s or "") == system for s, c in pairs)


def _reference_matches(values: list[Any], wanted: str) -> bool:
    for v in values:
        ref = v.get("reference") if isinstance(v, dict) else v
        if isinstance(ref, str) and (ref == wanted or ref.endswith("/" + wanted)):
            return True
    return False


def resource_matches(resource: Mapping[str, Any], parameters: Sequence[tuple[str, str]]) -> bool:
    """Does the resource match every (search parameter, value) pair?

    Token, reference, string, uri and code parameters are supported; any other kind
    (or an unknown parameter) does not match, so a scope with it grants nothing.
    A comma in a value means "any of".
    """
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        return False
    from fhir_server.fhirpath import evaluate

    for code, raw in parameters:
        param = _search_param(rtype, code)
        if param is None:
            log.debug("scope parameter '%s' is not a search parameter of %s", code, rtype)
            return False
        try:
            values = evaluate(dict(resource), param.expression)
        except Exception:
            log.debug("scope parameter '%s' failed on %s", code, rtype, exc_info=True)
            return False
        alternatives = [a for a in raw.split(",") if a]
        if param.type == "token":
            ok = any(_token_matches(values, a) for a in alternatives)
        elif param.type == "reference":
            ok = any(_reference_matches(values, a) for a in alternatives)
        elif param.type in ("string", "uri"):
            ok = any(isinstance(v, str) and v == a for v in values for a in alternatives)
        else:
            ok = False
        if not ok:
            return False
    return True


def params_satisfy(
    search: Sequence[tuple[str, str]], parameters: Sequence[tuple[str, str]]
) -> bool:
    """Does a search restrict itself to a scope's parameters? Every scope parameter
    must appear in the search, with values that are all among the scope's."""
    for code, raw in parameters:
        allowed = set(raw.split(","))
        given = [v for k, v in search if k == code]
        if not given or not any(set(v.split(",")) <= allowed for v in given):
            return False
    return True


# --------------------------------------------------------------------------- permissions


@dataclass(frozen=True, slots=True)
class Permissions:
    """What a set of scopes allows."""

    scopes: ScopeSet = field(default_factory=ScopeSet)
    # granting()'s answers: a principal (and so its permissions) is kept for as long as
    # its token is valid, and asks the same few questions on every request
    _granting: dict[tuple[str, str | None], tuple[ResourceScope, ...]] = field(
        default_factory=dict, compare=False, repr=False
    )
    _blanket: dict[tuple[str, str | None], bool] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def of(cls, scope: str | Iterable[str] | ScopeSet | None) -> Permissions:
        return cls(scope if isinstance(scope, ScopeSet) else ScopeSet.parse(scope))

    def granting(self, interaction: str, resource_type: str | None) -> tuple[ResourceScope, ...]:
        """The scopes that permit the interaction on the type (before parameters)."""
        key = (interaction, resource_type)
        found = self._granting.get(key)
        if found is None:
            letter = letter_for(interaction)
            found = tuple(s for s in self.scopes.resources if s.applies_to(letter, resource_type))
            if len(self._granting) < 1024:
                self._granting[key] = found
        return found

    def blanket(self, interaction: str, resource_type: str | None) -> bool:
        """Does a scope allow the interaction on every resource of the type (a
        ``user/``/``system/`` scope without parameters)? Remembered like
        :meth:`granting`."""
        key = (interaction, resource_type)
        found = self._blanket.get(key)
        if found is None:
            found = any(
                s.level != "patient" and not s.parameters
                for s in self.granting(interaction, resource_type)
            )
            if len(self._blanket) < 1024:
                self._blanket[key] = found
        return found

    def allows(
        self,
        interaction: str,
        resource_type: str | None,
        resource: Mapping[str, Any] | None = None,
        params: Sequence[tuple[str, str]] | None = None,
        *,
        levels: Iterable[str] = LEVELS,
    ) -> bool:
        """May the interaction be performed on the type?

        Without ``resource`` or ``params`` the answer is "for some resources": True
        when a scope permits the interaction on the type, even one restricted by
        parameters; pass the resource (reads, writes, each search result) or the
        search parameters for the exact answer. Compartment membership for
        ``patient/`` scopes is not checked here (see :mod:`fhir_server.auth.access`).
        """
        if resource is not None and resource_type is None:
            rt = resource.get("resourceType")
            resource_type = rt if isinstance(rt, str) else None
        wanted = set(levels)
        for s in self.granting(interaction, resource_type):
            if s.level not in wanted:
                continue
            if not s.parameters:
                return True
            if resource is not None:
                if resource_matches(resource, s.parameters):
                    return True
            elif params is not None:
                if params_satisfy(params, s.parameters):
                    return True
            else:
                return True
        return False

    def patient_only(self, interaction: str, resource_type: str | None) -> bool:
        """True when only ``patient/`` scopes permit the interaction on the type (so
        the patient compartment restricts it)."""
        grants = self.granting(interaction, resource_type)
        return bool(grants) and all(s.level == "patient" for s in grants)

    def unconditional(self, interaction: str, resource_type: str | None) -> bool:
        """True when a scope without parameters permits it (no per-resource filter)."""
        return any(not s.parameters for s in self.granting(interaction, resource_type))


def letter_for(interaction: str) -> str:
    try:
        return INTERACTION_LETTER[interaction]
    except KeyError:
        raise ValueError(f"'{interaction}' is not an interaction SMART scopes govern") from None


# --------------------------------------------------------------------------- staff roles

# Default ``user/`` scopes per staff role of a therapy practice. Data: a deployment may
# replace it. Each role also gets the identity scopes (openid fhirUser). Provenance and
# AuditEvent are written by the server only (fhir_server.auth.audit): read at most.
_DIRECTORY = ("Practitioner", "PractitionerRole", "Organization", "Location", "HealthcareService")

STAFF_ROLES: Final[Mapping[str, tuple[str, ...]]] = {
    "therapist": (
        "user/Patient.cruds",
        *(
            f"user/{t}.cruds"
            for t in (
                "Observation",
                "Condition",
                "Procedure",
                "Encounter",
                "EpisodeOfCare",
                "CarePlan",
                "Goal",
                "ServiceRequest",
                "DocumentReference",
                "QuestionnaireResponse",
                "ClinicalImpression",
                "Communication",
                "Appointment",
            )
        ),
        *(
            f"user/{t}.rs"
            for t in (
                "AllergyIntolerance",
                "MedicationStatement",
                "MedicationRequest",
                "Questionnaire",
                "Coverage",
                "RelatedPerson",
                "Schedule",
                "Slot",
                "Provenance",
                *_DIRECTORY,
            )
        ),
    ),
    "assistant": (
        "user/Patient.rs",
        *(
            f"user/{t}.crus"
            for t in (
                "Observation",
                "Procedure",
                "Encounter",
                "QuestionnaireResponse",
            )
        ),
        *(
            f"user/{t}.rs"
            for t in (
                "Condition",
                "CarePlan",
                "Goal",
                "ServiceRequest",
                "DocumentReference",
                "AllergyIntolerance",
                "Questionnaire",
                "Appointment",
                "EpisodeOfCare",
                "Provenance",
                *_DIRECTORY,
            )
        ),
    ),
    "front-desk": (
        "user/Patient.crus",
        *(f"user/{t}.cruds" for t in ("Appointment", "Slot", "RelatedPerson")),
        *(f"user/{t}.crus" for t in ("Coverage", "CoverageEligibilityRequest", "Encounter")),
        *(
            f"user/{t}.rs"
            for t in ("Schedule", "CoverageEligibilityResponse", "ServiceRequest", *_DIRECTORY)
        ),
    ),
    "biller": (
        "user/Patient.rs",
        *(
            f"user/{t}.cruds"
            for t in (
                "Claim",
                "ChargeItem",
                "Invoice",
                "Account",
                "PaymentNotice",
                "PaymentReconciliation",
                "CoverageEligibilityRequest",
            )
        ),
        "user/Coverage.crus",
        *(
            f"user/{t}.rs"
            for t in (
                "ClaimResponse",
                "ExplanationOfBenefit",
                "CoverageEligibilityResponse",
                "Encounter",
                "Procedure",
                "Condition",
                "ServiceRequest",
                "EpisodeOfCare",
                *_DIRECTORY,
            )
        ),
    ),
    "auditor": ("user/*.rs",),
}

IDENTITY_SCOPES: Final = (OPENID, FHIR_USER)


def role_scopes(role: str) -> ScopeSet:
    """The default scopes of a staff role (KeyError for an unknown role)."""
    return ScopeSet.parse((*IDENTITY_SCOPES, *STAFF_ROLES[role]))
