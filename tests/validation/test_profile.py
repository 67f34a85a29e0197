"""Validation against profiles (fhir_server.validation.profile, .service)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from fhir_server.errors import Issue
from fhir_server.validation import validate, validate_profiles
from fhir_server.validation.registry import ProfileRegistry

SD = "http://hl7.org/fhir/StructureDefinition/"
EX = "http://example.org/StructureDefinition/"
LOINC = "http://loinc.org"
VS_COLOURS = "http://example.org/ValueSet/colours"
CS_COLOURS = "http://example.org/CodeSystem/colours"


def sd(name: str, type_: str, *elements: dict[str, Any], base: str | None = None) -> dict[str, Any]:
    return {
        "resourceType": "StructureDefinition",
        "url": EX + name,
        "name": name,
        "type": type_,
        "kind": "complex-type" if type_ == "Extension" else "resource",
        "derivation": "constraint",
        "baseDefinition": base or SD + type_,
        "differential": {"element": [{"id": type_, "path": type_}, *elements]},
    }


def el(id: str, **props: Any) -> dict[str, Any]:
    path = ".".join(seg.split(":")[0] for seg in id.split("."))
    return {"id": id, "path": path, **props}


def registry(*definitions: dict[str, Any]) -> ProfileRegistry:
    reg = ProfileRegistry()
    reg.add(
        {
            "resourceType": "CodeSystem",
            "url": CS_COLOURS,
            "content": "complete",
            "concept": [{"code": "red"}, {"code": "green"}, {"code": "blue"}],
        }
    )
    reg.add(
        {
            "resourceType": "ValueSet",
            "url": VS_COLOURS,
            "compose": {
                "include": [{"system": CS_COLOURS, "concept": [{"code": "red"}, {"code": "green"}]}]
            },
        }
    )
    for d in definitions:
        reg.add(d)
    return reg


def check(resource: dict[str, Any], reg: ProfileRegistry, *profiles: str) -> list[Issue]:
    return validate(resource, profiles=list(profiles), registry=reg)


def found(issues: list[Issue]) -> list[tuple[str, str]]:
    return [(i.severity, i.expression[0] if i.expression else "") for i in issues]


def patient(**extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [{"family": "Lovelace"}], **extra}


# --------------------------------------------------------------------------- cardinality, types


def test_cardinality_narrowed_by_the_profile() -> None:
    reg = registry(
        sd(
            "card",
            "Patient",
            el("Patient.birthDate", min=1),
            el("Patient.name", max="1"),
            el("Patient.telecom", max="0"),
        )
    )
    assert check(patient(birthDate="1815-12-10"), reg, EX + "card") == []
    bad = patient(
        name=[{"family": "a"}, {"family": "b"}], telecom=[{"system": "phone", "value": "1"}]
    )
    issues = check(bad, reg, EX + "card")
    assert found(issues) == [
        ("error", "Patient.name"),
        ("error", "Patient.telecom"),
        ("error", "Patient.birthDate"),
    ]
    assert "minimum required = 1, but only found 0" in issues[2].diagnostics
    assert EX + "card" in issues[2].diagnostics


def test_base_cardinality_is_not_reported_twice() -> None:
    reg = registry(sd("plain", "Observation", el("Observation.status", min=1)))
    obs = {"resourceType": "Observation", "code": {"text": "x"}}
    issues = validate_profiles(obs, profiles=[EX + "plain"], registry=reg)
    assert issues == []  # Observation.status 1..1 is the base's: the structure check says it


def test_choice_types_restricted_by_the_profile() -> None:
    reg = registry(
        sd(
            "onlyq",
            "Observation",
            el("Observation.value[x]", type=[{"code": "Quantity"}, {"code": "string"}]),
        )
    )
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    assert check({**obs, "valueString": "a"}, reg, EX + "onlyq") == []
    issues = check({**obs, "valueBoolean": True}, reg, EX + "onlyq")
    assert found(issues) == [("error", "Observation.valueBoolean")]
    assert "type boolean is not allowed" in issues[0].diagnostics


def test_fixed_and_pattern_values() -> None:
    reg = registry(
        sd(
            "fp",
            "Patient",
            el("Patient.gender", fixedCode="female"),
            el(
                "Patient.maritalStatus",
                patternCodeableConcept={"coding": [{"system": "http://s", "code": "M"}]},
            ),
        )
    )
    ok = patient(
        gender="female",
        maritalStatus={
            "coding": [{"system": "http://s", "code": "M", "display": "Married"}],
            "text": "m",
        },
    )
    assert check(ok, reg, EX + "fp") == []
    bad = patient(gender="male", maritalStatus={"coding": [{"system": "http://s", "code": "S"}]})
    assert found(check(bad, reg, EX + "fp")) == [
        ("error", "Patient.gender"),
        ("error", "Patient.maritalStatus"),
    ]


def test_fixed_complex_values_must_match_exactly() -> None:
    reg = registry(
        sd("fx", "Patient", el("Patient.maritalStatus", fixedCodeableConcept={"text": "single"}))
    )
    assert check(patient(maritalStatus={"text": "single"}), reg, EX + "fx") == []
    extra = patient(maritalStatus={"text": "single", "coding": [{"code": "S"}]})
    assert found(check(extra, reg, EX + "fx")) == [("error", "Patient.maritalStatus")]


def test_max_length_and_min_max_values() -> None:
    reg = registry(
        sd(
            "lim",
            "Patient",
            el("Patient.name.family", maxLength=5),
            el("Patient.multipleBirth[x]", type=[{"code": "integer"}], maxValueInteger=3),
        )
    )
    assert check(patient(name=[{"family": "Ada"}], multipleBirthInteger=2), reg, EX + "lim") == []
    bad = patient(name=[{"family": "Lovelace"}], multipleBirthInteger=4)
    assert found(check(bad, reg, EX + "lim")) == [
        ("error", "Patient.name[0].family"),
        ("error", "Patient.multipleBirthInteger"),
    ]


def test_min_max_value_durations_on_dates_are_relative_to_now(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ElementDefinition.minValue[x] on a date: a Duration is subtracted from now (a
    minimum) or added to it (a maximum)."""
    from datetime import datetime

    from fhir_server.validation import profile as profile_module

    monkeypatch.setattr(profile_module, "_now", lambda: datetime(2024, 2, 29, 12, 0))
    years = {"system": "http://unitsofmeasure.org", "code": "a", "unit": "a"}
    reg = registry(
        sd("age", "Patient", el("Patient.birthDate", minValueDuration={"value": 100, **years})),
        sd("soon", "Patient", el("Patient.birthDate", maxValueDuration={"value": 10, **years})),
        sd(
            "recent",
            "Observation",
            el(
                "Observation.effective[x]",
                minValueQuantity={"value": 36, "code": "h", "system": "http://unitsofmeasure.org"},
            ),
        ),
    )
    # 2024-02-29 less 100 years: 1924-02-29 (a leap day too)
    for ok in ("1924-02-29", "1924-02", "1924", "1990-05-06"):
        assert check(patient(birthDate=ok), reg, EX + "age") == [], ok
    for bad in ("1924-02-28", "1923", "1850-01-01"):
        assert found(check(patient(birthDate=bad), reg, EX + "age")) == [
            ("error", "Patient.birthDate")
        ], bad
    # 2024-02-29 plus 10 years: 2034-02-28 (no leap day in 2034)
    assert check(patient(birthDate="2034-02-28"), reg, EX + "soon") == []
    assert check(patient(birthDate="2034"), reg, EX + "soon") == []
    issues = check(patient(birthDate="2034-03-01"), reg, EX + "soon")
    assert found(issues) == [("error", "Patient.birthDate")]
    assert "after 2034-02-28" in issues[0].diagnostics
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    recent = {**obs, "effectiveDateTime": "2024-02-28T01:00:00+01:00"}  # 00:00 UTC
    assert check(recent, reg, EX + "recent") == []
    old = {**obs, "effectiveDateTime": "2024-02-27T23:59:00Z"}
    assert found(check(old, reg, EX + "recent")) == [("error", "Observation.effectiveDateTime")]


