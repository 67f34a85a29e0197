"""Patient/[id]/$everything and Patient/$everything: on the demo clinic (examples/) and
on small hand-made records; paging, filters, authorization and audit.

The tests take the ``client``/``store`` fixtures only, so that
``tests/storage/test_mongo_everything.py`` runs them on the MongoDB store as well."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_server.auth.access import resource_in_patient_compartment
from fhir_server.operations import everything as ev
from fhir_server.search import registry as search_registry
from fhir_server.search.parser import parse
from fhir_server.search.query import IdCond, SearchQuery, SearchResult
from fhir_server.storage.port import Store
from tests.auth.test_wiring import Env, open_env

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo-clinic.json"
FHIR = {"Content-Type": "application/fhir+json"}
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
REFERENCED = {
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "Location",
    "Medication",
    "Device",
}
# What Ada's record refers to, directly or through her therapists' roles
ADA_REFERENCED = {
    "Organization/clinic",
    "Organization/medicare",
    "Location/loc-riverside",
    "Practitioner/md-garcia",
    "Practitioner/pt-jones",
    "Practitioner/pta-lee",
    "PractitionerRole/role-pt-jones",
    "PractitionerRole/role-pta-lee",
}


def demo_resources() -> list[dict[str, Any]]:
    bundle = json.loads(DEMO.read_text())
    return [e["resource"] for e in bundle["entry"]]


def key(resource: dict[str, Any]) -> str:
    return f"{resource['resourceType']}/{resource['id']}"


def compartment_of(patient: str, resources: list[dict[str, Any]]) -> set[str]:
    """The patient's compartment, decided on each resource by the compartment
    parameters' FHIRPath expressions (not by the search index)."""
    return {key(r) for r in resources if resource_in_patient_compartment(r, patient)}


def entries(bundle: dict[str, Any], mode: str) -> list[str]:
    return [key(e["resource"]) for e in bundle.get("entry", ()) if e["search"]["mode"] == mode]


def next_url(bundle: dict[str, Any]) -> str | None:
    return next((lk["url"] for lk in bundle["link"] if lk["relation"] == "next"), None)


async def all_pages(
    client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    pages = []
    next_: str | None = url
    while next_ is not None:
        r = await client.get(next_, headers=headers)
        assert r.status_code == 200, r.text
        pages.append(r.json())
        next_ = next_url(pages[-1])
        assert len(pages) < 200, "the next links do not end"
    return pages


async def put_all(
    client: httpx.AsyncClient,
    resources: list[dict[str, Any]],
    headers: dict[str, str] | None = None,
) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": r, "request": {"method": "PUT", "url": key(r)}} for r in resources],
    }
    r = await client.post("", json=bundle, headers={**FHIR, **(headers or {})})
    assert r.status_code == 200, r.text


@pytest.fixture
async def demo(client: httpx.AsyncClient) -> httpx.AsyncClient:
    r = await client.post("", json=json.loads(DEMO.read_text()), headers=FHIR)
    assert r.status_code == 200, r.text
    return client


# --- small records ----------------------------------------------------------------------------


def patient(id: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": id, "name": [{"family": id}], **extra}


def encounter(
    id: str, pid: str, start: str, end: str | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": id,
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": f"Patient/{pid}"},
        "period": {"start": start, "end": end or start},
        **extra,
    }


def observation(id: str, pid: str, when: str | None = None, **extra: Any) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": id,
        "status": "final",
        "code": {"text": "gait speed"},
        "subject": {"reference": f"Patient/{pid}"},
        **extra,
    }
    if when:
        obs["effectiveDateTime"] = when
    return obs


def condition(id: str, pid: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": id,
        "code": {"text": "knee pain"},
        "subject": {"reference": f"Patient/{pid}"},
        **extra,
    }


def coverage(id: str, pid: str) -> dict[str, Any]:
    return {
        "resourceType": "Coverage",
        "id": id,
        "status": "active",
        "beneficiary": {"reference": f"Patient/{pid}"},
        "payor": [{"reference": "Organization/payer"}],
    }


