"""The demo clinic (examples/): it loads through the API and through the loader `make
serve` uses, and it is complete and consistent: every reference resolves, every resource
declares and meets its rehab profile's invariants, codes come from the rehab
terminology, and the billing scenarios the claim engine needs are all there."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_server import terminology as tx
from fhir_server.fhirpath import evaluate
from fhir_server.interactions.context import Context
from fhir_server.loader import load_resources, read_file
from fhir_server.settings import Settings
from fhir_server.storage.sqlite.store import SqliteStore

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
DEMO = EXAMPLES / "demo-clinic.json"
PROFILES = {
    sd["url"]: sd for sd in (json.loads(p.read_text()) for p in (ROOT / "profiles").glob("*.json"))
}
FHIR = {"Content-Type": "application/fhir+json"}
SD = f"{tx.BASE}/StructureDefinition/"
PROFILE_OF = {
    "Patient": "rehab-patient",
    "Practitioner": "rehab-practitioner",
    "PractitionerRole": "rehab-practitioner-role",
    "EpisodeOfCare": "rehab-episode-of-care",
    "CarePlan": "rehab-plan-of-care",
    "Goal": "rehab-goal",
    "Encounter": "rehab-encounter",
    "Procedure": "therapy-service",
    "Observation": "outcome-measure",
    "Coverage": "rehab-coverage",
}
EXT_MINUTES = tx.THERAPY_MINUTES
EXT = f"{tx.BASE}/StructureDefinition/"
PART = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"


def demo_resources() -> list[dict[str, Any]]:
    bundle = json.loads(DEMO.read_text())
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
    return [e["resource"] for e in bundle["entry"]]


RESOURCES = demo_resources()
BY_REF = {f"{r['resourceType']}/{r['id']}": r for r in RESOURCES}


def of_type(rtype: str) -> list[dict[str, Any]]:
    return [r for r in RESOURCES if r["resourceType"] == rtype]


def get(ref: dict[str, Any] | str) -> dict[str, Any]:
    key = ref if isinstance(ref, str) else ref["reference"]
    return BY_REF[key]


def references(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        if isinstance(value.get("reference"), str):
            yield value["reference"]
        for v in value.values():
            yield from references(v)
    elif isinstance(value, list):
        for v in value:
            yield from references(v)


def codings(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        if isinstance(value.get("system"), str) and isinstance(value.get("code"), str):
            yield value
        for v in value.values():
            yield from codings(v)
    elif isinstance(value, list):
        for v in value:
            yield from codings(v)


def ext(resource: dict[str, Any], name: str) -> list[dict[str, Any]]:
    url = name if name.startswith("http") else EXT + name
    return [e for e in resource.get("extension", ()) if e["url"] == url]


def discipline(concepts: list[dict[str, Any]] | dict[str, Any]) -> str:
    items = concepts if isinstance(concepts, list) else [concepts]
    found = [
        c["code"] for cc in items for c in cc.get("coding", ()) if c["system"] == tx.DISCIPLINE
    ]
    assert len(found) == 1, concepts
    return str(found[0])


def minutes(resource: dict[str, Any]) -> int | None:
    found = ext(resource, EXT_MINUTES)
    return int(found[0]["valueQuantity"]["value"]) if found else None


def day(text: str) -> date:
    return date.fromisoformat(text[:10])


# ---------------------------------------------------------------------- loading


async def test_demo_loads_as_one_transaction_and_reads_back(client: httpx.AsyncClient) -> None:
    r = await client.post("", json=json.loads(DEMO.read_text()), headers=FHIR)
    assert r.status_code == 200, r.text
    statuses = Counter(e["response"]["status"] for e in r.json()["entry"])
    assert statuses == {"201 Created": len(RESOURCES)}
    # every reference resolves on the server
    targets = {ref for resource in RESOURCES for ref in references(resource)}
    for ref in sorted(targets):
        got = await client.get(ref)
        assert got.status_code == 200, ref
    for resource in RESOURCES[:: max(1, len(RESOURCES) // 15)]:
        got = (await client.get(f"{resource['resourceType']}/{resource['id']}")).json()
        got.pop("meta")
        mine = {k: v for k, v in resource.items() if k != "meta"}
        assert got == mine


async def test_the_serve_loader_loads_every_example_file_cleanly() -> None:
    store = SqliteStore(":memory:")
    await store.open()
    try:
        ctx = Context(store=store, settings=Settings(database=":memory:"))
        files = sorted(
            p for p in EXAMPLES.rglob("*") if p.name.endswith((".json", ".ndjson", ".ndjson.gz"))
        )
        assert DEMO in files
        errors: list[str] = []
        for path in files:
            report = await load_resources(ctx, read_file(path), errors=errors.append)
            assert report.failed == 0, errors
        fees = json.loads((EXAMPLES / "fee-schedule.json").read_text())["entry"]
        caseload = json.loads((EXAMPLES / "demo-caseload.json").read_text())  # a Group
        assert await store.count() == len(RESOURCES) + len(fees) + 1
        assert await store.count("ChargeItemDefinition") == len(fees)
        assert await store.count("Group") == 1
        members = [m["entity"]["reference"] for m in caseload["member"]]
        assert members and all(m in BY_REF for m in members)
        again = await load_resources(ctx, read_file(DEMO), errors=errors.append)
        assert again.failed == 0
        fees = json.loads((EXAMPLES / "fee-schedule.json").read_text())["entry"]
        assert await store.count() == len(RESOURCES) + len(fees) + 1
        assert await store.count("ChargeItemDefinition") == len(fees)
    finally:
        await store.close()


# ---------------------------------------------------------------------- completeness


def test_ids_are_unique_and_every_reference_resolves_locally() -> None:
    keys = [f"{r['resourceType']}/{r['id']}" for r in RESOURCES]
    assert len(keys) == len(set(keys))
    for resource in RESOURCES:
        for ref in references(resource):
            assert ref in BY_REF, f"{resource['resourceType']}/{resource['id']} -> {ref}"


def test_the_clinic_has_what_the_brief_asks_for() -> None:
    counts = Counter(r["resourceType"] for r in RESOURCES)
    assert 4 <= counts["Patient"] <= 6
    roles = Counter(
        c["code"]
        for role in of_type("PractitionerRole")
        for c in role["code"][0]["coding"]
        if c["system"] == tx.PRACTITIONER_ROLE
    )
    assert {"PT", "PTA", "OT", "OTA", "SLP"} <= set(roles)
    clinic = get("Organization/clinic")
    assert any(i["system"] == tx.NPI for i in clinic["identifier"])
    payers = [
        o
        for o in of_type("Organization")
        if any(c["code"] == "pay" for t in o.get("type", ()) for c in t["coding"])
    ]
    assert {p["id"] for p in payers} >= {"medicare", "acme-health"}
    for rtype in ("EpisodeOfCare", "CarePlan", "Goal", "Encounter", "Procedure", "Observation"):
        assert counts[rtype] >= 4, rtype


def test_every_resource_declares_its_rehab_profile() -> None:
    for resource in RESOURCES:
        name = PROFILE_OF.get(resource["resourceType"])
        if name is None:
            assert "profile" not in resource.get("meta", {})
            continue
        assert resource["meta"]["profile"] == [SD + name], resource["id"]
        assert SD + name in PROFILES


def _member_of(expression: str) -> tuple[str, dict[str, Any]]:
    """Rewrite ``X.memberOf('url')`` (not in the FHIRPath engine) to a lookup in a
    variable holding the value set's members as 'system|code' strings."""
    env: dict[str, Any] = {}

    def replace(match: re.Match[str]) -> str:
        url = match.group(2)
        name = f"vs{len(env)}"
        members = tx.value_set_membership(url)
        assert members is not None, url
        env[name] = sorted(f"{s}|{c}" for s, c in members)
        return f"{match.group(1)}.coding.where(%{name} contains (system + '|' + code)).exists()"

    rewritten = re.sub(r"([A-Za-z]+)\.memberOf\('([^']+)'\)", replace, expression)
    return rewritten, env


