"""References resolved inside the resource (fhir_server.validation.references): the
Composition's references in a document Bundle (always), and references between the
resources of a Parameters (ValidationOptions.resolve_references)."""

from __future__ import annotations

import copy
from typing import Any

from fhir_server.validation import ValidationOptions, validate, validate_resource
from fhir_server.validation.references import check_document, check_parameters
from fhir_server.validation.registry import ProfileRegistry

BASE = "http://example.org"


def _obs(version: str | None = None) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"text": "x"},
    }
    if version:
        obs["meta"] = {"versionId": version}
    return obs


def document(*entries: str, versions: tuple[str, ...] = ()) -> dict[str, Any]:
    composition = {
        "resourceType": "Composition",
        "id": "c1",
        "status": "final",
        "type": {"text": "note"},
        "date": "2024-12-01",
        "title": "Doc",
        "subject": {"reference": "Patient/p1"},
        "author": [{"reference": "Practitioner/d1"}],
        "section": [{"section": [{"entry": [{"reference": e} for e in entries]}]}],
    }
    observations = [_obs(v) for v in versions] or [_obs()]
    return {
        "resourceType": "Bundle",
        "type": "document",
        "identifier": {"system": "urn:ietf:rfc:3986", "value": "urn:uuid:1"},
        "timestamp": "2024-12-01T10:00:00Z",
        "entry": [
            {"fullUrl": f"{BASE}/Composition/c1", "resource": composition},
            *({"fullUrl": f"{BASE}/Observation/o1", "resource": o} for o in observations),
            {"fullUrl": f"{BASE}/Patient/p1", "resource": {"resourceType": "Patient", "id": "p1"}},
            {
                "fullUrl": f"{BASE}/Practitioner/d1",
                "resource": {"resourceType": "Practitioner", "id": "d1"},
            },
        ],
    }


def problems(bundle: dict[str, Any]) -> list[tuple[str, str]]:
    return [(i.expression[0], i.code) for i in check_document(bundle, "Bundle")]


SECTION_ENTRY = "Bundle.entry[0].resource.section[0].section[0].entry"


def test_document_references_resolve_by_full_url() -> None:
    assert problems(document("Observation/o1", f"{BASE}/Observation/o1")) == []
    assert problems(document("Observation/o2")) == [(f"{SECTION_ENTRY}[0].reference", "not-found")]
    # relative to the Composition's root: another server's Observation/o1 is not it
    doc = document("Observation/o1")
    doc["entry"][1]["fullUrl"] = "http://other.org/Observation/o1"
    assert problems(doc) == [(f"{SECTION_ENTRY}[0].reference", "not-found")]
    # subject, author ... are document content too
    doc = document("Observation/o1")
    del doc["entry"][2]
    assert problems(doc) == [("Bundle.entry[0].resource.subject.reference", "not-found")]


def test_document_versioned_references() -> None:
    good = document("Observation/o1/_history/1", "Observation/o1/_history/2", versions=("1", "2"))
    assert problems(good) == []
    bad = document("Observation/o1/_history/3", "Observation/o1", versions=("1", "2"))
    assert problems(bad) == [
        (f"{SECTION_ENTRY}[0].reference", "not-found"),
        (f"{SECTION_ENTRY}[1].reference", "invalid"),  # two versions: ambiguous
    ]
    # with one version, an unversioned reference is that version
    assert problems(document("Observation/o1", versions=("1",))) == []


def test_document_urn_references_and_what_is_not_checked() -> None:
    doc = document("urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0")
    assert problems(doc) == [(f"{SECTION_ENTRY}[0].reference", "not-found")]
    doc["entry"][1]["fullUrl"] = "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0"
    assert problems(doc) == []
    # an entry with a urn:uuid fullUrl resolves relative references by type and id
    doc = document("Observation/o1")
    doc["entry"][0]["fullUrl"] = "urn:uuid:9c3151bd-1cbf-4d64-b04d-cd9187a4c6e0"
    assert problems(doc) == []
    # relatesTo (other documents), conditional and contained references: not checked
    doc = document("Observation?code=x", "#c")
    doc["entry"][0]["resource"]["relatesTo"] = [
        {"code": "replaces", "targetReference": {"reference": "Composition/old"}}
    ]
    assert problems(doc) == []
    # not a document, or no Composition first: nothing here
    collection = {**document("Observation/o2"), "type": "collection"}
    assert [i for i in validate_resource(collection) if i.severity == "error"] == []


def test_document_rule_runs_in_base_validation() -> None:
    issues = validate_resource(document("Observation/o1/_history/3", versions=("1", "2")))
    assert [i.expression[0] for i in issues if i.severity == "error"] == [
        f"{SECTION_ENTRY}[0].reference"
    ]


PARAMETERS: dict[str, Any] = {
    "resourceType": "Parameters",
    "parameter": [
        {"name": "MemberPatient", "resource": {"resourceType": "Patient", "id": "1"}},
        {
            "name": "Coverage",
            "part": [
                {
                    "name": "OldCoverage",
                    "resource": {
                        "resourceType": "Coverage",
                        "id": "c",
                        "contained": [
                            {
                                "resourceType": "Organization",
                                "id": "payer",
                                "name": "Payer",
                                "partOf": {"reference": "Organization/parent"},
                            }
                        ],
                        "status": "active",
                        "beneficiary": {"reference": "Patient/1"},
                        "payor": [{"reference": "#payer"}, {"reference": "http://x.org/Org/1"}],
                    },
                }
            ],
        },
    ],
}


def test_parameters_references_resolve_among_its_resources() -> None:
    where = "Parameters.parameter[1].part[0].resource"
    found = [i.expression[0] for i in check_parameters(PARAMETERS, "Parameters")]
    # Organization/parent (in a contained resource) is not among them; #payer, the
    # absolute URL and Patient/1 are fine
    assert found == [f"{where}.contained[0].partOf.reference"]
    params = copy.deepcopy(PARAMETERS)
    coverage = params["parameter"][1]["part"][0]["resource"]
    del coverage["contained"][0]["partOf"]
    assert check_parameters(params, "Parameters") == []
    coverage["beneficiary"]["reference"] = "Patient/1/_history/2"
    assert [i.expression[0] for i in check_parameters(params, "Parameters")] == [
        f"{where}.beneficiary.reference"
    ]
    params["parameter"][0]["resource"]["meta"] = {"versionId": "2"}
    assert check_parameters(params, "Parameters") == []


def test_parameters_references_are_an_option() -> None:
    params = copy.deepcopy(PARAMETERS)
    params["parameter"][1]["part"][0]["resource"]["beneficiary"]["reference"] = "Patient/2"

    def errors(options: ValidationOptions) -> list[str]:
        issues = validate(params, registry=ProfileRegistry(), options=options)
        return [i.expression[0] for i in issues if i.severity == "error"]

    assert errors(ValidationOptions()) == []
    assert sorted(errors(ValidationOptions(resolve_references=True))) == [
        "Parameters.parameter[1].part[0].resource.beneficiary.reference",
        "Parameters.parameter[1].part[0].resource.contained[0].partOf.reference",
    ]
