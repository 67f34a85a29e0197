"""Claim generation from documented therapy sessions.

* ``POST [base]/Encounter/{id}/$generate-claim`` -- the claim for one session;
* ``POST [base]/Claim/$generate`` with ``patient``, ``start``, ``end`` (optional
  ``coverage``, ``discipline``) -- one claim for every finished, not yet billed session
  of the patient with a date of service in ``[start, end]``: one line per code per
  date of service (units with CQ/CO on a line of their own).

Inputs come as a Parameters body (or, for the simple ones, as URL parameters):
``persist`` (boolean, default false), ``coverage`` (Reference or ``Coverage/id``), and
``priorAmount`` (parts ``group`` = ``PT-SLP`` | ``OT`` and ``amount``: therapy amounts
billed this year by other providers, for the KX threshold).

The answer is a Parameters resource with ``claim`` (the RehabClaim) and ``issues`` (an
OperationOutcome: information issues explaining each date and line -- minutes, unit
rule, units, modifiers -- warnings for review, and errors that *hold* the claim).

* ``persist=false`` (preview): nothing is written; ``200`` with the claim (status
  ``draft``) and the issues, held or not.
* ``persist=true``: when nothing holds the claim, the Claim (status ``active``) is
  created and every session it bills gets the tag ``billing-status#billed`` in
  ``meta.tag``, all in one unit of work; ``200`` with the stored claim. A held claim is
  never stored: ``422`` with the OperationOutcome of the issues. A session already
  billed (tagged, or named in ``item.encounter`` of an active Claim) holds the claim,
  so persisting the same sessions twice is ``422`` (http.html: a business rule
  violation; ``409`` is kept for version conflicts). The reads, the checks and the
  writes of a persisting call happen inside one unit of work, so two concurrent calls
  cannot both bill a session.

``Claim/$validate`` gets the payer-rule checks of :mod:`.claims_scrub` through the
generic ``$validate`` (see :func:`fhir_server.operations.claims_scrub.validate_hook`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from decimal import Decimal
from typing import Any, Final

from fhir_server import jsonio
from fhir_server.billing import BillingInput, build_claim
from fhir_server.billing.fhir import decimal, discipline_of, ref_of
from fhir_server.errors import FhirError, Issue, bad_request, has_errors, operation_outcome
from fhir_server.interactions import resources as res
from fhir_server.interactions import write
from fhir_server.interactions.context import Context
from fhir_server.interactions.model import FhirRequest, FhirResponse
from fhir_server.operations.claims_gather import (
    BILLED_TAG,
    Source,
    StoreSource,
    UnitSource,
    claim_encounters,
    earlier_claims,
    gather,
    is_billed,
    session_day,
)
from fhir_server.operations.claims_scrub import scrub_claim, validate_hook
from fhir_server.operations.registry import Operation, register
from fhir_server.storage.port import UnitOfWork

__all__ = ["scrub_claim", "validate_hook"]

_OD: Final = "http://rehabfhir.org/fhir/OperationDefinition/"
GENERATE_CLAIM_DEFINITION: Final = _OD + "Encounter-generate-claim"
GENERATE_DEFINITION: Final = _OD + "Claim-generate"
_DISCIPLINES: Final = ("PT", "OT", "SLP")
_GROUPS: Final = ("PT-SLP", "OT")


# --- inputs --------------------------------------------------------------------------------


def _value(param: Mapping[str, Any]) -> Any:
    for key, value in param.items():
        if key.startswith("value"):
            return value
    if "part" in param:
        return {p.get("name"): _value(p) for p in param.get("part") or () if isinstance(p, Mapping)}
    return param.get("resource")


def _inputs(req: FhirRequest) -> dict[str, list[Any]]:
    """Operation inputs by name: URL parameters (strings), then the Parameters body."""
    out: dict[str, list[Any]] = {}
    for name, value in req.params:
        if not name.startswith("_"):
            out.setdefault(name, []).append(value)
    body: Any = req.parsed
    if body is None and req.body:
        body = res.parse_body(req.body)
    if body is None:
        return out
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise bad_request("The body must be a Parameters resource")
    for param in body.get("parameter") or ():
        if isinstance(param, Mapping) and isinstance(param.get("name"), str):
            out.setdefault(param["name"], []).append(_value(param))
    return out


def _one(inputs: Mapping[str, list[Any]], name: str) -> Any:
    values = inputs.get(name) or []
    if len(values) > 1:
        raise bad_request(f"Parameter '{name}' may be given once")
    return values[0] if values else None


def _persist(inputs: Mapping[str, list[Any]]) -> bool:
    value = _one(inputs, "persist")
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return bool(value == "true")
    raise bad_request(f"Parameter 'persist' must be true or false, not '{value}'")


def _reference(inputs: Mapping[str, list[Any]], name: str, rtype: str) -> str | None:
    value = _one(inputs, name)
    if value is None:
        return None
    text = value.get("reference") if isinstance(value, Mapping) else value
    if not isinstance(text, str) or not text:
        raise bad_request(f"Parameter '{name}' must be a Reference to a {rtype}")
    if "/" not in text:
        text = f"{rtype}/{text}"
    parts = text.rstrip("/").split("/")
    if parts[-2] != rtype:
        raise bad_request(f"Parameter '{name}' must refer to a {rtype}, not '{text}'")
    res.check_id(parts[-1])
    return f"{rtype}/{parts[-1]}"


def _date(inputs: Mapping[str, list[Any]], name: str) -> date:
    value = _one(inputs, name)
    if value is None:
        raise bad_request(f"Parameter '{name}' (a date) is required")
    try:
        if not isinstance(value, str) or len(value) != 10:
            raise ValueError
        return date.fromisoformat(value)
    except ValueError:
        raise bad_request(f"Parameter '{name}' must be a date (YYYY-MM-DD)") from None


def _prior(inputs: Mapping[str, list[Any]]) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for value in inputs.get("priorAmount") or ():
        if not isinstance(value, Mapping):
            raise bad_request("Parameter 'priorAmount' needs the parts 'group' and 'amount'")
        group, amount = value.get("group"), value.get("amount")
        if isinstance(amount, Mapping):
            amount = amount.get("value")
        number = decimal(amount)
        if group not in _GROUPS or number is None or number < 0:
            raise bad_request(
                f"Parameter 'priorAmount': group must be one of {', '.join(_GROUPS)} and amount "
                "a non-negative amount"
            )
        out[str(group)] = out.get(str(group), Decimal(0)) + number
    return out


def _parameters(claim: Mapping[str, Any] | None, issues: Sequence[Issue]) -> dict[str, Any]:
    params: list[dict[str, Any]] = []
    if claim:
        params.append({"name": "claim", "resource": claim})
    params.append({"name": "issues", "resource": operation_outcome(issues)})
    return {"resourceType": "Parameters", "parameter": params}


# --- building --------------------------------------------------------------------------------


async def _build(
    source: Source,
    encounters: Sequence[dict[str, Any]],
    *,
    coverage: str | None,
    prior: Mapping[str, Decimal],
    persist: bool,
    claims: Sequence[dict[str, Any]] | None = None,
    notes: Sequence[Issue] = (),
) -> tuple[dict[str, Any] | None, list[Issue]]:
    """The claim for the sessions and every issue (errors hold it)."""
    g = await gather(source, encounters, coverage=coverage, claims=claims, prior=prior)
    issues = [*notes, *g.issues]
    for enc in encounters:
        claim_ref = g.billed_on.get(ref_of(enc))
        if is_billed(enc) or claim_ref:
            issues.append(
                Issue(
                    "error",
                    "duplicate",
                    f"{ref_of(enc)} is already billed"
                    + (f" on {claim_ref}" if claim_ref else " (meta.tag billing-status#billed)"),
                    ("Encounter.meta.tag",),
                )
            )
    if g.patient is None or g.coverage is None or g.organization is None:
        return None, issues
    draft = build_claim(
        BillingInput(
            encounters=g.encounters,
            procedures=g.procedures,
            coverage=g.coverage,
            patient=g.patient,
            organization=g.organization,
            created=res.now_instant(),
            codes=g.codes,
            fee_schedule=g.fees,
            practitioners=g.practitioners,
            conditions=g.conditions,
            plans_of_care=g.plans,
            rules=g.rules,
            prior_authorizations=g.authorizations,
            spend=g.spend,
            ptp_pairs=g.pairs,
            history=g.history,
            status="active" if persist else "draft",
        )
    )
    issues += draft.issues
    claim = dict(draft.claim) or None
    if claim is not None and has_errors(issues):
        claim["status"] = "draft"
    return claim, issues


async def _store(
    ctx: Context, uow: UnitOfWork, claim: dict[str, Any], encounters: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Create the Claim and tag its sessions billed, in the caller's unit of work."""
    created = await write.create(ctx, uow, "Claim", claim)
    assert created.version.content is not None
    for enc in encounters:
        current = await uow.read("Encounter", str(enc["id"]))
        if current is None or current.content is None:  # pragma: no cover - read above
            raise FhirError.of(409, "conflict", f"{ref_of(enc)} was deleted meanwhile")
        marked: dict[str, Any] = jsonio.loads(current.content)
        meta = dict(marked.get("meta") or {})
        meta["tag"] = [*(meta.get("tag") or ()), dict(BILLED_TAG)]
        marked["meta"] = meta
        await write.update(ctx, uow, "Encounter", str(enc["id"]), marked, if_match=current.version)
    stored: dict[str, Any] = jsonio.loads(created.version.content)
    return stored