def small_record() -> list[dict[str, Any]]:
    """Patients p1 and p2; p1's record refers to practitioners, an organization, a
    medication and devices (one of them p2's)."""
    return [
        {"resourceType": "Organization", "id": "payer", "name": "Payer"},
        {"resourceType": "Organization", "id": "other-org", "name": "Not referred to by p1"},
        {"resourceType": "Practitioner", "id": "doc", "name": [{"family": "Doc"}]},
        {"resourceType": "Practitioner", "id": "doc2", "name": [{"family": "Doc Two"}]},
        {
            "resourceType": "PractitionerRole",
            "id": "doc2-role",
            "practitioner": {"reference": "Practitioner/doc2"},
            "organization": {"reference": "Organization/payer"},
        },
        {"resourceType": "Medication", "id": "med", "code": {"text": "ibuprofen"}},
        {"resourceType": "Device", "id": "cane", "type": {"text": "cane"}},
        {
            "resourceType": "Device",
            "id": "p2-walker",
            "type": {"text": "walker"},
            "patient": {"reference": "Patient/p2"},
        },
        patient("p1", generalPractitioner=[{"reference": "Practitioner/doc"}]),
        patient("p2", generalPractitioner=[{"reference": "Practitioner/doc"}]),
        encounter(
            "e1",
            "p1",
            "2024-01-10",
            participant=[{"individual": {"reference": "PractitionerRole/doc2-role"}}],
        ),
        observation(
            "o1",
            "p1",
            "2024-02-15",
            performer=[{"reference": "Practitioner/doc"}],
            device={"reference": "Device/cane"},
        ),
        observation("o2", "p1", device={"reference": "Device/p2-walker"}),
        {
            "resourceType": "MedicationRequest",
            "id": "mr1",
            "status": "active",
            "intent": "order",
            "medicationReference": {"reference": "Medication/med"},
            "subject": {"reference": "Patient/p1"},
            "authoredOn": "2024-02-01",
        },
        coverage("cov1", "p1"),
        observation("o3", "p2", "2024-02-15", performer=[{"reference": "Practitioner/doc"}]),
        encounter("e3", "p2", "2024-01-10"),
    ]


@pytest.fixture
async def small(client: httpx.AsyncClient) -> httpx.AsyncClient:
    await put_all(client, small_record())
    return client


# --- the compartment --------------------------------------------------------------------------


async def test_everything_is_the_patients_compartment(demo: httpx.AsyncClient) -> None:
    resources = demo_resources()
    patients = [r["id"] for r in resources if r["resourceType"] == "Patient"]
    assert len(patients) == 5
    for pid in patients:
        r = await demo.get(f"Patient/{pid}/$everything")
        assert r.status_code == 200, r.text
        bundle = r.json()
        assert bundle["type"] == "searchset"
        matches = entries(bundle, "match")
        assert matches[0] == f"Patient/{pid}"
        assert Counter(matches) == Counter(compartment_of(pid, resources))
        assert bundle["total"] == len(matches)
        assert next_url(bundle) is None
        others = set().union(*(compartment_of(p, resources) for p in patients if p != pid))
        assert not set(matches) & others
        for e in bundle["entry"]:
            assert e["fullUrl"] == f"http://test/fhir/{key(e['resource'])}"


async def test_referenced_resources_are_included_once(demo: httpx.AsyncClient) -> None:
    bundle = (await demo.get("Patient/pat-ada/$everything")).json()
    included = entries(bundle, "include")
    assert sorted(included) == sorted(ADA_REFERENCED)  # each once, and no one else's
    for e in bundle["entry"]:
        assert (e["search"]["mode"] == "include") == (e["resource"]["resourceType"] in REFERENCED)


async def test_referenced_medications_and_devices(small: httpx.AsyncClient) -> None:
    bundle = (await small.get("Patient/p1/$everything")).json()
    assert set(entries(bundle, "match")) == {
        "Patient/p1",
        "Encounter/e1",
        "Observation/o1",
        "Observation/o2",
        "MedicationRequest/mr1",
        "Coverage/cov1",
    }
    # p2's walker is p2's device; other-org is not referred to
    included = entries(bundle, "include")
    assert len(included) == len(set(included))
    assert set(included) == {
        "Practitioner/doc",
        "Practitioner/doc2",
        "PractitionerRole/doc2-role",
        "Organization/payer",
        "Medication/med",
        "Device/cane",
    }


