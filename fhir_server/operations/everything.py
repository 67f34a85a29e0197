"""``$everything``: https://hl7.org/fhir/R4/patient-operation-everything.html

* ``GET|POST [base]/Patient/[id]/$everything`` -- one patient's record;
* ``GET|POST [base]/Patient/$everything`` -- the record of every patient the caller may
  see, one patient after the other (in order of creation).

Parameters (query parameters, or a Parameters body for POST): ``start``, ``end``
(dates), ``_since`` (instant), ``_type`` (comma-separated resource types, may repeat),
``_count`` (page size). The answer is a ``searchset`` Bundle: the Patient and every
resource of the patient's compartment (R4 Patient CompartmentDefinition) as
``search.mode = match``, then the resources they refer to that are outside the
compartment but needed to read them -- Practitioner, PractitionerRole, Organization,
Location, Medication, Device (:data:`REFERENCED_TYPES`) -- as ``include``.

How it is found: one compartment search per compartment type (the same query as
``GET [base]/Patient/[id]/[type]``, so the store's indexes do the work), Patient first,
then the other types in alphabetical order; referenced resources are read by ``_id``
per type. Nothing is read beyond the page and the resources it refers to. At type
level, where a page may go through many patients, the types of which the store holds
no resource at all are found once per page and not searched for each patient. The
compartment includes the server's AuditEvents and Provenances about the patient (R4
puts them there), so they are part of the answer for a caller who may search them.

Choices:

- ``start``/``end`` are care dates. Each compartment type is filtered on one date
  search parameter, its *care date* (:func:`care_date`): the type's ``date``
  parameter (Encounter.period, Observation.effective, Procedure.performed,
  CarePlan.period, EpisodeOfCare.period ...), or for the types without one, or whose
  ``date`` is not about care, the parameter in :data:`CARE_DATES` (Goal:
  ``start-date``, ServiceRequest: ``authored``, Claim: ``created`` ...). A resource is
  in range when its care date overlaps ``[start, end]`` (``date=ge<start>&date=
  le<end>``: the end day is included); one without a care date is left out when
  ``start`` or ``end`` is given. A Condition is a state, not a moment
  (:data:`CARE_PERIODS`): it is in range while it lasts, from its onset (at or
  before ``end``, or unknown) to its abatement (at or after ``start``, or none yet),
  so the problems treated during the range come with it. Types with no care date at
  all (Patient, RelatedPerson, Coverage, Group ...) are not filtered by them: they
  describe the patient rather than a moment of care. Referenced resources are not
  filtered by ``start``/``end``.
- ``_since`` keeps only the resources (the Patient and referenced resources too) whose
  ``meta.lastUpdated`` is at or after the instant.
- ``_type`` limits every entry to the listed types: the Patient is left out unless
  ``Patient`` is listed, and referenced resources are only those of listed types
  that the resources returned refer to, directly or through referenced resources of
  other types (``_type=Encounter,Practitioner``: the practitioners of the encounters'
  PractitionerRoles).
- A referenced Device whose ``Device.patient`` is another patient (not one on the
  page) is that patient's device and is left out.
- Paging: ``_count`` compartment resources per page (default :data:`DEFAULT_COUNT`,
  at most :data:`MAX_COUNT`; referenced resources come on top). The ``next`` link
  carries an opaque ``_cursor``: the patient, the compartment type reached, the
  store's own paging cursor within that type, and short digests of the referenced
  resources already returned, so that each is included once over all the pages (up
  to :data:`SEEN_CAP` of them; beyond that one may come again on a later page). A
  full page looks ahead so that the last page is never an empty one. Resources
  created or changed while paging follow the rules of search paging.
- ``Bundle.total`` is given when the whole answer fits on one page.

Authorization (with a principal): the router has already checked ``read`` of Patient
(and, at instance level, that the token may read that Patient: ``404`` otherwise).
Compartment types the token cannot search are left out; entries are checked one by
one with the same rules as a search (a ``patient/`` scope sees its own patient's
compartment only; scope parameters are checked on each resource), referenced resources
as a search's ``_include`` d ones. At type level the patients are those a ``Patient``
search by the token would return.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any, Final
from urllib.parse import urlencode

from fhir_server import definitions, jsonio
from fhir_server.errors import FhirError, bad_request
from fhir_server.interactions import resources as res
from fhir_server.interactions.context import Context
from fhir_server.interactions.model import FhirRequest, FhirResponse
from fhir_server.operations.registry import Operation, register
from fhir_server.search import model, parser, values
from fhir_server.search.parser import parse
from fhir_server.search.query import Clause, DateCond, Hit, MissingCond, SearchResult
from fhir_server.search.registry import default_registry

DEFINITION: Final = "http://hl7.org/fhir/OperationDefinition/Patient-everything"
REFERENCED_TYPES: Final = (
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "Location",
    "Medication",
    "Device",
)
# Care dates of the compartment types whose ``date`` parameter is missing or is not
# the date care was given (see the module's text).
CARE_DATES: Final = {
    "Account": "period",
    "Basic": "created",
    "ChargeItem": "occurrence",
    "Claim": "created",
    "ClaimResponse": "created",
    "Communication": "sent",
    "CommunicationRequest": "authored",
    "CoverageEligibilityRequest": "created",
    "CoverageEligibilityResponse": "created",
    "DetectedIssue": "identified",
    "DeviceRequest": "authored-on",
    "DocumentManifest": "created",
    "ExplanationOfBenefit": "created",
    "Goal": "start-date",
    "ImagingStudy": "started",
    "Media": "created",
    "MedicationAdministration": "effective-time",
    "MedicationDispense": "whenhandedover",
    "MedicationRequest": "authoredon",
    "MedicationStatement": "effective",
    "NutritionOrder": "datetime",
    "Provenance": "recorded",
    "QuestionnaireResponse": "authored",
    "RequestGroup": "authored",
    "ServiceRequest": "authored",
    "Specimen": "collected",
    "VisionPrescription": "datewritten",
}
DEFAULT_COUNT: Final = 1000  # compartment resources per page without _count
MAX_COUNT: Final = 5000
# Types whose resources describe a state over time rather than a moment of care: in
# range while the state lasts, from the first parameter (at or before ``end``, or
# unknown) to the second (at or after ``start``, or none: still going on).
CARE_PERIODS: Final = {"Condition": ("onset-date", "abatement-date")}
SEEN_CAP: Final = 256  # referenced resources remembered across pages
_DIGEST: Final = 8  # characters per remembered reference (48 bits)
_INCLUDE_ROUNDS: Final = 3  # PractitionerRole -> Practitioner, Organization.partOf ...
_ARGUMENTS: Final = ("start", "end", "_since", "_type", "_count", "_cursor")


# --------------------------------------------------------------------------- definitions


@cache
def compartment_types() -> tuple[str, ...]:
    """The resource types of the R4 Patient compartment this server can search in it:
    Patient first, then the others alphabetically (the order of the answer)."""
    registry = default_registry()
    found: set[str] = set()
    for cd in definitions.compartment_definitions():
        if cd.get("code") != "Patient":
            continue
        for entry in cd.get("resource", ()):
            rtype = entry.get("code")
            params = entry.get("param") or ()
            if not isinstance(rtype, str) or not params:
                continue
            searchable = [registry.get(rtype, code) for code in params]
            if any(p is not None and p.type == "reference" for p in searchable):
                found.add(rtype)
    found.discard("Patient")
    return ("Patient", *sorted(found))


@cache
def care_date(resource_type: str) -> str | None:
    """The date search parameter ``start``/``end`` apply to (None: not filtered)."""
    registry = default_registry()
    code = CARE_DATES.get(resource_type, "date")
    param = registry.get(resource_type, code)
    if param is None or param.type != "date" or code.startswith("_"):
        return None
    return code


# --------------------------------------------------------------------------- arguments


@dataclass(frozen=True, slots=True)
class Arguments:
    start: str | None = None
    end: str | None = None
    since: str | None = None
    types: tuple[str, ...] | None = None  # None: every type
    count: int = DEFAULT_COUNT
    cursor: str | None = None
    # the parameters as given (for the links), without the cursor
    link_params: tuple[tuple[str, str], ...] = ()


def _text_value(name: str, param: dict[str, Any]) -> str:
    for key, value in param.items():
        if key.startswith("value") and isinstance(value, int | str) and not isinstance(value, bool):
            return str(value)
    raise bad_request(f"Parameter '{name}' must have a date, instant, code or integer value")


def _given(req: FhirRequest) -> list[tuple[str, str]]:
    """The operation's parameters, from the URL and a Parameters body."""
    given = [(k, v) for k, v in req.params if k in _ARGUMENTS]
    body: Any = req.parsed
    if body is None and req.body and req.method == "POST":
        body = res.parse_body(req.body)
    if body is None:
        return given
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise bad_request("The body of $everything must be a Parameters resource")
    for p in body.get("parameter") or ():
        name = p.get("name") if isinstance(p, dict) else None
        if name in _ARGUMENTS:
            given.append((name, _text_value(name, p)))
    return given


