"""PATCH bodies: JSON Patch and FHIRPath Patch (fhir_server.interactions.patch).

The official cases come from fhir-test-cases r4/patch: json-patch-tests.json, and the
FHIRPath Patch cases of fhir-patch-tests.xml, whose XML resources are converted to
JSON by the test-only converter in tests/fhirpath/support.py. Known failures are
strict xfails (they must keep failing), so the lists below stay truthful.
"""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

import pytest

from fhir_server import jsonio
from fhir_server.errors import FhirError
from fhir_server.interactions.patch import (
    apply_fhirpath_patch,
    apply_json_patch,
    element_repeats,
    parse_pointer,
)
from tests.fhirpath.support import fhir_test_cases, local_name, resource_from_xml

JSON_SUITE = "r4/patch/json-patch-tests.json"
FHIRPATH_SUITE = "r4/patch/fhir-patch-tests.xml"

# FHIRPath Patch cases that fail when no cardinality information is available.
KNOWN_FAILURES_WITHOUT_REPEATS = {
    "Add Anonymous Type": "without cardinality an absent element (contact) is added as a single value",
    "Operation on missing element #2": (
        "without cardinality an absent element (identifier) is added as a single value"
    ),
}
KNOWN_FAILURES_WITH_REPEATS: dict[str, str] = {}


def unknown(path: str) -> None:
    """A cardinality source that knows nothing: the JSON-shape fallback applies."""
    return None


def _suite_file(relative: str) -> Any:
    try:
        path = fhir_test_cases() / relative
    except AssertionError:
        return None
    return path if path.is_file() else None


def _missing(relative: str) -> list[Any]:
    return [pytest.param(None, id=f"missing-{relative}")]


def _require(relative: str) -> None:
    fhir_test_cases()  # fails with where it looked
    pytest.fail(f"{relative} is missing from the fhir-test-cases checkout")


# =================================================================================
# JSON Patch: the official cases
# =================================================================================


def _json_cases() -> list[Any]:
    path = _suite_file(JSON_SUITE)
    if path is None:
        return _missing(JSON_SUITE)
    cases = jsonio.loads(path.read_bytes())
    return [pytest.param(case, id=case["comment"]) for case in cases]


@pytest.mark.parametrize("case", _json_cases())
def test_official_json_patch_case(case: dict[str, Any] | None) -> None:
    if case is None:
        _require(JSON_SUITE)
        return
    doc = case["doc"]
    before = copy.deepcopy(doc)
    if "error" in case:
        with pytest.raises(FhirError) as info:
            apply_json_patch(doc, case["patch"])
        assert info.value.status == 422, info.value
        assert "operation 0" in str(info.value)
    else:
        assert apply_json_patch(doc, case["patch"]) == case["expected"]
    assert doc == before  # the input is never modified


# =================================================================================
# JSON Patch: the rest of RFC 6902
# =================================================================================


def test_pointer_escapes() -> None:
    assert parse_pointer("") == ()
    assert parse_pointer("/a~1b/m~0n/~01") == ("a/b", "m~n", "~1")
    for bad in ("a/b", "/a~2", "/a~"):
        with pytest.raises(ValueError):
            parse_pointer(bad)


def test_escaped_keys_and_the_dash_index() -> None:
    doc = {"a/b": 1, "m~n": 2, "list": [1]}
    result = apply_json_patch(
        doc,
        [
            {"op": "replace", "path": "/a~1b", "value": 10},
            {"op": "remove", "path": "/m~0n"},
            {"op": "add", "path": "/list/-", "value": 2},
            {"op": "add", "path": "/list/2", "value": 3},
            {"op": "add", "path": "/list/0", "value": 0},
        ],
    )
    assert result == {"a/b": 10, "list": [0, 1, 2, 3]}