# --------------------------------------------------------------------------- bindings


def test_required_and_extensible_bindings() -> None:
    reg = registry(
        sd(
            "bind",
            "Patient",
            el("Patient.maritalStatus", binding={"strength": "required", "valueSet": VS_COLOURS}),
            el(
                "Patient.contact.relationship",
                binding={"strength": "extensible", "valueSet": VS_COLOURS},
            ),
            el(
                "Patient.communication.language",
                binding={"strength": "required", "valueSet": "http://unknown/vs"},
            ),
        )
    )
    ok = patient(
        maritalStatus={"coding": [{"system": CS_COLOURS, "code": "red"}]},
        contact=[
            {
                "name": {"family": "x"},
                "relationship": [{"coding": [{"system": CS_COLOURS, "code": "green"}]}],
            }
        ],
        communication=[{"language": {"text": "unknown value set: not checked"}}],
    )
    assert check(ok, reg, EX + "bind") == []
    bad = copy.deepcopy(ok)
    bad["maritalStatus"]["coding"][0]["code"] = "blue"
    bad["contact"][0]["relationship"][0]["coding"][0]["code"] = "blue"
    assert found(check(bad, reg, EX + "bind")) == [
        ("error", "Patient.maritalStatus"),
        ("warning", "Patient.contact[0].relationship[0]"),
    ]
    text_only = copy.deepcopy(ok)
    text_only["maritalStatus"] = {"text": "no code"}
    assert found(check(text_only, reg, EX + "bind")) == [("error", "Patient.maritalStatus")]


