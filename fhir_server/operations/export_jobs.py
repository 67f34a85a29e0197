"""Bulk Data export jobs (https://hl7.org/fhir/uv/bulkdata/export.html): what a
``$export`` kick-off (:mod:`fhir_server.operations.export`) started, running in the
background of this server process.

A job is an asyncio task of the server's event loop. For each resource type it runs
the store's search page by page (:data:`PAGE_SIZE` resources, the store's paging
cursor), appending each page to the type's NDJSON file, so memory holds one page at a
time; a type's file is split every :data:`MAX_LINES_PER_FILE` resources. The
resources are written as stored, one per line; they are parsed only when something
must look at them: the scopes' parameters of the caller's token, ``_elements``, or a
possible duplicate (below).

Which resources:

- system level: every resource of the type;
- patient and group level: the resources of the patients' compartments (R4 Patient
  CompartmentDefinition; a Patient is in its own), for the types of that compartment.
  The patients -- every Patient (``Patient/$export``), or a list: the Group's active
  Patient members, ``patient`` -- are taken in id order, :data:`PATIENTS_PER_QUERY`
  at a time, and for each chunk a search follows the references of the type's
  compartment parameters to them (so a patient that does not exist has no
  compartment). A resource in the compartments of patients of two chunks (an
  Observation of one patient performed by another) is written with the first: in a
  later chunk, a resource that mentions ``Patient/`` more than once is checked
  against the patients before the chunk (those that existed at the kick-off).
  Patient (every patient) is searched as a whole, and a type with no resource at all
  costs one query;
- ``_since``: resources whose ``meta.lastUpdated`` is after it; ``_typeFilter``: those
  matching one of the type's queries (combined into the search, see
  :func:`any_of`).

``transactionTime`` is the time of the kick-off. The export reads the current data as
it goes, not a snapshot: a resource changed while the job runs is written as it is
when its page is read (a later export with ``_since`` = this ``transactionTime``
gets it again), rather than left out.

Jobs live in this process's memory only: they do not survive a restart, and their
status URLs then answer ``404``. The files of a job are removed when the job is
deleted (``DELETE`` on its status URL), when it expires (``retention`` seconds after
it finished), when the server shuts down, and -- files a process killed hard left
behind -- when the server starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, Literal

from fhir_server import jsonio
from fhir_server.errors import FhirError, Issue, operation_outcome
from fhir_server.search.query import (
    ChainCond,
    Clause,
    IdCond,
    Param,
    SearchQuery,
)
from fhir_server.storage.port import Store

if TYPE_CHECKING:
    from fhir_server.auth.access import Principal

log = logging.getLogger("fhir_server.export")

PAGE_SIZE: Final = 500  # resources per search page
MAX_LINES_PER_FILE: Final = 100_000
PATIENTS_PER_QUERY: Final = 200  # patients whose compartments one query searches
MAX_FILTER_CLAUSES: Final = 64  # _typeFilter queries of a type, combined (see any_of)
STATUS_PATH: Final = "_export"  # [base]/_export/[job] (status), .../[job]/[file] (files)
NDJSON: Final = "application/fhir+ndjson"
_JOB_ID = re.compile(r"[0-9a-f]{32}")

Level = Literal["system", "patient", "group"]
Status = Literal["in-progress", "completed", "failed"]


@dataclass(frozen=True, slots=True)
class ExportSpec:
    """What to export: the kick-off's parameters, checked."""

    request: str  # the kick-off's URL (the manifest's ``request``)
    level: Level
    types: tuple[str, ...]  # in the order they are exported
    since: str | None = None  # an instant
    # the patients whose compartments are exported (patient and group levels; None:
    # every patient's)
    patients: tuple[str, ...] | None = None
    # _typeFilter: further clauses per type (AND-ed to its search)
    filters: Mapping[str, tuple[Clause, ...]] = field(default_factory=dict)
    # _elements: the elements kept per type (absent: whole resources)
    elements: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # the caller, when authorization is on: its scopes filter the output, and only it
    # may see the job
    principal: Principal | None = None
    warnings: tuple[Issue, ...] = ()  # reported in the error file (ignored parameters)


