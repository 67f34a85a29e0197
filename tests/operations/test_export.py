"""Bulk Data export (``$export``, https://hl7.org/fhir/uv/bulkdata/export.html) through
the ASGI app: kick-off, status polling, manifest, NDJSON files, cancellation, and the
scopes of an access token."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from fhir_server.app import create_app
from fhir_server.operations import export_jobs
from fhir_server.operations.export_jobs import ExportJobs
from fhir_server.settings import Settings
from fhir_server.storage.port import Store
from fhir_server.storage.sqlite.store import SqliteStore
from tests.auth.test_wiring import auth_settings

BASE = "http://test/fhir"
ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INSTANT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


def observation(
    id: str, subject: str, *performers: str, category: str = "vital-signs"
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": id,
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": category}]}],
        "code": {"text": f"{id} reading"},
        "subject": {"reference": subject},
    }
    if performers:
        resource["performer"] = [{"reference": p} for p in performers]
    return resource


def group(id: str, *members: str, inactive: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "resourceType": "Group",
        "id": id,
        "type": "person",
        "actual": True,
        "member": [{"entity": {"reference": m}} for m in members]
        + [{"entity": {"reference": m}, "inactive": True} for m in inactive],
    }


# Two patients and a practitioner; Ada's second Observation was performed by Bob (so
# it is in both compartments); one Observation is about a patient that does not exist.
SEED: tuple[dict[str, Any], ...] = (
    {"resourceType": "Patient", "id": "pa", "name": [{"family": "Lovelace"}]},
    {"resourceType": "Patient", "id": "pb", "name": [{"family": "Builder"}]},
    {"resourceType": "Practitioner", "id": "pr1", "name": [{"family": "Therapist"}]},
    observation("oa1", "Patient/pa", "Practitioner/pr1"),
    observation("oa2", "Patient/pa", "Patient/pb", category="laboratory"),
    observation("ob1", "Patient/pb"),
    observation("ox1", "Patient/ghost"),
    group("ada", "Patient/pa"),
    group("both", "Patient/pa", "Patient/pb"),
    group("lapsed", "Patient/pa", inactive=("Patient/pb",)),
)


class Env:
    def __init__(self, app: FastAPI, client: httpx.AsyncClient, directory: Path) -> None:
        self.app = app
        self.client = client
        self.directory = directory

    @property
    def jobs(self) -> ExportJobs:
        jobs = self.app.state.context.exports
        assert isinstance(jobs, ExportJobs)
        return jobs

    async def kick_off(
        self, path: str, headers: dict[str, str] | None = None, **params: str
    ) -> str:
        r = await self.client.get(path, params=params, headers=headers or ASYNC)
        assert r.status_code == 202, r.text
        assert r.json()["resourceType"] == "OperationOutcome"
        url = r.headers["Content-Location"]
        assert url.startswith(f"{BASE}/_export/")
        return url

    async def finish(self, url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
        """Poll the status URL until the manifest comes."""
        for _ in range(2000):
            r = await self.client.get(url, headers=headers)
            if r.status_code != 202:
                assert r.status_code == 200, r.text
                assert r.headers["content-type"].startswith("application/json")
                manifest: dict[str, Any] = r.json()
                return manifest
            assert r.headers["X-Progress"] and r.headers["Retry-After"].isdigit()
            await asyncio.sleep(0.005)
        raise AssertionError("the export did not finish")

    async def download(
        self, manifest: dict[str, Any], headers: dict[str, str] | None = None, key: str = "output"
    ) -> dict[str, list[dict[str, Any]]]:
        """The resources of the manifest's files, by type; counts and media type checked."""
        out: dict[str, list[dict[str, Any]]] = {}
        for item in manifest[key]:
            r = await self.client.get(item["url"], headers=headers)
            assert r.status_code == 200, r.text
            assert r.headers["content-type"].startswith("application/fhir+ndjson")
            lines = r.text.split("\n")
            assert lines[-1] == "" and all(lines[:-1])  # one resource per line
            resources = [json.loads(line) for line in lines[:-1]]
            assert len(resources) == item["count"]
            assert all(x["resourceType"] == item["type"] for x in resources)
            out.setdefault(item["type"], []).extend(resources)
        return out

    async def export(self, path: str, **params: str) -> dict[str, list[dict[str, Any]]]:
        return await self.download(await self.finish(await self.kick_off(path, **params)))

    async def stored(self, rtype: str) -> dict[str, dict[str, Any]]:
        r = await self.client.get(rtype, params={"_count": "100"})
        return {e["resource"]["id"]: e["resource"] for e in r.json().get("entry", ())}


