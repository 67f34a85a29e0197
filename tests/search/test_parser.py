"""The query parser: the IR expected for each parameter type, modifier and prefix."""

from __future__ import annotations

import pytest

from fhir_server.errors import FhirError
from fhir_server.search import values
from fhir_server.search.parser import parse
from fhir_server.search.query import (
    ChainCond,
    CompositeCond,
    DateCond,
    HasCond,
    IdCond,
    Include,
    MissingCond,
    NumberCond,
    Param,
    ReferenceCond,
    SortKey,
    StringCond,
    TokenCond,
    UriCond,
)

BASE = "http://example.org/fhir"
NOW = values.date_range("2020-01-01T00:00:00Z")[0]  # type: ignore[index]


def one(resource_type: str | None, name: str, value: str) -> object:
    q = parse(resource_type, [(name, value)], base_url=BASE, strict=True, now_us=NOW)
    assert len(q.clauses) == 1 and len(q.clauses[0]) == 1, q.clauses
    return q.clauses[0][0]


def P(code: str, type_: str, *types: str) -> Param:
    return Param(code, type_, types)


# --------------------------------------------------------------------------- strings


def test_string_default_is_normalised_prefix() -> None:
    assert one("Patient", "name", "Zoë") == StringCond(P("name", "string", "Patient"), "zoe")


def test_string_exact_and_contains() -> None:
    assert one("Patient", "name:exact", "Zoë") == StringCond(
        P("name", "string", "Patient"), "Zoë", "exact"
    )
    assert one("Patient", "family:contains", "ALM") == StringCond(
        P("family", "string", "Patient"), "alm", "contains"
    )


def test_comma_is_or_and_repetition_is_and() -> None:
    q = parse("Patient", [("name", "a,b"), ("name", "c")], strict=True)
    name = P("name", "string", "Patient")
    assert q.clauses == (
        (StringCond(name, "a"), StringCond(name, "b")),
        (StringCond(name, "c"),),
    )


def test_escaped_separators() -> None:
    q = parse("Patient", [("name", r"a\,b,c\\")], strict=True)
    name = P("name", "string", "Patient")
    assert q.clauses == ((StringCond(name, "a,b"), StringCond(name, "c\\")),)
    tok = one("Patient", "identifier", r"http://x\|y|12\,3")
    assert tok == TokenCond(P("identifier", "token", "Patient"), "http://x|y", "12,3")


# --------------------------------------------------------------------------- tokens


@pytest.mark.parametrize(
    ("value", "system", "code"),
    [
        ("male", None, "male"),
        (
            "http://hl7.org/fhir/administrative-gender|male",
            "http://hl7.org/fhir/administrative-gender",
            "male",
        ),
        ("|male", "", "male"),
        (
            "http://hl7.org/fhir/administrative-gender|",
            "http://hl7.org/fhir/administrative-gender",
            None,
        ),
    ],
)
def test_token_forms(value: str, system: str | None, code: str | None) -> None:
    assert one("Patient", "gender", value) == TokenCond(
        P("gender", "token", "Patient"), system, code
    )


def test_token_modifiers() -> None:
    gender = P("gender", "token", "Patient")
    assert one("Patient", "gender:not", "male") == TokenCond(gender, None, "male", negate=True)
    code = P("code", "token", "Observation")
    assert one("Observation", "code:text", "Body Wéight") == TokenCond(
        code, None, None, text="body weight"
    )
    assert one("Patient", "identifier:of-type", "http://t|MR|123") == TokenCond(
        P("identifier:of-type", "token", "Patient"), "http://t", "MR|123"
    )


def test_id_and_missing() -> None:
    assert one("Patient", "_id", "a,b") == IdCond(("a", "b"))
    assert one("Patient", "birthdate:missing", "true") == MissingCond(
        P("birthdate", "date", "Patient"), True
    )


# --------------------------------------------------------------------------- references


