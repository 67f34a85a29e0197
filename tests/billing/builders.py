"""Small builders of the FHIR input contract for the billing tests."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import Any

from fhir_server.billing import (
    BillingInput,
    CodeInfo,
    PayerRules,
    load_rules,
    timed_code,
    untimed_code,
)
from fhir_server.billing.model import (
    BILLING_PROFILE,
    CPT,
    DISCIPLINE,
    ICD10CM,
    NPI,
    NUCC,
    PERFORMER_FUNCTION,
    PLACE_OF_SERVICE,
    PLAN_CERTIFICATION,
    POS,
    PRIOR_AUTHORIZATION,
    THERAPY_MINUTES,
    UCUM,
)

RULES = load_rules()
MEDICARE = RULES.profiles["medicare"]
COMMERCIAL = RULES.profiles["cpt-per-code"]

PT, OT, SLP = frozenset({"PT"}), frozenset({"OT"}), frozenset({"SLP"})
PT_OT = frozenset({"PT", "OT"})

# The code table of the billing reference (section 2), as the terminology would give it.
CODES: dict[str, CodeInfo] = {
    **{c: untimed_code(c, kind="evaluation", disciplines=PT) for c in ("97161", "97162", "97163")},
    "97164": untimed_code("97164", kind="re-evaluation", disciplines=PT),
    **{c: untimed_code(c, kind="evaluation", disciplines=OT) for c in ("97165", "97166", "97167")},
    "97168": untimed_code("97168", kind="re-evaluation", disciplines=OT),
    **{
        c: timed_code(c, disciplines=PT_OT)
        for c in (
            "97110",
            "97112",
            "97113",
            "97116",
            "97124",
            "97140",
            "97530",
            "97533",
            "97535",
            "97537",
            "97542",
            "97750",
            "97755",
            "97760",
            "97761",
            "97763",
            "97032",
            "97033",
            "97034",
            "97035",
            "97036",
            "97129",
            "97130",
        )
    },
    **{
        c: untimed_code(c, kind="supervised-modality", disciplines=PT_OT)
        for c in ("97010", "97012", "97014", "97016", "97018", "97022", "97024", "97026", "97028")
    },
    "G0283": untimed_code(
        "G0283",
        system="http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets",
        kind="supervised-modality",
        disciplines=PT_OT,
    ),
    "97150": untimed_code("97150", kind="group", disciplines=PT_OT),
    "92507": untimed_code("92507", disciplines=SLP),
    "92508": untimed_code("92508", kind="group", disciplines=SLP),
    **{
        c: untimed_code(c, kind="evaluation", disciplines=SLP)
        for c in ("92521", "92522", "92523", "92524", "92610")
    },
    "92526": untimed_code("92526", disciplines=SLP),
    "97550": timed_code("97550", 30, disciplines=PT_OT | SLP),
    "96125": timed_code("96125", 60, kind="test", disciplines=SLP | OT),
}

FEES: dict[str, Decimal] = {code: Decimal("30.00") for code in CODES}
FEES.update(
    {
        "97110": Decimal("32.00"),
        "97112": Decimal("36.00"),
        "97116": Decimal("31.00"),
        "97140": Decimal("34.00"),
        "97530": Decimal("40.00"),
        "97035": Decimal("15.00"),
        "97162": Decimal("105.00"),
        "97164": Decimal("70.00"),
        "92507": Decimal("90.00"),
    }
)


def concept(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


def minutes(value: int | Decimal) -> dict[str, Any]:
    return {
        "url": THERAPY_MINUTES,
        "valueQuantity": {"value": value, "unit": "min", "system": UCUM, "code": "min"},
    }


def practitioner(id: str, npi: str | None = "1245319599") -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "Practitioner", "id": id}
    if npi:
        out["identifier"] = [{"system": NPI, "value": npi}]
    return out


def role(id: str, practitioner_id: str, taxonomy: str = "225100000X") -> dict[str, Any]:
    return {
        "resourceType": "PractitionerRole",
        "id": id,
        "practitioner": {"reference": f"Practitioner/{practitioner_id}"},
        "specialty": [concept(NUCC, taxonomy)],
    }


PEOPLE = [
    practitioner("pt-jones", "1245319599"),
    role("role-pt-jones", "pt-jones"),
    practitioner("pta-lee", "1003000126"),
    role("role-pta-lee", "pta-lee", "225200000X"),
    practitioner("student-kim", None),
    practitioner("ot-brown", "1598765430"),
    practitioner("md-garcia", "1942356789"),
]

PATIENT = {"resourceType": "Patient", "id": "pat-ada"}
CLINIC = {
    "resourceType": "Organization",
    "id": "clinic",
    "identifier": [{"system": NPI, "value": "1234567893"}],
}
CONDITIONS = [
    {
        "resourceType": "Condition",
        "id": f"cond-{i}",
        "code": {"coding": [{"system": ICD10CM, "code": code, "display": f"condition {i}"}]},
    }
    for i, code in enumerate(
        [
            "M17.11",
            "R26.89",
            "M25.561",
            "M62.81",
            "Z96.651",
            "M54.50",
            "R26.2",
            "M79.604",
            "M25.661",
            "R29.6",
            "Z91.81",
            "M62.50",
            "I69.351",
            "R47.01",
        ],
        start=1,
    )
]


def coverage(
    profile: str = "medicare", *, status: str = "active", auths: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    ext: list[dict[str, Any]] = [{"url": BILLING_PROFILE, "valueCode": profile}]
    ext += auths or []
    return {
        "resourceType": "Coverage",
        "id": "cov-ada",
        "extension": ext,
        "status": status,
        "beneficiary": {"reference": "Patient/pat-ada"},
        "payor": [{"reference": "Organization/medicare"}],
        "period": {"start": "2026-01-01", "end": "2026-12-31"},
    }


def authorization(
    number: str, start: str, end: str, discipline: str = "PT", visits: int | None = 12
) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [
        {"url": "number", "valueString": number},
        {"url": "period", "valuePeriod": {"start": start, "end": end}},
        {"url": "discipline", "valueCoding": {"system": DISCIPLINE, "code": discipline}},
    ]
    if visits is not None:
        parts.append({"url": "visits", "valuePositiveInt": visits})
    return {"url": PRIOR_AUTHORIZATION, "extension": parts}


def encounter(
    id: str = "enc-1",
    on: str = "2026-10-14",
    discipline: str = "PT",
    *,
    status: str = "finished",
    rendering: str = "PractitionerRole/role-pt-jones",
    pos: str | None = "11",
    diagnoses: tuple[str, ...] = ("cond-1", "cond-2"),
) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "Encounter", "id": id}
    if pos:
        out["extension"] = [{"url": PLACE_OF_SERVICE, "valueCoding": {"system": POS, "code": pos}}]
    out |= {
        "status": status,
        "serviceType": concept(DISCIPLINE, discipline),
        "subject": {"reference": "Patient/pat-ada"},
        "participant": [
            {
                "type": [
                    concept("http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "PPRF")
                ],
                "individual": {"reference": rendering},
            }
        ],
        "period": {"start": f"{on}T09:00:00-05:00", "end": f"{on}T10:00:00-05:00"},
        "diagnosis": [
            {"condition": {"reference": f"Condition/{c}"}, "rank": i + 1}
            for i, c in enumerate(diagnoses)
        ],
        "serviceProvider": {"reference": "Organization/clinic"},
    }
    return out


def procedure(
    id: str,
    code: str,
    mins: int | None = None,
    *,
    encounter_id: str = "enc-1",
    function: str = "therapist",
    actor: str = "PractitionerRole/role-pt-jones",
    status: str = "completed",
    system: str = CPT,
    period: tuple[str, str] | None = None,
    performers: list[tuple[str, str, int | None]] | None = None,
    reasons: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A therapy service; ``performers`` = (function, actor, own minutes) replaces the
    single performer."""
    out: dict[str, Any] = {"resourceType": "Procedure", "id": id}
    if mins is not None:
        out["extension"] = [minutes(mins)]
    out |= {
        "status": status,
        "code": concept(system, code),
        "subject": {"reference": "Patient/pat-ada"},
        "encounter": {"reference": f"Encounter/{encounter_id}"},
    }
    if period:
        out["performedPeriod"] = {"start": period[0], "end": period[1]}
    rows = performers or [(function, actor, None)]
    out["performer"] = []
    for fn, who, own in rows:
        p: dict[str, Any] = {
            "function": concept(PERFORMER_FUNCTION, fn),
            "actor": {"reference": who},
        }
        if own is not None:
            p["extension"] = [minutes(own)]
        out["performer"].append(p)
    if reasons:
        out["reasonReference"] = [{"reference": f"Condition/{r}"} for r in reasons]
    return out


