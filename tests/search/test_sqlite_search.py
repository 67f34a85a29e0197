"""SQLite search end to end: resources written through units of work, then searched."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from fhir_server.errors import FhirError
from fhir_server.interactions.search import search as search_interaction
from fhir_server.search.parser import parse
from fhir_server.storage.sqlite import search_index
from fhir_server.storage.sqlite.store import SqliteStore
from tests.search.support import delete, put_all

BASE = "http://test/fhir"


def patient(id: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": id, **extra}


def obs(id: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": id, "status": "final", **extra}


PEOPLE = [
    patient(
        "p1",
        name=[{"family": "Chalmers", "given": ["Peter", "James"]}],
        gender="male",
        birthDate="1974-12-25",
        identifier=[{"system": "http://mrn", "value": "001"}],
        managingOrganization={"reference": "Organization/org1"},
        meta={"lastUpdated": "2024-01-01T00:00:00Z", "tag": [{"system": "http://t", "code": "a"}]},
    ),
    patient(
        "p2",
        name=[{"family": "Müller", "given": ["Zoë"]}],
        gender="female",
        birthDate="1980",
        identifier=[{"system": "http://mrn", "value": "002"}],
        meta={"lastUpdated": "2024-02-01T00:00:00Z"},
    ),
    patient(
        "p3",
        name=[{"family": "Chandler", "given": ["Anna"]}],
        gender="female",
        meta={"lastUpdated": "2024-03-01T00:00:00Z"},
    ),
    {"resourceType": "Organization", "id": "org1", "name": "Acme Health"},
    obs(
        "o1",
        code={"coding": [{"system": "http://loinc.org", "code": "29463-7"}], "text": "Weight"},
        subject={"reference": "Patient/p1"},
        effectiveDateTime="2024-05-01T10:30:00Z",
        valueQuantity={
            "value": 72.5,
            "unit": "kg",
            "system": "http://unitsofmeasure.org",
            "code": "kg",
        },
    ),
    obs(
        "o2",
        code={"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        subject={"reference": f"{BASE}/Patient/p2"},
        effectiveDateTime="2024-05-02",
        valueQuantity={
            "value": 100,
            "unit": "kg",
            "system": "http://unitsofmeasure.org",
            "code": "kg",
        },
    ),
    obs(
        "o3",
        code={"coding": [{"system": "http://snomed.info/sct", "code": "271649006"}]},
        subject={"reference": "http://elsewhere/fhir/Patient/p1"},
        effectivePeriod={"start": "2023-01-01", "end": "2023-06-30"},
        component=[
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                "valueQuantity": {
                    "value": 120,
                    "code": "mm[Hg]",
                    "system": "http://unitsofmeasure.org",
                },
            }
        ],
    ),
    {
        "resourceType": "ValueSet",
        "id": "vs1",
        "status": "active",
        "url": "http://example.org/fhir/ValueSet/a/b",
    },
    {
        "resourceType": "RiskAssessment",
        "id": "ra1",
        "status": "final",
        "subject": {"reference": "Patient/p1"},
        "prediction": [
            {"probabilityDecimal": 0.8},
            {"probabilityRange": {"low": {"value": 0.2}, "high": {"value": 0.4}}},
        ],
    },
]


@pytest.fixture
async def loaded(store: SqliteStore) -> AsyncIterator[SqliteStore]:
    await put_all(store, PEOPLE)
    yield store


async def ids(store: SqliteStore, resource_type: str, *params: tuple[str, str]) -> list[str]:
    async with store.unit_of_work() as uow:
        return sorted(await uow.search(resource_type, list(params)))


# --------------------------------------------------------------------------- priority-1 types


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ([("name", "pet")], ["p1"]),
        ([("name", "CHA")], ["p1", "p3"]),
        ([("family", "muller")], ["p2"]),
        ([("given", "zoe")], ["p2"]),
        ([("name:exact", "Müller")], ["p2"]),
        ([("name:exact", "muller")], []),
        ([("family:contains", "ndl")], ["p3"]),
        ([("gender", "female")], ["p2", "p3"]),
        ([("gender", "male,female")], ["p1", "p2", "p3"]),
        ([("gender:not", "male")], ["p2", "p3"]),
        ([("gender", "http://hl7.org/fhir/administrative-gender|female")], ["p2", "p3"]),
        ([("gender", "http://other|female")], []),
        ([("identifier", "http://mrn|002")], ["p2"]),
        ([("identifier", "http://other|002")], []),
        ([("identifier", "|002")], []),
        ([("identifier", "http://mrn|")], ["p1", "p2"]),
        ([("_id", "p1,p3")], ["p1", "p3"]),
        ([("_tag", "http://t|a")], ["p1"]),
        ([("organization", "Organization/org1")], ["p1"]),
        ([("organization", "org1")], ["p1"]),
        ([("birthdate", "1974")], ["p1"]),
        ([("birthdate", "1974-12-25")], ["p1"]),
        ([("birthdate", "lt1975")], ["p1"]),
        ([("birthdate", "ge1980-06")], ["p2"]),  # 1980 reaches past June
        ([("birthdate", "ge1981")], []),
        ([("birthdate", "le1980")], ["p1", "p2"]),
        ([("birthdate:missing", "true")], ["p3"]),
        ([("_lastUpdated", "gt2024-01-15")], ["p2", "p3"]),
        ([("gender", "female"), ("name", "cha")], ["p3"]),
    ],
)
async def test_patient_searches(
    loaded: SqliteStore, params: list[tuple[str, str]], expected: list[str]
) -> None:
    assert await ids(loaded, "Patient", *params) == expected


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ([("subject", "Patient/p1")], ["o1"]),
        ([("subject", f"{BASE}/Patient/p2")], ["o2"]),  # this server's base = local
        ([("subject", "http://elsewhere/fhir/Patient/p1")], ["o3"]),
        ([("patient", "p1")], ["o1"]),
        ([("code", "http://loinc.org|29463-7")], ["o1", "o2"]),
        ([("code:text", "weig")], ["o1"]),
        ([("date", "2024-05")], ["o1", "o2"]),
        ([("date", "2024-05-01")], ["o1"]),
        ([("date", "eq2023")], ["o3"]),
        ([("date", "sa2023-12-31")], ["o1", "o2"]),
        ([("date", "eb2024")], ["o3"]),
        ([("date", "gt2024-05-01")], ["o2"]),
        ([("date", "ne2024-05-01")], ["o2", "o3"]),
        ([("value-quantity", "72.5")], ["o1"]),
        ([("value-quantity", "72")], []),
        ([("value-quantity", "gt72")], ["o1", "o2"]),
        ([("value-quantity", "lt100")], ["o1"]),
        ([("value-quantity", "le100")], ["o1", "o2"]),
        ([("value-quantity", "ap95")], ["o2"]),
        ([("value-quantity", "100|http://unitsofmeasure.org|kg")], ["o2"]),
        ([("value-quantity", "100||kg")], ["o2"]),
        ([("value-quantity", "100||g")], []),
        ([("component-code-value-quantity", "http://loinc.org|8480-6$gt119")], ["o3"]),
        ([("component-code-value-quantity", "http://loinc.org|8480-6$lt119")], []),
        ([("subject:Patient.name", "peter")], ["o1"]),
        ([("subject.gender", "male")], ["o1"]),
        ([("patient.organization.name", "acme")], ["o1"]),
        ([("subject:missing", "false")], ["o1", "o2", "o3"]),
    ],
)
async def test_observation_searches(
    loaded: SqliteStore, params: list[tuple[str, str]], expected: list[str]
) -> None:
    assert await ids(loaded, "Observation", *params) == expected


async def test_number_uri_and_has(loaded: SqliteStore) -> None:
    assert await ids(loaded, "RiskAssessment", ("probability", "0.8")) == ["ra1"]
    assert await ids(loaded, "RiskAssessment", ("probability", "0.3")) == ["ra1"]  # in a Range
    assert await ids(loaded, "RiskAssessment", ("probability", "gt0.9")) == []
    assert await ids(loaded, "ValueSet", ("url", "http://example.org/fhir/ValueSet/a/b")) == ["vs1"]
    assert await ids(loaded, "ValueSet", ("url:below", "http://example.org/fhir")) == ["vs1"]
    assert await ids(
        loaded, "ValueSet", ("url:above", "http://example.org/fhir/ValueSet/a/b/c")
    ) == ["vs1"]
    assert await ids(loaded, "ValueSet", ("url", "http://example.org/fhir")) == []
    assert await ids(loaded, "Patient", ("_has:Observation:patient:code", "29463-7")) == ["p1"]
    assert await ids(loaded, "Patient", ("_has:Observation:subject:date", "2024-05-01")) == ["p1"]


async def test_references_with_this_servers_base_are_local(loaded: SqliteStore) -> None:
    """o2 refers to its patient by an absolute URL on this server's base."""

    async def found(rtype: str, *params: tuple[str, str]) -> list[str]:
        result = await loaded.search(parse(rtype, list(params), base_url=BASE, strict=True))
        return sorted(h.id for h in result.matches)

    assert await found("Observation", ("subject", "Patient/p2")) == ["o2"]
    assert await found("Observation", ("subject", "p2")) == ["o2"]
    assert await found("Observation", ("subject.gender", "female")) == ["o2"]
    assert await found("Patient", ("_has:Observation:subject:date", "2024-05-02")) == ["p2"]
    result = await loaded.search(
        parse("Observation", [("_id", "o2"), ("_include", "Observation:subject")], base_url=BASE)
    )
    assert [h.id for h in result.includes] == ["p2"]
    # a server that does not know its base cannot tell: only relative references match
    assert await ids(loaded, "Observation", ("subject", "Patient/p2")) == []


