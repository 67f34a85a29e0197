"""Token ``:in``/``:not-in``/``:above``/``:below`` through the local terminology, custom
SearchParameters registered on a store with data, and base-aware ``search_ids``."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_server import terminology as tx
from fhir_server.errors import FhirError
from fhir_server.search import registry as registries
from fhir_server.search.parser import parse
from fhir_server.storage.sqlite import search_index
from fhir_server.storage.sqlite.store import SqliteStore
from tests.search.support import put_all

BASE = "http://test/fhir"


def proc(id: str, code: str, system: str = tx.CPT, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Procedure",
        "id": id,
        "status": "completed",
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": "Patient/p1"},
        **extra,
    }


def obs(id: str, code: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": id,
        "status": "final",
        "code": {"coding": [{"system": tx.OUTCOME_MEASURE, "code": code}]},
    }


DATA = [
    proc("timed", "97110"),  # therapeutic exercise: timed
    proc("eval", "97161"),  # PT evaluation: untimed
    proc("other-system", "97110", "http://example.org/local-codes"),
    obs("lefs", "LEFS"),
    obs("tug", "TUG"),
    obs("group", "patient-reported"),
]


async def ids(store: SqliteStore, rtype: str, *params: tuple[str, str]) -> list[str]:
    result = await store.search(parse(rtype, list(params), strict=True))
    return sorted(h.id for h in result.matches)


async def test_in_and_not_in_a_value_set(store: SqliteStore) -> None:
    await put_all(store, DATA)
    assert await ids(store, "Procedure", ("code:in", tx.VS_TIMED)) == ["timed"]
    assert await ids(store, "Procedure", ("code:not-in", tx.VS_TIMED)) == ["eval", "other-system"]
    assert await ids(store, "Procedure", ("code:in", f"{tx.VS_TIMED},{tx.VS_EVALUATIONS}")) == [
        "eval",
        "timed",
    ]
    with pytest.raises(FhirError):
        parse("Procedure", [("code:in", "http://example.org/ValueSet/unknown")], strict=True)


async def test_above_and_below_in_a_known_code_system(store: SqliteStore) -> None:
    await put_all(store, DATA)
    below = ("code:below", f"{tx.OUTCOME_MEASURE}|patient-reported")
    assert await ids(store, "Observation", below) == ["group", "lefs"]
    assert await ids(store, "Observation", ("code:above", f"{tx.OUTCOME_MEASURE}|LEFS")) == [
        "group",
        "lefs",
    ]
    for bad in ("LEFS", "http://example.org/unknown|x", f"{tx.OUTCOME_MEASURE}|nope"):
        with pytest.raises(FhirError):
            parse("Observation", [("code:below", bad)], strict=True)


@pytest.fixture
def scratch_registry() -> Any:
    from fhir_server import definitions

    official = registries.default_registry()
    registries.use(registries.Registry.from_definitions(definitions.search_parameters()))
    yield
    registries.use(official)


async def test_registering_a_search_parameter_indexes_existing_resources(
    store: SqliteStore, scratch_registry: None
) -> None:
    await put_all(
        store,
        [
            {"resourceType": "Encounter", "id": "e1", "status": "finished", "class": {"code": "AMB"},
             "serviceType": {"coding": [{"system": tx.DISCIPLINE, "code": "PT"}]}},
            {"resourceType": "Encounter", "id": "e2", "status": "finished", "class": {"code": "AMB"},
             "serviceType": {"coding": [{"system": tx.DISCIPLINE, "code": "OT"}]}},
        ],
    )
    sp = {
        "resourceType": "SearchParameter",
        "url": "http://example.org/SearchParameter/encounter-service-type",
        "code": "service-type",
        "base": ["Encounter"],
        "type": "token",
        "expression": "Encounter.serviceType",
    }
    async with store.unit_of_work():
        param, n = search_index.register_search_parameter(store.writer, sp)
    assert (param.code, n) == ("service-type", 2)
    assert await ids(store, "Encounter", ("service-type", f"{tx.DISCIPLINE}|PT")) == ["e1"]
    # an update of the definition replaces the rows
    async with store.unit_of_work():
        search_index.register_search_parameter(
            store.writer, {**sp, "expression": "Encounter.class"}
        )
    assert await ids(store, "Encounter", ("service-type", "PT")) == []
    assert await ids(store, "Encounter", ("service-type", "AMB")) == ["e1", "e2"]
    with pytest.raises(FhirError):
        search_index.register_search_parameter(store.writer, {**sp, "base": ["NotAType"]})


async def test_search_ids_knows_this_servers_base(store: SqliteStore) -> None:
    await put_all(
        store,
        [
            {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"},
             "subject": {"reference": f"{BASE}/Patient/p1"}},
            {"resourceType": "Observation", "id": "o2", "status": "final", "code": {"text": "x"},
             "subject": {"reference": "Patient/p1"}},
        ],
    )
    conn = store.reader
    params = [("subject", "Patient/p1")]
    assert search_index.search_ids(conn, "Observation", params) == ["o2"]
    assert search_index.search_ids(conn, "Observation", params, base_url=BASE) == ["o1", "o2"]