def _date(name: str, value: str) -> tuple[int, int]:
    span = values.date_range(value)
    if span is None:
        raise bad_request(f"Parameter '{name}' must be a date, not '{value}'", name)
    return span


def arguments(req: FhirRequest) -> Arguments:
    given = _given(req)
    single: dict[str, str] = {}
    types: list[str] = []
    for name, value in given:
        if name == "_type":
            for t in value.split(","):
                t = t.strip()
                if not model.is_resource_type(t):
                    raise bad_request(f"Unknown resource type '{t}' in _type", "_type")
                if t not in types:
                    types.append(t)
            continue
        if name in single:
            raise bad_request(f"Parameter '{name}' may be given once", name)
        single[name] = value
    count = DEFAULT_COUNT
    if "_count" in single:
        raw = single["_count"]
        if not raw.isdigit() or int(raw) < 1:
            raise bad_request(f"_count must be a positive integer, not '{raw}'", "_count")
        count = min(int(raw), MAX_COUNT)
    spans = {k: _date(k, single[k]) for k in ("start", "end", "_since") if k in single}
    if "start" in spans and "end" in spans and spans["start"][0] > spans["end"][1]:
        raise bad_request("Parameter 'end' is before 'start'", "end")
    link: list[tuple[str, str]] = [
        (k, single[k]) for k in ("start", "end", "_since") if k in single
    ]
    if types:
        link.append(("_type", ",".join(types)))
    if "_count" in single:
        link.append(("_count", single["_count"]))
    return Arguments(
        start=single.get("start"),
        end=single.get("end"),
        since=single.get("_since"),
        types=tuple(types) if types else None,
        count=count,
        cursor=single.get("_cursor"),
        link_params=tuple(link),
    )


