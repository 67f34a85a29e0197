"""Targeted cases for each rule of the base-structure validator."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from fhir_server import jsonio
from fhir_server.errors import Issue
from fhir_server.validation import validate_resource


def check(text: str, **kwargs: Any) -> list[Issue]:
    return validate_resource(jsonio.loads(text), **kwargs)


def found(text: str, **kwargs: Any) -> list[tuple[str, str]]:
    """(code, expression) of every issue."""
    issues = check(text, **kwargs)
    for i in issues:
        assert i.severity == "error"
        assert len(i.expression) == 1
    return [(i.code, i.expression[0]) for i in issues]


def only(text: str, code: str, expression: str, phrase: str, **kwargs: Any) -> None:
    issues = check(text, **kwargs)
    assert [(i.code, i.expression[0]) for i in issues] == [(code, expression)], issues
    assert phrase in issues[0].diagnostics, issues[0].diagnostics


PATIENT = """{
  "resourceType": "Patient",
  "id": "p1",
  "meta": {"versionId": "3", "lastUpdated": "2024-01-02T03:04:05.123+01:00",
           "profile": ["http://example.org/fhir/StructureDefinition/p"]},
  "text": {"status": "generated", "div": "<div xmlns=\\"http://www.w3.org/1999/xhtml\\">Jo</div>"},
  "extension": [
    {"url": "http://example.org/ext/simple", "valueDecimal": 1.50},
    {"url": "http://example.org/ext/complex",
     "extension": [{"url": "a", "valueCodeableConcept": {"text": "x"}},
                   {"url": "b", "valueReference": {"reference": "Practitioner/pr-1"}}]}
  ],
  "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345",
                  "period": {"start": "2001-05-06"}}],
  "active": true,
  "name": [{"use": "official", "family": "Chalmers", "given": ["Peter", "James"],
            "_given": [null, {"extension": [{"url": "http://example.org/ext/x",
                                              "valueString": "y"}]}]}],
  "telecom": [{"system": "phone", "value": "(03) 5555 6473", "use": "work", "rank": 1}],
  "gender": "male",
  "_gender": {"id": "g1", "extension": [{"url": "http://example.org/ext/g",
                                          "valueBoolean": false}]},
  "birthDate": "1974-12-25",
  "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                                 "valueDateTime": "1974-12-25T14:35:45-05:00"}]},
  "deceasedBoolean": false,
  "address": [{"line": ["534 Erewhon St"], "city": "PleasantVille", "postalCode": "3999"}],
  "multipleBirthInteger": 2,
  "photo": [{"contentType": "image/png", "data": "iVBORw0KGgo= AAAA"}],
  "contact": [{"relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0131",
                                            "code": "N"}]}],
               "name": {"family": "du Marché"}, "gender": "female",
               "period": {"start": "2012"}}],
  "communication": [{"language": {"text": "Dutch"}, "preferred": true}],
  "contained": [{"resourceType": "Organization", "id": "org1", "name": "Acme"}],
  "managingOrganization": {"reference": "#org1"},
  "generalPractitioner": [{"reference": "http://example.org/fhir/Practitioner/7/_history/2"},
                          {"reference": "urn:uuid:6b2b7e3a-3c4d-4f5e-8a9b-0c1d2e3f4a5b"},
                          {"identifier": {"value": "x"}}],
  "link": [{"other": {"reference": "RelatedPerson/rp"}, "type": "seealso"}]
}"""


def patient(**changes: Any) -> str:
    data = jsonio.loads(PATIENT)
    for key, value in changes.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    return jsonio.dumps(data).decode()


def test_a_rich_valid_patient_has_no_issues() -> None:
    assert check(PATIENT) == []


def test_minimal_resources_are_valid() -> None:
    assert check('{"resourceType": "Patient"}') == []
    assert check('{"resourceType": "Observation", "status": "final", "code": {"text": "x"}}') == []
    assert check('{"resourceType": "Binary", "contentType": "text/plain"}') == []


# ---------------------------------------------------------------- resourceType


def test_resource_type_missing() -> None:
    only('{"id": "x"}', "required", "Resource", "no resourceType")


def test_resource_type_unknown() -> None:
    only('{"resourceType": "Patientt"}', "structure", "Resource.resourceType", "'Patientt'")


def test_resource_type_abstract() -> None:
    only(
        '{"resourceType": "DomainResource"}',
        "structure",
        "Resource.resourceType",
        "not a concrete resource type",
    )


def test_resource_type_must_match_expected_type() -> None:
    only(
        '{"resourceType": "Patient"}',
        "invalid",
        "Patient",
        "expected a Observation resource",
        expected_type="Observation",
    )
    assert check('{"resourceType": "Patient"}', expected_type="Patient") == []


def test_resource_must_be_an_object() -> None:
    only("[]", "structure", "Resource", "must be a JSON object")


# ---------------------------------------------------------------- elements


def test_unknown_element() -> None:
    only(patient(foo=1), "structure", "Patient.foo", "unknown element 'foo'")


def test_unknown_nested_element_names_the_path() -> None:
    text = patient(name=[{"family": "x"}, {"given": ["a", "b"], "middle": "c"}])
    only(text, "structure", "Patient.name[1].middle", "unknown element 'middle'")


def test_resource_type_is_not_allowed_inside_data_types() -> None:
    text = patient(name=[{"resourceType": "HumanName", "family": "x"}])
    only(text, "structure", "Patient.name[0].resourceType", "unknown element")


def test_missing_required_element() -> None:
    only(
        '{"resourceType": "Observation", "code": {"text": "x"}}',
        "required",
        "Observation.status",
        "missing required element 'status'",
    )


def test_missing_required_choice_element() -> None:
    text = '{"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "component": [{"code": {"text": "c"}}]}'
    assert check(text) == []  # component.value[x] is optional
    text = '{"resourceType": "MedicationRequest", "status": "active", "intent": "order", "subject": {"reference": "Patient/1"}}'
    only(
        text,
        "required",
        "MedicationRequest.medication[x]",
        "missing required element 'medication[x]'",
    )


def test_missing_required_element_in_backbone() -> None:
    text = patient(link=[{"type": "seealso"}])
    only(text, "required", "Patient.link[0].other", "'other'")


def test_required_element_given_only_by_its_extension_sibling() -> None:
    text = """{"resourceType": "Observation", "code": {"text": "x"},
               "_status": {"extension": [{"url": "http://example.org/e", "valueString": "s"}]}}"""
    assert check(text) == []


def test_array_expected() -> None:
    only(patient(name={"family": "x"}), "structure", "Patient.name", "must be a JSON array")
    only(patient(address=None, photo=None, telecom="x"), "structure", "Patient.telecom", "array")


def test_single_value_expected() -> None:
    only(patient(gender=["male"]), "structure", "Patient.gender", "must not be an array")
    only(
        patient(managingOrganization=[{"reference": "#org1"}]),
        "structure",
        "Patient.managingOrganization",
        "must not be an array",
    )


def test_object_expected() -> None:
    only(patient(maritalStatus="M"), "structure", "Patient.maritalStatus", "expected a JSON object")


def test_empty_object_array_and_string() -> None:
    only(patient(maritalStatus={}), "structure", "Patient.maritalStatus", "empty object")
    only(patient(name=[]), "structure", "Patient.name", "empty array")
    only(patient(name=[{}]), "structure", "Patient.name[0]", "empty object")
    only(patient(name=[{"family": ""}]), "value", "Patient.name[0].family", "empty string")
    only(patient(gender=""), "value", "Patient.gender", "empty string")


def test_null_values() -> None:
    only('{"resourceType": "Patient", "active": null}', "structure", "Patient.active", "null")
    only(patient(name=[None]), "structure", "Patient.name[0]", "expected a JSON object")


def test_element_with_only_an_id() -> None:
    only(patient(maritalStatus={"id": "a"}), "structure", "Patient.maritalStatus", "only an id")


# ---------------------------------------------------------------- primitives


@pytest.mark.parametrize(
    ("element", "value", "code", "phrase"),
    [
        ("active", "true", "structure", "expected a JSON boolean"),
        ("active", 1, "structure", "expected a JSON boolean"),
        ("multipleBirthInteger", "2", "structure", "expected a JSON integer"),
        ("multipleBirthInteger", 2.5, "structure", "expected a JSON integer"),
        ("multipleBirthInteger", True, "structure", "expected a JSON integer"),
        ("multipleBirthInteger", 2**31, "value", "out of range"),
        ("birthDate", "1974-13-01", "value", "not a valid date"),
        ("birthDate", "1974-02-29", "value", "no such calendar date"),
        ("birthDate", "74-12-25", "value", "not a valid date"),
        ("birthDate", "1974-12-25T10:00:00Z", "value", "not a valid date"),
        ("birthDate", 1974, "structure", "expected a JSON string"),
        ("deceasedDateTime", "2020-01-01T10:00", "value", "not a valid dateTime"),
        ("deceasedDateTime", "2020-01-01T10:00:00", "value", "not a valid dateTime"),
        ("gender", 1, "structure", "expected a JSON string"),
        ("gender", "ma le", "code-invalid", "not in the required value set"),
        ("implicitRules", "has space", "value", "not a valid uri"),
        ("id", "a_b", "value", "not a valid id"),
        ("id", "x" * 65, "value", "not a valid id"),
    ],
)
def test_primitive_formats(element: str, value: Any, code: str, phrase: str) -> None:
    changes = {element: value}
    if element.startswith("deceased"):
        changes["deceasedBoolean"] = None
    only(patient(**changes), code, f"Patient.{element}", phrase)


@pytest.mark.parametrize(
    ("element", "value"),
    [
        ("birthDate", "1974"),
        ("birthDate", "1974-12"),
        ("birthDate", "2000-02-29"),
        ("deceasedDateTime", "2020-01-01T10:00:00.1234+14:00"),
        ("deceasedDateTime", "2020-01-01T23:59:60Z"),
        ("multipleBirthInteger", -(2**31)),
        ("implicitRules", "urn:x"),
    ],
)
def test_primitive_formats_accepted(element: str, value: Any) -> None:
    changes = {element: value}
    if element.startswith("deceased"):
        changes["deceasedBoolean"] = None
    assert check(patient(**changes)) == []


def test_string_regex_whitespace_is_ascii() -> None:
    # [ \r\n\t\S]+ : a no-break space is not XML whitespace, a form feed is excluded
    assert check(patient(name=[{"family": "van\u00a0Dijk\tX\r\nY"}])) == []
    only(patient(name=[{"family": "a\u000cb"}]), "value", "Patient.name[0].family", "string")


def test_decimal_and_unsigned_and_positive() -> None:
    obs = '{"resourceType": "Observation", "status": "final", "code": {"text": "x"}, %s}'
    assert check(obs % '"valueQuantity": {"value": 1.50, "unit": "mg"}') == []
    assert check(obs % '"valueQuantity": {"value": 1e3}') == []
    assert check(obs % '"valueQuantity": {"value": 7}') == []
    only(
        obs % '"valueQuantity": {"value": "1.5"}',
        "structure",
        "Observation.valueQuantity.value",
        "expected a JSON number",
    )
    only(
        obs
        % '"valueSampledData": {"origin": {"value": 0}, "period": 1, "dimensions": 0, "data": "1 2"}',
        "value",
        "Observation.valueSampledData.dimensions",
        "out of range for a positiveInt",
    )
    only(
        patient(telecom=[{"system": "phone", "value": "1", "rank": -1}]),
        "value",
        "Patient.telecom[0].rank",
        "positiveInt",
    )


def test_instant_requires_time_and_zone() -> None:
    only(
        patient(meta={"lastUpdated": "2024-01-02"}),
        "value",
        "Patient.meta.lastUpdated",
        "not a valid instant",
    )


def test_base64() -> None:
    only(patient(photo=[{"data": "abc"}]), "value", "Patient.photo[0].data", "base64Binary")
    only(patient(photo=[{"data": "ab$d"}]), "value", "Patient.photo[0].data", "base64Binary")
    assert check(patient(photo=[{"data": " QUJD\nREVG "}])) == []


def test_narrative_div() -> None:
    only(
        patient(text={"status": "generated", "div": "plain"}),
        "value",
        "Patient.text.div",
        "<div>",
    )
    only(patient(text={"div": "<div>x</div>"}), "required", "Patient.text.status", "'status'")


# ---------------------------------------------------------------- primitive extensions


def test_primitive_extension_sibling_alone_is_valid() -> None:
    text = patient(
        birthDate=None,
        _birthDate={"extension": [{"url": "http://example.org/e", "valueCode": "unknown"}]},
    )
    assert check(text) == []


def test_primitive_extension_sibling_must_be_an_object() -> None:
    only(patient(_gender="x"), "structure", "Patient._gender", "must be a JSON object")


def test_primitive_extension_sibling_with_only_an_id_and_no_value() -> None:
    only(patient(gender=None, _gender={"id": "g"}), "structure", "Patient.gender", "only an id")


def test_primitive_extension_sibling_unknown_content() -> None:
    only(
        patient(_gender={"id": "g", "foo": 1}), "structure", "Patient.gender.foo", "unknown element"
    )
    only(patient(_gender={"value": "male"}), "structure", "Patient.gender.value", "'value'")


def test_primitive_extension_sibling_only_for_primitives() -> None:
    only(patient(_name={"id": "x"}), "structure", "Patient._name", "only primitive elements")
    only(patient(_nickname={"id": "x"}), "structure", "Patient._nickname", "unknown element")


def test_primitive_extension_extensions_are_validated() -> None:
    text = patient(_gender={"extension": [{"url": "http://x", "valueBoolean": "no"}]})
    only(text, "structure", "Patient.gender.extension[0].valueBoolean", "expected a JSON boolean")


def test_primitive_array_null_placeholders() -> None:
    name: dict[str, Any] = {"given": ["a", None]}
    only(patient(name=[name]), "structure", "Patient.name[0].given[1]", "placeholder")
    name = {"given": ["a", None], "_given": [None, {"id": "x"}]}
    only(patient(name=[name]), "structure", "Patient.name[0].given[1]", "only an id")
    name = {"given": ["a", None], "_given": [None, None]}
    only(patient(name=[name]), "structure", "Patient.name[0].given[1]", "placeholder")


def test_primitive_array_extension_alignment() -> None:
    name = {"given": ["a", "b"], "_given": [None]}
    only(patient(name=[name]), "structure", "Patient.name[0].given", "same length")
    name = {"given": ["a"], "_given": {"id": "x"}}
    issues = found(patient(name=[name]))
    assert ("structure", "Patient.name[0].given") in issues
    name = {"_given": [{"extension": [{"url": "http://x", "valueString": "s"}]}, None]}
    only(patient(name=[name]), "structure", "Patient.name[0].given[1]", "without a value")


# ---------------------------------------------------------------- choice types


def test_wrong_choice_type() -> None:
    only(
        patient(deceasedBoolean=None, deceasedString="x"),
        "structure",
        "Patient.deceasedString",
        "unknown element",
    )
    only(
        patient(deceasedBoolean=None, deceased=True),
        "structure",
        "Patient.deceased",
        "unknown element",
    )


def test_duplicate_choice() -> None:
    only(
        patient(deceasedDateTime="2020"),
        "structure",
        "Patient.deceasedDateTime",
        "found both 'deceasedBoolean' and 'deceasedDateTime'",
    )


def test_duplicate_choice_via_extension_sibling() -> None:
    text = patient(_deceasedDateTime={"extension": [{"url": "http://x", "valueString": "s"}]})
    only(text, "structure", "Patient.deceasedDateTime", "allows a single type")


def test_choice_value_and_its_sibling_are_one_choice() -> None:
    text = patient(_deceasedBoolean={"id": "d"})
    assert check(text) == []


# ---------------------------------------------------------------- bindings


def test_code_not_in_required_value_set() -> None:
    issues = check(patient(gender="banana"))
    assert [(i.code, i.expression) for i in issues] == [("code-invalid", ("Patient.gender",))]
    assert issues[0].diagnostics == (
        "value 'banana' is not in the required value set "
        "http://hl7.org/fhir/ValueSet/administrative-gender"
    )


def test_codes_are_case_sensitive() -> None:
    only(patient(gender="Male"), "code-invalid", "Patient.gender", "'Male'")


def test_code_in_array_and_in_backbone() -> None:
    text = '{"resourceType": "Patient", "link": [{"other": {"reference": "Patient/2"}, "type": "friend"}]}'
    only(text, "code-invalid", "Patient.link[0].type", "link-type")
    text = '{"resourceType": "CapabilityStatement", "status": "draft", "date": "2020", "kind": "instance", "fhirVersion": "4.0.1", "format": ["json"], "rest": [{"mode": "server", "resource": [{"type": "Patient", "interaction": [{"code": "read"}, {"code": "grab"}]}]}]}'
    only(
        text,
        "code-invalid",
        "CapabilityStatement.rest[0].resource[0].interaction[1].code",
        "'grab'",
    )


def test_not_checkable_value_sets_are_skipped() -> None:
    # mime types (BCP-13) and currencies (ISO 4217) are external code systems
    assert check('{"resourceType": "Binary", "contentType": "application/x-anything"}') == []
    text = '{"resourceType": "Account", "status": "active", "extension": [{"url": "http://x", "valueMoney": {"value": 1, "currency": "XXX"}}]}'
    assert check(text) == []


def test_required_codeable_concept() -> None:
    base = (
        '{"resourceType": "Condition", "subject": {"reference": "Patient/1"}, "clinicalStatus": %s}'
    )
    good = '{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]}'
    assert check(base % good) == []
    # translations in other systems are fine as long as one coding is from the value set
    good = '{"coding": [{"system": "http://example.org/local", "code": "A"}, {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}], "text": "Active"}'
    assert check(base % good) == []
    wrong_code = '{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "busy"}]}'
    only(base % wrong_code, "code-invalid", "Condition.clinicalStatus", "none of the codings")
    wrong_system = '{"coding": [{"system": "http://example.org/local", "code": "active"}]}'
    only(
        base % wrong_system,
        "code-invalid",
        "Condition.clinicalStatus",
        "http://example.org/local#active",
    )
    no_system = '{"coding": [{"code": "active"}]}'
    only(base % no_system, "code-invalid", "Condition.clinicalStatus", "(no system)#active")
    text_only = '{"text": "active"}'
    only(base % text_only, "code-invalid", "Condition.clinicalStatus", "text alone")


# ---------------------------------------------------------------- references


@pytest.mark.parametrize(
    "reference",
    [
        "Organization/1",
        "Organization/a.b-c/_history/2",
        "http://example.org/fhir/Organization/1",
        "https://example.org/fhir/Organization/1/_history/v1",
        "http://example.org/some/other/thing",
        "urn:uuid:6b2b7e3a-3c4d-4f5e-8a9b-0c1d2e3f4a5b",
        "urn:oid:1.2.3.4",
        "Organization?identifier=http://x|1",
        "#org1",
    ],
)
def test_good_references(reference: str) -> None:
    assert check(patient(managingOrganization={"reference": reference})) == []


@pytest.mark.parametrize(
    ("reference", "code", "phrase"),
    [
        (
            "Patient/1",
            "invalid",
            "reference to a Patient is not allowed here (allowed: Organization)",
        ),
        ("http://example.org/fhir/Practitioner/1", "invalid", "reference to a Practitioner"),
        (
            "Organisation/1",
            "value",
            "'Organisation' in reference 'Organisation/1' is not a resource type",
        ),
        ("Organization/", "value", "not a valid reference"),
        ("Organization/a b", "value", "not a valid reference"),
        ("Organization/1/_history/", "value", "not a valid reference"),
        ("organization/1", "value", "not a valid reference"),
        ("urn:isbn:12345", "value", "urn:uuid: or urn:oid:"),
        ("http://exa mple.org/x", "value", "not a valid reference URL"),
        ("#other", "invalid", "does not match the id of a contained resource"),
    ],
)
def test_bad_references(reference: str, code: str, phrase: str) -> None:
    only(
        patient(managingOrganization={"reference": reference}),
        code,
        "Patient.managingOrganization.reference",
        phrase,
    )


@pytest.mark.parametrize(
    ("reference", "phrase"),
    [
        ("urn:uuid:23ac0bc6-0959-4181-8af0-6db5e2ef8176-X", "not a well-formed urn:uuid:"),
        ("urn:uuid:1234", "not a well-formed urn:uuid:"),
        ("urn:oid:1.2.x", "not a well-formed urn:oid:"),
    ],
)
def test_malformed_uuid_or_oid_references_are_warnings(reference: str, phrase: str) -> None:
    """Reference.reference is a string: a urn:uuid:/urn:oid: that is not well formed
    cannot resolve (a warning), but breaks no rule of the element's type."""
    issues = check(patient(managingOrganization={"reference": reference}))
    assert [(i.severity, i.expression) for i in issues] == [
        ("warning", ("Patient.managingOrganization.reference",))
    ]
    assert phrase in issues[0].diagnostics
    for good in ("urn:uuid:23ac0bc6-0959-4181-8af0-6db5e2ef8176", "urn:oid:1.2.3.4"):
        assert check(patient(managingOrganization={"reference": good})) == []


