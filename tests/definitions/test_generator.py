"""Unit tests of scripts/generate_definitions.py on small synthetic inputs."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "generate_definitions.py"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_definitions", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load_script()

CS = "http://example.org/cs"


def code_system(content: str = "complete") -> dict[str, Any]:
    return {
        "resourceType": "CodeSystem",
        "url": CS,
        "content": content,
        "concept": [
            {
                "code": "animal",
                "concept": [
                    {"code": "dog", "concept": [{"code": "puppy"}]},
                    {"code": "cat"},
                ],
            },
            {"code": "plant", "property": [{"code": "colour", "valueCode": "green"}]},
            {"code": "tree", "property": [{"code": "subsumedBy", "valueCode": "plant"}]},
        ],
    }


def value_set(url: str, compose: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "ValueSet", "url": url, "compose": compose}


def expand(compose: dict[str, Any], *extra: dict[str, Any]) -> dict[str, set[str]]:
    exp = gen.Expander([code_system(), value_set("http://x/vs", compose), *extra])
    result: dict[str, set[str]] = exp.expand("http://x/vs|1.0")
    return result


def test_whole_code_system_with_nested_concepts() -> None:
    assert expand({"include": [{"system": CS}]}) == {
        CS: {"animal", "dog", "puppy", "cat", "plant", "tree"}
    }


def test_explicit_concepts_and_exclude() -> None:
    compose = {
        "include": [{"system": CS, "concept": [{"code": "dog"}, {"code": "cat"}]}],
        "exclude": [{"system": CS, "concept": [{"code": "cat"}]}],
    }
    assert expand(compose) == {CS: {"dog"}}


def test_explicit_concepts_of_an_unknown_system() -> None:
    compose = {"include": [{"system": "http://other", "concept": [{"code": "a"}]}]}
    assert expand(compose) == {"http://other": {"a"}}


def test_filters() -> None:
    def f(op: str, value: str, prop: str = "concept") -> dict[str, Any]:
        return {
            "include": [{"system": CS, "filter": [{"property": prop, "op": op, "value": value}]}]
        }

    assert expand(f("is-a", "animal")) == {CS: {"animal", "dog", "puppy", "cat"}}
    assert expand(f("descendent-of", "animal")) == {CS: {"dog", "puppy", "cat"}}
    assert expand(f("is-a", "plant")) == {CS: {"plant", "tree"}}  # via subsumedBy
    assert expand(f("is-not-a", "animal")) == {CS: {"plant", "tree"}}
    assert expand(f("=", "green", "colour")) == {CS: {"plant"}}


def test_unsupported_filter_is_not_checkable() -> None:
    compose = {
        "include": [{"system": CS, "filter": [{"property": "code", "op": "regex", "value": "d.*"}]}]
    }
    with pytest.raises(gen.NotCheckable):
        expand(compose)


def test_included_value_sets() -> None:
    other = value_set("http://x/other", {"include": [{"system": CS, "concept": [{"code": "dog"}]}]})
    third = value_set(
        "http://x/third", {"include": [{"system": "http://s2", "concept": [{"code": "z"}]}]}
    )
    compose = {"include": [{"valueSet": ["http://x/other"]}, {"valueSet": ["http://x/third"]}]}
    assert expand(compose, other, third) == {CS: {"dog"}, "http://s2": {"z"}}
    # several value sets in one include: their intersection
    compose = {"include": [{"valueSet": ["http://x/other", "http://x/third"]}]}
    assert expand(compose, other, third) == {}


def test_external_or_incomplete_systems_are_not_checkable() -> None:
    with pytest.raises(gen.NotCheckable, match="urn:ietf:bcp:13"):
        expand({"include": [{"system": "urn:ietf:bcp:13"}]})
    exp = gen.Expander(
        [code_system("fragment"), value_set("http://x/vs", {"include": [{"system": CS}]})]
    )
    with pytest.raises(gen.NotCheckable, match="fragment"):
        exp.expand("http://x/vs")
    with pytest.raises(gen.NotCheckable, match="not defined"):
        expand({"include": [{"valueSet": ["http://x/missing"]}]})


def test_self_inclusion_is_detected() -> None:
    with pytest.raises(gen.NotCheckable, match="includes itself"):
        expand({"include": [{"valueSet": ["http://x/vs"]}]})


def test_build_value_sets_records_not_checkable() -> None:
    resources = [code_system(), value_set("http://x/a", {"include": [{"system": CS, "concept": [{"code": "cat"}]}]}),
                 value_set("http://x/b", {"include": [{"system": "urn:iso:std:iso:4217"}]})]  # fmt: skip
    out = gen.build_value_sets(resources, ["http://x/a", "http://x/b", "http://x/c"])
    sets = out["valueSets"]
    assert sets["http://x/a"] == {"codes": {CS: ["cat"]}}
    assert "urn:iso:std:iso:4217" in sets["http://x/b"]["notCheckable"]
    assert "not defined" in sets["http://x/c"]["notCheckable"]


def test_convert_structure_maps_system_types_and_resource_id() -> None:
    sd = {
        "resourceType": "StructureDefinition",
        "type": "Thing",
        "kind": "resource",
        "url": "http://hl7.org/fhir/StructureDefinition/Thing",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/DomainResource",
        "derivation": "specialization",
        "snapshot": {
            "element": [
                {"path": "Thing", "min": 0, "max": "*", "constraint": [{"key": "t-1", "severity": "error", "human": "h", "expression": "true"}]},
                {"path": "Thing.id", "min": 0, "max": "1", "base": {"path": "Resource.id"},
                 "type": [{"code": "http://hl7.org/fhirpath/System.String",
                           "extension": [{"url": gen.EXT_FHIR_TYPE, "valueUrl": "string"}]}]},
                {"path": "Thing.when[x]", "min": 1, "max": "1", "isSummary": True,
                 "type": [{"code": "date"}, {"code": "Reference", "targetProfile": ["http://hl7.org/fhir/StructureDefinition/Patient"]}]},
                {"path": "Thing.kind", "min": 0, "max": "1", "type": [{"code": "code"}],
                 "binding": {"strength": "required", "valueSet": "http://x/vs|4.0.1"}},
                {"path": "Thing.note", "min": 0, "max": "1", "type": [{"code": "http://hl7.org/fhirpath/System.String"}]},
            ]
        },
    }  # fmt: skip
    table = gen.ConstraintTable()
    out = gen.convert_structure(sd, table)
    elements = {e["path"]: e for e in out["elements"]}
    assert out["base"] == "DomainResource"
    assert elements["Thing.id"]["types"] == [{"code": "id"}]
    assert elements["Thing.note"]["types"] == [{"code": "string"}]
    assert elements["Thing.when[x]"]["isSummary"] is True
    assert elements["Thing.when[x]"]["types"][1]["targetProfile"] == [
        "http://hl7.org/fhir/StructureDefinition/Patient"
    ]
    assert elements["Thing.kind"]["binding"] == {
        "strength": "required",
        "valueSet": "http://x/vs|4.0.1",
    }
    assert table.rows[elements["Thing"]["constraints"][0]]["key"] == "t-1"
    # constraints are shared, not repeated
    assert (
        gen.ConstraintTable.add(
            table, {"key": "t-1", "severity": "error", "human": "h", "expression": "true"}
        )
        == 0
    )


def test_examples_exclude_definition_artifacts(tmp_path: Path) -> None:
    files = [
        ("a.json", '{"resourceType":"Patient","id":"a","x":1.50}', {"resourceType": "Patient"}),
        ("b.json", '{"resourceType":"ValueSet","id":"b"}', {"resourceType": "ValueSet"}),
        (
            "c.json",
            '{"resourceType":"Bundle","id":"c"}',
            {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "CodeSystem"}}]},
        ),
        (
            "d.json",
            '{"resourceType":"Bundle","id":"d"}',
            {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Patient"}}]},
        ),
    ]
    out = tmp_path / "ex.ndjson.gz"
    count, _ = gen.write_examples(out, files)
    assert count == 2
    lines = gzip.decompress(out.read_bytes()).decode().splitlines()
    assert lines == [
        '{"resourceType":"Patient","id":"a","x":1.50}',
        '{"resourceType":"Bundle","id":"d"}',
    ]


def test_json_gz_is_deterministic(tmp_path: Path) -> None:
    a, b = tmp_path / "a.gz", tmp_path / "b.gz"
    gen.write_json_gz(a, {"k": [1, 2]})
    gen.write_json_gz(b, {"k": [1, 2]})
    assert a.read_bytes() == b.read_bytes()
    assert json.loads(gzip.decompress(a.read_bytes())) == {"k": [1, 2]}
