"""Reading what a claim is built from, through the store (helper of :mod:`.claims`).

Everything comes from stored resources: the sessions (Encounter), their services
(``Procedure?encounter=``), the patient, the Coverage (the one given, or the active
one of the patient covering the dates of service), the payer and billing
Organizations, the Practitioners and PractitionerRoles referenced, the diagnoses
(Condition), the plans of care (``CarePlan?patient=``), the patient's earlier Claims
(KX year-to-date and the prior authorization ledger), the earlier sessions and
reports (progress report interval) and the fee schedule (ChargeItemDefinition).

Resources are decoded with orjson (decimals as floats: the rules read minutes, units
and amounts through ``decimal(str(value))``, exact for the values written); the Claim
and the marked Encounters are written from the builder's values and the stored bytes.
A :class:`Source` reads either committed data (a preview: one SQL statement per
search, no lock) or inside a unit of work (a persisting call: everything is read and
written under the same write lock, so two calls cannot bill the same session).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from decimal import Decimal
from typing import Any, Protocol

import orjson

from fhir_server.billing import (
    BillingRules,
    CodeInfo,
    PayerRules,
    PriorAuthorization,
    ProgressReport,
    PtpPair,
    TherapySpend,
    TreatmentHistory,
    load_rules,
    select_rules,
    year_to_date,
)
from fhir_server.billing.adapter import code_catalog, ptp_pairs
from fhir_server.billing.fhir import (
    code_in,
    codings,
    day,
    decimal,
    discipline_of,
    extension,
    items,
    prior_authorizations,
    ref_of,
    reference,
)
from fhir_server.billing.model import (
    CPT,
    HCPCS,
    PERFORMER_FUNCTION,
    PLAN_CERTIFICATION,
    ReportKind,
)
from fhir_server.errors import Issue
from fhir_server.search.parser import parse
from fhir_server.storage.port import Store, UnitOfWork

Json = dict[str, Any]

BASE = "http://rehabfhir.org/fhir"
BILLING_STATUS = f"{BASE}/CodeSystem/billing-status"
BILLED_TAG = {"system": BILLING_STATUS, "code": "billed", "display": "Billed on a claim"}
LOINC = "http://loinc.org"
PROGRESS_NOTE = "11506-3"  # LOINC: progress note
SUPERVISING = f"{BASE}/StructureDefinition/supervising-therapist"
PRACTITIONER_ROLE = f"{BASE}/CodeSystem/therapy-practitioner-role"
# Role code -> (discipline, is an assistant) for reports written by a PractitionerRole.
ROLE_DISCIPLINE: Mapping[str, tuple[str, bool]] = {
    "PT": ("PT", False),
    "PTA": ("PT", True),
    "OT": ("OT", False),
    "OTA": ("OT", True),
    "SLP": ("SLP", False),
    "SLP-CF": ("SLP", False),
}
_PAGE = "1000"


class Source(Protocol):
    """Reads resources (decoded) by id and by search."""

    async def read(self, rtype: str, rid: str) -> Json | None: ...

    async def find(self, rtype: str, params: Sequence[tuple[str, str]]) -> list[Json]: ...


class StoreSource:
    """Committed data, through the store's search IR (one statement per page)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def read(self, rtype: str, rid: str) -> Json | None:
        v = await self._store.read(rtype, rid)
        if v is None or v.content is None:
            return None
        found: Json = orjson.loads(v.content)
        return found

    async def find(self, rtype: str, params: Sequence[tuple[str, str]]) -> list[Json]:
        out: list[Json] = []
        cursor: str | None = None
        while True:
            page = [*params, ("_count", _PAGE)]
            if cursor is not None:
                page.append(("_cursor", cursor))
            result = await self._store.search(parse(rtype, page, strict=True))
            out += [orjson.loads(h.content) for h in result.matches]
            cursor = result.next_cursor
            if cursor is None:
                return out