# --------------------------------------------------------------------------- cursor


@dataclass(slots=True)
class State:
    """Where a page starts: the patient (``None``: the next one), the Patient-search
    cursor that finds the patient after it, whether there is none, the compartment
    type reached (``None``: the patient is done), the store's cursor in that type, and
    the digests of the referenced resources already returned."""

    patient: str | None = None
    after: str | None = None
    last: bool = False
    rtype: str | None = None
    cursor: str | None = None
    seen: list[str] = field(default_factory=list)

    def encode(self) -> str:
        items = [self.patient, self.after, self.last, self.rtype, self.cursor, "".join(self.seen)]
        raw = json.dumps(items, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> State:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            items = json.loads(raw)
            if not isinstance(items, list) or len(items) != 6:
                raise ValueError
            patient, after, last, rtype, cursor, seen = items
            if not (
                (patient is None or isinstance(patient, str))
                and (after is None or isinstance(after, str))
                and isinstance(last, bool)
                and (rtype is None or isinstance(rtype, str))
                and (cursor is None or isinstance(cursor, str))
                and isinstance(seen, str)
                and len(seen) % _DIGEST == 0
            ):
                raise ValueError
        except ValueError:
            raise bad_request("Invalid paging cursor", "_cursor") from None
        if patient is not None:
            res.check_id(patient)
        digests = [seen[i : i + _DIGEST] for i in range(0, len(seen), _DIGEST)]
        return cls(patient, after, last, rtype, cursor, digests)


def digest(key: str) -> str:
    raw = hashlib.blake2b(key.encode(), digest_size=6).digest()
    return base64.urlsafe_b64encode(raw).decode()


# --------------------------------------------------------------------------- access


class Access:
    """What the caller may see (everything without a principal); see the module's
    text and :mod:`fhir_server.auth.enforce`."""

    def __init__(self, ctx: Context) -> None:
        self.principal = ctx.principal
        self.base_url = ctx.base_url

    def may_search(self, rtype: str) -> bool:
        if self.principal is None:
            return True
        from fhir_server.auth.access import can

        return can(self.principal, "search-type", rtype)

    def may_include(self, rtype: str) -> bool:
        if self.principal is None:
            return True
        from fhir_server.auth.access import can

        return any(can(self.principal, i, rtype) for i in ("read", "search-type"))

    def sees_match(self, rtype: str, patient: str, resource: dict[str, Any]) -> bool:
        p = self.principal
        if p is None:
            return True
        from fhir_server.auth.access import can, needs_result_filter, patient_compartment_filter
        from fhir_server.auth.enforce import blanket

        if blanket(p, "search-type", rtype):
            return True
        if (
            p.patient == patient
            and patient_compartment_filter(p, rtype) is not None
            and not needs_result_filter(p, "search-type", rtype)
        ):
            return True  # the compartment search is the restriction a search would apply
        return can(p, "search-type", rtype, resource, base_url=self.base_url)

    def sees_include(self, rtype: str, resource: dict[str, Any]) -> bool:
        p = self.principal
        if p is None:
            return True
        from fhir_server.auth.access import can
        from fhir_server.auth.enforce import blanket

        return any(
            blanket(p, i, rtype) or can(p, i, rtype, resource, base_url=self.base_url)
            for i in ("read", "search-type")
        )

    def patient_compartment(self) -> tuple[str, str] | None:
        """The restriction of a Patient search by the caller (type level)."""
        if self.principal is None:
            return None
        from fhir_server.auth.access import search_compartment

        return search_compartment(self.principal, "Patient")


# --------------------------------------------------------------------------- references


def _walk(value: Any, out: list[str]) -> None:
    if isinstance(value, dict):
        ref = value.get("reference")
        if isinstance(ref, str):
            out.append(ref)
        for item in value.values():
            if isinstance(item, dict | list):
                _walk(item, out)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list):
                _walk(item, out)