def test_reference_to_any_resource() -> None:
    text = '{"resourceType": "Provenance", "target": [{"reference": "Anything/1"}], "recorded": "2020-01-01T00:00:00Z", "agent": [{"who": {"reference": "Device/d"}}]}'
    only(text, "value", "Provenance.target[0].reference", "not a resource type")
    text = text.replace("Anything/1", "Claim/1")
    assert check(text) == []


def test_reference_target_in_choice_type() -> None:
    text = '{"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueString": "v", "subject": {"reference": "Medication/1"}}'
    only(text, "invalid", "Observation.subject.reference", "Medication")


# ---------------------------------------------------------------- nested structures


def test_content_reference_items_are_validated() -> None:
    text = """{"resourceType": "Questionnaire", "status": "draft", "item": [
        {"linkId": "1", "type": "group", "item": [
            {"linkId": "1.1", "type": "group", "item": [{"linkId": "1.1.1", "type": "bogus"}]},
            {"type": "string", "foo": 1}]}]}"""
    assert found(text) == [
        ("code-invalid", "Questionnaire.item[0].item[0].item[0].type"),
        ("structure", "Questionnaire.item[0].item[1].foo"),
        ("required", "Questionnaire.item[0].item[1].linkId"),
    ]


def test_nested_backbone_in_data_type() -> None:
    text = '{"resourceType": "MedicationRequest", "status": "active", "intent": "order", "medicationCodeableConcept": {"text": "x"}, "subject": {"reference": "Patient/1"}, "dosageInstruction": [{"timing": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "days"}}}]}'
    only(
        text,
        "code-invalid",
        "MedicationRequest.dosageInstruction[0].timing.repeat.periodUnit",
        "units-of-time",
    )