def additional(purpose: str, value_set: str = VS_COLOURS, **more: Any) -> dict[str, Any]:
    parts = [
        {"url": "purpose", "valueCode": purpose},
        {"url": "valueSet", "valueCanonical": value_set},
    ]
    parts += [{"url": k, **v} for k, v in more.items()]
    return {
        "url": "http://hl7.org/fhir/5.0/StructureDefinition/extension-ElementDefinition.binding.additional",
        "extension": parts,
    }


def test_additional_bindings() -> None:
    """R5's binding.additional (the R4 cross-version extension): purposes required and
    maximum are errors, extensible a warning, the others and usage-limited ones are
    not applied."""

    def binding(*extensions: dict[str, Any]) -> dict[str, Any]:
        return {
            "strength": "example",
            "valueSet": "http://x/example",
            "extension": list(extensions),
        }

    reg = registry(
        sd(
            "more",
            "Patient",
            el("Patient.maritalStatus", binding=binding(additional("required"))),
            el("Patient.contact.relationship", binding=binding(additional("extensible"))),
            el("Patient.communication.language", binding=binding(additional("maximum"))),
        )
    )
    red = {"coding": [{"system": CS_COLOURS, "code": "red"}]}
    ok = patient(
        maritalStatus=red,
        contact=[{"name": {"family": "x"}, "relationship": [red]}],
        communication=[{"language": red}],
    )
    assert check(ok, reg, EX + "more") == []
    blue = {"coding": [{"system": CS_COLOURS, "code": "blue"}]}
    bad = patient(
        maritalStatus=blue,
        contact=[{"name": {"family": "x"}, "relationship": [blue]}],
        communication=[{"language": blue}],
    )
    issues = check(bad, reg, EX + "more")
    assert found(issues) == [
        ("error", "Patient.maritalStatus"),
        ("warning", "Patient.contact[0].relationship[0]"),
        ("error", "Patient.communication[0].language"),
    ]
    assert "additional binding (required)" in issues[0].diagnostics
    others = binding(
        additional("preferred"),
        additional("ui"),
        additional("required", usage={"valueUsageContext": {"code": {"code": "x"}}}),
    )
    reg.add(sd("others", "Patient", el("Patient.maritalStatus", binding=others)))
    assert check(bad, reg, EX + "others") == []


