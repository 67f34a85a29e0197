"""Who sees what: patient/ (v1 and v2), user/ and system/ scopes against the same data
(see ``SEED`` in test_wiring: Patients pa and pb, Ada's two Observations — her lab
result derived from Bob's vital signs — and Bob's one)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fhir_server.storage.sqlite.store import SqliteStore
from tests.auth.test_wiring import Env, ids, observation, open_env


@pytest.fixture
async def env(store: SqliteStore, tmp_path: Path) -> AsyncIterator[Env]:
    async with open_env(store, tmp_path) as e:
        yield e


@dataclass(frozen=True)
class Caller:
    name: str
    scope: str
    patient: str | None = None

    @property
    def patient_level(self) -> bool:
        return self.patient is not None


CALLERS = (
    Caller("patient-v1", "launch/patient patient/*.read", "pa"),
    Caller(
        "patient-v2",
        "launch/patient patient/Observation.rs patient/Patient.rs patient/Practitioner.rs",
        "pa",
    ),
    Caller("user-v1", "openid fhirUser user/*.read"),
    Caller("user-v2", "user/Observation.rs user/Patient.rs user/Practitioner.rs"),
    Caller("system-v2", "system/*.rs"),
)
ALL_OBS = {"Observation/oa-vital", "Observation/oa-lab", "Observation/ob-vital"}
ADA_OBS = {"Observation/oa-vital", "Observation/oa-lab"}

callers = pytest.mark.parametrize("caller", CALLERS, ids=lambda c: c.name)


def headers(env: Env, caller: Caller) -> dict[str, str]:
    return env.bearer(caller.scope, caller.patient)


@callers
async def test_read(env: Env, caller: Caller) -> None:
    h = headers(env, caller)
    r = await env.client.get("/fhir/Observation/oa-vital", headers=h)
    assert r.status_code == 200
    other = await env.client.get("/fhir/Observation/ob-vital", headers=h)
    assert other.status_code == (404 if caller.patient_level else 200)
    if caller.patient_level:  # indistinguishable from an unknown resource
        unknown = await env.client.get("/fhir/Observation/nope", headers=h)
        assert unknown.status_code == 404
        assert other.json()["issue"][0]["code"] == unknown.json()["issue"][0]["code"]
    vread = await env.client.get("/fhir/Observation/ob-vital/_history/1", headers=h)
    assert vread.status_code == (404 if caller.patient_level else 200)
    assert (await env.client.get("/fhir/Patient/pa", headers=h)).status_code == 200
    patient_b = await env.client.get("/fhir/Patient/pb", headers=h)
    assert patient_b.status_code == (404 if caller.patient_level else 200)
    # not in the Patient compartment: a patient/ scope is not limited by it
    assert (await env.client.get("/fhir/Practitioner/pr1", headers=h)).status_code == 200


@callers
async def test_search_returns_only_what_the_token_sees(env: Env, caller: Caller) -> None:
    h = headers(env, caller)
    r = await env.client.get("/fhir/Observation", headers=h)
    assert r.status_code == 200
    bundle = r.json()
    assert ids(bundle) == (ADA_OBS if caller.patient_level else ALL_OBS)
    # the self link is the search the client made, not a compartment search
    assert bundle["link"][0]["url"].startswith("http://test/fhir/Observation")
    r = await env.client.get("/fhir/Patient", headers=h)
    assert ids(r.json()) == (
        {"Patient/pa"} if caller.patient_level else {"Patient/pa", "Patient/pb"}
    )
    # POST _search takes the same path
    r = await env.client.post(
        "/fhir/Observation/_search", data={"category": "vital-signs"}, headers=h
    )
    expected = {"Observation/oa-vital"} | (
        set() if caller.patient_level else {"Observation/ob-vital"}
    )
    assert ids(r.json()) == expected
    # an explicit compartment search for the other patient finds nothing of theirs
    r = await env.client.get("/fhir/Patient/pb/Observation", headers=h)
    assert ids(r.json()) == (set() if caller.patient_level else {"Observation/ob-vital"})


@callers
async def test_includes_do_not_leak(env: Env, caller: Caller) -> None:
    h = headers(env, caller)
    r = await env.client.get(
        "/fhir/Observation",
        params={"_id": "oa-lab", "_include": "Observation:derived-from"},
        headers=h,
    )
    assert r.status_code == 200
    got = ids(r.json())
    assert "Observation/oa-lab" in got
    assert ("Observation/ob-vital" in got) is (not caller.patient_level)
    r = await env.client.get(
        "/fhir/Practitioner",
        params={"_id": "pr1", "_revinclude": "Observation:performer"},
        headers=h,
    )
    assert r.status_code == 200
    expected = {"Practitioner/pr1"} | (ADA_OBS if caller.patient_level else ALL_OBS)
    assert ids(r.json()) == expected
    r = await env.client.get(
        "/fhir/Observation",
        params={"_include": "Observation:subject", "_elements": "status"},
        headers=h,
    )
    expected = ADA_OBS | {"Patient/pa"}
    if not caller.patient_level:
        expected = ALL_OBS | {"Patient/pa", "Patient/pb"}
    assert ids(r.json()) == expected


@callers
async def test_has(env: Env, caller: Caller) -> None:
    h = headers(env, caller)
    r = await env.client.get(
        "/fhir/Patient", params={"_has:Observation:subject:category": "vital-signs"}, headers=h
    )
    assert r.status_code == 200
    assert ids(r.json()) == (
        {"Patient/pa"} if caller.patient_level else {"Patient/pa", "Patient/pb"}
    )


@callers
async def test_history(env: Env, caller: Caller) -> None:
    h = headers(env, caller)
    r = await env.client.get("/fhir/Observation/oa-vital/_history", headers=h)
    assert r.status_code == 200 and len(r.json()["entry"]) == 1
    r = await env.client.get("/fhir/Observation/ob-vital/_history", headers=h)
    assert r.status_code == (404 if caller.patient_level else 200)
    r = await env.client.get("/fhir/Observation/_history", headers=h)
    assert r.status_code == 200
    assert ids(r.json()) == (ADA_OBS if caller.patient_level else ALL_OBS)


@callers
async def test_system_search_and_history(env: Env, caller: Caller) -> None:
    h = headers(env, caller)
    r = await env.client.get("/fhir", params={"_type": "Observation,Patient"}, headers=h)
    wildcard = "*" in caller.scope
    if not wildcard:  # system-level interactions need a scope for every type
        assert r.status_code == 403
        return
    assert r.status_code == 200
    people = {"Patient/pa"} if caller.patient_level else {"Patient/pa", "Patient/pb"}
    assert ids(r.json()) == (ADA_OBS if caller.patient_level else ALL_OBS) | people
    r = await env.client.get("/fhir/_history", headers=h)
    assert r.status_code == 200
    got = ids(r.json())
    assert (
        "Observation/ob-vital" not in got if caller.patient_level else "Observation/ob-vital" in got
    )


@callers
async def test_write_without_write_scope(env: Env, caller: Caller) -> None:
    h = headers(env, caller)
    new = observation("new-1", "pa", "vital-signs")
    assert (await env.client.post("/fhir/Observation", json=new, headers=h)).status_code == 403
    assert (await env.client.put("/fhir/Observation/new-1", json=new, headers=h)).status_code == 403
    r = await env.client.delete("/fhir/Observation/oa-vital", headers=h)
    assert r.status_code == 403
    r = await env.client.patch(
        "/fhir/Observation/oa-vital",
        json=[{"op": "replace", "path": "/status", "value": "amended"}],
        headers={**h, "Content-Type": "application/json-patch+json"},
    )
    assert r.status_code == 403


async def test_patient_writes_stay_in_the_compartment(env: Env) -> None:
    h = env.bearer("launch/patient patient/Observation.cruds patient/Patient.rs", "pa")
    c = env.client
    r = await c.post("/fhir/Observation", json=observation("x", "pa", "vital-signs"), headers=h)
    assert r.status_code == 201, r.text
    r = await c.post("/fhir/Observation", json=observation("x", "pb", "vital-signs"), headers=h)
    assert r.status_code == 403
    # someone else's: not found, whatever the interaction
    r = await c.put(
        "/fhir/Observation/ob-vital", json=observation("ob-vital", "pa", "x"), headers=h
    )
    assert r.status_code == 404
    assert (await c.delete("/fhir/Observation/ob-vital", headers=h)).status_code == 404
    # moving one's own resource to another patient is refused (and rolled back)
    r = await c.patch(
        "/fhir/Observation/oa-vital",
        json=[{"op": "replace", "path": "/subject/reference", "value": "Patient/pb"}],
        headers={**h, "Content-Type": "application/json-patch+json"},
    )
    assert r.status_code == 403
    r = await c.get("/fhir/Observation/oa-vital", headers=h)
    assert r.status_code == 200 and r.json()["subject"]["reference"] == "Patient/pa"
    # conditional delete needs a scope over every Observation
    r = await c.delete("/fhir/Observation", params={"category": "vital-signs"}, headers=h)
    assert r.status_code == 403
    assert (await c.delete("/fhir/Observation/oa-vital", headers=h)).status_code in (200, 204)


@pytest.mark.parametrize(
    "scope",
    [
        "patient/Observation.rs?category=vital-signs patient/Patient.rs",
        f"patient/Observation.rs?category={observation('', '', '')['category'][0]['coding'][0]['system']}|vital-signs"
        " patient/Patient.rs",
    ],
    ids=["code", "system|code"],
)
async def test_v2_scope_parameters_restrict_results(env: Env, scope: str) -> None:
    h = env.bearer("launch/patient " + scope, "pa")
    r = await env.client.get("/fhir/Observation", headers=h)
    assert r.status_code == 200
    assert ids(r.json()) == {"Observation/oa-vital"}
    assert "total" not in r.json()  # it would count the hidden ones
    assert (await env.client.get("/fhir/Observation/oa-vital", headers=h)).status_code == 200
    assert (await env.client.get("/fhir/Observation/oa-lab", headers=h)).status_code == 404
    r = await env.client.get(
        "/fhir/Patient", params={"_revinclude": "Observation:subject"}, headers=h
    )
    assert ids(r.json()) == {"Patient/pa", "Observation/oa-vital"}


async def test_user_scope_with_parameters(env: Env) -> None:
    h = env.bearer("user/Observation.rs?category=laboratory")
    r = await env.client.get("/fhir/Observation", headers=h)
    assert ids(r.json()) == {"Observation/oa-lab"}
    assert (await env.client.get("/fhir/Observation/ob-vital", headers=h)).status_code == 404


async def test_operations_need_their_permissions(env: Env) -> None:
    c = env.client
    h = env.bearer("launch/patient patient/Observation.rs patient/Encounter.rs", "pa")
    r = await c.post(
        "/fhir/Encounter/e1/$generate-claim",
        json={
            "resourceType": "Parameters",
            "parameter": [{"name": "persist", "valueBoolean": True}],
        },
        headers=h,
    )
    assert r.status_code == 403  # persisting needs Claim create/update, Encounter update
    r = await c.post("/fhir/Observation/$validate", json=observation("v", "pa", "x"), headers=h)
    assert r.status_code == 200, r.text
    r = await c.get("/fhir/Observation/ob-vital/$validate", headers=h)
    assert r.status_code == 404
