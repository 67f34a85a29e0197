"""QuestionnaireResponse answers against their Questionnaire: one small Questionnaire
and response per rule (fhir_server.validation.questionnaire), the resolution of the
Questionnaire, and the check on the write path."""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_server.errors import Issue
from fhir_server.validation import ucum
from fhir_server.validation.registry import ProfileRegistry
from fhir_server.validation.service import validate

Q_URL = "http://forms.test/fhir/Questionnaire/intake"
EXT = "http://hl7.org/fhir/StructureDefinition/"
SDC = "http://hl7.org/fhir/uv/sdc/StructureDefinition/"
UCUM = "http://unitsofmeasure.org"
YESNO = "http://example.org/fhir/ValueSet/yesno"
YN = "http://example.org/fhir/CodeSystem/yn"


def questionnaire(*items: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Questionnaire",
        "url": Q_URL,
        "status": "active",
        "item": list(items),
        **extra,
    }


def response(*items: dict[str, Any], status: str = "completed", **extra: Any) -> dict[str, Any]:
    qr: dict[str, Any] = {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": Q_URL,
        "status": status,
        **extra,
    }
    if items:
        qr["item"] = list(items)
    return qr


def registry(*resources: dict[str, Any]) -> ProfileRegistry:
    reg = ProfileRegistry()
    reg.add(
        {
            "resourceType": "CodeSystem",
            "url": YN,
            "status": "active",
            "content": "complete",
            "concept": [{"code": "Y"}, {"code": "N"}],
        }
    )
    reg.add(
        {
            "resourceType": "ValueSet",
            "url": YESNO,
            "status": "active",
            "compose": {"include": [{"system": YN}]},
        }
    )
    for r in resources:
        reg.add(r)
    return reg


def run(q: dict[str, Any] | None, qr: dict[str, Any]) -> list[Issue]:
    return validate(qr, registry=registry(q) if q is not None else registry())


def errors(q: dict[str, Any] | None, qr: dict[str, Any]) -> list[tuple[str, str]]:
    """(expression, message) of the error issues."""
    return [(i.expression[0], i.diagnostics) for i in run(q, qr) if i.severity == "error"]


def warnings(q: dict[str, Any] | None, qr: dict[str, Any]) -> list[str]:
    return [i.diagnostics for i in run(q, qr) if i.severity == "warning"]


def one_error(q: dict[str, Any], qr: dict[str, Any], expression: str, phrase: str) -> None:
    found = errors(q, qr)
    assert len(found) == 1, found
    assert found[0][0] == expression, found
    assert phrase in found[0][1], found


def answer(key: str, value: Any) -> dict[str, Any]:
    return {key: value}


def q_item(link: str, kind: str, **extra: Any) -> dict[str, Any]:
    return {"linkId": link, "type": kind, **extra}


def r_item(link: str, *answers: dict[str, Any], **extra: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"linkId": link, **extra}
    if answers:
        item["answer"] = list(answers)
    return item


def ext(name: str, key: str, value: Any, base: str = EXT) -> dict[str, Any]:
    return {"url": base + name, key: value}


# --------------------------------------------------------------------------- resolving


def test_a_valid_response_has_no_issues() -> None:
    q = questionnaire(q_item("name", "string", required=True), q_item("age", "integer"))
    qr = response(
        r_item("name", answer("valueString", "Ann")), r_item("age", answer("valueInteger", 40))
    )
    assert run(q, qr) == []


def test_a_questionnaire_canonical_resolving_to_another_type_is_an_error() -> None:
    qr = response(r_item("anything", answer("valueString", "x")))
    for url in (
        "http://hl7.org/fhir/ValueSet/administrative-gender",  # a ValueSet
        "http://hl7.org/fhir/StructureDefinition/Patient",  # a StructureDefinition
    ):
        qr["questionnaire"] = url
        issues = [i for i in run(None, qr) if i.severity == "error"]
        assert [i.expression for i in issues] == [("QuestionnaireResponse.questionnaire",)]
        assert "wrong type" in issues[0].diagnostics
        assert "expected Questionnaire" in issues[0].diagnostics
    qr["questionnaire"] = "#vs"
    qr["contained"] = [{"resourceType": "ValueSet", "id": "vs", "status": "draft"}]
    found = errors(None, qr)
    assert [where for where, _ in found] == ["QuestionnaireResponse.questionnaire"]
    assert "found ValueSet" in found[0][1]


def test_an_unknown_questionnaire_is_a_warning_and_nothing_else() -> None:
    qr = response(r_item("anything", answer("valueString", "x")))
    qr["questionnaire"] = "http://forms.test/fhir/Questionnaire/unknown"
    issues = run(None, qr)
    assert [(i.severity, i.expression) for i in issues] == [
        ("warning", ("QuestionnaireResponse.questionnaire",))
    ]
    assert "could not be resolved" in issues[0].diagnostics
    qr["questionnaire"] = "http://example.org/Questionnaire/unknown"
    assert [i.severity for i in run(None, qr)] == ["information"]