@pytest.mark.parametrize(
    "resource",
    [r for r in RESOURCES if "meta" in r],
    ids=lambda r: f"{r['resourceType']}/{r['id']}",
)
def test_profile_invariants_hold(resource: dict[str, Any]) -> None:
    profile = PROFILES[resource["meta"]["profile"][0]]
    checks: list[tuple[dict[str, Any], Any]] = []
    for element in profile["differential"]["element"]:
        if element["id"] == profile["type"]:
            checks += [(c, resource) for c in element.get("constraint", ())]
    # constraints of the extension definitions, on each extension of the resource
    for extension in [
        *resource.get("extension", ()),
        *(
            e
            for p in resource.get("performer", ())
            if isinstance(p, dict)
            for e in p.get("extension", ())
        ),
    ]:
        definition = PROFILES.get(extension["url"])
        if definition is not None:
            root = definition["differential"]["element"][0]
            checks += [(c, extension) for c in root.get("constraint", ())]
    for constraint, target in checks:
        expression, env = _member_of(constraint["expression"])
        result = evaluate(target, expression, env)
        assert result == [True], f"{constraint['key']}: {constraint['human']} -> {result}"


def test_slices_and_cardinalities_the_invariants_do_not_cover() -> None:
    for patient in of_type("Patient"):
        types = [c["code"] for i in patient["identifier"] for c in i["type"]["coding"]]
        assert types.count("MR") == 1
    for practitioner in of_type("Practitioner"):
        npis = [i["value"] for i in practitioner["identifier"] if i["system"] == tx.NPI]
        assert len(npis) == 1
    for encounter in of_type("Encounter"):
        assert len(ext(encounter, "place-of-service")) == 1
        assert all("rank" in d for d in encounter["diagnosis"])
    for coverage in of_type("Coverage"):
        assert len(ext(coverage, "billing-profile")) == 1
        assert len(coverage["payor"]) == 1
    for plan in of_type("CarePlan"):
        assert len(ext(plan, "http://hl7.org/fhir/StructureDefinition/workflow-episodeOfCare")) == 1
        assert plan["intent"] == "plan"
    for goal in of_type("Goal"):
        assert all("dueDate" in t and "measure" in t for t in goal["target"])


