"""Documentation and authorization rules that hold a claim.

Each function returns the issues it finds: ``error`` issues hold the claim (it must not
be persisted or sent), ``warning`` issues are shown for review. Payer-dependent limits
(certification length, progress report interval, whether an authorization is needed)
come from :class:`~fhir_server.billing.rules.PayerRules`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from fhir_server.billing.model import PlanOfCare, PriorAuthorization, ProgressReport
from fhir_server.billing.rules import PayerRules
from fhir_server.errors import Issue, IssueCode


def hold(code: IssueCode, diagnostics: str, *expression: str) -> Issue:
    return Issue("error", code, diagnostics, tuple(expression))


def warn(code: IssueCode, diagnostics: str, *expression: str) -> Issue:
    return Issue("warning", code, diagnostics, tuple(expression))


# --- the session and its services -----------------------------------------------------


def session_not_finished(encounter: str, status: str | None) -> list[Issue]:
    if status == "finished":
        return []
    return [
        hold(
            "business-rule",
            f"{encounter}: the session is not finished (status '{status}'); "
            "bill it once it is finished",
            "Encounter.status",
        )
    ]


def timed_without_minutes(procedure: str, code: str) -> Issue:
    return hold(
        "required",
        f"{procedure}: {code} is a timed code but no direct minutes are documented "
        "(therapy-minutes)",
        "Procedure.extension",
    )


def student_alone(procedure: str, code: str) -> Issue:
    return hold(
        "business-rule",
        f"{procedure}: {code} was furnished by a student alone; a student's service cannot "
        "be billed on its own (the therapist must furnish or direct it)",
        "Procedure.performer",
    )


# --- plan of care and certification ----------------------------------------------------


def _effective_end(plan: PlanOfCare, rules: PayerRules) -> date | None:
    """The last day the plan's certification is good for: its period end, and never
    more than ``certification_max_days`` from its start."""
    if plan.start is None:
        return plan.end
    cap = plan.start + timedelta(days=rules.certification_max_days - 1)
    return cap if plan.end is None or plan.end > cap else plan.end


def _usable(plan: PlanOfCare, discipline: str) -> bool:
    return plan.discipline == discipline and plan.status not in ("entered-in-error", "revoked")


@dataclass(frozen=True, slots=True)
class PlanCheck:
    plan: PlanOfCare | None
    issues: tuple[Issue, ...]


def plan_of_care_holds(
    plans: Iterable[PlanOfCare], discipline: str, on: date, rules: PayerRules
) -> PlanCheck:
    """The plan of care that covers a date of service, and the holds: no plan, an expired
    certification, a plan not (yet) certified when the payer needs certification."""
    mine = [p for p in plans if _usable(p, discipline)]
    covering = [
        p
        for p in mine
        if p.start is not None
        and p.start <= on
        and ((e := _effective_end(p, rules)) is None or on <= e)
    ]
    if not covering:
        ended = [p for p in mine if (e := _effective_end(p, rules)) is not None and e < on]
        if ended:
            last = max(ended, key=lambda p: _effective_end(p, rules) or date.min)
            return PlanCheck(
                None,
                (
                    hold(
                        "business-rule",
                        f"{discipline} {on}: the plan of care certification expired on "
                        f"{_effective_end(last, rules)} ({last.reference}); recertification needed",
                    ),
                ),
            )
        return PlanCheck(
            None,
            (
                hold(
                    "business-rule",
                    f"{discipline} {on}: no plan of care covers the date of service",
                ),
            ),
        )
    plan = max(covering, key=lambda p: (p.certified_on is not None, p.start or date.min))
    issues: list[Issue] = []
    if plan.end is not None and plan.start is not None:
        length = (plan.end - plan.start).days + 1
        if length > rules.certification_max_days:
            issues.append(
                warn(
                    "business-rule",
                    f"{plan.reference}: certification period of {length} days is longer than "
                    f"{rules.certification_max_days}; visits after {_effective_end(plan, rules)} "
                    "need a recertification",
                )
            )
    if rules.requires_certification:
        if plan.certified_on is None or plan.certifier is None:
            issues.append(
                hold(
                    "business-rule",
                    f"{plan.reference}: the plan of care for {on} is not certified (no signed "
                    "certification by the physician/NPP)",
                )
            )
        elif plan.start is not None:
            deadline = plan.start + timedelta(days=rules.certification_signature_days)
            if plan.certified_on > deadline and not plan.delayed_reason:
                issues.append(
                    warn(
                        "business-rule",
                        f"{plan.reference}: certified on {plan.certified_on}, more than "
                        f"{rules.certification_signature_days} days after {plan.start}, without "
                        "a reason for the delay",
                    )
                )
    return PlanCheck(plan, tuple(issues))


# --- progress reports ------------------------------------------------------------------


def treatment_days_since_report(
    on: date, treatment_days: Iterable[date], reports: Iterable[ProgressReport]
) -> tuple[int, ProgressReport | None]:
    """Treatment days up to ``on`` in the current reporting period, and the report that
    opened it. An evaluation opens a period that includes its own day; a progress report
    or re-evaluation closes the period it reports on, so the next one starts after it.
    Reports written by an assistant do not count."""
    days = sorted({d for d in treatment_days if d <= on} | {on})
    valid = [r for r in reports if r.on <= on and not r.by_assistant]
    if not valid:
        return len(days), None
    last = max(valid, key=lambda r: (r.on, r.kind != "evaluation"))
    if last.kind == "evaluation":
        return sum(1 for d in days if d >= last.on), last
    return sum(1 for d in days if d > last.on), last


def progress_report_holds(
    discipline: str,
    on: date,
    treatment_days: Iterable[date],
    reports: Iterable[ProgressReport],
    rules: PayerRules,
) -> list[Issue]:
    if not rules.requires_progress_reports:
        return []
    limit = rules.progress_report_max_treatment_days
    count, last = treatment_days_since_report(on, treatment_days, reports)
    since = f"since the {last.kind} of {last.on}" if last else "since the start of care"
    if count > limit:
        return [
            hold(
                "business-rule",
                f"{discipline} {on}: progress report overdue: treatment day {count} {since} "
                f"(a therapist's report is needed at least every {limit} treatment days)",
            )
        ]
    if count == limit:
        return [
            warn(
                "business-rule",
                f"{discipline} {on}: treatment day {count} {since}: a progress report is due",
            )
        ]
    return []


# --- prior authorization ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthorizationCheck:
    numbers: tuple[str, ...]  # the authorizations the claim uses (preAuthRef)
    issues: tuple[Issue, ...]


def authorization_holds(
    authorizations: Iterable[PriorAuthorization],
    discipline: str,
    units: Sequence[tuple[date, str, int]],
    rules: PayerRules,
) -> AuthorizationCheck:
    """Checks the authorizations for one discipline's billed services, given as
    (date of service, code, units): missing, expired or not yet valid, visits or units
    exhausted. Without a payer requirement the same findings are warnings."""
    mine = sorted(
        (a for a in authorizations if a.discipline in (None, discipline)),
        key=lambda a: a.start or date.min,
        reverse=True,
    )
    days = sorted({d for d, _, _ in units})
    required = rules.requires_prior_authorization
    report = hold if required else warn
    if not mine:
        if required and days:
            return AuthorizationCheck(
                (),
                (hold("business-rule", f"{discipline}: no prior authorization on the coverage"),),
            )
        return AuthorizationCheck((), ())
    issues: list[Issue] = []
    used_days: dict[str, set[date]] = {}
    for d in days:
        covering = [a for a in mine if a.covers(d)]
        if not covering:
            ended = [a for a in mine if a.end is not None and a.end < d]
            if ended:
                last = max(ended, key=lambda a: a.end or date.min)
                text = f"authorization {last.number} expired on {last.end}"
            else:
                text = "no authorization is valid yet on this date"
            issues.append(report("business-rule", f"{discipline} {d}: {text}"))
            continue
        used_days.setdefault(covering[0].number, set()).add(d)
    numbers: list[str] = []
    for auth in mine:
        mine_days = used_days.get(auth.number)
        if not mine_days:
            continue
        numbers.append(auth.number)
        if auth.visits is not None and auth.visits_used + len(mine_days) > auth.visits:
            issues.append(
                report(
                    "business-rule",
                    f"{discipline}: authorization {auth.number} exhausted: "
                    f"{auth.visits_used} of {auth.visits} visits used, this claim adds "
                    f"{len(mine_days)}",
                )
            )
        if auth.units is not None:
            billed = sum(
                n
                for d, code, n in units
                if d in mine_days and (not auth.procedures or code in auth.procedures)
            )
            if auth.units_used + billed > auth.units:
                issues.append(
                    report(
                        "business-rule",
                        f"{discipline}: authorization {auth.number} exhausted: "
                        f"{auth.units_used} of {auth.units} units used, this claim adds {billed}",
                    )
                )
    return AuthorizationCheck(tuple(numbers), tuple(issues))
