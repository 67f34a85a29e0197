"""The quick scan that lets profile validation skip the extension walk."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_server import validation
from fhir_server.validation.service import _has_extensions


@pytest.mark.parametrize(
    ("value", "found"),
    [
        ({"resourceType": "Patient", "name": [{"family": "A"}]}, False),
        ({"resourceType": "Patient", "extension": []}, True),
        ({"resourceType": "Patient", "_birthDate": {"extension": [{"url": "x"}]}}, True),
        ({"resourceType": "Patient", "contact": [{"name": {"modifierExtension": []}}]}, True),
        ({"resourceType": "Bundle", "entry": [{"resource": {"extension": [{}]}}]}, True),
        ({"a": [[{"b": "extension"}]]}, False),  # a value, not a key
    ],
)
def test_scan(value: dict[str, Any], found: bool) -> None:
    assert _has_extensions(value) is found


def test_an_extension_deep_inside_is_still_validated() -> None:
    """A known extension with a wrong value type is reported even when it is nested."""
    patient = {
        "resourceType": "Patient",
        "contact": [
            {
                "name": {
                    "family": "B",
                    "extension": [
                        {
                            "url": "http://hl7.org/fhir/StructureDefinition/humanname-own-prefix",
                            "valueBoolean": True,
                        }
                    ],
                }
            }
        ],
    }
    issues = validation.validate_profiles(patient)
    assert any(i.severity == "error" for i in issues), issues


def test_only_bundles_parameters_and_contained_hold_resources() -> None:
    """validate_profiles skips the nested-resource walk for other resources; this is the
    R4 fact it relies on."""
    from fhir_server import definitions
    from fhir_server.definitions import RESOURCE

    holders = {
        (path, name)
        for rt in definitions.resource_types()
        for path, kids in definitions.type_definition(rt).children.items()
        for name, child in kids.items()
        if child.kind == RESOURCE and name != "contained"
    }
    assert holders == {
        ("Bundle.entry", "resource"),
        ("Bundle.entry.response", "outcome"),
        ("Parameters.parameter", "resource"),
    }


def test_profiles_of_contained_resources_are_still_checked() -> None:
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "contained": [
            {
                "resourceType": "Patient",
                "id": "p",
                "meta": {"profile": ["http://example.org/unknown-profile"]},
            }
        ],
        "subject": {"reference": "#p"},
    }
    issues = validation.validate_profiles(observation)
    assert any("unknown-profile" in (i.diagnostics or "") for i in issues), issues
