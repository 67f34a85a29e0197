"""Rehab terminology: the project's code systems and value sets (``terminology/`` at
the repository root) over the R4 base, with expansion, validation, lookup and
subsumption, and the NCCI procedure-to-procedure edit table.

For other modules (profile validation, billing) the functions below are synchronous and
work on the shared terminology (read once, cached)::

    from fhir_server import terminology as tx

    tx.is_timed("97110")                      # True
    tx.minutes_per_unit("97550")              # 30
    tx.value_set_membership(tx.VS_TIMED)      # frozenset({(CPT, "97110"), ...})
    tx.member_of(tx.VS_TIMED, {"system": tx.CPT, "code": "97140"})   # True
    tx.lookup(tx.ICD10CM, "M54.50").display   # "Low back pain, unspecified"
    tx.ptp_edits().find("97140", "97530", date(2026, 3, 2))

The HTTP operations ($expand, $validate-code, $lookup, $subsumes) are in
:mod:`fhir_server.operations.terminology`; they also see CodeSystems and ValueSets that
clients stored on the server.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fhir_server.errors import FhirError
from fhir_server.terminology.expansion import Expander, Item
from fhir_server.terminology.model import CodeSystemData, Concept, Designation
from fhir_server.terminology.ncci import (
    PtpEdit,
    PtpTable,
    load_ptp_directory,
    parse_ptp,
    read_ptp_file,
)
from fhir_server.terminology.ncci import default_table as ptp_edits
from fhir_server.terminology.registry import Terminology, default, reset_default

__all__ = [
    "BASE",
    "BILLING_PROFILE",
    "CPT",
    "DISCIPLINE",
    "GOAL_TERM",
    "HCPCS",
    "ICD10CM",
    "LOINC",
    "NPI",
    "NUCC",
    "OUTCOME_MEASURE",
    "PERFORMER_FUNCTION",
    "POS",
    "PRACTITIONER_ROLE",
    "THERAPY_MINUTES",
    "UNIT_CALCULATION_METHOD",
    "VS_EVALUATIONS",
    "VS_MODIFIERS",
    "VS_PROCEDURES",
    "VS_TIMED",
    "VS_UNTIMED",
    "CodeSystemData",
    "Concept",
    "Designation",
    "Expander",
    "Item",
    "PtpEdit",
    "PtpTable",
    "Terminology",
    "default",
    "disciplines",
    "expand",
    "is_timed",
    "load_ptp_directory",
    "lookup",
    "member_of",
    "minutes_per_unit",
    "parse_ptp",
    "ptp_edits",
    "read_ptp_file",
    "reset",
    "subsumes",
    "unit_rule",
    "value_set_membership",
]

BASE = "http://rehabfhir.org/fhir"
# Code systems
CPT = "http://www.ama-assn.org/go/cpt"
HCPCS = "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
NPI = "http://hl7.org/fhir/sid/us-npi"
NUCC = "http://nucc.org/provider-taxonomy"
POS = "https://www.cms.gov/Medicare/Coding/place-of-service-codes/Place_of_Service_Code_Set"
DISCIPLINE = f"{BASE}/CodeSystem/therapy-discipline"
PERFORMER_FUNCTION = f"{BASE}/CodeSystem/performer-function"
PRACTITIONER_ROLE = f"{BASE}/CodeSystem/therapy-practitioner-role"
OUTCOME_MEASURE = f"{BASE}/CodeSystem/outcome-measure"
UNIT_CALCULATION_METHOD = f"{BASE}/CodeSystem/unit-calculation-method"
GOAL_TERM = f"{BASE}/CodeSystem/goal-term"
# Extensions
THERAPY_MINUTES = f"{BASE}/StructureDefinition/therapy-minutes"
BILLING_PROFILE = f"{BASE}/StructureDefinition/billing-profile"
# Value sets
VS_PROCEDURES = f"{BASE}/ValueSet/therapy-procedures"
VS_TIMED = f"{BASE}/ValueSet/therapy-timed-codes"
VS_UNTIMED = f"{BASE}/ValueSet/therapy-untimed-codes"
VS_EVALUATIONS = f"{BASE}/ValueSet/therapy-evaluation-codes"
VS_MODIFIERS = f"{BASE}/ValueSet/therapy-modifiers"

_PROCEDURE_SYSTEMS = (CPT, HCPCS)


def reset() -> None:
    """Read the terminology files and the NCCI folder again on next use."""
    from fhir_server.terminology import ncci

    reset_default()
    ncci.reset_default_table()


def lookup(system: str, code: str, version: str | None = None) -> Concept | None:
    """The concept of ``code`` in ``system`` (``url`` or ``url|version``), or None."""
    return default().lookup(system, code, version)


def expand(url: str) -> list[Item]:
    """The items of a value set (abstract ones flagged); FhirError if unknown."""
    return Expander(default()).expand_url(url)


def value_set_membership(url: str) -> frozenset[tuple[str, str]] | None:
    """The (system, code) pairs of a value set, without abstract (not selectable)
    concepts; None when the value set is unknown or cannot be expanded here."""
    tx = default()

    def build() -> frozenset[tuple[str, str]] | None:
        if tx.value_set(url) is None:
            return None
        try:
            items = Expander(tx).expand_url(url)
        except FhirError:  # e.g. an unknown code system: not checkable here
            return None
        return frozenset(i.key for i in items if not i.abstract)

    result: frozenset[tuple[str, str]] | None = tx.cached(("membership", url), build)
    return result


def member_of(url: str, value: Mapping[str, Any] | str) -> bool | None:
    """Whether a Coding, a CodeableConcept (any of its codings) or a bare code is in the
    value set; None when the value set cannot be checked here."""
    members = value_set_membership(url)
    if members is None:
        return None
    if isinstance(value, str):
        return any(code == value for _, code in members)
    codings = value.get("coding") if "coding" in value else [value]
    for coding in codings or ():
        if isinstance(coding, Mapping) and (coding.get("system"), coding.get("code")) in members:
            return True
    return False


def _procedure(code: str, system: str | None) -> Concept | None:
    for s in (system,) if system else _PROCEDURE_SYSTEMS:
        concept = lookup(s, code)
        if concept is not None:
            return concept
    return None


def is_timed(code: str, system: str | None = None) -> bool | None:
    """Whether a therapy CPT/HCPCS code is billed by time; None if unknown."""
    concept = _procedure(code, system)
    value = concept.first("timed") if concept else None
    return value if isinstance(value, bool) else None


def minutes_per_unit(code: str, system: str | None = None) -> int | None:
    """Minutes in one unit of a timed code (15, 30 or 60); None if untimed/unknown."""
    concept = _procedure(code, system)
    value = concept.first("minutes-per-unit") if concept else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def unit_rule(code: str, system: str | None = None) -> str | None:
    """``fifteen-minute``, ``midpoint`` or ``per-service``; None if unknown."""
    concept = _procedure(code, system)
    value = concept.first("unit-rule") if concept else None
    return value if isinstance(value, str) else None


def disciplines(code: str, system: str | None = None) -> frozenset[str]:
    """The disciplines (PT, OT, SLP) that bill a code; empty if unknown."""
    concept = _procedure(code, system)
    if concept is None:
        return frozenset()
    return frozenset(v for v in concept.values("discipline") if isinstance(v, str))


def subsumes(system: str, code_a: str, code_b: str) -> str | None:
    """equivalent | subsumes | subsumed-by | not-subsumed; None if a code is unknown."""
    cs = default().code_system(system)
    if cs is None or cs.get(code_a) is None or cs.get(code_b) is None:
        return None
    a, b = cs.get(code_a), cs.get(code_b)
    assert a is not None and b is not None
    return cs.subsumes(a.code, b.code)
