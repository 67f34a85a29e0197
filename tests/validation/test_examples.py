"""Every official R4 example (tests/data/r4-examples.ndjson.gz) validates, except the
few that really violate the R4 base definitions, which are rejected for exactly the
reasons listed here."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import pytest

from fhir_server import jsonio
from fhir_server.validation import validate_resource

EXAMPLES = Path(__file__).resolve().parent.parent / "data" / "r4-examples.ndjson.gz"


def _load() -> list[dict[str, Any]]:
    with gzip.open(EXAMPLES, "rb") as fh:
        return [jsonio.loads(line) for line in fh if line.strip()]


ALL = _load()

# (resourceType, id) -> the issues (code, expression, a phrase of the message) the
# example SHALL produce. Each one is an error in the published example, not in the
# validator: the definitions cited are the R4 (4.0.1) base definitions.
KNOWN_INVALID: dict[tuple[str, str], list[tuple[str, str, str]]] = {
    # DeviceMetric.parent is Reference(Device); the example points to a DeviceDefinition.
    ("DeviceMetric", "example"): [
        ("invalid", "DeviceMetric.parent.reference", "reference to a DeviceDefinition"),
    ],
    # DeviceUseStatement.reasonReference is Reference(Condition | Observation |
    # DiagnosticReport | DocumentReference | Media); the example cites a Procedure.
    ("DeviceUseStatement", "example"): [
        ("invalid", "DeviceUseStatement.reasonReference[0].reference", "reference to a Procedure"),
    ],
    # MedicationRequest.dispenseRequest.performer is Reference(Organization).
    ("MedicationRequest", "medrx0301"): [
        (
            "invalid",
            "MedicationRequest.dispenseRequest.performer.reference",
            "reference to a Practitioner",
        ),
    ],
    # Observation.performer may not reference an Encounter.
    ("Observation", "clinical-gender"): [
        ("invalid", "Observation.performer[0].reference", "reference to a Encounter"),
    ],
    # Questionnaire.item.linkId is 1..1, but the questionnaire "qs1" (generated from the
    # Account definition) has 32 'display' items without a linkId.
    ("Questionnaire", "qs1"): [
        ("required", f"Questionnaire.item[0].{path}.linkId", "missing required element 'linkId'")
        for path in [
            "item[0]",
            *(f"item[{i}].item[0]" for i in range(1, 20)),
            "item[15].item[1]",
            *(f"item[15].item[{j}].item[0]" for j in range(2, 7)),
            *(f"item[18].item[{j}].item[0]" for j in range(1, 7)),
        ]
    ],
}


def _key(resource: dict[str, Any]) -> tuple[str, str]:
    return resource["resourceType"], resource.get("id", "")


def test_the_examples_file_holds_the_non_definition_examples() -> None:
    assert len(ALL) > 700
    types = {r["resourceType"] for r in ALL}
    assert {"Patient", "Observation", "Bundle", "Questionnaire"} <= types
    assert not types & {"StructureDefinition", "ValueSet", "CodeSystem", "SearchParameter"}


def test_pass_rate_is_at_least_99_percent() -> None:
    failing = [_key(r) for r in ALL if validate_resource(r)]
    assert len(failing) / len(ALL) <= 0.01, failing
    assert sorted(failing) == sorted(KNOWN_INVALID)


@pytest.mark.parametrize("resource", ALL, ids=lambda r: "/".join(_key(r)))
def test_example(resource: dict[str, Any]) -> None:
    issues = validate_resource(resource)
    expected = KNOWN_INVALID.get(_key(resource))
    if expected is None:
        assert issues == [], [(i.expression, i.diagnostics) for i in issues]
        return
    got = sorted((i.code, i.expression[0], i.diagnostics) for i in issues)
    want = sorted(expected)
    assert [(c, e) for c, e, _ in got] == [(c, e) for c, e, _ in want]
    for (_, _, message), (_, _, phrase) in zip(got, want, strict=True):
        assert phrase in message
