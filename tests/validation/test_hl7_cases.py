"""The HL7 validator test cases (``fhir-test-cases/validator``): our validity verdict
agrees with the reference (Java) validator's.

Where the cases are: ``$FHIR_TEST_CASES`` (the ``fhir-test-cases`` directory), else
``shared/conformance/fhir-test-cases`` beside the repository checkout. Without them
the suite FAILS (``test_manifest_is_available``): it is part of the definition of done.

The manifest (``validator/manifest.json``) lists cases: a file to validate, its FHIR
``version`` (none means R5), ``supporting`` files (profiles, value sets ...), an
optional ``profile`` step (validate again against ``profile.source``), ``packages`` to
load, and per validator the expected outcome: for ``java`` an OperationOutcome file
under ``outcomes/`` or an inline ``errorCount``. A case is valid when that outcome
has no error or fatal issue.

Selection -- every R4 case we can run offline, each excluded one in a category:

* ``not R4``: version other than 4.0 / 4.0.1 (none is R5);
* ``use-test false``: disabled in the manifest;
* ``not JSON``: the file or a supporting file (``supporting``, ``profiles``,
  ``supporting5``) is XML (this server speaks JSON);
* ``needs packages``: ``packages``/``logical`` name IG packages we do not have offline;
* ``terminology server``: the ``tx`` modules, or a Java outcome that records a
  terminology server was used (its verdict depends on that server's answers);
* ``no outcome``: no Java expectation in the manifest or its file is missing.

Every selected case runs with the validator options it asks for (:func:`options_of`),
its file read with comments allowed when it says ``allow-comments`` (as
``fhir-server validate --allow-json-comments`` reads files);
the ones where we disagree are in
:data:`KNOWN_DISAGREEMENTS` with a reason, and are asserted to still disagree, so the
list stays truthful (remove an entry when its case starts agreeing).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fhir_server import jsonio
from fhir_server.errors import Issue, has_errors
from fhir_server.validation.comments import strip_json_comments
from fhir_server.validation.options import DEFAULT, ValidationOptions
from fhir_server.validation.registry import ProfileRegistry, RegistryError
from fhir_server.validation.service import validate

REPO = Path(__file__).resolve().parents[2]
R4 = ("4.0", "4.0.1")


def _cases_root() -> Path:
    env = os.environ.get("FHIR_TEST_CASES")
    if env:
        return Path(env)
    return REPO.parent / "shared" / "conformance" / "fhir-test-cases"


ROOT = _cases_root()
VALIDATOR = ROOT / "validator"
MANIFEST = VALIDATOR / "manifest.json"

# Why the reference validator and we disagree, one line each. "<name> (<step>)".
KNOWN_DISAGREEMENTS: dict[str, str] = {
    "obs-temp-bad (base)": "the reference validator applies the body temperature profile because of a SNOMED CT code (276885007); R4's vital signs table, which makes the profiles mandatory, lists LOINC codes only, and we do not apply the profiles by code",
    "structureDefinition-11179-objectClass-R4 (base)": "R4 defines structuredefinition-fhir-type for ElementDefinition.type.code; the reference validator uses a later definition that also allows ElementDefinition.type",
    "qr-bad-ref2 (base)": "QuestionnaireResponse.questionnaire names a ValueSet of the R4 core package's examples (example-extensional), which the reference validator loads and the generated tables do not carry; a canonical resolving to a non-Questionnaire is an error, an unresolvable one only a warning",
    "string-with-coding-async-qr (base)": "the answer value set (jurisdiction: ISO 3166 codes) cannot be expanded locally (neither the R4 package nor this repository holds ISO 3166), so answers are not checked against it",
}


# --------------------------------------------------------------------------- the manifest


@dataclass(frozen=True)
class Run:
    """One validation the manifest defines: a case's base step or its profile step."""

    id: str
    module: str
    file: str
    supporting: tuple[str, ...]
    profile: str | None  # the profile source file of a profile step
    expected_errors: int
    expected: list[str] = field(default_factory=list, compare=False, hash=False)
    options: ValidationOptions = DEFAULT
    # the manifest's ``allow-comments``: the file's JSON may carry comments, read as
    # ``fhir-server validate --allow-json-comments`` reads it
    allow_comments: bool = False


