"""An extension whose definition is a modifier (isModifier) is a modifierExtension, and
only such an extension is (R4 extensibility.html)."""

from __future__ import annotations

from typing import Any

from fhir_server.validation import validate

DO_NOT_PERFORM = "http://hl7.org/fhir/StructureDefinition/request-doNotPerform"  # a modifier
MAIDEN_NAME = "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName"  # not one


def errors(resource: dict[str, Any]) -> list[tuple[str, str]]:
    return [(i.expression[0], i.diagnostics) for i in validate(resource) if i.severity == "error"]


def nutrition_order(key: str) -> dict[str, Any]:
    return {
        "resourceType": "NutritionOrder",
        "status": "active",
        "intent": "order",
        "patient": {"reference": "Patient/1"},
        "dateTime": "2024-01-01",
        key: [{"url": DO_NOT_PERFORM, "valueBoolean": True}],
    }


def patient(key: str) -> dict[str, Any]:
    return {"resourceType": "Patient", key: [{"url": MAIDEN_NAME, "valueString": "Smith"}]}


def test_modifier_extensions_in_their_place_are_valid() -> None:
    assert errors(nutrition_order("modifierExtension")) == []
    assert errors(patient("extension")) == []


def test_a_modifier_extension_cannot_be_an_extension() -> None:
    found = errors(nutrition_order("extension"))
    assert [where for where, _ in found] == ["NutritionOrder.extension[0]"]
    assert "is a modifier extension" in found[0][1]


def test_an_ordinary_extension_cannot_be_a_modifier_extension() -> None:
    found = errors(patient("modifierExtension"))
    assert [where for where, _ in found] == ["Patient.modifierExtension[0]"]
    assert "is not a modifier extension" in found[0][1]