def test_a_versioned_canonical_selects_the_version() -> None:
    reg = registry(
        questionnaire(q_item("a", "string"), version="1"),
        questionnaire(q_item("b", "string"), version="2"),
    )
    qr = response(r_item("a", answer("valueString", "x")))
    qr["questionnaire"] = Q_URL + "|1"
    assert validate(qr, registry=reg) == []
    qr["questionnaire"] = Q_URL + "|2"
    assert [i.diagnostics for i in validate(qr, registry=reg)] == [
        "LinkId 'a' not found in questionnaire"
    ]
    qr["questionnaire"] = Q_URL  # no version: the latest registered
    assert [i.severity for i in validate(qr, registry=reg)] == ["error"]
    qr["questionnaire"] = Q_URL + "|3"
    assert [i.severity for i in validate(qr, registry=reg)] == ["warning"]


def test_a_contained_questionnaire_is_used() -> None:
    contained = questionnaire(q_item("a", "integer"))
    contained["id"] = "q1"
    del contained["url"]
    qr = response(r_item("a", answer("valueString", "x")))
    qr["questionnaire"] = "#q1"
    qr["contained"] = [contained]
    assert errors(None, qr) == [
        (
            "QuestionnaireResponse.item[0].answer[0].valueString",
            "Answer value must be of the type integer not string",
        )
    ]


def test_a_relative_reference_finds_the_questionnaire_by_url() -> None:
    qr = response(r_item("a", answer("valueString", "x")))
    qr["questionnaire"] = "Questionnaire/intake"
    assert [i.diagnostics for i in run(questionnaire(q_item("b", "string")), qr)] == [
        "LinkId 'a' not found in questionnaire"
    ]


# --------------------------------------------------------------------------- items


def test_link_ids_must_be_in_the_questionnaire_in_their_place_and_order() -> None:
    q = questionnaire(
        q_item("g", "group", item=[q_item("inner", "string")]), q_item("outer", "string")
    )
    one_error(
        q,
        response(r_item("nope", answer("valueString", "x"))),
        "QuestionnaireResponse.item[0]",
        "LinkId 'nope' not found in questionnaire",
    )
    one_error(
        q,
        response(r_item("inner", answer("valueString", "x"))),
        "QuestionnaireResponse.item[0]",
        "item with linkId 'inner' is in the wrong place",
    )
    one_error(
        q,
        response(
            r_item("outer", answer("valueString", "x")),
            r_item("g", item=[r_item("inner", answer("valueString", "y"))]),
        ),
        "QuestionnaireResponse.item[1]",
        "items are out of order",
    )


def test_required_items_must_be_answered() -> None:
    q = questionnaire(q_item("a", "string", required=True), q_item("b", "string"))
    one_error(
        q,
        response(r_item("b", answer("valueString", "x"))),
        "QuestionnaireResponse",
        "No response answer found for required item 'a'",
    )


def test_a_required_item_without_answers_is_an_error() -> None:
    q = questionnaire(q_item("a", "string", required=True))
    one_error(
        q,
        response(r_item("a")),
        "QuestionnaireResponse.item[0]",
        "No response answer found for required item 'a'",
    )


def test_item_text_if_given_is_the_questionnaire_text() -> None:
    q = questionnaire(q_item("a", "string", text="Name"))
    assert errors(q, response(r_item("a", answer("valueString", "x"), text="Name"))) == []
    assert errors(q, response(r_item("a", answer("valueString", "x")))) == []
    one_error(
        q,
        response(r_item("a", answer("valueString", "x"), text="Surname")),
        "QuestionnaireResponse.item[0]",
        "If text exists, it must match the questionnaire definition for linkId 'a'",
    )


@pytest.mark.parametrize("status", ["in-progress", "stopped", "entered-in-error"])
def test_a_response_that_is_not_completed_only_warns_about_required_items(status: str) -> None:
    q = questionnaire(q_item("a", "string", required=True), q_item("b", "string"))
    qr = response(r_item("b", answer("valueString", "x")), status=status)
    assert errors(q, qr) == []
    assert warnings(q, qr) == ["No response answer found for required item 'a'"]


def test_an_amended_response_is_complete() -> None:
    q = questionnaire(q_item("a", "string", required=True), q_item("b", "string"))
    qr = response(r_item("b", answer("valueString", "x")), status="amended")
    assert [m for _, m in errors(q, qr)] == ["No response answer found for required item 'a'"]


def test_a_required_group_needs_items_and_its_required_children_answers() -> None:
    q = questionnaire(
        q_item(
            "g",
            "group",
            required=True,
            item=[q_item("x", "string", required=True), q_item("y", "string")],
        )
    )
    assert errors(q, response(r_item("g"))) == [
        ("QuestionnaireResponse.item[0]", "No sub-items found for required group"),
        ("QuestionnaireResponse.item[0]", "No response answer found for required item 'x'"),
    ]
    one_error(
        q,
        response(r_item("g", item=[r_item("y", answer("valueString", "v"))])),
        "QuestionnaireResponse.item[0]",
        "No response answer found for required item 'x'",
    )


def test_a_group_that_is_not_there_does_not_require_its_children() -> None:
    q = questionnaire(
        q_item("g", "group", item=[q_item("x", "string", required=True)]),
        q_item("z", "string"),
    )
    assert errors(q, response(r_item("z", answer("valueString", "v")))) == []