async def test_updates_and_deletes_keep_the_index_current(loaded: SqliteStore) -> None:
    changed = dict(PEOPLE[0], name=[{"family": "Smith"}])
    await put_all(loaded, [changed])
    assert await ids(loaded, "Patient", ("name", "chalmers")) == []
    assert await ids(loaded, "Patient", ("name", "smith")) == ["p1"]
    await delete(loaded, "Patient", "p1")
    assert await ids(loaded, "Patient", ("name", "smith")) == []
    assert await ids(loaded, "Patient", ("gender", "male")) == []
    # a chain does not follow a reference to a deleted resource
    assert await ids(loaded, "Observation", ("subject:Patient.gender", "male")) == []


# --------------------------------------------------------------------------- safety


HOSTILE = [
    "' OR 1=1 --",
    "'; DROP TABLE resource; --",
    '" OR ""="',
    "%",
    "_",
    "\\",
    "x') UNION SELECT id FROM resource --",
]


@pytest.mark.parametrize("value", HOSTILE)
async def test_hostile_values_are_bound_not_injected(loaded: SqliteStore, value: str) -> None:
    from tests.search.support import escape

    v = escape(value)
    for params in (
        [("name", v)],
        [("name:exact", v)],
        [("name:contains", v)],
        [("identifier", v)],
        [("identifier", f"{v}|{v}")],
        [("_id", v)],
        [("organization", v)],
        [("organization:identifier", v)],
        [("_tag", v)],
        [("_has:Observation:patient:code", v)],
        [("organization.name", v)],
    ):
        assert await ids(loaded, "Patient", *params) == [], params
    assert await loaded.count("Patient") == 3