def test_bindings_use_the_pluggable_lookup() -> None:
    reg = registry(
        sd(
            "tx",
            "Patient",
            el("Patient.gender", binding={"strength": "required", "valueSet": "http://x/vs"}),
        )
    )
    calls: list[str] = []

    def lookup(url: str) -> set[tuple[str, str]] | None:
        calls.append(url)
        return (
            {("http://hl7.org/fhir/administrative-gender", "female")}
            if url == "http://x/vs"
            else None
        )

    res = patient(gender="male")
    issues = validate(res, profiles=[EX + "tx"], registry=reg, lookup=lookup)
    assert found(issues) == [("error", "Patient.gender")]
    assert "http://x/vs" in calls
    assert (
        validate(patient(gender="female"), profiles=[EX + "tx"], registry=reg, lookup=lookup) == []
    )


# --------------------------------------------------------------------------- slicing


def identifier_profile(rules: str = "open", ordered: bool = False) -> dict[str, Any]:
    return sd(
        "ids",
        "Patient",
        el(
            "Patient.identifier",
            slicing={
                "discriminator": [{"type": "value", "path": "system"}],
                "rules": rules,
                "ordered": ordered,
            },
        ),
        el("Patient.identifier:mrn", sliceName="mrn", min=1, max="1"),
        el("Patient.identifier:mrn.system", fixedUri="urn:mrn"),
        el("Patient.identifier:mrn.value", min=1),
        el("Patient.identifier:ssn", sliceName="ssn", max="1"),
        el("Patient.identifier:ssn.system", fixedUri="urn:ssn"),
    )


def test_value_slicing_cardinality_and_slice_contents() -> None:
    reg = registry(identifier_profile())
    url = EX + "ids"
    assert check(patient(identifier=[{"system": "urn:mrn", "value": "1"}]), reg, url) == []
    issues = check(patient(identifier=[{"system": "urn:other", "value": "x"}]), reg, url)
    assert found(issues) == [("error", "Patient.identifier")]
    assert "Patient.identifier:mrn: minimum required = 1" in issues[0].diagnostics
    two = [{"system": "urn:mrn", "value": "1"}, {"system": "urn:mrn", "value": "2"}]
    assert "max allowed = 1" in check(patient(identifier=two), reg, url)[0].diagnostics
    no_value = check(patient(identifier=[{"system": "urn:mrn"}]), reg, url)
    assert found(no_value) == [("error", "Patient.identifier[0].value")]


def test_closed_slicing_rejects_other_elements() -> None:
    reg = registry(identifier_profile(rules="closed"))
    ids = [{"system": "urn:mrn", "value": "1"}, {"system": "urn:other", "value": "x"}]
    issues = check(patient(identifier=ids), reg, EX + "ids")
    assert found(issues) == [("error", "Patient.identifier[1]")]
    assert "does not match any known slice" in issues[0].diagnostics


def test_open_at_end_and_ordered_slicing() -> None:
    reg = registry(identifier_profile(rules="openAtEnd"))
    ids = [{"system": "urn:other", "value": "x"}, {"system": "urn:mrn", "value": "1"}]
    assert found(check(patient(identifier=ids), reg, EX + "ids")) == [
        ("error", "Patient.identifier[1]")
    ]
    assert check(patient(identifier=list(reversed(ids))), reg, EX + "ids") == []
    reg = registry(identifier_profile(ordered=True))
    ids = [{"system": "urn:ssn", "value": "9"}, {"system": "urn:mrn", "value": "1"}]
    issues = check(patient(identifier=ids), reg, EX + "ids")
    assert found(issues) == [("error", "Patient.identifier[1]")]
    assert "out of order" in issues[0].diagnostics