def _luhn_npi(value: str) -> bool:
    digits = [int(c) for c in "80840" + value]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d *= 2
            d = d - 9 if d > 9 else d
        total += d
    return total % 10 == 0


def test_npis_have_valid_check_digits() -> None:
    for resource in RESOURCES:
        for identifier in resource.get("identifier", ()):
            if identifier.get("system") == tx.NPI:
                assert _luhn_npi(identifier["value"]), (resource["id"], identifier["value"])


# ---------------------------------------------------------------------- terminology


LOCAL_SYSTEMS = {
    tx.CPT,
    tx.HCPCS,
    tx.ICD10CM,
    tx.POS,
    tx.NUCC,
    tx.DISCIPLINE,
    tx.PERFORMER_FUNCTION,
    tx.PRACTITIONER_ROLE,
    tx.OUTCOME_MEASURE,
    tx.GOAL_TERM,
    tx.LOINC,
}


def test_codes_of_the_rehab_terminology_exist_with_their_display() -> None:
    for resource in RESOURCES:
        for coding in codings(resource):
            if coding["system"] not in LOCAL_SYSTEMS:
                continue
            concept = tx.lookup(coding["system"], coding["code"])
            assert concept is not None, (resource["id"], coding)
            assert not concept.abstract, (resource["id"], coding)
            if "display" in coding:
                assert coding["display"] == concept.display, (resource["id"], coding)


def _in(url: str, concept: dict[str, Any]) -> bool:
    return bool(tx.member_of(f"{tx.BASE}/ValueSet/{url}", concept))


def test_bound_elements_use_their_value_sets() -> None:
    for proc in of_type("Procedure"):
        assert _in("therapy-procedures", proc["code"])
        for performer in proc["performer"]:
            assert _in("performer-function", performer["function"])
    for condition in of_type("Condition"):
        assert _in("rehab-diagnoses", condition["code"])
    for encounter in of_type("Encounter"):
        assert _in("therapy-place-of-service", ext(encounter, "place-of-service")[0]["valueCoding"])
        assert _in("rehab-encounter-class", encounter["class"])
    for goal in of_type("Goal"):
        assert all(_in("outcome-measures", t["measure"]) for t in goal["target"])
    for obs in of_type("Observation"):
        assert _in("outcome-measures", obs["code"])
    for coverage in of_type("Coverage"):
        method = ext(coverage, "billing-profile")[0]["valueCode"]
        assert method in {"medicare", "cpt-per-code"}


# ---------------------------------------------------------------------- consistency


