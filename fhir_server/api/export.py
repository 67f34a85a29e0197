"""HTTP side of Bulk Data export after the kick-off (the kick-off itself is the
``$export`` operation, served like every FHIR request; see
:mod:`fhir_server.operations.export`). These URLs are not FHIR interactions, so they
have routes of their own, registered before the FHIR API's catch-all routes:

* ``GET [base]/_export/[job]`` -- the status: ``202`` with ``X-Progress`` and
  ``Retry-After`` while the job runs, ``200`` with the JSON manifest when it is done
  (and an ``Expires`` header: when its files go), ``500`` with an OperationOutcome if
  it failed;
* ``DELETE [base]/_export/[job]`` -- cancel the job, or delete a finished one and its
  files: ``202``;
* ``GET [base]/_export/[job]/[file]`` -- an output (or error) file, streamed from disk
  as ``application/fhir+ndjson``.

Unknown jobs and files are ``404``. With authorization on, every request needs a
bearer token (``401``) of the client that started the job (another client's job is
``404``, as if it did not exist), and is audited like an operation.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from email.utils import formatdate

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from fhir_server import jsonio
from fhir_server.api.http import authenticate, error_response
from fhir_server.errors import FhirError, Issue
from fhir_server.interactions.context import Context
from fhir_server.interactions.model import FhirRequest, FhirResponse
from fhir_server.operations.export_jobs import NDJSON, STATUS_PATH, ExportJob, ExportJobs

log = logging.getLogger("fhir_server")

RETRY_AFTER = 2  # seconds, while a job runs

Action = Callable[[Context, ExportJobs, ExportJob], Awaitable[Response]]


async def _status(ctx: Context, jobs: ExportJobs, job: ExportJob) -> Response:
    if job.status == "in-progress":
        return Response(
            status_code=202, headers={"X-Progress": job.progress, "Retry-After": str(RETRY_AFTER)}
        )
    if job.status == "failed":
        raise FhirError(
            500, (Issue("fatal", "exception", "The export failed; the error was logged"),)
        )
    headers = {"Expires": formatdate(job.expires, usegmt=True)} if job.expires else {}
    body = jsonio.dumps(jobs.manifest(job))
    return Response(body, 200, headers=headers, media_type="application/json")


async def _delete(ctx: Context, jobs: ExportJobs, job: ExportJob) -> Response:
    await jobs.delete(job)
    return Response(status_code=202)


def _file(name: str) -> Action:
    async def send(ctx: Context, jobs: ExportJobs, job: ExportJob) -> Response:
        return FileResponse(jobs.file(job, name), media_type=NDJSON)

    return send


async def _serve(request: Request, ctx: Context, job_id: str, action: Action) -> Response:
    path = f"{STATUS_PATH}/{job_id}"
    if "name" in request.path_params:
        path += "/" + request.path_params["name"]
    req = FhirRequest(
        method=request.method,
        path=path,
        params=list(request.query_params.multi_items()),
        headers={k.lower(): v for k, v in request.headers.items()},
    )
    try:
        ctx = await authenticate(request, ctx, req)
        jobs = ctx.exports
        if jobs is None:
            raise FhirError.of(404, "not-found", "Bulk export is not available on this server")
        available = jobs

        async def run(c: Context) -> Response:
            return await action(c, available, available.get(job_id, c.principal))

        if ctx.audit is None or ctx.principal is None:
            return await run(ctx)
        sent: list[Response] = []

        async def audited(c: Context, r: FhirRequest) -> FhirResponse:
            if c.event is not None:
                c.event.interaction = ("operation", ["$export"])
            sent.append(await run(c))
            return FhirResponse(sent[0].status_code)

        await ctx.audit.audited(ctx, req, audited)
        return sent[0]
    except FhirError as err:
        return error_response(err)
    except Exception:  # a bug, not the client's fault: say so without leaking internals
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        internal = FhirError(
            500, (Issue("fatal", "exception", "Internal server error; the error was logged"),)
        )
        return error_response(internal)


def add_routes(app: FastAPI, ctx: Context, base: str) -> None:
    """The status and file routes under ``base`` (before the FHIR API's routes)."""

    async def status(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        action = _delete if request.method == "DELETE" else _status
        return await _serve(request, ctx, job_id, action)

    async def file(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        return await _serve(request, ctx, job_id, _file(request.path_params["name"]))

    prefix = f"{base}/{STATUS_PATH}/{{job_id}}"
    app.add_api_route(prefix, status, methods=["GET", "DELETE"], include_in_schema=False)
    app.add_api_route(prefix + "/{name}", file, methods=["GET", "HEAD"], include_in_schema=False)