async def test_linked_patient_is_in_the_compartment(small: httpx.AsyncClient) -> None:
    r = await small.put(
        "Patient/p1-dup",
        json=patient("p1-dup", link=[{"other": {"reference": "Patient/p1"}, "type": "seealso"}]),
        headers=FHIR,
    )
    assert r.status_code == 201
    bundle = (await small.get("Patient/p1/$everything?_type=Patient")).json()
    assert entries(bundle, "match") == ["Patient/p1", "Patient/p1-dup"]


# --- parameters -------------------------------------------------------------------------------


async def test_type_filter(demo: httpx.AsyncClient) -> None:
    r = await demo.get("Patient/pat-ada/$everything", params={"_type": "Encounter,Practitioner"})
    bundle = r.json()
    encounters = {k for k in compartment_of("pat-ada", demo_resources()) if k.startswith("Enc")}
    assert len(encounters) == 4
    assert set(entries(bundle, "match")) == encounters
    # the practitioners the encounters refer to, and no roles, organizations ...
    included = entries(bundle, "include")
    assert included and all(k.startswith("Practitioner/") for k in included)
    assert set(included) < ADA_REFERENCED

    r = await demo.get(
        "Patient/pat-ada/$everything", params=[("_type", "Patient"), ("_type", "Coverage")]
    )
    assert entries(r.json(), "match") == ["Patient/pat-ada", "Coverage/cov-ada"]
    assert entries(r.json(), "include") == []

    r = await demo.get("Patient/pat-ada/$everything", params={"_type": "Practitioner"})
    assert r.status_code == 200 and "entry" not in r.json()


async def test_since(small: httpx.AsyncClient) -> None:
    before = (await small.get("Patient/p1/$everything")).json()
    assert len(entries(before, "match")) == 6
    changed = observation("o1", "p1", "2024-02-15", note=[{"text": "again"}])
    changed["performer"] = [{"reference": "Practitioner/doc"}]
    r = await small.put("Observation/o1", json=changed, headers=FHIR)
    assert r.status_code == 200
    since = r.json()["meta"]["lastUpdated"]
    r = await small.get("Patient/p1/$everything", params={"_since": since})
    assert entries(r.json(), "match") == ["Observation/o1"]
    assert entries(r.json(), "include") == []  # its practitioner was not updated since
    r = await small.put("Practitioner/doc", json={"resourceType": "Practitioner", "id": "doc"})
    r = await small.get("Patient/p1/$everything", params={"_since": since})
    assert entries(r.json(), "include") == ["Practitioner/doc"]
    r = await small.get("Patient/p1/$everything", params={"_since": "2000-01-01T00:00:00Z"})
    assert sorted(entries(r.json(), "match")) == sorted(entries(before, "match"))
    r = await small.get("Patient/p1/$everything", params={"_since": "2999-01-01T00:00:00Z"})
    assert r.status_code == 200 and "entry" not in r.json()