def test_visits_services_plans_and_episodes_agree() -> None:
    for encounter in of_type("Encounter"):
        episode = get(encounter["episodeOfCare"][0])
        d = discipline(encounter["serviceType"])
        assert discipline(episode["type"]) == d
        assert encounter["subject"] == episode["patient"]
        for diagnosis in encounter["diagnosis"]:
            assert get(diagnosis["condition"])["subject"] == encounter["subject"]
        billing = [
            p for p in encounter["participant"] if p["type"][0]["coding"][0]["code"] == "PPRF"
        ]
        role = get(billing[0]["individual"])
        role_code = role["code"][0]["coding"][0]["code"]
        # billed under a therapist of the discipline (a clinical fellow bills as SLP)
        assert role_code in {"PT": {"PT"}, "OT": {"OT"}, "SLP": {"SLP", "SLP-CF"}}[d]
        assert day(encounter["period"]["start"]) >= day(episode["period"]["start"])
    for proc in of_type("Procedure"):
        encounter = get(proc["encounter"])
        d = discipline(encounter["serviceType"])
        assert discipline(proc["category"]) == d
        assert proc["subject"] == encounter["subject"]
        code = proc["code"]["coding"][0]["code"]
        assert d in tx.disciplines(code), (proc["id"], code, d)
        plan = get(proc["basedOn"][0])
        assert discipline(plan["category"]) == d
        assert plan["subject"] == proc["subject"]
        start = proc.get("performedDateTime") or proc["performedPeriod"]["start"]
        assert encounter["period"]["start"] <= start <= encounter["period"]["end"]
        # the people who furnished the service took part in the visit
        in_visit = {p["individual"]["reference"] for p in encounter["participant"]}
        for performer in proc["performer"]:
            assert performer["actor"]["reference"] in in_visit
    for plan in of_type("CarePlan"):
        episode = get(
            ext(plan, "http://hl7.org/fhir/StructureDefinition/workflow-episodeOfCare")[0][
                "valueReference"
            ]
        )
        assert discipline(episode["type"]) == discipline(plan["category"])
        assert episode["patient"] == plan["subject"]
        for ref in plan["goal"]:
            goal = get(ref)
            assert goal["subject"] == plan["subject"]
            assert discipline(goal["category"]) == discipline(plan["category"])


def test_goals_and_outcome_measures_agree() -> None:
    for goal in of_type("Goal"):
        for relationship in ext(goal, "http://hl7.org/fhir/StructureDefinition/goal-relationship"):
            parts = {e["url"]: e for e in relationship["extension"]}
            assert parts["type"]["valueCodeableConcept"]["coding"][0]["code"] == "milestone"
            target = get(parts["target"]["valueReference"])
            terms = [
                c["code"]
                for cc in target["category"]
                for c in cc["coding"]
                if c["system"] == tx.GOAL_TERM
            ]
            assert terms == ["short-term"]
            assert target["subject"] == goal["subject"]
    for obs in of_type("Observation"):
        goals = [
            get(e["valueReference"])
            for e in ext(obs, "http://hl7.org/fhir/StructureDefinition/resource-pertainsToGoal")
        ]
        assert goals, obs["id"]
        measured = {(c["system"], c["code"]) for c in obs["code"]["coding"]}
        for goal in goals:
            assert goal["subject"] == obs["subject"]
            targets = {
                (c["system"], c["code"]) for t in goal["target"] for c in t["measure"]["coding"]
            }
            assert measured & targets, (obs["id"], goal["id"])


def test_coverages_match_their_payers() -> None:
    for patient in of_type("Patient"):
        coverages = [
            c
            for c in of_type("Coverage")
            if c["beneficiary"]["reference"] == f"Patient/{patient['id']}"
        ]
        assert len(coverages) == 1, patient["id"]
        coverage = coverages[0]
        method = ext(coverage, "billing-profile")[0]["valueCode"]
        mbi = [
            i["value"]
            for i in patient["identifier"]
            if i["system"] == "http://hl7.org/fhir/sid/us-mbi"
        ]
        if coverage["payor"][0]["reference"] == "Organization/medicare":
            assert method == "medicare"
            assert mbi == [coverage["subscriberId"]]
        else:
            assert method == "cpt-per-code"
            assert not mbi


# ---------------------------------------------------------------------- billing scenarios


def _services(encounter_id: str) -> dict[str, int | None]:
    return {
        p["code"]["coding"][0]["code"]: minutes(p)
        for p in of_type("Procedure")
        if p["encounter"]["reference"] == f"Encounter/{encounter_id}"
    }


def test_cms_minute_examples_are_documented() -> None:
    days = [_services(e["id"]) for e in of_type("Encounter")]
    for example in (
        {"97112": 24, "97110": 23},
        {"97110": 33, "97140": 7},
        {"97110": 18, "97140": 13, "97116": 10, "97035": 8},
        {"97112": 7, "97110": 7, "97140": 7},
        {"97116": 20, "97112": 20},
    ):
        assert example in days, example