def test_children_of_a_question_are_answered_under_its_answer() -> None:
    q = questionnaire(
        q_item("q", "boolean", item=[q_item("detail", "string", required=True)]),
    )
    good = response(
        r_item(
            "q",
            answer("valueBoolean", True) | {"item": [r_item("detail", answer("valueString", "d"))]},
        )
    )
    assert errors(q, good) == []
    one_error(
        q,
        response(r_item("q", answer("valueBoolean", True) | {"item": [r_item("detail")]})),
        "QuestionnaireResponse.item[0].answer[0].item[0]",
        "No response answer found for required item 'detail'",
    )
    one_error(
        q,
        response(r_item("q", item=[r_item("detail", answer("valueString", "d"))])),
        "QuestionnaireResponse.item[0]",
        "use answer.item not .item",
    )


def test_groups_display_items_and_abstract_questions_have_no_answers() -> None:
    for kind, phrase in (
        ("group", "Items of type group should not have answers"),
        ("display", "Items of type 'display' cannot have answers"),
        ("question", "Items of type question should not have answers"),
    ):
        q = questionnaire(q_item("a", kind))
        one_error(
            q,
            response(r_item("a", answer("valueString", "x"))),
            "QuestionnaireResponse.item[0]",
            phrase,
        )


def test_an_item_that_does_not_repeat_has_one_answer_and_one_occurrence() -> None:
    q = questionnaire(q_item("a", "string"), q_item("g", "group", item=[q_item("x", "string")]))
    two = response(r_item("a", answer("valueString", "1"), answer("valueString", "2")))
    one_error(q, two, "QuestionnaireResponse.item[0]", "Only one response answer item")
    q["item"][0]["repeats"] = True
    assert errors(q, two) == []
    groups = response(
        r_item("g", item=[r_item("x", answer("valueString", "1"))]),
        r_item("g", item=[r_item("x", answer("valueString", "2"))]),
    )
    one_error(q, groups, "QuestionnaireResponse.item[1]", "Only one response item")
    q["item"][1]["repeats"] = True
    assert errors(q, groups) == []


def test_min_and_max_occurs_count_answers_and_group_repetitions() -> None:
    bounds = [
        ext("questionnaire-minOccurs", "valueInteger", 2),
        ext("questionnaire-maxOccurs", "valueInteger", 3),
    ]
    q = questionnaire(q_item("a", "string", repeats=True, extension=bounds))
    answers = [answer("valueString", str(n)) for n in range(4)]
    assert errors(q, response(r_item("a", *answers[:2]))) == []
    assert errors(q, response(r_item("a", *answers[:3]))) == []
    one_error(
        q,
        response(r_item("a", *answers[:1])),
        "QuestionnaireResponse.item[0]",
        "minimum number of answers is 2 but this has 1",
    )
    one_error(
        q,
        response(r_item("a", *answers)),
        "QuestionnaireResponse.item[0]",
        "maximum number of answers is 3 but this has 4",
    )
    g = questionnaire(
        q_item("g", "group", repeats=True, extension=bounds[:1], item=[q_item("x", "string")])
    )
    one_error(
        g,
        response(r_item("g", item=[r_item("x", answer("valueString", "1"))])),
        "QuestionnaireResponse.item[0]",
        "minimum number of repetitions is 2 but this has 1",
    )


# --------------------------------------------------------------------------- answer types

TYPES: list[tuple[str, str, Any]] = [
    ("boolean", "valueBoolean", True),
    ("decimal", "valueDecimal", Decimal("1.5")),
    ("integer", "valueInteger", 3),
    ("date", "valueDate", "2024-01-02"),
    ("dateTime", "valueDateTime", "2024-01-02T10:00:00Z"),
    ("time", "valueTime", "10:00:00"),
    ("string", "valueString", "x"),
    ("text", "valueString", "x"),
    ("url", "valueUri", "http://example.org/x"),
    ("attachment", "valueAttachment", {"contentType": "text/plain", "data": "aGk="}),
    ("reference", "valueReference", {"reference": "Patient/p1"}),
    ("quantity", "valueQuantity", {"value": 1, "system": UCUM, "code": "kg"}),
    ("choice", "valueCoding", {"system": YN, "code": "Y"}),
    ("open-choice", "valueString", "free text"),
]


@pytest.mark.parametrize(("kind", "key", "value"), TYPES, ids=[t[0] for t in TYPES])
def test_the_answer_type_follows_the_item_type(kind: str, key: str, value: Any) -> None:
    q = questionnaire(q_item("a", kind))
    assert errors(q, response(r_item("a", answer(key, value)))) == []
    wrong: tuple[str, Any] = ("valueCoding", {"system": YN, "code": "Y"})
    if kind in ("choice", "open-choice"):
        wrong = ("valueBoolean", True)
    found = errors(q, response(r_item("a", answer(*wrong))))
    assert len(found) == 1, found
    assert found[0][0] == f"QuestionnaireResponse.item[0].answer[0].{wrong[0]}"
    assert found[0][1].startswith("Answer value must be")


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("kind", "key", "options", "good", "bad", "phrase"),
    [
        ("integer", "valueInteger", [1, 2], 2, 3, "The integer 3 is not in the set"),
        ("date", "valueDate", ["2022-01-01"], "2022-01-01", "2022-03-01", "The date 2022-03-01"),
        ("time", "valueTime", ["10:00:00"], "10:00:00", "09:00:00", "The time 09:00:00"),
        ("string", "valueString", ["s1", "s2"], "s2", "s3", "The string s3"),
        ("choice", "valueString", ["s1"], "s1", "s3", "The string s3"),
        ("choice", "valueInteger", [1], 1, 7, "The integer 7"),
    ],
)
def test_answer_options(
    kind: str, key: str, options: list[Any], good: Any, bad: Any, phrase: str
) -> None:
    q = questionnaire(q_item("a", kind, answerOption=[{key: o} for o in options]))
    assert errors(q, response(r_item("a", answer(key, good)))) == []
    one_error(
        q,
        response(r_item("a", answer(key, bad))),
        f"QuestionnaireResponse.item[0].answer[0].{key}",
        phrase,
    )


