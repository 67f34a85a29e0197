"""A MeasureReport against its Measure (fhir_server.validation.measure), when the
registry knows the Measure."""

from __future__ import annotations

import copy
from typing import Any

from fhir_server.validation import validate
from fhir_server.validation.measure import check_measure_report
from fhir_server.validation.registry import ProfileRegistry

URL = "http://example.org/fhir/Measure/m"
CODES = "http://example.org/fhir/CodeSystem/codes"


def cc(code: str) -> dict[str, Any]:
    return {"coding": [{"system": CODES, "code": code}]}


def measure(scoring: str, *, stratifiers: tuple[str | None, ...] = ()) -> dict[str, Any]:
    group: dict[str, Any] = {"code": cc("g1")}
    if stratifiers:
        group["stratifier"] = [
            {"id": f"s{i}", **({"code": cc(code)} if code else {})}
            for i, code in enumerate(stratifiers)
        ]
    return {
        "resourceType": "Measure",
        "url": URL,
        "status": "active",
        "scoring": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/measure-scoring", "code": scoring}
            ]
        },
        "group": [group, {"code": cc("g2")}],
    }


def report(*groups: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "MeasureReport",
        "status": "complete",
        "type": "summary",
        "measure": URL,
        "period": {"start": "2024-01-01", "end": "2024-12-31"},
        "group": list(groups),
    }


def found(rep: dict[str, Any], m: dict[str, Any] | None) -> list[str]:
    return [i.expression[0] for i in check_measure_report(rep, "MeasureReport", lambda _: m)]


def test_a_cohort_has_no_score() -> None:
    rep = report({"code": cc("g1"), "measureScore": {"value": 10}})
    assert found(rep, measure("cohort")) == ["MeasureReport.group[0].measureScore"]
    assert found(rep, measure("proportion")) == []
    assert found(rep, None) == []  # an unknown Measure: nothing to check against
    del rep["group"][0]["measureScore"]
    assert found(rep, measure("cohort")) == []


def test_stratifiers_match_the_measure_groups_by_code() -> None:
    m = measure("proportion", stratifiers=("age", "sex"))
    good = report({"code": cc("g1"), "stratifier": [{"code": [cc("sex")]}, {"code": [cc("age")]}]})
    assert found(good, m) == []
    bad = report({"code": cc("g1"), "stratifier": [{"code": [cc("sex")]}, {"code": [cc("zip")]}]})
    # zip is no stratifier of g1, and age is not reported
    assert found(bad, m) == ["MeasureReport.group[0].stratifier[1]", "MeasureReport.group[0]"]
    # a report group is matched by code: g2 defines no stratifiers
    other = report({"code": cc("g2"), "stratifier": [{"code": [cc("age")]}]})
    assert found(other, m) == ["MeasureReport.group[0].stratifier[0]"]
    # a group matching no Measure group is not compared
    assert found(report({"code": cc("g9"), "stratifier": [{"code": [cc("x")]}]}), m) == []


def test_a_stratifier_without_code_cannot_be_matched() -> None:
    m = measure("cohort", stratifiers=(None,))
    m["group"] = m["group"][:1]
    rep = report({"stratifier": [{"id": "s0", "stratum": [{"value": {"text": "a"}}]}]})
    # the report group has no code, and the Measure one group: they are matched
    assert found(rep, m) == ["MeasureReport.group[0].stratifier[0]", "MeasureReport.group[0]"]


def test_measure_reports_are_checked_through_validate() -> None:
    registry = ProfileRegistry()
    registry.add(measure("cohort"))
    rep = report({"code": cc("g1"), "measureScore": {"value": 1}})
    errors = [i for i in validate(rep, registry=registry) if i.severity == "error"]
    assert [i.expression[0] for i in errors] == ["MeasureReport.group[0].measureScore"]
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": rep}]}
    errors = [i for i in validate(bundle, registry=registry) if i.severity == "error"]
    assert [i.expression[0] for i in errors] == ["Bundle.entry[0].resource.group[0].measureScore"]
    assert [
        i for i in validate(copy.deepcopy(rep), registry=ProfileRegistry()) if i.severity == "error"
    ] == []