@dataclass(slots=True)
class OutputFile:
    type: str  # the resource type in it (OperationOutcome for the error file)
    name: str
    count: int = 0


@dataclass(eq=False)
class ExportJob:
    id: str
    spec: ExportSpec
    directory: Path
    transaction_time: str
    status: Status = "in-progress"
    progress: str = "starting"
    output: list[OutputFile] = field(default_factory=list)
    errors: list[OutputFile] = field(default_factory=list)
    expires: float | None = None  # time.time() at which the files go (once finished)
    task: asyncio.Task[None] | None = None
    _listed: frozenset[str] | None = field(default=None, repr=False)

    @property
    def listed(self) -> frozenset[str] | None:
        """The patients listed (a Group's members, ``patient``), as a set."""
        if self.spec.patients is None:
            return None
        if self._listed is None:
            self._listed = frozenset(self.spec.patients)
        return self._listed

    def owned_by(self, principal: Principal | None) -> bool:
        """May this caller see the job? Anyone without authorization; else the same
        client (issuer, client id and subject of the kick-off's token)."""
        owner = self.spec.principal
        if owner is None:
            return True
        return principal is not None and (
            principal.issuer,
            principal.client_id,
            principal.subject,
        ) == (owner.issuer, owner.client_id, owner.subject)


# --------------------------------------------------------------------------- compartment


@cache
def _compartment() -> dict[str, tuple[str, ...]]:
    """Patient compartment: resource type -> its reference parameters that put a
    resource in a patient's compartment (``Patient`` -> ``link``)."""
    from fhir_server import definitions
    from fhir_server.search.registry import default_registry

    registry = default_registry()
    for cd in definitions.compartment_definitions():
        if cd.get("code") != "Patient":
            continue
        out: dict[str, tuple[str, ...]] = {}
        for entry in cd.get("resource", ()):
            rtype = entry.get("code")
            codes = tuple(
                c
                for c in entry.get("param", ())
                if (sp := registry.get(rtype, c)) is not None and sp.type == "reference"
            )
            if codes or rtype == "Patient":
                out[rtype] = codes
        return out
    return {"Patient": ()}


def compartment_types() -> tuple[str, ...]:
    """The types of the Patient compartment, Patient included, in name order."""
    return tuple(sorted(_compartment()))


def _ref(rtype: str, code: str) -> Param:
    return Param(code, "reference", (rtype,))


def _of_patients(rtype: str, patients: Sequence[str]) -> Clause:
    """Resources of the type in the compartment of one of ``patients`` (that exist):
    one chain per compartment parameter, ``[param]:Patient._id=[ids]``, so that the
    store looks the patients up and follows the references to them."""
    ids = IdCond(tuple(patients))
    conds: list[Any] = [
        ChainCond(_ref(rtype, c), ("Patient",), (ids,)) for c in _compartment()[rtype]
    ]
    if rtype == "Patient":
        conds.append(ids)
    return tuple(conds)


def any_of(filters: Sequence[tuple[Clause, ...]]) -> tuple[Clause, ...]:
    """A resource matches at least one of ``filters`` (each an AND of clauses): the
    same condition as one AND of clauses (conjunctive normal form), each clause taking
    one clause of every filter. ``400`` when that makes more than
    :data:`MAX_FILTER_CLAUSES` clauses."""
    size = 1
    for f in filters:
        size *= len(f)
    if size > MAX_FILTER_CLAUSES:
        raise FhirError.of(
            400,
            "too-costly",
            f"These _typeFilter queries combine into {size} search clauses"
            f" (at most {MAX_FILTER_CLAUSES}); use fewer or simpler queries",
        )
    return tuple(
        tuple(itertools.chain.from_iterable(choice)) for choice in itertools.product(*filters)
    )


# --------------------------------------------------------------------------- files