def test_coding_options_and_exclusive_options() -> None:
    options = [
        {"valueCoding": {"system": YN, "code": "Y"}},
        {"valueCoding": {"system": YN, "code": "N"}},
        {
            "valueCoding": {"system": YN, "code": "U"},
            "extension": [ext("questionnaire-optionExclusive", "valueBoolean", True)],
        },
    ]
    q = questionnaire(q_item("a", "choice", repeats=True, answerOption=options))
    y, n, u = ({"valueCoding": {"system": YN, "code": c}} for c in "YNU")
    assert errors(q, response(r_item("a", y, n))) == []
    assert errors(q, response(r_item("a", u))) == []
    one_error(
        q,
        response(r_item("a", y, u)),
        "QuestionnaireResponse.item[0].answer[1].valueCoding",
        "is an exclusive option",
    )
    one_error(
        q,
        response(r_item("a", {"valueCoding": {"system": "http://other", "code": "Y"}})),
        "QuestionnaireResponse.item[0].answer[0].valueCoding",
        "is not in the set of permitted values",
    )


def test_a_choice_without_options_is_not_checked() -> None:
    q = questionnaire(q_item("a", "choice"))
    issues = run(q, response(r_item("a", answer("valueCoding", {"system": YN, "code": "?"}))))
    assert [i.severity for i in issues] == ["information"]


def test_an_open_choice_string_that_names_an_option_is_a_warning() -> None:
    options = [{"valueCoding": {"system": YN, "code": "B", "display": "Blood"}}]
    q = questionnaire(q_item("a", "open-choice", answerOption=options))
    assert warnings(q, response(r_item("a", answer("valueString", "Other")))) == []
    assert errors(q, response(r_item("a", answer("valueString", "blood")))) == []
    assert warnings(q, response(r_item("a", answer("valueString", "blood")))) == [
        "The string value 'blood' matches an entry in the list of valid Codings, so this is "
        "probably an error"
    ]


def test_answer_value_set_codings() -> None:
    q = questionnaire(q_item("a", "choice", answerValueSet=YESNO))
    assert (
        errors(q, response(r_item("a", answer("valueCoding", {"system": YN, "code": "Y"})))) == []
    )
    one_error(
        q,
        response(r_item("a", answer("valueCoding", {"system": YN, "code": "X"}))),
        "QuestionnaireResponse.item[0].answer[0].valueCoding",
        f"The code 'X' in the system '{YN}' is not in the options value set",
    )
    no_system = response(r_item("a", answer("valueCoding", {"code": "X"})))
    assert errors(q, no_system) == []
    assert len(warnings(q, no_system)) == 1


def test_an_answer_value_set_can_be_contained() -> None:
    vs = {
        "resourceType": "ValueSet",
        "id": "vs",
        "status": "active",
        "compose": {"include": [{"system": YN, "concept": [{"code": "Y"}]}]},
    }
    q = questionnaire(q_item("a", "choice", answerValueSet="#vs"), contained=[vs])
    assert (
        errors(q, response(r_item("a", answer("valueCoding", {"system": YN, "code": "Y"})))) == []
    )
    one_error(
        q,
        response(r_item("a", answer("valueCoding", {"system": YN, "code": "N"}))),
        "QuestionnaireResponse.item[0].answer[0].valueCoding",
        "is not in the options value set (#vs)",
    )


def test_an_unknown_answer_value_set_is_a_warning() -> None:
    q = questionnaire(q_item("a", "choice", answerValueSet="http://acme.test/ValueSet/none"))
    qr = response(r_item("a", answer("valueCoding", {"system": YN, "code": "Y"})))
    assert errors(q, qr) == []
    assert warnings(q, qr) == [
        "ValueSet 'http://acme.test/ValueSet/none' not found, so the answer was not checked "
        "against it"
    ]


def test_a_value_set_the_tables_know_but_cannot_expand_is_not_checked() -> None:
    # mime types (BCP 13) are bound in the base definitions, not expandable locally
    vs = "http://hl7.org/fhir/ValueSet/mimetypes"
    q = questionnaire(q_item("a", "choice", answerValueSet=vs))
    qr = response(r_item("a", answer("valueCoding", {"system": "urn:ietf:bcp:13", "code": "x/y"})))
    assert [i.severity for i in run(q, qr)] == ["information"]