def _answer(claim: dict[str, Any] | None, issues: list[Issue]) -> FhirResponse:
    return FhirResponse(200, resource=_parameters(claim, issues))


# --- $generate-claim (one session) --------------------------------------------------------


async def _one_session(
    source: Source, rid: str, inputs: Mapping[str, list[Any]], persist: bool
) -> tuple[dict[str, Any] | None, list[Issue], list[dict[str, Any]]]:
    enc = await source.read("Encounter", rid)
    if enc is None:
        raise FhirError.of(404, "not-found", f"Encounter/{rid} is not known")
    claim, issues = await _build(
        source,
        [enc],
        coverage=_reference(inputs, "coverage", "Coverage"),
        prior=_prior(inputs),
        persist=persist,
    )
    return claim, issues, [enc]


async def generate_claim(
    ctx: Context, req: FhirRequest, rtype: str | None, rid: str | None
) -> FhirResponse:
    assert rid is not None
    inputs = _inputs(req)
    if not _persist(inputs):
        claim, issues, _ = await _one_session(StoreSource(ctx.store), rid, inputs, False)
        return _answer(claim, issues)
    async with ctx.writing() as uow:
        claim, issues, encounters = await _one_session(UnitSource(uow), rid, inputs, True)
        if claim is None or has_errors(issues):
            raise FhirError(422, tuple(issues))
        stored = await _store(ctx, uow, claim, encounters)
    return _answer(stored, issues)


