"""Claim generation: Encounter/$generate-claim, Claim/$generate and the Claim scrubber,
at the API over the demo clinic (examples/) with a fee schedule of ChargeItemDefinitions."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_server.billing.adapter import code_catalog
from fhir_server.errors import FhirError
from fhir_server.interactions import write as write_core
from fhir_server.operations import claims as claims_op
from fhir_server.operations.claims_gather import BILLING_STATUS, StoreSource
from fhir_server.operations.claims_scrub import scrub_claim
from fhir_server.storage.port import HistoryQuery
from fhir_server.storage.sqlite.store import SqliteStore
from fhir_server.validation import validate

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo-clinic.json"
FHIR = {"Content-Type": "application/fhir+json"}
REHAB_CLAIM = "http://rehabfhir.org/fhir/StructureDefinition/rehab-claim"
EXT = "http://rehabfhir.org/fhir/StructureDefinition/"
PRICE = "30.00"


def _fees() -> dict[str, Any]:
    entries = []
    for code, info in sorted(code_catalog().items()):
        entries.append(
            {
                "resource": {
                    "resourceType": "ChargeItemDefinition",
                    "id": f"fee-{code}",
                    "url": f"http://example.org/fee/{code}",
                    "status": "active",
                    "code": {"coding": [{"system": info.system, "code": code}]},
                    "propertyGroup": [
                        {
                            "priceComponent": [
                                {"type": "base", "amount": {"value": 30.00, "currency": "USD"}}
                            ]
                        }
                    ],
                },
                "request": {"method": "PUT", "url": f"ChargeItemDefinition/fee-{code}"},
            }
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


@pytest.fixture
async def clinic(client: httpx.AsyncClient) -> httpx.AsyncClient:
    r = await client.post("", json=json.loads(DEMO.read_text()), headers=FHIR)
    assert r.status_code == 200, r.text
    r = await client.post("", json=_fees(), headers=FHIR)
    assert r.status_code == 200, r.text
    return client


def params(**values: Any) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    for name, value in values.items():
        if isinstance(value, bool):
            out.append({"name": name, "valueBoolean": value})
        elif name in ("patient", "coverage"):
            out.append({"name": name, "valueReference": {"reference": value}})
        elif name in ("start", "end"):
            out.append({"name": name, "valueDate": value})
        elif name == "priorAmount":
            for group, amount in value.items():
                out.append(
                    {
                        "name": name,
                        "part": [
                            {"name": "group", "valueCode": group},
                            {"name": "amount", "valueMoney": {"value": amount, "currency": "USD"}},
                        ],
                    }
                )
        else:
            out.append({"name": name, "valueCode": value})
    return {"resourceType": "Parameters", "parameter": out}


async def session(
    client: httpx.AsyncClient, enc: str, **values: Any
) -> tuple[httpx.Response, dict[str, Any]]:
    r = await client.post(f"Encounter/{enc}/$generate-claim", json=params(**values), headers=FHIR)
    return r, r.json()


def part(body: dict[str, Any], name: str) -> Any:
    return next((p["resource"] for p in body["parameter"] if p["name"] == name), None)


def lines(claim: dict[str, Any]) -> list[tuple[str, int, list[str]]]:
    return [
        (
            i["productOrService"]["coding"][0]["code"],
            i["quantity"]["value"],
            [m["coding"][0]["code"] for m in i.get("modifier", ())],
        )
        for i in claim["item"]
    ]


def errors(body: dict[str, Any]) -> list[str]:
    outcome = part(body, "issues") if body["resourceType"] == "Parameters" else body
    return [i["diagnostics"] for i in outcome["issue"] if i["severity"] == "error"]


def infos(body: dict[str, Any]) -> list[str]:
    return [
        i["diagnostics"] for i in part(body, "issues")["issue"] if i["severity"] == "information"
    ]


def assert_valid(claim: dict[str, Any]) -> None:
    problems = [
        i for i in validate(claim, profiles=[REHAB_CLAIM]) if i.severity in ("error", "fatal")
    ]
    assert problems == []


async def get(client: httpx.AsyncClient, ref: str) -> dict[str, Any]:
    r = await client.get(ref)
    assert r.status_code == 200, r.text
    found: dict[str, Any] = r.json()
    return found


async def put(client: httpx.AsyncClient, resource: dict[str, Any]) -> None:
    resource = copy.deepcopy(resource)
    resource.pop("meta", None)  # the test's variants need not meet the rehab profiles
    r = await client.put(
        f"{resource['resourceType']}/{resource['id']}", json=resource, headers=FHIR
    )
    assert r.status_code in (200, 201), r.text


async def claim_count(client: httpx.AsyncClient) -> int:
    r = await client.get("Claim", params={"_summary": "count"})
    total: int = r.json()["total"]
    return total


# --- one session per discipline -------------------------------------------------------------


async def test_pt_session_medicare_8_minute_rule(clinic: httpx.AsyncClient) -> None:
    r, body = await session(clinic, "enc-ada-2")
    assert r.status_code == 200
    claim = part(body, "claim")
    assert claim["status"] == "draft" and "id" not in claim  # a preview
    assert sorted(lines(claim)) == [("97110", 1, ["GP"]), ("97112", 2, ["GP"])]
    assert errors(body) == []
    assert any("total timed minutes 47" in i and "8-minute rule" in i for i in infos(body))
    assert any(i.startswith("line 2: 97112") and "modifiers GP" in i for i in infos(body))
    assert claim["total"]["value"] == 90.0
    assert claim["insurer"] == {"reference": "Organization/medicare"}
    assert_valid(claim)


async def test_ot_evaluation_and_assistant_co(clinic: httpx.AsyncClient) -> None:
    _, body = await session(clinic, "enc-kj-ot-1")
    assert lines(part(body, "claim")) == [("97167", 1, ["GO"])]
    assert_valid(part(body, "claim"))
    _, body = await session(clinic, "enc-kj-ot-2")
    claim = part(body, "claim")
    assert sorted(lines(claim)) == [("97530", 2, ["CO", "GO"]), ("97535", 1, ["GO"])]
    assert errors(body) == []
    assert_valid(claim)


async def test_slp_session(clinic: httpx.AsyncClient) -> None:
    _, body = await session(clinic, "enc-kj-slp-2")
    claim = part(body, "claim")
    assert sorted(lines(claim)) == [("92507", 1, ["GN"]), ("92526", 1, ["GN"])]
    assert errors(body) == []
    assert_valid(claim)


async def test_pt_assistant_cq_per_unit(clinic: httpx.AsyncClient) -> None:
    _, body = await session(clinic, "enc-ada-4")
    claim = part(body, "claim")
    assert sorted(lines(claim)) == [
        ("97110", 1, ["CQ", "GP"]),
        ("97116", 1, ["CQ", "GP"]),
        ("97140", 1, ["GP"]),
    ]
    assert any("97035" in i and "0 units" in i for i in infos(body))
    assert_valid(claim)


async def test_commercial_payer_cpt_per_code_and_ncci_pair(clinic: httpx.AsyncClient) -> None:
    _, body = await session(clinic, "enc-alan-2")
    claim = part(body, "claim")
    # per code: 10 -> 1, 15 -> 1, 23 -> 2 (Medicare would pool 48 minutes into 3 units)
    assert sorted(lines(claim)) == [
        ("97110", 1, ["GP"]),
        ("97140", 1, ["GP"]),
        ("97530", 2, ["59", "GP"]),
    ]
    assert claim["insurance"][0]["preAuthRef"] == ["PA-2026-4471"]
    assert any("CPT rule" in i for i in infos(body))
    assert any("NCCI pair 97140/97530" in i for i in infos(body))
    assert errors(body) == []
    assert_valid(claim)


async def _prior_claim(client: httpx.AsyncClient, amount: str, modifier: str = "GP") -> None:
    earlier = {
        "resourceType": "Claim",
        "id": "claim-earlier",
        "status": "active",
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/claim-type",
                    "code": "professional",
                }
            ]
        },
        "use": "claim",
        "patient": {"reference": "Patient/pat-ada"},
        "created": "2026-06-01",
        "insurer": {"reference": "Organization/medicare"},
        "provider": {"reference": "Organization/clinic"},
        "priority": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/processpriority",
                    "code": "normal",
                }
            ]
        },
        "insurance": [
            {"sequence": 1, "focal": True, "coverage": {"reference": "Coverage/cov-ada"}}
        ],
        "item": [
            {
                "sequence": 1,
                "productOrService": {
                    "coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "97110"}]
                },
                "modifier": [{"coding": [{"code": modifier}]}],
                "servicedDate": "2026-05-20",
                "quantity": {"value": 1},
                "net": {"value": float(amount), "currency": "USD"},
            }
        ],
    }
    await put(client, earlier)


async def test_medicare_over_the_kx_threshold(clinic: httpx.AsyncClient) -> None:
    await _prior_claim(clinic, "2450.00")  # 2026 threshold 2480: the second line passes it
    _, body = await session(clinic, "enc-ada-2")
    claim = part(body, "claim")
    assert lines(claim) == [("97110", 1, ["GP"]), ("97112", 2, ["GP", "KX"])]
    assert any("> threshold 2480" in i for i in infos(body))
    assert_valid(claim)


async def test_kx_with_a_prior_amount_from_other_providers(clinic: httpx.AsyncClient) -> None:
    _, body = await session(clinic, "enc-ada-2", priorAmount={"PT-SLP": 2500})
    assert all("KX" in mods for _, _, mods in lines(part(body, "claim")))
    _, body = await session(clinic, "enc-kj-ot-2", priorAmount={"PT-SLP": 2500})
    assert all("KX" not in mods for _, _, mods in lines(part(body, "claim")))  # OT: own group


# --- holds ---------------------------------------------------------------------------------------


async def _uncertified(c: httpx.AsyncClient) -> str:
    plan = await get(c, "CarePlan/poc-ada-pt")
    plan["extension"] = [e for e in plan["extension"] if e["url"] != EXT + "plan-certification"]
    await put(c, plan)
    return "enc-ada-2"


async def _no_plan_for_the_date(c: httpx.AsyncClient) -> str:
    plan = await get(c, "CarePlan/poc-ada-pt")
    plan["period"]["start"] = "2026-10-08"
    await put(c, plan)
    return "enc-ada-2"


async def _expired(c: httpx.AsyncClient) -> str:
    return "enc-grace-2"


async def _more_visits(c: httpx.AsyncClient, n: int) -> str:
    enc = await get(c, "Encounter/enc-ada-3")
    for k in range(n):
        enc["id"] = f"enc-ada-extra-{k}"
        on = f"2026-10-{15 + k:02d}"
        enc["period"] = {"start": f"{on}T09:00:00-05:00", "end": f"{on}T09:45:00-05:00"}
        await put(c, enc)
        for p in ("ex", "mt"):
            proc = await get(c, f"Procedure/proc-ada-3-{p}")
            proc["id"] = f"proc-ada-extra-{k}-{p}"
            proc["encounter"] = {"reference": f"Encounter/enc-ada-extra-{k}"}
            start = proc["performedPeriod"]["start"].replace("2026-10-09", on)
            end = proc["performedPeriod"]["end"].replace("2026-10-09", on)
            proc["performedPeriod"] = {"start": start, "end": end}
            await put(c, proc)
    return f"enc-ada-extra-{n - 1}"


async def _progress_overdue(c: httpx.AsyncClient) -> str:
    return await _more_visits(c, 7)  # treatment day 11 since the evaluation of 10-02


async def _coverage(c: httpx.AsyncClient, **changes: Any) -> str:
    cov = await get(c, "Coverage/cov-alan")
    auth = next(e for e in cov["extension"] if e["url"] == EXT + "prior-authorization")
    if changes.get("remove"):
        cov["extension"].remove(auth)
    for part_ in auth["extension"]:
        if part_["url"] == "period" and "end" in changes:
            part_["valuePeriod"]["end"] = changes["end"]
        if part_["url"] == "visits" and "visits" in changes:
            part_["valuePositiveInt"] = changes["visits"]
    await put(c, cov)
    return "enc-alan-2"


async def _auth_missing(c: httpx.AsyncClient) -> str:
    return await _coverage(c, remove=True)


async def _auth_expired(c: httpx.AsyncClient) -> str:
    return await _coverage(c, end="2026-10-06")


async def _auth_exhausted(c: httpx.AsyncClient) -> str:
    await _coverage(c, visits=1)
    r, body = await session(c, "enc-alan-1", persist=True)  # uses the one visit
    assert r.status_code == 200, body
    return "enc-alan-2"


async def _not_finished(c: httpx.AsyncClient) -> str:
    enc = await get(c, "Encounter/enc-ada-2")
    enc["status"] = "in-progress"
    await put(c, enc)
    return "enc-ada-2"


async def _timed_without_minutes(c: httpx.AsyncClient) -> str:
    proc = await get(c, "Procedure/proc-ada-2-ex")
    proc.pop("extension")
    await put(c, proc)
    return "enc-ada-2"


async def _student_alone(c: httpx.AsyncClient) -> str:
    proc = await get(c, "Procedure/proc-ada-2-ex")
    performer = proc["performer"][0]
    performer["function"]["coding"][0]["code"] = "student"
    performer["function"]["coding"][0].pop("display", None)
    await put(c, proc)
    return "enc-ada-2"


HOLDS = {
    "not certified": (_uncertified, "is not certified"),
    "no plan of care": (_no_plan_for_the_date, "no plan of care covers"),
    "certification expired": (_expired, "certification expired"),
    "progress report overdue": (_progress_overdue, "progress report overdue"),
    "authorization missing": (_auth_missing, "no prior authorization"),
    "authorization expired": (_auth_expired, "expired on 2026-10-06"),
    "authorization exhausted": (_auth_exhausted, "1 of 1 visits used"),
    "session not finished": (_not_finished, "not finished"),
    "timed without minutes": (_timed_without_minutes, "no direct minutes"),
    "student alone": (_student_alone, "student alone"),
}


@pytest.mark.parametrize("case", list(HOLDS))
async def test_each_hold(clinic: httpx.AsyncClient, case: str) -> None:
    setup, expected = HOLDS[case]
    enc = await setup(clinic)
    before = await claim_count(clinic)
    r, body = await session(clinic, enc)
    assert r.status_code == 200
    assert any(expected in e for e in errors(body)), errors(body)
    assert part(body, "claim")["status"] == "draft"
    r, body = await session(clinic, enc, persist=True)
    assert r.status_code == 422
    assert body["resourceType"] == "OperationOutcome"
    assert any(expected in e for e in errors(body))
    assert await claim_count(clinic) == before
    assert BILLING_STATUS not in json.dumps(await get(clinic, f"Encounter/{enc}"))


async def test_a_progress_note_by_the_therapist_lifts_the_hold(clinic: httpx.AsyncClient) -> None:
    enc = await _progress_overdue(clinic)
    note = {
        "resourceType": "DocumentReference",
        "id": "note-ada-progress",
        "status": "current",
        "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3"}]},
        "subject": {"reference": "Patient/pat-ada"},
        "date": "2026-10-16T12:00:00-05:00",
        "author": [{"reference": "PractitionerRole/role-pt-jones"}],
        "content": [{"attachment": {"contentType": "text/plain", "data": "cHJvZ3Jlc3M="}}],
    }
    await put(clinic, note)
    _, body = await session(clinic, enc)
    assert not any("progress report" in e for e in errors(body))


# --- persisting -------------------------------------------------------------------------------


async def test_preview_writes_nothing(clinic: httpx.AsyncClient, store: SqliteStore) -> None:
    before = (await store.history(HistoryQuery(count=1))).versions[0]
    for enc in ("enc-ada-2", "enc-grace-2"):
        r, _ = await session(clinic, enc)
        assert r.status_code == 200
    r = await clinic.post(
        "Claim/$generate",
        json=params(patient="Patient/pat-ada", start="2026-10-01", end="2026-10-31"),
    )
    assert r.status_code == 200
    after = (await store.history(HistoryQuery(count=1))).versions[0]
    assert (after.resource_type, after.id, after.version) == (
        before.resource_type,
        before.id,
        before.version,
    )


async def test_persist_stores_the_claim_and_marks_the_session_once(
    clinic: httpx.AsyncClient,
) -> None:
    r, body = await session(clinic, "enc-ada-2", persist=True)
    assert r.status_code == 200
    claim = part(body, "claim")
    assert claim["status"] == "active" and claim["meta"]["versionId"] == "1"
    assert_valid(claim)
    stored = await get(clinic, f"Claim/{claim['id']}")
    assert stored["item"] == claim["item"]
    enc = await get(clinic, "Encounter/enc-ada-2")
    assert {"system": BILLING_STATUS, "code": "billed"}.items() <= enc["meta"]["tag"][0].items()
    assert enc["meta"]["versionId"] == "2"
    found = (await clinic.get("Encounter", params={"_tag": f"{BILLING_STATUS}|billed"})).json()
    assert [e["resource"]["id"] for e in found["entry"]] == ["enc-ada-2"]
    back = (await clinic.get("Claim", params={"encounter": "Encounter/enc-ada-2"})).json()
    assert [e["resource"]["id"] for e in back["entry"]] == [claim["id"]]

    r, body = await session(clinic, "enc-ada-2", persist=True)
    assert r.status_code == 422
    assert any("already billed" in e for e in errors(body))
    r, body = await session(clinic, "enc-ada-2")  # a preview says so too
    assert r.status_code == 200 and any("already billed" in e for e in errors(body))
    assert await claim_count(clinic) == 1


async def test_a_claim_naming_the_session_counts_as_billed(clinic: httpx.AsyncClient) -> None:
    r, body = await session(clinic, "enc-ada-2", persist=True)
    enc = await get(clinic, "Encounter/enc-ada-2")
    enc["meta"].pop("tag")  # someone removed the mark: the Claim still names the session
    r = await clinic.put("Encounter/enc-ada-2", json=enc, headers=FHIR)
    assert r.status_code == 200
    r, body = await session(clinic, "enc-ada-2", persist=True)
    assert r.status_code == 422 and any("already billed on Claim/" in e for e in errors(body))


async def test_claim_and_marks_are_all_or_nothing(
    clinic: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def failing_update(*args: Any, **kwargs: Any) -> Any:
        raise FhirError.of(409, "conflict", "simulated failure while marking the session")

    monkeypatch.setattr(write_core, "update", failing_update)
    r, _ = await session(clinic, "enc-ada-2", persist=True)
    assert r.status_code == 409
    assert await claim_count(clinic) == 0
    assert "tag" not in (await get(clinic, "Encounter/enc-ada-2"))["meta"]


# --- Claim/$generate -------------------------------------------------------------------------


async def test_range_one_line_per_code_per_date_and_billed_once(clinic: httpx.AsyncClient) -> None:
    body = params(patient="Patient/pat-ada", start="2026-10-01", end="2026-10-31", persist=True)
    r = await clinic.post("Claim/$generate", json=body)
    assert r.status_code == 200, r.text
    claim = part(r.json(), "claim")
    assert claim["billablePeriod"] == {"start": "2026-10-02", "end": "2026-10-14"}
    keys = [
        (i["servicedDate"], i["productOrService"]["coding"][0]["code"], "CQ" in json.dumps(i))
        for i in claim["item"]
    ]
    assert len(keys) == len(set(keys)) == 9
    assert {e["reference"] for i in claim["item"] for e in i["encounter"]} == {
        f"Encounter/enc-ada-{n}" for n in (1, 2, 3, 4)
    }
    assert_valid(claim)
    r = await clinic.post("Claim/$generate", json=body)
    assert r.status_code == 422
    assert any("no finished, not yet billed" in e for e in errors(r.json()))
    preview = dict(body, parameter=body["parameter"][:3])
    r = await clinic.post("Claim/$generate", json=preview)
    assert r.status_code == 200 and part(r.json(), "claim") is None


async def test_range_by_discipline_and_query_parameters(clinic: httpx.AsyncClient) -> None:
    r = await clinic.post(
        "Claim/$generate",
        params={
            "patient": "Patient/pat-katherine",
            "start": "2026-10-01",
            "end": "2026-10-31",
            "discipline": "SLP",
        },
        json=params(),
    )
    assert r.status_code == 200, r.text
    claim = part(r.json(), "claim")
    assert {m for _, _, mods in lines(claim) for m in mods} == {"GN"}
    assert len(claim["item"]) == 4
    assert_valid(claim)


async def test_range_skips_what_is_already_billed(clinic: httpx.AsyncClient) -> None:
    await session(clinic, "enc-ada-1", persist=True)
    r = await clinic.post(
        "Claim/$generate",
        json=params(patient="Patient/pat-ada", start="2026-10-01", end="2026-10-31"),
    )
    body = r.json()
    assert "2026-10-02" not in {i["servicedDate"] for i in part(body, "claim")["item"]}
    assert any("already billed: left out" in i for i in infos(body))


async def test_bad_inputs(clinic: httpx.AsyncClient) -> None:
    r = await clinic.post("Encounter/nope/$generate-claim", json=params())
    assert r.status_code == 404
    r = await clinic.post("Claim/$generate", json=params(start="2026-10-01", end="2026-10-31"))
    assert r.status_code == 400
    r = await clinic.post(
        "Claim/$generate",
        json=params(patient="Patient/pat-ada", start="2026-10-31", end="2026-10-01"),
    )
    assert r.status_code == 400
    r = await clinic.post("Encounter/enc-ada-2/$generate-claim", params={"persist": "maybe"})
    assert r.status_code == 400
    r = await clinic.post("Encounter/enc-ada-2/$generate-claim", json={"resourceType": "Patient"})
    assert r.status_code == 400
    r = await clinic.post("Patient/pat-ada/$generate-claim", json=params())
    assert r.status_code == 404


async def test_explicit_coverage(clinic: httpx.AsyncClient) -> None:
    _, body = await session(clinic, "enc-ada-2", coverage="Coverage/cov-ada")
    assert part(body, "claim")["insurance"][0]["coverage"] == {"reference": "Coverage/cov-ada"}
    r, body = await session(clinic, "enc-ada-2", coverage="Coverage/missing")
    assert r.status_code == 200 and any("not known" in e for e in errors(body))


async def test_no_fee_schedule_holds(client: httpx.AsyncClient) -> None:
    await client.post("", json=json.loads(DEMO.read_text()), headers=FHIR)
    _, body = await session(client, "enc-ada-2")
    assert any("no unit price" in e for e in errors(body))


# --- conformance ----------------------------------------------------------------------------


async def test_capability_statement_lists_the_operations(client: httpx.AsyncClient) -> None:
    cs = (await client.get("metadata")).json()
    ops = {
        (r["type"], o["name"]): o["definition"]
        for r in cs["rest"][0]["resource"]
        for o in r.get("operation", ())
    }
    base = "http://rehabfhir.org/fhir/OperationDefinition/"
    assert ops[("Encounter", "generate-claim")] == base + "Encounter-generate-claim"
    assert ops[("Claim", "generate")] == base + "Claim-generate"


@pytest.mark.parametrize("name", ["Encounter-generate-claim", "Claim-generate"])
def test_operation_definitions_are_valid(name: str) -> None:
    od = json.loads((ROOT / "profiles" / f"OperationDefinition-{name}.json").read_text())
    assert [i for i in validate(od) if i.severity in ("error", "fatal")] == []
    assert od["url"].endswith(name)
    registered = {claims_op.GENERATE_CLAIM.definition, claims_op.GENERATE.definition}
    assert od["url"] in registered


# --- the scrubber ---------------------------------------------------------------------------


async def test_scrubber_passes_a_generated_claim_and_finds_payer_problems(
    clinic: httpx.AsyncClient, store: SqliteStore
) -> None:
    _, body = await session(clinic, "enc-alan-2")
    claim = part(body, "claim")
    source = StoreSource(store)
    assert [i for i in await scrub_claim(source, claim) if i.severity == "error"] == []

    bad = copy.deepcopy(claim)
    bad["item"][2]["modifier"] = [{"coding": [{"code": "GP"}]}]  # 97530 without 59
    bad["item"][0]["modifier"] = []  # no GP/GO/GN
    bad["item"][1]["modifier"] = [{"coding": [{"code": m}]} for m in ("GP", "GO", "KX", "59", "CO")]
    bad["item"][1]["diagnosisSequence"] = [1, 2, 3, 4, 9]
    found = [i.diagnostics for i in await scrub_claim(source, bad) if i.severity == "error"]
    assert any("needs a bypass modifier" in f for f in found)
    assert any("line 1: no discipline modifier" in f for f in found)
    assert any("line 2: 5 modifiers" in f for f in found)
    assert any("line 2: more than one discipline modifier" in f for f in found)
    assert any("line 2: 5 diagnosis pointers" in f for f in found)
    assert any("pointer 9 names no diagnosis" in f for f in found)

    _, body = await session(clinic, "enc-ada-2")
    medicare = part(body, "claim")
    medicare["item"][0]["productOrService"]["coding"][0]["code"] = "97010"
    found = [i.diagnostics for i in await scrub_claim(source, medicare) if i.severity == "error"]
    assert any("97010 is bundled" in f for f in found)
    await _prior_claim(clinic, "2450.00")
    _, body = await session(clinic, "enc-ada-2")
    kx = part(body, "claim")
    assert [i for i in await scrub_claim(source, kx) if i.severity == "error"] == []
    for item in kx["item"]:
        item["modifier"] = [m for m in item["modifier"] if m["coding"][0]["code"] != "KX"]
    found = [i.diagnostics for i in await scrub_claim(source, kx) if i.severity == "error"]
    assert any("needs KX" in f for f in found)
    assert await scrub_claim(source, {"resourceType": "Patient"}) == []


async def test_claim_validate_runs_the_scrubber(clinic: httpx.AsyncClient) -> None:
    _, body = await session(clinic, "enc-alan-2")
    claim = part(body, "claim")
    claim["item"][2]["modifier"] = [{"coding": [{"code": "GP"}]}]
    r = await clinic.post("Claim/$validate", json=claim, headers=FHIR)
    assert r.status_code == 200
    assert any("needs a bypass modifier" in e for e in errors(r.json()))