def test_a_string_answer_to_a_value_set_is_a_code_of_it() -> None:
    q = questionnaire(q_item("a", "string", answerValueSet=YESNO))
    assert errors(q, response(r_item("a", answer("valueString", "Y")))) == []
    one_error(
        q,
        response(r_item("a", answer("valueString", "Yes"))),
        "QuestionnaireResponse.item[0].answer[0].valueString",
        "The value 'Yes' is not in the list of allowed values",
    )


# --------------------------------------------------------------------------- enableWhen

DISABLED = "Item has answer, even though it is not enabled (item id = '{}')"


def test_a_disabled_item_has_no_answers_and_is_not_required() -> None:
    q = questionnaire(
        q_item("smoker", "boolean"),
        q_item(
            "packs",
            "integer",
            required=True,
            enableWhen=[{"question": "smoker", "operator": "=", "answerBoolean": True}],
        ),
    )
    assert errors(q, response(r_item("smoker", answer("valueBoolean", False)))) == []
    one_error(
        q,
        response(r_item("smoker", answer("valueBoolean", True))),
        "QuestionnaireResponse",
        "No response answer found for required item 'packs'",
    )
    one_error(
        q,
        response(
            r_item("smoker", answer("valueBoolean", False)),
            r_item("packs", answer("valueInteger", 2)),
        ),
        "QuestionnaireResponse.item[1]",
        DISABLED.format("packs"),
    )
    # the question not answered at all: '=' is false, so the item is disabled and
    # not required (an item present without answers is not an answer)
    assert errors(q, response(r_item("packs"))) == []


@pytest.mark.parametrize(
    ("operator", "expected", "answered", "enabled"),
    [
        ("=", 5, 5, True),
        ("=", 5, 4, False),
        ("!=", 5, 4, True),
        ("!=", 5, 5, False),
        (">", 5, 6, True),
        (">", 5, 5, False),
        ("<", 5, 4, True),
        (">=", 5, 5, True),
        ("<=", 5, 6, False),
        ("exists", True, 1, True),
        ("exists", False, 1, False),
    ],
)
def test_enable_when_operators(operator: str, expected: Any, answered: int, enabled: bool) -> None:
    key = "answerBoolean" if operator == "exists" else "answerInteger"
    q = questionnaire(
        q_item("n", "integer"),
        q_item(
            "x",
            "string",
            enableWhen=[{"question": "n", "operator": operator, key: expected}],
        ),
    )
    qr = response(
        r_item("n", answer("valueInteger", answered)), r_item("x", answer("valueString", "v"))
    )
    expected = [] if enabled else [("QuestionnaireResponse.item[1]", DISABLED.format("x"))]
    assert errors(q, qr) == expected


@pytest.mark.parametrize(("behavior", "enabled"), [("all", False), ("any", True)])
def test_enable_behavior(behavior: str, enabled: bool) -> None:
    q = questionnaire(
        q_item("a", "boolean"),
        q_item("b", "boolean"),
        q_item(
            "x",
            "string",
            enableBehavior=behavior,
            enableWhen=[
                {"question": "a", "operator": "=", "answerBoolean": True},
                {"question": "b", "operator": "=", "answerBoolean": True},
            ],
        ),
    )
    qr = response(
        r_item("a", answer("valueBoolean", True)),
        r_item("b", answer("valueBoolean", False)),
        r_item("x", answer("valueString", "v")),
    )
    assert (errors(q, qr) == []) is enabled


def test_enable_when_looks_in_the_same_group_repetition() -> None:
    q = questionnaire(
        q_item(
            "g",
            "group",
            repeats=True,
            item=[
                q_item("cond", "boolean"),
                q_item(
                    "dep",
                    "string",
                    required=True,
                    enableWhen=[{"question": "cond", "operator": "=", "answerBoolean": True}],
                ),
            ],
        )
    )
    qr = response(
        r_item(
            "g",
            item=[
                r_item("cond", answer("valueBoolean", True)),
                r_item("dep", answer("valueString", "ok")),
            ],
        ),
        r_item(
            "g",
            item=[
                r_item("cond", answer("valueBoolean", False)),
                r_item("dep", answer("valueString", "no")),
            ],
        ),
        r_item("g", item=[r_item("cond", answer("valueBoolean", True))]),
        r_item("g", item=[r_item("cond", answer("valueBoolean", False))]),
    )
    assert sorted(errors(q, qr)) == [
        ("QuestionnaireResponse.item[1].item[1]", DISABLED.format("dep")),
        ("QuestionnaireResponse.item[2]", "No response answer found for required item 'dep'"),
    ]


def test_enable_when_on_a_parent_question() -> None:
    q = questionnaire(
        q_item(
            "pain",
            "boolean",
            item=[
                q_item(
                    "where",
                    "string",
                    enableWhen=[{"question": "pain", "operator": "=", "answerBoolean": True}],
                )
            ],
        )
    )
    child = {"item": [r_item("where", answer("valueString", "knee"))]}
    assert errors(q, response(r_item("pain", answer("valueBoolean", True) | child))) == []
    assert len(errors(q, response(r_item("pain", answer("valueBoolean", False) | child)))) == 1