def options_of(case: dict[str, Any]) -> ValidationOptions:
    """The validator options a case asks for. Unknown extensions are always errors, as
    in the reference validator (this server accepts them by default); the manifest's
    ``security-checks``, ``noHtmlInMarkdown``, ``examples`` (false: example URLs are
    not allowed), ``allowed-extension-domain``, ``validateContains`` (``IGNORE``:
    contained resources are not validated) and ``validateReference`` (a policy that
    checks targets exist: references must resolve where they can be resolved offline)
    map to the options of the same meaning (:mod:`fhir_server.validation.options`).
    Wrong displays are errors, the reference validator's default, unless the case's
    ``wrong-displays`` says ``warning``."""
    domains = case.get("allowed-extension-domain")
    return ValidationOptions(
        security_checks=bool(case.get("security-checks")),
        html_in_markdown=not case.get("noHtmlInMarkdown"),
        unknown_extensions="error",
        allowed_extension_domains=(domains,) if isinstance(domains, str) else (),
        example_urls=case.get("examples") is not False,
        validate_contained=case.get("validateContains") != "IGNORE",
        resolve_references=case.get("validateReference")
        in ("CHECK_EXISTS", "CHECK_EXISTS_AND_TYPE", "CHECK_VALID"),
        wrong_displays="warning" if case.get("wrong-displays") == "warning" else "error",
    )


def _outcome(spec: Any) -> tuple[int, list[str], bool] | None:
    """(error count, error messages, used a terminology server) of a Java expectation;
    None when it is missing."""
    if isinstance(spec, dict):
        return int(spec.get("errorCount", 0)), [str(o) for o in spec.get("output", [])], False
    if not isinstance(spec, str) or not (VALIDATOR / "outcomes" / spec).is_file():
        return None
    oo = json.loads((VALIDATOR / "outcomes" / spec).read_text(encoding="utf-8"))
    errors = [
        f"{(i.get('expression') or [''])[0]}: {i.get('details', {}).get('text', '')}"
        for i in oo.get("issue", [])
        if i.get("severity") in ("error", "fatal")
    ]
    tx = any(
        str(e.get("url", "")).endswith("operationoutcome-issue-server")
        for i in oo.get("issue", [])
        for e in i.get("extension", [])
    )
    return len(errors), errors, tx


def select(manifest: dict[str, Any]) -> tuple[list[Run], Counter[str]]:
    runs: list[Run] = []
    excluded: Counter[str] = Counter()
    for case in manifest["test-cases"]:
        name = case["name"]
        profile = case.get("profile") if isinstance(case.get("profile"), dict) else None
        supporting = (*case.get("supporting", ()), *case.get("profiles", ()))
        # supporting5: definitions the reference validator loads for every version
        files = [case["file"], *supporting, *case.get("supporting5", ())]
        if profile:
            files += [profile["source"], *profile.get("supporting", ())]
        if case.get("version") not in R4:
            excluded["not R4"] += 1
        elif case.get("use-test") is False:
            excluded["use-test false"] += 1
        elif not all(f.endswith(".json") for f in files):
            excluded["not JSON"] += 1
        elif case.get("packages") or case.get("logical") or (profile and profile.get("packages")):
            excluded["needs packages"] += 1
        elif case.get("module") in ("tx", "tx-advanced"):
            excluded["terminology server"] += 1
        else:
            base = _outcome(case.get("java"))
            prof = _outcome(profile.get("java")) if profile else None
            if base is None:
                excluded["no outcome"] += 1
            elif base[2] or (prof is not None and prof[2]):
                excluded["terminology server"] += 1
            else:
                module = str(case.get("module") or "base")
                options = options_of(case)
                runs.append(
                    Run(
                        f"{name} (base)",
                        module,
                        case["file"],
                        supporting,
                        None,
                        base[0],
                        base[1],
                        options,
                        case.get("allow-comments") is True,
                    )
                )
                if profile and prof is not None:
                    runs.append(
                        Run(
                            f"{name} (profile)",
                            module,
                            case["file"],
                            (*supporting, *profile.get("supporting", ())),
                            profile["source"],
                            prof[0],
                            prof[1],
                            options,
                            case.get("allow-comments") is True,
                        )
                    )
    return runs, excluded


