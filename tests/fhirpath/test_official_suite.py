"""The official FHIRPath test suite (fhir-test-cases r4/fhirpath/tests-fhir-r4.xml).

Every case becomes one test. Cases listed in ``known_failures.KNOWN_FAILURES`` are
strict xfails: they must still fail, so the list stays truthful. Cases whose input
resource is available neither in the checkout nor among the official R4 examples in
``tests/data`` are left out of the run; ``test_unavailable_inputs_are_exactly`` names
them, so the number left out is asserted rather than hidden.
"""

from __future__ import annotations

import gzip
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from fhirpathpy.engine.nodes import FP_DateTime, FP_Quantity, FP_Time

from fhir_server import jsonio
from fhir_server.fhirpath import FhirPathError, compile_expression
from tests.fhirpath.known_failures import KNOWN_FAILURES
from tests.fhirpath.support import fhir_test_cases, load_xml_resource

SUITE = "r4/fhirpath/tests-fhir-r4.xml"
# Where the suite's input resources may be, relative to the checkout. The suite's
# patient-example.xml is the R4 example patient, which the checkout also carries in
# validator/ (the other inputs are not in the checkout).
INPUT_DIRS = ("r4/fhirpath/input", "r4/fhirpath")
INPUT_ALIASES = {"patient-example.xml": "validator/patient-example.xml"}
# Inputs that are official R4 examples, found in tests/data/r4-examples.ndjson.gz
EXAMPLE_INPUTS = {
    "observation-example.xml": ("Observation", "example"),
    "questionnaire-example.xml": ("Questionnaire", "3141"),
    "explanationofbenefit-example.json": ("ExplanationOfBenefit", "EB3500"),
    "appointment-examplereq.json": ("Appointment", "examplereq"),
}
# Inputs made for the FHIRPath suite alone, or conformance examples we do not ship
UNAVAILABLE_INPUTS = {
    "codesystem-example.xml",
    "parameters-example-types.xml",
    "patient-container-example.json",
    "patient-example-period.xml",
    "patient-name-extensions.json",
    "valueset-example-expansion.xml",
}
EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "r4-examples.ndjson.gz"


@dataclass(frozen=True)
class Case:
    name: str
    expression: str
    inputfile: str | None
    invalid: str | None
    predicate: bool
    ordered: bool
    outputs: tuple[tuple[str | None, str], ...]


def _case(test: ET.Element) -> Case:
    expression = test.find("expression")
    assert expression is not None, test.attrib["name"]
    return Case(
        name=test.attrib["name"],
        expression=expression.text or "",
        inputfile=test.attrib.get("inputfile"),
        invalid=expression.attrib.get("invalid"),
        predicate=test.attrib.get("predicate") == "true",
        ordered=test.attrib.get("ordered") != "false",
        outputs=tuple((o.attrib.get("type"), o.text or "") for o in test.findall("output")),
    )


def _suite_path() -> Path | None:
    try:
        return fhir_test_cases() / SUITE
    except AssertionError:
        return None


def load_cases() -> list[Case]:
    path = _suite_path()
    if path is None or not path.is_file():
        return []
    root = ET.parse(path).getroot()
    return [_case(test) for test in root.iter("test")]


CASES = load_cases()


def _params() -> list[Any]:
    if not CASES:  # make the absence of the suite a failure, not an empty run
        return [pytest.param(None, id="suite-missing")]
    params = []
    for case in CASES:
        if case.inputfile in UNAVAILABLE_INPUTS:
            continue
        reason = KNOWN_FAILURES.get(case.name)
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        params.append(pytest.param(case, id=case.name, marks=marks))
    return params


@cache
def load_input(name: str) -> Any:
    root = fhir_test_cases()
    candidates = [root / d / name for d in INPUT_DIRS]
    if name in INPUT_ALIASES:
        candidates.append(root / INPUT_ALIASES[name])
    for path in candidates:
        if path.is_file():
            if name.endswith(".json"):
                return jsonio.loads(path.read_bytes())
            return load_xml_resource(path)
    if name in EXAMPLE_INPUTS:
        return _official_example(*EXAMPLE_INPUTS[name])
    return None