def test_an_enable_when_that_cannot_be_evaluated_does_not_disable() -> None:
    q = questionnaire(
        q_item("n", "integer"),
        q_item(
            "x",
            "string",
            required=True,
            enableWhen=[{"question": "n", "operator": "=", "answerCoding": {"code": "5"}}],
        ),
        q_item(
            "y",
            "string",
            enableWhen=[{"question": "missing", "operator": "=", "answerBoolean": True}],
        ),
    )
    qr = response(
        r_item("n", answer("valueInteger", 5)),
        r_item("x", answer("valueString", "v")),
        r_item("y", answer("valueString", "v")),
    )
    assert errors(q, qr) == []
    # and is not taken to be enabled either: a missing required item is not reported
    assert errors(q, response(r_item("n", answer("valueInteger", 5)))) == []


# --------------------------------------------------------------------------- constraints


def test_string_length_and_regex() -> None:
    q = questionnaire(
        q_item(
            "a",
            "string",
            maxLength=5,
            extension=[
                ext("minLength", "valueInteger", 2),
                ext("regex", "valueString", "[a-z]+"),
                ext("entryFormat", "valueString", "lowercase letters"),
            ],
        )
    )
    assert errors(q, response(r_item("a", answer("valueString", "abc")))) == []
    where = "QuestionnaireResponse.item[0].answer[0].valueString"
    one_error(
        q,
        response(r_item("a", answer("valueString", "a"))),
        where,
        "shorter than the required minimum length of 2",
    )
    one_error(
        q,
        response(r_item("a", answer("valueString", "abcdef"))),
        where,
        "longer than the allowed maximum length of 5",
    )
    one_error(
        q,
        response(r_item("a", answer("valueString", "ab1"))),
        where,
        "does not conform to the expected format 'lowercase letters' (regex '[a-z]+')",
    )


def test_a_string_answer_should_be_one_line_a_text_answer_may_not() -> None:
    q = questionnaire(q_item("s", "string"), q_item("t", "text"))
    qr = response(
        r_item("s", answer("valueString", "a\nb")), r_item("t", answer("valueString", "a\nb"))
    )
    assert errors(q, qr) == []
    assert warnings(q, qr) == ["The answer should not contain new line characters"]


@pytest.mark.parametrize(
    ("kind", "key", "low", "high", "inside", "below", "above"),
    [
        ("integer", "Integer", 1, 10, 5, 0, 11),
        ("decimal", "Decimal", Decimal("1.5"), Decimal("2.5"), Decimal("2.0"), Decimal("1.4"), 3),
        ("date", "Date", "2020", "2022-06", "2022-06", "2019-12-31", "2022-07"),
        (
            "dateTime",
            "DateTime",
            "2020-01-01T00:00:00Z",
            "2020-12",
            "2020-06-01T10:00:00+02:00",
            "2019-12-31T23:00:00Z",
            "2021-01-01T00:00:00Z",
        ),
        ("time", "Time", "08:00:00", "17:00:00", "12:30:00", "07:59:59", "17:00:01"),
    ],
)
def test_min_and_max_value(
    kind: str, key: str, low: Any, high: Any, inside: Any, below: Any, above: Any
) -> None:
    q = questionnaire(
        q_item(
            "a",
            kind,
            extension=[ext("minValue", "value" + key, low), ext("maxValue", "value" + key, high)],
        )
    )
    where = f"QuestionnaireResponse.item[0].answer[0].value{key}"
    assert errors(q, response(r_item("a", answer("value" + key, inside)))) == []
    one_error(
        q,
        response(r_item("a", answer("value" + key, below))),
        where,
        "less than the allowed minimum",
    )
    one_error(
        q,
        response(r_item("a", answer("value" + key, above))),
        where,
        "greater than the allowed maximum",
    )


def test_max_decimal_places() -> None:
    q = questionnaire(
        q_item("a", "decimal", extension=[ext("maxDecimalPlaces", "valueInteger", 2)])
    )
    assert errors(q, response(r_item("a", answer("valueDecimal", Decimal("1.25"))))) == []
    one_error(
        q,
        response(r_item("a", answer("valueDecimal", Decimal("1.250")))),
        "QuestionnaireResponse.item[0].answer[0].valueDecimal",
        "has too many decimal places (limit = 2)",
    )


def qty(value: Any, code: str | None = None, unit: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"value": value}
    if unit is not None:
        out["unit"] = unit
    if code is not None:
        out |= {"system": UCUM, "code": code}
    return out


@pytest.mark.parametrize(
    "bounds",
    [
        [
            ext("minValue", "valueQuantity", qty(1, "kg")),
            ext("maxValue", "valueQuantity", qty(2, "kg")),
        ],
        [
            ext("sdc-questionnaire-minQuantity", "valueQuantity", qty(1, "kg"), SDC),
            ext("sdc-questionnaire-maxQuantity", "valueQuantity", qty(2, "kg"), SDC),
        ],
    ],
    ids=["minValue", "sdc"],
)
def test_quantity_bounds(bounds: list[dict[str, Any]]) -> None:
    q = questionnaire(q_item("a", "quantity", extension=bounds))
    where = "QuestionnaireResponse.item[0].answer[0].valueQuantity"
    assert errors(q, response(r_item("a", answer("valueQuantity", qty(1500, "g"))))) == []
    one_error(
        q,
        response(r_item("a", answer("valueQuantity", qty(3, "kg")))),
        where,
        "greater than the allowed maximum",
    )
    # UCUM conversion: 500 g is less than 1 kg
    one_error(
        q,
        response(r_item("a", answer("valueQuantity", qty(500, "g")))),
        where,
        "less than the allowed minimum",
    )
    found = errors(q, response(r_item("a", answer("valueQuantity", qty(1, "m")))))
    assert [m for _, m in found] and all("cannot be compared" in m for _, m in found)
    found = errors(q, response(r_item("a", answer("valueQuantity", qty(1.5, unit="kg")))))
    assert len(found) == 2 and all("no formal units" in m for _, m in found)


