"""Rules that hold a claim (billing reference sections 5 and 6)."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta

from fhir_server.billing.holds import (
    authorization_holds,
    plan_of_care_holds,
    progress_report_holds,
    session_not_finished,
    treatment_days_since_report,
)
from fhir_server.billing.model import PlanOfCare, PriorAuthorization, ProgressReport
from tests.billing.builders import COMMERCIAL, MEDICARE

D = date(2026, 10, 14)


def cert(
    start: date, end: date | None, signed: date | None = date(2026, 10, 5), **kw: str
) -> PlanOfCare:
    return PlanOfCare("CarePlan/p", "PT", start, end, signed, "Practitioner/md", **kw)


def errors(issues: object) -> list[str]:
    return [i.diagnostics for i in issues if i.severity == "error"]  # type: ignore[attr-defined]


def warnings(issues: object) -> list[str]:
    return [i.diagnostics for i in issues if i.severity == "warning"]  # type: ignore[attr-defined]


# --- session ---------------------------------------------------------------------------


def test_session_must_be_finished() -> None:
    assert session_not_finished("Encounter/e", "finished") == []
    assert "not finished" in errors(session_not_finished("Encounter/e", "in-progress"))[0]


# --- plan of care certification ----------------------------------------------------------


def test_certified_plan_covers_the_date() -> None:
    check = plan_of_care_holds([cert(date(2026, 10, 1), date(2026, 12, 29))], "PT", D, MEDICARE)
    assert check.plan is not None and check.issues == ()


def test_no_plan_of_care() -> None:
    check = plan_of_care_holds([], "PT", D, MEDICARE)
    assert check.plan is None and "no plan of care" in errors(check.issues)[0]
    other = replace(cert(date(2026, 10, 1), date(2026, 12, 29)), discipline="OT")
    assert errors(plan_of_care_holds([other], "PT", D, MEDICARE).issues)


def test_expired_certification() -> None:
    check = plan_of_care_holds([cert(date(2026, 7, 1), date(2026, 9, 28))], "PT", D, MEDICARE)
    assert "expired on 2026-09-28" in errors(check.issues)[0]


def test_certification_lasts_at_most_90_days() -> None:
    plan = cert(date(2026, 7, 1), date(2026, 12, 31))  # a 184-day period
    check = plan_of_care_holds([plan], "PT", date(2026, 9, 28), MEDICARE)  # day 90
    assert not errors(check.issues) and "longer than 90" in warnings(check.issues)[0]
    check = plan_of_care_holds([plan], "PT", date(2026, 9, 29), MEDICARE)  # day 91
    assert "expired on 2026-09-28" in errors(check.issues)[0]


def test_recertification_replaces_the_expired_plan() -> None:
    old = cert(date(2026, 7, 1), date(2026, 9, 28))
    new = replace(cert(date(2026, 9, 29), date(2026, 12, 27)), reference="CarePlan/new")
    check = plan_of_care_holds([old, new], "PT", D, MEDICARE)
    assert check.plan == new and check.issues == ()


def test_plan_not_signed_holds_for_medicare_only() -> None:
    unsigned = cert(date(2026, 10, 1), date(2026, 12, 29), signed=None)
    assert "not certified" in errors(plan_of_care_holds([unsigned], "PT", D, MEDICARE).issues)[0]
    assert plan_of_care_holds([unsigned], "PT", D, COMMERCIAL).issues == ()


def test_late_signature_without_reason_is_a_warning() -> None:
    late = cert(date(2026, 8, 1), date(2026, 10, 29), signed=date(2026, 9, 15))  # 45 days
    assert "more than 30 days" in warnings(plan_of_care_holds([late], "PT", D, MEDICARE).issues)[0]
    excused = replace(late, delayed_reason="physician on leave")
    assert plan_of_care_holds([excused], "PT", D, MEDICARE).issues == ()


def test_revoked_plans_do_not_count() -> None:
    revoked = replace(cert(date(2026, 10, 1), date(2026, 12, 29)), status="revoked")
    assert errors(plan_of_care_holds([revoked], "PT", D, MEDICARE).issues)


# --- progress report every 10 treatment days ----------------------------------------------


def days(n: int, start: date = date(2026, 10, 1)) -> list[date]:
    return [start + timedelta(days=i) for i in range(n)]


def test_evaluation_opens_the_first_reporting_period() -> None:
    t = days(11)
    reports = [ProgressReport(t[0], "evaluation")]
    assert treatment_days_since_report(t[9], t, reports) == (10, reports[0])
    assert "due" in warnings(progress_report_holds("PT", t[9], t, reports, MEDICARE))[0]
    assert not progress_report_holds("PT", t[8], t, reports, MEDICARE)
    held = errors(progress_report_holds("PT", t[10], t, reports, MEDICARE))
    assert "overdue: treatment day 11" in held[0]


def test_progress_report_closes_its_period() -> None:
    t = days(21)
    reports = [ProgressReport(t[0], "evaluation"), ProgressReport(t[9], "progress")]
    assert treatment_days_since_report(t[19], t, reports)[0] == 10  # days 11-20
    assert not errors(progress_report_holds("PT", t[19], t, reports, MEDICARE))
    assert errors(progress_report_holds("PT", t[20], t, reports, MEDICARE))


def test_reports_by_an_assistant_do_not_count() -> None:
    t = days(12)
    reports = [
        ProgressReport(t[0], "evaluation"),
        ProgressReport(t[9], "progress", by_assistant=True),
    ]
    assert errors(progress_report_holds("PT", t[11], t, reports, MEDICARE))


def test_calendar_days_without_treatment_do_not_count() -> None:
    t = [date(2026, 10, 1) + timedelta(days=7 * i) for i in range(10)]  # weekly visits
    reports = [ProgressReport(t[0], "evaluation")]
    assert not errors(progress_report_holds("PT", t[9], t, reports, MEDICARE))


def test_progress_reports_not_required_by_the_payer() -> None:
    t = days(30)
    assert progress_report_holds("PT", t[29], t, [], COMMERCIAL) == []
    assert errors(progress_report_holds("PT", t[29], t, [], MEDICARE))


# --- prior authorization ---------------------------------------------------------------------


AUTH = PriorAuthorization("PA-1", date(2026, 10, 1), date(2026, 12, 31), "PT", visits=12)


def test_authorization_used_and_numbered() -> None:
    check = authorization_holds([AUTH], "PT", [(D, "97110", 2)], COMMERCIAL)
    assert check.numbers == ("PA-1",) and check.issues == ()


def test_authorization_missing() -> None:
    check = authorization_holds([], "PT", [(D, "97110", 2)], COMMERCIAL)
    assert "no prior authorization" in errors(check.issues)[0]
    ot_only = replace(AUTH, discipline="OT")
    assert errors(authorization_holds([ot_only], "PT", [(D, "97110", 2)], COMMERCIAL).issues)


def test_authorization_expired_or_not_yet_valid() -> None:
    check = authorization_holds([AUTH], "PT", [(date(2027, 1, 4), "97110", 1)], COMMERCIAL)
    assert "expired on 2026-12-31" in errors(check.issues)[0]
    check = authorization_holds([AUTH], "PT", [(date(2026, 9, 30), "97110", 1)], COMMERCIAL)
    assert "is valid yet" in errors(check.issues)[0]


def test_authorization_visits_exhausted() -> None:
    used = replace(AUTH, visits_used=11)
    assert not authorization_holds([used], "PT", [(D, "97110", 2)], COMMERCIAL).issues
    full = replace(AUTH, visits_used=12)
    check = authorization_holds([full], "PT", [(D, "97110", 2), (D, "97140", 1)], COMMERCIAL)
    assert "12 of 12 visits used, this claim adds 1" in errors(check.issues)[0]


def test_authorization_units_exhausted_per_procedure() -> None:
    units = replace(AUTH, visits=None, units=8, units_used=6, procedures=frozenset({"97110"}))
    ok = authorization_holds([units], "PT", [(D, "97110", 2), (D, "97140", 3)], COMMERCIAL)
    assert not ok.issues
    over = authorization_holds([units], "PT", [(D, "97110", 3)], COMMERCIAL)
    assert "6 of 8 units used, this claim adds 3" in errors(over.issues)[0]


def test_authorization_not_required_gives_warnings() -> None:
    assert authorization_holds([], "PT", [(D, "97110", 2)], MEDICARE).issues == ()
    full = replace(AUTH, visits_used=12)
    check = authorization_holds([full], "PT", [(D, "97110", 2)], MEDICARE)
    assert not errors(check.issues) and warnings(check.issues)
