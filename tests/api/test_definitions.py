"""Definitions written through the API (profiles, value sets, questionnaires) are used
to validate later writes, after a restart too, and stop being used when deleted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from fhir_server.app import create_app
from fhir_server.settings import Settings
from fhir_server.storage.sqlite.store import SqliteStore
from tests.conftest import BASE

JSON = {"content-type": "application/fhir+json"}
PROFILE_URL = "http://example.org/fhir/StructureDefinition/patient-with-birthdate"
PROFILE = {
    "resourceType": "StructureDefinition",
    "url": PROFILE_URL,
    "name": "PatientWithBirthDate",
    "status": "active",
    "kind": "resource",
    "abstract": False,
    "type": "Patient",
    "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
    "derivation": "constraint",
    "differential": {
        "element": [{"id": "Patient.birthDate", "path": "Patient.birthDate", "min": 1}]
    },
}


def patient(birth_date: str | None = None) -> dict[str, object]:
    p: dict[str, object] = {"resourceType": "Patient", "meta": {"profile": [PROFILE_URL]}}
    if birth_date:
        p["birthDate"] = birth_date
    return p


@asynccontextmanager
async def running(store: SqliteStore) -> AsyncIterator[httpx.AsyncClient]:
    """A server on ``store`` with its lifespan run (as at start-up)."""
    app = create_app(Settings(database=":memory:", public_base_url=BASE), store)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE + "/") as c:
            yield c


async def test_a_profile_written_through_the_api_is_enforced(store: SqliteStore) -> None:
    async with running(store) as client:
        # unknown profile: a warning only, the write succeeds
        r = await client.post("Patient", json=patient(), headers=JSON)
        assert r.status_code == 201, r.text
        r = await client.post("StructureDefinition", json=PROFILE, headers=JSON)
        assert r.status_code == 201, r.text
        sd_id = r.json()["id"]
        r = await client.post("Patient", json=patient(), headers=JSON)
        assert r.status_code == 422, r.text
        assert "Patient.birthDate" in r.text
        r = await client.post("Patient", json=patient("1950-02-03"), headers=JSON)
        assert r.status_code == 201, r.text
        r = await client.post("Patient/$validate", json=patient(), headers=JSON)
        assert any(i["severity"] == "error" for i in r.json()["issue"]), r.text

    async with running(store) as client:  # a restart: the stored profile is loaded again
        r = await client.post("Patient", json=patient(), headers=JSON)
        assert r.status_code == 422, r.text
        assert (await client.delete(f"StructureDefinition/{sd_id}")).status_code in (200, 204)
        r = await client.post("Patient", json=patient(), headers=JSON)
        assert r.status_code == 201, r.text


async def test_a_profile_in_a_failed_transaction_is_not_used(store: SqliteStore) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": PROFILE, "request": {"method": "POST", "url": "StructureDefinition"}},
            {
                "resource": {"resourceType": "Patient", "gender": "banana"},
                "request": {"method": "POST", "url": "Patient"},
            },
        ],
    }
    async with running(store) as client:
        r = await client.post("", json=bundle, headers=JSON)
        assert r.status_code == 400, r.text
        r = await client.post("Patient", json=patient(), headers=JSON)
        assert r.status_code == 201, r.text


async def test_a_questionnaire_written_through_the_api_checks_responses(
    store: SqliteStore,
) -> None:
    questionnaire = {
        "resourceType": "Questionnaire",
        "url": "http://example.org/fhir/Questionnaire/pain",
        "status": "active",
        "item": [{"linkId": "score", "text": "Pain score", "type": "integer", "required": True}],
    }
    response = {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": "http://example.org/fhir/Questionnaire/pain",
        "status": "completed",
        "item": [{"linkId": "score", "text": "Pain score", "answer": [{"valueString": "high"}]}],
    }
    async with running(store) as client:
        r = await client.post("Questionnaire", json=questionnaire, headers=JSON)
        assert r.status_code == 201, r.text
        r = await client.post("QuestionnaireResponse", json=response, headers=JSON)
        assert r.status_code == 422, r.text
        response["item"] = [
            {"linkId": "score", "text": "Pain score", "answer": [{"valueInteger": 4}]}
        ]
        r = await client.post("QuestionnaireResponse", json=response, headers=JSON)
        assert r.status_code == 201, r.text
