"""The audit trail: AuditEvents of what callers do, and Provenance of what they write.

When authorization is on, the server records an ``AuditEvent`` for every interaction
of an authenticated caller (reads, searches, history, writes, operations, batches and
transactions, failed or not, including ``403``/``404`` refusals of the scopes) and for
every request refused with ``401`` before a caller is known. The shape follows the
IHE Basic Audit Log Patterns (BALP) where they fit:

- ``type`` = ``rest`` (audit-event-type); ``subtype`` = the FHIR restful interaction
  (``read``, ``vread``, ``search-type``, ``create``, ``update``, ``patch``, ``delete``,
  ``history-*``, ``operation``, ``transaction``, ``batch``); ``action`` C/R/U/D/E
  (searches, operations, batches and transactions are E, as in BALP);
- ``recorded``; ``outcome`` 0 (success), 4 (a 4xx answer: refused, not found,
  invalid) or 8 (a 5xx), with ``outcomeDesc`` from the OperationOutcome;
- ``agent``: the client application (DICOM "Source Role ID"; ``who.identifier`` =
  the client id, its ``system`` the token issuer; the network address), the user
  (``information recipient``; ``who`` = the token's ``fhirUser``, else the subject
  as an identifier) and this server ("Destination Role ID"). The user is the
  requestor when the token has one, else the client (SMART Backend Services);
- ``source.observer`` = this server;
- ``entity``: the patient (role Patient) when the patient is known (the token's
  patient, a Patient read, a compartment search, a ``patient``/``subject`` search
  parameter, or the resource written); the resource read or written, as a versioned
  reference when the version is known; for searches, the query (``query`` = the
  base64 of the query string, ``description`` = the request line), as BALP does.

A write (``create``, ``update``, ``patch``, ``delete``, a transaction, a persisting
``$generate-claim``/``$generate``) writes its AuditEvent, and one ``Provenance``
whose ``target`` lists every resource version written (one per transaction, not one
per entry), in the same unit of work as the data (see
:meth:`fhir_server.interactions.context.Context.writing`): a committed write always
has both, and a write that fails leaves neither (its failure is audited like a read).

Everything else (reads, searches, history, read-only operations, failures) is queued
in memory and written in batches, one unit of work per batch, by a background task
(:meth:`AuditTrail.start`, from the app's lifespan) every ``interval`` seconds (0.2)
or as soon as ``batch_size`` (100) events wait; :meth:`AuditTrail.stop` writes what
is left at shutdown. A synchronous write per read would cost more than the read
itself. ``fhir-server serve`` builds and stores these batches in a writer process
(:mod:`fhir_server.auth.audit_writer`), on another CPU core; without one (the
library's default, an in-memory database) they are written on the event loop. When
``high_water`` (2,000) records wait, answers wait for the writer to catch up
(backpressure: requests cannot outrun the trail). The price: a process killed hard
(SIGKILL, power loss) loses the records still waiting (those of the last
``interval``; under load, up to ``high_water``) and of a batch being written; a
batch the store refuses is kept and retried, up to ``max_pending`` events, after
which the oldest are dropped (and counted in :attr:`AuditTrail.dropped`, and
logged); requests are not held back while the store refuses.

AuditEvent and Provenance are stored and searched like any resource (a token needs
e.g. ``user/AuditEvent.rs``), but only the server writes them: the API refuses to
create, update, patch or delete them (``405``), whatever the scopes, in transactions
too. Reading AuditEvents is audited as well; the records are written straight to the
store, not through the API, so auditing does not feed on itself.

With authorization off (``fhir-server serve --no-auth``, allowed on a loopback
address only, for local development) there is no trail at all: nothing is recorded
and AuditEvent/Provenance are ordinary resources. The ``load`` command, which writes
to the store directly, is not audited either.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode

from fhir_server.auth.access import Principal
from fhir_server.auth.audit_writer import AuditWriterProcess, WriterGone
from fhir_server.auth.scopes import Permissions
from fhir_server.errors import FhirError, Issue
from fhir_server.interactions import resources as res
from fhir_server.interactions.context import Context
from fhir_server.interactions.model import FhirRequest, FhirResponse
from fhir_server.storage.port import (
    ForwardingUnitOfWork,
    NewVersion,
    Store,
    StoredVersion,
    UnitOfWork,
)

log = logging.getLogger("fhir_server.audit")

SERVER_WRITTEN: Final = frozenset({"AuditEvent", "Provenance"})

EVENT_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-event-type"
INTERACTION: Final = "http://hl7.org/fhir/restful-interaction"
DICOM: Final = "http://dicom.nema.org/resources/ontology/DCM"
PARTICIPATION: Final = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
SOURCE_TYPE: Final = "http://terminology.hl7.org/CodeSystem/security-source-type"
ENTITY_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE: Final = "http://terminology.hl7.org/CodeSystem/object-role"
DATA_OPERATION: Final = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
PROVENANCE_AGENT: Final = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
SERVER_NAME: Final = "Rehab FHIR Server"

# restful-interaction codes that differ from the CapabilityStatement's
_SUBTYPES: Final = {"search-compartment": "search-type"}
_ACTIONS: Final = {
    "create": "C",
    "read": "R",
    "vread": "R",
    "history-instance": "R",
    "history-type": "R",
    "history-system": "R",
    "capabilities": "R",
    "update": "U",
    "patch": "U",
    "delete": "D",
}
_METHOD_ACTIONS: Final = {"GET": "R", "HEAD": "R", "POST": "C", "PUT": "U", "PATCH": "U"}
_SEARCHES: Final = frozenset({"search-type", "search-system", "search-compartment"})
_INSTANCE_READS: Final = frozenset({"read", "vread", "history-instance"})
_PATIENT_PARAMS: Final = frozenset({"patient", "subject", "beneficiary"})
_DATA_OPERATIONS: Final = {"create": "CREATE", "update": "UPDATE", "patch": "UPDATE"}
_FORM: Final = "application/x-www-form-urlencoded"


def refuse_server_written(resource_type: str) -> None:
    """``405`` for an API write of a resource only the server writes."""
    if resource_type in SERVER_WRITTEN:
        raise FhirError(
            405,
            (
                Issue(
                    "error",
                    "not-supported",
                    f"{resource_type} resources are written by the server only; they cannot"
                    " be created, changed or deleted through the API",
                ),
            ),
            {"Allow": "GET, HEAD"},
        )


def instant(ts: float) -> str:
    """A FHIR instant (UTC, microseconds) of a POSIX time."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def _concept(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    return {"coding": [_coding(system, code, display)]}