def _load_manifest() -> dict[str, Any] | None:
    if not MANIFEST.is_file():
        return None
    data: dict[str, Any] = json.loads(MANIFEST.read_text(encoding="utf-8"))
    return data


MANIFEST_DATA = _load_manifest()
RUNS, EXCLUDED = select(MANIFEST_DATA) if MANIFEST_DATA else ([], Counter())


# --------------------------------------------------------------------------- running


def _read(name: str, allow_comments: bool = False) -> Any:
    data = (VALIDATOR / name).read_bytes()
    return jsonio.loads(strip_json_comments(data) if allow_comments else data)


def _registry(files: tuple[str, ...]) -> ProfileRegistry:
    registry = ProfileRegistry()
    for name in files:
        data = json.loads((VALIDATOR / name).read_text(encoding="utf-8-sig"))
        if isinstance(data, dict) and data.get("resourceType") in (
            "StructureDefinition",
            "ValueSet",
            "CodeSystem",
            "Questionnaire",
            "ImplementationGuide",
            "Measure",
            "Bundle",
        ):
            # a definition the case itself means to be broken is left out
            with contextlib.suppress(RegistryError):
                registry.add(data)
    return registry


def ours(run: Run) -> list[Issue]:
    """Our error and fatal issues for a run."""
    try:
        resource = _read(run.file, run.allow_comments)
    except jsonio.JsonError as exc:
        return [Issue("fatal", "structure", str(exc))]
    files = run.supporting + ((run.profile,) if run.profile else ())
    registry = _registry(files)
    profiles: list[str] = []
    if run.profile:
        profiles.append(
            json.loads((VALIDATOR / run.profile).read_text(encoding="utf-8-sig"))["url"]
        )
    issues = validate(resource, profiles=profiles, registry=registry, options=run.options)
    return [i for i in issues if i.severity in ("error", "fatal")]


def test_manifest_is_available() -> None:
    assert MANIFEST_DATA is not None, (
        f"The HL7 validator test cases were not found at {MANIFEST}. Check out "
        "https://github.com/FHIR/fhir-test-cases as shared/conformance/fhir-test-cases "
        "beside the repository, or set FHIR_TEST_CASES to its directory."
    )
    assert RUNS, "the manifest selects no R4 case: has its format changed?"


@pytest.mark.parametrize("run", RUNS, ids=[r.id for r in RUNS])
def test_case(run: Run) -> None:
    errors = ours(run)
    java_invalid = run.expected_errors > 0
    we_invalid = has_errors(errors) or any(i.severity == "fatal" for i in errors)
    if run.id in KNOWN_DISAGREEMENTS:
        assert we_invalid != java_invalid, (
            f"{run.id} now agrees with the reference validator: remove it from KNOWN_DISAGREEMENTS"
        )
        return
    expected = "\n  ".join(run.expected[:5]) or "(none)"
    found = "\n  ".join(f"{i.expression}: {i.diagnostics}" for i in errors[:5]) or "(none)"
    assert we_invalid == java_invalid, (
        f"{run.id}: the reference validator finds {run.expected_errors} error(s), we find "
        f"{len(errors)}.\nreference:\n  {expected}\nours:\n  {found}"
    )


def test_known_disagreements_are_selected_cases() -> None:
    if MANIFEST_DATA is None:
        pytest.fail("the HL7 validator test cases are missing (see test_manifest_is_available)")
    ids = {r.id for r in RUNS}
    stale = sorted(k for k in KNOWN_DISAGREEMENTS if k not in ids)
    assert not stale, f"KNOWN_DISAGREEMENTS names runs that are not selected: {stale}"


def summary() -> Iterator[str]:
    agree = len(RUNS) - len(KNOWN_DISAGREEMENTS)
    yield f"{len(RUNS)} runs, {agree} agree ({agree / max(len(RUNS), 1):.0%})"
    for category, count in EXCLUDED.most_common():
        yield f"excluded: {category}: {count}"


def test_agreement_share() -> None:
    """Most runs agree; the numbers are printed with ``pytest -s``."""
    if MANIFEST_DATA is None:
        pytest.fail("the HL7 validator test cases are missing (see test_manifest_is_available)")
    for line in summary():
        print(line)
    agree = len(RUNS) - len(KNOWN_DISAGREEMENTS)
    assert agree / len(RUNS) >= 0.6