# ---------------------------------------------------------------- extensions


def test_extension_with_two_values() -> None:
    ext = [{"url": "http://x", "valueString": "a", "valueInteger": 1}]
    only(
        patient(extension=ext),
        "structure",
        "Patient.extension[0].valueInteger",
        "allows a single type",
    )


def test_extension_with_value_and_extensions() -> None:
    ext = [{"url": "http://x", "valueString": "a", "extension": [{"url": "y", "valueString": "b"}]}]
    only(patient(extension=ext), "invariant", "Patient.extension[0]", "ext-1")


def test_extension_with_neither_value_nor_extensions() -> None:
    only(patient(extension=[{"url": "http://x"}]), "invariant", "Patient.extension[0]", "ext-1")


def test_extension_without_url() -> None:
    only(patient(extension=[{"valueString": "a"}]), "required", "Patient.extension[0].url", "'url'")


def test_extension_value_is_validated_by_its_type() -> None:
    ext = [{"url": "http://x", "valueDate": "yesterday"}]
    only(patient(extension=ext), "value", "Patient.extension[0].valueDate", "not a valid date")
    ext = [{"url": "http://x", "valueFoo": "a"}]
    issues = found(patient(extension=ext))
    assert ("structure", "Patient.extension[0].valueFoo") in issues


