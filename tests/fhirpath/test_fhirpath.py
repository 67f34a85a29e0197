"""fhir_server.fhirpath: the shims and fixes on top of fhirpathpy, and locate()."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from fhir_server import jsonio
from fhir_server.fhirpath import (
    FhirPathError,
    Location,
    compile_expression,
    element_info,
    evaluate,
    locate,
)
from fhir_server.jsonio import FhirDecimal


def patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": "p1",
        "active": True,
        "birthDate": "1974-12-25",
        "_birthDate": {
            "extension": [
                {
                    "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                    "valueDateTime": "1974-12-25T14:35:45-05:00",
                }
            ]
        },
        "name": [
            {"family": "Chalmers", "given": ["Peter", "James"], "_given": [None, {"id": "g2"}]},
            {
                "given": [None, "Jim"],
                "_given": [{"extension": [{"url": "u", "valueCode": "x"}]}, None],
            },
        ],
        "deceasedBoolean": False,
        "generalPractitioner": [{"reference": "Practitioner/9"}],
        "managingOrganization": {"reference": "#org"},
        "contained": [{"resourceType": "Organization", "id": "org", "name": "Acme"}],
    }


def observation() -> dict[str, Any]:
    resource: dict[str, Any] = jsonio.loads(
        b"""{"resourceType": "Observation", "status": "final",
        "subject": {"reference": "http://example.org/fhir/Patient/7/_history/2"},
        "performer": [{"reference": "Practitioner/1"}, {"reference": "Organization/2"},
                      {"reference": "urn:uuid:0b6d", "type": "Patient"}],
        "valueQuantity": {"value": 1.50, "unit": "mg"},
        "component": [{"valueQuantity": {"value": 2.5}}, {"valueQuantity": {"value": 100}},
                      {"valueString": "n/a"}]}"""
    )
    return resource


# -- the API -----------------------------------------------------------------------


def test_compile_is_cached_and_reusable() -> None:
    fn = compile_expression("Patient.name.family")
    assert compile_expression("Patient.name.family") is fn
    assert fn(patient(), {}) == ["Chalmers"]
    assert fn({"resourceType": "Patient"}) == []


@pytest.mark.parametrize("expression", ["2 + 2 /", "Patient.name.where(", "name.given(", "1 +* 2"])
def test_syntax_errors_raise_instead_of_evaluating_a_prefix(expression: str) -> None:
    with pytest.raises(FhirPathError) as info:
        compile_expression(expression)
    assert info.value.expression == expression
    assert isinstance(info.value, ValueError)


def test_evaluation_errors_raise_fhirpath_error() -> None:
    with pytest.raises(FhirPathError, match="Not implemented"):
        evaluate(patient(), "Patient.name.noSuchFunction()")
    with pytest.raises(FhirPathError):
        evaluate(patient(), "Patient.name.single()")


def test_decimal_literals_stay_decimal() -> None:
    assert evaluate(None, "1.0.is(Decimal)") == [True]
    assert evaluate(None, "1.0.toString()") == ["1.0"]
    assert evaluate(None, "true.toString()") == ["true"]
    assert evaluate(None, "1.round()") == [Decimal(1)]


def test_collection_equality_compares_every_item() -> None:
    assert evaluate(None, "(1 | 2) = (1 | 3)") == [False]
    assert evaluate(None, "(1 | 2) = (1 | 2)") == [True]
    assert evaluate(None, "(1 | 2) ~ (2 | 1)") == [True]


# -- primitives and their extensions -------------------------------------------------


def test_a_primitive_and_its_extension_are_one_item() -> None:
    p = patient()
    assert evaluate(p, "Patient.birthDate.count()") == [1]
    assert evaluate(p, "Patient.birthDate") == ["1974-12-25"]
    assert evaluate(p, "Patient.birthDate.extension.value") == ["1974-12-25T14:35:45-05:00"]
    url = "http://hl7.org/fhir/StructureDefinition/patient-birthTime"
    assert evaluate(p, f"Patient.birthDate.extension('{url}').exists()") == [True]
    assert evaluate(p, "Patient.name.given.count()") == [4]
    assert evaluate(p, "Patient.name.given.id") == ["g2"]
    assert evaluate(p, "Patient.name.children().count()") == [5]  # family, 2 + 2 given


def test_value_less_primitives_count_but_are_not_returned() -> None:
    p = patient()
    assert evaluate(p, "Patient.name[1].given") == ["Jim"]
    assert evaluate(p, "Patient.name[1].given.count()") == [2]
    assert evaluate(p, "Patient.name[1].given.first().hasValue()") == [False]
    assert evaluate(p, "Patient.name[1].given.last().hasValue()") == [True]


def test_has_value_and_get_value() -> None:
    p = patient()
    assert evaluate(p, "Patient.active.hasValue()") == [True]
    assert evaluate(p, "Patient.name.first().hasValue()") == [False]
    assert evaluate(p, "Patient.birthDate.getValue()") == ["1974-12-25"]
    assert evaluate(p, "Patient.name.given.hasValue()") == [False]  # not a single item


# -- resolve() and types -------------------------------------------------------------


def test_resolve_gives_the_target_type() -> None:
    o = observation()
    assert evaluate(o, "Observation.subject.resolve()") == [{"resourceType": "Patient", "id": "7"}]
    assert evaluate(o, "Observation.performer.where(resolve() is Practitioner).reference") == [
        "Practitioner/1"
    ]
    assert evaluate(o, "Observation.performer.where(resolve() is Patient).reference") == [
        "urn:uuid:0b6d"
    ]
    assert evaluate(o, "Observation.subject.where(resolve() is Group)") == []
    assert evaluate(o, "Observation.performer.resolve().ofType(Organization).id") == ["2"]


def test_resolve_finds_contained_and_bundle_resources() -> None:
    p = patient()
    assert evaluate(p, "Patient.managingOrganization.resolve().name") == ["Acme"]
    bundle = {
        "resourceType": "Bundle",
        "entry": [
            {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Patient", "id": "a"}},
            {
                "fullUrl": "urn:uuid:2",
                "resource": {"resourceType": "Encounter", "subject": {"reference": "urn:uuid:1"}},
            },
        ],
    }
    assert evaluate(bundle, "Bundle.entry[1].resource.subject.resolve().id") == ["a"]


def test_resolve_ignores_what_is_not_a_resource_reference() -> None:
    o = {"resourceType": "Observation", "subject": {"reference": "Foo/1"}, "note": [{"text": "x"}]}
    assert evaluate(o, "Observation.subject.resolve()") == []
    assert evaluate(o, "Observation.note.resolve()") == []


def test_as_and_of_type_filter_collections() -> None:
    o = observation()
    assert evaluate(o, "(Observation.component.value as Quantity).value") == [
        Decimal("2.5"),
        100,
    ]
    assert evaluate(o, "Observation.component.value.ofType(string)") == ["n/a"]
    assert evaluate(o, "Observation.value is Quantity") == [True]
    assert evaluate(o, "Observation.value.is(Quantity)") == [True]
    assert evaluate(None, "@2015-02-04.is(Date)") == [True]
    with pytest.raises(FhirPathError):
        evaluate(o, "Observation.component.value is Quantity")


def test_choice_elements_navigate_by_their_name() -> None:
    p = patient()
    assert evaluate(p, "Patient.deceased") == [False]
    assert evaluate(p, "Patient.deceased is boolean") == [True]


# -- numbers -------------------------------------------------------------------------


def test_fhir_decimals_are_numbers() -> None:
    o = observation()
    values = evaluate(o, "Observation.value.value")
    assert values == [Decimal("1.50")] and isinstance(values[0], FhirDecimal)
    assert values[0].text == "1.50"  # the result is the resource's own value
    assert evaluate(o, "Observation.value.value > 1") == [True]
    assert evaluate(o, "Observation.value.value = 1.5") == [True]
    assert evaluate(o, "Observation.value.value + 1") == [Decimal("2.50")]
    assert evaluate(o, "Observation.component.value.value.sum()") == [Decimal("102.5")]
    assert evaluate(o, "Observation.component.value.value.max()") == [100]
    assert evaluate(o, "Observation.value.value.toString()") == ["1.50"]
    assert evaluate(o, "Observation.value.value.round(1)") == [Decimal("1.5")]


# -- variables and other functions ---------------------------------------------------


def test_environment_variables() -> None:
    p = patient()
    assert evaluate(p, "%resource.id") == ["p1"]
    assert evaluate(p, "%context.id") == ["p1"]
    assert evaluate(p, "%sct") == ["http://snomed.info/sct"]
    assert evaluate(p, "%`vs-administrative-gender`") == [
        "http://hl7.org/fhir/ValueSet/administrative-gender"
    ]
    assert evaluate(p, "%`ext-patient-birthTime`") == [
        "http://hl7.org/fhir/StructureDefinition/patient-birthTime"
    ]
    assert evaluate(p, "%limit + 1", {"%limit": 2}) == [3]
    assert evaluate(p, "%limit", {"limit": 2}) == [2]
    with pytest.raises(FhirPathError):
        evaluate(p, "%undefined")


@pytest.mark.parametrize(
    ("div", "ok"),
    [
        ('<div xmlns="http://www.w3.org/1999/xhtml"><p>Hi <b>there</b></p></div>', True),
        ('<div xmlns="http://www.w3.org/1999/xhtml"><script>x()</script></div>', False),
        ('<div xmlns="http://www.w3.org/1999/xhtml"><p onclick="x()">Hi</p></div>', False),
        ("<div><p>no namespace</p></div>", False),
        ('<div xmlns="http://www.w3.org/1999/xhtml"><p>unclosed</div>', False),
    ],
)
def test_html_checks(div: str, ok: bool) -> None:
    resource = {"resourceType": "Basic", "text": {"status": "generated", "div": div}}
    assert evaluate(resource, "text.`div`.htmlChecks()") == [ok]
    assert evaluate(resource, "text.div.htmlChecks()") == [ok]  # 'div' read as a name


def test_div_stays_an_operator_outside_member_position() -> None:
    assert evaluate(None, "7 div 2") == [3]
    assert evaluate(None, "'a.div'") == ["a.div"]


def test_string_functions_with_empty_arguments_are_empty() -> None:
    assert evaluate(None, "'abc'.indexOf({})") == []
    assert evaluate(None, "'abc'.replace('b', {})") == []
    assert evaluate(None, "''.startsWith('')") == [True]
    assert evaluate(None, "'abc'.replaceMatches('', 'x')") == ["abc"]
    assert evaluate(None, "'a\\\\nb'.unescape('json')") == ["a\nb"]


def test_search_parameter_expressions() -> None:
    """Expressions of the shapes the R4 SearchParameters use."""
    o = observation()
    assert evaluate(o, "Observation.subject.where(resolve() is Patient)") == [o["subject"]]
    assert evaluate(o, "(Observation.value as Quantity) | (Observation.value as SampledData)") == [
        o["valueQuantity"]
    ]
    qr = {
        "resourceType": "QuestionnaireResponse",
        "item": [
            {
                "linkId": "1",
                "extension": [{"url": "http://x/isSubject", "valueBoolean": True}],
                "answer": [{"valueReference": {"reference": "Patient/1"}}],
            }
        ],
    }
    expression = (
        "QuestionnaireResponse.item.where(hasExtension('http://x/isSubject'))"
        ".answer.value.ofType(Reference)"
    )
    assert evaluate(qr, expression) == [{"reference": "Patient/1"}]


# -- locate() and the model ----------------------------------------------------------


def test_locate_reports_object_key_and_index() -> None:
    p = patient()
    [loc] = locate(p, "Patient.name[0].given[1]")
    assert loc.parent is p["name"][0] and loc.key == "given" and loc.index == 1
    assert loc.value == "James" and loc.type == "string"
    assert loc.element is not None and loc.element.path == "HumanName.given"


def test_locate_choice_elements_use_their_json_key() -> None:
    [loc] = locate(observation(), "Observation.value")
    assert loc.key == "valueQuantity" and loc.type == "Quantity" and loc.index is None
    assert loc.element is not None and "Quantity" in loc.element.choices


def test_locate_value_less_primitive_and_root() -> None:
    p = patient()
    [loc] = locate(p, "Patient.name[1].given[0]")
    assert loc == Location(p["name"][1], "given", 0, None, "string", loc.element)
    [root] = locate(p, "Patient")
    assert root.parent is None and root.value is p and root.type == "Patient"
    assert locate(p, "Patient.name.where(family = 'Nobody')") == []


def test_locate_refuses_values_that_are_not_elements() -> None:
    with pytest.raises(FhirPathError, match="not an element"):
        locate(patient(), "1 + 1")
    with pytest.raises(FhirPathError, match="not an element"):
        locate(observation(), "Observation.subject.resolve()")


def test_element_info() -> None:
    contact = element_info("Patient", "contact")
    assert contact is not None and contact.type == "Patient.contact"
    deceased = element_info("Patient", "deceased")
    assert deceased is not None and deceased.type is None
    assert set(deceased.choices) == {"Boolean", "DateTime"}
    assert element_info("Patient.contact", "name") == element_info("Patient.contact", "name")
    assert element_info("Patient", "nonsense") is None
    nested = element_info("Questionnaire.item", "item")
    assert nested is not None and nested.path == "Questionnaire.item.item"
    assert nested.type == "Questionnaire.item"
