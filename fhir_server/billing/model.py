"""Plain typed values the billing rules work on, and the URLs of the input contract."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Literal

BASE = "http://rehabfhir.org/fhir"
CPT = "http://www.ama-assn.org/go/cpt"
HCPCS = "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
NPI = "http://hl7.org/fhir/sid/us-npi"
NUCC = "http://nucc.org/provider-taxonomy"
POS = "https://www.cms.gov/Medicare/Coding/place-of-service-codes/Place_of_Service_Code_Set"
UCUM = "http://unitsofmeasure.org"
DISCIPLINE = f"{BASE}/CodeSystem/therapy-discipline"
PERFORMER_FUNCTION = f"{BASE}/CodeSystem/performer-function"
PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
CLAIM_TYPE = "http://terminology.hl7.org/CodeSystem/claim-type"
CARE_TEAM_ROLE = "http://terminology.hl7.org/CodeSystem/claimcareteamrole"
PROCESS_PRIORITY = "http://terminology.hl7.org/CodeSystem/processpriority"
THERAPY_MINUTES = f"{BASE}/StructureDefinition/therapy-minutes"
BILLING_PROFILE = f"{BASE}/StructureDefinition/billing-profile"
PRIOR_AUTHORIZATION = f"{BASE}/StructureDefinition/prior-authorization"
PLAN_CERTIFICATION = f"{BASE}/StructureDefinition/plan-certification"
PLACE_OF_SERVICE = f"{BASE}/StructureDefinition/place-of-service"

DISCIPLINES = ("PT", "OT", "SLP")
PerformerFunction = Literal["therapist", "assistant", "student"]
UnitRule = Literal["fifteen-minute", "midpoint", "per-service"]


@dataclass(frozen=True, slots=True)
class CodeInfo:
    """What the rules need to know about a procedure code (from the terminology)."""

    code: str
    system: str = CPT
    timed: bool = False
    minutes_per_unit: int | None = None
    unit_rule: UnitRule = "per-service"
    kind: str = "treatment"  # evaluation | re-evaluation | treatment | ...
    disciplines: frozenset[str] = frozenset()


def timed_code(
    code: str,
    minutes_per_unit: int = 15,
    *,
    system: str = CPT,
    kind: str = "treatment",
    disciplines: frozenset[str] = frozenset(),
) -> CodeInfo:
    """A timed code: 15-minute codes follow the payer's unit method, other lengths the
    midpoint rule."""
    rule: UnitRule = "fifteen-minute" if minutes_per_unit == 15 else "midpoint"
    return CodeInfo(code, system, True, minutes_per_unit, rule, kind, disciplines)


def untimed_code(
    code: str,
    *,
    system: str = CPT,
    kind: str = "treatment",
    disciplines: frozenset[str] = frozenset(),
) -> CodeInfo:
    """An untimed code: one unit per date of service."""
    return CodeInfo(code, system, False, None, "per-service", kind, disciplines)


CodeCatalog = Mapping[str, CodeInfo]


@dataclass(frozen=True, slots=True)
class PlanOfCare:
    """A plan of care (CarePlan) as the certification rules see it."""

    reference: str
    discipline: str | None
    start: date | None
    end: date | None
    certified_on: date | None = None  # date the physician/NPP signed
    certifier: str | None = None  # reference to the certifying Practitioner(Role)
    delayed_reason: str | None = None
    status: str = "active"


@dataclass(frozen=True, slots=True)
class PriorAuthorization:
    """An authorization granted by the payer, with what was already used of it."""

    number: str
    start: date | None = None
    end: date | None = None
    discipline: str | None = None  # None: any discipline
    visits: int | None = None
    units: int | None = None
    procedures: frozenset[str] = frozenset()  # empty: all codes
    visits_used: int = 0
    units_used: int = 0

    def covers(self, on: date) -> bool:
        return (self.start is None or self.start <= on) and (self.end is None or on <= self.end)


ReportKind = Literal["evaluation", "re-evaluation", "progress"]


@dataclass(frozen=True, slots=True)
class ProgressReport:
    """An evaluation, re-evaluation or progress report and who wrote it."""

    on: date
    kind: ReportKind = "progress"
    by_assistant: bool = False


@dataclass(frozen=True, slots=True)
class TreatmentHistory:
    """Earlier treatment days and reports of one discipline's episode."""

    discipline: str
    treatment_days: frozenset[date] = frozenset()
    reports: tuple[ProgressReport, ...] = ()