async def test_hostile_parameter_names_are_rejected(loaded: SqliteStore) -> None:
    with pytest.raises(FhirError) as err:
        await ids(loaded, "Patient", ("name' OR 1=1 --", "x"))
    assert err.value.status == 400
    assert err.value.issues[0].expression == ("name' OR 1=1 --",)


async def test_a_hostile_value_is_found_as_a_plain_string(store: SqliteStore) -> None:
    await put_all(store, [patient("h", name=[{"family": "' OR 1=1 --"}])])
    assert await ids(store, "Patient", ("name", "' or 1=1")) == ["h"]
    assert await ids(store, "Patient", ("name:contains", "%")) == []
    assert await ids(store, "Patient", ("name:contains", "1=1")) == ["h"]


# --------------------------------------------------------------------------- plans


async def test_selective_searches_use_an_index(loaded: SqliteStore) -> None:
    for rtype, params in (
        ("Patient", [("identifier", "http://mrn|001")]),
        ("Patient", [("name", "cha")]),
        ("Observation", [("subject", "Patient/p1")]),
        ("Observation", [("date", "2024-05")]),
    ):
        plan = " | ".join(search_index.explain(loaded.reader, parse(rtype, params, strict=True)))
        assert "USING COVERING INDEX" in plan or "USING INDEX" in plan, plan
        assert "SCAN idx_" not in plan and "SCAN x" not in plan, plan