def _patient_of(resource: Mapping[str, Any] | None) -> str | None:
    """The patient a written resource is about (Patient itself, or its direct
    ``subject``/``patient``/``beneficiary`` reference); None when not obvious."""
    if resource is None:
        return None
    if resource.get("resourceType") == "Patient":
        rid = resource.get("id")
        return f"Patient/{rid}" if isinstance(rid, str) else None
    for key in ("subject", "patient", "beneficiary"):
        value = resource.get(key)
        ref = value.get("reference") if isinstance(value, dict) else None
        if isinstance(ref, str) and ref.startswith("Patient/"):
            return ref.split("/_history/", 1)[0]
    return None


@dataclass(frozen=True, slots=True)
class Written:
    """One resource version written by an interaction."""

    version: StoredVersion
    patient: str | None = None

    @property
    def reference(self) -> str:
        v = self.version
        return f"{v.resource_type}/{v.id}/_history/{v.version}"


@dataclass(slots=True, eq=False)
class AuditDraft:
    """What is known of one interaction; the AuditEvent is built from it when it is
    written (so that the request path pays for little more than this object)."""

    principal: Principal | None
    request: FhirRequest
    peer: str | None
    started: float
    finished: float = 0.0
    status: int = 0
    description: str | None = None
    etag: str | None = None  # of the answer: the version read
    bundle_type: str | None = None  # batch | transaction, for POST [base]
    # (code, path arguments) when the router has matched the request
    interaction: tuple[str | None, list[str]] | None = None
    writes: list[Written] = field(default_factory=list)
    recorded_writes: int = 0  # writes already covered by a stored AuditEvent
    persisted: bool = False  # its AuditEvent was written with the data

    def note_bundle(self, kind: str) -> None:
        self.bundle_type = kind

    def fail(self, status: int, issues: Sequence[Issue]) -> None:
        self.status = status
        self.description = "; ".join(i.diagnostics for i in issues if i.diagnostics) or None
        self.writes = []  # rolled back with the unit of work


