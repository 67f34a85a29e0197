"""The expansion engine, code system model and public functions, on small local
resources (plus a few checks on the shipped ones)."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_server import terminology as tx
from fhir_server.errors import FhirError
from fhir_server.terminology import service
from fhir_server.terminology.expansion import Expander
from fhir_server.terminology.registry import Terminology
from fhir_server.terminology.service import Coding

SYS = "http://example.org/cs/body"

BODY: dict[str, Any] = {
    "resourceType": "CodeSystem",
    "id": "body",
    "url": SYS,
    "version": "1",
    "name": "Body",
    "status": "active",
    "content": "complete",
    "caseSensitive": False,
    "hierarchyMeaning": "is-a",
    "property": [
        {"code": "side", "type": "code"},
        {"code": "weight", "type": "boolean"},
        {"code": "notSelectable", "type": "boolean"},
    ],
    "concept": [
        {
            "code": "limb",
            "display": "Limb",
            "property": [{"code": "notSelectable", "valueBoolean": True}],
            "concept": [
                {
                    "code": "arm",
                    "display": "Arm",
                    "designation": [{"language": "en", "value": "upper limb"}],
                    "concept": [
                        {
                            "code": "arm-l",
                            "display": "Left arm",
                            "property": [{"code": "side", "valueCode": "L"}],
                        },
                        {
                            "code": "arm-r",
                            "display": "Right arm",
                            "property": [{"code": "side", "valueCode": "R"}],
                        },
                    ],
                },
                {
                    "code": "leg",
                    "display": "Leg",
                    "property": [{"code": "weight", "valueBoolean": True}],
                },
            ],
        },
        # a child declared by property rather than nesting
        {"code": "foot", "display": "Foot", "property": [{"code": "parent", "valueCode": "leg"}]},
        {"code": "head", "display": "Head"},
    ],
}


def vs(*includes: dict[str, Any], exclude: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    compose: dict[str, Any] = {"include": list(includes)}
    if exclude:
        compose["exclude"] = exclude
    return {"resourceType": "ValueSet", "status": "active", "compose": compose}


@pytest.fixture
def terminology() -> Terminology:
    return Terminology([BODY])


def codes(t: Terminology, value_set: dict[str, Any]) -> list[str]:
    return [i.code for i in Expander(t).expand(value_set)]


def f(prop: str, op: str, value: str) -> dict[str, Any]:
    return {"system": SYS, "filter": [{"property": prop, "op": op, "value": value}]}


def test_hierarchy_from_nesting_and_parent_property(terminology: Terminology) -> None:
    cs = terminology.code_system(SYS)
    assert cs is not None
    assert cs.descendants("limb") == ["arm", "arm-l", "arm-r", "leg", "foot"]
    assert cs.ancestors("foot") == {"leg", "limb"}
    assert cs.subsumes("limb", "arm-l") == "subsumes"
    assert cs.subsumes("arm-l", "arm") == "subsumed-by"
    assert cs.subsumes("arm", "leg") == "not-subsumed"
    assert cs.subsumes("leg", "leg") == "equivalent"
    assert cs.get("ARM") is not None  # caseSensitive false


@pytest.mark.parametrize(
    ("component", "expected"),
    [
        ({"system": SYS}, ["limb", "arm", "arm-l", "arm-r", "leg", "foot", "head"]),
        (f("concept", "is-a", "arm"), ["arm", "arm-l", "arm-r"]),
        (f("concept", "descendent-of", "arm"), ["arm-l", "arm-r"]),
        (f("concept", "descendant-of", "leg"), ["foot"]),
        (f("concept", "is-not-a", "limb"), ["head"]),
        (f("concept", "generalizes", "foot"), ["limb", "leg", "foot"]),
        (f("concept", "in", "head, leg"), ["leg", "head"]),
        (f("concept", "not-in", "limb,arm,arm-l,arm-r,leg"), ["foot", "head"]),
        (f("code", "regex", "arm-.*"), ["arm-l", "arm-r"]),
        (f("concept", "=", "foot"), ["foot"]),
        (f("display", "regex", ".*arm"), ["arm-l", "arm-r"]),
        (f("display", "=", "Head"), ["head"]),
        (f("side", "=", "L"), ["arm-l"]),
        (f("side", "in", "L,R"), ["arm-l", "arm-r"]),
        (f("side", "not-in", "L"), ["limb", "arm", "arm-r", "leg", "foot", "head"]),
        (f("side", "exists", "true"), ["arm-l", "arm-r"]),
        (f("weight", "=", "true"), ["leg"]),
        (f("side", "regex", "[LR]"), ["arm-l", "arm-r"]),
        (f("concept", "is-a", "unknown"), []),
        (
            {"system": SYS, "concept": [{"code": "head"}, {"code": "nope"}, {"code": "leg"}]},
            ["head", "leg"],
        ),
    ],
)
def test_filters(terminology: Terminology, component: dict[str, Any], expected: list[str]) -> None:
    assert codes(terminology, vs(component)) == expected


def test_filters_are_anded_and_excludes_apply(terminology: Terminology) -> None:
    both = {
        "system": SYS,
        "filter": [
            {"property": "concept", "op": "is-a", "value": "limb"},
            {"property": "side", "op": "=", "value": "R"},
        ],
    }
    assert codes(terminology, vs(both)) == ["arm-r"]
    excluded = vs(
        f("concept", "is-a", "arm"), exclude=[{"system": SYS, "concept": [{"code": "arm"}]}]
    )
    assert codes(terminology, excluded) == ["arm-l", "arm-r"]


def test_value_set_imports_intersect(terminology: Terminology) -> None:
    arms = vs(f("concept", "is-a", "arm")) | {"url": "http://example.org/vs/arms"}
    lefts = vs(f("side", "=", "L")) | {"url": "http://example.org/vs/lefts"}
    t = terminology.overlay([arms, lefts])
    assert codes(t, vs({"valueSet": ["http://example.org/vs/arms"]})) == ["arm", "arm-l", "arm-r"]
    both = vs({"valueSet": ["http://example.org/vs/arms", "http://example.org/vs/lefts"]})
    assert codes(t, both) == ["arm-l"]
    narrowed = vs({"system": SYS, "valueSet": ["http://example.org/vs/lefts"]})
    assert codes(t, narrowed) == ["arm-l"]


@pytest.mark.parametrize(
    ("value_set", "status"),
    [
        (vs({"system": "http://unknown.example"}), 404),
        (vs({"valueSet": ["http://unknown.example/vs"]}), 404),
        (vs(f("concept", "bogus-op", "x")), 400),
        (vs(f("code", "regex", "(")), 400),
        (vs(f("code", "regex", "a" * 300)), 400),
        ({"resourceType": "ValueSet"}, 400),
    ],
)
def test_expansion_errors(terminology: Terminology, value_set: dict[str, Any], status: int) -> None:
    with pytest.raises(FhirError) as err:
        Expander(terminology).expand(value_set)
    assert err.value.status == status


def test_enumerated_codes_of_unknown_systems_are_kept(terminology: Terminology) -> None:
    listed = vs({"system": "http://unknown.example", "concept": [{"code": "x", "display": "X"}]})
    items = Expander(terminology).expand(listed)
    assert [(i.code, i.display) for i in items] == [("x", "X")]


def test_import_cycle_is_reported(terminology: Terminology) -> None:
    a = vs({"valueSet": ["http://example.org/vs/b"]}) | {"url": "http://example.org/vs/a"}
    b = vs({"valueSet": ["http://example.org/vs/a"]}) | {"url": "http://example.org/vs/b"}
    with pytest.raises(FhirError):
        Expander(terminology.overlay([a, b])).expand(a)


def test_expand_paging_text_filter_and_designations(terminology: Terminology) -> None:
    all_codes = vs({"system": SYS})
    page = service.expand(terminology, all_codes, offset=2, count=2)
    assert page["expansion"]["total"] == 7
    assert [c["code"] for c in page["expansion"]["contains"]] == ["arm-l", "arm-r"]
    found = service.expand(terminology, all_codes, text="upper", include_designations=True)
    contains = found["expansion"]["contains"]
    assert [c["code"] for c in contains] == ["arm"]
    assert contains[0]["designation"] == [{"language": "en", "value": "upper limb"}]
    selectable = service.expand(terminology, all_codes, exclude_not_for_ui=True)
    assert "limb" not in [c["code"] for c in selectable["expansion"]["contains"]]
    flagged = service.expand(terminology, all_codes)["expansion"]["contains"][0]
    assert flagged == {
        "system": SYS,
        "abstract": True,
        "version": "1",
        "code": "limb",
        "display": "Limb",
    }


def result(params: dict[str, Any]) -> dict[str, Any]:
    return {
        p["name"]: next(v for k, v in p.items() if k.startswith("value"))
        for p in params["parameter"]
    }


def test_validate_in_value_set(terminology: Terminology) -> None:
    arms = vs(f("concept", "is-a", "limb"))
    ok = result(service.validate_in_value_set(terminology, arms, [Coding(SYS, "arm-l")]))
    assert ok == {"result": True, "display": "Left arm"}
    missing = result(service.validate_in_value_set(terminology, arms, [Coding(SYS, "head")]))
    assert missing["result"] is False and "not in the value set" in missing["message"]
    unknown = result(service.validate_in_value_set(terminology, arms, [Coding(SYS, "tail")]))
    assert "Unknown code" in unknown["message"]
    abstract = result(service.validate_in_value_set(terminology, arms, [Coding(SYS, "limb")]))
    assert abstract["result"] is False and "abstract" in abstract["message"]
    allowed = service.validate_in_value_set(
        terminology, arms, [Coding(SYS, "limb")], abstract_ok=True
    )
    assert result(allowed)["result"] is True
    display = result(
        service.validate_in_value_set(terminology, arms, [Coding(SYS, "arm", "upper LIMB")])
    )
    assert display["result"] is True  # a designation counts
    wrong = result(service.validate_in_value_set(terminology, arms, [Coding(SYS, "arm", "Leg")]))
    assert wrong["result"] is False and "display" in wrong["message"]
    inferred = result(service.validate_in_value_set(terminology, arms, [Coding(None, "leg")]))
    assert inferred["result"] is True
    any_of = [Coding(SYS, "head"), Coding(SYS, "leg")]
    assert result(service.validate_in_value_set(terminology, arms, any_of))["result"] is True


def test_display_mismatch_in_a_fragment_is_a_warning() -> None:
    t = tx.default()
    timed = t.value_set(tx.VS_TIMED)
    assert timed is not None
    out = result(
        service.validate_in_value_set(t, timed, [Coding(tx.CPT, "97110", "Some official wording")])
    )
    assert out["result"] is True and "warning" in out["message"]


def test_lookup_parameters(terminology: Terminology) -> None:
    cs = terminology.code_system(SYS)
    assert cs is not None
    concept = cs.get("arm-l")
    assert concept is not None
    params = service.lookup(cs, concept)["parameter"]
    assert params[0] == {"name": "name", "valueString": "Body"}
    props = {
        (
            p["part"][0]["valueCode"],
            next(v for k, v in p["part"][1].items() if k.startswith("value")),
        )
        for p in params
        if p["name"] == "property"
    }
    assert props == {("side", "L"), ("parent", "arm")}
    only_parent = service.lookup(cs, concept, ["parent"])["parameter"]
    assert [p["part"][0]["valueCode"] for p in only_parent if p["name"] == "property"] == ["parent"]


def test_public_functions() -> None:
    assert tx.is_timed("97110") is True
    assert tx.is_timed("99999") is None
    assert tx.minutes_per_unit("97110", tx.CPT) == 15
    assert tx.minutes_per_unit("G0283") is None
    assert tx.member_of(tx.VS_TIMED, {"system": tx.CPT, "code": "97140"}) is True
    assert tx.member_of(tx.VS_TIMED, {"coding": [{"system": tx.CPT, "code": "97161"}]}) is False
    assert tx.member_of(tx.VS_TIMED, "97530") is True
    assert tx.member_of("http://unknown.example/vs", "x") is None
    assert tx.value_set_membership("http://unknown.example/vs") is None
    assert tx.subsumes(tx.ICD10CM, "I69", "I69.320") == "subsumes"
    assert tx.subsumes(tx.ICD10CM, "I69", "Z99.99") is None
    concept = tx.lookup(tx.DISCIPLINE, "SLP")
    assert concept is not None and concept.display == "Speech-language pathology"
    # the R4 base value sets are there too (codes only)
    gender = tx.value_set_membership("http://hl7.org/fhir/ValueSet/administrative-gender")
    assert gender is not None and ("http://hl7.org/fhir/administrative-gender", "other") in gender


def test_slp_diagnoses_combine_is_a_descendent_of_and_lists() -> None:
    members = tx.value_set_membership(f"{tx.BASE}/ValueSet/slp-diagnoses")
    assert members is not None
    codes_ = {c for _, c in members}
    assert {"R47.01", "R13.12", "R49.0", "F80.1", "I69.320", "R41.841"} <= codes_
    assert "F80" not in codes_ and "R47" not in codes_  # abstract categories
    assert "M54.50" not in codes_


def test_overlay_does_not_change_the_parent(terminology: Terminology) -> None:
    extra = {
        "resourceType": "CodeSystem",
        "url": "http://example.org/cs/extra",
        "status": "active",
        "content": "complete",
        "concept": [{"code": "e"}],
    }
    over = terminology.overlay([extra])
    assert over.code_system("http://example.org/cs/extra") is not None
    assert terminology.code_system("http://example.org/cs/extra") is None
    assert over.code_system(SYS) is terminology.code_system(SYS)