class _Writer:
    """The NDJSON files of one job: one (or more) per type, and the error file."""

    def __init__(self, job: ExportJob, max_lines: int) -> None:
        self.job = job
        self.max_lines = max_lines
        self.current: OutputFile | None = None
        self.handle: IO[bytes] | None = None
        self.written = 0

    def _next_file(self, rtype: str) -> OutputFile:
        self.close()
        n = sum(1 for f in self.job.output if f.type == rtype) + 1
        out = OutputFile(rtype, f"{rtype}-{n}.ndjson")
        self.job.directory.mkdir(parents=True, exist_ok=True)
        self.handle = (self.job.directory / out.name).open("xb")
        self.job.output.append(out)
        self.current = out
        return out

    def write(self, rtype: str, lines: list[bytes]) -> None:
        while lines:
            out = self.current
            if out is None or out.type != rtype or out.count >= self.max_lines:
                out = self._next_file(rtype)
            assert self.handle is not None
            room = self.max_lines - out.count
            part, lines = lines[:room], lines[room:]
            self.handle.write(b"\n".join(part) + b"\n")
            out.count += len(part)
            self.written += len(part)

    def error(self, issues: Sequence[Issue]) -> None:
        if not self.job.errors:
            self.job.errors.append(OutputFile("OperationOutcome", "error-1.ndjson"))
        out = self.job.errors[0]
        self.job.directory.mkdir(parents=True, exist_ok=True)
        with (self.job.directory / out.name).open("ab") as f:
            f.write(jsonio.dumps(operation_outcome(issues)) + b"\n")
        out.count += 1

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


# --------------------------------------------------------------------------- jobs