def test_modifier_extension_in_backbone() -> None:
    contact = [{"modifierExtension": [{"url": "http://x"}], "name": {"family": "y"}}]
    only(patient(contact=contact), "invariant", "Patient.contact[0].modifierExtension[0]", "ext-1")


# ---------------------------------------------------------------- contained, bundles, parameters


def test_contained_resource_is_validated() -> None:
    contained = [{"resourceType": "Organization", "id": "org1", "active": "yes"}]
    only(patient(contained=contained), "structure", "Patient.contained[0].active", "boolean")


def test_contained_with_version_id_and_last_updated() -> None:
    contained = [
        {
            "resourceType": "Organization",
            "id": "org1",
            "meta": {"versionId": "1", "lastUpdated": "2020-01-01T00:00:00Z"},
        }
    ]
    assert found(patient(contained=contained)) == [
        ("invariant", "Patient.contained[0].meta.versionId"),
        ("invariant", "Patient.contained[0].meta.lastUpdated"),
    ]


def test_contained_with_security_label() -> None:
    contained = [
        {"resourceType": "Organization", "id": "org1", "meta": {"security": [{"code": "R"}]}}
    ]
    only(patient(contained=contained), "invariant", "Patient.contained[0].meta.security", "dom-5")


def test_nested_contained() -> None:
    contained = [
        {
            "resourceType": "Organization",
            "id": "org1",
            "contained": [{"resourceType": "Organization", "id": "org2"}],
        }
    ]
    only(patient(contained=contained), "invariant", "Patient.contained[0].contained", "dom-2")


