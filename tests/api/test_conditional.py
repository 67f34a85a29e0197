"""Conditional interactions and searches through the API (they use the search engine)."""

from __future__ import annotations

from typing import Any

import httpx

FHIR = {"Content-Type": "application/fhir+json"}
MRN = "http://rehabfhir.org/fhir/sid/mrn"


def patient(mrn: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": MRN, "value": mrn}],
        "name": [{"family": "Curie"}],
        **extra,
    }


async def test_conditional_create(client: httpx.AsyncClient) -> None:
    headers = {**FHIR, "If-None-Exist": f"identifier={MRN}|A1"}
    first = await client.post("Patient", json=patient("A1"), headers=headers)
    assert first.status_code == 201
    again = await client.post("Patient", json=patient("A1"), headers=headers)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    await client.post("Patient", json=patient("A1"), headers=FHIR)  # a duplicate, made on purpose
    multi = await client.post("Patient", json=patient("A1"), headers=headers)
    assert multi.status_code == 412
    bad = await client.post("Patient", json=patient("A2"), headers={**FHIR, "If-None-Exist": "nonsense=1"})
    assert bad.status_code == 400


async def test_conditional_update(client: httpx.AsyncClient) -> None:
    r = await client.put(f"Patient?identifier={MRN}|B1", json=patient("B1"), headers=FHIR)
    assert r.status_code == 201
    id = r.json()["id"]
    r = await client.put(
        f"Patient?identifier={MRN}|B1", json=patient("B1", gender="female"), headers=FHIR
    )
    assert r.status_code == 200 and r.json()["id"] == id and r.json()["meta"]["versionId"] == "2"
    r = await client.put(
        f"Patient?identifier={MRN}|B1", json=patient("B1", id="someone-else"), headers=FHIR
    )
    assert r.status_code == 400
    await client.post("Patient", json=patient("B1"), headers=FHIR)
    r = await client.put(f"Patient?identifier={MRN}|B1", json=patient("B1"), headers=FHIR)
    assert r.status_code == 412


async def test_conditional_delete(client: httpx.AsyncClient) -> None:
    r = await client.post("Patient", json=patient("C1"), headers=FHIR)
    id = r.json()["id"]
    r = await client.delete(f"Patient?identifier={MRN}|C1")
    assert r.status_code == 204
    assert (await client.get(f"Patient/{id}")).status_code == 410
    assert (await client.delete(f"Patient?identifier={MRN}|C1")).status_code == 204
    await client.post("Patient", json=patient("C2"), headers=FHIR)
    await client.post("Patient", json=patient("C2"), headers=FHIR)
    assert (await client.delete(f"Patient?identifier={MRN}|C2")).status_code == 412


async def test_search_compartment_and_chain(client: httpx.AsyncClient) -> None:
    p = (await client.put("Patient/s1", json={**patient("S1"), "id": "s1"}, headers=FHIR)).json()
    for i in range(3):
        obs = {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": f"Patient/{p['id']}"},
            "valueQuantity": {"value": 60 + i, "unit": "/min"},
        }
        assert (await client.post("Observation", json=obs, headers=FHIR)).status_code == 201
    other = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": "Patient/nobody"},
    }
    await client.post("Observation", json=other, headers=FHIR)
    b = (await client.get("Patient/s1/Observation")).json()
    assert b["type"] == "searchset" and len(b["entry"]) == 3
    b = (await client.get("Observation", params={"subject:Patient.identifier": f"{MRN}|S1"})).json()
    assert len(b["entry"]) == 3
    b = (await client.get("Observation", params={"subject": "Patient/s1", "_count": "2"})).json()
    assert len(b["entry"]) == 2
    nxt = next(link["url"] for link in b["link"] if link["relation"] == "next")
    b2 = (await client.get(nxt)).json()
    assert len(b2["entry"]) == 1
    b = (await client.get("Patient", params={"_has:Observation:subject:code": "8867-4"})).json()
    assert [e["resource"]["id"] for e in b["entry"]] == ["s1"]
    b = (await client.post("Observation/_search", data={"subject": "Patient/s1"})).json()
    assert len(b["entry"]) == 3
    r = await client.get("Observation", params={"bogus": "1"}, headers={"Prefer": "handling=strict"})
    assert r.status_code == 400
    b = (await client.get("Observation", params={"bogus": "1", "subject": "Patient/s1"})).json()
    assert [e["search"]["mode"] for e in b["entry"]].count("outcome") == 1


async def test_transaction_conditional_reference(client: httpx.AsyncClient) -> None:
    await client.post("Patient", json=patient("T1"), headers=FHIR)
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {
                    "resourceType": "Encounter",
                    "status": "finished",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                    "subject": {"reference": f"Patient?identifier={MRN}|T1"},
                },
                "request": {"method": "POST", "url": "Encounter"},
            },
            {
                "resource": patient("T2"),
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={MRN}|T1"},
            },
        ],
    }
    r = await client.post("", json=bundle, headers=FHIR)
    assert r.status_code == 200, r.text
    out = r.json()["entry"]
    assert out[1]["response"]["status"] == "200 OK"  # matched, nothing created
    enc = out[0]["resource"]
    found = (await client.get("Patient", params={"identifier": f"{MRN}|T1"})).json()
    assert enc["subject"]["reference"] == f"Patient/{found['entry'][0]['resource']['id']}"
    assert (await client.get("Patient", params={"identifier": f"{MRN}|T2"})).json().get("total", 0) == 0 or \
        "entry" not in (await client.get("Patient", params={"identifier": f"{MRN}|T2"})).json()


async def test_custom_search_parameter_indexes_existing_data(client: httpx.AsyncClient) -> None:
    await client.post("Patient", json=patient("X1", birthDate="1980-05-01"), headers=FHIR)
    sp = {
        "resourceType": "SearchParameter",
        "url": "http://rehabfhir.org/fhir/SearchParameter/patient-mrn-value",
        "name": "mrnValue",
        "status": "active",
        "description": "The value of a patient's identifiers",
        "code": "mrn-value",
        "base": ["Patient"],
        "type": "token",
        "expression": "Patient.identifier.value",
    }
    r = await client.post("SearchParameter", json=sp, headers=FHIR)
    assert r.status_code == 201, r.text
    found = (await client.get("Patient", params={"mrn-value": "X1"})).json()
    assert [e["resource"]["identifier"][0]["value"] for e in found["entry"]] == ["X1"]
    await client.post("Patient", json=patient("X2"), headers=FHIR)
    found = (await client.get("Patient", params={"mrn-value": "X2"})).json()
    assert len(found["entry"]) == 1


async def test_conditional_criteria_with_absolute_reference_on_this_server(
    client: httpx.AsyncClient,
) -> None:
    await client.put("Patient/abs", json={**patient("ABS"), "id": "abs"}, headers=FHIR)
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": "Patient/abs"},
    }
    await client.post("Observation", json=obs, headers=FHIR)
    criteria = "subject=http://test/fhir/Patient/abs"
    r = await client.post("Observation", json=obs, headers={**FHIR, "If-None-Exist": criteria})
    assert r.status_code == 200  # found the existing one: the absolute URL is local