# --- Claim/$generate (a date range) -------------------------------------------------------


async def _range(
    source: Source, inputs: Mapping[str, list[Any]], persist: bool
) -> tuple[dict[str, Any] | None, list[Issue], list[dict[str, Any]]]:
    patient = _reference(inputs, "patient", "Patient")
    if patient is None:
        raise bad_request("Parameter 'patient' is required")
    start, end = _date(inputs, "start"), _date(inputs, "end")
    if end < start:
        raise bad_request("Parameter 'end' is before 'start'")
    discipline = _one(inputs, "discipline")
    if isinstance(discipline, Mapping):
        discipline = discipline.get("code")
    if discipline is not None and discipline not in _DISCIPLINES:
        raise bad_request(f"Parameter 'discipline' must be one of {', '.join(_DISCIPLINES)}")
    coverage = _reference(inputs, "coverage", "Coverage")
    if await source.read("Patient", patient.split("/", 1)[1]) is None:
        raise FhirError.of(404, "not-found", f"{patient} is not known")
    found = await source.find(
        "Encounter",
        [
            ("patient", patient),
            ("status", "finished"),
            # a day of margin each side: the date of service is the date as written
            ("date", f"ge{(start - timedelta(days=1)).isoformat()}"),
            ("date", f"le{(end + timedelta(days=1)).isoformat()}"),
        ],
    )
    claims = await earlier_claims(source, patient)
    billed = {e for c in claims for e in claim_encounters(c)}
    sessions: list[dict[str, Any]] = []
    skipped = 0
    for enc in sorted(found, key=lambda e: (session_day(e) or date.min, str(e.get("id")))):
        on = session_day(enc)
        if on is None or not start <= on <= end:
            continue
        if discipline is not None and discipline_of(enc.get("serviceType")) != discipline:
            continue
        if is_billed(enc) or ref_of(enc) in billed:
            skipped += 1
            continue
        sessions.append(enc)
    notes: list[Issue] = []
    if skipped:
        notes.append(
            Issue(
                "information",
                "informational",
                f"{skipped} finished session(s) in {start}..{end} already billed: left out",
            )
        )
    if not sessions:
        what = f" {discipline}" if discipline else ""
        notes.append(
            Issue(
                "error",
                "not-found",
                f"{patient} has no finished, not yet billed{what} session from {start} to {end}",
            )
        )
        return None, notes, []
    claim, issues = await _build(
        source,
        sessions,
        coverage=coverage,
        prior=_prior(inputs),
        persist=persist,
        claims=claims,
        notes=notes,
    )
    return claim, issues, sessions


async def generate(
    ctx: Context, req: FhirRequest, rtype: str | None, rid: str | None
) -> FhirResponse:
    inputs = _inputs(req)
    if not _persist(inputs):
        claim, issues, _ = await _range(StoreSource(ctx.store), inputs, False)
        return _answer(claim, issues)
    async with ctx.writing() as uow:
        claim, issues, sessions = await _range(UnitSource(uow), inputs, True)
        if claim is None or has_errors(issues):
            raise FhirError(422, tuple(issues))
        stored = await _store(ctx, uow, claim, sessions)
    return _answer(stored, issues)


GENERATE_CLAIM: Final = register(
    Operation(
        name="generate-claim",
        definition=GENERATE_CLAIM_DEFINITION,
        levels=frozenset({"instance"}),
        handler=generate_claim,
        resource_types=frozenset({"Encounter"}),
        affects_state=True,
    )
)
GENERATE: Final = register(
    Operation(
        name="generate",
        definition=GENERATE_DEFINITION,
        levels=frozenset({"type"}),
        handler=generate,
        resource_types=frozenset({"Claim"}),
        affects_state=True,
    )
)