class ExportJobs:
    """The export jobs of one server (see the module doc)."""

    def __init__(
        self,
        store: Store,
        directory: Path | None,
        *,
        base_url: str,
        retention: float = 24 * 3600,
        requires_access_token: bool = False,
        max_running: int = 4,
        max_lines: int = MAX_LINES_PER_FILE,
    ) -> None:
        self.store = store
        self._directory = directory  # None: a temporary directory, made when needed
        self._temporary: Path | None = None
        self.base_url = base_url.rstrip("/")
        self.retention = retention
        self.requires_access_token = requires_access_token
        self.max_running = max_running
        self.max_lines = max_lines
        self._jobs: dict[str, ExportJob] = {}

    @property
    def directory(self) -> Path:
        if self._directory is not None:
            return self._directory
        if self._temporary is None:
            self._temporary = Path(tempfile.mkdtemp(prefix="fhir-export-"))
        return self._temporary

    # -- lifecycle (the app's lifespan)

    def open(self) -> None:
        """Remove the job files an earlier process left behind."""
        root = self._directory
        if root is None or not root.is_dir():
            return
        for entry in root.iterdir():
            if entry.is_dir() and _JOB_ID.fullmatch(entry.name) and entry.name not in self._jobs:
                shutil.rmtree(entry, ignore_errors=True)

    async def close(self) -> None:
        """Cancel the running jobs and remove every job's files."""
        for job in list(self._jobs.values()):
            await self.delete(job)
        if self._temporary is not None:
            shutil.rmtree(self._temporary, ignore_errors=True)
            self._temporary = None

    # -- the requests

    def start(self, spec: ExportSpec, transaction_time: str) -> ExportJob:
        """Start a job in the background; ``429`` when too many are running."""
        self._expire()
        running = sum(1 for j in self._jobs.values() if j.status == "in-progress")
        if running >= self.max_running:
            raise FhirError(
                429,
                (Issue("error", "throttled", "Too many exports are running; try again later"),),
                {"Retry-After": "60"},
            )
        job_id = secrets.token_hex(16)
        job = ExportJob(job_id, spec, self.directory / job_id, transaction_time)
        self._jobs[job_id] = job
        job.task = asyncio.get_running_loop().create_task(self._run(job), name=f"export {job_id}")
        return job

    def get(self, job_id: str, principal: Principal | None) -> ExportJob:
        """The job, if this caller may see it (else ``404``, as for an unknown job)."""
        self._expire()
        job = self._jobs.get(job_id)
        if job is None or not job.owned_by(principal):
            raise FhirError.of(404, "not-found", f"No export job '{job_id}'")
        return job

    async def delete(self, job: ExportJob) -> None:
        """Cancel the job if it runs, and remove it and its files."""
        task = job.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._remove(job)

    def file(self, job: ExportJob, name: str) -> Path:
        """The path of one of the job's files (``404`` for any other name)."""
        if job.status == "completed":
            for f in (*job.output, *job.errors):
                if f.name == name:
                    return job.directory / f.name
        raise FhirError.of(404, "not-found", f"No file '{name}' in export job '{job.id}'")

    def status_url(self, job: ExportJob) -> str:
        return f"{self.base_url}/{STATUS_PATH}/{job.id}"

    def file_url(self, job: ExportJob, name: str) -> str:
        return f"{self.status_url(job)}/{name}"

    def manifest(self, job: ExportJob) -> dict[str, Any]:
        """The completion manifest of a finished job."""

        def item(f: OutputFile) -> dict[str, Any]:
            return {"type": f.type, "url": self.file_url(job, f.name), "count": f.count}

        return {
            "transactionTime": job.transaction_time,
            "request": job.spec.request,
            "requiresAccessToken": self.requires_access_token,
            "output": [item(f) for f in job.output],
            "error": [item(f) for f in job.errors],
        }

    # -- the background work

    def _remove(self, job: ExportJob) -> None:
        if self._jobs.get(job.id) is job:
            del self._jobs[job.id]
        shutil.rmtree(job.directory, ignore_errors=True)

    def _expire(self) -> None:
        now = time.time()
        for job in [j for j in self._jobs.values() if j.expires is not None and j.expires <= now]:
            if job.task is not None:
                job.task.cancel()
            self._remove(job)

    async def _run(self, job: ExportJob) -> None:
        try:
            await self._export(job)
            job.status = "completed"
            job.progress = "completed"
        except Exception:
            log.exception("export job %s failed", job.id)
            job.status = "failed"
            job.progress = "failed"
            job.output.clear()
            job.errors.clear()
            shutil.rmtree(job.directory, ignore_errors=True)
        job.expires = time.time() + self.retention
        await asyncio.sleep(self.retention)
        self._remove(job)

    async def _export(self, job: ExportJob) -> None:
        spec = job.spec
        writer = _Writer(job, self.max_lines)
        try:
            if spec.warnings:
                writer.error(spec.warnings)
            for i, rtype in enumerate(spec.types, 1):
                job.progress = (
                    f"{rtype} ({i} of {len(spec.types)} types), {writer.written} resources written"
                )
                try:
                    await self._export_type(job, rtype, writer)
                except FhirError as err:  # a search the store refused: reported, not fatal
                    writer.error([replace(i, expression=(rtype,)) for i in err.issues])
        finally:
            writer.close()

    def _search(self, spec: ExportSpec, rtype: str, count: int = PAGE_SIZE) -> SearchQuery:
        """The type's search: ``_since`` and ``_typeFilter`` (no compartment)."""
        from fhir_server.search.parser import parse

        params = [("_count", str(count)), ("_total", "none")]
        if spec.since is not None:
            params.append(("_lastUpdated", f"gt{spec.since}"))
        query = parse(rtype, params, strict=True, base_url=self.base_url)
        return replace(query, clauses=(*query.clauses, *spec.filters.get(rtype, ())))

    async def _patient_chunks(self, spec: ExportSpec) -> AsyncIterator[tuple[str, ...]]:
        """The patients whose compartments are exported, in id order,
        :data:`PATIENTS_PER_QUERY` at a time: the listed ones, or every Patient."""
        from fhir_server.search.parser import parse

        if spec.patients is not None:
            listed = sorted(set(spec.patients))
            for start in range(0, len(listed), PATIENTS_PER_QUERY):
                yield tuple(listed[start : start + PATIENTS_PER_QUERY])
            return
        params = [("_sort", "_id"), ("_count", str(PATIENTS_PER_QUERY)), ("_total", "none")]
        query = parse("Patient", params, strict=True)
        cursor: str | None = None
        while True:
            result = await self.store.search(replace(query, cursor=cursor))
            if result.matches:
                yield tuple(hit.id for hit in result.matches)
            cursor = result.next_cursor
            if cursor is None:
                return

    async def _existed(self, patient: str, transaction_time: str) -> bool:
        """Did the Patient exist from the kick-off on (so that an earlier chunk, searched
        after the kick-off, found it)?"""
        current = await self.store.read("Patient", patient)
        if current is None or current.deleted:
            return False
        if current.last_updated <= transaction_time:
            return True
        first = await self.store.vread("Patient", patient, 1)
        return first is not None and first.last_updated <= transaction_time

    async def _written_before(
        self, job: ExportJob, rtype: str, resource: dict[str, Any], start: str
    ) -> bool:
        """Was the resource written with an earlier chunk of patients, i.e. is it in the
        compartment of an exported patient whose id sorts before ``start``?"""
        from fhir_server.search.extract import extract_param

        found: set[str] = set()
        if rtype == "Patient" and isinstance(resource.get("id"), str):
            found.add(resource["id"])
        for code in _compartment()[rtype]:
            for row in extract_param(resource, code).refs:
                _, target_type, target_id, _, url, *_ = row
                if (
                    target_type == "Patient"
                    and target_id is not None
                    and (url is None or url == f"{self.base_url}/Patient/{target_id}")
                ):
                    found.add(target_id)
        listed = job.listed
        for patient in sorted(p for p in found if p < start):
            if listed is not None and patient not in listed:
                continue
            if await self._existed(patient, job.transaction_time):
                return True
        return False

    async def _export_type(self, job: ExportJob, rtype: str, writer: _Writer) -> None:
        spec = job.spec
        query = self._search(spec, rtype)
        if spec.level == "system" or (spec.patients is None and rtype == "Patient"):
            await self._write(job, rtype, query, writer, None)
            return
        probe = await self.store.search(replace(self._search(spec, rtype, 1), cursor=None))
        if not probe.matches:
            return  # nothing of the type: no need to go through the patients
        first = True
        async for chunk in self._patient_chunks(spec):
            chunked = replace(query, clauses=(_of_patients(rtype, chunk), *query.clauses))
            await self._write(job, rtype, chunked, writer, None if first else chunk[0])
            first = False

    async def _write(
        self,
        job: ExportJob,
        rtype: str,
        query: SearchQuery,
        writer: _Writer,
        chunk_start: str | None,
    ) -> None:
        """Write what the search finds, page by page. With ``chunk_start`` (a chunk of
        patients after the first), skip what an earlier chunk wrote: only a resource
        that mentions a Patient more than once (a Patient: at all) can be there."""
        from fhir_server.interactions.search import shape

        spec = job.spec
        allowed: Callable[[Mapping[str, Any]], bool] | None = None
        if spec.principal is not None:
            from fhir_server.auth.enforce import export_filter

            allowed = export_filter(spec.principal, rtype)
        elements = spec.elements.get(rtype)
        shaping = SearchQuery((rtype,), elements=elements) if elements else None
        mentions = 1 if rtype == "Patient" else 2
        cursor: str | None = None
        while True:
            result = await self.store.search(replace(query, cursor=cursor))
            lines: list[bytes] = []
            for hit in result.matches:
                content = hit.content
                again = chunk_start is not None and content.count(b"Patient/") >= mentions
                if again or allowed or shaping or b"\n" in content:
                    resource = jsonio.loads_stored(content)
                    if (
                        again
                        and chunk_start is not None
                        and await self._written_before(job, rtype, resource, chunk_start)
                    ):
                        continue  # written with an earlier chunk of patients
                    if allowed is not None and not allowed(resource):
                        continue
                    if shaping is not None or b"\n" in content:
                        shaped = shape(resource, shaping) if shaping else resource
                        content = jsonio.dumps(shaped)
                lines.append(content)
            writer.write(rtype, lines)
            cursor = result.next_cursor
            if cursor is None:
                break
            # the store may answer without suspending: let the server's requests in
            await asyncio.sleep(0)


def request_url(base_url: str, path: str, params: Iterable[tuple[str, str]]) -> str:
    """The absolute URL of a kick-off request (for the manifest)."""
    from urllib.parse import urlencode

    url = f"{base_url.rstrip('/')}/{path}"
    pairs = list(params)
    return f"{url}?{urlencode(pairs)}" if pairs else url