class _Recording(ForwardingUnitOfWork):
    """A unit of work that notes every version written (for the AuditEvent and the
    Provenance) and refuses to write the server's own records."""

    def __init__(self, uow: UnitOfWork, draft: AuditDraft) -> None:
        super().__init__(uow)
        self._draft = draft

    async def put(self, version: NewVersion) -> StoredVersion:
        refuse_server_written(version.resource_type)
        stored = await self.inner.put(version)
        self._draft.writes.append(Written(stored, _patient_of(version.resource)))
        return stored


# --------------------------------------------------------------------------- records


def _interaction(d: AuditDraft) -> tuple[str | None, list[str]]:
    if d.interaction is not None and d.interaction[0] is not None:
        return d.interaction
    from fhir_server.interactions.router import interaction_of

    return interaction_of(d.request.method, d.request.path)


def _subtype(code: str | None, d: AuditDraft) -> str | None:
    if code == "transaction":
        return d.bundle_type or "transaction"
    if code is None:
        return None
    return _SUBTYPES.get(code, code)


def _action(code: str | None, d: AuditDraft) -> str:
    if code in ("update", "patch") and d.writes and all(w.version.version == 1 for w in d.writes):
        return "C"  # an update that created the resource
    if code is None:
        return _METHOD_ACTIONS.get(d.request.method, "D" if d.request.method == "DELETE" else "E")
    return _ACTIONS.get(code, "E")


def _query_string(d: AuditDraft) -> str:
    req = d.request
    params = list(req.params)
    if req.method == "POST" and req.body and req.content_type in (None, _FORM):
        params += parse_qsl(req.body.decode("utf-8", "replace"), keep_blank_values=True)
    return urlencode(params)


def _patient(d: AuditDraft, code: str | None, args: Sequence[str]) -> str | None:
    p = d.principal
    if p is not None and p.patient:
        return f"Patient/{p.patient}"
    if len(args) >= 2 and args[0] == "Patient" and not args[1].startswith("$"):
        return f"Patient/{args[1]}"
    for w in d.writes:
        if w.patient:
            return w.patient
    if code in _SEARCHES:
        found: set[str] = set()
        for key, value in d.request.params:
            name = key.split(":", 1)[0]
            if name in _PATIENT_PARAMS and "," not in value:
                if value.startswith("Patient/"):
                    found.add(value.split("/_history/", 1)[0])
                elif name == "patient" and "/" not in value:
                    found.add(f"Patient/{value}")
            elif name == "_id" and args and args[0] == "Patient" and "," not in value:
                found.add(f"Patient/{value}")
        if len(found) == 1:
            return found.pop()
    return None


def _version(etag: str | None) -> str | None:
    if etag and etag.startswith('W/"') and etag.endswith('"'):
        return etag[3:-1]
    return None


_ROLES: Final = {
    "1": _coding(OBJECT_ROLE, "1", "Patient"),
    "4": _coding(OBJECT_ROLE, "4", "Domain Resource"),
    "24": _coding(OBJECT_ROLE, "24", "Query"),
}


def _entity(reference: str, role: str) -> dict[str, Any]:
    return {
        "what": {"reference": reference},
        "type": _PERSON if role == "1" else _SYSTEM_OBJECT,
        "role": _ROLES[role],
    }