class UnitSource:
    """Data as a unit of work sees it (its own writes included), under its lock."""

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    async def read(self, rtype: str, rid: str) -> Json | None:
        v = await self._uow.read(rtype, rid)
        if v is None or v.content is None:
            return None
        found: Json = orjson.loads(v.content)
        return found

    async def find(self, rtype: str, params: Sequence[tuple[str, str]]) -> list[Json]:
        out: list[Json] = []
        for rid in await self._uow.search(rtype, params):
            found = await self.read(rtype, rid)
            if found is not None:
                out.append(found)
        return out


class Cache:
    """Reads by reference, each resource once per call."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self._by_ref: dict[str, Json | None] = {}

    def seed(self, resources: Iterable[Json]) -> None:
        for r in resources:
            self._by_ref.setdefault(ref_of(r), r)

    async def get(self, ref: str | None) -> Json | None:
        if not ref or ref.count("/") != 1:
            return None
        if ref not in self._by_ref:
            rtype, rid = ref.split("/")
            self._by_ref[ref] = await self.source.read(rtype, rid)
        return self._by_ref[ref]


# --- static inputs: rules, codes, NCCI pairs (read once) ---------------------------------


@dataclass
class _Static:
    rules: BillingRules | None = None
    codes: dict[str, CodeInfo] = field(default_factory=dict)
    pairs: list[PtpPair] = field(default_factory=list)
    owners: tuple[object, object] | None = None


_STATIC = _Static()


def static_inputs() -> tuple[BillingRules, dict[str, CodeInfo], list[PtpPair]]:
    """The payer rules file, the code facts and the NCCI pairs; read once, and again
    when the terminology or the NCCI table is reloaded."""
    from fhir_server import terminology
    from fhir_server.terminology.ncci import default_table

    owners = (terminology.default(), default_table())
    if _STATIC.owners is None or any(
        a is not b for a, b in zip(_STATIC.owners, owners, strict=True)
    ):
        _STATIC.codes = code_catalog()
        _STATIC.pairs = ptp_pairs(owners[1])
        _STATIC.owners = owners
    if _STATIC.rules is None:
        _STATIC.rules = load_rules()
    return _STATIC.rules, _STATIC.codes, _STATIC.pairs


# --- small readers -----------------------------------------------------------------------


def is_billed(encounter: Json) -> bool:
    meta = encounter.get("meta")
    tags = items(meta.get("tag")) if isinstance(meta, Mapping) else []
    return any(t.get("system") == BILLING_STATUS and t.get("code") == "billed" for t in tags)


def session_day(encounter: Json) -> date | None:
    period = encounter.get("period")
    return day(period.get("start")) if isinstance(period, Mapping) else None


def claim_encounters(claim: Json) -> set[str]:
    return {
        r
        for item in items(claim.get("item"))
        for e in items(item.get("encounter"))
        if (r := reference(e))
    }


def _insurer(claim: Json) -> str | None:
    return reference(claim.get("insurer"))


def _covers(coverage: Json, days: Sequence[date]) -> bool:
    period = coverage.get("period")
    period = period if isinstance(period, Mapping) else {}
    start, end = day(period.get("start")), day(period.get("end"))
    return all((start is None or start <= d) and (end is None or d <= end) for d in days)


def _order(coverage: Json) -> int:
    order = coverage.get("order")
    return order if isinstance(order, int) else 1 << 30


async def choose_coverage(
    cache: Cache, patient: str, days: Sequence[date], given: str | None
) -> tuple[Json | None, list[Issue]]:
    """The Coverage given, else the active one of the patient that covers every date of
    service (lowest ``order`` first, then the one covering the first date)."""
    if given is not None:
        found = await cache.get(given)
        if found is None or found.get("resourceType") != "Coverage":
            return None, [Issue("error", "not-found", f"{given} is not known")]
        return found, []
    coverages = await cache.source.find(
        "Coverage", [("beneficiary", patient), ("status", "active")]
    )
    cache.seed(coverages)
    ranked = sorted(coverages, key=lambda c: (_order(c), str(c.get("id"))))
    for candidates in (days, days[:1]):
        for c in ranked:
            if _covers(c, candidates):
                return c, []
    return None, [
        Issue(
            "error",
            "not-found",
            f"{patient} has no active Coverage covering "
            f"{', '.join(sorted({d.isoformat() for d in days}))}",
        )
    ]


def fee_schedule(definitions: Iterable[Json]) -> dict[str, Decimal]:
    """Unit prices per code from active ChargeItemDefinitions: the CPT/HCPCS code in
    ``code`` and the ``base`` price component of the first property group."""
    out: dict[str, Decimal] = {}
    for cid in definitions:
        found = code_in(cid.get("code"), CPT, HCPCS)
        if found is None:
            continue
        for group in items(cid.get("propertyGroup")):
            for component in items(group.get("priceComponent")):
                amount = component.get("amount")
                value = decimal(amount.get("value")) if isinstance(amount, Mapping) else None
                if component.get("type") == "base" and value is not None:
                    out.setdefault(found[1], value)
    return out


def _ledger(
    auths: Sequence[PriorAuthorization], claims: Sequence[Json], rules: PayerRules | None
) -> list[PriorAuthorization]:
    """Visits (distinct dates of service) and units already billed under each
    authorization, from earlier active claims whose insurance names its number."""
    by_modifier = {m: d for d, m in rules.discipline_modifiers.items()} if rules else {}
    out: list[PriorAuthorization] = []
    for auth in auths:
        visits: set[date] = set()
        units = 0
        for claim in claims:
            numbers = {
                n for ins in items(claim.get("insurance")) for n in ins.get("preAuthRef") or ()
            }
            if auth.number not in numbers:
                continue
            for item in items(claim.get("item")):
                mods = [c.get("code") for m in items(item.get("modifier")) for c in codings(m)]
                discipline = next((by_modifier[m] for m in mods if m in by_modifier), None)
                if auth.discipline is not None and discipline not in (None, auth.discipline):
                    continue
                on = day(item.get("servicedDate"))
                if on is None or not auth.covers(on):
                    continue
                visits.add(on)
                code = code_in(item.get("productOrService"), CPT, HCPCS)
                quantity = item.get("quantity")
                n = decimal(quantity.get("value")) if isinstance(quantity, Mapping) else None
                if code and (not auth.procedures or code[1] in auth.procedures):
                    units += int(n or 0)
        out.append(replace(auth, visits_used=len(visits), units_used=units))
    return out


def _procedure_day(proc: Json) -> date | None:
    period = proc.get("performedPeriod")
    if isinstance(period, Mapping):
        return day(period.get("start"))
    return day(proc.get("performedDateTime"))


@dataclass
class Gathered:
    """What :func:`gather` found (the builder's inputs) and the issues on the way."""

    encounters: list[Json]
    procedures: list[Json] = field(default_factory=list)
    patient: Json | None = None
    coverage: Json | None = None
    organization: Json | None = None
    practitioners: list[Json] = field(default_factory=list)
    conditions: list[Json] = field(default_factory=list)
    plans: list[Json] = field(default_factory=list)
    rules: BillingRules | PayerRules | None = None
    codes: dict[str, CodeInfo] = field(default_factory=dict)
    pairs: list[PtpPair] = field(default_factory=list)
    fees: dict[str, Decimal] = field(default_factory=dict)
    spend: list[TherapySpend] = field(default_factory=list)
    history: list[TreatmentHistory] = field(default_factory=list)
    authorizations: list[PriorAuthorization] | None = None
    billed_on: dict[str, str] = field(default_factory=dict)  # encounter -> Claim
    issues: list[Issue] = field(default_factory=list)


async def earlier_claims(source: Source, patient: str) -> list[Json]:
    return await source.find("Claim", [("patient", patient), ("status", "active")])


async def gather(
    source: Source,
    encounters: Sequence[Json],
    *,
    coverage: str | None = None,
    claims: Sequence[Json] | None = None,
    prior: Mapping[str, Decimal] | None = None,
) -> Gathered:
    """Everything the builder needs for ``encounters`` (sessions of one patient)."""
    g = Gathered(list(encounters))
    cache = Cache(source)
    cache.seed(encounters)
    all_rules, g.codes, g.pairs = static_inputs()
    g.rules = all_rules
    refs = [ref_of(e) for e in encounters]
    patients = {reference(e.get("subject")) for e in encounters}
    if len(patients) != 1 or None in patients:
        g.issues.append(Issue("error", "invalid", "the sessions must all be of one patient"))
        return g
    patient_ref = patients.pop()
    assert patient_ref is not None
    g.patient = await cache.get(patient_ref)
    if g.patient is None:
        g.issues.append(Issue("error", "not-found", f"{patient_ref} is not known"))
        return g

    providers = {reference(e.get("serviceProvider")) for e in encounters}
    if len(providers) != 1 or None in providers:
        g.issues.append(
            Issue(
                "error",
                "required",
                "the sessions need one billing Organization (Encounter.serviceProvider)",
                ("Encounter.serviceProvider",),
            )
        )
        return g
    g.organization = await cache.get(providers.pop())
    if g.organization is None:
        g.issues.append(Issue("error", "not-found", "the billing Organization is not known"))
        return g

    days = sorted(d for e in encounters if (d := session_day(e)) is not None)
    g.coverage, found = await choose_coverage(cache, patient_ref, days, coverage)
    g.issues += found
    if g.coverage is None:
        return g
    payer_rules, _ = select_rules(all_rules, g.coverage)
    if payer_rules is not None:
        g.rules = payer_rules
    payor = next((r for p in items(g.coverage.get("payor")) if (r := reference(p))), None)
    if payor is not None and await cache.get(payor) is None:
        g.issues.append(Issue("error", "not-found", f"payer {payor} is not known"))

    g.procedures = await source.find("Procedure", [("encounter", ",".join(refs))]) if refs else []
    g.plans = await source.find("CarePlan", [("patient", patient_ref)])

    # practitioners and roles: billing therapists, performers, certifiers, supervisors
    wanted: list[str] = []
    for enc in encounters:
        wanted += [
            r for p in items(enc.get("participant")) if (r := reference(p.get("individual")))
        ]
    for proc in g.procedures:
        wanted += [r for p in items(proc.get("performer")) if (r := reference(p.get("actor")))]
    for plan in g.plans:
        cert = extension(plan, PLAN_CERTIFICATION)
        part = extension(cert, "certifier") if cert else None
        if part is not None and (r := reference(part.get("valueReference"))):
            wanted.append(r)
    seen: dict[str, Json] = {}
    while wanted:
        ref = wanted.pop()
        if ref in seen or not ref.startswith(("Practitioner/", "PractitionerRole/")):
            continue
        found_p = await cache.get(ref)
        if found_p is None:
            continue
        seen[ref] = found_p
        if found_p.get("resourceType") == "PractitionerRole":
            if r := reference(found_p.get("practitioner")):
                wanted.append(r)
            sup = extension(found_p, SUPERVISING)
            if sup is not None and (r := reference(sup.get("valueReference"))):
                wanted.append(r)
    g.practitioners = list(seen.values())

    condition_refs: list[str] = []
    for enc in encounters:
        condition_refs += [
            r for d in items(enc.get("diagnosis")) if (r := reference(d.get("condition")))
        ]
    for proc in g.procedures:
        condition_refs += [r for x in items(proc.get("reasonReference")) if (r := reference(x))]
    for ref in dict.fromkeys(condition_refs):
        if ref.startswith("Condition/") and (c := await cache.get(ref)) is not None:
            g.conditions.append(c)

    # earlier claims: billed sessions, KX year-to-date (same payer), authorization ledger
    if claims is None:
        claims = await earlier_claims(source, patient_ref)
    for claim in claims:
        for enc_ref in claim_encounters(claim):
            g.billed_on.setdefault(enc_ref, ref_of(claim))
    same_payer = [c for c in claims if payor is not None and _insurer(c) == payor]
    if isinstance(g.rules, PayerRules):
        years = sorted({d.year for d in days})
        for year in years:
            g.spend += year_to_date(same_payer, year, g.rules, prior)
    g.authorizations = _ledger(
        prior_authorizations(g.coverage),
        same_payer,
        g.rules if isinstance(g.rules, PayerRules) else None,
    )

    g.history = await _history(source, cache, patient_ref, set(refs), g.codes)
    g.fees = fee_schedule(await source.find("ChargeItemDefinition", [("status", "active")]))
    return g


async def _history(
    source: Source, cache: Cache, patient: str, exclude: set[str], codes: Mapping[str, CodeInfo]
) -> list[TreatmentHistory]:
    """Earlier treatment days (finished sessions), evaluations and re-evaluations
    (completed Procedures with such a code) and progress reports (DocumentReferences
    of LOINC type progress note, by the author role's discipline) per discipline."""
    days: dict[str, set[date]] = {}
    session_discipline: dict[str, str] = {}
    for enc in await source.find("Encounter", [("patient", patient), ("status", "finished")]):
        discipline = discipline_of(enc.get("serviceType"))
        on = session_day(enc)
        if discipline is None or on is None:
            continue
        session_discipline[ref_of(enc)] = discipline
        if ref_of(enc) not in exclude:
            days.setdefault(discipline, set()).add(on)
    reports: dict[str, list[ProgressReport]] = {}
    evaluation_codes = [
        f"{info.system}|{code}"
        for code, info in codes.items()
        if info.kind in ("evaluation", "re-evaluation")
    ]
    if evaluation_codes:
        procs = await source.find(
            "Procedure",
            [("patient", patient), ("code", ",".join(evaluation_codes)), ("status", "completed")],
        )
        for proc in procs:
            enc_ref = reference(proc.get("encounter"))
            if enc_ref in exclude:
                continue  # the builder counts the claim's own evaluations
            found = code_in(proc.get("code"), CPT, HCPCS)
            info = codes.get(found[1]) if found else None
            discipline = session_discipline.get(enc_ref or "") or next(
                (d for c in items(proc.get("category")) if (d := discipline_of(c))), None
            )
            on = _procedure_day(proc)
            if info is None or discipline is None or on is None:
                continue
            functions = {
                f[1]
                for p in items(proc.get("performer"))
                if (f := code_in(p.get("function"), PERFORMER_FUNCTION))
            }
            kind: ReportKind = "evaluation" if info.kind == "evaluation" else "re-evaluation"
            reports.setdefault(discipline, []).append(
                ProgressReport(on, kind, "therapist" not in functions)
            )
    notes = await source.find(
        "DocumentReference",
        [("patient", patient), ("type", f"{LOINC}|{PROGRESS_NOTE}"), ("status", "current")],
    )
    for note in notes:
        on = day(note.get("date"))
        role = None
        for author in items(note.get("author")):
            found_role = await cache.get(reference(author))
            if found_role is not None and found_role.get("resourceType") == "PractitionerRole":
                role = found_role
                break
        code = None
        for concept in items(role.get("code")) if role else []:
            code = code or code_in(concept, PRACTITIONER_ROLE)
        if on is None or code is None or code[1] not in ROLE_DISCIPLINE:
            continue
        discipline, assistant = ROLE_DISCIPLINE[code[1]]
        reports.setdefault(discipline, []).append(ProgressReport(on, "progress", assistant))
    return [
        TreatmentHistory(d, frozenset(days.get(d, ())), tuple(reports.get(d, ())))
        for d in sorted(set(days) | set(reports))
    ]