def test_contained_unknown_or_missing_resource_type() -> None:
    only(
        patient(contained=[{"resourceType": "Nope", "id": "org1"}]),
        "structure",
        "Patient.contained[0].resourceType",
        "unknown resourceType",
    )
    only(patient(contained=[{"id": "org1"}]), "required", "Patient.contained[0]", "no resourceType")


def test_contained_resources_can_reference_each_other() -> None:
    contained = [
        {"resourceType": "Organization", "id": "org1", "partOf": {"reference": "#org2"}},
        {"resourceType": "Organization", "id": "org2"},
    ]
    assert check(patient(contained=contained)) == []


def test_bundle_entries_are_validated_as_resources() -> None:
    text = """{"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:6b2b7e3a-3c4d-4f5e-8a9b-0c1d2e3f4a5b",
         "resource": {"resourceType": "Patient", "gender": "x"}},
        {"resource": {"resourceType": "Observation", "status": "final"}},
        {"resource": {"resourceType": "Nothing"}},
        {"resource": "Patient/1"}]}"""
    assert found(text) == [
        ("code-invalid", "Bundle.entry[0].resource.gender"),
        ("required", "Bundle.entry[1].resource.code"),
        ("structure", "Bundle.entry[2].resource.resourceType"),
        ("structure", "Bundle.entry[3].resource"),
    ]