def test_pattern_slicing_through_a_sliced_path() -> None:
    reg = registry(
        sd(
            "cat",
            "Observation",
            el(
                "Observation.category",
                slicing={"discriminator": [{"type": "pattern", "path": "$this"}], "rules": "open"},
            ),
            el(
                "Observation.category:vs",
                sliceName="vs",
                min=1,
                patternCodeableConcept={"coding": [{"system": "http://c", "code": "vital-signs"}]},
            ),
        )
    )
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    good = {
        **obs,
        "category": [{"coding": [{"system": "http://c", "code": "vital-signs"}, {"code": "z"}]}],
    }
    assert check(good, reg, EX + "cat") == []
    bad = {**obs, "category": [{"coding": [{"system": "http://c", "code": "lab"}]}]}
    assert found(check(bad, reg, EX + "cat")) == [("error", "Observation.category")]


def test_type_slicing_on_a_choice() -> None:
    reg = registry(
        sd(
            "ty",
            "Observation",
            el(
                "Observation.value[x]",
                slicing={"discriminator": [{"type": "type", "path": "$this"}], "rules": "open"},
            ),
            el(
                "Observation.value[x]:valueQuantity",
                sliceName="valueQuantity",
                type=[{"code": "Quantity"}],
            ),
            el("Observation.value[x]:valueQuantity.unit", min=1),
        )
    )
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    assert check({**obs, "valueString": "a"}, reg, EX + "ty") == []
    assert found(check({**obs, "valueQuantity": {"value": 1}}, reg, EX + "ty")) == [
        ("error", "Observation.valueQuantity.unit")
    ]


def test_exists_slicing() -> None:
    reg = registry(
        sd(
            "ex",
            "Patient",
            el(
                "Patient.contact",
                slicing={
                    "discriminator": [{"type": "exists", "path": "organization"}],
                    "rules": "closed",
                },
            ),
            el("Patient.contact:org", sliceName="org", max="1"),
            el("Patient.contact:org.organization", min=1),
            el("Patient.contact:person", sliceName="person"),
            el("Patient.contact:person.organization", max="0"),
            el("Patient.contact:person.name", min=1),
        )
    )
    org = {"organization": {"reference": "Organization/1"}}
    person = {"name": {"family": "x"}}
    assert check(patient(contact=[org, person]), reg, EX + "ex") == []
    issues = check(patient(contact=[org, org]), reg, EX + "ex")
    assert [i.diagnostics.split(":")[0] for i in issues] == ["Patient.contact"]
    assert "max allowed = 1" in issues[0].diagnostics


def test_profile_slicing_and_extension_slices() -> None:
    colour = sd(
        "colour",
        "Extension",
        el("Extension.url", fixedUri=EX + "colour"),
        el(
            "Extension.value[x]",
            type=[{"code": "Coding"}],
            binding={"strength": "required", "valueSet": VS_COLOURS},
        ),
    )
    reg = registry(
        colour,
        sd(
            "withext",
            "Patient",
            el(
                "Patient.extension",
                slicing={"discriminator": [{"type": "value", "path": "url"}], "rules": "open"},
            ),
            el(
                "Patient.extension:colour",
                sliceName="colour",
                min=1,
                max="1",
                type=[{"code": "Extension", "profile": [EX + "colour"]}],
            ),
        ),
    )
    url = EX + "withext"
    good = patient(
        extension=[{"url": EX + "colour", "valueCoding": {"system": CS_COLOURS, "code": "red"}}]
    )
    assert check(good, reg, url) == []
    assert "Patient.extension:colour: minimum required" in check(patient(), reg, url)[0].diagnostics
    wrong_type = patient(extension=[{"url": EX + "colour", "valueString": "red"}])
    assert found(check(wrong_type, reg, url)) == [("error", "Patient.extension[0].valueString")]
    wrong_code = patient(
        extension=[{"url": EX + "colour", "valueCoding": {"system": CS_COLOURS, "code": "blue"}}]
    )
    assert found(check(wrong_code, reg, url)) == [("error", "Patient.extension[0].valueCoding")]


