"""The validation entry points: everything a write, ``$validate`` or the CLI asks for.

* :func:`validate` -- the R4 base definitions (structure, :mod:`.structure`), their
  invariants (:mod:`.invariants`) and profiles: the ones named by the caller, the
  resource's ``meta.profile`` and the ones required for its type;
* :func:`validate_profiles` -- only the profile part, for the write path (which has
  already run the base validation): every ``meta.profile`` the registry knows (an
  unknown one is a warning), the required profiles of the type, and the same for the
  resources nested in it (contained, Bundle entries); the ``global`` profiles of the
  ImplementationGuides the registry holds apply to every resource of their type; a
  QuestionnaireResponse is also
  checked against its Questionnaire (:mod:`.questionnaire`; an unknown one is a
  warning), as a Questionnaire is a profile of the answers, and a MeasureReport
  against its Measure when the registry knows it (:mod:`.measure`); SearchParameters and
  CapabilityStatements are checked against the search parameters they derive from or
  name (:mod:`.conformance`).

Issues are de-duplicated (a problem found through two profiles is reported once) and
keep their order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from fhir_server.errors import Issue, has_errors
from fhir_server.validation import structure
from fhir_server.validation.authoring import check_structure_definition
from fhir_server.validation.conformance import check_conformance
from fhir_server.validation.invariants import check_invariants
from fhir_server.validation.measure import check_measure_report
from fhir_server.validation.options import DEFAULT, ValidationOptions
from fhir_server.validation.profile import ProfileValidator, iter_nested_resources
from fhir_server.validation.questionnaire import validate_response
from fhir_server.validation.references import check_parameters
from fhir_server.validation.registry import ProfileRegistry, canonical, default_registry
from fhir_server.validation.signatures import check_signature
from fhir_server.validation.valuesets import TerminologyLookup, chain

__all__ = [
    "RequiredProfiles",
    "ValidationOptions",
    "dedupe",
    "set_terminology",
    "terminology",
    "validate",
    "validate_profiles",
]

Mode = Literal["create", "update", "delete"]
# (resource type, profile URL) pairs, or a mapping type -> URLs
RequiredProfiles = Iterable[tuple[str, str]] | Mapping[str, Sequence[str]]


_terminology: TerminologyLookup | None = None


def set_terminology(lookup: TerminologyLookup | None) -> None:
    """The server's terminology for binding checks when a caller passes no ``lookup``
    (the application wires its terminology service here at start-up); value sets it
    does not know fall back to the registry's (its ValueSets, the base definitions')."""
    global _terminology
    _terminology = lookup


def terminology() -> TerminologyLookup | None:
    """The lookup set by :func:`set_terminology`, if any."""
    return _terminology


def dedupe(issues: Iterable[Issue]) -> list[Issue]:
    seen: set[Issue] = set()
    out: list[Issue] = []
    for i in issues:
        if i not in seen:
            seen.add(i)
            out.append(i)
    return out


def _required_for(resource_type: str, required: RequiredProfiles) -> list[str]:
    if isinstance(required, Mapping):
        return [str(u) for u in required.get(resource_type, ())]
    return [url for rt, url in required if rt == resource_type]


def _meta_profiles(resource: dict[str, Any]) -> list[str]:
    meta = resource.get("meta")
    if not isinstance(meta, dict):
        return []
    profiles = meta.get("profile")
    if not isinstance(profiles, list):
        return []
    return [p for p in profiles if isinstance(p, str)]


def validate_profiles(
    resource: dict[str, Any],
    *,
    profiles: Sequence[str] = (),
    required_profiles: RequiredProfiles = (),
    registry: ProfileRegistry | None = None,
    lookup: TerminologyLookup | None = None,
    meta_profiles: bool = True,
    options: ValidationOptions = DEFAULT,
) -> list[Issue]:
    """Validate a resource against its profiles.

    Extensions whose definition the registry knows are validated against it wherever
    they are. The profiles are ``profiles`` (asked for by the caller: unknown is an error), the
    ``meta.profile`` entries (unknown: a warning, as a server may not know every
    profile a client claims) and ``required_profiles`` for the resource's type
    (unknown: an error, it is a server configuration mistake); then the same, without
    ``profiles``, for every nested resource."""
    reg = registry or default_registry()
    external = lookup or _terminology
    validator = ProfileValidator(
        reg, chain(external, reg.value_set_codes) if external is not None else None, options
    )
    issues: list[Issue] = []
    rt = resource.get("resourceType")
    if not isinstance(rt, str):
        return issues
    _one(validator, resource, rt, profiles, required_profiles, meta_profiles, issues)
    issues += check_conformance(resource, rt)
    if rt == "StructureDefinition":
        issues += check_structure_definition(resource, rt, reg)
    elif rt == "Bundle" and "signature" in resource:
        issues += check_signature(resource, rt)
    if rt == "Parameters" and options.resolve_references:
        issues += check_parameters(resource, rt)
    responses = [(resource, rt)] if rt == "QuestionnaireResponse" else []
    reports = [(resource, rt)] if rt == "MeasureReport" else []
    # only Bundle.entry.resource, Bundle.entry.response.outcome, Parameters.parameter
    # .resource and contained hold resources in R4 (checked by a test): skip the walk
    nested_possible = rt in ("Bundle", "Parameters") or "contained" in resource
    for nested, where in iter_nested_resources(resource, rt) if nested_possible else ():
        nrt = nested.get("resourceType")
        if not options.validate_contained and ".contained[" in where:
            continue  # contained resources are opaque (options.validate_contained)
        if isinstance(nrt, str):
            _one(validator, nested, where, (), required_profiles, meta_profiles, issues)
            issues += check_conformance(nested, where)
            if nrt == "StructureDefinition":
                issues += check_structure_definition(nested, where, reg)
            elif nrt == "Bundle" and "signature" in nested:
                issues += check_signature(nested, where)
            if nrt == "QuestionnaireResponse":
                responses.append((nested, where))
            elif nrt == "MeasureReport":
                reports.append((nested, where))
    if _has_extensions(resource):
        issues += validator.extensions(resource, rt)
    for report, where in reports:
        issues += check_measure_report(report, where, reg.measure)
    for response, where in responses:
        issues += validate_response(
            response,
            where,
            questionnaire=reg.questionnaire,
            value_set_codes=validator.lookup,
            knows_value_set=reg.knows_value_set,
            expand=reg.expand,
            definition_type=reg.definition_type,
        )
    return dedupe(issues)


def _has_extensions(value: Any) -> bool:
    """Whether an ``extension`` or ``modifierExtension`` appears anywhere in ``value``: a
    plain key scan, far cheaper than the path-tracking walk that validates them."""
    if type(value) is dict:
        if "extension" in value or "modifierExtension" in value:
            return True
        items: Any = value.values()
    elif type(value) is list:
        items = value
    else:
        return False
    for v in items:  # noqa: SIM110 - a loop: no generator per level
        if (type(v) is dict or type(v) is list) and _has_extensions(v):
            return True
    return False


def _one(
    validator: ProfileValidator,
    resource: dict[str, Any],
    where: str,
    asked: Sequence[str],
    required: RequiredProfiles,
    meta_profiles: bool,
    issues: list[Issue],
) -> None:
    rt = str(resource.get("resourceType"))
    done: set[str] = set()
    wanted: list[tuple[str, str]] = [(u, "asked") for u in asked]
    if meta_profiles:
        wanted += [(u, "meta") for u in _meta_profiles(resource)]
    wanted += [(u, "required") for u in _required_for(rt, required)]
    wanted += [(u, "global " + ig) for u, ig in validator.registry.global_profiles(rt)]
    for url, why in wanted:
        key = canonical(url)
        if key in done:
            continue
        done.add(key)
        if not validator.registry.knows(url):
            if why == "meta":
                issues.append(
                    Issue(
                        "warning",
                        "not-found",
                        f"profile {url} in meta.profile is unknown to this server: not checked",
                        (f"{where}.meta.profile",),
                    )
                )
            elif why.startswith("global "):
                issues.append(
                    Issue(
                        "warning",
                        "not-found",
                        f"profile {url}, global for {rt} in the ImplementationGuide "
                        f"{why[7:]}, is unknown to this server: not checked",
                        (where,),
                    )
                )
            else:
                issues.append(
                    Issue(
                        "error",
                        "not-found",
                        f"profile {url} is unknown to this server",
                        (where,),
                    )
                )
            continue
        issues.extend(validator.validate(resource, url, where))


def validate(
    resource: Any,
    *,
    profiles: Sequence[str] = (),
    mode: Mode | None = None,
    expected_type: str | None = None,
    required_profiles: RequiredProfiles = (),
    registry: ProfileRegistry | None = None,
    lookup: TerminologyLookup | None = None,
    invariants: bool = True,
    best_practice: bool = False,
    meta_profiles: bool = True,
    options: ValidationOptions = DEFAULT,
) -> list[Issue]:
    """Everything known about a resource: base structure, invariants, profiles.

    ``mode`` is that of ``$validate``: ``create`` and ``update`` validate the content
    as a write would (``update`` also requires an id); ``delete`` checks no content
    (see :mod:`fhir_server.operations.validate`). Invariants and profiles are only
    checked on a structurally valid resource (their results on broken JSON would be
    noise). ``meta_profiles=False`` ignores ``meta.profile`` (``$validate`` in mode
    ``profile``). ``best_practice`` adds the best-practice invariants (dom-6 "a resource
    should have narrative" ...) as warnings; off by default, as in the reference
    validator. ``options`` adds policies beyond the specification (:mod:`.options`:
    HTML in strings and markdown, unknown extensions, example URLs); the defaults are
    what a write checks."""
    issues = structure.validate_resource(resource, expected_type=expected_type, options=options)
    if mode == "update" and isinstance(resource, dict) and not resource.get("id"):
        rt = resource.get("resourceType")
        issues.append(
            Issue(
                "error",
                "required",
                "a resource to update must have an id",
                (f"{rt if isinstance(rt, str) else 'Resource'}.id",),
            )
        )
    if has_errors(issues) or not isinstance(resource, dict):
        return dedupe(issues)
    if invariants:
        issues += check_invariants(
            resource, best_practice=best_practice, contained=options.validate_contained
        )
    issues += validate_profiles(
        resource,
        profiles=profiles,
        required_profiles=required_profiles,
        registry=registry,
        lookup=lookup,
        meta_profiles=meta_profiles,
        options=options,
    )
    return dedupe(issues)
