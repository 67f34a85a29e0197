"""Index extraction: the entries expected for sample resources."""

from __future__ import annotations

import time
from typing import Any

from fhir_server import jsonio
from fhir_server.search import values
from fhir_server.search.extract import IndexEntries, extract, extract_param
from fhir_server.search.paths import compile_path

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p1",
    "meta": {
        "lastUpdated": "2024-03-01T10:00:00.123Z",
        "tag": [{"system": "http://tags", "code": "t1"}],
        "profile": ["http://example.org/StructureDefinition/p"],
    },
    "identifier": [
        {
            "system": "http://hospital/mrn",
            "value": "123",
            "type": {"coding": [{"system": "http://t", "code": "MR"}], "text": "Medical record"},
        }
    ],
    "active": True,
    "name": [{"family": "Ölmez", "given": ["Zoë", "Ann"], "text": "Zoë Ölmez"}],
    "telecom": [{"system": "email", "value": "z@example.org"}, {"system": "phone", "value": "555"}],
    "gender": "female",
    "birthDate": "1980-05",
    "deceasedDateTime": "2020-01-01",
    "address": [{"line": ["1 Main St"], "city": "Springfield", "postalCode": "12345"}],
    "generalPractitioner": [{"reference": "Practitioner/pr1"}],
    "managingOrganization": {"reference": "http://other.org/fhir/Organization/o1/_history/3"},
    "link": [{"other": {"identifier": {"system": "http://ids", "value": "x"}}, "type": "seealso"}],
}

OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "code": {
        "coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "BP panel"}],
        "text": "Blood pressure",
    },
    "subject": {"reference": "Patient/p1"},
    "effectivePeriod": {"start": "2024-01-01T10:00:00Z"},
    "component": [
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "valueQuantity": {
                "value": jsonio.FhirDecimal("120.5"),
                "unit": "mmHg",
                "system": "http://unitsofmeasure.org",
                "code": "mm[Hg]",
            },
        },
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
            "valueQuantity": {"value": 80, "unit": "mmHg"},
        },
    ],
}


def of(entries: IndexEntries, code: str) -> set[tuple[Any, ...]]:
    rows: set[tuple[Any, ...]] = set()
    for table in (
        entries.strings,
        entries.tokens,
        entries.refs,
        entries.dates,
        entries.numbers,
        entries.quantities,
        entries.uris,
    ):
        rows |= {r[1:] for r in table if r[0] == code}
    return rows


def test_strings_are_normalised_per_name_part() -> None:
    e = extract(PATIENT)
    assert of(e, "family") == {("olmez", "Ölmez", None)}
    assert of(e, "name") == {
        ("olmez", "Ölmez", None),
        ("zoe", "Zoë", None),
        ("ann", "Ann", None),
        ("zoe olmez", "Zoë Ölmez", None),
    }
    assert ("springfield", "Springfield", None) in of(e, "address")
    assert of(e, "address-postalcode") == {("12345", "12345", None)}


def test_tokens() -> None:
    e = extract(PATIENT)
    assert of(e, "identifier") == {("http://hospital/mrn", "123", "medical record", None)}
    assert of(e, "identifier:of-type") == {("http://t", "MR|123", None, None)}
    # a code's system comes from its required binding
    assert of(e, "gender") == {("http://hl7.org/fhir/administrative-gender", "female", None, None)}
    assert of(e, "active") == {(None, "true", None, None)}
    assert of(e, "deceased") == {(None, "true", None, None)}
    assert of(e, "email") == {("email", "z@example.org", None, None)}
    assert of(e, "_tag") == {("http://tags", "t1", None, None)}
    o = extract(OBSERVATION)
    assert of(o, "code") == {
        ("http://loinc.org", "85354-9", "bp panel", None),
        (None, None, "blood pressure", None),
    }


def test_references() -> None:
    e = extract(PATIENT)
    assert of(e, "general-practitioner") == {("Practitioner", "pr1", None, None, None, None, None)}
    assert of(e, "organization") == {
        ("Organization", "o1", "3", "http://other.org/fhir/Organization/o1", None, None, None)
    }
    assert of(e, "link") == {(None, None, None, None, "http://ids", "x", None)}
    o = extract(OBSERVATION)
    assert of(o, "subject") == {("Patient", "p1", None, None, None, None, None)}
    assert of(o, "patient") == {("Patient", "p1", None, None, None, None, None)}


def test_dates_cover_the_precision() -> None:
    e = extract(PATIENT)
    lo, _ = values.date_range("1980-05-01")  # type: ignore[misc]
    _, hi = values.date_range("1980-05-31")  # type: ignore[misc]
    assert of(e, "birthdate") == {(lo, hi, None)}
    lu = values.date_range("2024-03-01T10:00:00.123Z")
    assert lu is not None and lu[1] - lu[0] == 999
    assert of(e, "_lastUpdated") == {(lu[0], lu[1], None)}
    o = extract(OBSERVATION)
    start = values.date_range("2024-01-01T10:00:00Z")
    assert start is not None
    assert of(o, "date") == {(start[0], values.MAX_TIME, None)}  # open-ended Period


def test_uris() -> None:
    e = extract(PATIENT)
    assert of(e, "_profile") == {("http://example.org/StructureDefinition/p", None)}


def test_composites_group_their_components() -> None:
    o = extract(OBSERVATION)
    tokens = of(o, "component-code-value-quantity#0")
    quantities = of(o, "component-code-value-quantity#1")
    by_grp = {t[-1]: t[1] for t in tokens}
    q_by_grp = {q[-1]: q for q in quantities}
    assert set(by_grp) == set(q_by_grp)
    g = next(g for g, c in by_grp.items() if c == "8480-6")
    assert q_by_grp[g][:5] == (120.5, 120.5, "http://unitsofmeasure.org", "mm[Hg]", "mmHg")
    g = next(g for g, c in by_grp.items() if c == "8462-4")
    assert q_by_grp[g][:5] == (80.0, 80.0, None, None, "mmHg")
    # the Observation has no value: code-value-quantity has no complete group
    assert not of(o, "code-value-quantity#0")


def test_extract_param_matches_extract() -> None:
    assert of(extract_param(PATIENT, "name"), "name") == of(extract(PATIENT), "name")


def test_compiled_paths() -> None:
    run = compile_path("Observation.subject.where(resolve() is Patient) | Observation.code")
    assert run is not None
    got = run(OBSERVATION, [(OBSERVATION, "Observation")], {})
    assert [t for _, t in got] == ["Reference", "CodeableConcept"]
    run = compile_path("(Observation.component.value as Quantity).value")
    assert run is not None
    assert [v for v, _ in run(OBSERVATION, [], {})] == [jsonio.FhirDecimal("120.5"), 80]
    assert compile_path("Observation.code.memberOf('x')") is None  # falls back to FHIRPath


def test_extraction_speed() -> None:
    """Loose bound (shared CI machines); the figures are in the search package docs."""
    extract(PATIENT)
    extract(OBSERVATION)
    n = 200
    start = time.perf_counter()
    for _ in range(n):
        extract(PATIENT)
        extract(OBSERVATION)
    per_pair = (time.perf_counter() - start) / n
    assert per_pair < 0.005
