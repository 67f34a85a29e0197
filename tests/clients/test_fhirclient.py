"""The SMART on FHIR Python client (PyPI ``fhirclient``) against the server over real HTTP.

fhirclient parses every response with its generated R4 models in strict mode: an
unknown element, a wrong type or a missing required element raises, so parsing a
response here is a schema check of what the server sends.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from fhirclient import client
from fhirclient.models import bundle as fbundle
from fhirclient.models import capabilitystatement as fcapability
from fhirclient.models import observation as fobservation
from fhirclient.models import patient as fpatient

from tests.conftest import LiveServer


@pytest.fixture
def smart(live_server: LiveServer) -> Iterator[client.FHIRClient]:
    c = client.FHIRClient(settings={"app_id": "rehab-tests", "api_base": live_server.base_url})
    yield c
    c.server.session.close()


def _new_patient(family: str) -> fpatient.Patient:
    return fpatient.Patient(
        {
            "name": [{"family": family, "given": ["Marie", "S."]}],
            "gender": "female",
            "birthDate": "1867-11-07",
            "identifier": [{"system": "urn:example:mrn", "value": f"mrn-{family}"}],
        }
    )


def _create(smart: client.FHIRClient, model: Any) -> Any:
    """Create with the model; the response body is parsed back into the same model class."""
    assert model.id is None
    body = model.create(smart.server)
    assert body is not None, "the server returned no representation"
    return type(model)(body)  # strict parse


def test_prepare_parses_the_capability_statement(smart: client.FHIRClient) -> None:
    assert smart.prepare() is True  # no security section: ready without authorisation
    cs = smart.server.capabilityStatement
    assert isinstance(cs, fcapability.CapabilityStatement)
    assert cs.fhirVersion == "4.0.1"
    assert cs.kind == "instance"
    assert "application/fhir+json" in cs.format
    rest = cs.rest[0]
    assert rest.mode == "server"
    by_type = {r.type: r for r in rest.resource}
    assert {"Patient", "Observation", "Encounter"} <= by_type.keys()
    codes = {i.code for i in by_type["Patient"].interaction}
    assert {"read", "vread", "update", "delete", "create", "history-instance"} <= codes
    assert "transaction" in {i.code for i in rest.interaction}
    assert by_type["Patient"].versioning == "versioned-update"


def test_patient_create_read_update_delete(smart: client.FHIRClient) -> None:
    smart.prepare()
    server = smart.server
    created = _create(smart, _new_patient("Curie"))
    pid = created.id
    assert pid and created.meta.versionId == "1"
    assert created.meta.lastUpdated is not None

    read = fpatient.Patient.read(pid, server)
    assert read.id == pid
    assert read.meta.versionId == "1"
    assert read.name[0].family == "Curie"
    assert read.name[0].given == ["Marie", "S."]
    assert read.birthDate.isostring == "1867-11-07"
    assert read.identifier[0].value == "mrn-Curie"

    read.gender = "other"
    read.name[0].family = "Skłodowska-Curie"
    updated = fpatient.Patient(read.update())
    assert updated.id == pid and updated.meta.versionId == "2"

    again = fpatient.Patient.read(pid, server)
    assert again.meta.versionId == "2"
    assert again.gender == "other"
    assert again.name[0].family == "Skłodowska-Curie"
    # the old version is still there
    v1 = fpatient.Patient.read_from(f"Patient/{pid}/_history/1", server)
    assert v1.gender == "female" and v1.name[0].family == "Curie"

    assert again.delete() is None  # 204, no body
    with pytest.raises(requests.HTTPError) as exc:
        fpatient.Patient.read(pid, server)
    assert exc.value.response.status_code == 410


def test_observation_round_trip(smart: client.FHIRClient) -> None:
    smart.prepare()
    server = smart.server
    patient = _create(smart, _new_patient("Observed"))
    obs = fobservation.Observation(
        {
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
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}], "text": "weight"},
            "subject": {"reference": f"Patient/{patient.id}"},
            "effectiveDateTime": "2024-03-01T10:00:00+01:00",
            "valueQuantity": {
                "value": 72.5,
                "unit": "kg",
                "system": "http://unitsofmeasure.org",
                "code": "kg",
            },
        }
    )
    created = _create(smart, obs)
    oid = created.id
    assert created.meta.versionId == "1"

    read = fobservation.Observation.read(oid, server)
    assert read.status == "final"
    assert read.subject.reference == f"Patient/{patient.id}"
    assert read.valueQuantity.value == 72.5 and read.valueQuantity.code == "kg"
    assert read.code.coding[0].code == "29463-7"
    assert read.effectiveDateTime.isostring == "2024-03-01T10:00:00+01:00"

    read.status = "amended"
    read.valueQuantity.value = 71.9
    updated = fobservation.Observation(read.update())
    assert updated.meta.versionId == "2"
    again = fobservation.Observation.read(oid, server)
    assert again.status == "amended" and again.valueQuantity.value == 71.9

    again.delete()
    with pytest.raises(requests.HTTPError) as exc:
        fobservation.Observation.read(oid, server)
    assert exc.value.response.status_code == 410


def test_history_paging_with_bundle_model(smart: client.FHIRClient) -> None:
    smart.prepare()
    server = smart.server
    patient = _create(smart, _new_patient("Historic"))
    pid = patient.id
    versions = 7
    for n in range(2, versions + 1):
        patient.multipleBirthInteger = n
        out = fpatient.Patient(patient.update(server))
        assert out.meta.versionId == str(n)
    patient.delete(server)  # version 8: a deletion

    seen: list[str] = []
    deleted_seen = 0
    url: str | None = f"Patient/{pid}/_history?_count=3"
    pages = 0
    while url is not None:
        page = fbundle.Bundle(server.request_json(url))  # strict parse
        pages += 1
        assert page.type == "history"
        for entry in page.entry or []:
            assert entry.fullUrl.endswith(f"/Patient/{pid}")
            if entry.resource is None:
                assert entry.request.method == "DELETE"
                deleted_seen += 1
                seen.append(entry.response.etag)
                continue
            res = entry.resource
            assert isinstance(res, fpatient.Patient)  # resolved to the model class
            assert res.id == pid
            if res.meta.versionId != "1":
                assert res.multipleBirthInteger == int(res.meta.versionId)
            assert entry.response.etag == f'W/"{res.meta.versionId}"'
            seen.append(res.meta.versionId)
        nexts = [link.url for link in page.link or [] if link.relation == "next"]
        url = nexts[0] if nexts else None
    assert pages == 3
    assert deleted_seen == 1
    assert seen == ['W/"8"', "7", "6", "5", "4", "3", "2", "1"]  # newest first, no gaps


def test_search_with_models_paging_and_revinclude(smart: client.FHIRClient) -> None:
    smart.prepare()
    server = smart.server
    family = f"Findable{uuid.uuid4().hex[:10]}"
    made = []
    for i, born in enumerate(("1950-01-01", "1970-06-15", "1990-12-31")):
        p = _new_patient(family)
        p.identifier[0].value = f"{family}-{i}"
        p.birthDate = fpatient.Patient({"birthDate": born}).birthDate
        made.append(_create(smart, p))
    obs = _create(
        smart,
        fobservation.Observation(
            {
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": f"Patient/{made[0].id}"},
                "valueQuantity": {"value": 61, "unit": "/min"},
            }
        ),
    )

    search = fpatient.Patient.where(struct={"family": family, "_count": "2"})
    pages = list(search.perform_iter(server))  # follows the next links
    assert len(pages) == 2
    for page in pages:
        assert isinstance(page, fbundle.Bundle) and page.type == "searchset"
    entries = [e for page in pages for e in page.entry or []]
    assert all(e.search.mode == "match" for e in entries)
    assert sorted(e.resource.id for e in entries) == sorted(p.id for p in made)
    assert all(isinstance(e.resource, fpatient.Patient) for e in entries)

    by_date = fpatient.Patient.where(struct={"family": family, "birthdate": "gt1960-01-01"})
    assert sorted(r.id for r in by_date.perform_resources_iter(server)) == sorted(
        [made[1].id, made[2].id]
    )

    with_obs = fpatient.Patient.where(
        struct={"identifier": f"urn:example:mrn|{family}-0"}
    ).include("subject", fobservation.Observation, reverse=True)
    found = list(with_obs.perform_resources_iter(server))
    assert sorted((type(r).__name__, r.id) for r in found) == sorted(
        [("Patient", made[0].id), ("Observation", obs.id)]
    )
