"""JSON with comments (validation.comments), accepted by `fhir-server validate` only
with --allow-json-comments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fhir_server import jsonio
from fhir_server.validation.comments import strip_json_comments

PATIENT = b"""// a patient
{
  "resourceType": "Patient", /* the type */
  "id": "p1",
  // a line comment
  "name": [{"text": "a // b /* c */ d \\" // e"}],
  "photo": [{"url": "http://x.test/a.png"}] /* several
  lines */
}
"""


def test_comments_are_blanked_and_strings_kept() -> None:
    stripped = strip_json_comments(PATIENT)
    value = jsonio.loads(stripped)
    assert value["name"][0]["text"] == 'a // b /* c */ d " // e'
    assert value["photo"][0]["url"] == "http://x.test/a.png"
    # same length and the same line breaks: error positions stay those of the file
    assert len(stripped) == len(PATIENT)
    assert stripped.count(b"\n") == PATIENT.count(b"\n")
    assert b"comment" not in stripped and b"several" not in stripped


def test_json_without_comments_is_unchanged() -> None:
    data = b'{"resourceType": "Patient", "id": "x"}'
    assert strip_json_comments(data) is data


def test_an_unterminated_block_comment_is_left_for_the_parser() -> None:
    data = b'{"resourceType": "Patient" /* no end }'
    assert strip_json_comments(data) == data
    with pytest.raises(jsonio.JsonError):
        jsonio.loads(strip_json_comments(data))


def test_the_command_needs_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fhir_server.cli import main

    path = tmp_path / "p.json"
    path.write_bytes(PATIENT)
    assert main(["validate", str(path)]) == 2
    assert main(["validate", str(path), "--allow-json-comments"]) == 0
    outcomes = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert outcomes[0]["issue"][0]["severity"] == "fatal"
    assert all(i["severity"] != "error" for i in outcomes[1]["issue"])
