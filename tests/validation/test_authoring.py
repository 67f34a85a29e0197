"""StructureDefinition authoring rules (fhir_server.validation.authoring): differential
paths, discriminator paths and fixed values against the base."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_server import definitions
from fhir_server.validation import validate
from fhir_server.validation.authoring import check_structure_definition
from fhir_server.validation.registry import PROFILES_DIR, ProfileRegistry

SD = "http://hl7.org/fhir/StructureDefinition/"


def profile(type_: str, *elements: dict[str, Any], base: str | None = None) -> dict[str, Any]:
    return {
        "resourceType": "StructureDefinition",
        "url": f"http://example.org/StructureDefinition/test-{type_.lower()}",
        "name": "Test",
        "status": "draft",
        "kind": "resource",
        "abstract": False,
        "type": type_,
        "derivation": "constraint",
        "baseDefinition": base or SD + type_,
        "differential": {"element": [{"id": type_, "path": type_}, *elements]},
    }


def issues(sd: dict[str, Any], registry: ProfileRegistry | None = None) -> list[str]:
    reg = registry or ProfileRegistry(core=False)
    return [
        f"{i.expression[0]}: {i.diagnostics}"
        for i in check_structure_definition(sd, "StructureDefinition", reg)
    ]


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    "path",
    [
        "Observation.value[x]",
        "Observation.valueQuantity",  # a type of the choice
        "Observation.code.coding.system",  # into data types
        "Observation.component.code",  # a backbone element
        "Observation.component.valueQuantity.unit",
        "Observation.extension.url",
        "Observation.status.extension",  # a primitive's extensions
    ],
)
def test_paths_of_the_base_are_accepted(path: str) -> None:
    assert issues(profile("Observation", {"path": path})) == []


def test_content_reference_paths_are_followed() -> None:
    sd = profile("Questionnaire", {"path": "Questionnaire.item.item.linkId"})
    assert issues(sd) == []
    sd = profile("Questionnaire", {"path": "Questionnaire.item.item.colour"})
    assert len(issues(sd)) == 1


@pytest.mark.parametrize(
    "path",
    [
        "Observation.valueBla",  # not a type of value[x]
        "Observation.colour",
        "Observation.code.coding.colour",
        "Observation.value[x].coding",  # a choice entered by its [x] name
        "Patient.name",  # not the profile's type
    ],
)
def test_a_path_outside_the_base_is_an_error(path: str) -> None:
    found = issues(profile("Observation", {"id": "Observation.valueQuantity", "path": path}))
    if path == "Observation.value[x].coding":
        # one of value[x]'s types (CodeableConcept) has coding: accepted
        assert found == []
        return
    assert found == [
        "StructureDefinition.differential.element[1].path: the path "
        f"{path} is not an element of Observation: a differential element must constrain "
        "an element of the base"
    ]


def test_specializations_and_logical_models_are_not_checked() -> None:
    sd = profile("Observation", {"path": "Observation.colour"})
    sd["derivation"] = "specialization"
    assert issues(sd) == []
    sd = profile("http://example.org/Model", {"path": "Model.colour"})
    assert issues(sd) == []


# --------------------------------------------------------------------------- discriminators


def sliced(path: str, *discriminators: str) -> dict[str, Any]:
    return {
        "path": path,
        "slicing": {
            "discriminator": [{"type": "value", "path": d} for d in discriminators],
            "rules": "open",
        },
    }


@pytest.mark.parametrize(
    ("element", "discriminator"),
    [
        ("Observation.component", "code"),
        ("Observation.component", "code.coding.system"),
        ("Observation.code.coding", "system"),
        ("Observation.extension", "url"),
        ("Observation.value[x]", "$this"),
        ("Observation.component", "value.ofType(Quantity).code"),
        ("Observation.component", "extension('http://example.org/e').value"),
        ("Observation.hasMember", "resolve().code"),  # not followed
        ("Observation.contained", "code"),  # any resource: not followed
        ("Questionnaire.item.item", "linkId"),
    ],
)
def test_discriminator_paths_of_the_sliced_element_are_accepted(
    element: str, discriminator: str
) -> None:
    root = element.split(".")[0]
    assert issues(profile(root, sliced(element, discriminator))) == []


@pytest.mark.parametrize(
    ("element", "discriminator"),
    [
        ("Observation.extension", "type"),  # Extension has no type
        ("Observation.component", "colour"),
        ("Observation.code.coding", "code.coding"),
        ("Observation.component", "value.ofType(Quantity).coding"),
    ],
)
def test_a_discriminator_path_outside_the_sliced_element_is_an_error(
    element: str, discriminator: str
) -> None:
    found = issues(profile("Observation", sliced(element, "$this", discriminator)))
    assert found == [
        "StructureDefinition.differential.element[1].slicing.discriminator[1]: the "
        f"discriminator path '{discriminator}' is not an element of the sliced element {element}"
    ]


# --------------------------------------------------------------------------- fixed values


def extension(url: str, base: str, fixed_url: str) -> dict[str, Any]:
    sd = profile(
        "Extension",
        {"id": "Extension.url", "path": "Extension.url", "fixedUri": fixed_url},
        {"id": "Extension.value[x]", "path": "Extension.value[x]", "type": [{"code": "string"}]},
        base=base,
    )
    sd["url"] = url
    sd["kind"] = "complex-type"
    sd["context"] = [{"type": "element", "expression": "Element"}]
    return sd


def test_a_profile_cannot_change_a_value_its_base_fixed() -> None:
    reg = ProfileRegistry(core=False)
    reg.add(extension("http://example.org/base", SD + "Extension", "http://example.org/base"))
    derived = extension("http://example.org/derived", "http://example.org/base", "http://x")
    assert issues(derived, reg) == [
        "StructureDefinition.differential.element[1]: Extension.url is fixed to "
        '"http://example.org/base" (fixedUri) in the base profile http://example.org/base: '
        'a profile cannot change it to "http://x"'
    ]
    same = extension(
        "http://example.org/derived", "http://example.org/base", "http://example.org/base"
    )
    assert issues(same, reg) == []


def test_fixing_what_the_base_leaves_open_is_a_constraint() -> None:
    reg = ProfileRegistry(core=False)
    sd = extension("http://example.org/e", SD + "Extension", "http://example.org/e")
    assert issues(sd, reg) == []
    # an unknown base profile: nothing to compare with
    sd = extension("http://example.org/e", "http://example.org/unknown", "http://example.org/e")
    assert issues(sd, reg) == []


# --------------------------------------------------------------------------- where it applies


def test_validate_applies_the_rules_to_structure_definitions() -> None:
    sd = profile("Observation", {"id": "Observation.valueQuantity", "path": "Observation.valueBla"})
    found = [i for i in validate(sd, registry=ProfileRegistry(core=False)) if i.severity == "error"]
    assert [i.expression for i in found] == [("StructureDefinition.differential.element[1].path",)]
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": "urn:uuid:8d6f4f6e-2a1c-4b8e-9a3e-1c2d3e4f5a6b", "resource": sd}],
    }
    found = [
        i for i in validate(bundle, registry=ProfileRegistry(core=False)) if i.severity == "error"
    ]
    assert [i.expression for i in found] == [
        ("Bundle.entry[0].resource.differential.element[1].path",)
    ]


def test_the_official_and_repository_definitions_follow_the_rules() -> None:
    reg = ProfileRegistry()
    reg.load_directory(PROFILES_DIR)
    checked = 0
    for url in reg.urls():
        sd = reg.get(url)
        assert sd is not None
        assert check_structure_definition(sd, "StructureDefinition", reg) == [], url
        checked += 1
    assert checked >= len(definitions.core_profiles())