def ids(found: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
    return {t: sorted(r["id"] for r in rs) for t, rs in found.items()}


@asynccontextmanager
async def open_env(
    store: Store, directory: Path, settings: Settings | None = None
) -> AsyncIterator[Env]:
    settings = settings or Settings(database=":memory:", public_base_url=BASE)
    app = create_app(Settings(**{**_fields(settings), "export_path": str(directory)}), store)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE + "/") as client:
            yield Env(app, client, directory)


def _fields(settings: Settings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in settings.__dataclass_fields__}


async def seed(client: httpx.AsyncClient, headers: dict[str, str] | None = None) -> None:
    for resource in SEED:
        path = f"{resource['resourceType']}/{resource['id']}"
        r = await client.put(path, json=resource, headers=headers)
        assert r.status_code == 201, r.text


@pytest.fixture
async def env(store: SqliteStore, tmp_path: Path) -> AsyncIterator[Env]:
    async with open_env(store, tmp_path / "export") as e:
        await seed(e.client)
        yield e


# ---------------------------------------------------------------------- kick-off


async def test_kick_off_needs_respond_async(env: Env) -> None:
    for headers in ({}, {"Prefer": "handling=lenient"}, {"Prefer": "return=minimal"}):
        r = await env.client.get("$export", headers=headers)
        assert r.status_code == 400, headers
        assert r.json()["resourceType"] == "OperationOutcome"
        assert "respond-async" in r.json()["issue"][0]["diagnostics"]
    assert (await env.client.head("$export", headers=ASYNC)).status_code == 405
    assert env.jobs._jobs == {}


async def test_kick_off_answers_in_fhir_json_only(env: Env) -> None:
    r = await env.client.get("$export", headers={**ASYNC, "Accept": "application/json"})
    assert r.status_code == 400
    assert r.json()["resourceType"] == "OperationOutcome"
    for accept in ("application/fhir+json", "*/*", "application/xml, application/fhir+json"):
        r = await env.client.get("Patient/$export", headers={**ASYNC, "Accept": accept})
        assert r.status_code == 202, accept


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"_outputFormat": "application/fhir+ndjson"}, 202),
        ({"_outputFormat": "application/ndjson"}, 202),
        ({"_outputFormat": "ndjson"}, 202),
        ({"_outputFormat": "text/csv"}, 400),
        ({"_outputFormat": "application/fhir+json"}, 400),
        ({"_type": "Observation,Patient"}, 202),
        ({"_type": "Observation,Banana"}, 400),
        ({"_since": "2024-01-01T00:00:00Z"}, 202),
        ({"_since": "2024-01-01T00:00:00.123+02:00"}, 202),
        ({"_since": "2024-01-01"}, 400),
        ({"_since": "yesterday"}, 400),
        ({"_typeFilter": "Observation?status=final"}, 202),
        ({"_typeFilter": "Observation?bogus=1"}, 400),
        ({"_typeFilter": "Observation?status=final&_sort=date"}, 400),
        ({"_typeFilter": "Banana?status=final"}, 400),
        ({"_elements": "id,Observation.status"}, 202),
        ({"_elements": "Observation.code.text"}, 400),
        ({"includeAssociatedData": "LatestProvenanceResources"}, 400),
        ({"patient": "Patient/pa"}, 400),  # not at system level
    ],
)
async def test_kick_off_parameters(env: Env, params: dict[str, str], status: int) -> None:
    r = await env.client.get("$export", params=params, headers=ASYNC)
    assert r.status_code == status, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert ("Content-Location" in r.headers) == (status == 202)