# --------------------------------------------------------------------------- paging, sorting


async def run(store: SqliteStore, rtype: str, params: list[tuple[str, str]]) -> Any:
    return await store.search(parse(rtype, params))


async def page_through(store: SqliteStore, rtype: str, params: list[tuple[str, str]]) -> list[str]:
    seen: list[str] = []
    result = await run(store, rtype, params)
    while True:
        seen.extend(h.id for h in result.matches)
        if result.next_cursor is None:
            return seen
        result = await run(store, rtype, [*params, ("_cursor", result.next_cursor)])


async def test_sorting_on_several_keys_with_missing_values_last(loaded: SqliteStore) -> None:
    result = await run(loaded, "Patient", [("_sort", "-birthdate,name")])
    assert [h.id for h in result.matches] == ["p2", "p1", "p3"]
    result = await run(loaded, "Patient", [("_sort", "birthdate")])
    assert [h.id for h in result.matches] == ["p1", "p2", "p3"]
    result = await run(loaded, "Patient", [("_sort", "gender,-family")])
    assert [h.id for h in result.matches] == ["p2", "p3", "p1"]
    result = await run(loaded, "Patient", [("_sort", "-_lastUpdated")])
    assert [h.id for h in result.matches] == ["p3", "p2", "p1"]
    result = await run(loaded, "Patient", [("_sort", "-_id")])
    assert [h.id for h in result.matches] == ["p3", "p2", "p1"]


@pytest.mark.parametrize("sort", [None, "family", "-birthdate,family", "-_id"])
async def test_keyset_paging_matches_a_single_page(store: SqliteStore, sort: str | None) -> None:
    people = [
        patient(
            f"x{i:02d}",
            name=[{"family": f"F{i % 4}"}],
            **({"birthDate": f"19{50 + i % 7}"} if i % 3 else {}),
        )
        for i in range(23)
    ]
    await put_all(store, people)
    base = [("_sort", sort)] if sort else []
    everything = await run(store, "Patient", [*base, ("_count", "100")])
    expected = [h.id for h in everything.matches]
    assert len(expected) == 23
    assert await page_through(store, "Patient", [*base, ("_count", "4")]) == expected
    # and backwards from the last page
    result = await run(store, "Patient", [*base, ("_count", "4")])
    while result.next_cursor:
        result = await run(
            store, "Patient", [*base, ("_count", "4"), ("_cursor", result.next_cursor)]
        )
    back: list[str] = [h.id for h in result.matches]
    while result.previous_cursor:
        result = await run(
            store, "Patient", [*base, ("_count", "4"), ("_cursor", result.previous_cursor)]
        )
        back = [h.id for h in result.matches] + back
    assert back == expected