def references(
    resource: dict[str, Any], types: Iterable[str], base_url: str
) -> list[tuple[str, str]]:
    """The local references of a resource (anywhere in it) to resources of ``types``,
    as (type, id)."""
    wanted = set(types)
    found: list[str] = []
    _walk(resource, found)
    base = base_url.rstrip("/") + "/"
    out: list[tuple[str, str]] = []
    for ref in found:
        if ref.startswith(base):
            ref = ref[len(base) :]
        parts = ref.split("/")
        if len(parts) not in (2, 4) or (len(parts) == 4 and parts[2] != "_history"):
            continue  # absolute elsewhere, contained (#id), urn:, malformed
        if parts[0] in wanted and res.ID_RE.fullmatch(parts[1]):
            out.append((parts[0], parts[1]))
    return out


def _device_of_other_patient(resource: dict[str, Any], patients: set[str], base_url: str) -> bool:
    if resource.get("resourceType") != "Device":
        return False
    owners = references({"patient": resource.get("patient")}, ("Patient",), base_url)
    return bool(owners) and not any(pid in patients for _, pid in owners)


# --------------------------------------------------------------------------- the pages


@dataclass(slots=True)
class Page:
    matches: list[tuple[Hit, dict[str, Any], str]] = field(default_factory=list)
    includes: list[tuple[Hit, dict[str, Any]]] = field(default_factory=list)