@cache
def _examples() -> dict[tuple[str, str], bytes]:
    out = {}
    for line in gzip.decompress(EXAMPLES.read_bytes()).splitlines():
        head = jsonio.loads(line)
        out[(head["resourceType"], head["id"])] = line
    return out


def _official_example(rtype: str, id: str) -> Any:
    return jsonio.loads(_examples()[(rtype, id)])


def test_unavailable_inputs_are_exactly() -> None:
    """The inputs we cannot provide, and that all the others load."""
    used = {c.inputfile for c in CASES if c.inputfile}
    missing = {name for name in used if load_input(name) is None}
    assert missing == UNAVAILABLE_INPUTS
    left_out = sum(1 for c in CASES if c.inputfile in UNAVAILABLE_INPUTS)
    assert left_out == 17, left_out


# -- comparing results -------------------------------------------------------------


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, FP_Time):
        return "@T" + str(value)
    if isinstance(value, FP_DateTime):
        return "@" + str(value)
    return str(value)


def _decimal_matches(value: Any, text: str) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        return False
    expected = Decimal(text)
    if Decimal(value) != expected:
        return False
    # "1.50" is not "1.5": when the expectation has decimals, precision counts
    return "." not in text or Decimal(value).as_tuple().exponent == expected.as_tuple().exponent


def matches(value: Any, expected_type: str | None, text: str) -> bool:
    if expected_type == "boolean":
        return isinstance(value, bool) and _text(value) == text
    if expected_type == "integer":
        return isinstance(value, int) and not isinstance(value, bool) and str(value) == text
    if expected_type == "decimal":
        return _decimal_matches(value, text)
    if expected_type == "Quantity":
        return isinstance(value, FP_Quantity) and str(value) == text
    if expected_type in ("date", "dateTime", "time"):
        if isinstance(value, str):
            prefix = "@T" if expected_type == "time" else "@"
            return prefix + value == text
        return isinstance(value, FP_DateTime | FP_Time) and _text(value) == text
    if expected_type is None:
        return _text(value) == text
    return isinstance(value, str) and value == text


def outcome_matches(case: Case, result: list[Any]) -> bool:
    if case.predicate:
        result = [bool(result)]
    if len(result) != len(case.outputs):
        return False
    if case.ordered:
        return all(matches(v, t, x) for v, (t, x) in zip(result, case.outputs, strict=True))
    remaining = list(case.outputs)
    for value in result:
        found = next((o for o in remaining if matches(value, *o)), None)
        if found is None:
            return False
        remaining.remove(found)
    return True


# -- the tests ---------------------------------------------------------------------


@pytest.mark.parametrize("case", _params())
def test_official_case(case: Case | None) -> None:
    if case is None:
        fhir_test_cases()  # raises with where it looked
        pytest.fail(f"{SUITE} is missing from the fhir-test-cases checkout")
    resource = None
    if case.inputfile is not None:
        resource = load_input(case.inputfile)
        assert resource is not None, f"input {case.inputfile} is not available"
    if case.invalid:
        with pytest.raises(FhirPathError):
            compile_expression(case.expression)(resource, {})
        return
    result = compile_expression(case.expression)(resource, {})
    assert outcome_matches(case, result), (
        f"{case.expression!r} gave {result!r}, expected {case.outputs!r}"
    )


def test_suite_is_present_and_complete() -> None:
    path = fhir_test_cases() / SUITE
    assert path.is_file(), f"{path} is missing"
    assert len(CASES) > 900, f"only {len(CASES)} cases parsed from {path}"


def test_known_failures_name_real_cases() -> None:
    names = {case.name for case in CASES}
    stale = sorted(set(KNOWN_FAILURES) - names)
    assert not stale, f"KNOWN_FAILURES lists cases the suite does not have: {stale}"