async def test_paging_stays_correct_while_data_changes(store: SqliteStore) -> None:
    await put_all(store, [patient(f"c{i:02d}", gender="other") for i in range(12)])
    params = [("gender", "other"), ("_count", "5")]
    first = await run(store, "Patient", params)
    seen = [h.id for h in first.matches]
    # updates, a deletion and a creation between pages
    await put_all(store, [patient("c01", gender="other"), patient("c08", gender="other")])
    await delete(store, "Patient", "c06")
    await put_all(store, [patient("c99", gender="other")])
    result = await run(store, "Patient", [*params, ("_cursor", first.next_cursor or "")])
    while True:
        seen.extend(h.id for h in result.matches)
        if result.next_cursor is None:
            break
        result = await run(store, "Patient", [*params, ("_cursor", result.next_cursor)])
    assert len(seen) == len(set(seen))  # nothing twice
    expected = {f"c{i:02d}" for i in range(12)} - {"c06"} | {"c99"}
    assert set(seen) == expected


async def test_count_and_total(loaded: SqliteStore) -> None:
    result = await run(loaded, "Patient", [("_count", "2")])
    assert (len(result.matches), result.total) == (2, 3)
    result = await run(loaded, "Patient", [("_count", "2"), ("_total", "none")])
    assert result.total is None
    result = await run(loaded, "Patient", [("_count", "0")])
    assert (result.matches, result.total, result.next_cursor) == ([], 3, None)
    result = await run(loaded, "Patient", [("gender", "female")])
    assert (len(result.matches), result.total) == (2, 2)


async def test_a_tampered_cursor_is_a_bad_request(loaded: SqliteStore) -> None:
    for cursor in ("not-base64!", "W10", "WyJuIiwgW10sICJ4Il0"):
        with pytest.raises(FhirError) as err:
            await run(loaded, "Patient", [("_cursor", cursor)])
        assert err.value.status == 400


# --------------------------------------------------------------------------- includes


async def test_include_and_revinclude(loaded: SqliteStore) -> None:
    result = await run(loaded, "Observation", [("_id", "o1"), ("_include", "Observation:subject")])
    assert [(h.resource_type, h.id, h.mode) for h in result.includes] == [
        ("Patient", "p1", "include")
    ]
    result = await run(
        loaded,
        "Observation",
        [
            ("_id", "o1"),
            ("_include", "Observation:subject"),
            ("_include:iterate", "Patient:organization"),
        ],
    )
    assert sorted((h.resource_type, h.id) for h in result.includes) == [
        ("Organization", "org1"),
        ("Patient", "p1"),
    ]
    result = await run(loaded, "Patient", [("_id", "p1"), ("_revinclude", "Observation:subject")])
    assert [h.id for h in result.includes] == ["o1"]
    result = await run(loaded, "Patient", [("_id", "p1"), ("_revinclude", "*")])
    assert sorted(h.id for h in result.includes) == ["o1", "ra1"]
    result = await run(loaded, "Observation", [("_id", "o1"), ("_include", "*")])
    assert [h.id for h in result.includes] == ["p1"]


# --------------------------------------------------------------------------- the Bundle


def _query(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query, keep_blank_values=True)


async def test_searchset_bundle(loaded: SqliteStore) -> None:
    bundle = await search_interaction(
        loaded,
        "Patient",
        [
            ("gender", "female,male"),
            ("_count", "2"),
            ("bogus", "1"),
            ("_include", "Patient:organization"),
        ],
        base_url=BASE,
        strict=False,
    )
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    assert bundle["total"] == 3
    links = {link["relation"]: link["url"] for link in bundle["link"]}
    assert "bogus" not in links["self"] and links["self"].startswith(f"{BASE}/Patient?")
    assert "previous" not in links
    modes = [(e.get("fullUrl"), e["search"]["mode"]) for e in bundle["entry"]]
    assert modes[:2] == [(f"{BASE}/Patient/p1", "match"), (f"{BASE}/Patient/p2", "match")]
    assert (f"{BASE}/Organization/org1", "include") in modes
    outcome = bundle["entry"][-1]
    assert outcome["search"]["mode"] == "outcome"
    assert outcome["resource"]["issue"][0]["expression"] == ["bogus"]

    following = await search_interaction(
        loaded, "Patient", _query(links["next"]), base_url=BASE, strict=False
    )
    assert [e["resource"]["id"] for e in following["entry"] if e["search"]["mode"] == "match"] == [
        "p3"
    ]
    relations = {link["relation"] for link in following["link"]}
    assert relations == {"self", "previous"}