def test_known_extensions_are_checked_without_a_profile() -> None:
    reg = registry()
    place = {"url": SD + "patient-birthPlace", "valueAddress": {"city": "London"}}
    assert validate(patient(extension=[place]), registry=reg) == []
    bad = {"url": SD + "patient-birthPlace", "valueString": "London"}
    issues = validate(patient(extension=[bad]), registry=reg)
    assert found(issues) == [("error", "Patient.extension[0].valueString")]
    unknown = {"url": "http://example.org/unknown", "valueString": "x"}
    assert validate(patient(extension=[unknown]), registry=reg) == []
    on_primitive = {"url": SD + "patient-birthPlace", "valueBoolean": True}
    issues = validate(
        patient(birthDate="2000", _birthDate={"extension": [on_primitive]}), registry=reg
    )
    assert found(issues) == [
        ("error", "Patient.birthDate.extension[0]"),  # its context is Patient
        ("error", "Patient.birthDate.extension[0].valueBoolean"),
    ]


def test_discriminator_without_a_slice_value_matches() -> None:
    """A slice that does not constrain the discriminator path takes what is left."""
    reg = registry(
        sd(
            "rr",
            "Observation",
            el(
                "Observation.referenceRange",
                slicing={"discriminator": [{"type": "pattern", "path": "type"}], "rules": "closed"},
            ),
            el("Observation.referenceRange:normal", sliceName="normal", max="1"),
            el("Observation.referenceRange:normal.type", patternCodeableConcept={"text": "normal"}),
            el("Observation.referenceRange:other", sliceName="other"),
        )
    )
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "referenceRange": [{"type": {"text": "normal"}, "text": "a"}, {"text": "b"}],
    }
    assert check(obs, reg, EX + "rr") == []


# --------------------------------------------------------------------------- constraints, references


def test_profile_constraints_are_evaluated() -> None:
    reg = registry(
        sd(
            "inv",
            "Patient",
            el(
                "Patient",
                constraint=[
                    {
                        "key": "p-1",
                        "severity": "error",
                        "human": "a name needs a family",
                        "expression": "name.all(family.exists())",
                    },
                    {
                        "key": "p-2",
                        "severity": "warning",
                        "human": "gender please",
                        "expression": "gender.exists()",
                    },
                ],
            ),
        )
    )
    issues = check(patient(name=[{"given": ["Ada"]}]), reg, EX + "inv")
    assert [(i.severity, i.diagnostics.split(":")[1].strip(), i.expression) for i in issues] == [
        ("error", "p-1", ("Patient",)),
        ("warning", "p-2", ("Patient",)),
    ]


def test_reference_target_profiles() -> None:
    target = sd("named", "Patient", el("Patient.name", min=1))
    reg = registry(
        target,
        sd(
            "obsref",
            "Observation",
            el(
                "Observation.subject", type=[{"code": "Reference", "targetProfile": [EX + "named"]}]
            ),
        ),
    )
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    assert check({**obs, "subject": {"reference": "Patient/1"}}, reg, EX + "obsref") == []
    group = check({**obs, "subject": {"reference": "Group/1"}}, reg, EX + "obsref")
    assert found(group) == [("error", "Observation.subject.reference")]
    contained = {
        **obs,
        "contained": [{"resourceType": "Patient", "id": "p"}],
        "subject": {"reference": "#p"},
    }
    issues = check(contained, reg, EX + "obsref")
    assert "Patient.name: minimum required = 1" in issues[0].diagnostics


def test_must_support_does_not_affect_validity() -> None:
    reg = registry(sd("ms", "Patient", el("Patient.birthDate", mustSupport=True)))
    assert check(patient(), reg, EX + "ms") == []


# --------------------------------------------------------------------------- entry points