@pytest.mark.parametrize(
    ("operation", "reason"),
    [
        ({"op": "add", "path": "/list/3", "value": 9}, "out of range"),
        ({"op": "add", "path": "/list/01", "value": 9}, "out of range"),
        ({"op": "remove", "path": "/list/2"}, "does not exist"),
        ({"op": "remove", "path": "/nothing"}, "does not exist"),
        ({"op": "replace", "path": "/nothing", "value": 1}, "does not exist"),
        ({"op": "add", "path": "/name/x", "value": 1}, "not an object or array"),
        ({"op": "move", "from": "/obj", "path": "/obj/inner"}, "its own children"),
        ({"op": "copy", "from": "/nothing", "path": "/x"}, "does not exist"),
        ({"op": "test", "path": "/list/0", "value": "1"}, "not the value"),
        ({"op": "test", "path": "/flag", "value": 1}, "not the value"),
        ({"op": "remove", "path": ""}, "whole document"),
    ],
)
def test_operations_that_cannot_apply_are_422(operation: dict[str, Any], reason: str) -> None:
    doc = {"list": [1, 2], "name": "x", "obj": {"k": 1}, "flag": True}
    with pytest.raises(FhirError) as info:
        apply_json_patch(doc, [{"op": "test", "path": "/name", "value": "x"}, operation])
    assert info.value.status == 422
    message = info.value.issues[0].diagnostics
    assert message.startswith(f"JSON Patch operation 1 ({operation['op']} ")
    assert reason in message


@pytest.mark.parametrize(
    "patch",
    [
        {"op": "add", "path": "/a", "value": 1},  # not an array
        [["add", "/a", 1]],
        [{"path": "/a", "value": 1}],
        [{"op": "frobnicate", "path": "/a"}],
        [{"op": "add", "path": "/a"}],
        [{"op": "move", "path": "/a"}],
        [{"op": "remove", "path": 3}],
        [{"op": "remove", "path": "a"}],
        [{"op": "remove", "path": "/a~2"}],
    ],
)
def test_malformed_patch_documents_are_400(patch: Any) -> None:
    with pytest.raises(FhirError) as info:
        apply_json_patch({"a": 1}, patch)
    assert info.value.status == 400


def test_move_copy_and_test_semantics() -> None:
    doc = jsonio.loads(b'{"a": {"b": [1, 2.50]}, "c": 1.0, "d": true}')
    result = apply_json_patch(
        doc,
        [
            {"op": "test", "path": "/a/b/1", "value": 2.5},  # numbers compare numerically
            {"op": "test", "path": "/c", "value": 1},
            {"op": "test", "path": "/a", "value": {"b": [1, 2.5]}},
            {"op": "copy", "from": "/a/b", "path": "/e"},
            {"op": "move", "from": "/a/b/0", "path": "/a/b/-"},
            {"op": "move", "from": "/d", "path": "/d"},
        ],
    )
    assert result == {"a": {"b": [2.5, 1]}, "c": 1, "d": True, "e": [1, 2.5]}
    assert jsonio.dumps(result["e"]) == b"[1,2.50]"  # decimals keep their text
    result["e"].append(3)
    assert doc["a"]["b"] == [1, 2.5]  # copies are independent


def test_a_patch_is_atomic_and_never_touches_its_input() -> None:
    doc = {"resourceType": "Patient", "active": True, "name": [{"family": "A"}]}
    before = copy.deepcopy(doc)
    value = {"family": "B"}
    patch = [
        {"op": "add", "path": "/name/-", "value": value},
        {"op": "replace", "path": "/active", "value": False},
        {"op": "remove", "path": "/gender"},
    ]
    with pytest.raises(FhirError):
        apply_json_patch(doc, patch)
    assert doc == before
    result = apply_json_patch(doc, patch[:2])
    assert result["name"] == [{"family": "A"}, {"family": "B"}] and doc == before
    result["name"][1]["family"] = "C"
    assert value == {"family": "B"}


def test_the_result_must_be_an_object() -> None:
    with pytest.raises(FhirError) as info:
        apply_json_patch({"a": 1}, [{"op": "replace", "path": "", "value": [1]}])
    assert info.value.status == 422
    assert apply_json_patch({"a": 1}, [{"op": "replace", "path": "", "value": {"b": 2}}]) == {
        "b": 2
    }


# =================================================================================
# FHIRPath Patch: the official cases
# =================================================================================


@dataclass(frozen=True)
class PatchCase:
    name: str
    input: dict[str, Any]
    parameters: dict[str, Any]
    output: dict[str, Any] | None
    error: str | None


def _only_child(element: ET.Element | None) -> ET.Element:
    assert element is not None
    children = [c for c in element if isinstance(c.tag, str)]
    assert len(children) == 1, local_name(element.tag)
    return children[0]


def _patch_case(case: ET.Element) -> PatchCase:
    output = case.find("output")
    error = case.find("error")
    return PatchCase(
        name=case.attrib["name"],
        input=resource_from_xml(_only_child(case.find("input"))),
        parameters=resource_from_xml(_only_child(case.find("diff"))),
        output=resource_from_xml(_only_child(output)) if output is not None else None,
        error=error.attrib["msg"] if error is not None else None,
    )


