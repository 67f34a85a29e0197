"""The claim builder end to end (billing reference section 7 and the rules it applies)."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import Any

from fhir_server import jsonio
from fhir_server.billing import (
    ClaimDraft,
    PriorAuthorization,
    ProgressReport,
    PtpPair,
    TherapySpend,
    TreatmentHistory,
    build_claim,
    year_to_date,
)
from fhir_server.billing.model import CPT, HCPCS, ICD10CM, POS
from fhir_server.validation import validate_resource
from tests.billing.builders import (
    COMMERCIAL,
    MEDICARE,
    authorization,
    billing_input,
    coverage,
    encounter,
    plan,
    procedure,
)

PTA = "PractitionerRole/role-pta-lee"


def lines(draft: ClaimDraft) -> list[tuple[str, int, tuple[str, ...]]]:
    return [(line.code, line.units, line.modifiers) for line in draft.lines]


def errors(draft: ClaimDraft) -> list[str]:
    return [i.diagnostics for i in draft.issues if i.severity == "error"]


def warnings(draft: ClaimDraft) -> list[str]:
    return [i.diagnostics for i in draft.issues if i.severity == "warning"]


def infos(draft: ClaimDraft) -> list[str]:
    return [i.diagnostics for i in draft.issues if i.severity == "information"]


def cms_example_four_codes() -> ClaimDraft:
    return build_claim(
        billing_input(
            [encounter()],
            [
                procedure("p1", "97110", 18),
                procedure("p2", "97140", 13),
                procedure("p3", "97116", 10),
                procedure("p4", "97035", 8),
            ],
        )
    )


# --- the Claim shape (section 7) ----------------------------------------------------------


def test_claim_shape() -> None:
    draft = cms_example_four_codes()
    assert not draft.held, errors(draft)
    claim = draft.claim
    assert claim["resourceType"] == "Claim"
    assert claim["status"] == "active" and claim["use"] == "claim"
    assert claim["type"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/claim-type",
        "code": "professional",
    }
    assert claim["priority"]["coding"][0]["code"] == "normal"
    assert claim["patient"] == {"reference": "Patient/pat-ada"}
    assert claim["provider"] == {"reference": "Organization/clinic"}
    assert claim["insurer"] == {"reference": "Organization/medicare"}
    assert claim["billablePeriod"] == {"start": "2026-10-14", "end": "2026-10-14"}
    assert claim["created"] == "2026-10-15T08:00:00-05:00"
    assert claim["insurance"] == [
        {"sequence": 1, "focal": True, "coverage": {"reference": "Coverage/cov-ada"}}
    ]
    assert [d["diagnosisCodeableConcept"]["coding"][0]["code"] for d in claim["diagnosis"]] == [
        "M17.11",
        "R26.89",
    ]
    assert claim["diagnosis"][0]["sequence"] == 1
    assert claim["diagnosis"][0]["diagnosisCodeableConcept"]["coding"][0]["system"] == ICD10CM
    rendering, referring = claim["careTeam"]
    assert rendering["provider"] == {"reference": "Practitioner/pt-jones"}
    assert rendering["role"]["coding"][0]["code"] == "primary"
    assert rendering["qualification"]["coding"][0]["code"] == "225100000X"
    assert referring["provider"] == {"reference": "Practitioner/md-garcia"}
    assert referring["sequence"] == 2
    item = claim["item"][0]
    assert item == {
        "sequence": 1,
        "careTeamSequence": [1],
        "diagnosisSequence": [1, 2],
        "productOrService": {"coding": [{"system": CPT, "code": "97110"}]},
        "modifier": [{"coding": [{"system": HCPCS, "code": "GP"}]}],
        "servicedDate": "2026-10-14",
        "locationCodeableConcept": {"coding": [{"system": POS, "code": "11"}]},
        "quantity": {"value": 1},
        "unitPrice": {"value": Decimal("32.00"), "currency": "USD"},
        "net": {"value": Decimal("32.00"), "currency": "USD"},
        "encounter": [{"reference": "Encounter/enc-1"}],
    }
    assert claim["total"] == {"value": Decimal("97.00"), "currency": "USD"}


def test_claim_is_valid_r4() -> None:
    claim = jsonio.loads(jsonio.dumps(cms_example_four_codes().claim))
    assert validate_resource(claim) == []


def test_issues_explain_every_line() -> None:
    draft = cms_example_four_codes()
    text = infos(draft)
    assert any("total timed minutes 49" in t and "3 unit(s)" in t for t in text)
    assert any(t.startswith("line 1: 97110 PT 2026-10-14: 18 min") for t in text)
    assert any("97035" in t and "0 units, not billed" in t for t in text)
    assert draft.outcome()["resourceType"] == "OperationOutcome"


# --- units by payer ------------------------------------------------------------------------


def test_medicare_cms_example_lines() -> None:
    assert lines(cms_example_four_codes()) == [
        ("97110", 1, ("GP",)),
        ("97116", 1, ("GP",)),
        ("97140", 1, ("GP",)),
    ]


def test_same_minutes_commercial_payer_per_code() -> None:
    procs = [procedure("p1", "97112", 24), procedure("p2", "97110", 23)]
    medicare = build_claim(billing_input([encounter()], procs))
    assert [(c, n) for c, n, _ in lines(medicare)] == [("97110", 1), ("97112", 2)]
    cov = coverage("cpt-per-code", auths=[authorization("PA-7", "2026-10-01", "2026-12-31")])
    commercial = build_claim(billing_input([encounter()], procs, cov=cov))
    assert [(c, n) for c, n, _ in lines(commercial)] == [("97110", 2), ("97112", 2)]
    assert commercial.claim["insurance"][0]["preAuthRef"] == ["PA-7"]
    assert not commercial.held


def test_minutes_pool_per_date_and_per_discipline() -> None:
    encs = [
        encounter("e1", "2026-10-14"),
        encounter("e2", "2026-10-14"),  # a second PT session the same day
        encounter("e3", "2026-10-14", "OT", rendering="Practitioner/ot-brown"),
        encounter("e4", "2026-10-16"),
    ]
    procs = [
        procedure("a", "97110", 7, encounter_id="e1"),
        procedure("b", "97110", 7, encounter_id="e2"),  # 14 min of 97110 that day: 1 unit
        procedure("c", "97530", 7, encounter_id="e3", actor="Practitioner/ot-brown"),  # OT: 0
        procedure("d", "97110", 20, encounter_id="e4"),
    ]
    ot_plan = plan("poc-ot", discipline="OT")
    draft = build_claim(billing_input(encs, procs, plans=[plan(), ot_plan]))
    assert not draft.held, errors(draft)
    assert [(line.on.isoformat(), line.code, line.units) for line in draft.lines] == [
        ("2026-10-14", "97110", 1),
        ("2026-10-16", "97110", 1),
    ]
    assert draft.claim["item"][0]["encounter"] == [
        {"reference": "Encounter/e1"},
        {"reference": "Encounter/e2"},
    ]
    assert draft.claim["billablePeriod"] == {"start": "2026-10-14", "end": "2026-10-16"}


def test_untimed_and_other_length_codes() -> None:
    procs = [
        procedure("e", "97162"),  # untimed evaluation: 1 unit, no minutes needed
        procedure("w", "97550", 16),  # 30-minute code: midpoint passed
        procedure("x", "97110", 7),
    ]
    draft = build_claim(billing_input([encounter()], procs))
    assert lines(draft) == [("97162", 1, ("GP",)), ("97550", 1, ("GP",))]
    assert any("total timed minutes 23" in t and "7 pooled" in t for t in infos(draft))


def test_tie_break_from_the_payer_rules() -> None:
    procs = [procedure("p1", "97112", 20), procedure("p2", "97110", 20)]
    default = build_claim(billing_input([encounter()], procs))
    assert [(c, n) for c, n, _ in lines(default)] == [("97110", 2), ("97112", 1)]
    by_fee = replace(MEDICARE, tie_break=("fee", "code"))
    draft = build_claim(billing_input([encounter()], procs, rules=by_fee))
    assert [(c, n) for c, n, _ in lines(draft)] == [("97110", 1), ("97112", 2)]


# --- modifiers -------------------------------------------------------------------------------


def test_assistant_units_are_their_own_line_with_cq() -> None:
    procs = [
        procedure("pta", "97110", 23, function="assistant", actor=PTA),
        procedure("pt", "97110", 13),
        procedure("pt2", "97140", 30),
    ]
    draft = build_claim(billing_input([encounter()], procs))
    assert not draft.held, errors(draft)
    assert lines(draft) == [
        ("97110", 1, ("GP",)),
        ("97110", 1, ("CQ", "GP")),
        ("97140", 2, ("GP",)),
    ]
    # the assistant bills under the supervising therapist: one rendering provider
    assert [c["provider"]["reference"] for c in draft.claim["careTeam"]] == [
        "Practitioner/pt-jones",
        "Practitioner/md-garcia",
    ]


def test_per_performer_minutes_on_one_procedure() -> None:
    shared = procedure(
        "s",
        "97110",
        36,
        performers=[("therapist", "PractitionerRole/role-pt-jones", 13), ("assistant", PTA, 23)],
    )
    draft = build_claim(billing_input([encounter()], [shared]))
    assert lines(draft) == [("97110", 1, ("GP",)), ("97110", 1, ("CQ", "GP"))]


def test_shared_service_without_separate_minutes_holds() -> None:
    shared = procedure(
        "s",
        "97110",
        36,
        performers=[
            ("therapist", "PractitionerRole/role-pt-jones", None),
            ("assistant", PTA, None),
        ],
    )
    draft = build_claim(billing_input([encounter()], [shared]))
    assert draft.held and "not documented separately" in errors(draft)[0]


def test_ot_assistant_gets_co() -> None:
    enc = encounter(discipline="OT", rendering="Practitioner/ot-brown")
    procs = [procedure("p", "97530", 30, function="assistant", actor=PTA)]
    draft = build_claim(billing_input([enc], procs, plans=[plan(discipline="OT")]))
    assert lines(draft) == [("97530", 2, ("CO", "GO"))]


def test_slp_has_no_assistant_modifier() -> None:
    enc = encounter(discipline="SLP")
    procs = [procedure("p", "92507", function="assistant", actor=PTA)]
    draft = build_claim(billing_input([enc], procs, plans=[plan(discipline="SLP")]))
    assert draft.held and "no assistant modifier for SLP" in errors(draft)[0]


def test_slp_line_gets_gn() -> None:
    enc = encounter(discipline="SLP")
    draft = build_claim(
        billing_input([enc], [procedure("p", "92507")], plans=[plan(discipline="SLP")])
    )
    assert lines(draft) == [("92507", 1, ("GN",))]


def test_kx_after_the_threshold_and_in_order() -> None:
    procs = [
        procedure("pta", "97110", 23, function="assistant", actor=PTA),
        procedure("pt", "97110", 13),
        procedure("pt2", "97140", 30),
    ]
    spend = [TherapySpend(2026, "PT-SLP", prior=Decimal("2000"), billed=Decimal("440"))]
    draft = build_claim(billing_input([encounter()], procs, spend=spend))
    # 2440 + 32 = 2472 (within 2480), + 32 = 2504 (over), + 68 (over)
    assert lines(draft) == [
        ("97110", 1, ("GP",)),
        ("97110", 1, ("CQ", "GP", "KX")),
        ("97140", 2, ("GP", "KX")),
    ]
    assert any("2504.00 > threshold 2480" in t for t in infos(draft))


def test_no_kx_for_a_commercial_payer() -> None:
    cov = coverage("cpt-per-code", auths=[authorization("PA-7", "2026-10-01", "2026-12-31")])
    spend = [TherapySpend(2026, "PT-SLP", prior=Decimal("9000"))]
    draft = build_claim(
        billing_input([encounter()], [procedure("p", "97110", 30)], cov=cov, spend=spend)
    )
    assert lines(draft) == [("97110", 2, ("GP",))]


def test_year_to_date_from_earlier_claims() -> None:
    earlier = build_claim(billing_input([encounter()], [procedure("p", "97110", 30)])).claim
    ot = build_claim(
        billing_input(
            [encounter(discipline="OT", rendering="Practitioner/ot-brown")],
            [procedure("q", "97530", 15, actor="Practitioner/ot-brown")],
            plans=[plan(discipline="OT")],
        )
    ).claim
    cancelled = {**earlier, "status": "cancelled"}
    spend = year_to_date([earlier, ot, cancelled], 2026, MEDICARE, {"PT-SLP": Decimal("100")})
    assert spend == [
        TherapySpend(2026, "OT", Decimal(0), Decimal("40.00")),
        TherapySpend(2026, "PT-SLP", Decimal("100"), Decimal("64.00")),
    ]
    assert year_to_date([earlier], 2025, MEDICARE) == []


def test_too_many_modifiers_hold() -> None:
    three = replace(MEDICARE, max_modifiers=1)
    procs = [procedure("pta", "97110", 15, function="assistant", actor=PTA)]
    draft = build_claim(billing_input([encounter()], procs, rules=three))
    assert draft.held and "2 modifiers (CQ, GP), at most 1" in errors(draft)[0]


# --- NCCI -------------------------------------------------------------------------------------


NCCI = [PtpPair("97140", "97530", 1), PtpPair("97110", "97164", 1), PtpPair("97999", "97110", 0)]


def ncci_claim(p1: tuple[str, str] | None, p2: tuple[str, str] | None, **kw: Any) -> ClaimDraft:
    procs = [
        procedure("m", "97140", 15, period=p1),
        procedure("a", "97530", 15, period=p2),
    ]
    return build_claim(billing_input([encounter()], procs, ptp_pairs=NCCI, **kw))


T = "2026-10-14T09:{:02d}:00-05:00"


def test_ncci_bypass_modifier_on_column_2() -> None:
    draft = ncci_claim((T.format(0), T.format(15)), (T.format(15), T.format(30)))
    assert not draft.held
    assert lines(draft) == [("97140", 1, ("GP",)), ("97530", 1, ("59", "GP"))]
    modifier = draft.claim["item"][1]["modifier"][0]["coding"][0]
    assert modifier == {"system": CPT, "code": "59"}


def test_ncci_x_modifier_from_the_rules() -> None:
    xu = replace(MEDICARE, ncci=replace(MEDICARE.ncci, bypass_modifier="XU"))
    draft = ncci_claim((T.format(0), T.format(15)), (T.format(15), T.format(30)), rules=xu)
    assert lines(draft)[1] == ("97530", 1, ("XU", "GP"))
    assert draft.claim["item"][1]["modifier"][0]["coding"][0]["system"] == HCPCS


def test_ncci_same_time_block_holds() -> None:
    draft = ncci_claim((T.format(0), T.format(20)), (T.format(10), T.format(30)))
    assert draft.held and "same time block" in errors(draft)[0]


def test_ncci_undocumented_timing_warns_or_holds() -> None:
    draft = ncci_claim(None, None)
    assert not draft.held and any("time blocks not documented" in w for w in warnings(draft))
    assert lines(draft)[1] == ("97530", 1, ("59", "GP"))
    strict = replace(MEDICARE, ncci=replace(MEDICARE.ncci, unknown_timing="hold"))
    assert ncci_claim(None, None, rules=strict).held


def test_ncci_never_together() -> None:
    procs = [procedure("a", "97110", 15), procedure("b", "97999", 15)]
    codes = {**billing_input([], []).codes}
    from fhir_server.billing import timed_code

    codes["97999"] = timed_code("97999")
    fees = {**billing_input([], []).fee_schedule, "97999": Decimal("10")}
    draft = build_claim(
        billing_input([encounter()], procs, ptp_pairs=NCCI, codes=codes, fee_schedule=fees)
    )
    assert draft.held and "never billed together" in errors(draft)[0]


def test_ncci_reevaluation_modifier() -> None:
    procs = [
        procedure("t", "97110", 30, period=(T.format(0), T.format(30))),
        procedure("r", "97164", period=("2026-10-14T09:30:00-05:00", "2026-10-14T10:00:00-05:00")),
    ]
    draft = build_claim(billing_input([encounter()], procs, ptp_pairs=NCCI))
    assert lines(draft) == [("97110", 2, ("GP",)), ("97164", 1, ("59", "GP"))]


# --- payer code rules ---------------------------------------------------------------------------


def test_97010_never_billed_to_medicare() -> None:
    procs = [procedure("h", "97010"), procedure("x", "97110", 15)]
    draft = build_claim(billing_input([encounter()], procs))
    assert lines(draft) == [("97110", 1, ("GP",))]
    assert any("97010 is bundled" in w for w in warnings(draft))
    cov = coverage("cpt-per-code", auths=[authorization("PA-7", "2026-10-01", "2026-12-31")])
    commercial = build_claim(billing_input([encounter()], procs, cov=cov))
    assert [c for c, _, _ in lines(commercial)] == ["97010", "97110"]


def test_97014_billed_as_g0283_to_medicare() -> None:
    draft = build_claim(billing_input([encounter()], [procedure("e", "97014")]))
    assert lines(draft) == [("G0283", 1, ("GP",))]
    assert draft.claim["item"][0]["productOrService"]["coding"][0]["system"] == HCPCS


# --- diagnoses ------------------------------------------------------------------------------------


def test_at_most_12_diagnoses_and_4_pointers() -> None:
    conds = tuple(f"cond-{i}" for i in range(1, 15))
    enc = encounter(diagnoses=conds)
    draft = build_claim(billing_input([enc], [procedure("p", "97110", 15, reasons=("cond-3",))]))
    assert len(draft.claim["diagnosis"]) == 12
    assert sum("at most 12 diagnoses" in w for w in warnings(draft)) == 2
    assert draft.claim["item"][0]["diagnosisSequence"] == [3, 1, 2, 4]  # its reason first


def test_no_diagnosis_holds() -> None:
    draft = build_claim(billing_input([encounter(diagnoses=())], [procedure("p", "97110", 15)]))
    assert draft.held and "no ICD-10-CM diagnosis" in " ".join(errors(draft))


# --- holds -------------------------------------------------------------------------------------------


def test_held_claim_is_a_draft() -> None:
    draft = build_claim(
        billing_input([encounter(status="in-progress")], [procedure("p", "97110", 15)])
    )
    assert draft.held and draft.claim["status"] == "draft"
    assert "not finished" in errors(draft)[0]


def test_timed_service_without_minutes_holds() -> None:
    draft = build_claim(billing_input([encounter()], [procedure("p", "97110")]))
    assert draft.held and "no direct minutes" in errors(draft)[0]


def test_student_alone_holds_and_student_minutes_do_not_count() -> None:
    student = "Practitioner/student-kim"
    draft = build_claim(
        billing_input(
            [encounter()], [procedure("s", "97110", 20, function="student", actor=student)]
        )
    )
    assert draft.held and "student alone" in errors(draft)[0]
    together = procedure(
        "t",
        "97110",
        25,
        performers=[("therapist", "PractitionerRole/role-pt-jones", 15), ("student", student, 10)],
    )
    draft = build_claim(billing_input([encounter()], [together]))
    assert not draft.held and lines(draft) == [("97110", 1, ("GP",))]
    assert any("student took part" in w for w in warnings(draft))


def test_procedure_not_completed_holds() -> None:
    procs = [
        procedure("p", "97110", 15, status="in-progress"),
        procedure("q", "97112", 15, status="not-done"),
    ]
    draft = build_claim(billing_input([encounter()], procs))
    assert draft.held and "not completed" in errors(draft)[0]


def test_no_plan_of_care_or_expired_certification_holds() -> None:
    procs = [procedure("p", "97110", 15)]
    assert (
        "no plan of care" in errors(build_claim(billing_input([encounter()], procs, plans=[])))[0]
    )
    old = plan(start="2026-06-01", end="2026-08-29", signed="2026-06-03")
    draft = build_claim(billing_input([encounter()], procs, plans=[old]))
    assert "certification expired on 2026-08-29" in errors(draft)[0]
    unsigned = plan(signed=None)
    draft = build_claim(billing_input([encounter()], procs, plans=[unsigned]))
    assert "not certified" in errors(draft)[0]


def test_progress_report_overdue_holds() -> None:
    from datetime import date, timedelta

    start = date(2026, 10, 1)
    earlier = frozenset(start + timedelta(days=i) for i in range(10))  # 10 treatment days
    history = TreatmentHistory("PT", earlier, (ProgressReport(start, "evaluation"),))
    draft = build_claim(
        billing_input([encounter()], [procedure("p", "97110", 15)], history=[history])
    )
    assert draft.held and "progress report overdue: treatment day 11" in errors(draft)[0]
    reported = replace(history, reports=(*history.reports, ProgressReport(date(2026, 10, 10))))
    draft = build_claim(
        billing_input([encounter()], [procedure("p", "97110", 15)], history=[reported])
    )
    assert not draft.held


def test_authorization_holds_on_the_claim() -> None:
    procs = [procedure("p", "97110", 15)]
    cov = coverage("cpt-per-code")
    assert (
        "no prior authorization"
        in errors(build_claim(billing_input([encounter()], procs, cov=cov)))[0]
    )
    used = [PriorAuthorization("PA-9", None, None, "PT", visits=4, visits_used=4)]
    draft = build_claim(billing_input([encounter()], procs, cov=cov, prior_authorizations=used))
    assert draft.held and "exhausted" in errors(draft)[0]
    expired = coverage("cpt-per-code", auths=[authorization("PA-1", "2026-01-01", "2026-09-30")])
    assert (
        "expired on 2026-09-30"
        in errors(build_claim(billing_input([encounter()], procs, cov=expired)))[0]
    )


def test_coverage_and_provider_holds() -> None:
    procs = [procedure("p", "97110", 15)]
    draft = build_claim(billing_input([encounter()], procs, cov=coverage(status="cancelled")))
    assert "coverage is not active" in errors(draft)[0]
    draft = build_claim(billing_input([encounter(on="2027-01-04")], procs))
    assert any("does not cover 2027-01-04" in e for e in errors(draft))
    draft = build_claim(billing_input([encounter(pos=None)], procs))
    assert "no place of service" in errors(draft)[0]
    nameless = build_claim(billing_input([encounter(rendering="Practitioner/student-kim")], procs))
    assert any("no Practitioner with an NPI" in e for e in errors(nameless))


def test_unknown_code_and_missing_fee_hold() -> None:
    draft = build_claim(billing_input([encounter()], [procedure("p", "97999", 15)]))
    assert "not a known therapy code" in errors(draft)[0]
    draft = build_claim(
        billing_input([encounter()], [procedure("p", "97110", 15)], fee_schedule={})
    )
    assert "no unit price" in errors(draft)[0]
    assert "unitPrice" not in draft.claim["item"][0]


def test_commercial_claim_needs_no_certification() -> None:
    cov = coverage("cpt-per-code", auths=[authorization("PA-7", "2026-10-01", "2026-12-31")])
    uncertified = plan(signed=None)
    draft = build_claim(
        billing_input([encounter()], [procedure("p", "97110", 15)], cov=cov, plans=[uncertified])
    )
    assert not draft.held, errors(draft)
    assert COMMERCIAL.requires_certification is False


def test_claim_conforms_to_the_rehab_claim_profile() -> None:
    from fhir_server.validation import validate

    procs = [
        procedure("pta", "97110", 23, function="assistant", actor=PTA),
        procedure("pt", "97110", 13),
        procedure("pt2", "97140", 30),
    ]
    claim = jsonio.loads(jsonio.dumps(build_claim(billing_input([encounter()], procs)).claim))
    claim["id"] = "claim-1"
    assert [i for i in validate(claim) if i.severity in ("error", "fatal")] == []


def test_service_minutes_go_to_the_performer_without_own_minutes() -> None:
    shared = procedure(
        "s",
        "97110",
        36,
        performers=[("therapist", "PractitionerRole/role-pt-jones", None), ("assistant", PTA, 23)],
    )
    draft = build_claim(billing_input([encounter()], [shared]))
    assert lines(draft) == [("97110", 1, ("GP",)), ("97110", 1, ("CQ", "GP"))]


def test_performer_minutes_over_the_service_minutes_warn() -> None:
    shared = procedure(
        "s",
        "97110",
        20,
        performers=[("therapist", "PractitionerRole/role-pt-jones", 15), ("assistant", PTA, 15)],
    )
    draft = build_claim(billing_input([encounter()], [shared]))
    assert any("more than the service's 20" in w for w in warnings(draft))
    assert lines(draft) == [("97110", 1, ("GP",)), ("97110", 1, ("CQ", "GP"))]
