"""The ``fhirpy`` async client against the server over real HTTP.

fhirpy sends bodies as ``application/json`` (not ``application/fhir+json``) and turns
every ``{"reference": ...}`` it receives into a reference object it can resolve.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fhirpy import AsyncFHIRClient
from fhirpy.base.exceptions import OperationOutcome, ResourceNotFound

from tests.conftest import LiveServer


@pytest.fixture
async def fhir(live_server: LiveServer) -> AsyncIterator[AsyncFHIRClient]:
    yield AsyncFHIRClient(live_server.base_url)


def _patient(fhir: AsyncFHIRClient, family: str, **extra: Any) -> Any:
    fields: dict[str, Any] = {
        "name": [{"family": family, "given": ["Emmy"]}],
        "birthDate": "1882-03-23",
        "identifier": [{"system": "urn:example:mrn", "value": f"mrn-{family}"}],
    }
    return fhir.resource("Patient", **{**fields, **extra})


async def test_create_read_update_delete(fhir: AsyncFHIRClient) -> None:
    patient = _patient(fhir, "Noether")
    await patient.save()  # POST, then the resource takes the server's representation
    pid = patient.id
    assert pid and patient["meta"]["versionId"] == "1"
    assert patient["meta"]["lastUpdated"].endswith("Z")

    fetched = await fhir.reference("Patient", pid).to_resource()
    assert fetched.id == pid
    assert fetched["name"][0]["family"] == "Noether"
    assert fetched["birthDate"] == "1882-03-23"
    assert fetched["meta"]["versionId"] == "1"

    fetched["gender"] = "female"
    fetched["name"][0]["given"] = ["Amalie", "Emmy"]
    await fetched.save()  # PUT
    assert fetched.id == pid and fetched["meta"]["versionId"] == "2"

    again = await fhir.get("Patient", pid)
    assert again["gender"] == "female" and again["name"][0]["given"] == ["Amalie", "Emmy"]
    assert again["meta"]["versionId"] == "2"
    v1 = await fhir.execute(f"Patient/{pid}/_history/1", method="get")
    assert "gender" not in v1 and v1["meta"]["versionId"] == "1"

    await fetched.delete()
    with pytest.raises(ResourceNotFound):  # 410 Gone
        await fhir.reference("Patient", pid).to_resource()


async def test_references_resolve_through_the_client(fhir: AsyncFHIRClient) -> None:
    patient = _patient(fhir, "Referenced")
    await patient.save()
    obs = fhir.resource(
        "Observation",
        status="final",
        code={"coding": [{"system": "http://loinc.org", "code": "8867-4"}], "text": "heart rate"},
        subject=patient.to_reference(),
        valueQuantity={"value": 64, "unit": "/min", "system": "http://unitsofmeasure.org",
                       "code": "/min"},
    )
    await obs.save()
    assert obs.id and obs["meta"]["versionId"] == "1"

    read = await fhir.reference("Observation", obs.id).to_resource()
    assert read["valueQuantity"]["value"] == 64
    subject = read["subject"]
    assert subject.reference == f"Patient/{patient.id}"
    resolved = await subject.to_resource()
    assert resolved.id == patient.id and resolved["name"][0]["family"] == "Referenced"

    read["status"] = "amended"
    await read.update()
    assert read["meta"]["versionId"] == "2"
    assert (await fhir.get("Observation", obs.id))["status"] == "amended"


async def test_history_paging_with_execute(fhir: AsyncFHIRClient) -> None:
    patient = _patient(fhir, "Paged")
    await patient.save()
    pid = patient.id
    for n in range(2, 6):
        patient["multipleBirthInteger"] = n
        await patient.save()
        assert patient["meta"]["versionId"] == str(n)

    versions: list[str] = []
    page = await fhir.execute(f"Patient/{pid}/_history", method="get", params={"_count": 2})
    pages = 1
    while True:
        assert page["resourceType"] == "Bundle" and page["type"] == "history"
        for entry in page.get("entry", []):
            res = entry["resource"]
            assert res["id"] == pid
            if res["meta"]["versionId"] != "1":
                assert res["multipleBirthInteger"] == int(res["meta"]["versionId"])
            versions.append(res["meta"]["versionId"])
        nexts = [link["url"] for link in page.get("link", []) if link["relation"] == "next"]
        if not nexts:
            break
        page = await fhir.execute(nexts[0], method="get")  # absolute url on the same base
        pages += 1
    assert versions == ["5", "4", "3", "2", "1"]
    assert pages == 3


async def test_errors_surface_as_client_exceptions(fhir: AsyncFHIRClient) -> None:
    with pytest.raises(ResourceNotFound):
        await fhir.get("Patient", "no-such-patient")
    bad = fhir.resource("Patient", gender="not-a-gender")
    with pytest.raises(OperationOutcome) as exc:
        await bad.save()
    outcome = exc.value.resource
    assert outcome["resourceType"] == "OperationOutcome"
    issue = outcome["issue"][0]
    assert issue["severity"] in ("error", "fatal") and issue["code"] != "exception"
    where = " ".join([issue.get("diagnostics", ""), *issue.get("expression", [])])
    assert "gender" in where, outcome


async def test_search_paging_and_references(fhir: AsyncFHIRClient) -> None:
    family = f"Searchable{uuid.uuid4().hex[:10]}"
    made = []
    for i, born in enumerate(("1950-01-01", "1970-06-15", "1990-12-31")):
        p = _patient(fhir, family, birthDate=born, gender=("female", "male", "female")[i])
        p["identifier"] = [{"system": "urn:example:mrn", "value": f"{family}-{i}"}]
        await p.save()
        made.append(p)
    other = _patient(fhir, f"{family}x")  # a different family: must not match exactly
    await other.save()

    found = await fhir.resources("Patient").search(family=family).fetch_all()
    # string search matches the start of the name: the other family is found too
    assert sorted(p.id for p in found) == sorted(p.id for p in [*made, other])
    exact = await fhir.resources("Patient").search(**{"family:exact": family}).fetch_all()
    assert sorted(p.id for p in exact) == sorted(p.id for p in made)

    # fetch_all follows the Bundle's next links page by page
    paged = (
        await fhir.resources("Patient").search(**{"family:exact": family}).limit(1).fetch_all()
    )
    assert sorted(p.id for p in paged) == sorted(p.id for p in made)

    newest_first = (
        await fhir.resources("Patient")
        .search(**{"family:exact": family})
        .sort("-birthdate")
        .fetch_all()
    )
    assert [p["birthDate"] for p in newest_first] == ["1990-12-31", "1970-06-15", "1950-01-01"]

    women = (
        await fhir.resources("Patient").search(**{"family:exact": family}, gender="female").fetch()
    )
    assert sorted(p.id for p in women) == sorted([made[0].id, made[2].id])

    one = await fhir.resources("Patient").search(identifier=f"urn:example:mrn|{family}-1").get()
    assert one.id == made[1].id and one["birthDate"] == "1970-06-15"
    assert await fhir.resources("Patient").search(identifier="urn:example:mrn|nobody").first() is None

    obs = fhir.resource(
        "Observation",
        status="final",
        code={"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        subject=made[1].to_reference(),
        valueQuantity={"value": 70, "unit": "/min", "system": "http://unitsofmeasure.org",
                       "code": "/min"},
    )
    await obs.save()
    by_subject = (
        await fhir.resources("Observation").search(subject=f"Patient/{made[1].id}").fetch_all()
    )
    assert [o.id for o in by_subject] == [obs.id]
    resolved = await by_subject[0]["subject"].to_resource()
    assert resolved.id == made[1].id