async def test_start_and_end_are_care_dates(client: httpx.AsyncClient) -> None:
    await put_all(
        client,
        [
            patient("p"),
            coverage("cov", "p"),  # no care date: always there
            encounter("e-jan", "p", "2024-01-10"),
            encounter("e-span", "p", "2024-01-25", "2024-02-05"),
            encounter("e-mar", "p", "2024-03-10"),
            observation("o-feb", "p", "2024-02-15"),
            observation("o-undated", "p"),
            # a state: from onset to abatement
            condition(
                "c-old",
                "p",
                onsetDateTime="2010-05-01",
                abatementDateTime="2011-01-01",
                clinicalStatus={"coding": [{"system": CLINICAL, "code": "resolved"}]},
            ),
            condition("c-ongoing", "p", onsetDateTime="2023-06-01"),
            condition("c-undated", "p"),
            condition("c-later", "p", onsetDateTime="2024-03-01"),
            {"resourceType": "Organization", "id": "payer", "name": "Payer"},
            encounter("other", "q", "2024-02-10"),
        ],
    )

    async def matches(**params: str) -> set[str]:
        r = await client.get("Patient/p/$everything", params=params)
        assert r.status_code == 200, r.text
        return set(entries(r.json(), "match"))

    always = {"Patient/p", "Coverage/cov", "Condition/c-ongoing", "Condition/c-undated"}
    assert await matches(start="2024-02-01", end="2024-02-29") == always | {
        "Encounter/e-span",
        "Observation/o-feb",
    }
    assert await matches(start="2024-03-01") == always | {"Encounter/e-mar", "Condition/c-later"}
    assert await matches(end="2024-01-31") == always | {
        "Encounter/e-jan",
        "Encounter/e-span",
        "Condition/c-old",
    }
    assert await matches(start="2024-01-10", end="2024-01-10") == always | {"Encounter/e-jan"}
    assert len(await matches()) == 11


async def test_start_and_end_on_the_demo(demo: httpx.AsyncClient) -> None:
    r = await demo.get(
        "Patient/pat-ada/$everything", params={"start": "2026-10-07", "end": "2026-10-09"}
    )
    matches = set(entries(r.json(), "match"))
    assert {k for k in matches if k.startswith("Encounter/")} == {
        "Encounter/enc-ada-2",
        "Encounter/enc-ada-3",
    }
    procedures = {k for k in matches if k.startswith("Procedure/")}
    assert procedures and all(p.split("-")[2] in ("2", "3") for p in procedures)
    # the diagnoses treated then are still there
    assert {"Condition/cond-ada-knee", "Condition/cond-ada-gait"} <= matches
    assert "Patient/pat-ada" in matches and "Coverage/cov-ada" in matches


async def test_post_with_parameters(demo: httpx.AsyncClient) -> None:
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "_type", "valueString": "Encounter"},
            {"name": "start", "valueDate": "2026-10-07"},
            {"name": "_count", "valueInteger": 1},
        ],
    }
    r = await demo.post("Patient/pat-ada/$everything", json=body, headers=FHIR)
    assert r.status_code == 200, r.text
    bundle = r.json()
    assert entries(bundle, "match") == ["Encounter/enc-ada-2"]
    url = next_url(bundle)
    assert url is not None and "_type=Encounter" in url and "start=2026-10-07" in url
    pages = await all_pages(demo, url)
    assert [m for p in pages for m in entries(p, "match")] == [
        "Encounter/enc-ada-3",
        "Encounter/enc-ada-4",
    ]


@pytest.mark.parametrize(
    "query",
    [
        "_count=0",
        "_count=x",
        "start=yesterday",
        "_since=2024-13-01",
        "_type=Nonsense",
        "start=2024-02-01&end=2024-01-01",
        "_count=2&_count=3",
        "_cursor=bm90IGEgY3Vyc29y",
    ],
)
async def test_bad_parameters(demo: httpx.AsyncClient, query: str) -> None:
    r = await demo.get(f"Patient/pat-ada/$everything?{query}")
    assert r.status_code == 400, r.text
    assert r.json()["resourceType"] == "OperationOutcome"


async def test_unknown_or_deleted_patient(demo: httpx.AsyncClient) -> None:
    r = await demo.get("Patient/nobody/$everything")
    assert r.status_code == 404
    assert (await demo.delete("Patient/pat-barbara")).status_code in (200, 204)
    assert (await demo.get("Patient/pat-barbara/$everything")).status_code == 404
    bundle = (await demo.get("Patient/$everything")).json()
    assert "Patient/pat-barbara" not in entries(bundle, "match")
    assert (await demo.get("Observation/obs-ada-tug-1/$everything")).status_code == 404