def plan(
    id: str = "poc-1",
    start: str = "2026-10-01",
    end: str = "2026-12-29",
    discipline: str = "PT",
    *,
    signed: str | None = "2026-10-05T14:00:00-05:00",
    certifier: str = "Practitioner/md-garcia",
    delayed_reason: str | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "CarePlan", "id": id}
    parts: list[dict[str, Any]] = [{"url": "certifier", "valueReference": {"reference": certifier}}]
    if signed:
        parts.append({"url": "date", "valueDateTime": signed})
    if delayed_reason:
        parts.append({"url": "delayed-reason", "valueString": delayed_reason})
    out["extension"] = [{"url": PLAN_CERTIFICATION, "extension": parts}]
    out |= {
        "status": "active",
        "intent": "plan",
        "category": [concept(DISCIPLINE, discipline)],
        "subject": {"reference": "Patient/pat-ada"},
        "period": {"start": start, "end": end},
    }
    return out


def billing_input(
    encounters: list[dict[str, Any]],
    procedures: list[dict[str, Any]],
    *,
    rules: PayerRules | None = None,
    cov: dict[str, Any] | None = None,
    plans: list[dict[str, Any]] | None = None,
    **kw: Any,
) -> BillingInput:
    base = BillingInput(
        encounters=encounters,
        procedures=procedures,
        coverage=cov or coverage(),
        patient=PATIENT,
        organization=CLINIC,
        created="2026-10-15T08:00:00-05:00",
        codes=CODES,
        fee_schedule=FEES,
        practitioners=PEOPLE,
        conditions=CONDITIONS,
        plans_of_care=[plan()] if plans is None else plans,
        rules=rules,
    )
    return replace(base, **kw)
