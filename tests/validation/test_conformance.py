"""Rules for SearchParameter and CapabilityStatement beyond their invariants
(fhir_server.validation.conformance), alone and through validation."""

from __future__ import annotations

import copy
from typing import Any

from fhir_server.validation import validate, validate_profiles
from fhir_server.validation.conformance import check_conformance, core_search_parameter
from fhir_server.validation.registry import ProfileRegistry

ORG_NAME = "http://hl7.org/fhir/SearchParameter/Organization-name"

DERIVED: dict[str, Any] = {
    "resourceType": "SearchParameter",
    "url": "http://example.org/fhir/SearchParameter/org-name",
    "name": "OrgName",
    "status": "active",
    "description": "name",
    "derivedFrom": ORG_NAME,
    "code": "name",
    "base": ["Organization"],
    "type": "string",
    "expression": "Organization.name",
}


def places(resource: dict[str, Any]) -> list[str]:
    return [i.expression[0] for i in check_conformance(resource, resource["resourceType"])]


def test_core_search_parameters_are_known_by_url() -> None:
    sp = core_search_parameter(ORG_NAME + "|4.0.1")
    assert sp is not None and sp["type"] == "string"
    assert core_search_parameter("http://example.org/none") is None


def test_a_derived_search_parameter_keeps_type_and_bases() -> None:
    assert places(DERIVED) == []
    wrong_type = {**DERIVED, "type": "token"}
    assert places(wrong_type) == ["SearchParameter.type"]
    wrong_base = {**DERIVED, "base": ["Organization", "Patient"]}
    assert places(wrong_base) == ["SearchParameter.base[1]"]
    # an unknown origin cannot be compared
    assert places({**wrong_type, "derivedFrom": "http://example.org/sp"}) == []


def test_a_composite_search_parameter_has_two_components() -> None:
    composite = {**DERIVED, "type": "composite", "derivedFrom": None}
    del composite["derivedFrom"]
    assert places(composite) == ["SearchParameter"]
    one = {"definition": "http://hl7.org/fhir/SearchParameter/x", "expression": "a"}
    assert places({**composite, "component": [one]}) == ["SearchParameter"]
    assert places({**composite, "component": [one, one]}) == []


def test_capability_statement_search_param_types_match_their_definition() -> None:
    cs: dict[str, Any] = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2024-01-01",
        "kind": "instance",
        "implementation": {"description": "this server"},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "searchParam": [{"name": "name", "definition": ORG_NAME, "type": "string"}],
                "resource": [
                    {
                        "type": "AllergyIntolerance",
                        "searchParam": [
                            {
                                "name": "clinical-status",
                                "definition": "http://hl7.org/fhir/SearchParameter/"
                                "AllergyIntolerance-clinical-status",
                                "type": "token",
                            },
                            {"name": "custom", "type": "date"},
                        ],
                    }
                ],
            }
        ],
    }
    assert places(cs) == []
    assert [i for i in validate(cs, registry=ProfileRegistry()) if i.severity == "error"] == []
    bad = copy.deepcopy(cs)
    bad["rest"][0]["resource"][0]["searchParam"][0]["type"] = "date"
    bad["rest"][0]["searchParam"][0]["type"] = "token"
    assert places(bad) == [
        "CapabilityStatement.rest[0].searchParam[0]",
        "CapabilityStatement.rest[0].resource[0].searchParam[0]",
    ]
    issues = validate(bad, registry=ProfileRegistry())
    assert sum(i.severity == "error" for i in issues) == 2


def test_other_resources_and_nested_ones() -> None:
    assert places({"resourceType": "Patient"}) == []
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": {**DERIVED, "type": "token"}}],
    }
    issues = validate_profiles(bundle, registry=ProfileRegistry())
    assert [(i.severity, i.expression) for i in issues] == [
        ("error", ("Bundle.entry[0].resource.type",))
    ]
