"""The RESTful interactions of http.html, through the ASGI app."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

FHIR = {"Content-Type": "application/fhir+json"}


def patient(**extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [{"family": "Lovelace", "given": ["Ada"]}], **extra}


async def create(client: httpx.AsyncClient, resource: dict[str, Any]) -> httpx.Response:
    r = await client.post(resource["resourceType"], json=resource, headers=FHIR)
    assert r.status_code == 201, r.text
    return r


def outcome_text(r: httpx.Response) -> str:
    body = r.json()
    assert body["resourceType"] == "OperationOutcome", body
    return " ".join(i.get("diagnostics", "") for i in body["issue"])


async def test_create_assigns_id_and_meta_and_headers(client: httpx.AsyncClient) -> None:
    r = await create(client, patient(id="client-chosen"))
    body = r.json()
    assert body["id"] != "client-chosen"  # http.html#create: the id is ignored
    assert body["meta"]["versionId"] == "1"
    assert r.headers["etag"] == 'W/"1"'
    assert r.headers["location"].endswith(f"/fhir/Patient/{body['id']}/_history/1")
    assert "last-modified" in r.headers
    assert r.headers["content-type"].startswith("application/fhir+json")


async def test_read_vread_and_lossless_round_trip(client: httpx.AsyncClient) -> None:
    raw = (
        b'{"resourceType":"Observation","status":"final","code":{"text":"weight"},'
        b'"valueQuantity":{"value":72.50,"unit":"kg"},"effectiveDateTime":"2024-03-01T10:00:00+01:00",'
        b'"component":[{"code":{"text":"x"},"valueQuantity":{"value":1.0e2}}]}'
    )
    r = await client.post("Observation", content=raw, headers=FHIR)
    assert r.status_code == 201, r.text
    id = r.json()["id"]
    read = await client.get(f"Observation/{id}")
    assert read.status_code == 200
    assert b'"value":72.50' in read.content
    assert b'"value":1.0e2' in read.content
    assert b'"effectiveDateTime":"2024-03-01T10:00:00+01:00"' in read.content
    v1 = await client.get(f"Observation/{id}/_history/1")
    assert v1.status_code == 200 and v1.content == read.content
    assert read.headers["etag"] == 'W/"1"'
    assert (await client.get(f"Observation/{id}/_history/2")).status_code == 404
    assert (await client.get(f"Observation/{id}/_history/x")).status_code == 404


async def test_update_versions_and_update_as_create(client: httpx.AsyncClient) -> None:
    r = await client.put("Patient/p1", json=patient(id="p1"), headers=FHIR)
    assert r.status_code == 201, r.text
    assert r.headers["location"].endswith("/Patient/p1/_history/1")
    r = await client.put("Patient/p1", json=patient(id="p1", gender="female"), headers=FHIR)
    assert r.status_code == 200
    assert r.json()["meta"]["versionId"] == "2" and r.headers["etag"] == 'W/"2"'
    v1 = (await client.get("Patient/p1/_history/1")).json()
    assert "gender" not in v1


async def test_update_rejects_missing_or_mismatched_id(client: httpx.AsyncClient) -> None:
    r = await client.put("Patient/p2", json=patient(), headers=FHIR)
    assert r.status_code == 400 and "must carry an id" in outcome_text(r)
    r = await client.put("Patient/p2", json=patient(id="other"), headers=FHIR)
    assert r.status_code == 400 and "does not match" in outcome_text(r)
    r = await client.put(
        "Patient/p2", json={"resourceType": "Observation", "id": "p2"}, headers=FHIR
    )
    assert r.status_code == 400 and "does not match the type" in outcome_text(r)
    r = await client.put("Patient/bad_id!", json=patient(id="bad_id!"), headers=FHIR)
    assert r.status_code == 400


async def test_delete_then_read_is_gone_and_history_keeps_it(client: httpx.AsyncClient) -> None:
    await client.put("Patient/d1", json=patient(id="d1"), headers=FHIR)
    r = await client.delete("Patient/d1")
    assert r.status_code == 204 and r.headers["etag"] == 'W/"2"'
    r = await client.get("Patient/d1")
    assert r.status_code == 410 and r.json()["issue"][0]["code"] == "deleted"
    assert (await client.get("Patient/d1/_history/2")).status_code == 410
    assert (await client.get("Patient/d1/_history/1")).status_code == 200
    # deleting again, or something that never existed, is not an error
    assert (await client.delete("Patient/d1")).status_code == 204
    assert (await client.delete("Patient/never")).status_code == 204
    hist = (await client.get("Patient/d1/_history")).json()
    assert [e["request"]["method"] for e in hist["entry"]] == ["DELETE", "PUT"]
    assert "resource" not in hist["entry"][0]
    # update after delete revives it as a new version
    r = await client.put("Patient/d1", json=patient(id="d1"), headers=FHIR)
    assert r.status_code == 201 and r.json()["meta"]["versionId"] == "3"


async def test_if_match(client: httpx.AsyncClient) -> None:
    await client.put("Patient/m1", json=patient(id="m1"), headers=FHIR)
    r = await client.put("Patient/m1", json=patient(id="m1"), headers={**FHIR, "If-Match": 'W/"2"'})
    assert r.status_code == 412 and "version 1" in outcome_text(r)
    r = await client.put("Patient/m1", json=patient(id="m1"), headers={**FHIR, "If-Match": 'W/"1"'})
    assert r.status_code == 200
    r = await client.put("Patient/m1", json=patient(id="m1"), headers={**FHIR, "If-Match": "junk"})
    assert r.status_code == 400
    r = await client.delete("Patient/m1", headers={"If-Match": 'W/"1"'})
    assert r.status_code == 412


async def test_conditional_read_headers(client: httpx.AsyncClient) -> None:
    r = await client.put("Patient/c1", json=patient(id="c1"), headers=FHIR)
    r = await client.get("Patient/c1", headers={"If-None-Match": 'W/"1"'})
    assert r.status_code == 304 and r.content == b""
    r = await client.get("Patient/c1", headers={"If-None-Match": 'W/"0"'})
    assert r.status_code == 200


async def test_prefer_return(client: httpx.AsyncClient) -> None:
    r = await client.post("Patient", json=patient(), headers={**FHIR, "Prefer": "return=minimal"})
    assert r.status_code == 201 and r.content == b"" and "location" in r.headers
    r = await client.post(
        "Patient", json=patient(), headers={**FHIR, "Prefer": "return=OperationOutcome"}
    )
    assert r.status_code == 201 and r.json()["resourceType"] == "OperationOutcome"
    r = await client.post(
        "Patient", json=patient(), headers={**FHIR, "Prefer": "return=representation"}
    )
    assert r.json()["resourceType"] == "Patient"


async def test_format_pretty_summary_elements(client: httpx.AsyncClient) -> None:
    await client.put(
        "Patient/f1",
        json=patient(
            id="f1",
            gender="male",
            text={
                "status": "generated",
                "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>',
            },
            photo=[{"contentType": "image/png", "data": "AAAA"}],
        ),
        headers=FHIR,
    )
    r = await client.get("Patient/f1", params={"_pretty": "true"})
    assert b'\n  "resourceType"' in r.content
    r = await client.get("Patient/f1", params={"_format": "application/fhir+json"})
    assert r.status_code == 200
    r = await client.get("Patient/f1", params={"_format": "xml"})
    assert r.status_code == 406
    r = await client.get("Patient/f1", headers={"Accept": "application/fhir+xml"})
    assert r.status_code == 406
    s = (await client.get("Patient/f1", params={"_summary": "true"})).json()
    assert "photo" not in s and "text" not in s and s["gender"] == "male"
    assert any(t["code"] == "SUBSETTED" for t in s["meta"]["tag"])
    t = (await client.get("Patient/f1", params={"_summary": "text"})).json()
    assert set(t) <= {"resourceType", "id", "meta", "text"}
    d = (await client.get("Patient/f1", params={"_summary": "data"})).json()
    assert "text" not in d and "photo" in d
    e = (await client.get("Patient/f1", params={"_elements": "gender"})).json()
    assert set(e) == {"resourceType", "id", "meta", "gender"}
    r = await client.get("Patient/f1", params={"_summary": "bogus"})
    assert r.status_code == 400


async def test_search_entries_are_the_stored_resources(client: httpx.AsyncClient) -> None:
    """Search Bundles embed the stored content as written (decimal text kept), and
    ``_pretty`` indents the entries as well as the Bundle."""
    obs = {
        "resourceType": "Observation",
        "id": "s1",
        "status": "final",
        "code": {"text": "grip"},
        "valueQuantity": {"value": 12.50, "unit": "kg"},
    }
    body = b'{"resourceType":"Observation","id":"s1","status":"final","code":{"text":"grip"},'
    body += b'"valueQuantity":{"value":12.50,"unit":"kg"}}'
    assert (await client.put("Observation/s1", content=body, headers=FHIR)).status_code == 201
    stored = (await client.get("Observation/s1")).content
    r = await client.get("Observation", params={"_id": "s1"})
    assert r.status_code == 200
    assert stored in r.content  # the very bytes a read returns
    assert b'"value":12.50' in r.content
    entry = r.json()["entry"][0]
    assert entry["resource"]["id"] == obs["id"] and entry["search"]["mode"] == "match"
    pretty = await client.get("Observation", params={"_id": "s1", "_pretty": "true"})
    assert b'\n      "resource": {\n        "resourceType": "Observation"' in pretty.content
    assert b'"value": 12.50' in pretty.content
    assert pretty.json() == r.json()
    shaped = (await client.get("Observation", params={"_id": "s1", "_elements": "status"})).json()
    assert "valueQuantity" not in shaped["entry"][0]["resource"]
    history = await client.get("Observation/s1/_history")
    assert stored in history.content and b'"value":12.50' in history.content


async def test_error_statuses(client: httpx.AsyncClient) -> None:
    r = await client.post("Patient", content=b'{"resourceType": "Patient",', headers=FHIR)
    assert r.status_code == 400 and "malformed JSON" in outcome_text(r)
    r = await client.post(
        "Patient",
        content=b'{"resourceType":"Patient","gender":"male","gender":"female"}',
        headers=FHIR,
    )
    assert r.status_code == 400 and "duplicate" in outcome_text(r)
    r = await client.get("Banana/1")
    assert r.status_code == 404 and "Unknown resource type" in outcome_text(r)
    r = await client.get("Patient/nope")
    assert r.status_code == 404
    r = await client.post(
        "Patient", content=b"<Patient/>", headers={"Content-Type": "application/xml"}
    )
    assert r.status_code == 415
    r = await client.post(
        "Patient", json={"resourceType": "Patient", "gender": "banana"}, headers=FHIR
    )
    assert r.status_code == 400
    body = r.json()
    assert any("Patient.gender" in i.get("expression", []) for i in body["issue"])
    r = await client.post("Patient", json=[1, 2], headers=FHIR)
    assert r.status_code == 400
    r = await client.post("Patient", content=b"", headers=FHIR)
    assert r.status_code == 400
    r = await client.request("PATCH", "metadata")
    assert r.status_code == 405
    r = await client.post("Patient/x/_history/1", json=patient(), headers=FHIR)
    assert r.status_code == 405
    r = await client.post("Patient", content=b"\xff\xfe", headers=FHIR)
    assert r.status_code == 400


async def test_body_too_large(client: httpx.AsyncClient) -> None:
    big = (
        b'{"resourceType":"Patient","id":"x","name":[{"text":"'
        + b"a" * (33 * 1024 * 1024)
        + b'"}]}'
    )
    r = await client.post("Patient", content=big, headers=FHIR)
    assert r.status_code == 413


async def test_history_levels_and_paging(client: httpx.AsyncClient) -> None:
    for i in range(5):
        await client.put(
            "Patient/h1", json=patient(id="h1", birthDate=f"200{i}-01-01"), headers=FHIR
        )
    await client.put(
        "Practitioner/h2", json={"resourceType": "Practitioner", "id": "h2"}, headers=FHIR
    )
    page = (await client.get("Patient/h1/_history", params={"_count": "2"})).json()
    assert page["type"] == "history"
    versions = [e["resource"]["meta"]["versionId"] for e in page["entry"]]
    assert versions == ["5", "4"]
    seen = list(versions)
    while nxt := next((link["url"] for link in page["link"] if link["relation"] == "next"), None):
        # a write between pages must not shift the later pages
        await client.put("Patient/h1", json=patient(id="h1"), headers=FHIR)
        page = (await client.get(nxt)).json()
        seen += [e["resource"]["meta"]["versionId"] for e in page.get("entry", [])]
    assert seen == ["5", "4", "3", "2", "1"]
    type_hist = (await client.get("Patient/_history")).json()
    assert all(e["fullUrl"].split("/")[-2] == "Patient" for e in type_hist["entry"])
    system = (await client.get("_history", params={"_count": "1000"})).json()
    types = {e["fullUrl"].split("/")[-2] for e in system["entry"]}
    assert {"Patient", "Practitioner"} <= types
    last = system["entry"][0]["response"]["lastModified"]
    since = (await client.get("_history", params={"_since": last})).json()
    assert 1 <= len(since["entry"]) < len(system["entry"])
    assert (await client.get("Patient/none/_history")).status_code == 404
    assert (await client.get("_history", params={"_since": "yesterday"})).status_code == 400
    assert (await client.get("_history", params={"_count": "-1"})).status_code == 400


async def test_capability_statement(client: httpx.AsyncClient) -> None:
    cs = (await client.get("metadata")).json()
    assert cs["resourceType"] == "CapabilityStatement"
    assert cs["fhirVersion"] == "4.0.1" and cs["kind"] == "instance"
    assert "application/fhir+json" in cs["format"]
    rest = cs["rest"][0]
    types = {r["type"]: r for r in rest["resource"]}
    assert len(types) >= 140 and "Patient" in types and "ChargeItemDefinition" in types
    codes = {i["code"] for i in types["Patient"]["interaction"]}
    assert {
        "read",
        "vread",
        "update",
        "patch",
        "delete",
        "history-instance",
        "history-type",
        "create",
        "search-type",
    } <= codes
    assert {i["code"] for i in rest["interaction"]} >= {"transaction", "batch", "history-system"}
    assert any(p["name"] == "family" for p in types["Patient"]["searchParam"])


async def test_head(client: httpx.AsyncClient) -> None:
    await client.put("Patient/hd", json=patient(id="hd"), headers=FHIR)
    r = await client.head("Patient/hd")
    assert r.status_code == 200 and r.content == b"" and r.headers["etag"] == 'W/"1"'


async def test_application_json_accepted(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "Patient",
        content=orjson.dumps(patient()),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    assert r.status_code == 201


async def test_patch_json_and_fhirpath(client: httpx.AsyncClient) -> None:
    await client.put("Patient/pt", json=patient(id="pt"), headers=FHIR)
    ops = [{"op": "add", "path": "/gender", "value": "female"}]
    r = await client.patch(
        "Patient/pt", json=ops, headers={"Content-Type": "application/json-patch+json"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["gender"] == "female" and r.json()["meta"]["versionId"] == "2"
    params = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "operation",
                "part": [
                    {"name": "type", "valueCode": "replace"},
                    {"name": "path", "valueString": "Patient.gender"},
                    {"name": "value", "valueCode": "male"},
                ],
            }
        ],
    }
    r = await client.patch("Patient/pt", json=params, headers=FHIR)
    assert r.status_code == 200, r.text
    assert r.json()["gender"] == "male"
    hist = (await client.get("Patient/pt/_history")).json()
    assert hist["entry"][0]["request"]["method"] == "PATCH"
    # a patch producing an invalid resource is unprocessable, and nothing is written
    bad = [{"op": "replace", "path": "/gender", "value": "banana"}]
    r = await client.patch(
        "Patient/pt", json=bad, headers={"Content-Type": "application/json-patch+json"}
    )
    assert r.status_code == 422
    assert (await client.get("Patient/pt")).json()["meta"]["versionId"] == "3"
    # a failing test op
    r = await client.patch(
        "Patient/pt",
        json=[{"op": "test", "path": "/gender", "value": "female"}],
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert r.status_code == 422
    r = await client.patch("Patient/pt", content=b"x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    r = await client.patch(
        "Patient/pt",
        json=ops,
        headers={"Content-Type": "application/json-patch+json", "If-Match": 'W/"1"'},
    )
    assert r.status_code == 412
    r = await client.patch(
        "Patient/none", json=ops, headers={"Content-Type": "application/json-patch+json"}
    )
    assert r.status_code == 404