def test_bundle_entry_local_references_resolve_within_the_entry() -> None:
    text = """{"resourceType": "Bundle", "type": "collection", "contained": [], "entry": [
        {"resource": {"resourceType": "Patient", "managingOrganization": {"reference": "#o"}}}]}"""
    assert found(text) == [
        ("structure", "Bundle.contained"),
        ("invalid", "Bundle.entry[0].resource.managingOrganization.reference"),
    ]


def test_parameters_resource_is_validated() -> None:
    text = """{"resourceType": "Parameters", "parameter": [
        {"name": "a", "valueString": "x"},
        {"name": "b", "resource": {"resourceType": "Patient", "active": "no"}},
        {"name": "c", "part": [{"name": "d", "valueInteger": "1"}]}]}"""
    assert found(text) == [
        ("structure", "Parameters.parameter[1].resource.active"),
        ("structure", "Parameters.parameter[2].part[0].valueInteger"),
    ]


# ---------------------------------------------------------------- robustness


def test_deeply_nested_input_is_reported_not_raised() -> None:
    item: dict[str, Any] = {"linkId": "x", "type": "group"}
    root = {"resourceType": "Questionnaire", "status": "draft", "item": [item]}
    for _ in range(400):
        child = {"linkId": "x", "type": "group"}
        item["item"] = [child]
        item = child
    issues = validate_resource(root)
    assert [i.code for i in issues] == ["too-costly"]