def test_quantity_unit_options() -> None:
    options = [
        ext("questionnaire-unitOption", "valueCoding", {"system": UCUM, "code": "kg"}),
        ext("questionnaire-unitOption", "valueCoding", {"system": UCUM, "code": "[lb_av]"}),
    ]
    q = questionnaire(q_item("a", "quantity", extension=options))
    assert errors(q, response(r_item("a", answer("valueQuantity", qty(1, "[lb_av]"))))) == []
    one_error(
        q,
        response(r_item("a", answer("valueQuantity", qty(1, "g")))),
        "QuestionnaireResponse.item[0].answer[0].valueQuantity",
        "has a unit that is not valid (allowed = (UCUM#kg),(UCUM#[lb_av]))",
    )
    unit = questionnaire(
        q_item(
            "a",
            "quantity",
            extension=[ext("questionnaire-unit", "valueCoding", {"system": UCUM, "code": "cm"})],
        )
    )
    assert errors(unit, response(r_item("a", answer("valueQuantity", qty(1, "cm"))))) == []
    assert len(errors(unit, response(r_item("a", answer("valueQuantity", qty(1, "mm")))))) == 1


def test_quantity_unit_value_set() -> None:
    units = {
        "resourceType": "ValueSet",
        "url": "http://example.org/fhir/ValueSet/units",
        "status": "active",
        "compose": {"include": [{"system": UCUM, "concept": [{"code": "kg"}, {"code": "g"}]}]},
    }
    q = questionnaire(
        q_item(
            "a",
            "quantity",
            extension=[ext("questionnaire-unitValueSet", "valueCanonical", units["url"])],
        )
    )
    reg = registry(q, units)
    where = "QuestionnaireResponse.item[0].answer[0].valueQuantity"

    def errs(value: dict[str, Any]) -> list[tuple[str, str]]:
        issues = validate(response(r_item("a", answer("valueQuantity", value))), registry=reg)
        return [(i.expression[0], i.diagnostics) for i in issues if i.severity == "error"]

    assert errs(qty(1, "g")) == []
    assert errs(qty(1, "m")) == [
        (
            where,
            f"The value 1 (UCUM#m) has a unit that is not in the unit value set '{units['url']}'",
        )
    ]
    assert len(errs(qty(1, unit="kilogram"))) == 1  # no coded unit: not in any value set


def test_attachment_mime_type_and_size() -> None:
    q = questionnaire(
        q_item(
            "a",
            "attachment",
            extension=[
                ext("mimeType", "valueCode", "image/png"),
                ext("mimeType", "valueCode", "application/pdf"),
                ext("maxSize", "valueDecimal", 4),
            ],
        )
    )
    where = "QuestionnaireResponse.item[0].answer[0].valueAttachment"
    ok = {"contentType": "application/pdf", "data": "aGk="}  # 2 bytes
    assert errors(q, response(r_item("a", answer("valueAttachment", ok)))) == []
    one_error(
        q,
        response(r_item("a", answer("valueAttachment", ok | {"contentType": "text/plain"}))),
        where,
        "The mime type text/plain is not valid for this answer (allowed = image/png, application/pdf)",
    )
    one_error(
        q,
        response(r_item("a", answer("valueAttachment", ok | {"data": "aGVsbG8="}))),
        where,
        "The attachment is too large (allowed = 4, found = 5)",
    )


def test_reference_resource_types() -> None:
    q = questionnaire(
        q_item(
            "a",
            "reference",
            repeats=True,
            extension=[
                ext("questionnaire-referenceResource", "valueCode", "Patient"),
                ext("questionnaire-referenceResource", "valueCode", "Practitioner"),
            ],
        )
    )
    ok = [
        answer("valueReference", {"reference": r})
        for r in ("Patient/1", "https://x.org/fhir/Practitioner/2")
    ]
    assert errors(q, response(r_item("a", *ok))) == []
    one_error(
        q,
        response(r_item("a", answer("valueReference", {"reference": "Organization/1"}))),
        "QuestionnaireResponse.item[0].answer[0].valueReference",
        "The resource type 'Organization' in the reference Organization/1 is not allowed "
        "(allowed = Patient,Practitioner)",
    )
    free = questionnaire(q_item("a", "reference"))
    one_error(
        free,
        response(r_item("a", answer("valueReference", {"reference": "https://x.org/Chicken/1"}))),
        "QuestionnaireResponse.item[0].answer[0].valueReference",
        "The resource type Chicken in the reference https://x.org/Chicken/1 is not valid",
    )


def test_read_only_and_initial_do_not_constrain_the_answer() -> None:
    q = questionnaire(
        q_item("score", "integer", readOnly=True),
        q_item("unit", "string", initial=[{"valueString": "kg"}]),
    )
    qr = response(
        r_item("score", answer("valueInteger", 12)), r_item("unit", answer("valueString", "lb"))
    )
    assert run(q, qr) == []