async def test_lenient_handling_ignores_and_reports_unsupported_parameters(env: Env) -> None:
    lenient = {**ASYNC, "Prefer": "respond-async, handling=lenient"}
    url = await env.kick_off(
        "Patient/$export",
        headers=lenient,
        _type="Observation,Practitioner",
        includeAssociatedData="LatestProvenanceResources",
    )
    manifest = await env.finish(url)
    assert [o["type"] for o in manifest["output"]] == ["Observation"]
    [error] = manifest["error"]
    assert error["type"] == "OperationOutcome"
    outcomes = (await env.download(manifest, key="error"))["OperationOutcome"]
    text = json.dumps(outcomes)
    assert "includeAssociatedData" in text and "Practitioner" in text
    # the same without handling=lenient
    r = await env.client.get("Patient/$export", params={"_type": "Practitioner"}, headers=ASYNC)
    assert r.status_code == 400
    assert "Patient compartment" in r.json()["issue"][0]["diagnostics"]


async def test_post_kick_off_with_parameters(env: Env) -> None:
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "_type", "valueString": "Observation"},
            {"name": "_type", "valueString": "Patient"},
            {"name": "patient", "valueReference": {"reference": "Patient/pb"}},
            {"name": "_outputFormat", "valueString": "application/fhir+ndjson"},
        ],
    }
    r = await env.client.post("Patient/$export", json=body, headers=ASYNC)
    assert r.status_code == 202, r.text
    manifest = await env.finish(r.headers["Content-Location"])
    assert manifest["request"] == f"{BASE}/Patient/$export"
    assert ids(await env.download(manifest)) == {
        "Observation": ["oa2", "ob1"],
        "Patient": ["pb"],
    }
    r = await env.client.post("$export", json={"resourceType": "Patient"}, headers=ASYNC)
    assert r.status_code == 400


async def test_unknown_group_is_404(env: Env) -> None:
    r = await env.client.get("Group/nobody/$export", headers=ASYNC)
    assert r.status_code == 404
    assert r.json()["issue"][0]["code"] == "not-found"
    r = await env.client.get("Observation/$export", headers=ASYNC)
    assert r.status_code == 404  # $export is not defined on other types


# ---------------------------------------------------------------------- exports


async def test_system_export_writes_every_stored_resource(env: Env) -> None:
    url = await env.kick_off("$export")
    manifest = await env.finish(url)
    assert set(manifest) == {"transactionTime", "request", "requiresAccessToken", "output", "error"}
    assert INSTANT.fullmatch(manifest["transactionTime"])
    assert manifest["request"] == f"{BASE}/$export"
    assert manifest["requiresAccessToken"] is False
    assert manifest["error"] == []
    counts = {o["type"]: o["count"] for o in manifest["output"]}
    assert counts == {"Group": 3, "Observation": 4, "Patient": 2, "Practitioner": 1}
    for o in manifest["output"]:
        assert o["url"].startswith(url + "/")
    found = await env.download(manifest)
    for rtype, resources in found.items():
        assert {r["id"]: r for r in resources} == await env.stored(rtype)


async def test_patient_export_holds_the_compartments_of_existing_patients(env: Env) -> None:
    found = await env.export("Patient/$export")
    # no Practitioner (not in the compartment); no Observation of the unknown patient;
    # the Groups are in their members' compartments
    assert ids(found) == {
        "Group": ["ada", "both", "lapsed"],
        "Observation": ["oa1", "oa2", "ob1"],
        "Patient": ["pa", "pb"],
    }
    stored = await env.stored("Observation")
    assert all(r == stored[r["id"]] for r in found["Observation"])


async def test_group_export_holds_its_members_compartments(env: Env) -> None:
    assert ids(await env.export("Group/ada/$export", _type="Patient,Observation")) == {
        "Observation": ["oa1", "oa2"],
        "Patient": ["pa"],
    }
    # an inactive member is not exported
    found = ids(await env.export("Group/lapsed/$export", _type="Patient,Observation"))
    assert found == {"Observation": ["oa1", "oa2"], "Patient": ["pa"]}
    found = ids(await env.export("Group/both/$export", _type="Patient,Observation"))
    assert found == {"Observation": ["oa1", "oa2", "ob1"], "Patient": ["pa", "pb"]}
    # patient narrows the group
    found = ids(await env.export("Group/both/$export", _type="Observation", patient="Patient/pb"))
    assert found == {"Observation": ["oa2", "ob1"]}