def test_validation_does_not_modify_the_resource() -> None:
    data = jsonio.loads(PATIENT)
    before = copy.deepcopy(data)
    validate_resource(data)
    assert data == before


def test_every_issue_names_an_expression() -> None:
    text = '{"resourceType": "Patient", "gender": "x", "active": "y", "foo": [], "name": [{}]}'
    issues = check(text)
    assert len(issues) == 4
    assert all(i.expression and i.expression[0].startswith("Patient.") for i in issues)


def test_attachment_size_must_match_the_data() -> None:
    # "aGVsbG8=" is the 5 bytes "hello"
    good = '{"resourceType": "Media", "status": "completed", "content": %s}'
    assert check(good % '{"data": "aGVsbG8=", "size": 5}') == []
    assert check(good % '{"data": "aGVs bG8h", "size": 6}') == []  # whitespace is no data
    only(
        good % '{"data": "aGVsbG8=", "size": 100}',
        "value",
        "Media.content.size",
        "Stated Attachment Size 100 does not match actual attachment size 5",
    )


def test_urn_uuid_in_a_uri_must_be_a_uuid() -> None:
    text = '{"resourceType": "Basic", "code": {"text": "x"}, "implicitRules": "%s"}'
    assert check(text % "urn:uuid:c757873d-ec9a-4326-a141-556f43239520") == []
    assert check(text % "urn:uuid:C757873D-EC9A-4326-A141-556F43239520") == []
    only(
        text % "urn:uuid:c757873d-ec9a-4326-a141-556f43239520asdf",
        "value",
        "Basic.implicitRules",
        "is not a valid urn:uuid",
    )