class Everything:
    """One page of ``$everything`` (instance level when ``patient`` is given)."""

    def __init__(self, ctx: Context, args: Arguments, patient: str | None) -> None:
        self.ctx = ctx
        self.args = args
        self.instance_patient = patient
        self.access = Access(ctx)
        wanted = set(args.types) if args.types is not None else None
        self.types = tuple(
            t
            for t in compartment_types()
            if (wanted is None or t in wanted) and self.access.may_search(t)
        )
        # the types walked for each patient (type level: those with any resource)
        self.walked = frozenset(self.types)
        # referenced types followed (those the caller may read) and returned
        self.followed = tuple(t for t in REFERENCED_TYPES if self.access.may_include(t))
        self.referenced = tuple(t for t in self.followed if wanted is None or t in wanted)

    # -- store access

    async def _search(
        self,
        rtype: str,
        params: list[tuple[str, str]],
        compartment: tuple[str, str] | None = None,
    ) -> SearchResult:
        query = parse(
            rtype,
            params,
            base_url=self.ctx.base_url,
            strict=True,
            compartment=compartment,
        )
        if compartment is not None and rtype in CARE_PERIODS:
            query = replace(query, clauses=query.clauses + self._period_clauses(rtype))
        return await self.ctx.store.search(query)

    def _period_clauses(self, rtype: str) -> tuple[Clause, ...]:
        """``start``/``end`` on a type of :data:`CARE_PERIODS`: each bound is a date
        condition OR the parameter's absence (something a query string cannot say)."""
        begins, ends = CARE_PERIODS[rtype]
        bounds = [(begins, f"le{self.args.end}")] if self.args.end else []
        if self.args.start:
            bounds.append((ends, f"ge{self.args.start}"))
        out: list[Clause] = []
        for code, value in bounds:
            (cond,) = parse(rtype, [(code, value)], strict=True).clauses[0]
            assert isinstance(cond, DateCond)
            out.append((cond, MissingCond(cond.param, True)))
        return tuple(out)

    def _filters(self, rtype: str) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = [("_total", "none")]
        if self.args.since:
            out.append(("_lastUpdated", f"ge{self.args.since}"))
        dated = (self.args.start or self.args.end) and rtype not in CARE_PERIODS
        code = care_date(rtype) if dated else None
        if code is not None:
            if self.args.start:
                out.append((code, f"ge{self.args.start}"))
            if self.args.end:
                out.append((code, f"le{self.args.end}"))
        return out

    async def _compartment(
        self, rtype: str, patient: str, count: int, cursor: str | None
    ) -> SearchResult:
        params = [*self._filters(rtype), ("_count", str(count))]
        if cursor is not None:
            params.append(("_cursor", cursor))
        return await self._search(rtype, params, ("Patient", patient))

    async def _next_patient(self, state: State) -> bool:
        """Move ``state`` to the next patient the caller may see (type level); False
        when there is none."""
        restriction = self.access.patient_compartment()
        while not state.last:
            params = [("_count", "1"), ("_total", "none")]
            if state.after is not None:
                params.append(("_cursor", state.after))
            result = await self._search("Patient", params, restriction)
            state.after = result.next_cursor
            state.last = result.next_cursor is None
            if not result.matches:
                break
            hit = result.matches[0]
            if self.access.sees_match("Patient", hit.id, jsonio.loads_stored(hit.content)):
                state.patient = hit.id
                state.rtype = self._type_after(None)
                state.cursor = None
                return True
        state.patient = None
        state.last = True
        return False

    def _type_after(self, rtype: str | None) -> str | None:
        """The type walked after ``rtype`` (None: the first)."""
        i = 0 if rtype is None else self.types.index(rtype) + 1
        return next((t for t in self.types[i:] if t in self.walked), None)

    async def _skip_empty_types(self) -> None:
        """Type level: a page may go through many patients; the types of which the
        store has no resource at all are not searched for each of them."""
        found = []
        for rtype in self.types:
            if (await self._search(rtype, [("_count", "1"), ("_total", "none")])).matches:
                found.append(rtype)
        self.walked = frozenset(found)

    def _start(self) -> State:
        if self.args.cursor is None:
            if self.instance_patient is None:
                return State()
            return State(self.instance_patient, None, True, self._type_after(None))
        state = State.decode(self.args.cursor)
        if self.instance_patient is not None and (
            state.patient != self.instance_patient or not state.last
        ):
            raise bad_request("Invalid paging cursor", "_cursor")
        if state.rtype is not None and state.rtype not in self.types:
            raise bad_request("Invalid paging cursor", "_cursor")
        return state

    async def _current_patient_visible(self, state: State) -> None:
        """A cursor names a patient: check it again (type level; the router checks
        the instance)."""
        if state.patient is None or self.instance_patient is not None:
            return
        stored = await self.ctx.store.read("Patient", state.patient)
        if stored is None or stored.content is None:
            state.rtype = None  # deleted meanwhile: go on with the next patient
            return
        if not self.access.sees_match("Patient", state.patient, jsonio.loads(stored.content)):
            raise bad_request("Invalid paging cursor", "_cursor")

    async def page(self) -> tuple[Page, State | None]:
        """This page, and where the next one starts (None: this is the last)."""
        state = self._start()
        page = Page()
        if not self.types:
            return page, None  # no compartment type to return: nothing to walk
        if self.instance_patient is None:
            await self._skip_empty_types()
        await self._current_patient_visible(state)
        budget = self.args.count
        while budget > 0:
            if state.patient is None or state.rtype is None:
                if self.instance_patient is not None or not await self._next_patient(state):
                    return await self._finish(page, state), None
                continue
            result = await self._compartment(state.rtype, state.patient, budget, state.cursor)
            budget -= len(result.matches)
            for hit in result.matches:
                resource = jsonio.loads_stored(hit.content)
                if self.access.sees_match(hit.resource_type, state.patient, resource):
                    page.matches.append((hit, resource, state.patient))
            if result.next_cursor is not None:
                state.cursor = result.next_cursor
            else:
                state.rtype, state.cursor = self._type_after(state.rtype), None
        more = await self._more(state)
        return await self._finish(page, state), state if more else None

    async def _more(self, state: State) -> bool:
        """Is there anything after a full page? Skips the compartment types that have
        nothing left, so that the last page is not an empty one."""
        if state.cursor is not None:
            return True
        while state.patient is not None and state.rtype is not None:
            result = await self._compartment(state.rtype, state.patient, 1, None)
            if result.matches:
                return True
            state.rtype = self._type_after(state.rtype)
        if self.instance_patient is not None:
            return False
        state.patient = None
        return not state.last

    async def _finish(self, page: Page, state: State) -> Page:
        """Add the referenced resources of the page's matches, and theirs (through
        types ``_type`` leaves out too: a role leads to its practitioner), each once
        over the pages (see :class:`State`)."""
        if not self.referenced or not page.matches:
            return page
        base = self.ctx.base_url
        earlier = set(state.seen)  # digests of those returned on earlier pages
        done = {(h.resource_type, h.id) for h, _, _ in page.matches}
        patients = {p for _, _, p in page.matches}
        frontier = [resource for _, resource, _ in page.matches]
        returned = set(self.referenced)
        for _ in range(_INCLUDE_ROUNDS):
            wanted: dict[tuple[str, str], None] = {}
            for resource in frontier:
                for key in references(resource, self.followed, base):
                    if key in done:
                        continue
                    if key[0] in returned and digest(f"{key[0]}/{key[1]}") in earlier:
                        continue
                    wanted[key] = None
            if not wanted:
                break
            done.update(wanted)
            frontier = []
            for hit, resource in await self._read_all(list(wanted)):
                if _device_of_other_patient(resource, patients, base):
                    continue
                if not self.access.sees_include(hit.resource_type, resource):
                    continue
                frontier.append(resource)
                if hit.resource_type in returned and self._updated_since(resource):
                    page.includes.append((hit, resource))
                    if len(state.seen) < SEEN_CAP:
                        state.seen.append(digest(f"{hit.resource_type}/{hit.id}"))
        return page

    def _updated_since(self, resource: dict[str, Any]) -> bool:
        if self.args.since is None:
            return True
        since = values.date_range(self.args.since)
        updated = (resource.get("meta") or {}).get("lastUpdated")
        span = values.date_range(updated) if isinstance(updated, str) else None
        return since is not None and span is not None and span[0] >= since[0]

    async def _read_all(self, keys: Sequence[tuple[str, str]]) -> list[tuple[Hit, dict[str, Any]]]:
        by_type: dict[str, list[str]] = {}
        for rtype, rid in keys:
            by_type.setdefault(rtype, []).append(rid)
        out: list[tuple[Hit, dict[str, Any]]] = []
        for rtype, ids in by_type.items():
            for i in range(0, len(ids), parser.MAX_COUNT):
                chunk = ids[i : i + parser.MAX_COUNT]
                params = [("_id", ",".join(chunk)), ("_count", str(len(chunk)))]
                result = await self._search(rtype, [*params, ("_total", "none")])
                out.extend((h, jsonio.loads_stored(h.content)) for h in result.matches)
        return out