def test_authored_outside_the_effective_period_is_a_warning() -> None:
    q = questionnaire(q_item("a", "string"), effectivePeriod={"start": "2022", "end": "2022-12-31"})
    inside = response(r_item("a", answer("valueString", "x")), authored="2022-05-01")
    assert run(q, inside) == []
    for when in ("2021-12-31", "2023-01-01T00:00:00Z"):
        late = copy.deepcopy(inside) | {"authored": when}
        assert errors(q, late) == []
        assert len(warnings(q, late)) == 1


def test_responses_nested_in_a_bundle_are_checked() -> None:
    q = questionnaire(q_item("a", "integer"))
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "fullUrl": "urn:uuid:c757873d-ec9a-4326-a141-556f43239520",
                "resource": response(r_item("a", answer("valueString", "x"))),
            }
        ],
    }
    assert errors(q, bundle) == [
        (
            "Bundle.entry[0].resource.item[0].answer[0].valueString",
            "Answer value must be of the type integer not string",
        )
    ]


# --------------------------------------------------------------------------- UCUM


@pytest.mark.parametrize(
    ("a", "code_a", "b", "code_b", "order"),
    [
        (10000, "m", 10, "km", 0),
        (1, "kg", 999, "g", 1),
        (1, "mm[Hg]", Decimal("133.322"), "Pa", 0),
        (1, "[lb_av]", Decimal("453.59237"), "g", 0),
        (90, "min", Decimal("1.5"), "h", 0),
        (100, "mg/dL", 1, "g/L", 0),
        (60, "/min", 1, "Hz", 0),
        (1, "m2", 10001, "cm2", -1),
        (5, "mL{total}", 5, "cm3", 0),
    ],
)
def test_ucum_conversions(a: Any, code_a: str, b: Any, code_b: str, order: int) -> None:
    assert ucum.compare(Decimal(a), code_a, Decimal(b), code_b) == order


def test_ucum_incomparable_and_unknown_units() -> None:
    with pytest.raises(ValueError, match="measure different things"):
        ucum.compare(Decimal(1), "kg", Decimal(1), "[mi_i]")
    with pytest.raises(ucum.UnitError):
        ucum.compare(Decimal(1), "Cel", Decimal(1), "K")


# --------------------------------------------------------------------------- writes


async def test_a_write_is_checked_against_a_registered_questionnaire(
    client: httpx.AsyncClient,
) -> None:
    headers = {"Content-Type": "application/fhir+json"}
    q = questionnaire(q_item("pain", "integer", required=True))
    q["url"] = "http://example.org/fhir/Questionnaire/write-test"
    # the server's registry: the packaged definitions and those written through the API
    r = await client.post("Questionnaire", json=q, headers=headers)
    assert r.status_code == 201, r.text
    good = response(r_item("pain", answer("valueInteger", 3)))
    good["questionnaire"] = q["url"]
    r = await client.post("QuestionnaireResponse", json=good, headers=headers)
    assert r.status_code == 201, r.text
    bad = copy.deepcopy(good)
    bad["item"][0]["answer"][0] = {"valueString": "three"}
    r = await client.post("QuestionnaireResponse", json=bad, headers=headers)
    assert r.status_code == 422, r.text
    assert "Answer value must be of the type integer" in r.text
    unknown = copy.deepcopy(bad)
    unknown["questionnaire"] = "http://acme.test/Questionnaire/not-registered"
    r = await client.post("QuestionnaireResponse", json=unknown, headers=headers)
    assert r.status_code == 201, r.text


def test_the_descendants_of_a_disabled_item_are_disabled() -> None:
    q = questionnaire(
        q_item("more", "boolean"),
        q_item(
            "details",
            "group",
            enableWhen=[{"question": "more", "operator": "=", "answerBoolean": True}],
            item=[q_item("d1", "string", required=True), q_item("d2", "string")],
        ),
    )
    qr = response(
        r_item("more", answer("valueBoolean", False)),
        r_item("details", item=[r_item("d2", answer("valueString", "x"))]),
    )
    # one error, for the disabled group: d1 is not required, d2 not reported again
    assert errors(q, qr) == [("QuestionnaireResponse.item[1]", DISABLED.format("details"))]
    qr["item"][0]["answer"][0]["valueBoolean"] = True
    assert errors(q, qr) == [
        ("QuestionnaireResponse.item[1]", "No response answer found for required item 'd1'")
    ]


def test_the_registry_keeps_questionnaires_by_url_and_version(tmp_path: Path) -> None:
    (tmp_path / "q.json").write_text(json.dumps(questionnaire(version="1")))
    reg = ProfileRegistry()
    loaded, problems = reg.load_directory(tmp_path)
    assert (loaded, problems) == ([Q_URL], [])
    assert reg.questionnaire(Q_URL + "|1") is not None
    reg.add(questionnaire(version="2"))
    reg.add(questionnaire(q_item("a", "string"), version="2"))  # replaces version 2
    q2 = reg.questionnaire(Q_URL)
    assert q2 is not None and q2["version"] == "2" and q2["item"]
    assert reg.questionnaire(Q_URL + "|1") is not None
    reg.remove(Q_URL)
    assert reg.questionnaire(Q_URL) is None