def test_strings_longer_than_one_megabyte_are_invalid() -> None:
    from fhir_server.validation.primitives import MAX_STRING

    ok = {"resourceType": "Patient", "name": [{"text": "é" * (MAX_STRING // 2)}]}
    assert not [i for i in validate_resource(ok) if i.severity == "error"]
    long = {"resourceType": "Patient", "name": [{"text": "é" * (MAX_STRING // 2 + 1)}]}
    errors = [i for i in validate_resource(long) if i.severity == "error"]
    assert errors and "1 MB" in errors[0].diagnostics
    assert errors[0].expression == ("Patient.name[0].text",)


def test_a_bundle_link_relation_occurs_once() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [
            {"relation": "self", "url": "http://x/fhir/Patient"},
            {"relation": "next", "url": "http://x/fhir/Patient?_cursor=a"},
            {"relation": "self", "url": "http://x/fhir/Patient?x=1"},
        ],
    }
    errors = [i for i in validate_resource(bundle) if i.severity == "error"]
    assert [(i.expression, "'self'" in i.diagnostics) for i in errors] == [
        (("Bundle.link[2]",), True)
    ]


@pytest.mark.parametrize(
    ("full_url", "valid"),
    [
        ("http://x/fhir/Patient/1", True),
        ("urn:uuid:0b1a2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", True),
        ("urn:oid:1.2.3", True),
        ("Patient/1", False),
    ],
)
def test_bundle_full_urls_are_absolute(full_url: str, valid: bool) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": full_url, "resource": {"resourceType": "Patient"}}],
    }
    errors = [i for i in validate_resource(bundle) if i.severity == "error"]
    assert not errors if valid else errors[0].expression == ("Bundle.entry[0].fullUrl",)
