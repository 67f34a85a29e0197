"""Coding.display against the displays of the R4 code systems (validation.displays):
a warning by default (writes are not refused for it), an error when asked for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fhir_server import definitions
from fhir_server.validation import ValidationOptions, validate, validate_resource

ITEM_TYPE = "http://hl7.org/fhir/item-type"
V3_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


def observation(*codings: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "interpretation": [{"coding": list(codings)}],
        **extra,
    }


def display_issues(resource: dict[str, Any], **options: Any) -> list[tuple[str, str, str]]:
    issues = validate_resource(resource, options=ValidationOptions(**options))
    return [
        (i.severity, i.expression[0], i.diagnostics) for i in issues if "display" in i.diagnostics
    ]


def test_the_tables_hold_the_r4_displays() -> None:
    items = definitions.code_system_displays(ITEM_TYPE)
    assert items is not None and items["string"] == "String"
    assert definitions.code_system_displays("http://loinc.org") is None


def test_a_wrong_display_is_a_warning_by_default_and_an_error_on_request() -> None:
    coding = {"system": V3_INTERPRETATION, "code": "L", "display": "High"}
    found = display_issues(observation(coding))
    assert found == [
        (
            "warning",
            "Observation.interpretation[0].coding[0].display",
            f"Wrong display 'High' for {V3_INTERPRETATION}#L: the code system's display is 'Low'",
        )
    ]
    strict = display_issues(observation(coding), wrong_displays="error")
    assert [(s, e) for s, e, _ in strict] == [
        ("error", "Observation.interpretation[0].coding[0].display")
    ]


def test_a_write_is_not_refused_for_a_display() -> None:
    coding = {"system": V3_INTERPRETATION, "code": "L", "display": "High"}
    issues = validate(observation(coding))
    assert [i.severity for i in issues if "display" in i.diagnostics] == ["warning"]
    assert not [i for i in issues if i.severity == "error"]


@pytest.mark.parametrize("display", ["Low", "low", "LOW"])
def test_the_display_may_differ_in_case(display: str) -> None:
    coding = {"system": V3_INTERPRETATION, "code": "L", "display": display}
    assert display_issues(observation(coding), wrong_displays="error") == []


def test_white_space_is_reported_as_such() -> None:
    coding = {"system": ITEM_TYPE, "code": "open-choice", "display": "Open  Choice"}
    qr = {
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "item": [{"linkId": "1", "answer": [{"valueCoding": coding}]}],
    }
    found = display_issues(qr, wrong_displays="error")
    assert len(found) == 1
    assert found[0][1] == "QuestionnaireResponse.item[0].answer[0].valueCoding.display"
    assert found[0][2].startswith("Wrong white space in the display 'Open  Choice'")


@pytest.mark.parametrize(
    "coding",
    [
        {"system": V3_INTERPRETATION, "code": "L"},  # no display
        {"system": "http://loinc.org", "code": "8480-6", "display": "anything"},  # not R4
        {"system": V3_INTERPRETATION, "code": "no-such-code", "display": "x"},  # unknown code
        {"code": "L", "display": "High"},  # no system
    ],
)
def test_what_is_not_checked(coding: dict[str, Any]) -> None:
    assert display_issues(observation(coding), wrong_displays="error") == []


def test_a_resource_in_another_language_is_not_checked() -> None:
    coding = {"system": V3_INTERPRETATION, "code": "L", "display": "Niedrig"}
    assert display_issues(observation(coding, language="de"), wrong_displays="error") == []
    found = display_issues(observation(coding, language="en-US"), wrong_displays="error")
    assert len(found) == 1
    # a contained resource in another language inside an English one, and back
    german = {**observation(coding, language="de-CH"), "id": "g"}
    outer = observation(coding, language="en", contained=[german])
    outer["hasMember"] = [{"reference": "#g"}]
    found = display_issues(outer, wrong_displays="error")
    assert [e for _, e, _ in found] == ["Observation.interpretation[0].coding[0].display"]


def test_command_line_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fhir_server.cli import main

    path = tmp_path / "o.json"
    coding = {"system": V3_INTERPRETATION, "code": "L", "display": "High"}
    path.write_text(json.dumps(observation(coding)), encoding="utf-8")
    assert main(["validate", str(path)]) == 0
    assert main(["validate", str(path), "--wrong-displays", "error"]) == 1
    capsys.readouterr()


def test_the_generator_keeps_displays_of_complete_code_systems_only() -> None:
    import importlib.util

    script = Path(__file__).resolve().parents[2] / "scripts" / "generate_definitions.py"
    spec = importlib.util.spec_from_file_location("generate_definitions_displays", script)
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)

    def cs(url: str, content: str, concepts: list[dict[str, Any]]) -> dict[str, Any]:
        return {"resourceType": "CodeSystem", "url": url, "content": content, "concept": concepts}

    nested = [{"code": "a", "display": "A", "concept": [{"code": "b", "display": "B"}]}]
    data = gen.build_displays(
        [
            cs("http://x.test/cs", "complete", [*nested, {"code": "c"}]),
            cs("http://x.test/cs", "complete", [{"code": "a", "display": "second copy"}]),
            cs("http://x.test/fragment", "fragment", [{"code": "a", "display": "A"}]),
            {"resourceType": "ValueSet", "url": "http://x.test/vs"},
        ]
    )
    assert data["codeSystems"] == {"http://x.test/cs": {"a": "A", "b": "B"}}