def test_meta_profile_unknown_is_a_warning_and_required_profiles_apply() -> None:
    reg = registry(sd("req", "Patient", el("Patient.gender", min=1)))
    res = patient(meta={"profile": ["http://nowhere/StructureDefinition/x"]})
    issues = validate_profiles(res, registry=reg)
    assert found(issues) == [("warning", "Patient.meta.profile")]
    issues = validate_profiles(patient(), registry=reg, required_profiles=[("Patient", EX + "req")])
    assert found(issues) == [("error", "Patient.gender")]
    assert (
        validate_profiles(patient(), registry=reg, required_profiles={"Observation": [EX + "req"]})
        == []
    )
    missing = validate_profiles(
        patient(), registry=reg, required_profiles=[("Patient", EX + "gone")]
    )
    assert found(missing) == [("error", "Patient")]


def test_nested_resources_are_validated_against_their_meta_profile() -> None:
    reg = registry(sd("req", "Patient", el("Patient.gender", min=1)))
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "fullUrl": "urn:uuid:2b1c3f8e-1111-4222-8333-944445555666",
                "resource": patient(meta={"profile": [EX + "req"]}),
            }
        ],
    }
    issues = validate_profiles(bundle, registry=reg)
    assert found(issues) == [("error", "Bundle.entry[0].resource.gender")]


def test_a_profile_for_another_type_is_an_error() -> None:
    reg = registry(sd("obsonly", "Observation", el("Observation.status", min=1)))
    issues = check(patient(), reg, EX + "obsonly")
    assert found(issues) == [("error", "Patient")]
    assert "is for Observation resources" in issues[0].diagnostics


def test_the_demo_clinic_conforms_to_the_rehab_profiles() -> None:
    from pathlib import Path

    from fhir_server import jsonio
    from fhir_server.validation.registry import PROFILES_DIR

    demo = Path(__file__).resolve().parents[2] / "examples" / "demo-clinic.json"
    if not demo.is_file() or not PROFILES_DIR.is_dir():
        pytest.fail("the demo clinic or the profiles directory is missing")
    reg = ProfileRegistry()
    reg.load_directory(PROFILES_DIR)
    bundle = jsonio.loads(demo.read_bytes())
    for entry in bundle["entry"]:
        errors = [i for i in validate(entry["resource"], registry=reg) if i.severity == "error"]
        assert not errors, (entry["resource"]["resourceType"], entry["resource"].get("id"), errors)


def test_extension_context_of_use() -> None:
    reg = registry()
    mothers = {"url": SD + "humanname-mothers-family", "valueString": "Smith"}
    on_family = patient(name=[{"family": "Lovelace", "_family": {"extension": [mothers]}}])
    assert validate(on_family, registry=reg) == []
    on_name = patient(name=[{"family": "Lovelace", "extension": [mothers]}])
    issues = validate(on_name, registry=reg)
    assert found(issues) == [("error", "Patient.name[0].extension[0]")]
    assert "HumanName.family" in issues[0].diagnostics
    # a context naming the resource type, and one naming an ancestor type
    birth_place = {"url": SD + "patient-birthPlace", "valueAddress": {"city": "London"}}
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    assert found(validate({**obs, "extension": [birth_place]}, registry=reg)) == [
        ("error", "Observation.extension[0]")
    ]
    data_absent = {"url": SD + "data-absent-reason", "valueCode": "unknown"}
    assert validate(patient(_birthDate={"extension": [data_absent]}), registry=reg) == []


def test_the_server_terminology_hook() -> None:
    from fhir_server.validation import set_terminology

    reg = registry(
        sd(
            "hook",
            "Patient",
            el("Patient.gender", binding={"strength": "required", "valueSet": "http://x/g"}),
        )
    )
    assert (
        validate(patient(gender="male"), profiles=[EX + "hook"], registry=reg) == []
    )  # unknown VS
    set_terminology(lambda url: {("http://s", "female")} if url == "http://x/g" else None)
    try:
        issues = validate(patient(gender="male"), profiles=[EX + "hook"], registry=reg)
        assert found(issues) == [("error", "Patient.gender")]
    finally:
        set_terminology(None)
