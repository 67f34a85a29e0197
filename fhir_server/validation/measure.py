"""A MeasureReport checked against its Measure, when the registry knows the Measure
(``MeasureReport.measure``, a canonical; :meth:`ProfileRegistry.measure`).

The report's groups are the Measure's groups: a report group is matched to the
Measure group that shares a code with it (a coding of the same system and code), or,
when it has no code, to the Measure's only group. For a matched group:

* a ``cohort`` Measure (``Measure.scoring``) has no score -- it only identifies a
  population (R4 measure.html, "Scoring": proportion, ratio and continuous-variable
  measures are scored, a cohort is not) -- so the group has no ``measureScore``;
* stratifiers: "when a measure includes multiple stratifiers, there will be a
  stratifier group for each stratifier defined by the measure", tied to it by its
  ``code`` ("the meaning of this stratifier, as defined in the measure definition").
  So every stratifier of the report has a code of one of the Measure group's
  stratifiers, and every stratifier of the Measure group is reported. A stratifier
  the Measure defines without a code cannot be matched: the report cannot include it.

A Measure the registry does not know is not an error here: the report's structure is
still validated, and a server need not hold every Measure it receives reports for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from fhir_server.errors import Issue

__all__ = ["check_measure_report"]

SCORING: Final = "http://terminology.hl7.org/CodeSystem/measure-scoring"

MeasureLookup = Callable[[str], dict[str, Any] | None]


def _codings(concept: Any) -> set[tuple[str, str]]:
    """(system, code) pairs of a CodeableConcept or a list of them."""
    out: set[tuple[str, str]] = set()
    for cc in concept if type(concept) is list else [concept]:
        codings = cc.get("coding") if type(cc) is dict else None
        if type(codings) is not list:
            continue
        for c in codings:
            if (
                type(c) is dict
                and isinstance(c.get("system"), str)
                and isinstance(c.get("code"), str)
            ):
                out.add((c["system"], c["code"]))
    return out


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if type(v) is dict] if type(value) is list else []


def _shown(concept: Any) -> str:
    pairs = sorted(_codings(concept))
    return ", ".join(f"{s}#{c}" for s, c in pairs) or "none"


def _scoring(measure: dict[str, Any]) -> str | None:
    for system, code in _codings(measure.get("scoring")):
        if system == SCORING:
            return code
    return None


def _measure_group(group: dict[str, Any], groups: list[dict[str, Any]]) -> dict[str, Any] | None:
    codes = _codings(group.get("code"))
    if codes:
        return next((g for g in groups if codes & _codings(g.get("code"))), None)
    return groups[0] if len(groups) == 1 else None


def check_measure_report(
    report: dict[str, Any], where: str, measure_of: MeasureLookup
) -> list[Issue]:
    """The rules above for a MeasureReport at ``where``."""
    url = report.get("measure")
    measure = measure_of(url) if isinstance(url, str) else None
    if measure is None:
        return []
    issues: list[Issue] = []
    scoring = _scoring(measure)
    measure_groups = _dicts(measure.get("group"))
    for i, group in enumerate(_dicts(report.get("group"))):
        at = f"{where}.group[{i}]"
        if scoring == "cohort" and "measureScore" in group:
            issues.append(
                Issue(
                    "error",
                    "business-rule",
                    f"the Measure {url} is a cohort measure (scoring 'cohort'), which has no "
                    "score: the group has no measureScore",
                    (f"{at}.measureScore",),
                )
            )
        definition = _measure_group(group, measure_groups)
        if definition is not None:
            issues += _stratifiers(group, definition, at, url)
    return issues


def _stratifiers(
    group: dict[str, Any], definition: dict[str, Any], at: str, url: Any
) -> list[Issue]:
    defined = _dicts(definition.get("stratifier"))
    reported = _dicts(group.get("stratifier"))
    issues: list[Issue] = []
    defined_codes = [_codings(s.get("code")) for s in defined]
    for j, stratifier in enumerate(reported):
        codes = _codings(stratifier.get("code"))
        if not any(codes & d for d in defined_codes):
            issues.append(
                Issue(
                    "error",
                    "business-rule",
                    f"the stratifier's code ({_shown(stratifier.get('code'))}) is not the code "
                    f"of a stratifier of the matching group of the Measure {url}",
                    (f"{at}.stratifier[{j}]",),
                )
            )
    reported_codes = [_codings(s.get("code")) for s in reported]
    for stratifier, codes in zip(defined, defined_codes, strict=True):
        if not any(codes & r for r in reported_codes):
            sid = stratifier.get("id")
            issues.append(
                Issue(
                    "error",
                    "business-rule",
                    f"the group has no stratifier for the Measure's stratifier with code "
                    f"{_shown(stratifier.get('code'))}"
                    + (f" (id '{sid}')" if isinstance(sid, str) else ""),
                    (at,),
                )
            )
    return issues
