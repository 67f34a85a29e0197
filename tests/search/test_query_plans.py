"""Every search statement uses an index: no full scan of an index table or of the
resource table, for each parameter type, modifier, chain, ``_has``, include and sort
(``EXPLAIN QUERY PLAN`` on a small synthetic clinic)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest

from bench import synthetic
from fhir_server.search.parser import parse
from fhir_server.storage.sqlite import search_index
from fhir_server.storage.sqlite.store import SqliteStore

D = synthetic.DISCIPLINE
MRN = synthetic.MRN_SYSTEM
SERVICE_TYPE = {
    "resourceType": "SearchParameter",
    "url": "http://example.org/SearchParameter/encounter-service-type",
    "name": "service-type",
    "status": "active",
    "code": "service-type",
    "base": ["Encounter"],
    "type": "token",
    "expression": "Encounter.serviceType",
}

QUERIES: list[tuple[str, list[tuple[str, str]]]] = [
    # token
    ("Patient", [("identifier", f"{MRN}|MRN0000001")]),
    ("Patient", [("gender", "female")]),
    ("Patient", [("gender:not", "male")]),
    ("Encounter", [("service-type", f"{D}|PT")]),
    ("Encounter", [("service-type:text", "physical")]),
    ("Encounter", [("service-type", f"{D}|PT"), ("subject", "Patient/pat-0000001")]),
    ("Procedure", [("code:in", f"{synthetic.BASE}/ValueSet/therapy-timed-codes")]),
    ("Procedure", [("code:not-in", f"{synthetic.BASE}/ValueSet/therapy-timed-codes")]),
    ("Observation", [("code:below", f"{synthetic.OUTCOME_MEASURE}|patient-reported")]),
    ("Observation", [("code:above", f"{synthetic.OUTCOME_MEASURE}|LEFS")]),
    ("Patient", [("identifier:of-type", "http://terminology.hl7.org/CodeSystem/v2-0203|MR|MRN0000001")]),
    ("Patient", [("_tag", "x")]),
    # string
    ("Patient", [("family", "smi")]),
    ("Patient", [("family:exact", "Smith")]),
    ("Patient", [("family:contains", "mit")]),
    ("Patient", [("name:missing", "true")]),
    ("Patient", [("address-city", "spring"), ("birthdate", "ge1950")]),
    # date
    ("Encounter", [("date", "2024-01-01")]),
    ("Encounter", [("date", "ge2024-01-01"), ("date", "lt2024-01-02")]),
    ("Encounter", [("date", "gt2023-12-31"), ("date", "le2024-01-01"), ("service-type", f"{D}|PT")]),
    ("Encounter", [("date", "ge2024-01-01"), ("date", "lt2024-01-02"), ("_sort", "-date")]),
    ("Encounter", [("date", "le2023-02-01")]),
    ("Patient", [("_lastUpdated", "ge2020")]),
    # reference
    ("Procedure", [("encounter", "Encounter/enc-00000001")]),
    ("Observation", [("subject", "Patient/pat-0000001")]),
    ("Observation", [("subject", "http://test/fhir/Patient/pat-0000001")]),
    ("Procedure", [("encounter:identifier", "x|y")]),
    ("Coverage", [("payor:Organization", "medicare")]),
    # number, quantity, uri, composite
    ("Encounter", [("length", "gt5")]),
    ("Observation", [("value-quantity", "gt5||{score}")]),
    ("Observation", [("code-value-quantity", f"{synthetic.OUTCOME_MEASURE}|LEFS$gt20")]),
    ("ValueSet", [("url:below", "http://x")]),
    # _id
    ("Patient", [("_id", "pat-0000001,pat-0000002")]),
    # chains and _has
    ("Encounter", [("subject:Patient.identifier", f"{MRN}|MRN0000001")]),
    ("Encounter", [("subject:Patient.name", "smith"), ("service-type", f"{D}|PT")]),
    ("Procedure", [("encounter.subject:Patient.identifier", f"{MRN}|MRN0000001")]),
    ("Patient", [("_has:Encounter:subject:date", "2024-01-01")]),
    ("Patient", [("_has:Encounter:subject:_has:Procedure:encounter:code", "97110")]),
    # includes and sort
    ("Encounter", [("subject", "Patient/pat-0000001"), ("_include", "Encounter:subject")]),
    ("Encounter", [("subject", "Patient/pat-0000001"), ("_include", "Encounter:*")]),
    ("Encounter", [("_id", "enc-00000001"), ("_revinclude", "Procedure:encounter")]),
    ("Encounter", [("subject", "Patient/pat-0000001"), ("_revinclude:iterate", "Observation:encounter")]),
    ("Patient", [("family", "smi"), ("_sort", "birthdate,-family")]),
    ("Encounter", [("subject", "Patient/pat-0000001"), ("_sort", "-date,_lastUpdated")]),
    ("Encounter", [("service-type", f"{D}|PT"), ("_sort", "-date")]),
    # compartment-like OR of references
    ("Observation", [("subject", "Patient/pat-0000001,Patient/pat-0000002")]),
]

# a SCAN that is not through an index: of a table, or of a subquery/list (those are
# fine: "SCAN <subquery>" reads a materialised set already built from an index)
_FULL_SCAN = re.compile(r"\bSCAN (resource|idx_\w+|[a-z]\w*)\b(?! USING)")
_ALIASES = {"r", "t", "s", "x", "m", "ref", "c0", "c1", "c2"}


@pytest.fixture
async def clinic() -> AsyncIterator[SqliteStore]:
    store = SqliteStore(":memory:")
    await store.open()
    from fhir_server.search import registry as registries

    before = registries.default_registry()
    saved = registries.Registry.from_definitions([])
    saved._by_type = {k: dict(v) for k, v in before._by_type.items()}
    saved._by_url = dict(before._by_url)
    registries.use(saved)
    try:
        await synthetic.load_into_store(store, synthetic.generate(3000))
        async with store.unit_of_work():
            search_index.register_search_parameter(store.writer, SERVICE_TYPE)
        yield store
    finally:
        registries.use(before)
        await store.close()


def full_scans(plan: list[str]) -> list[str]:
    bad = []
    for line in plan:
        for m in _FULL_SCAN.finditer(line):
            name = m.group(1)
            if name == "resource" or name.startswith("idx_") or name in _ALIASES:
                bad.append(line)
    return bad


async def test_every_statement_uses_an_index(clinic: SqliteStore) -> None:
    problems = []
    for rtype, params in QUERIES:
        query = parse(rtype, params, strict=True, base_url="http://test/fhir")
        for statement, plan in search_index.explain_all(clinic.reader, query).items():
            if bad := full_scans(plan):
                problems.append(f"{rtype}?{params} [{statement}]: {bad}\n  " + "\n  ".join(plan))
    assert not problems, "\n".join(problems)


async def test_a_selective_clause_drives_and_a_broad_one_is_probed(clinic: SqliteStore) -> None:
    query = parse(
        "Encounter",
        [("service-type", f"{D}|PT"), ("subject", "Patient/pat-0000001")],
        strict=True,
    )
    est = search_index.estimates(clinic.reader, query)
    assert est[1] < est[0]
    plan = " | ".join(search_index.explain_all(clinic.reader, query)["page"])
    assert "idx_ref_target" in plan and "USING INTEGER PRIMARY KEY" in plan, plan


async def test_a_broad_search_walks_the_type_in_order(
    clinic: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(search_index, "BROAD", 50)
    query = parse("Procedure", [("status", "completed")], strict=True)
    assert search_index.estimates(clinic.reader, query)[0] == 50
    plans = search_index.explain_all(clinic.reader, query)
    assert "resource_live" in plans["page"][0], plans["page"]
    assert not full_scans(plans["page"]) and not full_scans(plans["count"])
    result = await clinic.search(query)
    assert len(result.matches) == 20 and result.total is not None and result.total > 50


async def test_a_date_window_is_one_selective_clause(clinic: SqliteStore) -> None:
    """``date=ge<day>&date=lt<day+1>``: one clause (a bounded range of the date index)
    that drives the search, the broad token clause next to it being probed."""
    query = parse(
        "Encounter",
        [("date", "ge2024-01-01"), ("date", "lt2024-01-02"), ("service-type", f"{D}|PT")],
        strict=True,
    )
    p = search_index.plan(clinic.reader, query)
    assert len(p.clauses) == 2 and isinstance(p.clauses[0][0], search_index.DateWindow)
    assert p.est[0] < p.est[1]  # the window drives
    plans = search_index.explain_all(clinic.reader, query)
    page = " | ".join(plans["page"])
    assert "idx_date_lo (param=? AND lo>? AND lo<?)" in page, page
    assert "idx_token_code" not in page, page  # probed by rowid range, not scanned
