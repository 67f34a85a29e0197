"""The terminology operations through the API: GET and POST, type and instance level,
package and stored resources, and their errors."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from fhir_server import terminology as tx

FHIR = {"Content-Type": "application/fhir+json"}
TIMED = tx.VS_TIMED


def params(*items: tuple[str, str, Any]) -> dict[str, Any]:
    out = []
    for name, kind, value in items:
        out.append(
            {"name": name, "resource": value}
            if kind == "resource"
            else {"name": name, f"value{kind}": value}
        )
    return {"resourceType": "Parameters", "parameter": out}


def values(body: dict[str, Any]) -> dict[str, Any]:
    assert body["resourceType"] == "Parameters", body
    return {
        p["name"]: next(v for k, v in p.items() if k.startswith("value"))
        for p in body["parameter"]
        if "part" not in p
    }


def outcome(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    return " ".join(i["diagnostics"] for i in body["issue"])


async def test_expand_by_url_with_paging(client: httpx.AsyncClient) -> None:
    r = await client.get("ValueSet/$expand", params={"url": TIMED, "count": "5", "offset": "1"})
    assert r.status_code == 200, r.text
    expansion = r.json()["expansion"]
    assert expansion["total"] == len(tx.value_set_membership(TIMED) or ())
    assert expansion["offset"] == 1
    assert len(expansion["contains"]) == 5
    assert "compose" not in r.json()


async def test_expand_instance_text_filter_and_definition(client: httpx.AsyncClient) -> None:
    r = await client.get(
        "ValueSet/therapy-procedures/$expand",
        params={"filter": "gait", "includeDefinition": "true"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert [c["code"] for c in body["expansion"]["contains"]] == ["97116"]
    assert "compose" in body


async def test_expand_post_with_inline_value_set_and_designations(
    client: httpx.AsyncClient,
) -> None:
    inline = {
        "resourceType": "ValueSet",
        "status": "active",
        "compose": {
            "include": [
                {
                    "system": tx.OUTCOME_MEASURE,
                    "filter": [{"property": "concept", "op": "is-a", "value": "clinician-rated"}],
                }
            ]
        },
    }
    body = params(("valueSet", "resource", inline), ("includeDesignations", "Boolean", True))
    r = await client.post("ValueSet/$expand", json=body, headers=FHIR)
    assert r.status_code == 200, r.text
    contains = r.json()["expansion"]["contains"]
    assert [c["code"] for c in contains] == ["clinician-rated", "FOIS", "PAS", "NOMS-FCM"]
    assert contains[0]["abstract"] is True
    assert contains[1]["designation"][0]["value"] == "FOIS"


async def test_expand_stored_value_set_over_a_stored_code_system(client: httpx.AsyncClient) -> None:
    cs: dict[str, Any] = {
        "resourceType": "CodeSystem",
        "id": "clinic-visit-type",
        "url": "http://clinic.example/cs/visit-type",
        "status": "active",
        "content": "complete",
        "concept": [
            {"code": "new", "display": "New patient"},
            {"code": "fu", "display": "Follow-up"},
        ],
    }
    vs: dict[str, Any] = {
        "resourceType": "ValueSet",
        "id": "clinic-visit-types",
        "url": "http://clinic.example/vs/visit-types",
        "status": "active",
        "compose": {"include": [{"system": "http://clinic.example/cs/visit-type"}]},
    }
    for resource in (cs, vs):
        r = await client.put(
            f"{resource['resourceType']}/{resource['id']}", json=resource, headers=FHIR
        )
        assert r.status_code == 201, r.text
    by_id = await client.get("ValueSet/clinic-visit-types/$expand")
    assert by_id.status_code == 200, by_id.text
    assert [c["code"] for c in by_id.json()["expansion"]["contains"]] == ["new", "fu"]
    by_url = await client.get(
        "ValueSet/$validate-code",
        params={"url": vs["url"], "system": cs["url"], "code": "fu", "display": "Follow-up"},
    )
    assert values(by_url.json()) == {"result": True, "display": "Follow-up"}
    looked_up = await client.get("CodeSystem/clinic-visit-type/$lookup", params={"code": "new"})
    assert values(looked_up.json())["display"] == "New patient"
    by_system = await client.get("CodeSystem/$lookup", params={"system": cs["url"], "code": "fu"})
    assert values(by_system.json())["display"] == "Follow-up"


async def test_r4_base_value_sets_expand(client: httpx.AsyncClient) -> None:
    r = await client.get(
        "ValueSet/$expand", params={"url": "http://hl7.org/fhir/ValueSet/administrative-gender"}
    )
    assert r.status_code == 200, r.text
    assert {c["code"] for c in r.json()["expansion"]["contains"]} == {
        "male",
        "female",
        "other",
        "unknown",
    }


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"system": tx.CPT, "code": "97110"}, True),
        ({"system": tx.CPT, "code": "97161"}, False),
        ({"code": "97140"}, True),  # system inferred from the value set
        ({"coding": f"{tx.CPT}|97530"}, True),
        ({"system": tx.CPT, "code": "97110", "display": "Therapeutic exercise"}, True),
    ],
)
async def test_validate_code_get(
    client: httpx.AsyncClient, query: dict[str, str], expected: bool
) -> None:
    r = await client.get("ValueSet/$validate-code", params={"url": TIMED, **query})
    assert r.status_code == 200, r.text
    assert values(r.json())["result"] is expected


async def test_validate_code_post_codeable_concept(client: httpx.AsyncClient) -> None:
    cc = {"coding": [{"system": tx.CPT, "code": "97161"}, {"system": tx.HCPCS, "code": "G0283"}]}
    body = params(
        ("url", "Uri", f"{tx.BASE}/ValueSet/therapy-untimed-codes"),
        ("codeableConcept", "CodeableConcept", cc),
    )
    r = await client.post("ValueSet/$validate-code", json=body, headers=FHIR)
    assert r.status_code == 200, r.text
    assert values(r.json())["result"] is True
    wrong = params(("url", "Uri", TIMED), ("codeableConcept", "CodeableConcept", cc))
    r = await client.post("ValueSet/$validate-code", json=wrong, headers=FHIR)
    out = values(r.json())
    assert out["result"] is False and "97161" in out["message"] and "G0283" in out["message"]


async def test_validate_code_abstract_and_instance(client: httpx.AsyncClient) -> None:
    r = await client.get(
        "ValueSet/rehab-diagnoses/$validate-code", params={"system": tx.ICD10CM, "code": "M54.5"}
    )
    out = values(r.json())
    assert out["result"] is False and "abstract" in out["message"]
    r = await client.get(
        "ValueSet/rehab-diagnoses/$validate-code",
        params={"system": tx.ICD10CM, "code": "M54.5", "abstract": "true"},
    )
    assert values(r.json())["result"] is True


async def test_code_system_validate_code(client: httpx.AsyncClient) -> None:
    r = await client.get("CodeSystem/$validate-code", params={"url": tx.DISCIPLINE, "code": "OT"})
    assert values(r.json()) == {"result": True, "display": "Occupational therapy"}
    r = await client.get(
        "CodeSystem/$validate-code",
        params={"url": tx.DISCIPLINE, "code": "PT", "display": "Speech therapy"},
    )
    out = values(r.json())
    assert out["result"] is False and "display" in out["message"]
    r = await client.get("CodeSystem/$validate-code", params={"url": tx.DISCIPLINE, "code": "AT"})
    assert values(r.json())["result"] is False
    body = params(("coding", "Coding", {"system": tx.PERFORMER_FUNCTION, "code": "assistant"}))
    r = await client.post("CodeSystem/$validate-code", json=body, headers=FHIR)
    assert values(r.json())["result"] is True


async def test_lookup_with_properties(client: httpx.AsyncClient) -> None:
    r = await client.get(
        "CodeSystem/$lookup",
        params=[
            ("system", tx.CPT),
            ("code", "97550"),
            ("property", "minutes-per-unit"),
            ("property", "timed"),
        ],
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert values(body)["display"].startswith("Caregiver training")
    props = {
        p["part"][0]["valueCode"]: next(v for k, v in p["part"][1].items() if k.startswith("value"))
        for p in body["parameter"]
        if p["name"] == "property"
    }
    assert props == {"minutes-per-unit": 30, "timed": True}


async def test_lookup_post_coding_and_hierarchy(client: httpx.AsyncClient) -> None:
    body = params(("coding", "Coding", {"system": tx.ICD10CM, "code": "M54.50"}))
    r = await client.post("CodeSystem/$lookup", json=body, headers=FHIR)
    assert r.status_code == 200, r.text
    parents = [
        p["part"][1]["valueCode"]
        for p in r.json()["parameter"]
        if p["name"] == "property" and p["part"][0]["valueCode"] == "parent"
    ]
    assert parents == ["M54.5"]


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("M54", "M54.50", "subsumes"),
        ("M54.50", "M54", "subsumed-by"),
        ("M54.2", "M54.2", "equivalent"),
        ("M54.2", "M17.11", "not-subsumed"),
    ],
)
async def test_subsumes(client: httpx.AsyncClient, a: str, b: str, expected: str) -> None:
    r = await client.get(
        "CodeSystem/$subsumes", params={"system": tx.ICD10CM, "codeA": a, "codeB": b}
    )
    assert r.status_code == 200, r.text
    assert values(r.json()) == {"outcome": expected}


async def test_subsumes_post_codings_and_instance(client: httpx.AsyncClient) -> None:
    body = params(
        ("codingA", "Coding", {"system": tx.OUTCOME_MEASURE, "code": "performance-test"}),
        ("codingB", "Coding", {"system": tx.OUTCOME_MEASURE, "code": "BBS"}),
    )
    r = await client.post("CodeSystem/$subsumes", json=body, headers=FHIR)
    assert values(r.json()) == {"outcome": "subsumes"}
    r = await client.get(
        "CodeSystem/outcome-measure/$subsumes", params={"codeA": "TUG", "codeB": "LEFS"}
    )
    assert values(r.json()) == {"outcome": "not-subsumed"}


@pytest.mark.parametrize(
    ("method", "path", "query", "status", "text"),
    [
        ("GET", "ValueSet/$expand", {"url": "http://nowhere.example/vs"}, 404, "Unknown value set"),
        ("GET", "ValueSet/no-such-id/$expand", {}, 404, "ValueSet/no-such-id"),
        ("GET", "ValueSet/$expand", {}, 400, "Name the value set"),
        ("GET", "ValueSet/$expand", {"url": TIMED, "count": "-1"}, 400, "count"),
        ("GET", "ValueSet/$expand", {"url": TIMED, "count": "many"}, 400, "count"),
        ("GET", "ValueSet/$validate-code", {"url": TIMED}, 400, "code"),
        ("GET", "ValueSet/$validate-code", {"code": "97110"}, 400, "Name the value set"),
        ("GET", "CodeSystem/$lookup", {"system": tx.CPT}, 400, "code"),
        ("GET", "CodeSystem/$lookup", {"code": "97110"}, 400, "system"),
        (
            "GET",
            "CodeSystem/$lookup",
            {"system": "http://nowhere.example", "code": "x"},
            404,
            "Unknown code system",
        ),
        ("GET", "CodeSystem/$lookup", {"system": tx.DISCIPLINE, "code": "XX"}, 404, "Unknown code"),
        ("GET", "CodeSystem/$subsumes", {"system": tx.ICD10CM, "codeA": "M54"}, 400, "codeB"),
        (
            "GET",
            "CodeSystem/$subsumes",
            {"system": tx.DISCIPLINE, "codeA": "PT", "codeB": "XX"},
            404,
            "XX",
        ),
        ("GET", "Patient/$expand", {}, 404, "not available"),
        ("DELETE", "ValueSet/$expand", {}, 405, "does not accept"),
    ],
)
async def test_errors(
    client: httpx.AsyncClient, method: str, path: str, query: dict[str, str], status: int, text: str
) -> None:
    r = await client.request(method, path, params=query)
    assert text in outcome(r, status)


async def test_post_body_errors(client: httpx.AsyncClient) -> None:
    r = await client.post("ValueSet/$expand", json={"resourceType": "Patient"}, headers=FHIR)
    assert "Parameters" in outcome(r, 400)
    r = await client.post("ValueSet/$expand", content=b"{", headers=FHIR)
    outcome(r, 400)
    bad = {"resourceType": "Parameters", "parameter": [{"name": "url"}]}
    r = await client.post("ValueSet/$expand", json=bad, headers=FHIR)
    assert "value[x]" in outcome(r, 400)
    wrong_type = params(("valueSet", "resource", {"resourceType": "CodeSystem"}))
    r = await client.post("ValueSet/$expand", json=wrong_type, headers=FHIR)
    assert "ValueSet resource" in outcome(r, 400)


async def test_capability_statement_lists_the_operations(client: httpx.AsyncClient) -> None:
    r = await client.get("metadata")
    resources = {x["type"]: x for x in r.json()["rest"][0]["resource"]}
    assert {o["name"] for o in resources["ValueSet"]["operation"]} >= {"expand", "validate-code"}
    assert {o["name"] for o in resources["CodeSystem"]["operation"]} >= {
        "lookup",
        "subsumes",
        "validate-code",
    }
