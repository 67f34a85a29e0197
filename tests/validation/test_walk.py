"""Walking a resource along its type definitions."""

from __future__ import annotations

from fhir_server import definitions
from fhir_server.validation.walk import complex_items


def test_object_items_of_known_complex_elements_with_their_expressions() -> None:
    patient = {
        "resourceType": "Patient",
        "id": "p",  # primitive: not listed
        "name": [{"family": "A"}, "not an object", {"family": "B"}],
        "maritalStatus": {"text": "married"},
        "contact": [{"name": {"family": "C"}}],
        "unknownThing": {"x": 1},  # not in the definition: left to the structure check
    }
    td = definitions.type_definition("Patient")
    found = [
        (key, child.type_code, where)
        for key, child, _, where in complex_items(patient, td, "Patient", "Patient")
    ]
    assert found == [
        ("name", "HumanName", "Patient.name[0]"),
        ("name", "HumanName", "Patient.name[2]"),
        ("maritalStatus", "CodeableConcept", "Patient.maritalStatus"),
        ("contact", "BackboneElement", "Patient.contact[0]"),
    ]
