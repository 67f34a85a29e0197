"""Snapshot generation (fhir_server.validation.snapshot) and the registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fhir_server import definitions
from fhir_server.validation.registry import PROFILES_DIR, ProfileRegistry, RegistryError
from fhir_server.validation.snapshot import (
    SnapshotError,
    base_snapshot,
    element_ids,
    generate_snapshot,
)

SD = "http://hl7.org/fhir/StructureDefinition/"


def profile(type_: str, *elements: dict[str, Any], base: str | None = None) -> dict[str, Any]:
    return {
        "resourceType": "StructureDefinition",
        "url": f"http://example.org/StructureDefinition/test-{type_.lower()}",
        "type": type_,
        "kind": "resource",
        "derivation": "constraint",
        "baseDefinition": base or SD + type_,
        "differential": {"element": [{"id": type_, "path": type_}, *elements]},
    }


def snap(sd: dict[str, Any], registry: ProfileRegistry | None = None) -> dict[str, dict[str, Any]]:
    reg = registry or ProfileRegistry(core=False)
    elements = generate_snapshot(sd, None, lambda url: reg.snapshot(url))
    return {e["id"]: e for e in elements}


def test_base_snapshot_mirrors_the_tables() -> None:
    elements = base_snapshot("Patient")
    ids = [e["id"] for e in elements]
    assert ids[0] == "Patient"
    assert ids == list(definitions.type_definition("Patient").elements)
    contact = next(e for e in elements if e["id"] == "Patient.contact")
    assert contact["max"] == "*" and contact["type"] == [{"code": "BackboneElement"}]
    assert [c["key"] for c in contact["constraint"]] == ["ele-1", "pat-1"]
    gender = next(e for e in elements if e["id"] == "Patient.gender")
    assert gender["binding"]["strength"] == "required"
    ext = next(e for e in elements if e["id"] == "Patient.extension")
    assert ext["slicing"]["discriminator"] == [{"type": "value", "path": "url"}]


def test_constraining_an_element_in_place() -> None:
    s = snap(
        profile(
            "Patient",
            {"id": "Patient.birthDate", "path": "Patient.birthDate", "min": 1},
            {
                "id": "Patient.gender",
                "path": "Patient.gender",
                "fixedCode": "female",
                "constraint": [
                    {"key": "t-1", "severity": "error", "human": "x", "expression": "true"}
                ],
            },
        )
    )
    assert s["Patient.birthDate"]["min"] == 1 and s["Patient.birthDate"]["max"] == "1"
    assert s["Patient.gender"]["fixedCode"] == "female"
    assert [c["key"] for c in s["Patient.gender"]["constraint"]] == ["ele-1", "t-1"]


def test_children_of_a_data_type_are_expanded_on_demand() -> None:
    s = snap(
        profile(
            "Observation",
            {"id": "Observation.code.coding", "path": "Observation.code.coding", "min": 1},
            {
                "id": "Observation.code.coding.system",
                "path": "Observation.code.coding.system",
                "fixedUri": "http://loinc.org",
            },
        )
    )
    assert "Observation.code.text" in s
    assert s["Observation.code.coding"]["min"] == 1
    assert s["Observation.code.coding.system"]["fixedUri"] == "http://loinc.org"
    assert s["Observation.code.coding.system"]["path"] == "Observation.code.coding.system"
    assert "Observation.subject.reference" not in s  # only what the differential needs


def test_slices_copy_the_sliced_element_and_come_after_it() -> None:
    sd = profile(
        "Patient",
        {
            "id": "Patient.identifier",
            "path": "Patient.identifier",
            "slicing": {"discriminator": [{"type": "value", "path": "system"}], "rules": "open"},
        },
        {
            "id": "Patient.identifier:mrn",
            "path": "Patient.identifier",
            "sliceName": "mrn",
            "min": 1,
        },
        {
            "id": "Patient.identifier:mrn.system",
            "path": "Patient.identifier.system",
            "fixedUri": "urn:mrn",
        },
        {"id": "Patient.identifier:ssn", "path": "Patient.identifier", "sliceName": "ssn"},
    )
    elements = generate_snapshot(sd, None, lambda url: None)
    ids = [e["id"] for e in elements]
    i = ids.index("Patient.identifier")
    assert ids.index("Patient.identifier:mrn") > i
    assert ids.index("Patient.identifier:ssn") > ids.index("Patient.identifier:mrn.system")
    s = {e["id"]: e for e in elements}
    assert s["Patient.identifier:mrn"]["sliceName"] == "mrn"
    assert s["Patient.identifier:mrn"]["min"] == 1
    assert "slicing" not in s["Patient.identifier:mrn"]
    assert s["Patient.identifier:mrn.system"]["fixedUri"] == "urn:mrn"
    assert s["Patient.identifier"]["slicing"]["rules"] == "open"
    assert "fixedUri" not in s.get("Patient.identifier.system", {})


def test_type_specific_choice_names_restrict_the_choice() -> None:
    s = snap(
        profile(
            "Observation",
            {"id": "Observation.valueQuantity", "path": "Observation.valueQuantity", "min": 1},
            {
                "id": "Observation.valueQuantity.code",
                "path": "Observation.valueQuantity.code",
                "fixedCode": "kg",
            },
        )
    )
    value = s["Observation.value[x]"]
    assert [t["code"] for t in value["type"]] == ["Quantity"]
    assert value["slicing"]["rules"] == "closed"
    assert s["Observation.value[x]:valueQuantity"]["min"] == 1
    assert s["Observation.value[x]:valueQuantity.code"]["fixedCode"] == "kg"


def test_content_reference_children_come_from_the_base() -> None:
    s = snap(
        profile(
            "Questionnaire",
            {
                "id": "Questionnaire.item.linkId",
                "path": "Questionnaire.item.linkId",
                "fixedString": "a",
            },
            {
                "id": "Questionnaire.item.item.text",
                "path": "Questionnaire.item.item.text",
                "min": 1,
            },
        )
    )
    assert s["Questionnaire.item.item.text"]["min"] == 1
    assert "fixedString" not in s["Questionnaire.item.item.linkId"]


def test_ids_are_computed_for_differentials_without_them() -> None:
    elements = [
        {"path": "Patient"},
        {"path": "Patient.identifier", "sliceName": "a"},
        {"path": "Patient.identifier.system"},
        {"path": "Patient.name"},
    ]
    assert element_ids(elements) == [
        "Patient",
        "Patient.identifier:a",
        "Patient.identifier:a.system",
        "Patient.name",
    ]


def test_unknown_paths_are_errors() -> None:
    with pytest.raises(SnapshotError):
        snap(profile("Patient", {"id": "Patient.colour", "path": "Patient.colour", "min": 1}))
    with pytest.raises(SnapshotError):
        snap(profile("Patient", {"id": "Observation.code", "path": "Observation.code"}))


def test_profiles_on_profiles() -> None:
    reg = ProfileRegistry(core=False)
    base = profile("Patient", {"id": "Patient.name", "path": "Patient.name", "min": 1})
    derived = profile("Patient", {"id": "Patient.gender", "path": "Patient.gender", "min": 1})
    derived["url"] = "http://example.org/StructureDefinition/derived"
    derived["baseDefinition"] = base["url"]
    reg.add(base)
    reg.add(derived)
    s = {e["id"]: e for e in reg.snapshot(derived["url"]) or []}
    assert s["Patient.name"]["min"] == 1 and s["Patient.gender"]["min"] == 1


# --------------------------------------------------------------------------- core profiles


def test_core_vital_signs_profiles_generate() -> None:
    reg = ProfileRegistry()
    vitals = {e["id"]: e for e in reg.snapshot(SD + "vitalsigns") or []}
    assert vitals["Observation.category:VSCat"]["min"] == 1
    assert vitals["Observation.category:VSCat.coding.code"]["fixedCode"] == "vital-signs"
    bp = {e["id"]: e for e in reg.snapshot(SD + "bp") or []}
    assert bp["Observation.component:SystolicBP.code.coding:SBPCode.code"]["fixedCode"] == "8480-6"
    assert bp["Observation.category:VSCat"]["min"] == 1  # inherited from vitalsigns
    weight = {e["id"]: e for e in reg.snapshot(SD + "bodyweight") or []}
    assert [t["code"] for t in weight["Observation.value[x]"]["type"]] == ["Quantity"]


def test_every_core_profile_and_extension_generates() -> None:
    reg = ProfileRegistry()
    failed = {u: reg.error(u) for u in reg.urls() if reg.snapshot(u) is None}
    assert not failed
    assert len(reg.urls()) > 400


def test_core_extension_definitions_fix_their_url() -> None:
    reg = ProfileRegistry()
    url = SD + "patient-birthPlace"
    s = {e["id"]: e for e in reg.snapshot(url) or []}
    assert s["Extension.url"]["fixedUri"] == url
    assert [t["code"] for t in s["Extension.value[x]"]["type"]] == ["Address"]


def test_the_repository_profiles_all_generate() -> None:
    reg = ProfileRegistry()
    loaded, problems = reg.load_directory(PROFILES_DIR)
    assert not problems
    for url in loaded:
        assert reg.compiled(url) is not None, (url, reg.error(url))


def test_registry_rejects_what_it_cannot_use(tmp_path: Path) -> None:
    reg = ProfileRegistry(core=False)
    with pytest.raises(RegistryError):
        reg.add({"resourceType": "StructureDefinition", "type": "Patient"})
    with pytest.raises(RegistryError):
        reg.add({"resourceType": "Patient", "url": "http://x"})
    (tmp_path / "broken.json").write_text("{", encoding="utf-8")
    (tmp_path / "patient.json").write_text('{"resourceType": "Patient"}', encoding="utf-8")
    loaded, problems = reg.load_directory(tmp_path)
    assert loaded == [] and len(problems) == 1


def test_a_broken_profile_reports_why() -> None:
    reg = ProfileRegistry(core=False)
    sd = profile("Patient", {"id": "Patient.colour", "path": "Patient.colour"})
    reg.add(sd)
    assert reg.snapshot(sd["url"]) is None
    assert "Patient.colour" in (reg.error(sd["url"]) or "")