def test_reference_forms() -> None:
    subject = P("subject", "reference", "Observation")
    assert one("Observation", "subject", "Patient/1") == ReferenceCond(subject, "Patient", "1")
    assert one("Observation", "subject", f"{BASE}/Patient/1") == ReferenceCond(
        subject, "Patient", "1"
    )
    assert one("Observation", "subject", "http://other/fhir/Patient/1") == ReferenceCond(
        subject, url="http://other/fhir/Patient/1"
    )
    assert one("Observation", "subject", "Patient/1/_history/2") == ReferenceCond(
        subject, "Patient", "1", version="2"
    )
    assert one("Observation", "subject", "1") == ReferenceCond(subject, None, "1")
    assert one("Observation", "subject:Patient", "1") == ReferenceCond(subject, "Patient", "1")
    # a parameter with a single target type implies it
    org = P("organization", "reference", "Patient")
    assert one("Patient", "organization", "1") == ReferenceCond(org, "Organization", "1")


def test_reference_identifier_and_canonical() -> None:
    subject = P("subject", "reference", "Observation")
    assert one("Observation", "subject:identifier", "http://s|v") == ReferenceCond(
        subject, identifier_system="http://s", identifier_value="v", by_identifier=True
    )
    q = P("questionnaire", "reference", "QuestionnaireResponse")
    assert one("QuestionnaireResponse", "questionnaire", "http://q/Questionnaire/x|2.0") == (
        ReferenceCond(q, url="http://q/Questionnaire/x", version="2.0")
    )


# --------------------------------------------------------------------------- dates


def test_date_precision_ranges() -> None:
    birth = P("birthdate", "date", "Patient")
    year = values.date_range("2013")
    assert year is not None
    assert one("Patient", "birthdate", "2013") == DateCond(birth, "eq", *year)
    assert one("Patient", "birthdate", "ge2013-01") == DateCond(
        birth,
        "ge",
        *values.date_range("2013-01"),  # type: ignore[misc]
    )
    lo, hi = values.date_range("2013-01-02T10:00:00+02:00")  # type: ignore[misc]
    assert hi - lo == 999_999
    assert lo == values.date_range("2013-01-02T08:00:00Z")[0]  # type: ignore[index]


@pytest.mark.parametrize("prefix", ["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"])
def test_date_prefixes(prefix: str) -> None:
    cond = one("Patient", "birthdate", f"{prefix}2013-01-02")
    assert isinstance(cond, DateCond) and cond.prefix == prefix