def _fhirpath_cases(known: dict[str, str]) -> list[Any]:
    path = _suite_file(FHIRPATH_SUITE)
    if path is None:
        return _missing(FHIRPATH_SUITE)
    params = []
    for element in ET.parse(path).getroot().iter("case"):
        case = _patch_case(element)
        reason = known.get(case.name)
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        params.append(pytest.param(case, id=case.name, marks=marks))
    return params


def _check_fhirpath_case(case: PatchCase | None, with_repeats: bool) -> None:
    if case is None:
        _require(FHIRPATH_SUITE)
        return
    before = copy.deepcopy(case.input)
    hook = element_repeats if with_repeats else unknown
    if case.error is not None:
        with pytest.raises(FhirError) as info:
            apply_fhirpath_patch(case.input, case.parameters, repeats=hook)
        assert info.value.status == 422
        assert case.error in info.value.issues[0].diagnostics
    else:
        result = apply_fhirpath_patch(case.input, case.parameters, repeats=hook)
        assert _canonical(result) == _canonical(case.output)
    assert case.input == before


def _canonical(resource: Any) -> str:
    return json.dumps(resource, sort_keys=True, default=str)


@pytest.mark.parametrize("case", _fhirpath_cases(KNOWN_FAILURES_WITH_REPEATS))
def test_official_fhirpath_patch_case(case: PatchCase | None) -> None:
    """As the server runs it: with the R4 definitions' cardinalities."""
    _check_fhirpath_case(case, with_repeats=True)


@pytest.mark.parametrize("case", _fhirpath_cases(KNOWN_FAILURES_WITHOUT_REPEATS))
def test_official_fhirpath_patch_case_without_cardinality(case: PatchCase | None) -> None:
    """The documented fallback when the cardinality is unknown."""
    _check_fhirpath_case(case, with_repeats=False)


def test_the_official_fhirpath_patch_suite_is_all_there() -> None:
    path = fhir_test_cases() / FHIRPATH_SUITE
    names = [c.attrib["name"] for c in ET.parse(path).getroot().iter("case")]
    assert len(names) >= 30
    for known in (KNOWN_FAILURES_WITH_REPEATS, KNOWN_FAILURES_WITHOUT_REPEATS):
        assert set(known) <= set(names)


# =================================================================================
# FHIRPath Patch: the rest of the spec
# =================================================================================


def op(type_: str, path: str, **parts: Any) -> dict[str, Any]:
    """One operation parameter; ``value`` may be a (value[x] key, value) pair or parts."""
    out: list[dict[str, Any]] = [
        {"name": "type", "valueCode": type_},
        {"name": "path", "valueString": path},
    ]
    for name, value in parts.items():
        if name in ("index", "source", "destination"):
            out.append({"name": name, "valueInteger": value})
        elif name != "value":
            out.append({"name": name, "valueString": value})
        elif isinstance(value, tuple):
            out.append({"name": "value", value[0]: value[1]})
        else:
            out.append({"name": "value", "part": value})
    return {"name": "operation", "part": out}


def params(*operations: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(operations)}


def patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": "p",
        "birthDate": "1970-01-01",
        "_birthDate": {"id": "bd"},
        "name": [{"family": "A", "given": ["x", "y", "z"], "_given": [None, {"id": "gy"}, None]}],
        "contact": [{"name": {"text": "c"}, "gender": "male"}],
    }


def fail(resource: dict[str, Any], *operations: dict[str, Any], status: int = 422) -> str:
    with pytest.raises(FhirError) as info:
        apply_fhirpath_patch(resource, params(*operations))
    assert info.value.status == status, info.value
    return info.value.issues[0].diagnostics


def test_replace_a_choice_element_changes_its_json_key() -> None:
    obs = {"resourceType": "Observation", "valueQuantity": {"value": 1}}
    result = apply_fhirpath_patch(
        obs, params(op("replace", "Observation.value", value=("valueString", "n/a")))
    )
    assert result == {"resourceType": "Observation", "valueString": "n/a"}
    assert "cannot hold" in fail(obs, op("replace", "Observation.value", value=("valueCoding", {})))


def test_add_a_choice_element_once() -> None:
    result = apply_fhirpath_patch(
        patient(), params(op("add", "Patient", name="deceased", value=("valueBoolean", True)))
    )
    assert result["deceasedBoolean"] is True
    again = op("add", "Patient", name="deceased", value=("valueDateTime", "2020"))
    assert "already has a value" in fail(result, again)
    assert "already has a value" in fail(
        patient(), op("add", "Patient", name="birthDate", value=("valueDate", "1"))
    )


