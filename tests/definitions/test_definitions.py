"""The generated R4 definition tables and their loader."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fhir_server import definitions as d


def test_import_does_no_io() -> None:
    code = (
        "import fhir_server.definitions as d\n"
        "assert d._types_raw.cache_info().currsize == 0\n"
        "assert d._value_sets_raw.cache_info().currsize == 0\n"
        "assert not d._typedefs\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_resource_types() -> None:
    types = d.resource_types()
    assert len(types) == 146
    assert {"Patient", "Observation", "Bundle", "Parameters", "Binary"} <= types
    assert not {"Resource", "DomainResource", "HumanName", "string"} & types
    assert {"Resource", "DomainResource", "HumanName", "string", "xhtml"} <= d.type_names()


def test_patient_element_table() -> None:
    td = d.type_definition("Patient")
    assert td.kind == "resource" and td.base == "DomainResource" and not td.abstract
    gender = td.elements["Patient.gender"]
    assert (gender.min, gender.max, gender.is_array) == (0, 1, False)
    assert [t.code for t in gender.types] == ["code"]
    assert gender.binding_strength == "required"
    assert gender.required_binding == "http://hl7.org/fhir/ValueSet/administrative-gender"
    assert gender.is_summary and not gender.is_modifier
    name = td.elements["Patient.name"]
    assert name.max is None and name.is_array
    active = td.elements["Patient.active"]
    assert active.is_modifier
    assert td.elements["Patient.id"].types[0].code == "id"
    assert td.elements["Patient.link.other"].min == 1


def test_choice_elements_are_expanded() -> None:
    td = d.type_definition("Patient")
    deceased = td.elements["Patient.deceased[x]"]
    assert deceased.choice and deceased.name == "deceased"
    children = td.root_children
    assert children["deceasedBoolean"].type_code == "boolean"
    assert children["deceasedDateTime"].kind == d.PRIMITIVE
    assert children["deceasedBoolean"].element is deceased
    assert "deceased" not in children and "deceased[x]" not in children
    ext = d.type_definition("Extension").root_children
    assert ext["valueQuantity"].kind == d.COMPLEX
    assert ext["valueBase64Binary"].type_code == "base64Binary"


def test_backbone_and_content_reference() -> None:
    td = d.type_definition("Questionnaire")
    item = td.root_children["item"]
    assert item.kind == d.BACKBONE and item.content_path == "Questionnaire.item"
    nested = td.children["Questionnaire.item"]["item"]
    assert nested.kind == d.BACKBONE and nested.content_path == "Questionnaire.item"
    assert td.elements["Questionnaire.item.item"].content_reference == "Questionnaire.item"
    assert "linkId" in td.children["Questionnaire.item"]
    timing = d.type_definition("Timing").root_children["repeat"]
    assert timing.kind == d.BACKBONE and timing.type_code == "Element"


def test_reference_targets() -> None:
    td = d.type_definition("Patient")
    gp = td.elements["Patient.generalPractitioner"].types[0]
    assert gp.code == "Reference"
    assert gp.target_types == frozenset({"Organization", "Practitioner", "PractitionerRole"})
    assert "http://hl7.org/fhir/StructureDefinition/Organization" in gp.target_profiles
    any_target = d.type_definition("Provenance").elements["Provenance.target"].types[0]
    assert any_target.target_types is None
    contained = d.type_definition("Patient").root_children["contained"]
    assert contained.kind == d.RESOURCE


def test_required_children() -> None:
    td = d.type_definition("Observation")
    required = {e.path: names for e, names in td.required["Observation"]}
    assert required == {
        "Observation.status": ("status", "_status"),
        "Observation.code": ("code",),
    }
    med = d.type_definition("MedicationRequest").required["MedicationRequest"]
    by_path = {e.path: names for e, names in med}
    assert by_path["MedicationRequest.medication[x]"] == (
        "medicationCodeableConcept",
        "medicationReference",
    )


def test_primitive_types_and_regex() -> None:
    assert d.is_primitive_type("dateTime") and not d.is_primitive_type("Quantity")
    date = d.type_definition("date")
    assert date.kind == "primitive-type"
    assert date.regex is not None and date.regex.startswith("([0-9]([0-9]([0-9][1-9]")
    assert d.type_definition("id").regex == "[A-Za-z0-9\\-\\.]{1,64}"
    assert d.type_definition("xhtml").regex is None
    assert set(date.root_children) == {"id", "extension", "value"}


def test_constraints_are_kept() -> None:
    root = d.type_definition("Patient").root
    keys = {c.key for c in root.constraints}
    assert {"dom-2", "dom-3", "dom-4", "dom-5", "dom-6"} <= keys
    dom4 = next(c for c in root.constraints if c.key == "dom-4")
    assert dom4.severity == "error"
    assert (
        dom4.expression == "contained.meta.versionId.empty() and contained.meta.lastUpdated.empty()"
    )
    dom6 = next(c for c in root.constraints if c.key == "dom-6")
    assert dom6.best_practice and dom6.severity == "warning"
    ext = d.type_definition("Extension").root
    assert "ext-1" in {c.key for c in ext.constraints}


def test_summary_and_mandatory_elements() -> None:
    summary = d.summary_elements("Patient")
    assert {"id", "meta", "identifier", "name", "gender", "birthDate", "deceasedBoolean"} <= summary
    assert not {"text", "contained", "photo", "contact", "communication"} & summary
    assert {"_gender", "_birthDate", "_deceasedBoolean"} <= summary
    assert "_name" not in summary
    assert d.mandatory_elements("Observation") == {"status", "_status", "code"}
    assert {"status", "code"} <= d.summary_elements("Observation")
    assert d.mandatory_elements("Patient") == frozenset()
    with pytest.raises(KeyError):
        d.summary_elements("NoSuchType")


def test_value_sets() -> None:
    gender = d.value_set_codes("http://hl7.org/fhir/ValueSet/administrative-gender|4.0.1")
    assert gender == frozenset(
        ("http://hl7.org/fhir/administrative-gender", c)
        for c in ("male", "female", "other", "unknown")
    )
    assert d.value_set_codes("http://hl7.org/fhir/ValueSet/administrative-gender") == gender
    # external code systems cannot be checked locally
    for url in (
        "http://hl7.org/fhir/ValueSet/mimetypes",
        "http://hl7.org/fhir/ValueSet/currencies",
        "http://hl7.org/fhir/ValueSet/ucum-units",
    ):
        assert d.value_set_codes(url) is None
        assert d.value_set_not_checkable_reason(url)
    assert d.value_set_codes("http://example.org/unknown") is None
    assert d.value_set_not_checkable_reason("http://example.org/unknown") is None


def test_value_set_expansions_from_several_systems_and_value_sets() -> None:
    all_types = d.value_set("http://hl7.org/fhir/ValueSet/all-types")
    assert all_types is not None
    assert all_types.systems == {
        "http://hl7.org/fhir/abstract-types",
        "http://hl7.org/fhir/data-types",
        "http://hl7.org/fhir/resource-types",
    }
    assert {"Patient", "HumanName", "Any", "string"} <= all_types.codes
    # explicit concepts from an external system (UCUM) are enumerable
    units = d.value_set("http://hl7.org/fhir/ValueSet/units-of-time")
    assert units is not None
    assert units.pairs == {
        ("http://unitsofmeasure.org", c) for c in ("s", "min", "h", "d", "wk", "mo", "a")
    }


def test_every_required_binding_has_an_entry() -> None:
    for name in d.type_names():
        for el in d.type_definition(name).elements.values():
            url = el.required_binding
            if url is not None:
                assert d.value_set(url) is not None or d.value_set_not_checkable_reason(url), url


def test_search_parameters() -> None:
    params = d.search_parameters()
    assert len(params) == 1400
    by_url = {p["url"]: p for p in params}
    name = by_url["http://hl7.org/fhir/SearchParameter/Patient-name"]
    assert name["code"] == "name" and name["type"] == "string" and name["base"] == ["Patient"]
    assert name["expression"] == "Patient.name"
    subject = by_url["http://hl7.org/fhir/SearchParameter/Observation-subject"]
    assert subject["type"] == "reference" and "Patient" in subject["target"]
    composite = by_url["http://hl7.org/fhir/SearchParameter/Observation-code-value-quantity"]
    assert composite["type"] == "composite" and len(composite["component"]) == 2
    allowed = {
        "id", "url", "name", "code", "base", "type", "description", "expression", "xpathUsage",
        "target", "modifier", "comparator", "multipleOr", "multipleAnd", "chain", "component",
    }  # fmt: skip
    assert all(set(p) <= allowed for p in params)
    params[0]["code"] = "changed"
    assert d.search_parameters()[0]["code"] != "changed"  # callers get copies


def test_compartment_definitions() -> None:
    comps = d.compartment_definitions()
    assert [c["code"] for c in comps] == [
        "Patient",
        "Encounter",
        "RelatedPerson",
        "Practitioner",
        "Device",
    ]
    patient = comps[0]
    assert patient["url"] == "http://hl7.org/fhir/CompartmentDefinition/patient"
    obs = next(r for r in patient["resource"] if r["code"] == "Observation")
    assert "subject" in obs["param"]
