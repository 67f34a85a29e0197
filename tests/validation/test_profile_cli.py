"""validate_files: the function behind `fhir-server validate FILE... [--profile URL]`."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from fhir_server.validation.cli import validate_files

VITALS = "http://hl7.org/fhir/StructureDefinition/vitalsigns"


def run(paths: list[Path], profile: str | None = None) -> tuple[int, list[dict[str, Any]], str]:
    out, err = io.StringIO(), io.StringIO()
    code = validate_files(paths, profile, out=out, err=err)
    outcomes = [json.loads(line) for line in out.getvalue().splitlines()]
    return code, outcomes, err.getvalue()


def write(tmp: Path, name: str, data: Any) -> Path:
    path = tmp / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data, encoding="utf-8")
    return path


PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female"}
OBS = {"resourceType": "Observation", "status": "final", "code": {"text": "weight"}}


def test_valid_files_exit_0(tmp_path: Path) -> None:
    code, outcomes, err = run([write(tmp_path, "p.json", PATIENT)])
    assert code == 0
    assert outcomes == [
        {
            "resourceType": "OperationOutcome",
            "issue": [
                {"severity": "information", "code": "informational", "diagnostics": "All OK"}
            ],
        }
    ]
    assert "Patient/p1: OK" in err


def test_errors_exit_1_with_one_outcome_per_bundle_entry(tmp_path: Path) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": PATIENT}, {"resource": {**PATIENT, "gender": "banana"}}],
    }
    code, outcomes, err = run([write(tmp_path, "b.json", bundle)])
    assert code == 1
    assert len(outcomes) == 2
    assert outcomes[1]["issue"][0]["expression"] == ["Patient.gender"]
    assert "entry[1] Patient/p1: 1 error, 0 warnings" in err


def test_ndjson_and_profile(tmp_path: Path) -> None:
    lines = "\n".join(json.dumps(r) for r in (PATIENT, OBS)) + "\n"
    path = write(tmp_path, "x.ndjson", lines)
    code, outcomes, _ = run([path])
    assert code == 0 and len(outcomes) == 2
    code, outcomes, _ = run([write(tmp_path, "o.json", OBS)], profile=VITALS)
    assert code == 1
    assert any("vitalsigns" in i["diagnostics"] for i in outcomes[0]["issue"])


def test_unreadable_files_exit_2(tmp_path: Path) -> None:
    code, outcomes, err = run([write(tmp_path, "bad.json", "{nope"), tmp_path / "missing.json"])
    assert code == 2
    assert [o["issue"][0]["severity"] for o in outcomes] == ["fatal", "fatal"]
    assert "cannot be read" in err


STRICT_PATIENT = {
    **PATIENT,
    "extension": [{"url": "https://ext.test/fhir/StructureDefinition/x", "valueString": "y"}],
    "name": [{"text": "Jo <script>x</script>"}],
    "photo": [{"url": "http://photos.example.org/p1.png"}],
}


def test_policy_options_are_off_by_default(tmp_path: Path) -> None:
    code, _, _ = run([write(tmp_path, "p.json", STRICT_PATIENT)])
    assert code == 0


@pytest.mark.parametrize(
    ("flags", "expression"),
    [
        (["--unknown-extensions", "error"], "Patient.extension[0]"),
        (["--security-checks"], "Patient.name[0].text"),
        (["--no-example-urls"], "Patient.photo[0].url"),
    ],
)
def test_command_line_flags_set_the_policy_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], expression: str
) -> None:
    from fhir_server.cli import main

    path = write(tmp_path, "p.json", STRICT_PATIENT)
    assert main(["validate", str(path), *flags]) == 1
    outcome = json.loads(capsys.readouterr().out)
    assert [i["expression"] for i in outcome["issue"] if i["severity"] == "error"] == [[expression]]


def test_allowed_extension_domains_and_markdown_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fhir_server.cli import main

    path = write(tmp_path, "p.json", STRICT_PATIENT)
    flags = ["--unknown-extensions", "error", "--allow-extension-domain", "https://ext.test/"]
    assert main(["validate", str(path), *flags]) == 0
    comm = {"resourceType": "Communication", "status": "completed", "note": [{"text": "<b>x"}]}
    path = write(tmp_path, "c.json", comm)
    assert main(["validate", str(path)]) == 0
    assert main(["validate", str(path), "--no-html-in-markdown"]) == 1
    capsys.readouterr()


def test_ignore_contained_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fhir_server.cli import main

    condition = {
        "resourceType": "Condition",
        "subject": {"reference": "Patient/1"},
        "contained": [{"resourceType": "Practitioner", "id": "p" * 65}],
    }
    path = write(tmp_path, "c.json", condition)
    assert main(["validate", str(path)]) == 1
    assert main(["validate", str(path), "--ignore-contained"]) == 0
    capsys.readouterr()


def test_resolve_references_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fhir_server.cli import main

    params = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "p", "resource": {"resourceType": "Patient", "id": "1"}},
            {
                "name": "c",
                "resource": {
                    "resourceType": "Coverage",
                    "status": "active",
                    "beneficiary": {"reference": "Patient/2"},
                    "payor": [{"reference": "Patient/1"}],
                },
            },
        ],
    }
    path = write(tmp_path, "p.json", params)
    assert main(["validate", str(path)]) == 0
    assert main(["validate", str(path), "--resolve-references"]) == 1
    outcome = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert [i["expression"] for i in outcome["issue"] if i["severity"] == "error"] == [
        ["Parameters.parameter[1].resource.beneficiary.reference"]
    ]
