"""$validate (resource-operation-validate.html) through the ASGI app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from fhir_server.app import create_app
from fhir_server.settings import Settings
from fhir_server.storage.sqlite.store import SqliteStore

FHIR = {"Content-Type": "application/fhir+json"}
BASE = "http://test/fhir"
VITALS = "http://hl7.org/fhir/StructureDefinition/vitalsigns"
BODY_WEIGHT = "http://hl7.org/fhir/StructureDefinition/bodyweight"


def weight(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2024-03-01",
        "valueQuantity": {
            "value": 72.5,
            "unit": "kg",
            "system": "http://unitsofmeasure.org",
            "code": "kg",
        },
        **extra,
    }


def issues(r: httpx.Response) -> list[dict[str, Any]]:
    body = r.json()
    assert body["resourceType"] == "OperationOutcome", body
    result: list[dict[str, Any]] = body["issue"]
    return result


def errors(r: httpx.Response) -> list[dict[str, Any]]:
    return [i for i in issues(r) if i["severity"] in ("error", "fatal")]


def all_ok(r: httpx.Response) -> bool:
    found = issues(r)
    return [i["severity"] for i in found] == ["information"] and found[0]["diagnostics"] == "All OK"


async def test_valid_resource_is_all_ok(client: httpx.AsyncClient) -> None:
    r = await client.post("Observation/$validate", json=weight(), headers=FHIR)
    assert r.status_code == 200
    assert all_ok(r), r.text


async def test_invalid_resource_is_200_with_the_issues(client: httpx.AsyncClient) -> None:
    bad = weight(status="banana")
    r = await client.post("Observation/$validate", json=bad, headers=FHIR)
    assert r.status_code == 200
    found = errors(r)
    assert [i["expression"] for i in found] == [["Observation.status"]]


async def test_invariants_are_reported(client: httpx.AsyncClient) -> None:
    bad = weight(dataAbsentReason={"text": "lost"})
    r = await client.post("Observation/$validate", json=bad, headers=FHIR)
    assert [i["diagnostics"].split(":")[1].strip() for i in errors(r)] == ["obs-6"]


async def test_parameters_with_resource_and_profile(client: httpx.AsyncClient) -> None:
    obs = weight()
    del obs["category"]
    params = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "resource", "resource": obs},
            {"name": "profile", "valueUri": VITALS},
        ],
    }
    r = await client.post("Observation/$validate", json=params, headers=FHIR)
    assert r.status_code == 200
    assert {tuple(i["expression"]) for i in errors(r)} == {("Observation.category",)}
    assert all("vitalsigns" in i["diagnostics"] for i in errors(r))


async def test_profile_as_url_parameter_and_meta_profile(client: httpx.AsyncClient) -> None:
    obs = weight(
        valueQuantity={
            "value": 72.5,
            "unit": "kg",
            "system": "http://unitsofmeasure.org",
            "code": "kg",
        }
    )
    r = await client.post(f"Observation/$validate?profile={BODY_WEIGHT}", json=obs, headers=FHIR)
    assert all_ok(r), r.text
    obs["code"] = {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]}
    r = await client.post(f"Observation/$validate?profile={BODY_WEIGHT}", json=obs, headers=FHIR)
    assert errors(r)
    obs["meta"] = {"profile": [BODY_WEIGHT]}
    r = await client.post("Observation/$validate", json=obs, headers=FHIR)
    assert errors(r)  # meta.profile is validated too
    r = await client.post(
        f"Observation/$validate?mode=profile&profile={VITALS}", json=obs, headers=FHIR
    )
    assert all_ok(r), r.text  # mode=profile: the named profile only, not meta.profile


async def test_unknown_meta_profile_is_a_warning(client: httpx.AsyncClient) -> None:
    obs = weight(meta={"profile": ["http://example.org/StructureDefinition/nope"]})
    r = await client.post("Observation/$validate", json=obs, headers=FHIR)
    assert [i["severity"] for i in issues(r)] == ["warning"]
    assert issues(r)[0]["expression"] == ["Observation.meta.profile"]


async def test_instance_level_get_validates_the_stored_resource(client: httpx.AsyncClient) -> None:
    created = await client.post("Observation", json=weight(), headers=FHIR)
    assert created.status_code == 201
    id = created.json()["id"]
    r = await client.get(f"Observation/{id}/$validate")
    assert r.status_code == 200 and all_ok(r), r.text
    r = await client.get(f"Observation/{id}/$validate?profile={BODY_WEIGHT}")
    assert all_ok(r), r.text
    r = await client.get("Observation/unknown/$validate")
    assert r.status_code == 404


async def test_mode_update_needs_matching_id(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "Observation/o1/$validate?mode=update", json=weight(id="o2"), headers=FHIR
    )
    assert r.status_code == 200
    assert [i["expression"] for i in errors(r)] == [["Observation.id"]]
    r = await client.post("Observation/$validate?mode=update", json=weight(), headers=FHIR)
    assert [i["expression"] for i in errors(r)] == [["Observation.id"]]
    r = await client.post(
        "Observation/o1/$validate?mode=update", json=weight(id="o1"), headers=FHIR
    )
    assert all_ok(r), r.text


async def test_mode_delete_is_information_only(client: httpx.AsyncClient) -> None:
    created = await client.post("Observation", json=weight(), headers=FHIR)
    id = created.json()["id"]
    params = {"resourceType": "Parameters", "parameter": [{"name": "mode", "valueCode": "delete"}]}
    r = await client.post(f"Observation/{id}/$validate", json=params, headers=FHIR)
    assert r.status_code == 200
    assert [i["severity"] for i in issues(r)] == ["information"]
    assert "can be deleted" in issues(r)[0]["diagnostics"]
    r = await client.post("Observation/nothing/$validate?mode=delete")
    assert [i["severity"] for i in issues(r)] == ["information"]
    assert "does not exist" in issues(r)[0]["diagnostics"]


async def test_wrong_type_and_bad_requests(client: httpx.AsyncClient) -> None:
    r = await client.post("Patient/$validate", json=weight(), headers=FHIR)
    assert r.status_code == 200 and errors(r)
    r = await client.post("Observation/$validate?mode=banana", json=weight(), headers=FHIR)
    assert r.status_code == 400
    r = await client.post("Observation/$validate", headers=FHIR)
    assert r.status_code == 400
    r = await client.post("Observation/$validate", content=b"{not json", headers=FHIR)
    assert r.status_code == 400
    r = await client.post("Observation/$validate?mode=profile", json=weight(), headers=FHIR)
    assert r.status_code == 400


async def test_a_parameters_resource_can_itself_be_validated(client: httpx.AsyncClient) -> None:
    params = {"resourceType": "Parameters", "parameter": [{"name": "x", "valueString": "y"}]}
    r = await client.post("Parameters/$validate", json=params, headers=FHIR)
    assert all_ok(r), r.text


async def test_capability_statement_lists_validate(client: httpx.AsyncClient) -> None:
    cs = (await client.get("metadata")).json()
    patient = next(r for r in cs["rest"][0]["resource"] if r["type"] == "Patient")
    ops = {o["name"]: o["definition"] for o in patient.get("operation", [])}
    assert ops["validate"] == "http://hl7.org/fhir/OperationDefinition/Resource-validate"


@pytest.fixture
async def strict_client() -> AsyncIterator[httpx.AsyncClient]:
    store = SqliteStore(":memory:")
    await store.open()
    settings = Settings(
        database=":memory:",
        public_base_url=BASE,
        required_profiles=(("Observation", VITALS),),
    )
    transport = httpx.ASGITransport(app=create_app(settings, store))
    async with httpx.AsyncClient(transport=transport, base_url=BASE + "/") as c:
        yield c
    await store.close()


async def test_required_profiles_from_the_settings(strict_client: httpx.AsyncClient) -> None:
    obs = weight()
    del obs["category"]
    r = await strict_client.post("Observation/$validate", json=obs, headers=FHIR)
    assert errors(r) and all("vitalsigns" in i["diagnostics"] for i in errors(r))
    r = await strict_client.post("Observation/$validate", json=weight(), headers=FHIR)
    assert all_ok(r), r.text