# --------------------------------------------------------------------------- the bundle


def _link(base_url: str, path: str, params: Sequence[tuple[str, str]]) -> str:
    url = f"{base_url}/{path}"
    return f"{url}?{urlencode(list(params))}" if params else url


def _entry(base_url: str, hit: Hit, resource: dict[str, Any], mode: str) -> dict[str, Any]:
    return {
        "fullUrl": f"{base_url}/{hit.resource_type}/{hit.id}",
        "resource": resource,
        "search": {"mode": mode},
    }


async def everything(
    ctx: Context, req: FhirRequest, rtype: str | None, rid: str | None
) -> FhirResponse:
    args = arguments(req)
    if rid is not None:
        stored = await ctx.current("Patient", rid)
        if stored is None or stored.deleted:
            raise FhirError.of(404, "not-found", f"Patient/{rid} is not known")
    page, following = await Everything(ctx, args, rid).page()
    base = ctx.base_url.rstrip("/")
    path = f"Patient/{rid}/$everything" if rid is not None else "Patient/$everything"
    this = [*args.link_params, ("_cursor", args.cursor)] if args.cursor else args.link_params
    links = [{"relation": "self", "url": _link(base, path, this)}]
    if following is not None:
        cursor = following.encode()
        links.append(
            {"relation": "next", "url": _link(base, path, [*args.link_params, ("_cursor", cursor)])}
        )
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if args.cursor is None and following is None:
        bundle["total"] = len(page.matches)
    bundle["link"] = links
    entries = [_entry(base, h, r, "match") for h, r, _ in page.matches]
    entries += [_entry(base, h, r, "include") for h, r in page.includes]
    if entries:
        bundle["entry"] = entries
    return FhirResponse(200, resource=bundle)


OPERATION: Final = register(
    Operation(
        name="everything",
        definition=DEFINITION,
        levels=frozenset({"type", "instance"}),
        handler=everything,
        resource_types=frozenset({"Patient"}),
        methods=frozenset({"GET", "POST"}),
    )
)