def test_timed_services_have_minutes_and_shares_add_up() -> None:
    for proc in of_type("Procedure"):
        code = proc["code"]["coding"][0]["code"]
        total = minutes(proc)
        if tx.is_timed(code):
            assert total is not None and total > 0, proc["id"]
        shares = [minutes(p) for p in proc["performer"] if minutes(p) is not None]
        if shares:
            assert total is not None and sum(s for s in shares if s) <= total


def test_assistant_sessions_are_billed_under_the_supervising_therapist() -> None:
    found = 0
    for proc in of_type("Procedure"):
        for performer in proc["performer"]:
            if performer["function"]["coding"][0]["code"] != "assistant":
                continue
            found += 1
            role = get(performer["actor"])
            assert role["code"][0]["coding"][0]["code"] in ("PTA", "OTA")
            supervisor = ext(role, "supervising-therapist")[0]["valueReference"]["reference"]
            encounter = get(proc["encounter"])
            billing = [
                p for p in encounter["participant"] if p["type"][0]["coding"][0]["code"] == "PPRF"
            ]
            assert billing[0]["individual"]["reference"] == supervisor
            assert any(
                p["type"][0]["coding"][0]["code"] == "SPRF"
                and p["individual"]["reference"] == performer["actor"]["reference"]
                for p in encounter["participant"]
            )
    assert found >= 2  # a PTA and an OTA


def test_ncci_pairs_and_evaluations_occur() -> None:
    table = tx.ptp_edits()
    pairs = []
    for encounter in of_type("Encounter"):
        codes = list(_services(encounter["id"]))
        pairs += [
            (e.column1, e.column2)
            for e in table.edits_among(codes, day(encounter["period"]["start"]))
        ]
    assert ("97140", "97530") in pairs
    assert ("97161", "97140") in pairs
    evaluations = tx.value_set_membership(tx.VS_EVALUATIONS)
    assert evaluations is not None
    for episode in of_type("EpisodeOfCare"):
        if episode["id"] == "eoc-grace-pt":
            continue  # its evaluation predates the demo's visits
        visits = [
            e["id"]
            for e in of_type("Encounter")
            if e["episodeOfCare"][0]["reference"] == f"EpisodeOfCare/{episode['id']}"
        ]
        billed = {c for v in visits for c in _services(v)}
        assert any((tx.CPT, c) in evaluations for c in billed), episode["id"]


def test_an_expired_certification_and_a_telehealth_visit() -> None:
    expired = []
    for plan in of_type("CarePlan"):
        end = day(plan["period"]["end"])
        later = [
            p
            for p in of_type("Procedure")
            if p["basedOn"][0]["reference"] == f"CarePlan/{plan['id']}"
            and day(p.get("performedDateTime") or p["performedPeriod"]["start"]) > end
        ]
        replaced = any(
            f"CarePlan/{plan['id']}" in [r["reference"] for r in other.get("replaces", ())]
            for other in of_type("CarePlan")
        )
        if later and not replaced:
            expired.append(plan["id"])
    assert expired == ["poc-grace-pt"]
    certified = [p for p in of_type("CarePlan") if ext(p, "plan-certification")]
    assert len(certified) >= 3
    virtual = [e for e in of_type("Encounter") if e["class"]["code"] == "VR"]
    assert virtual and all(
        ext(e, "place-of-service")[0]["valueCoding"]["code"] in ("02", "10") for e in virtual
    )


def test_prior_authorizations_cover_their_visits() -> None:
    authorizations = 0
    for coverage in of_type("Coverage"):
        for auth in ext(coverage, "prior-authorization"):
            authorizations += 1
            parts = {e["url"]: e for e in auth["extension"]}
            period = parts["period"]["valuePeriod"]
            patient = coverage["beneficiary"]["reference"]
            d = parts["discipline"]["valueCoding"]["code"]
            visits = [
                e
                for e in of_type("Encounter")
                if e["subject"]["reference"] == patient and discipline(e["serviceType"]) == d
            ]
            assert visits
            for visit in visits:
                assert period["start"] <= visit["period"]["start"][:10] <= period["end"]
            assert len(visits) <= parts["visits"]["valuePositiveInt"]
    assert authorizations >= 2
