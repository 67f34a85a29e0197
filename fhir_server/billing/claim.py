"""The claim builder: finished therapy sessions -> an R4 professional Claim.

:func:`build_claim` takes a :class:`BillingInput` (FHIR dicts and small typed values,
everything already read: no I/O here) and returns a :class:`ClaimDraft`: the Claim
resource dict and the issues that explain it - one ``information`` issue per date and
discipline (minutes, unit rule, units) and per line (minutes, units, modifiers),
``warning`` issues for review, and ``error`` issues that hold the claim (a held claim
has status ``draft`` and must not be persisted or sent).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from fhir_server.billing import holds
from fhir_server.billing.fhir import (
    Index,
    Json,
    code_in,
    codings,
    day,
    decimal,
    discipline_of,
    extension,
    instant,
    items,
    npi,
    plan_of_care,
    prior_authorizations,
    ref_of,
    reference,
)
from fhir_server.billing.model import (
    BASE,
    BILLING_PROFILE,
    CARE_TEAM_ROLE,
    CLAIM_TYPE,
    CPT,
    DISCIPLINES,
    HCPCS,
    ICD10CM,
    NUCC,
    PARTICIPATION_TYPE,
    PERFORMER_FUNCTION,
    PLACE_OF_SERVICE,
    PROCESS_PRIORITY,
    THERAPY_MINUTES,
    UCUM,
    CodeCatalog,
    CodeInfo,
    PlanOfCare,
    PriorAuthorization,
    ProgressReport,
    ReportKind,
    TreatmentHistory,
)
from fhir_server.billing.modifiers import (
    KxLine,
    TherapySpend,
    kx_lines,
    modifier_system,
    order_modifiers,
    split_timed_units,
    untimed_assistant,
)
from fhir_server.billing.ncci import Interval, PtpPair, TimedCode, evaluate
from fhir_server.billing.rules import BillingRules, PayerRules, load_rules
from fhir_server.billing.units import eight_minute_units, midpoint_units, pooled_units
from fhir_server.errors import Issue, has_errors, operation_outcome

CLAIM_PROFILE = f"{BASE}/StructureDefinition/rehab-claim"
CENT = Decimal("0.01")


@dataclass(frozen=True)
class BillingInput:
    """Everything one claim is built from.

    ``practitioners`` holds the Practitioner and PractitionerRole resources the
    encounters, procedures and plans refer to; ``plans_of_care`` the CarePlans of the
    patient; ``codes`` the procedure code facts (see
    :func:`fhir_server.billing.adapter.code_catalog`); ``fee_schedule`` the unit price
    per code; ``spend`` the year-to-date therapy amounts (prior amount + this practice's
    earlier claims); ``history`` the earlier treatment days and reports per discipline;
    ``prior_authorizations`` defaults to the Coverage's ``prior-authorization``
    extensions with nothing used; ``created`` is the Claim's creation dateTime.
    """

    encounters: Sequence[Json]
    procedures: Sequence[Json]
    coverage: Json
    patient: Json
    organization: Json
    created: str
    codes: CodeCatalog
    fee_schedule: Mapping[str, Decimal | int | str]
    practitioners: Sequence[Json] = ()
    conditions: Sequence[Json] = ()
    plans_of_care: Sequence[Json] = ()
    rules: BillingRules | PayerRules | None = None
    prior_authorizations: Sequence[PriorAuthorization] | None = None
    spend: Sequence[TherapySpend] = ()
    ptp_pairs: Sequence[PtpPair] = ()
    history: Sequence[TreatmentHistory] = ()
    claim_id: str | None = None
    referral: str | None = None  # reference to the referral ServiceRequest
    currency: str = "USD"
    status: str = "active"


@dataclass(frozen=True, slots=True)
class ClaimLine:
    """A billed line, as computed (the Claim item is built from it)."""

    on: date
    discipline: str
    code: str
    system: str
    units: int
    modifiers: tuple[str, ...]
    unit_price: Decimal | None
    net: Decimal | None
    assistant: bool
    encounters: tuple[str, ...]
    diagnosis_sequence: tuple[int, ...]
    care_team_sequence: int | None


@dataclass(frozen=True)
class ClaimDraft:
    claim: dict[str, Any]
    issues: tuple[Issue, ...]
    lines: tuple[ClaimLine, ...] = ()

    @property
    def held(self) -> bool:
        """True when an error holds the claim: it must not be persisted."""
        return has_errors(self.issues)

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)


# --- reading the sessions ---------------------------------------------------------------


@dataclass
class Session:
    ref: str
    discipline: str
    on: date
    rendering: str | None
    place: Json | None
    diagnoses: list[str]  # Condition references by rank
    order: int


@dataclass
class Service:
    """One Procedure, read."""

    ref: str
    session: Session
    code: str
    system: str
    info: CodeInfo
    therapist: int  # minutes
    assistant: int
    has_therapist: bool
    has_assistant: bool
    shares_known: bool
    block: Interval | None
    reasons: list[str]


@dataclass
class CodeDay:
    """All services of one code on one date for one discipline."""

    code: str
    system: str
    info: CodeInfo
    session: Session
    therapist: int = 0
    assistant: int = 0
    has_therapist: bool = False
    has_assistant: bool = False
    shares_known: bool = True
    blocks: list[Interval] = field(default_factory=list)
    complete: bool = True
    encounters: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    @property
    def minutes(self) -> int:
        return self.therapist + self.assistant


@dataclass
class Draft:
    """A line under construction."""

    day: CodeDay
    units: int
    assistant: bool
    note: str
    modifiers: list[str] = field(default_factory=list)
    price: Decimal | None = None

    @property
    def net(self) -> Decimal | None:
        return None if self.price is None else (self.price * self.units).quantize(CENT)


def _info(diagnostics: str, *expression: str) -> Issue:
    return Issue("information", "informational", diagnostics, tuple(expression))


def _money(value: Decimal, currency: str) -> dict[str, Any]:
    return {"value": value.quantize(CENT, ROUND_HALF_UP), "currency": currency}


def _price(value: Decimal | int | str | None) -> Decimal | None:
    return None if value is None else decimal(value)


def select_rules(
    rules: BillingRules | PayerRules | None, coverage: Json
) -> tuple[PayerRules | None, list[Issue]]:
    """The payer rules for a Coverage: its ``billing-profile``, or a payer entry."""
    if isinstance(rules, PayerRules):
        return rules, []
    rules = rules or load_rules()
    ext = extension(coverage, BILLING_PROFILE)
    profile = ext.get("valueCode") if ext else None
    payors = [reference(p) for p in items(coverage.get("payor"))]
    found = rules.for_payer(
        profile if isinstance(profile, str) else None, payors[0] if payors else None
    )
    if found is None:
        return None, [
            holds.hold(
                "business-rule",
                f"{ref_of(coverage)}: no billing rules for billing profile '{profile}'",
                "Coverage.extension",
            )
        ]
    return found, []


def _rank(diagnosis: Json) -> int:
    rank = diagnosis.get("rank")
    return rank if isinstance(rank, int) else 1 << 30


def _sessions(inp: BillingInput, issues: list[Issue]) -> list[Session]:
    patient = ref_of(inp.patient)
    out: list[Session] = []
    for n, enc in enumerate(inp.encounters):
        ref = ref_of(enc)
        issues += holds.session_not_finished(ref, enc.get("status"))
        discipline = discipline_of(enc.get("serviceType"))
        period = enc.get("period")
        on = day(period.get("start")) if isinstance(period, Mapping) else None
        if discipline not in DISCIPLINES or on is None:
            issues.append(
                holds.hold(
                    "required",
                    f"{ref}: needs a discipline (PT, OT, SLP) in serviceType and period.start",
                    "Encounter.serviceType",
                )
            )
            continue
        assert discipline is not None
        if reference(enc.get("subject")) != patient:
            issues.append(
                holds.hold("invalid", f"{ref}: subject is not {patient}", "Encounter.subject")
            )
        rendering = None
        for participant in items(enc.get("participant")):
            types = [t for concept in items(participant.get("type")) for t in codings(concept)]
            if any(
                t.get("system") == PARTICIPATION_TYPE and t.get("code") == "PPRF" for t in types
            ):
                rendering = reference(participant.get("individual"))
                break
        if rendering is None:
            issues.append(
                holds.hold(
                    "required",
                    f"{ref}: no participant of type PPRF (the therapist the visit is billed under)",
                    "Encounter.participant",
                )
            )
        pos_ext = extension(enc, PLACE_OF_SERVICE)
        place = pos_ext.get("valueCoding") if pos_ext else None
        if not isinstance(place, Mapping):
            place = None
            issues.append(
                holds.hold("required", f"{ref}: no place of service", "Encounter.extension")
            )
        ranked = sorted(items(enc.get("diagnosis")), key=_rank)
        diagnoses = [r for d in ranked if (r := reference(d.get("condition")))]
        out.append(Session(ref, discipline, on, rendering, place, diagnoses, n))
    return out


def _minutes(quantity: Any) -> Decimal | None:
    if not isinstance(quantity, Mapping):
        return None
    if quantity.get("code", quantity.get("unit")) != "min" or quantity.get("system", UCUM) != UCUM:
        return None
    value = decimal(quantity.get("value"))
    return value if value is not None and value >= 0 else None


def _whole(value: Decimal, where: str, issues: list[Issue]) -> int:
    whole = int(value)
    if whole != value:
        issues.append(
            holds.warn("value", f"{where}: {value} minutes counted as {whole} (whole minutes)")
        )
    return whole


def _attribute(
    total: int | None, own: Mapping[str, int], present: set[str]
) -> tuple[int, int, int | None, bool] | None:
    """Therapist and assistant minutes of a service: (therapist, assistant, billable
    minutes or None when undocumented, whether the shares are known). Performers' own
    minutes come first; the service's minutes go to the one billing performer without
    its own minutes (a student's time is never billed on its own). None when the
    performers' minutes exceed the service's."""
    billing = sorted(present - {"student"})
    shares = {fn: own.get(fn, 0) for fn in billing}
    rest = [fn for fn in billing if fn not in own]
    known = True
    if total is not None:
        left = total - sum(own.values())
        if left < 0:
            return None
        if len(rest) == 1:
            shares[rest[0]] += left
        elif len(rest) > 1:
            known = False
    elif not own:
        return 0, 0, None, True
    t_min, a_min = shares.get("therapist", 0), shares.get("assistant", 0)
    minutes = t_min + a_min if known else total
    return (t_min, a_min, minutes, known) if known else (0, 0, minutes, False)


def _read_service(
    proc: Json, session: Session, info: CodeInfo, system: str, issues: list[Issue]
) -> Service | None:
    ref = ref_of(proc)
    minutes_ext = extension(proc, THERAPY_MINUTES)
    total: int | None = None
    if minutes_ext is not None:
        value = _minutes(minutes_ext.get("valueQuantity"))
        if value is None:
            issues.append(
                holds.hold("value", f"{ref}: therapy-minutes must be a Quantity in UCUM 'min'")
            )
            return None
        total = _whole(value, ref, issues)
    per_function: dict[str, int] = {}
    functions: list[str] = []
    for performer in items(proc.get("performer")):
        fn = code_in(performer.get("function"), PERFORMER_FUNCTION)
        if fn is None:
            issues.append(
                holds.hold(
                    "required",
                    f"{ref}: a performer has no function (therapist, assistant, student)",
                    "Procedure.performer.function",
                )
            )
            return None
        functions.append(fn[1])
        own = extension(performer, THERAPY_MINUTES)
        if own is not None:
            value = _minutes(own.get("valueQuantity"))
            if value is None:
                issues.append(
                    holds.hold("value", f"{ref}: performer therapy-minutes must be UCUM 'min'")
                )
                return None
            per_function[fn[1]] = per_function.get(fn[1], 0) + _whole(value, ref, issues)
    present = set(functions)
    if not present:
        issues.append(holds.hold("required", f"{ref}: no performer", "Procedure.performer"))
        return None
    if present == {"student"}:
        issues.append(holds.student_alone(ref, info.code))
        return None
    therapist = "therapist" in present
    assistant = "assistant" in present
    shares = _attribute(total, per_function, present)
    if shares is None:
        issues.append(
            holds.warn(
                "value",
                f"{ref}: performer minutes ({sum(per_function.values())}) are more than the "
                f"service's {total}; the performer minutes are used",
            )
        )
        shares = _attribute(None, per_function, present)
        assert shares is not None
    t_min, a_min, minutes, shares_known = shares
    if "student" in present:
        issues.append(
            holds.warn(
                "business-rule",
                f"{ref}: a student took part; only the therapist's and assistant's minutes are "
                "billed (a student's time counts only with the therapist in the room directing)",
            )
        )
    if info.timed:
        if minutes is None:
            issues.append(holds.timed_without_minutes(ref, info.code))
            return None
        if not shares_known:
            issues.append(
                holds.hold(
                    "required",
                    f"{ref}: therapist and assistant share {info.code} but their minutes are not "
                    "documented separately (therapy-minutes per performer, or one Procedure "
                    "each)",
                    "Procedure.performer.extension",
                )
            )
            return None
    period = proc.get("performedPeriod")
    block: Interval | None = None
    if isinstance(period, Mapping):
        start, end = instant(period.get("start")), instant(period.get("end"))
        if start is not None and end is not None and start < end:
            block = (start, end)
    reasons = [r for x in items(proc.get("reasonReference")) if (r := reference(x))]
    return Service(
        ref,
        session,
        info.code,
        system,
        info,
        t_min,
        a_min,
        therapist,
        assistant,
        shares_known,
        block,
        reasons,
    )


def _billed_code(
    proc: Json, rules: PayerRules, codes: CodeCatalog, issues: list[Issue]
) -> tuple[str, CodeInfo] | None:
    """The (system, code facts) a Procedure is billed under for this payer, or None when
    it is not billed: bundled codes, substitutions (97014 -> G0283), unknown codes."""
    ref = ref_of(proc)
    found = code_in(proc.get("code"), CPT, HCPCS)
    if found is None:
        issues.append(holds.hold("code-invalid", f"{ref}: no CPT or HCPCS code", "Procedure.code"))
        return None
    system, code = found
    if code in rules.bundled_codes:
        issues.append(
            holds.warn(
                "business-rule",
                f"{ref}: {code} is bundled by this payer (never paid separately); not billed",
            )
        )
        return None
    info = codes.get(code)
    substitute = rules.code_substitutions.get(code)
    if substitute is not None:
        issues.append(
            holds.warn(
                "business-rule", f"{ref}: {code} is billed as {substitute.code} for this payer"
            )
        )
        base = info
        system, code = substitute.system, substitute.code
        info = codes.get(code) or (replace(base, code=code, system=system) if base else None)
    if info is None:
        issues.append(
            holds.hold(
                "code-invalid",
                f"{ref}: {code} is not a known therapy code (timed or untimed?)",
                "Procedure.code",
            )
        )
        return None
    return system, info


def _services(
    inp: BillingInput, rules: PayerRules, sessions: Sequence[Session], issues: list[Issue]
) -> list[Service]:
    by_ref = {s.ref: s for s in sessions}
    known = {ref_of(e) for e in inp.encounters}
    out: list[Service] = []
    for proc in inp.procedures:
        ref = ref_of(proc)
        enc = reference(proc.get("encounter"))
        if enc not in known:
            issues.append(
                holds.hold("invalid", f"{ref}: its encounter is not one of the claim's sessions")
            )
            continue
        session = by_ref.get(enc or "")
        if session is None:
            continue
        status = proc.get("status")
        if status in ("not-done", "entered-in-error"):
            issues.append(_info(f"{ref}: status {status}, not billed"))
            continue
        if status != "completed":
            issues.append(
                holds.hold(
                    "business-rule",
                    f"{ref}: the service is not completed (status '{status}')",
                    "Procedure.status",
                )
            )
            continue
        billed = _billed_code(proc, rules, inp.codes, issues)
        if billed is None:
            continue
        system, info = billed
        code = info.code
        if info.disciplines and session.discipline not in info.disciplines:
            issues.append(
                holds.warn(
                    "business-rule",
                    f"{ref}: {code} is not usually billed by {session.discipline}",
                )
            )
        service = _read_service(proc, session, info, system, issues)
        if service is not None:
            out.append(service)
    return out


def _code_days(
    services: Iterable[Service], issues: list[Issue]
) -> dict[tuple[date, str], dict[str, CodeDay]]:
    groups: dict[tuple[date, str], dict[str, CodeDay]] = {}
    for s in services:
        by_code = groups.setdefault((s.session.on, s.session.discipline), {})
        cd = by_code.get(s.code)
        if cd is None:
            cd = by_code[s.code] = CodeDay(s.code, s.system, s.info, s.session)
        elif cd.session.rendering != s.session.rendering:
            issues.append(
                holds.warn(
                    "business-rule",
                    f"{s.ref}: {s.code} on {s.session.on} comes from sessions billed under "
                    "different therapists; billed under the first",
                )
            )
        cd.therapist += s.therapist
        cd.assistant += s.assistant
        cd.has_therapist |= s.has_therapist
        cd.has_assistant |= s.has_assistant
        cd.shares_known &= s.shares_known
        if s.block is None:
            cd.complete = False
        else:
            cd.blocks.append(s.block)
        if s.session.ref not in cd.encounters:
            cd.encounters.append(s.session.ref)
        cd.reasons += [r for r in s.reasons if r not in cd.reasons]
    return groups


# --- units and lines ---------------------------------------------------------------------


def _units(
    key: tuple[date, str],
    days: Mapping[str, CodeDay],
    rules: PayerRules,
    fees: Mapping[str, Decimal],
    issues: list[Issue],
) -> dict[str, tuple[int, str]]:
    """Units per code of one date and discipline, with the rule that gave them."""
    on, discipline = key
    out: dict[str, tuple[int, str]] = {}
    fifteen = {
        c: d.minutes
        for c, d in days.items()
        if d.info.timed and d.info.unit_rule == "fifteen-minute"
    }
    timed_total = sum(d.minutes for d in days.values() if d.info.timed)
    treatment_total = sum(d.minutes for d in days.values())
    if rules.unit_method == "pooled-8-minute":
        pooled = pooled_units(fifteen, rules.tie_break, fees)
        for code, m in fifteen.items():
            out[code] = (pooled.units[code], "8-minute rule: " + pooled.explain(code, m))
        method = (
            f"8-minute rule over {pooled.total_minutes} pooled 15-minute-code minutes "
            f"= {pooled.total_units} unit(s) (table: {eight_minute_units(pooled.total_minutes)})"
        )
        if pooled.tie:
            method += f"; equal remainders among {', '.join(pooled.tie)} settled by {', '.join(rules.tie_break)}"
    else:
        for code, m in fifteen.items():
            out[code] = (midpoint_units(m, 15), f"per code: {m} min, a unit from 8 min of each 15")
        method = "CPT rule, each code on its own"
    for code, d in days.items():
        if code in out:
            continue
        if d.info.timed:
            length = d.info.minutes_per_unit or 15
            out[code] = (
                midpoint_units(d.minutes, length),
                f"midpoint rule: {d.minutes} min in {length}-minute units",
            )
        else:
            out[code] = (1, "untimed: one unit per date of service")
    issues.append(
        _info(
            f"{discipline} {on}: total timed minutes {timed_total}, total treatment minutes "
            f"{treatment_total}; {method}"
        )
    )
    return out


def _lines_for(
    cd: CodeDay, units: int, why: str, rules: PayerRules, issues: list[Issue]
) -> list[Draft]:
    discipline = cd.session.discipline
    where = f"{cd.code} {discipline} {cd.session.on}"
    minutes = f"{cd.minutes} min (therapist {cd.therapist}, assistant {cd.assistant})"
    if units <= 0:
        issues.append(_info(f"{where}: {minutes}; {why}; 0 units, not billed"))
        return []
    if cd.has_assistant and discipline not in rules.assistant.modifiers:
        issues.append(
            holds.hold(
                "business-rule",
                f"{where}: an assistant took part, and this payer has no assistant modifier "
                f"for {discipline}; the service cannot be billed as furnished",
            )
        )
        return []
    if cd.info.timed:
        length = cd.info.minutes_per_unit or 15
        split = split_timed_units(units, cd.therapist, cd.assistant, rules.assistant, length)
        note = f"{minutes}; {why}; {units} unit(s)"
        if cd.has_assistant:
            note += f"; assistant: {split.explanation}"
        if not cd.has_assistant:
            return [Draft(cd, split.plain, False, note)]
        out = []
        if split.plain:
            out.append(Draft(cd, split.plain, False, f"{note}; this line: {split.plain} without"))
        if split.assistant:
            out.append(
                Draft(cd, split.assistant, True, f"{note}; this line: {split.assistant} with")
            )
        return out
    known = cd.shares_known and (cd.therapist + cd.assistant) > 0
    with_mod, reason = untimed_assistant(
        cd.has_therapist,
        cd.has_assistant,
        cd.therapist if known else None,
        cd.assistant if known else None,
        rules.assistant,
    )
    if cd.has_assistant and cd.has_therapist and not known:
        issues.append(
            holds.warn(
                "business-rule",
                f"{where}: therapist and assistant shared the service without separate minutes; "
                "billed with the assistant modifier",
            )
        )
    note = f"{why}; 1 unit"
    if cd.has_assistant:
        note += f"; assistant: {reason}"
    return [Draft(cd, 1, with_mod, note)]


def _ncci(
    drafts: list[Draft], rules: PayerRules, pairs: Sequence[PtpPair], issues: list[Issue]
) -> None:
    if not rules.ncci.apply or not pairs:
        return
    groups: dict[tuple[date, str | None], dict[str, CodeDay]] = {}
    for d in drafts:
        groups.setdefault((d.day.session.on, d.day.session.rendering), {})[d.day.code] = d.day
    for (on, _), days in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        codes = [TimedCode(c, tuple(d.blocks), d.complete) for c, d in days.items()]
        for finding in evaluate(codes, pairs, on):
            text = f"{on}: {finding.describe()}"
            targets = [
                d for d in drafts if d.day.session.on == on and d.day.code == finding.column2
            ]
            if finding.action in ("not-allowed", "overlap"):
                issues.append(holds.hold("business-rule", text))
                continue
            if finding.action == "unknown-timing":
                if rules.ncci.unknown_timing == "hold":
                    issues.append(
                        holds.hold(
                            "business-rule",
                            text.replace(
                                "distinct services assumed", "document separate time blocks"
                            ),
                        )
                    )
                    continue
                issues.append(holds.warn("business-rule", text + "; check the documentation"))
            else:
                issues.append(_info(text))
            for d in targets:
                d.modifiers.append(rules.ncci.bypass_modifier)


# --- diagnoses and care team ---------------------------------------------------------------


def _diagnoses(
    sessions: Sequence[Session], index: Index, rules: PayerRules, issues: list[Issue]
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Claim diagnoses (principal first) and the sequence of each Condition reference."""
    entries: list[dict[str, Any]] = []
    by_code: dict[str, int] = {}
    by_ref: dict[str, int] = {}
    for s in sorted(sessions, key=lambda s: (s.on, s.order)):
        for cref in s.diagnoses:
            condition = index.get(cref)
            found = code_in(condition.get("code"), ICD10CM) if condition else None
            if found is None:
                issues.append(
                    holds.warn("code-invalid", f"{s.ref}: diagnosis {cref} has no ICD-10-CM code")
                )
                continue
            code = found[1]
            if code not in by_code:
                if len(entries) >= rules.max_diagnoses:
                    issues.append(
                        holds.warn(
                            "too-long",
                            f"{cref}: {code} left off: at most {rules.max_diagnoses} diagnoses "
                            "per claim",
                        )
                    )
                    continue
                coding = next(
                    {k: v for k, v in c.items() if k in ("system", "code", "display")}
                    for c in codings(condition.get("code") if condition else None)
                    if c.get("system") == ICD10CM and c.get("code") == code
                )
                entries.append(
                    {"sequence": len(entries) + 1, "diagnosisCodeableConcept": {"coding": [coding]}}
                )
                by_code[code] = len(entries)
            by_ref[cref] = by_code[code]
    return entries, by_ref


def _pointers(cd: CodeDay, by_ref: Mapping[str, int], limit: int) -> tuple[int, ...]:
    seqs: list[int] = []
    for ref in [*cd.reasons, *cd.session.diagnoses]:
        seq = by_ref.get(ref)
        if seq is not None and seq not in seqs:
            seqs.append(seq)
    return tuple(seqs[:limit])


def _qualification(role: Json | None) -> dict[str, Any] | None:
    if role is None:
        return None
    for concept in items(role.get("specialty")):
        found = code_in(concept, NUCC)
        if found:
            return {"coding": [{"system": NUCC, "code": found[1]}]}
    return None


# --- the builder ------------------------------------------------------------------------------


def _base_modifiers_and_prices(
    drafts: Sequence[Draft], rules: PayerRules, fees: Mapping[str, Decimal], issues: list[Issue]
) -> None:
    """Assistant and discipline modifiers, and the unit price of every line."""
    for d in drafts:
        discipline = d.day.session.discipline
        if d.assistant:
            d.modifiers.append(rules.assistant.modifiers[discipline])
        disc_mod = rules.discipline_modifiers.get(discipline)
        if disc_mod is None:
            issues.append(holds.hold("business-rule", f"no discipline modifier for {discipline}"))
        else:
            d.modifiers.append(disc_mod)
        d.price = fees.get(d.day.code)
        if d.price is None:
            issues.append(
                holds.hold("required", f"{d.day.code}: no unit price in the fee schedule")
            )


def _kx(
    drafts: Sequence[Draft], rules: PayerRules, spend: Sequence[TherapySpend], issues: list[Issue]
) -> None:
    """KX on the lines past the year's threshold, counted in line (date) order."""
    kx = rules.kx
    if kx is None:
        return
    result = kx_lines(
        [
            KxLine(i, d.day.session.on.year, d.day.session.discipline, d.net or Decimal(0))
            for i, d in enumerate(drafts)
        ],
        spend,
        kx,
    )
    for i, d in enumerate(drafts):
        if i in result.lines:
            d.modifiers.append(kx.modifier)
        if i in result.notes:
            d.note += f"; threshold: {result.notes[i]}"
    for year in sorted(result.missing_years):
        issues.append(holds.warn("not-supported", f"no KX threshold configured for {year}"))
    for what, amount in sorted(result.review.items()):
        issues.append(
            holds.warn(
                "business-rule",
                f"{what}: year-to-date therapy amount {amount} is over the targeted medical "
                f"review amount {kx.review_threshold}",
            )
        )


def _claim_reports(services: Iterable[Service]) -> dict[str, list[ProgressReport]]:
    """Evaluations and re-evaluations billed on this claim, per discipline."""
    out: dict[str, list[ProgressReport]] = {}
    for s in services:
        if s.info.kind in ("evaluation", "re-evaluation"):
            kind: ReportKind = "evaluation" if s.info.kind == "evaluation" else "re-evaluation"
            out.setdefault(s.session.discipline, []).append(
                ProgressReport(s.session.on, kind, not s.has_therapist)
            )
    return out


def _documentation_holds(
    inp: BillingInput,
    rules: PayerRules,
    sessions: Sequence[Session],
    services: Sequence[Service],
    issues: list[Issue],
) -> dict[tuple[date, str], PlanOfCare]:
    """Plan of care certification and progress reports per date and discipline; the
    plan covering each (date, discipline)."""
    patient = ref_of(inp.patient)
    plans = [plan_of_care(p) for p in inp.plans_of_care if reference(p.get("subject")) == patient]
    histories = {h.discipline: h for h in inp.history}
    claim_days: dict[str, set[date]] = {}
    for s in services:
        claim_days.setdefault(s.session.discipline, set()).add(s.session.on)
    reports = _claim_reports(services)
    covering: dict[tuple[date, str], PlanOfCare] = {}
    for discipline, on in sorted({(s.discipline, s.on) for s in sessions}):
        check = holds.plan_of_care_holds(plans, discipline, on, rules)
        issues += check.issues
        if check.plan is not None:
            covering[(on, discipline)] = check.plan
        history = histories.get(discipline)
        issues += holds.progress_report_holds(
            discipline,
            on,
            [*(history.treatment_days if history else ()), *claim_days.get(discipline, ())],
            [*(history.reports if history else ()), *reports.get(discipline, ())],
            rules,
        )
    return covering


def _authorizations(
    inp: BillingInput, rules: PayerRules, drafts: Sequence[Draft], issues: list[Issue]
) -> list[str]:
    """Prior authorization holds per discipline; the numbers for preAuthRef."""
    auths = (
        list(inp.prior_authorizations)
        if inp.prior_authorizations is not None
        else prior_authorizations(inp.coverage)
    )
    numbers: list[str] = []
    for discipline in sorted({d.day.session.discipline for d in drafts}):
        billed = [
            (d.day.session.on, d.day.code, d.units)
            for d in drafts
            if d.day.session.discipline == discipline
        ]
        check = holds.authorization_holds(auths, discipline, billed, rules)
        issues += check.issues
        numbers += [n for n in check.numbers if n not in numbers]
    return numbers


def _coverage_holds(inp: BillingInput, dates: Iterable[date], issues: list[Issue]) -> str | None:
    """Coverage and billing provider checks; the payer (insurer) reference."""
    coverage = ref_of(inp.coverage)
    patient = ref_of(inp.patient)
    if inp.coverage.get("status") != "active":
        issues.append(holds.hold("business-rule", f"{coverage}: coverage is not active"))
    if reference(inp.coverage.get("beneficiary")) != patient:
        issues.append(holds.hold("invalid", f"{coverage}: beneficiary is not {patient}"))
    period = inp.coverage.get("period")
    period = period if isinstance(period, Mapping) else {}
    start, end = day(period.get("start")), day(period.get("end"))
    for on in sorted(set(dates)):
        if (start and on < start) or (end and on > end):
            issues.append(holds.hold("business-rule", f"{coverage}: does not cover {on}"))
    payor = next((r for p in items(inp.coverage.get("payor")) if (r := reference(p))), None)
    if payor is None:
        issues.append(holds.hold("required", f"{coverage}: no payor", "Coverage.payor"))
    if npi(inp.organization) is None:
        issues.append(
            holds.hold("required", f"{ref_of(inp.organization)}: billing organization has no NPI")
        )
    return payor


class _CareTeam:
    """Claim.careTeam: one entry per practitioner and role, numbered as added."""

    def __init__(self, index: Index, issues: list[Issue]) -> None:
        self.entries: list[dict[str, Any]] = []
        self._seq: dict[tuple[str, str], int] = {}
        self._index = index
        self._issues = issues

    def add(self, ref: str | None, role: str, what: str) -> int | None:
        practitioner = self._index.practitioner(ref)
        if practitioner is None or npi(practitioner) is None:
            self._issues.append(
                holds.hold("required", f"{what} {ref}: no Practitioner with an NPI")
            )
            return None
        key = (ref_of(practitioner), role)
        if key not in self._seq:
            entry: dict[str, Any] = {
                "sequence": len(self.entries) + 1,
                "provider": {"reference": ref_of(practitioner)},
                "role": {"coding": [{"system": CARE_TEAM_ROLE, "code": role}]},
            }
            qualification = _qualification(self._index.role(ref))
            if qualification:
                entry["qualification"] = qualification
            self.entries.append(entry)
            self._seq[key] = len(self.entries)
        return self._seq[key]


def _care_team(
    sessions: Sequence[Session],
    plans: Mapping[tuple[date, str], PlanOfCare],
    rules: PayerRules,
    index: Index,
    issues: list[Issue],
) -> tuple[list[dict[str, Any]], dict[str, int | None]]:
    """Rendering therapists (role primary; an assistant's services are billed under the
    session's therapist) then certifying physicians (role other: R4 has no referring
    role); the rendering sequence of each session."""
    team = _CareTeam(index, issues)
    rendering = {
        s.ref: team.add(s.rendering, "primary", f"{s.ref}: rendering therapist")
        for s in sessions
        if s.rendering
    }
    for (on, discipline), plan in sorted(plans.items()):
        if plan.certifier:
            team.add(plan.certifier, "other", f"{plan.reference}: certifying physician")
        elif rules.requires_certification:
            issues.append(
                holds.hold(
                    "required", f"{plan.reference}: no certifying physician for {discipline} {on}"
                )
            )
    return team.entries, rendering


def _item(
    seq: int,
    d: Draft,
    mods: tuple[str, ...],
    pointers: tuple[int, ...],
    team: int | None,
    currency: str,
) -> dict[str, Any]:
    cd = d.day
    item: dict[str, Any] = {"sequence": seq}
    if team is not None:
        item["careTeamSequence"] = [team]
    if pointers:
        item["diagnosisSequence"] = list(pointers)
    item["productOrService"] = {"coding": [{"system": cd.system, "code": cd.code}]}
    if mods:
        item["modifier"] = [
            {"coding": [{"system": CPT if modifier_system(m) == "cpt" else HCPCS, "code": m}]}
            for m in mods
        ]
    item["servicedDate"] = cd.session.on.isoformat()
    if cd.session.place is not None:
        item["locationCodeableConcept"] = {"coding": [dict(cd.session.place)]}
    item["quantity"] = {"value": d.units}
    net = d.net
    if d.price is not None and net is not None:
        item["unitPrice"] = _money(d.price, currency)
        item["net"] = _money(net, currency)
    item["encounter"] = [{"reference": e} for e in cd.encounters]
    return item


def _lines(
    drafts: Sequence[Draft],
    rules: PayerRules,
    diagnoses: Mapping[str, int],
    rendering: Mapping[str, int | None],
    issues: list[Issue],
) -> list[ClaimLine]:
    """The final lines: modifiers in the payer's order (at most ``max_modifiers``),
    diagnosis pointers, care team, and one explanation each."""
    out: list[ClaimLine] = []
    for seq, d in enumerate(drafts, 1):
        cd = d.day
        mods = order_modifiers(d.modifiers, rules.modifier_order)
        where = f"{cd.code} {cd.session.discipline} {cd.session.on}"
        if len(mods) > rules.max_modifiers:
            issues.append(
                holds.hold(
                    "too-long",
                    f"{where}: {len(mods)} modifiers ({', '.join(mods)}), "
                    f"at most {rules.max_modifiers}",
                )
            )
        pointers = _pointers(cd, diagnoses, rules.max_diagnosis_pointers)
        if diagnoses and not pointers:
            issues.append(holds.hold("required", f"{where}: no diagnosis to point to"))
        issues.append(
            _info(
                f"line {seq}: {where}: {d.note}; modifiers {' '.join(mods) or '-'}",
                f"Claim.item[{seq - 1}]",
            )
        )
        out.append(
            ClaimLine(
                cd.session.on,
                cd.session.discipline,
                cd.code,
                cd.system,
                d.units,
                mods,
                d.price,
                d.net,
                d.assistant,
                tuple(cd.encounters),
                pointers,
                rendering.get(cd.session.ref),
            )
        )
    return out


def build_claim(inp: BillingInput) -> ClaimDraft:
    """Build the Claim for the given sessions; see the module documentation."""
    issues: list[Issue] = []
    rules, rule_issues = select_rules(inp.rules, inp.coverage)
    issues += rule_issues
    if rules is None:
        return ClaimDraft({}, tuple(issues))
    index = Index(
        [*inp.practitioners, *inp.conditions, inp.organization, inp.patient, *inp.plans_of_care]
    )
    fees = {code: p for code, v in inp.fee_schedule.items() if (p := _price(v)) is not None}

    sessions = _sessions(inp, issues)
    services = _services(inp, rules, sessions, issues)
    groups = _code_days(services, issues)
    drafts: list[Draft] = []
    order = {d: i for i, d in enumerate(DISCIPLINES)}
    for key in sorted(groups, key=lambda k: (k[0], order.get(k[1], 9))):
        days = groups[key]
        units = _units(key, days, rules, fees, issues)
        for code in sorted(days):
            n, why = units[code]
            drafts += _lines_for(days[code], n, why, rules, issues)
    _base_modifiers_and_prices(drafts, rules, fees, issues)
    _ncci(drafts, rules, inp.ptp_pairs, issues)
    _kx(drafts, rules, inp.spend, issues)

    plans = _documentation_holds(inp, rules, sessions, services, issues)
    pre_auth = _authorizations(inp, rules, drafts, issues)
    dates = sorted({s.on for s in sessions})
    payor = _coverage_holds(inp, dates, issues)
    care_team, rendering = _care_team(sessions, plans, rules, index, issues)
    diagnosis, by_ref = _diagnoses(sessions, index, rules, issues)
    if not diagnosis:
        issues.append(holds.hold("required", "no ICD-10-CM diagnosis for the claim"))
    lines = _lines(drafts, rules, by_ref, rendering, issues)
    if not lines:
        issues.append(holds.hold("business-rule", "nothing to bill: no line with units"))

    claim: dict[str, Any] = {"resourceType": "Claim"}
    if inp.claim_id:
        claim["id"] = inp.claim_id
    claim["meta"] = {"profile": [CLAIM_PROFILE]}
    claim["status"] = "draft" if has_errors(issues) else inp.status
    claim["type"] = {"coding": [{"system": CLAIM_TYPE, "code": "professional"}]}
    claim["use"] = "claim"
    claim["patient"] = {"reference": ref_of(inp.patient)}
    if dates:
        claim["billablePeriod"] = {"start": dates[0].isoformat(), "end": dates[-1].isoformat()}
    claim["created"] = inp.created
    if payor:
        claim["insurer"] = {"reference": payor}
    claim["provider"] = {"reference": ref_of(inp.organization)}
    claim["priority"] = {"coding": [{"system": PROCESS_PRIORITY, "code": "normal"}]}
    if inp.referral:
        claim["referral"] = {"reference": inp.referral}
    if care_team:
        claim["careTeam"] = care_team
    if diagnosis:
        claim["diagnosis"] = diagnosis
    insurance: dict[str, Any] = {
        "sequence": 1,
        "focal": True,
        "coverage": {"reference": ref_of(inp.coverage)},
    }
    if pre_auth:
        insurance["preAuthRef"] = pre_auth
    claim["insurance"] = [insurance]
    if drafts:
        claim["item"] = [
            _item(
                seq,
                d,
                line.modifiers,
                line.diagnosis_sequence,
                line.care_team_sequence,
                inp.currency,
            )
            for seq, (d, line) in enumerate(zip(drafts, lines, strict=True), 1)
        ]
    total = sum((line.net for line in lines if line.net is not None), Decimal(0))
    claim["total"] = _money(total, inp.currency)
    return ClaimDraft(claim, tuple(issues), tuple(lines))


# --- year-to-date amounts from earlier claims ----------------------------------------------


def billed_spend(claims: Iterable[Json], year: int, rules: PayerRules) -> dict[str, Decimal]:
    """This practice's therapy amounts of a calendar year per threshold group, from its
    earlier Claims (active ones; the discipline read from the GP/GO/GN modifier)."""
    by_modifier = {m: d for d, m in rules.discipline_modifiers.items()}
    out: dict[str, Decimal] = {}
    for claim in claims:
        if claim.get("status") != "active":
            continue
        for item in items(claim.get("item")):
            on = day(item.get("servicedDate"))
            net = item.get("net")
            amount = decimal(net.get("value")) if isinstance(net, Mapping) else None
            if on is None or on.year != year or amount is None:
                continue
            mods = [c.get("code") for m in items(item.get("modifier")) for c in codings(m)]
            discipline = next((by_modifier[m] for m in mods if m in by_modifier), None)
            if discipline is None:
                continue
            group = rules.kx.group(discipline) if rules.kx else discipline
            out[group] = out.get(group, Decimal(0)) + amount
    return out


def year_to_date(
    claims: Iterable[Json], year: int, rules: PayerRules, prior: Mapping[str, Decimal] | None = None
) -> list[TherapySpend]:
    """TherapySpend per threshold group: ``prior`` (configured, other providers) plus
    the amounts of this practice's earlier claims."""
    billed = billed_spend(claims, year, rules)
    prior = prior or {}
    return [
        TherapySpend(year, g, prior.get(g, Decimal(0)), billed.get(g, Decimal(0)))
        for g in sorted(set(billed) | set(prior))
    ]