def _user(p: Principal | None) -> dict[str, Any] | None:
    """The user behind the token, as a Reference (None for a backend client)."""
    if p is None:
        return None
    if p.fhir_user:
        return {"reference": p.fhir_user}
    if p.subject and p.subject != p.client_id:
        ident: dict[str, str] = {"value": p.subject}
        if p.issuer:
            ident["system"] = p.issuer
        return {"identifier": ident}
    return None


_CLIENT_TYPE: Final = _concept(DICOM, "110153", "Source Role ID")
_USER_TYPE: Final = _concept(PARTICIPATION, "IRCP", "information recipient")
_SERVER_TYPE: Final = _concept(DICOM, "110152", "Destination Role ID")
_EVENT_TYPE: Final = _coding(EVENT_TYPE, "rest", "Restful Operation")
_SOURCE_TYPES: Final = [_coding(SOURCE_TYPE, "4", "Application Server")]
_PERSON: Final = _coding(ENTITY_TYPE, "1", "Person")
_SYSTEM_OBJECT: Final = _coding(ENTITY_TYPE, "2", "System Object")
_SUBTYPE_CODINGS: dict[str, dict[str, str]] = {}


@lru_cache(maxsize=64)
def _server(base_url: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """This server as (who, agent, source) of its AuditEvents (shared, never changed)."""
    who = {"identifier": {"value": base_url}, "display": SERVER_NAME}
    agent = {
        "type": _SERVER_TYPE,
        "who": who,
        "requestor": False,
        "network": {"address": base_url, "type": "5"},
    }
    return who, agent, {"observer": who, "type": _SOURCE_TYPES}


def _client(p: Principal) -> dict[str, Any]:
    ident: dict[str, str] = {"value": p.client_id}
    if p.issuer:
        ident["system"] = p.issuer
    return {"identifier": ident, "display": p.client_id}


def audit_event(
    d: AuditDraft, base_url: str, writes: Sequence[Written] | None = None
) -> dict[str, Any]:
    """The AuditEvent of an interaction (``writes``: the versions it covers)."""
    code, args = _interaction(d)
    writes = d.writes if writes is None else writes
    p = d.principal
    event: dict[str, Any] = {"resourceType": "AuditEvent", "type": _EVENT_TYPE}
    subtype = _subtype(code, d)
    if subtype:
        coding = _SUBTYPE_CODINGS.get(subtype)
        if coding is None:
            coding = _SUBTYPE_CODINGS.setdefault(subtype, _coding(INTERACTION, subtype, subtype))
        event["subtype"] = [coding]
    event["action"] = _action(code, d)
    event["recorded"] = instant(d.finished or time.time())
    status = d.status or 200
    event["outcome"] = "0" if status < 400 else ("4" if status < 500 else "8")
    if status >= 400:
        event["outcomeDesc"] = f"{status} {d.description or ''}".strip()
    user = _user(p)
    client: dict[str, Any] = {"type": _CLIENT_TYPE, "requestor": user is None}
    if p is not None:
        client["who"] = _client(p)
    if d.peer:
        client["network"] = {"address": d.peer, "type": "2"}
    agents = [client]
    if user is not None:
        assert p is not None
        agent: dict[str, Any] = {"type": _USER_TYPE, "who": user, "requestor": True}
        if p.subject:
            agent["altId"] = p.subject
        agents.append(agent)
    _, server, source = _server(base_url)
    agents.append(server)
    event["agent"] = agents
    event["source"] = source
    entities: list[dict[str, Any]] = []
    patient = _patient(d, code, args)
    if patient:
        entities.append(_entity(patient, "1"))
    if writes:
        entities += [_entity(w.reference, "4") for w in writes]
    elif code in _SEARCHES:
        query = _query_string(d)
        path = d.request.path
        entities.append(
            {
                "type": _SYSTEM_OBJECT,
                "role": _ROLES["24"],
                "description": f"{d.request.method} {path}" + (f"?{query}" if query else ""),
                "query": base64.b64encode(query.encode()).decode("ascii"),
            }
        )
    elif code == "operation":
        if len(args) == 3:
            entities.append(_entity(f"{args[0]}/{args[1]}", "4"))
        entities.append(
            {
                "type": _SYSTEM_OBJECT,
                "name": args[-1],
                "description": f"{d.request.method} {d.request.path}",
            }
        )
    elif len(args) >= 2 and code is not None and code not in ("transaction", "capabilities"):
        ref = f"{args[0]}/{args[1]}"
        version = args[2] if code == "vread" else _version(d.etag)
        if version and code in _INSTANCE_READS and code != "history-instance":
            ref += f"/_history/{version}"
        if ref != patient:
            entities.append(_entity(ref, "4"))
    if entities:
        event["entity"] = entities
    return event


def provenance(d: AuditDraft, writes: Sequence[Written], recorded: str) -> dict[str, Any]:
    """The Provenance of the versions one interaction wrote."""
    operations = {
        "CREATE" if w.version.version == 1 else _DATA_OPERATIONS.get(w.version.method, "DELETE")
        for w in writes
    }
    code = operations.pop() if len(operations) == 1 else "OPERATE"
    activity = _concept(DATA_OPERATION, code, code.lower())
    kind, _ = _interaction(d)
    if kind == "operation":
        activity["text"] = f"{d.request.path}"
    elif kind == "transaction":
        activity["text"] = "transaction"
    p = d.principal
    user = _user(p)
    agents: list[dict[str, Any]] = []
    if user is not None:
        agents.append({"type": _concept(PROVENANCE_AGENT, "author", "Author"), "who": user})
    if p is not None:
        app: dict[str, Any] = {
            "type": _concept(PROVENANCE_AGENT, "performer", "Performer"),
            "who": {"type": "Device", **_client(p)},
        }
        if user is not None:
            app["onBehalfOf"] = user
        agents.append(app)
    return {
        "resourceType": "Provenance",
        "target": [{"reference": w.reference} for w in writes],
        "recorded": recorded,
        "activity": activity,
        "agent": agents,
    }


def draft_record(d: AuditDraft) -> list[Any] | None:
    """What :func:`audit_event` needs of a queued draft, as plain JSON values (for the
    writer process, which builds the AuditEvent); None for a draft with writes, whose
    versions the record does not carry."""
    if d.writes:
        return None
    p = d.principal
    req = d.request
    body = None
    if req.method == "POST" and req.body and req.content_type in (None, _FORM):
        body = req.body.decode("utf-8", "replace")  # a search's form parameters
    return [
        None if p is None else [p.client_id, p.subject, p.patient, p.fhir_user, p.issuer],
        [req.method, req.path, [list(kv) for kv in req.params], req.content_type, body],
        d.peer,
        d.started,
        d.finished,
        d.status,
        d.description,
        d.etag,
        d.bundle_type,
        None if d.interaction is None else [d.interaction[0], list(d.interaction[1])],
    ]


def draft_of_record(record: Sequence[Any]) -> AuditDraft:
    """The draft :func:`draft_record` describes (its principal without permissions:
    an AuditEvent names the caller, not what it may do)."""
    p, (method, path, params, content_type, body), peer, started = record[:4]
    finished, status, description, etag, bundle_type, interaction = record[4:]
    principal = None
    if p is not None:
        client_id, subject, patient, fhir_user, issuer = p
        principal = Principal(client_id, subject, Permissions(), patient, fhir_user, issuer)
    headers = {} if content_type is None else {"content-type": content_type}
    request = FhirRequest(
        method,
        path,
        [(str(k), str(v)) for k, v in params],
        headers,
        None if body is None else body.encode("utf-8"),
    )
    draft = AuditDraft(
        principal, request, peer, float(started), float(finished), int(status), description, etag
    )
    draft.bundle_type = bundle_type
    if interaction is not None:
        draft.interaction = (interaction[0], list(interaction[1]))
    return draft


async def _put(uow: UnitOfWork, resource: dict[str, Any], now: str) -> StoredVersion:
    rtype = resource["resourceType"]
    content = res.stamp(resource, res.new_id(), 1, now)
    return await uow.put(NewVersion(rtype, resource["id"], 1, now, "create", content, resource))


def build_events(drafts: Iterable[AuditDraft], base_url: str) -> list[dict[str, Any]]:
    """The AuditEvents of queued drafts; a draft that cannot be built is logged and
    skipped (a bug must not block the queue)."""
    events = []
    for draft in drafts:
        try:
            events.append(audit_event(draft, base_url))
        except Exception:
            log.exception("could not build the AuditEvent of %s", draft.request.path)
    return events


async def store_events(store: Store, events: Sequence[dict[str, Any]]) -> None:
    """Store built AuditEvents (each stamped with a new id and its ``recorded`` time as
    ``lastUpdated``) in one unit of work."""
    async with store.unit_of_work() as uow:
        for i, event in enumerate(events):
            await _put(uow, event, event["recorded"])
            if i % 10 == 9:
                await asyncio.sleep(0)  # let requests run between rows


# --------------------------------------------------------------------------- the trail

WRITER_BATCH: Final = 1000  # records per message to the writer process (at most)

Call = Callable[[Context, FhirRequest], Awaitable[FhirResponse]]


class _Unwritten(Exception):
    """A batch written in part: the drafts whose events are not stored."""

    def __init__(self, drafts: list[AuditDraft]) -> None:
        super().__init__(f"{len(drafts)} audit events not written")
        self.drafts = drafts


class AuditTrail:
    """Records the AuditEvents (and Provenance) of one server; see the module doc."""

    def __init__(
        self,
        store: Store,
        base_url: str,
        *,
        interval: float = 0.2,
        batch_size: int = 100,
        max_pending: int = 100_000,
        high_water: int = 2_000,
        writer: AuditWriterProcess | None = None,
    ) -> None:
        self.store = store
        self.writer = writer  # stores the batches on another core (None: inline)
        self.base_url = base_url
        self.interval = interval
        self.batch_size = batch_size
        self.max_pending = max_pending
        self.high_water = high_water
        self.dropped = 0  # events lost because the store refused them for too long
        self._pending: list[AuditDraft] = []
        self._task: asyncio.Task[None] | None = None
        self._kick: asyncio.Task[int] | None = None
        self._wake: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None
        self._closing = False
        self._room: asyncio.Event | None = None  # set when the writer made progress
        self._failing = False  # the last batch could not be written

    # -- the request path

    async def audited(self, ctx: Context, req: FhirRequest, call: Call) -> FhirResponse:
        """Run one interaction of an authenticated caller and audit it."""
        draft = AuditDraft(ctx.principal, req, ctx.peer, time.time())
        try:
            response = await call(ctx.auditing(draft), req)
        except FhirError as err:
            draft.fail(err.status, err.issues)
            self.enqueue(draft)
            raise
        except Exception:
            draft.fail(500, (Issue("fatal", "exception", "internal error"),))
            self.enqueue(draft)
            raise
        if not draft.persisted:
            draft.status = response.status
            draft.etag = response.headers.get("ETag")
            self.enqueue(draft)
            if len(self._pending) >= self.high_water:
                await self._make_room()
        return response

    async def _make_room(self) -> None:
        """Backpressure: with ``high_water`` records waiting, an answer waits for the
        writer to catch up, so that requests cannot outrun the trail (and a backlog
        cannot grow until records are dropped); not while the writer is failing,
        whose records are kept up to ``max_pending``."""
        while len(self._pending) >= self.high_water and not self._failing:
            if self._room is None:
                self._room = asyncio.Event()
            self._room.clear()
            self._nudge()
            await self._room.wait()

    def _progress(self, failing: bool) -> None:
        self._failing = failing
        if self._room is not None:
            self._room.set()

    def unauthenticated(self, req: FhirRequest, peer: str | None, err: FhirError) -> None:
        """A request refused before any caller was known (``401``)."""
        draft = AuditDraft(None, req, peer, time.time())
        draft.fail(err.status, err.issues)
        self.enqueue(draft)

    def recording(self, uow: UnitOfWork, draft: AuditDraft) -> UnitOfWork:
        return _Recording(uow, draft)

    async def record_writes(self, uow: UnitOfWork, draft: AuditDraft) -> None:
        """Write the AuditEvent and the Provenance of what the interaction wrote in
        ``uow`` (just before it commits)."""
        new = draft.writes[draft.recorded_writes :]
        if not new:
            return
        draft.recorded_writes = len(draft.writes)
        draft.finished = time.time()
        now = instant(draft.finished)
        await _put(uow, audit_event(draft, self.base_url, new), now)
        await _put(uow, provenance(draft, new, now), now)
        draft.persisted = True

    def enqueue(self, draft: AuditDraft) -> None:
        if not draft.finished:
            draft.finished = time.time()
        self._pending.append(draft)
        if len(self._pending) > self.max_pending:
            excess = len(self._pending) - self.max_pending
            del self._pending[:excess]
            self.dropped += excess
            log.error("audit backlog full: %d audit events dropped", excess)
        if len(self._pending) >= self.batch_size:
            self._nudge()

    def _nudge(self) -> None:
        """Have the queue written now."""
        if self._task is not None and self._wake is not None:
            self._wake.set()
        elif self._kick is None or self._kick.done():
            # no background writer (an app run without its lifespan): write now
            self._kick = asyncio.get_running_loop().create_task(self.flush())

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def busy(self) -> bool:
        """Records wait, or a batch is being written."""
        return bool(self._pending) or (self._lock is not None and self._lock.locked())

    # -- the writer

    async def flush(self) -> int:
        """Write every queued event, a batch per unit of work; the number written."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        written = 0
        async with self._lock:
            while self._pending:
                # the writer process gets what is waiting, up to WRITER_BATCH at a time:
                # it stays busy instead of waiting for the next batch after each answer
                size = self.batch_size if self.writer is None else WRITER_BATCH
                batch = self._pending[:size]
                del self._pending[: len(batch)]
                try:
                    await self._write(batch)
                except _Unwritten as part:
                    log.exception("could not write %d audit events; will retry", len(part.drafts))
                    self._pending[:0] = part.drafts
                    self._progress(failing=True)
                    break
                except Exception:
                    log.exception("could not write %d audit events; will retry", len(batch))
                    self._pending[:0] = batch
                    self._progress(failing=True)
                    break
                written += len(batch)
                self._progress(failing=False)
        return written

    async def _write(self, batch: Sequence[AuditDraft]) -> None:
        if self.writer is not None:
            records = [draft_record(d) for d in batch]
            if all(r is not None for r in records):
                try:
                    await asyncio.to_thread(self.writer.write, records)
                    return
                except WriterGone as gone:
                    log.error(
                        "audit writer process: %s; writing audit events inline from now on", gone
                    )
                    self.writer = None
                    batch = batch[gone.written :]
                    try:
                        await self._store(batch)
                    except Exception as exc:  # the writer process stored the others
                        raise _Unwritten(list(batch)) from exc
                    return
        await self._store(batch)

    async def _store(self, batch: Sequence[AuditDraft]) -> None:
        events = build_events(batch, self.base_url)
        self.dropped += len(batch) - len(events)
        await store_events(self.store, events)

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            if self._pending:
                await self.flush()

    def start(self) -> None:
        """Start the background writer (on the running event loop), and the writer
        process when there is one."""
        if self.writer is not None and not self.writer.alive:
            self.writer.start()
        if self._task is None:
            self._closing = False
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop the background writer and write what is still queued."""
        try:
            await self._stop()
        finally:
            if self.writer is not None:
                await asyncio.to_thread(self.writer.close)

    async def _stop(self) -> None:
        self._closing = True
        if self._task is not None:
            assert self._wake is not None
            self._wake.set()
            await self._task
            self._task = None
        if self._kick is not None:
            await self._kick
            self._kick = None
        await self.flush()