async def test_strict_bundle_search_rejects(loaded: SqliteStore) -> None:
    with pytest.raises(FhirError) as err:
        await search_interaction(loaded, "Patient", [("bogus", "1")], base_url=BASE, strict=True)
    assert err.value.status == 400


async def test_summary_and_elements(loaded: SqliteStore) -> None:
    bundle = await search_interaction(
        loaded, "Patient", [("_id", "p1"), ("_elements", "gender")], base_url=BASE, strict=True
    )
    resource = bundle["entry"][0]["resource"]
    assert set(resource) == {"resourceType", "id", "meta", "gender"}
    assert resource["meta"]["tag"][-1]["code"] == "SUBSETTED"
    bundle = await search_interaction(
        loaded, "Patient", [("_summary", "count")], base_url=BASE, strict=True
    )
    assert bundle["total"] == 3 and "entry" not in bundle
    bundle = await search_interaction(
        loaded, "Patient", [("_id", "p1"), ("_summary", "true")], base_url=BASE, strict=True
    )
    resource = bundle["entry"][0]["resource"]
    assert {"name", "gender", "birthDate", "identifier"} <= set(resource)
    bundle = await search_interaction(
        loaded, "Observation", [("_id", "o1"), ("_summary", "data")], base_url=BASE, strict=True
    )
    assert "valueQuantity" in bundle["entry"][0]["resource"]


async def test_system_and_compartment_search(loaded: SqliteStore) -> None:
    bundle = await search_interaction(
        loaded,
        None,
        [("_type", "Patient,Observation"), ("_id", "p1,o1")],
        base_url=BASE,
        strict=True,
    )
    assert sorted(e["fullUrl"] for e in bundle["entry"]) == [
        f"{BASE}/Observation/o1",
        f"{BASE}/Patient/p1",
    ]
    bundle = await search_interaction(
        loaded, "Observation", [], base_url=BASE, strict=True, compartment=("Patient", "p2")
    )
    assert [e["resource"]["id"] for e in bundle["entry"]] == ["o2"]
    assert bundle["link"][0]["url"] == f"{BASE}/Patient/p2/Observation"


# --------------------------------------------------------------------------- custom parameters


async def test_a_custom_search_parameter(store: SqliteStore) -> None:
    from fhir_server import definitions
    from fhir_server.search import registry as registries

    official = registries.default_registry()
    custom = registries.Registry.from_definitions(definitions.search_parameters())
    custom.add(
        {
            "resourceType": "SearchParameter",
            "url": "http://example.org/SearchParameter/patient-nickname",
            "code": "nickname",
            "base": ["Patient"],
            "type": "string",
            "expression": "Patient.name.where(use='nickname').given",
        }
    )
    registries.use(custom)
    try:
        await put_all(
            store,
            [
                patient("n1", name=[{"use": "nickname", "given": ["Bob"]}]),
                patient("n2", name=[{"use": "official", "given": ["Bob"]}]),
            ],
        )
        assert await ids(store, "Patient", ("nickname", "bo")) == ["n1"]
        assert await ids(store, "Patient", ("given", "bo")) == ["n1", "n2"]
    finally:
        registries.use(official)
    with pytest.raises(FhirError):
        await ids(store, "Patient", ("nickname", "bo"))