async def test_a_resource_of_two_chunks_of_patients_is_written_once(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export_jobs, "PATIENTS_PER_QUERY", 1)
    # oa2 is in Ada's and Bob's compartments, searched in two queries
    for path in ("Group/both/$export", "Patient/$export"):
        found = await env.export(path, _type="Observation,Patient,Group")
        assert ids(found)["Observation"] == ["oa1", "oa2", "ob1"], path
        assert ids(found)["Patient"] == ["pa", "pb"], path
        assert ids(found)["Group"] == ["ada", "both", "lapsed"], path


async def test_type_restricts_the_export(env: Env) -> None:
    assert ids(await env.export("$export", _type="Practitioner")) == {"Practitioner": ["pr1"]}
    # a _typeFilter of a type that _type leaves out is an error, or ignored when lenient
    params = {"_type": "Observation", "_typeFilter": "Patient?name=x"}
    r = await env.client.get("$export", params=params, headers=ASYNC)
    assert r.status_code == 400
    lenient = {**ASYNC, "Prefer": "respond-async; handling=lenient"}
    manifest = await env.finish(await env.kick_off("$export", headers=lenient, **params))
    assert ids(await env.download(manifest)) == {"Observation": ["oa1", "oa2", "ob1", "ox1"]}
    assert len(manifest["error"]) == 1


async def test_since_exports_what_changed_after_it(env: Env) -> None:
    first = await env.finish(await env.kick_off("$export", _type="Observation"))
    since = first["transactionTime"]
    changed = observation("ob1", "Patient/pb", "Practitioner/pr1")
    assert (await env.client.put("Observation/ob1", json=changed)).status_code == 200
    created = observation("ob2", "Patient/pb")
    assert (await env.client.put("Observation/ob2", json=created)).status_code == 201
    found = await env.export("$export", _since=since)
    assert ids(found) == {"Observation": ["ob1", "ob2"]}
    assert found["Observation"][0]["meta"]["versionId"] in ("1", "2")
    assert ids(await env.export("Patient/$export", _since=since)) == {"Observation": ["ob1", "ob2"]}


async def test_type_filter(env: Env) -> None:
    lab = f"{CATEGORY}|laboratory"
    found = await env.export(
        "$export", _type="Observation", _typeFilter=f"Observation?category={lab}"
    )
    assert ids(found) == {"Observation": ["oa2"]}
    # two queries of a type: either matches; a type without a query is not filtered
    both = f"Observation?category={lab},Observation?subject=Patient/ghost"
    found = await env.export("$export", _type="Observation,Patient", _typeFilter=both)
    assert ids(found) == {"Observation": ["oa2", "ox1"], "Patient": ["pa", "pb"]}
    # several parameters in one query all apply
    query = "Observation?subject=Patient/pa&performer=Practitioner/pr1"
    assert ids(await env.export("Patient/$export", _type="Observation", _typeFilter=query)) == {
        "Observation": ["oa1"]
    }


async def test_elements_subset_the_resources(env: Env) -> None:
    found = await env.export(
        "$export", _type="Observation,Patient", _elements="Observation.subject"
    )
    for r in found["Observation"]:
        assert set(r) == {"resourceType", "id", "meta", "status", "code", "subject"}
        assert any(t["code"] == "SUBSETTED" for t in r["meta"]["tag"])
    assert {r["id"]: r for r in found["Patient"]} == await env.stored("Patient")


async def test_large_types_are_split_into_files(env: Env) -> None:
    env.jobs.max_lines = 3
    manifest = await env.finish(await env.kick_off("$export", _type="Observation,Patient"))
    assert [(o["type"], o["count"]) for o in manifest["output"]] == [
        ("Observation", 3),
        ("Observation", 1),
        ("Patient", 2),
    ]
    assert len({o["url"] for o in manifest["output"]}) == 3
    assert ids(await env.download(manifest))["Observation"] == ["oa1", "oa2", "ob1", "ox1"]


async def test_an_export_with_nothing_to_write_has_no_files(env: Env) -> None:
    manifest = await env.finish(
        await env.kick_off("$export", _type="Encounter", _since="2999-01-01T00:00:00Z")
    )
    assert manifest["output"] == [] and manifest["error"] == []