# --- paging -----------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 3, 10])
async def test_paging_returns_everything_once(demo: httpx.AsyncClient, count: int) -> None:
    whole = (await demo.get("Patient/pat-ada/$everything")).json()
    pages = await all_pages(demo, f"Patient/pat-ada/$everything?_count={count}")
    matches = [m for p in pages for m in entries(p, "match")]
    included = [i for p in pages for i in entries(p, "include")]
    assert all(len(entries(p, "match")) <= count for p in pages)
    assert all(entries(p, "match") for p in pages)  # no empty page at the end
    assert matches == entries(whole, "match")  # same order, each once
    assert sorted(included) == sorted(ADA_REFERENCED)
    assert len(pages) == -(-len(matches) // count)
    assert "total" not in pages[0] and whole["total"] == len(matches)
    for p in pages:
        assert p["link"][0]["relation"] == "self"


async def test_type_level_pages_through_every_patient(demo: httpx.AsyncClient) -> None:
    resources = demo_resources()
    patients = [r["id"] for r in resources if r["resourceType"] == "Patient"]
    pages = await all_pages(demo, "Patient/$everything?_count=7")
    matches = [m for p in pages for m in entries(p, "match")]
    expected = [compartment_of(pid, resources) for pid in patients]
    assert Counter(matches) == Counter(k for c in expected for k in c)
    # one patient after the other, each starting with the Patient
    starts = [matches.index(f"Patient/{pid}") for pid in patients]
    assert starts == sorted(starts)
    included = [i for p in pages for i in entries(p, "include")]
    assert len(included) == len(set(included))
    assert set(included) >= ADA_REFERENCED
    whole = (await demo.get("Patient/$everything")).json()
    assert entries(whole, "match") == matches and whole["total"] == len(matches)


async def test_paging_through_big_types(client: httpx.AsyncClient) -> None:
    """Pages that end inside a type, at its end, and past the store's page size."""
    record = [patient("big")] + [observation(f"o{i}", "big", "2024-01-01") for i in range(25)]
    record += [encounter(f"e{i}", "big", "2024-01-01") for i in range(5)]
    await put_all(client, record)
    for count in (5, 6, 26, 31):
        pages = await all_pages(client, f"Patient/big/$everything?_count={count}")
        matches = [m for p in pages for m in entries(p, "match")]
        assert sorted(matches) == sorted(key(r) for r in record), count
        assert len(pages) == -(-31 // count), count


async def test_cursor_belongs_to_its_patient(demo: httpx.AsyncClient) -> None:
    bundle = (await demo.get("Patient/pat-ada/$everything?_count=2")).json()
    url = next_url(bundle)
    assert url is not None
    r = await demo.get(url.replace("/pat-ada/", "/pat-alan/"))
    assert r.status_code == 400


# --- conformance and cost ---------------------------------------------------------------------


async def test_capability_statement_lists_everything(client: httpx.AsyncClient) -> None:
    cs = (await client.get("metadata")).json()
    patient_ = next(r for r in cs["rest"][0]["resource"] if r["type"] == "Patient")
    ops = {o["name"]: o["definition"] for o in patient_.get("operation", ())}
    assert ops["everything"] == "http://hl7.org/fhir/OperationDefinition/Patient-everything"
    observation_ = next(r for r in cs["rest"][0]["resource"] if r["type"] == "Observation")
    assert "everything" not in {o["name"] for o in observation_.get("operation", ())}


def test_care_dates_are_date_parameters() -> None:
    registry = search_registry.default_registry()
    types = ev.compartment_types()
    assert types[0] == "Patient" and len(types) > 50
    assert {"Encounter", "Observation", "Procedure", "Coverage", "Condition"} <= set(types)
    for rtype, code in ev.CARE_DATES.items():
        assert rtype in types, rtype
        assert ev.care_date(rtype) == code, rtype
    for rtype, codes in ev.CARE_PERIODS.items():
        for code in codes:
            param = registry.get(rtype, code)
            assert param is not None and param.type == "date", (rtype, code)
    assert ev.care_date("Encounter") == "date" and ev.care_date("Coverage") is None
    assert ev.care_date("Patient") is None


async def test_only_compartment_and_id_searches(
    small: httpx.AsyncClient, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store is asked for the patient's compartment, type by type, and for
    referenced resources by id: never for a whole type."""
    queries: list[SearchQuery] = []
    search = store.search

    async def recording(query: SearchQuery) -> SearchResult:
        queries.append(query)
        return await search(query)

    monkeypatch.setattr(store, "search", recording)
    r = await small.get("Patient/p1/$everything")
    assert r.status_code == 200
    assert queries
    for q in queries:
        by_id = any(isinstance(c, IdCond) for clause in q.clauses for c in clause)
        assert q.compartment == ("Patient", "p1") or by_id, q
    assert len([q for q in queries if q.compartment]) == len(ev.compartment_types())


async def test_a_thousand_resources_in_well_under_a_second(client: httpx.AsyncClient) -> None:
    record: list[dict[str, Any]] = [
        patient("busy", managingOrganization={"reference": "Organization/org"}),
        {"resourceType": "Organization", "id": "org", "name": "Clinic"},
        {"resourceType": "Practitioner", "id": "pt"},
    ]
    for i in range(250):
        day = f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}"
        performer = [{"reference": "Practitioner/pt"}]
        record += [
            observation(f"o{i}", "busy", day, performer=performer),
            encounter(f"e{i}", "busy", day),
            condition(f"c{i}", "busy", onsetDateTime=day),
            {
                "resourceType": "Procedure",
                "id": f"pr{i}",
                "status": "completed",
                "subject": {"reference": "Patient/busy"},
                "performedDateTime": day,
                "performer": [{"actor": {"reference": "Practitioner/pt"}}],
            },
        ]
    record += [observation(f"x{i}", "someone-else", "2024-01-01") for i in range(200)]
    for i in range(0, len(record), 500):
        await put_all(client, record[i : i + 500])
    await client.get("Patient/busy/$everything?_count=5")  # warm up
    started = time.perf_counter()
    r = await client.get("Patient/busy/$everything?_count=2000")
    elapsed = time.perf_counter() - started
    assert r.status_code == 200
    bundle = r.json()
    assert len(entries(bundle, "match")) == 1001 and bundle["total"] == 1001
    assert sorted(entries(bundle, "include")) == ["Organization/org", "Practitioner/pt"]
    assert elapsed < 0.6, elapsed


# --- authorization ----------------------------------------------------------------------------


@pytest.fixture
async def env(store: Store, tmp_path: Path) -> AsyncIterator[Env]:
    """Authorization on; patients pa and pb, Ada's two Observations (one derived from
    Bob's) and Bob's one, all performed by Practitioner pr1 (see tests/auth)."""
    async with open_env(store, tmp_path) as e:  # type: ignore[arg-type]
        admin = e.bearer("system/*.cruds")
        r = await e.client.put(
            "/fhir/Encounter/ea",
            json=encounter("ea", "pa", "2024-01-10"),
            headers={**FHIR, **admin},
        )
        assert r.status_code == 201, r.text
        yield e


ADA = {"Patient/pa", "Observation/oa-vital", "Observation/oa-lab", "Encounter/ea"}
AUDIT = ("AuditEvent/", "Provenance/")


def clinical(bundle: dict[str, Any], mode: str = "match") -> set[str]:
    """The entries but the audit records (AuditEvent and Provenance are in the Patient
    compartment too: the server writes them for every write, and audits reads)."""
    return {k for k in entries(bundle, mode) if not k.startswith(AUDIT)}


def assert_all_about(bundle: dict[str, Any], pid: str) -> None:
    """Every match (audit records included) is in the patient's compartment."""
    for e in bundle.get("entry", ()):
        if e["search"]["mode"] == "match":
            assert resource_in_patient_compartment(e["resource"], pid), key(e["resource"])


async def test_a_patient_token_sees_its_patient_only(env: Env) -> None:
    h = env.bearer("launch/patient patient/*.rs", "pa")
    r = await env.client.get("/fhir/Patient/pa/$everything", headers=h)
    assert r.status_code == 200, r.text
    assert clinical(r.json()) == ADA
    assert_all_about(r.json(), "pa")
    assert entries(r.json(), "include") == ["Practitioner/pr1"]
    r = await env.client.get("/fhir/Patient/pb/$everything", headers=h)
    assert r.status_code == 404
    pages = await all_pages(env.client, "/fhir/Patient/$everything?_count=2", h)
    matches = [m for p in pages for m in entries(p, "match")]
    assert len(matches) == len(set(matches))
    assert {m for m in matches if not m.startswith(AUDIT)} == ADA
    for p in pages:
        assert_all_about(p, "pa")


async def test_types_the_token_cannot_read_are_left_out(env: Env) -> None:
    h = env.bearer("launch/patient patient/Patient.rs patient/Observation.rs", "pa")
    r = await env.client.get("/fhir/Patient/pa/$everything", headers=h)
    assert r.status_code == 200, r.text
    assert set(entries(r.json(), "match")) == ADA - {"Encounter/ea"}
    assert entries(r.json(), "include") == []  # no scope for Practitioner
    h = env.bearer("launch/patient patient/Patient.rs", "pa")
    r = await env.client.get("/fhir/Patient/pa/$everything", headers=h)
    assert entries(r.json(), "match") == ["Patient/pa"]
    h = env.bearer("user/Observation.rs user/Encounter.rs")
    r = await env.client.get("/fhir/Patient/pa/$everything", headers=h)
    assert r.status_code == 403  # it needs read of Patient


async def test_user_scopes(env: Env) -> None:
    h = env.bearer("user/*.rs")
    r = await env.client.get("/fhir/Patient/pb/$everything", headers=h)
    assert clinical(r.json()) == {"Patient/pb", "Observation/ob-vital"}
    assert_all_about(r.json(), "pb")
    pages = await all_pages(env.client, "/fhir/Patient/$everything?_count=1", h)
    matches = [m for p in pages for m in entries(p, "match")]
    assert len(matches) == len(set(matches))
    assert {m for m in matches if not m.startswith(AUDIT)} == ADA | {
        "Patient/pb",
        "Observation/ob-vital",
    }
    # scope parameters are checked on each resource
    h = env.bearer("user/Patient.rs user/Observation.rs?category=laboratory")
    r = await env.client.get("/fhir/Patient/pa/$everything", headers=h)
    assert set(entries(r.json(), "match")) == {"Patient/pa", "Observation/oa-lab"}


async def test_a_cursor_cannot_reach_another_patient(env: Env) -> None:
    h = env.bearer("launch/patient patient/*.rs", "pa")
    forged = ev.State("pb", None, True, "Observation").encode()
    r = await env.client.get(f"/fhir/Patient/$everything?_cursor={forged}", headers=h)
    assert r.status_code == 400
    assert "ob-vital" not in r.text
    r = await env.client.get(f"/fhir/Patient/pa/$everything?_cursor={forged}", headers=h)
    assert r.status_code == 400


async def test_the_operation_is_audited_with_its_patient(env: Env, store: Store) -> None:
    h = {"Authorization": "Bearer " + env.token("user/*.rs", user="Practitioner/pr1")}
    r = await env.client.get("/fhir/Patient/pa/$everything", headers=h)
    assert r.status_code == 200
    h = env.bearer("launch/patient patient/*.rs", "pa")
    assert (await env.client.get("/fhir/Patient/pb/$everything", headers=h)).status_code == 404
    await env.app.state.audit.flush()
    found = await store.search(parse("AuditEvent", [("_count", "1000")]))
    events = [json.loads(h.content) for h in found.matches]
    everything = [
        e for e in events if any(x.get("name") == "$everything" for x in e.get("entity", ()))
    ]
    assert len(everything) == 2
    ok, refused = sorted(everything, key=lambda e: e["outcome"])
    assert ok["subtype"][0]["code"] == "operation" and ok["outcome"] == "0"
    patients = [
        e["what"]["reference"] for e in ok["entity"] if e.get("role", {}).get("code") == "1"
    ]
    assert patients == ["Patient/pa"]
    assert refused["outcome"] == "4"