def test_lists_keep_primitive_extensions_aligned() -> None:
    result = apply_fhirpath_patch(
        patient(),
        params(
            op("delete", "Patient.name.given[0]"),  # x
            op("insert", "Patient.name.given", index=0, value=("valueString", "w")),
            op("add", "Patient.name[0]", name="given", value=("valueString", "v")),
            op("move", "Patient.name.given", source=1, destination=3),  # y to the end
        ),
    )
    assert result["name"][0]["given"] == ["w", "z", "v", "y"]
    assert result["name"][0]["_given"] == [None, None, None, {"id": "gy"}]
    tidy = apply_fhirpath_patch(patient(), params(op("delete", "Patient.name.given[1]")))
    assert tidy["name"][0]["given"] == ["x", "z"] and "_given" not in tidy["name"][0]


def test_delete_and_replace_of_a_primitive_take_its_extensions() -> None:
    gone = apply_fhirpath_patch(patient(), params(op("delete", "Patient.birthDate")))
    assert "birthDate" not in gone and "_birthDate" not in gone
    new = apply_fhirpath_patch(
        patient(), params(op("replace", "Patient.birthDate", value=("valueDate", "1980")))
    )
    assert new["birthDate"] == "1980" and "_birthDate" not in new


def test_add_an_extension_to_a_primitive() -> None:
    extension = [
        {"name": "url", "valueUri": "http://example.org/x"},
        {"name": "value", "valueString": "hello"},
    ]
    result = apply_fhirpath_patch(
        patient(),
        params(
            op("add", "Patient.birthDate", name="extension", value=extension),
            op("add", "Patient.name.given[0]", name="extension", value=extension),
        ),
    )
    added = {"url": "http://example.org/x", "valueString": "hello"}
    assert result["_birthDate"] == {"id": "bd", "extension": [added]}
    assert result["name"][0]["_given"] == [{"extension": [added]}, {"id": "gy"}, None]


def test_delete_rules() -> None:
    p = patient()
    assert apply_fhirpath_patch(p, params(op("delete", "Patient.telecom"))) == p  # nothing
    assert "must match one" in fail(p, op("delete", "Patient.name.given"))
    assert "resource itself" in fail(p, op("delete", "Patient"))
    # deleting the last child of an element removes the emptied element too
    result = apply_fhirpath_patch(p, params(op("delete", "Patient.contact.name.text")))
    assert result["contact"] == [{"gender": "male"}]
    result = apply_fhirpath_patch(p, params(op("delete", "Patient.contact[0]")))
    assert "contact" not in result


def test_replace_and_add_need_exactly_one_target() -> None:
    p = patient()
    assert "No content found at Patient.gender when replacing" in fail(
        p, op("replace", "Patient.gender", value=("valueCode", "male"))
    )
    assert "must match one" in fail(
        p, op("replace", "Patient.name.given", value=("valueString", "q"))
    )
    assert "No content found" in fail(
        p, op("add", "Patient.telecom", name="value", value=("valueString", "1"))
    )
    assert "has no element 'colour'" in fail(
        p, op("add", "Patient", name="colour", value=("valueString", "red"))
    )


def test_insert_creates_a_missing_list_and_checks_the_index() -> None:
    identifier = ("valueIdentifier", {"system": "s", "value": "1"})
    result = apply_fhirpath_patch(
        patient(), params(op("insert", "Patient.identifier", index=0, value=identifier))
    )
    assert result["identifier"] == [{"system": "s", "value": "1"}]
    assert "out of range" in fail(
        patient(), op("insert", "Patient.name.given", index=4, value=("valueString", "q"))
    )
    assert "out of range" in fail(
        patient(), op("insert", "Patient.identifier", index=1, value=identifier)
    )
    assert "out of range" in fail(
        patient(), op("move", "Patient.name.given", source=0, destination=3)
    )


def test_anonymous_values_are_built_from_parts() -> None:
    contact = [
        {"name": "name", "valueHumanName": {"text": "d"}},
        {"name": "telecom", "valueContactPoint": {"system": "phone", "value": "1"}},
        {"name": "telecom", "valueContactPoint": {"system": "phone", "value": "2"}},
    ]
    result = apply_fhirpath_patch(
        patient(), params(op("add", "Patient", name="contact", value=contact))
    )
    assert result["contact"][1] == {
        "name": {"text": "d"},
        "telecom": [{"system": "phone", "value": "1"}, {"system": "phone", "value": "2"}],
    }
    bad = [{"name": "colour", "valueString": "red"}]
    assert "has no element 'colour'" in fail(
        patient(), op("add", "Patient", name="contact", value=bad)
    )


