"""The validation policies beyond the specification (fhir_server.validation.options):
the detectors they use, and their effect through validate() -- off by default, as on
writes."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_server.errors import Issue
from fhir_server.validation import ValidationOptions, validate, validate_profiles
from fhir_server.validation.options import (
    extension_allowed,
    html_tag_in_markdown,
    html_tag_in_string,
    is_example_url,
)
from fhir_server.validation.registry import ProfileRegistry


def errors(resource: dict[str, Any], **options: Any) -> list[tuple[str, str]]:
    issues = validate(resource, registry=ProfileRegistry(), options=ValidationOptions(**options))
    return [(i.expression[0], i.diagnostics) for i in issues if i.severity == "error"]


def error_places(resource: dict[str, Any], **options: Any) -> list[str]:
    return [where for where, _ in errors(resource, **options)]


# --------------------------------------------------------------------------- detectors


@pytest.mark.parametrize(
    ("text", "tag"),
    [
        ("Standard <script>somescript</script>", "<script>"),
        ("a <b>bold</b> name", "<b>"),
        ('<img src="x" onerror="alert(1)">', '<img src="x" onerror="alert(1)">'),
        ("line<br/>break", "<br/>"),
        ("end </div>", "</div>"),
        ("5 < 6 and 7 > 3", None),
        ("<5 mg", None),
        ("a<b", None),
        ("mail <jo@example.org>", None),
        ("see <http://hl7.org>", None),
        ("plain", None),
    ],
)
def test_html_tags_in_strings(text: str, tag: str | None) -> None:
    assert html_tag_in_string(text) == tag


@pytest.mark.parametrize(
    ("text", "tag"),
    [
        ("<resource type>\\<id>", "<resource type>"),
        ("\\<resource type>", None),  # escaped
        ("use `<div>` for blocks", None),  # a code span
        ("use ``a `<div>` b`` here", None),
        ("text\n\n```\n<div>\n```\nafter", None),  # a fenced code block
        ("text\n\n    <div>code</div>\n", None),  # an indented code block
        ("text\n    <div>not code</div>", "<div>"),  # no blank line before: a paragraph
        ("an autolink <http://hl7.org/fhir>", None),
        ("**bold** and <em>html</em>", "<em>"),
        ("x < y", None),
    ],
)
def test_html_tags_in_markdown(text: str, tag: str | None) -> None:
    assert html_tag_in_markdown(text) == tag


@pytest.mark.parametrize(
    ("url", "example"),
    [
        ("http://example.org/fhir/x", True),
        ("http://repository.example.org/fhir/DocumentReference/1", True),
        ("https://EXAMPLE.com", True),
        ("http://www.example.net/a", True),
        ("http://server.example/a", True),
        ("http://example.organization.com/a", False),
        ("http://myexample.org/a", False),
        ("http://hl7.org/fhir/example", False),
        ("urn:uuid:6b2b7e3a-3c4d-4f5e-8a9b-0c1d2e3f4a5b", False),
        ("http://[bad", False),
    ],
)
def test_example_urls(url: str, example: bool) -> None:
    assert is_example_url(url) is example


def test_which_unknown_extensions_are_allowed() -> None:
    strict = ValidationOptions(unknown_extensions="error")
    assert extension_allowed("http://other.org/ext", ValidationOptions())
    assert not extension_allowed("http://other.org/ext", strict)
    # HL7's core namespace and cross-version extensions
    assert extension_allowed("http://hl7.org/fhir/StructureDefinition/organization-brand", strict)
    assert extension_allowed(
        "http://hl7.org/fhir/5.0/StructureDefinition/extension-DeviceRequest.doNotPerform", strict
    )
    assert not extension_allowed("http://hl7.org/fhir/uv/sdc/StructureDefinition/x", strict)
    # example URLs, unless example URLs are not allowed
    assert extension_allowed("http://example.org/fhir/StructureDefinition/x", strict)
    no_examples = ValidationOptions(unknown_extensions="error", example_urls=False)
    assert not extension_allowed("http://example.org/fhir/StructureDefinition/x", no_examples)
    # allowed domains
    nhs = ValidationOptions(
        unknown_extensions="error", allowed_extension_domains=("https://fhir.nhs.uk/",)
    )
    assert extension_allowed("https://fhir.nhs.uk/StructureDefinition/Extension-x", nhs)
    assert not extension_allowed("https://fhir.nhs.net/StructureDefinition/Extension-x", nhs)


# --------------------------------------------------------------------------- through validate()


def test_security_checks_reject_html_in_strings_only() -> None:
    patient = {
        "resourceType": "Patient",
        "name": [{"text": "Standard <script>somescript</script>"}],
        "extension": [{"url": "http://example.org/e", "valueString": "<b>x</b>"}],
    }
    assert errors(patient) == []
    assert error_places(patient, security_checks=True) == [
        "Patient.name[0].text",
        "Patient.extension[0].valueString",
    ]
    assert "HTML tag (<script>)" in errors(patient, security_checks=True)[0][1]
    # markdown is not a string: not a security-check matter
    comm = {"resourceType": "Communication", "status": "completed", "note": [{"text": "<b>x</b>"}]}
    assert errors(comm, security_checks=True) == []


def test_html_in_markdown_can_be_an_error() -> None:
    comm = {
        "resourceType": "Communication",
        "status": "completed",
        "note": [{"text": "<resource type>\\<id>"}, {"text": "`<code>` and \\<id>"}],
    }
    assert errors(comm) == []
    found = errors(comm, html_in_markdown=False)
    assert [where for where, _ in found] == ["Communication.note[0].text"]
    assert "<resource type>" in found[0][1]


def test_example_urls_can_be_errors() -> None:
    doc = {
        "resourceType": "DocumentReference",
        "status": "current",
        "content": [
            {"attachment": {"url": "http://repository.example.org/fhir/DocumentReference/1"}}
        ],
    }
    assert errors(doc) == []
    assert error_places(doc, example_urls=False) == ["DocumentReference.content[0].attachment.url"]
    doc["content"][0]["attachment"]["url"] = "http://repository.hospital.org/fhir/Binary/1"
    assert errors(doc, example_urls=False) == []


def test_unknown_extensions_are_accepted_by_default_and_on_writes() -> None:
    patient = {
        "resourceType": "Patient",
        "_birthDate": {"extension": [{"url": "http://other.org/age", "valueInteger": 45}]},
        "birthDate": "1975",
    }
    assert errors(patient) == []
    reg = ProfileRegistry()
    assert [i for i in validate_profiles(patient, registry=reg) if i.severity == "error"] == []


def test_unknown_extensions_can_be_errors_anywhere() -> None:
    qr = {
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "_authored": {"extension": [{"url": "http://other.org/a", "valueInteger": 1}]},
        "authored": "2024",
        "contained": [
            {
                "resourceType": "Patient",
                "id": "p",
                "modifierExtension": [{"url": "http://other.org/m", "valueBoolean": True}],
            }
        ],
        "subject": {"reference": "#p"},
        "extension": [
            {
                # unknown complex extension: its relative sub-extension urls are its own
                "url": "http://other.org/complex",
                "extension": [
                    {"url": "part", "valueString": "x"},
                    {"url": "http://other.org/inner", "valueString": "y"},
                ],
            },
            # known (core) extension, and one in HL7's core namespace beyond R4
            {
                "url": "http://hl7.org/fhir/StructureDefinition/workflow-episodeOfCare",
                "valueReference": {"reference": "EpisodeOfCare/1"},
            },
            {"url": "http://hl7.org/fhir/StructureDefinition/not-in-r4", "valueString": "z"},
        ],
    }
    found = dict(errors(qr, unknown_extensions="error"))
    assert sorted(found) == [
        "QuestionnaireResponse.authored.extension[0]",
        "QuestionnaireResponse.contained[0].modifierExtension[0]",
        "QuestionnaireResponse.extension[0]",
        "QuestionnaireResponse.extension[0].extension[1]",
    ]
    assert "http://other.org/complex is unknown" in found["QuestionnaireResponse.extension[0]"]
    allowed = errors(
        qr, unknown_extensions="error", allowed_extension_domains=("http://other.org/",)
    )
    assert allowed == []


def test_contained_resources_can_be_left_unvalidated() -> None:
    """validate_contained=False: contained content (structure, invariants inside,
    profiles, extensions) and dom-3 are not checked; the container's rules are."""
    condition = {
        "resourceType": "Condition",
        "subject": {"reference": "Patient/1"},
        "contained": [
            {
                "resourceType": "Practitioner",
                "id": "x" * 65,  # not a valid id
                "gender": "banana",
                "name": [{"family": "P", "period": {"start": "2020", "end": "2019"}}],
                "modifierExtension": [{"url": "http://other.org/m", "valueBoolean": True}],
            },
            {"resourceType": "Organization", "id": "o"},  # not referenced: dom-3
        ],
    }
    assert sorted(error_places(condition, unknown_extensions="error")) == [
        "Condition.contained[0].gender",
        "Condition.contained[0].id",
    ]
    no_structure = {**condition, "contained": [{**condition["contained"][0], "id": "p"}]}
    del no_structure["contained"][0]["gender"]
    found = error_places(no_structure, unknown_extensions="error")
    assert "Condition.contained[0].name[0].period" in found  # per-1
    assert "Condition.contained[0]" in found  # dom-3
    assert "Condition.contained[0].modifierExtension[0]" in found
    lax = {"unknown_extensions": "error", "validate_contained": False}
    assert errors(condition, **lax) == []
    assert errors(no_structure, **lax) == []
    # still the container's: a known resource type, dom-2/4/5, #id references (ref-1)
    bad = {
        **condition,
        "subject": {"reference": "#nowhere"},
        "contained": [
            {"resourceType": "Banana"},
            {"resourceType": "Patient", "id": "p", "meta": {"versionId": "1"}},
        ],
    }
    assert sorted(error_places(bad, **lax)) == [
        "Condition.contained[0].resourceType",
        "Condition.contained[1].meta.versionId",
        "Condition.subject.reference",
    ]


def test_default_options_are_the_shared_plain_checkers() -> None:
    """The default options add no work to primitive checks (the write path)."""
    from fhir_server.validation import structure

    assert structure._Walker().checkers is structure._checkers
    assert structure._Walker(ValidationOptions(unknown_extensions="error")).checkers is (
        structure._checkers
    )
    assert structure._Walker(ValidationOptions(security_checks=True)).checkers is not (
        structure._checkers
    )


def test_policy_errors_are_issues_with_an_expression() -> None:
    issues: list[Issue] = validate(
        {"resourceType": "Patient", "name": [{"text": "<i>x</i>"}]},
        options=ValidationOptions(security_checks=True),
    )
    assert [(i.severity, i.code, i.expression) for i in issues] == [
        ("error", "invalid", ("Patient.name[0].text",))
    ]