# ---------------------------------------------------------------------- the job


@asynccontextmanager
async def held(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[asyncio.Event]:
    """Jobs wait, before each type, until the event is set."""
    release = asyncio.Event()
    original: Callable[..., Awaitable[None]] = ExportJobs._export_type

    async def waiting(self: ExportJobs, *args: Any) -> None:
        await release.wait()
        await original(self, *args)

    monkeypatch.setattr(ExportJobs, "_export_type", waiting)
    try:
        yield release
    finally:
        release.set()


async def test_status_is_202_with_progress_while_the_job_runs(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with held(monkeypatch) as release:
        url = await env.kick_off("$export", _type="Patient")
        await asyncio.sleep(0.01)  # the job starts, and waits
        for _ in range(3):
            r = await env.client.get(url)
            assert r.status_code == 202
            assert r.headers["X-Progress"].startswith("Patient (1 of 1 types)")
            assert int(r.headers["Retry-After"]) > 0
            assert r.content == b""
        release.set()
        manifest = await env.finish(url)
    assert ids(await env.download(manifest)) == {"Patient": ["pa", "pb"]}
    r = await env.client.get(url)
    assert r.status_code == 200 and "Expires" in r.headers


async def test_delete_cancels_a_running_job(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    async with held(monkeypatch):
        url = await env.kick_off("$export")
        [job] = env.jobs._jobs.values()
        assert job.task is not None
        r = await env.client.delete(url)
        assert r.status_code == 202
        assert job.task.cancelled()
        assert (await env.client.get(url)).status_code == 404
        assert (await env.client.delete(url)).status_code == 404


async def test_delete_removes_a_finished_job_and_its_files(env: Env) -> None:
    url = await env.kick_off("$export", _type="Patient")
    manifest = await env.finish(url)
    file_url = manifest["output"][0]["url"]
    job_dir = env.directory / url.rsplit("/", 1)[1]
    assert (job_dir / "Patient-1.ndjson").is_file()
    assert (await env.client.delete(url)).status_code == 202
    assert not job_dir.exists()
    for r in (await env.client.get(url), await env.client.get(file_url)):
        assert r.status_code == 404
        assert r.json()["resourceType"] == "OperationOutcome"


async def test_unknown_jobs_and_files_are_404(env: Env) -> None:
    for path in ("_export/0123456789abcdef0123456789abcdef", "_export/x/Patient-1.ndjson"):
        r = await env.client.get(path)
        assert r.status_code == 404
        assert r.json()["resourceType"] == "OperationOutcome"
    assert (await env.client.delete("_export/nope")).status_code == 404
    url = await env.kick_off("$export", _type="Patient")
    await env.finish(url)
    for name in ("Observation-1.ndjson", "..%2F..%2Fsecret", "Patient-2.ndjson"):
        assert (await env.client.get(f"{url}/{name}")).status_code == 404, name


async def test_finished_jobs_expire_with_their_files(env: Env) -> None:
    env.jobs.retention = 0.05
    url = await env.kick_off("$export", _type="Patient")
    await env.finish(url)
    job_dir = env.directory / url.rsplit("/", 1)[1]
    assert job_dir.is_dir()
    for _ in range(400):
        if (await env.client.get(url)).status_code == 404:
            break
        await asyncio.sleep(0.01)
    assert (await env.client.get(url)).status_code == 404
    assert not job_dir.exists()


async def test_a_failed_job_reports_500(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(self: ExportJobs, *args: Any) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(ExportJobs, "_export_type", broken)
    url = await env.kick_off("$export", _type="Patient")
    for _ in range(200):
        r = await env.client.get(url)
        if r.status_code != 202:
            break
        await asyncio.sleep(0.005)
    assert r.status_code == 500
    assert r.json()["issue"][0]["severity"] == "fatal"
    assert "disk on fire" not in r.text


async def test_too_many_running_jobs_is_429(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    env.jobs.max_running = 1
    async with held(monkeypatch):
        await env.kick_off("$export")
        r = await env.client.get("$export", headers=ASYNC)
        assert r.status_code == 429 and r.headers["Retry-After"].isdigit()


async def test_jobs_end_with_the_server(store: SqliteStore, tmp_path: Path) -> None:
    directory = tmp_path / "export"
    leftover = directory / ("ab" * 16)
    leftover.mkdir(parents=True)
    (leftover / "Patient-1.ndjson").write_text("{}\n")
    (directory / "keep.txt").write_text("not ours")
    async with open_env(store, directory) as e:
        assert not leftover.exists()  # a job of an earlier process
        await seed(e.client)
        url = await e.kick_off("$export", _type="Patient")
        await e.finish(url)
        job_dir = directory / url.rsplit("/", 1)[1]
        assert job_dir.is_dir()
    assert not job_dir.exists()
    assert (directory / "keep.txt").exists()


async def test_capability_statement_lists_the_operations(env: Env) -> None:
    statement = (await env.client.get("metadata")).json()
    rest = statement["rest"][0]
    bulk = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/"
    assert {"name": "export", "definition": bulk + "export"} in rest["operation"]
    by_type = {r["type"]: r.get("operation", []) for r in rest["resource"]}
    assert {"name": "export", "definition": bulk + "patient-export"} in by_type["Patient"]
    assert {"name": "export", "definition": bulk + "group-export"} in by_type["Group"]
    assert not any(op["name"] == "export" for op in by_type["Observation"])


async def test_the_default_directory_is_next_to_the_sqlite_file(tmp_path: Path) -> None:
    from fhir_server.app import export_directory

    db = tmp_path / "db" / "fhir.sqlite"
    assert export_directory(Settings(database=f"sqlite:///{db}")) == db.parent / "export"
    assert export_directory(Settings(database=":memory:")) is None
    assert export_directory(Settings(database="sqlite:///:memory:")) is None
    assert export_directory(Settings(database="sqlite://")) is None
    relative = Settings(database="sqlite:///./data/fhir.sqlite")
    assert export_directory(relative) == Path("data/export")
    assert export_directory(Settings(database="mongodb://db/fhir")) == Path("data/export")
    assert export_directory(Settings(export_path=str(tmp_path))) == tmp_path


# ---------------------------------------------------------------------- authorization


class AuthEnv(Env):
    def bearer(
        self, scope: str, client_id: str = "bulk", patient: str | None = None
    ) -> dict[str, str]:
        token, _ = self.app.state.auth_server.tokens.issue_access_token(
            subject=client_id, client_id=client_id, scope=scope, patient=patient
        )
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def auth_env(store: SqliteStore, tmp_path: Path) -> AsyncIterator[AuthEnv]:
    settings = auth_settings(tmp_path)
    async with open_env(store, tmp_path / "export", settings) as e:
        env = AuthEnv(e.app, e.client, e.directory)
        await seed(env.client, env.bearer("system/*.cruds", "admin"))
        yield env


async def test_patient_scopes_cannot_export(auth_env: AuthEnv) -> None:
    h = {**ASYNC, **auth_env.bearer("launch/patient patient/*.rs", patient="pa")}
    for path in ("$export", "Patient/$export"):
        r = await auth_env.client.get(path, headers=h)
        assert r.status_code == 403, path
        assert r.json()["issue"][0]["code"] == "forbidden"
    r = await auth_env.client.get("$export", headers=ASYNC)
    assert r.status_code == 401


async def test_a_token_exports_only_what_it_may_read(auth_env: AuthEnv) -> None:
    token = auth_env.bearer("system/Observation.rs")
    h = {**ASYNC, **token}
    url = await auth_env.kick_off("$export", headers=h)
    manifest = await auth_env.finish(url, headers=token)
    assert manifest["requiresAccessToken"] is True
    assert ids(await auth_env.download(manifest, headers=token)) == {
        "Observation": ["oa1", "oa2", "ob1", "ox1"]
    }
    r = await auth_env.client.get("$export", params={"_type": "Patient"}, headers=h)
    assert r.status_code == 403
    # a Group export reads the Group
    r = await auth_env.client.get("Group/both/$export", headers=h)
    assert r.status_code == 403
    ok = auth_env.bearer("system/Observation.rs system/Group.r")
    url = await auth_env.kick_off("Group/ada/$export", headers={**ASYNC, **ok})
    found = await auth_env.download(await auth_env.finish(url, headers=ok), headers=ok)
    assert ids(found) == {"Observation": ["oa1", "oa2"]}


async def test_scope_parameters_filter_the_resources(auth_env: AuthEnv) -> None:
    token = auth_env.bearer(f"user/Observation.rs?category={CATEGORY}|laboratory user/Patient.rs")
    url = await auth_env.kick_off("Patient/$export", headers={**ASYNC, **token})
    found = await auth_env.download(await auth_env.finish(url, headers=token), headers=token)
    assert ids(found) == {"Observation": ["oa2"], "Patient": ["pa", "pb"]}


async def test_status_and_files_need_the_same_clients_token(auth_env: AuthEnv) -> None:
    token = auth_env.bearer("system/*.rs")
    url = await auth_env.kick_off("$export", headers={**ASYNC, **token}, _type="Patient")
    manifest = await auth_env.finish(url, headers=token)
    file_url = manifest["output"][0]["url"]
    other = auth_env.bearer("system/*.rs", client_id="someone-else")
    for target in (url, file_url):
        r = await auth_env.client.get(target)
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await auth_env.client.get(target, headers=other)).status_code == 404
        assert (await auth_env.client.get(target, headers=token)).status_code == 200
    assert (await auth_env.client.delete(url, headers=other)).status_code == 404
    assert (await auth_env.client.delete(url, headers=token)).status_code == 202


async def test_downloads_are_audited(auth_env: AuthEnv) -> None:
    token = auth_env.bearer("system/*.rs")
    url = await auth_env.kick_off("$export", headers={**ASYNC, **token}, _type="Patient")
    manifest = await auth_env.finish(url, headers=token)
    await auth_env.download(manifest, headers=token)
    audit = auth_env.app.state.audit
    await audit.flush()
    r = await auth_env.client.get(
        "AuditEvent", params={"_count": "100"}, headers=auth_env.bearer("system/*.rs")
    )
    events = [e["resource"] for e in r.json().get("entry", ())]
    described = [
        entity.get("description", "") for event in events for entity in event.get("entity", ())
    ]
    file_path = manifest["output"][0]["url"].removeprefix(BASE + "/")
    assert f"GET {file_path}" in described
    assert any(d.startswith("GET $export") for d in described)


# ---------------------------------------------------------------------- MongoDB


async def test_patient_and_group_exports_on_mongodb(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.storage import mongo_support

    store = mongo_support.make_store()
    await store.open()
    try:
        async with asyncio.timeout(120), open_env(store, tmp_path / "export") as e:
            await seed(e.client)
            assert ids(await e.export("Patient/$export", _type="Observation,Patient")) == {
                "Observation": ["oa1", "oa2", "ob1"],
                "Patient": ["pa", "pb"],
            }
            monkeypatch.setattr(export_jobs, "PATIENTS_PER_QUERY", 1)
            assert ids(await e.export("Group/both/$export", _type="Observation")) == {
                "Observation": ["oa1", "oa2", "ob1"]
            }
    finally:
        await store.close()


# ---------------------------------------------------------------------- the demo clinic


async def test_the_demo_caseload_exports_its_patients(store: SqliteStore, tmp_path: Path) -> None:
    from fhir_server.interactions.context import Context
    from fhir_server.loader import load_resources, read_file

    examples = Path(__file__).resolve().parents[2] / "examples"
    ctx = Context(store=store, settings=Settings(database=":memory:"))
    for name in ("demo-clinic.json", "demo-caseload.json"):
        report = await load_resources(ctx, read_file(examples / name))
        assert report.failed == 0
    caseload = json.loads((examples / "demo-caseload.json").read_text())
    members = sorted(m["entity"]["reference"].split("/")[1] for m in caseload["member"])
    async with open_env(store, tmp_path / "export") as e:
        found = await e.export(f"Group/{caseload['id']}/$export", _type="Patient,EpisodeOfCare")
        assert ids(found)["Patient"] == members
        episodes = found["EpisodeOfCare"]
        assert episodes and sorted({ep["patient"]["reference"] for ep in episodes}) == [
            f"Patient/{m}" for m in members
        ]
        everyone = await e.export("Patient/$export", _type="Patient")
        assert len(everyone["Patient"]) > len(members)
