"""What a ProfileRegistry keeps beyond profiles: ImplementationGuides (their global
profiles, applied by validate()) and Measures."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_server.validation import validate
from fhir_server.validation.registry import ProfileRegistry, RegistryError

PROFILE = "http://example.org/fhir/StructureDefinition/named-patient"
GUIDE = "http://example.org/fhir/ImplementationGuide/guide"


def named_patient() -> dict[str, Any]:
    return {
        "resourceType": "StructureDefinition",
        "url": PROFILE,
        "name": "NamedPatient",
        "status": "active",
        "kind": "resource",
        "abstract": False,
        "type": "Patient",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
        "derivation": "constraint",
        "differential": {"element": [{"id": "Patient.name", "path": "Patient.name", "min": 1}]},
    }


def guide(*globals_: tuple[str, str]) -> dict[str, Any]:
    return {
        "resourceType": "ImplementationGuide",
        "url": GUIDE,
        "name": "Guide",
        "status": "active",
        "packageId": "example.guide",
        "fhirVersion": ["4.0.1"],
        "global": [{"type": t, "profile": p} for t, p in globals_],
    }


def issues(resource: dict[str, Any], registry: ProfileRegistry) -> list[tuple[str, str, str]]:
    return [
        (i.severity, i.expression[0], i.diagnostics) for i in validate(resource, registry=registry)
    ]


def test_global_profiles_apply_to_every_resource_of_their_type() -> None:
    registry = ProfileRegistry()
    registry.add(named_patient())
    patient = {"resourceType": "Patient", "active": True}
    assert issues(patient, registry) == []  # no guide: the profile is not applied
    registry.add(guide(("Patient", PROFILE), ("Observation", PROFILE)))
    assert registry.global_profiles("Patient") == [(PROFILE, GUIDE)]
    assert registry.global_profiles("Practitioner") == []
    found = issues(patient, registry)
    assert [(s, where) for s, where, _ in found] == [("error", "Patient.name")]
    assert PROFILE in found[0][2]
    assert issues({**patient, "name": [{"family": "X"}]}, registry) == []
    # also nested resources (a Bundle's entries)
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": patient}]}
    assert [where for s, where, _ in issues(bundle, registry) if s == "error"] == [
        "Bundle.entry[0].resource.name"
    ]
    # a copy keeps the guide; removing it stops the profile
    assert registry.copy().global_profiles("Patient") == [(PROFILE, GUIDE)]
    registry.remove(GUIDE)
    assert issues(patient, registry) == []


def test_an_unknown_global_profile_is_a_warning() -> None:
    registry = ProfileRegistry()
    registry.add(guide(("Patient", "http://example.org/fhir/StructureDefinition/nowhere")))
    found = issues({"resourceType": "Patient"}, registry)
    assert [(s, where) for s, where, _ in found] == [("warning", "Patient")]
    assert GUIDE in found[0][2]


def test_measures_are_kept_by_canonical_url_and_version() -> None:
    registry = ProfileRegistry()
    url = "http://example.org/fhir/Measure/m"
    one = {"resourceType": "Measure", "url": url, "version": "1", "status": "active"}
    two = {**one, "version": "2"}
    registry.add({"resourceType": "Bundle", "entry": [{"resource": one}, {"resource": two}]})
    assert registry.measure(url) is two
    assert registry.measure(url + "|1") is one
    assert registry.measure(url + "|3") is None
    assert registry.measure("Measure/m") is two
    with pytest.raises(RegistryError):
        registry.add({"resourceType": "Measure", "status": "active"})  # no url