def test_element_repeats_reads_the_definitions() -> None:
    assert element_repeats("HumanName.given") is True
    assert element_repeats("Patient.birthDate") is False
    assert element_repeats("Questionnaire.item.item") is True
    assert element_repeats("Observation.value") is False  # value[x]
    assert element_repeats("date.extension") is True
    assert element_repeats("Patient.colour") is None
    assert element_repeats("Nonsense.thing") is None


def test_repeats_decides_between_list_and_single_value() -> None:
    bare = {"resourceType": "Patient", "name": [{"family": "A"}]}
    add_given = params(op("add", "Patient.name[0]", name="given", value=("valueString", "g")))
    assert apply_fhirpath_patch(bare, add_given)["name"][0]["given"] == ["g"]
    unknowing = apply_fhirpath_patch(bare, add_given, repeats=unknown)
    assert unknowing["name"][0]["given"] == "g"  # the fallback: absent means single
    seen: list[str] = []

    def spy(path: str) -> bool | None:
        seen.append(path)
        return None

    apply_fhirpath_patch(bare, add_given, repeats=spy)
    assert seen == ["HumanName.given"]


def test_paths_cannot_leave_the_resource() -> None:
    obs = {"resourceType": "Observation", "subject": {"reference": "Patient/1"}}
    message = fail(
        obs, op("add", "Observation.subject.resolve()", name="active", value=("valueBoolean", True))
    )
    assert "not an element of the resource" in message


def test_failures_name_the_operation_and_leave_the_input_alone() -> None:
    p = patient()
    before = copy.deepcopy(p)
    with pytest.raises(FhirError) as info:
        apply_fhirpath_patch(
            p,
            params(
                op("replace", "Patient.birthDate", value=("valueDate", "2000")),
                op("delete", "Patient.name.given"),
            ),
        )
    issue = info.value.issues[0]
    assert info.value.status == 422 and issue.code == "processing"
    assert issue.diagnostics.startswith("FHIRPath Patch operation 1 (delete at Patient.name.given)")
    assert issue.expression == ("Parameters.parameter[1]",)
    assert p == before


@pytest.mark.parametrize(
    "parameters",
    [
        {"resourceType": "Patient"},
        {"resourceType": "Parameters", "parameter": [{"name": "op", "part": []}]},
        params({"name": "operation", "part": [{"name": "path", "valueString": "Patient"}]}),
        params(op("frobnicate", "Patient")),
        params(op("add", "Patient", name="active")),  # no value
        params(op("insert", "Patient.name", value=("valueString", "x"))),  # no index
        params(op("move", "Patient.name", source=0)),  # no destination
        params(op("delete", "Patient.name.where(")),  # not FHIRPath
        params(op("delete", "Patient", colour="red")),  # unknown part
        params(
            {
                "name": "operation",
                "part": [
                    {"name": "type", "valueCode": "replace"},
                    {"name": "path", "valueString": "Patient.active"},
                    {"name": "value", "valueBoolean": True, "valueString": "x"},
                ],
            }
        ),
        params(
            {
                "name": "operation",
                "part": [
                    {"name": "type", "valueCode": "move"},
                    {"name": "path", "valueString": "Patient.name"},
                    {"name": "source", "valueString": "0"},
                    {"name": "destination", "valueInteger": 1},
                ],
            }
        ),
    ],
)
def test_malformed_fhirpath_patches_are_400(parameters: dict[str, Any]) -> None:
    with pytest.raises(FhirError) as info:
        apply_fhirpath_patch(patient(), parameters)
    assert info.value.status == 400


def test_an_empty_parameters_changes_nothing() -> None:
    p = patient()
    result = apply_fhirpath_patch(p, {"resourceType": "Parameters"})
    assert result == p and result is not p


def test_delete_leaves_no_empty_objects_behind() -> None:
    p = {
        "resourceType": "Patient",
        "contact": [{"name": {"text": "a"}}, {"gender": "male"}],
        "name": [{"given": ["x"], "_given": [None]}],
    }
    result = apply_fhirpath_patch(p, params(op("delete", "Patient.contact[0].name.text")))
    assert result["contact"] == [{"gender": "male"}]
    assert result["name"] == [{"given": ["x"]}]