def test_date_ap_widens_by_a_tenth_of_the_distance_to_now() -> None:
    cond = one("Patient", "birthdate", "ap2010-01-01")
    assert isinstance(cond, DateCond)
    lo, hi = values.date_range("2010-01-01")  # type: ignore[misc]
    assert cond.lo < lo and cond.hi > hi
    assert abs((lo - cond.lo) - (NOW - (lo + hi) // 2) // 10) <= 1


# --------------------------------------------------------------------------- numbers, quantities


def test_number_precision() -> None:
    cond = one("RiskAssessment", "probability", "100")
    assert cond == NumberCond(
        P("probability", "number", "RiskAssessment"), "eq", 100.0, 99.5, 100.5
    )
    cond = one("RiskAssessment", "probability", "gt0.80")
    assert isinstance(cond, NumberCond)
    assert (cond.prefix, cond.lo, cond.hi) == ("gt", 0.795, 0.805)


def test_quantity_forms() -> None:
    vq = P("value-quantity", "quantity", "Observation")
    assert one("Observation", "value-quantity", "5.4|http://unitsofmeasure.org|mg") == NumberCond(
        vq, "eq", 5.4, 5.35, 5.45, "http://unitsofmeasure.org", "mg"
    )
    assert one("Observation", "value-quantity", "le5.4||mg") == NumberCond(
        vq, "le", 5.4, 5.35, 5.45, None, "mg"
    )
    assert one("Observation", "value-quantity", "5.4") == NumberCond(vq, "eq", 5.4, 5.35, 5.45)


# --------------------------------------------------------------------------- uri, composite


def test_uri_modifiers() -> None:
    url = P("url", "uri", "ValueSet")
    assert one("ValueSet", "url", "http://a/b") == UriCond(url, "http://a/b")
    assert one("ValueSet", "url:below", "http://a") == UriCond(url, "http://a", "below")
    assert one("ValueSet", "url:above", "http://a/b/c") == UriCond(url, "http://a/b/c", "above")


def test_composite() -> None:
    cond = one("Observation", "code-value-quantity", "http://loinc.org|8480-6$gt150")
    assert isinstance(cond, CompositeCond)
    token, quantity = cond.components
    assert token == TokenCond(
        P("code-value-quantity#0", "token", "Observation"), "http://loinc.org", "8480-6"
    )
    assert isinstance(quantity, NumberCond)
    assert (quantity.param.code, quantity.prefix, quantity.value) == (
        "code-value-quantity#1",
        "gt",
        150.0,
    )


# --------------------------------------------------------------------------- chains, _has


def test_chain() -> None:
    cond = one("Observation", "subject:Patient.name", "peter")
    assert cond == ChainCond(
        P("subject", "reference", "Observation"),
        ("Patient",),
        (StringCond(P("name", "string", "Patient"), "peter"),),
    )


def test_multi_level_chain() -> None:
    cond = one("Observation", "patient.organization.name", "acme")
    assert isinstance(cond, ChainCond) and cond.target_types == ("Patient",)
    inner = cond.inner[0]
    assert isinstance(inner, ChainCond) and inner.target_types == ("Organization",)
    assert inner.inner == (StringCond(P("name", "string", "Organization"), "acme"),)


def test_has() -> None:
    cond = one("Patient", "_has:Observation:patient:code", "1234-5")
    assert cond == HasCond(
        "Observation",
        P("patient", "reference", "Observation"),
        (TokenCond(P("code", "token", "Observation"), None, "1234-5"),),
    )


# --------------------------------------------------------------------------- result parameters


def test_result_parameters() -> None:
    q = parse(
        "Observation",
        [
            ("_sort", "-date,_id"),
            ("_count", "5000"),
            ("_total", "none"),
            ("_include", "Observation:subject:Patient"),
            ("_revinclude:iterate", "Provenance:target"),
            ("_summary", "true"),
            ("_elements", "status,code"),
        ],
        strict=True,
    )
    assert q.sort == (
        SortKey(P("date", "date", "Observation"), True),
        SortKey(P("_id", "special", "Observation"), False),
    )
    assert q.count == 1000
    assert q.total == "none"
    assert q.includes == (
        Include(
            "Observation", "subject", "Patient", params=(P("subject", "reference", "Observation"),)
        ),
        Include(
            "Provenance",
            "target",
            None,
            reverse=True,
            iterate=True,
            params=(P("target", "reference", "Provenance"),),
        ),
    )
    assert (q.summary, q.elements) == ("true", ("status", "code"))


def test_system_search_with_type() -> None:
    q = parse(None, [("_type", "Patient,Observation"), ("_tag", "a|b")], strict=True)
    assert q.resource_types == ("Patient", "Observation")
    assert q.clauses == ((TokenCond(P("_tag", "token", "Patient", "Observation"), "a", "b"),),)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("nonsense", "1"),
        ("birthdate", "not-a-date"),
        ("name:nonsense", "x"),
        ("gender:in", "http://vs"),
        ("subject", "NotAType/1"),
        ("_count", "-1"),
        ("_sort", "nonsense"),
        ("code-value-quantity", "only-one-part"),
        ("_text", "--"),  # no word
    ],
)
def test_strict_mode_rejects_with_the_parameter_named(name: str, value: str) -> None:
    rtype = "Observation" if name.startswith(("subject", "code-value")) else "Patient"
    with pytest.raises(FhirError) as err:
        parse(rtype, [(name, value)], strict=True)
    assert err.value.status == 400
    assert err.value.issues[0].expression == (name,)


def test_lenient_mode_ignores_and_reports() -> None:
    q = parse("Patient", [("nonsense", "1"), ("name", "x"), ("birthdate", "bad")])
    assert q.ignored == ("nonsense", "birthdate")
    assert q.params == (("name", "x"),)
    assert [w.severity for w in q.warnings] == ["warning", "warning"]
    assert len(q.clauses) == 1
