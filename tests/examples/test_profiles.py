"""The rehab StructureDefinitions under profiles/: valid R4, every differential path
exists in the base, invariants parse, and everything they point to (extensions, value
sets) exists."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fhir_server import definitions
from fhir_server import terminology as tx
from fhir_server.fhirpath import compile_expression
from fhir_server.validation import validate_resource

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ROOT / "profiles"
FILES = sorted(PROFILES.glob("StructureDefinition-*.json"))
SD = f"{tx.BASE}/StructureDefinition/"
CORE_EXTENSIONS = {
    # R4 core extensions the profiles use (defined by the R4 specification itself)
    "http://hl7.org/fhir/StructureDefinition/goal-relationship",
    "http://hl7.org/fhir/StructureDefinition/resource-pertainsToGoal",
    "http://hl7.org/fhir/StructureDefinition/workflow-episodeOfCare",
}


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def all_profiles() -> dict[str, dict[str, Any]]:
    return {sd["url"]: sd for sd in map(load, FILES)}


def test_there_are_profiles_and_extensions() -> None:
    kinds = {sd["type"] for sd in all_profiles().values()}
    assert {
        "Patient",
        "Practitioner",
        "PractitionerRole",
        "EpisodeOfCare",
        "CarePlan",
        "Goal",
        "Encounter",
        "Procedure",
        "Observation",
        "Coverage",
        "Claim",
        "Extension",
    } <= kinds


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_structure_definition_is_valid_r4(path: Path) -> None:
    sd = load(path)
    assert validate_resource(sd) == []
    assert path.name == f"StructureDefinition-{sd['id']}.json"
    assert sd["url"] == SD + sd["id"]
    assert sd["fhirVersion"] == "4.0.1"
    assert sd["derivation"] == "constraint"
    assert sd["baseDefinition"] == f"http://hl7.org/fhir/StructureDefinition/{sd['type']}"
    ids = [e["id"] for e in sd["differential"]["element"]]
    assert len(ids) == len(set(ids)), "element ids repeat"
    assert ids[0] == sd["type"]


def _base_element(path: str, restricted: dict[str, str]) -> bool:
    """Whether an element path exists in the R4 base, entering data types as needed.
    ``restricted`` maps a (choice) path to the one type a profile allows there."""
    parts = path.split(".")
    type_name = parts[0]
    current = type_name
    for i in range(1, len(parts)):
        td = definitions.type_definition(type_name)
        candidate = f"{current}.{parts[i]}"
        if candidate not in td.elements:
            return False
        element = td.elements[candidate]
        if i == len(parts) - 1:
            return True
        full = ".".join(parts[: i + 1])
        codes = [t.code for t in element.types]
        nested = [p for p in td.elements if p.startswith(candidate + ".")]
        if nested and (not codes or codes[0] in ("BackboneElement", "Element")):
            current = candidate  # a backbone element: stay in this type
            continue
        code = restricted.get(full) or (codes[0] if len(codes) == 1 else None)
        if code is None:
            return False
        type_name, current = code, code
    return True


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_differential_paths_exist_in_the_base(path: Path) -> None:
    sd = load(path)
    restricted = {
        e["path"]: e["type"][0]["code"]
        for e in sd["differential"]["element"]
        if len(e.get("type", ())) == 1
    }
    for element in sd["differential"]["element"]:
        assert element["path"] == ".".join(p.split(":")[0] for p in element["id"].split("."))
        assert _base_element(element["path"], restricted), element["id"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_invariants_parse_and_point_back_to_their_profile(path: Path) -> None:
    sd = load(path)
    for element in sd["differential"]["element"]:
        for constraint in element.get("constraint", ()):
            assert constraint["key"].startswith("rehab-")
            assert constraint["source"] == sd["url"]
            assert constraint["severity"] in ("error", "warning")
            compile_expression(constraint["expression"])


def test_referenced_extensions_and_value_sets_exist() -> None:
    profiles = all_profiles()
    for sd in profiles.values():
        for element in sd["differential"]["element"]:
            for t in element.get("type", ()):
                for url in t.get("profile", ()):
                    assert url in profiles or url in CORE_EXTENSIONS, (sd["id"], url)
            binding = element.get("binding")
            if binding:
                assert tx.default().value_set(binding["valueSet"]) is not None, binding


def test_extension_contexts_are_elements_of_the_base() -> None:
    for sd in all_profiles().values():
        if sd["type"] != "Extension":
            continue
        assert sd["context"]
        for context in sd["context"]:
            assert context["type"] == "element"
            assert _base_element(context["expression"], {}) or context["expression"] in (
                definitions.resource_types()
            ), context


def test_the_fixed_extension_names_exist() -> None:
    profiles = all_profiles()
    minutes = profiles[tx.THERAPY_MINUTES]
    value = next(e for e in minutes["differential"]["element"] if e["id"] == "Extension.value[x]")
    assert value["type"] == [{"code": "Quantity"}]
    code = next(e for e in minutes["differential"]["element"] if e["id"].endswith(".code"))
    assert code["fixedCode"] == "min"
    billing = profiles[tx.BILLING_PROFILE]
    assert [c["expression"] for c in billing["context"]] == ["Coverage"]
    value = next(e for e in billing["differential"]["element"] if e["id"] == "Extension.value[x]")
    assert value["type"] == [{"code": "code"}]
    assert value["binding"]["valueSet"] == f"{tx.BASE}/ValueSet/unit-calculation-method"


def test_readme_lists_every_profile() -> None:
    readme = (PROFILES / "README.md").read_text()
    for sd in all_profiles().values():
        assert sd["id"] in readme, sd["id"]


def _claim() -> dict[str, Any]:
    """Ada's visit of 2026-10-07 (97112 24 min + 97110 23 min, Medicare: 2 + 1 units) as
    a RehabClaim, the way the billing reference (section 7) lays it out."""
    pos = "https://www.cms.gov/Medicare/Coding/place-of-service-codes/Place_of_Service_Code_Set"

    def line(seq: int, code: str, units: int, dx: list[int]) -> dict[str, Any]:
        return {
            "sequence": seq,
            "careTeamSequence": [1],
            "diagnosisSequence": dx,
            "productOrService": {"coding": [{"system": tx.CPT, "code": code}]},
            "modifier": [{"coding": [{"system": tx.HCPCS, "code": "GP"}]}],
            "servicedDate": "2026-10-07",
            "locationCodeableConcept": {"coding": [{"system": pos, "code": "11"}]},
            "quantity": {"value": units},
            "encounter": [{"reference": "Encounter/enc-ada-2"}],
        }

    return {
        "resourceType": "Claim",
        "id": "claim-ada-20261007",
        "meta": {"profile": [SD + "rehab-claim"]},
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
        "billablePeriod": {"start": "2026-10-07", "end": "2026-10-07"},
        "created": "2026-10-08",
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
        "careTeam": [
            {
                "sequence": 1,
                "provider": {"reference": "PractitionerRole/role-pt-jones"},
                "role": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/claimcareteamrole",
                            "code": "primary",
                        }
                    ]
                },
                "qualification": {"coding": [{"system": tx.NUCC, "code": "225100000X"}]},
            },
            {
                "sequence": 2,
                "provider": {"reference": "Practitioner/md-garcia"},
                "role": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/claimcareteamrole",
                            "code": "other",
                        }
                    ]
                },
            },
        ],
        "diagnosis": [
            {
                "sequence": 1,
                "diagnosisCodeableConcept": {"coding": [{"system": tx.ICD10CM, "code": "M17.11"}]},
            },
            {
                "sequence": 2,
                "diagnosisCodeableConcept": {"coding": [{"system": tx.ICD10CM, "code": "R26.89"}]},
            },
        ],
        "insurance": [
            {"sequence": 1, "focal": True, "coverage": {"reference": "Coverage/cov-ada"}}
        ],
        "item": [line(1, "97112", 2, [2, 1]), line(2, "97110", 1, [1])],
    }


def _invariants(sd: dict[str, Any], resource: dict[str, Any]) -> dict[str, list[Any]]:
    from fhir_server.fhirpath import evaluate

    root = sd["differential"]["element"][0]
    return {c["key"]: evaluate(resource, c["expression"]) for c in root.get("constraint", ())}


def test_a_claim_laid_out_per_the_billing_reference_meets_the_claim_profile() -> None:
    claim = _claim()
    assert validate_resource(claim) == []
    sd = all_profiles()[SD + "rehab-claim"]
    assert _invariants(sd, claim) == {f"rehab-claim-{n}": [True] for n in range(1, 5)}
    for item in claim["item"]:
        code = item["productOrService"]["coding"][0]["code"]
        assert tx.member_of(tx.VS_PROCEDURES, item["productOrService"]) is True
        assert tx.is_timed(code) is True
    no_discipline = _claim()
    no_discipline["item"][1]["modifier"] = [{"coding": [{"system": tx.HCPCS, "code": "KX"}]}]
    assert _invariants(sd, no_discipline)["rehab-claim-1"] == [False]
    bad_pointer = _claim()
    bad_pointer["item"][0]["diagnosisSequence"] = [3]
    assert _invariants(sd, bad_pointer)["rehab-claim-3"] == [False]
