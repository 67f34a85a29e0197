"""batch and transaction Bundles (http.html#transaction)."""

from __future__ import annotations

from typing import Any

import httpx

FHIR = {"Content-Type": "application/fhir+json"}


def tx(entries: list[dict[str, Any]], kind: str = "transaction") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def post(full_url: str, resource: dict[str, Any], **request: Any) -> dict[str, Any]:
    return {
        "fullUrl": full_url,
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"], **request},
    }


async def test_transaction_resolves_urn_uuid_references(client: httpx.AsyncClient) -> None:
    pat = "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"
    bundle = tx(
        [
            post(
                "urn:uuid:88f151c0-a954-468a-88bd-5ae15c08e059",
                {
                    "resourceType": "Encounter",
                    "status": "finished",
                    "class": {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                        "code": "AMB",
                    },
                    "subject": {"reference": pat},
                },
            ),
            post(pat, {"resourceType": "Patient", "name": [{"family": "Hopper"}]}),
            {
                "fullUrl": "http://test/fhir/Practitioner/pr1",
                "resource": {"resourceType": "Practitioner", "id": "pr1"},
                "request": {"method": "PUT", "url": "Practitioner/pr1"},
            },
        ]
    )
    r = await client.post("", json=tx(bundle["entry"]), headers=FHIR)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in out["entry"]]
    assert statuses == ["201 Created", "201 Created", "201 Created"]
    enc_loc = out["entry"][0]["response"]["location"]
    pat_loc = out["entry"][1]["response"]["location"]
    assert "/Encounter/" in enc_loc and "/Patient/" in pat_loc  # request order kept
    patient_id = pat_loc.split("/Patient/")[1].split("/")[0]
    enc = (await client.get(enc_loc.split("/fhir/")[1].split("/_history")[0])).json()
    assert enc["subject"]["reference"] == f"Patient/{patient_id}"


async def test_transaction_is_all_or_nothing(client: httpx.AsyncClient) -> None:
    bundle = tx(
        [
            post(
                "urn:uuid:aaaaaaaa-0000-0000-0000-000000000001",
                {"resourceType": "Patient", "id": "x"},
            ),
            {
                "resource": {"resourceType": "Patient", "id": "t2", "gender": "banana"},
                "request": {"method": "PUT", "url": "Patient/t2"},
            },
        ]
    )
    before = (await client.get("_history")).json()
    r = await client.post("", json=bundle, headers=FHIR)
    assert r.status_code == 400
    text = " ".join(i["diagnostics"] for i in r.json()["issue"])
    assert "Bundle.entry[1]" in text
    after = (await client.get("_history")).json()
    assert after.get("entry") == before.get("entry")
    assert (await client.get("Patient/t2")).status_code == 404


async def test_transaction_processing_order(client: httpx.AsyncClient) -> None:
    await client.put("Patient/o1", json={"resourceType": "Patient", "id": "o1"}, headers=FHIR)
    # GET runs after the PUT, DELETE runs before it: order in the Bundle does not matter
    bundle = tx(
        [
            {"request": {"method": "GET", "url": "Patient/o1"}},
            {
                "resource": {"resourceType": "Patient", "id": "o1", "gender": "other"},
                "request": {"method": "PUT", "url": "Patient/o1"},
            },
            {"request": {"method": "DELETE", "url": "Patient/o2"}},
        ]
    )
    r = await client.post("", json=bundle, headers=FHIR)
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    assert entries[0]["resource"]["gender"] == "other"
    assert entries[1]["response"]["status"] == "200 OK"
    assert entries[2]["response"]["status"] == "204 No Content"


async def test_transaction_rejects_same_resource_twice(client: httpx.AsyncClient) -> None:
    entry = {
        "resource": {"resourceType": "Patient", "id": "dup"},
        "request": {"method": "PUT", "url": "Patient/dup"},
    }
    r = await client.post("", json=tx([entry, entry]), headers=FHIR)
    assert r.status_code == 400
    assert (await client.get("Patient/dup")).status_code == 404


async def test_transaction_unresolvable_reference(client: httpx.AsyncClient) -> None:
    bundle = tx(
        [
            post(
                "urn:uuid:aaaaaaaa-0000-0000-0000-000000000009",
                {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "x"},
                    "subject": {"reference": "urn:uuid:aaaaaaaa-0000-0000-0000-00000000000f"},
                },
            )
        ]
    )
    r = await client.post("", json=bundle, headers=FHIR)
    assert r.status_code == 404


async def test_batch_entries_are_independent(client: httpx.AsyncClient) -> None:
    bundle = tx(
        [
            {
                "resource": {"resourceType": "Patient", "id": "b1"},
                "request": {"method": "PUT", "url": "Patient/b1"},
            },
            {
                "resource": {"resourceType": "Patient", "id": "b2", "gender": "banana"},
                "request": {"method": "PUT", "url": "Patient/b2"},
            },
            {"request": {"method": "GET", "url": "Patient/missing"}},
            {"request": {"method": "GET", "url": "Banana/1"}},
        ],
        kind="batch",
    )
    r = await client.post("", json=bundle, headers=FHIR)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "batch-response"
    statuses = [e["response"]["status"].split()[0] for e in out["entry"]]
    assert statuses == ["201", "400", "404", "404"]
    assert out["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert (await client.get("Patient/b1")).status_code == 200


async def test_bundle_shape_errors(client: httpx.AsyncClient) -> None:
    r = await client.post("", json={"resourceType": "Bundle", "type": "collection"}, headers=FHIR)
    assert r.status_code == 400
    r = await client.post("", json={"resourceType": "Patient"}, headers=FHIR)
    assert r.status_code == 400
    r = await client.post("", json=tx([{"resource": {"resourceType": "Patient"}}]), headers=FHIR)
    assert r.status_code == 400
    r = await client.post(
        "", json=tx([{"request": {"method": "TRACE", "url": "Patient"}}]), headers=FHIR
    )
    assert r.status_code == 400


async def test_empty_transaction(client: httpx.AsyncClient) -> None:
    r = await client.post("", json=tx([]), headers=FHIR)
    assert r.status_code == 200 and r.json()["type"] == "transaction-response"
