"""``fhir-server validate FILE... [--profile URL]``: validate resources in files.

Each file is a JSON resource, a Bundle (every entry's resource is validated on its
own) or NDJSON (``.ndjson``, one resource a line). For each resource one
OperationOutcome is written to standard output as a line of JSON (NDJSON), and a
one-line summary (where it came from, how many errors and warnings) to standard error.
Validation is what ``$validate`` does: the base definitions, their invariants, the
resource's ``meta.profile`` and ``--profile``; the policy options
(:mod:`fhir_server.validation.options`) can make it stricter:

* ``--unknown-extensions error``: an extension this server has no definition for is an
  error (``--allow-extension-domain PREFIX``, repeatable, exempts URLs under a prefix);
* ``--security-checks``: HTML tags in string values are errors;
* ``--no-html-in-markdown``: raw HTML tags in markdown are errors;
* ``--no-example-urls``: URLs in example domains (example.org ...) are errors;
* ``--resolve-references``: references between the resources of a Parameters must
  resolve among them;
* ``--wrong-displays error``: a ``Coding.display`` that is not the display of its code
  in an R4 code system is an error (a warning by default).

and ``--ignore-contained`` makes it laxer: contained resources are not validated.
``--allow-json-comments`` reads files whose JSON carries ``//`` and ``/* */`` comments
(not FHIR JSON, but common in files kept by hand; :mod:`.comments`).

The exit code is 0 when no resource has an error, 1 when some has, and 2 when a file
cannot be read or parsed at all (it is reported as an OperationOutcome too).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from fhir_server import jsonio
from fhir_server.errors import Issue, has_errors, operation_outcome
from fhir_server.validation.comments import strip_json_comments
from fhir_server.validation.options import DEFAULT, ValidationOptions
from fhir_server.validation.registry import ProfileRegistry
from fhir_server.validation.service import validate
from fhir_server.validation.valuesets import TerminologyLookup

__all__ = ["validate_files"]


def _resources(path: Path, allow_comments: bool = False) -> Iterator[tuple[str, Any]]:
    """(where, parsed value) for each resource of a file; a parse failure is raised."""
    data = path.read_bytes()
    if allow_comments:
        data = strip_json_comments(data)
    if path.name.endswith(".ndjson"):
        for n, line in enumerate(data.splitlines(), 1):
            if line.strip():
                yield f"{path}:{n}", jsonio.loads(line)
        return
    value = jsonio.loads(data)
    if isinstance(value, dict) and value.get("resourceType") == "Bundle":
        entries = value.get("entry")
        if isinstance(entries, list) and entries:
            for i, entry in enumerate(entries):
                resource = entry.get("resource") if isinstance(entry, dict) else None
                if resource is not None:
                    yield f"{path} entry[{i}]", resource
            return
    yield str(path), value


def _label(where: str, resource: Any) -> str:
    if isinstance(resource, dict) and isinstance(resource.get("resourceType"), str):
        rid = resource.get("id")
        ref = resource["resourceType"] + (f"/{rid}" if isinstance(rid, str) else "")
        return f"{where} {ref}"
    return where


def _summary(issues: Sequence[Issue]) -> str:
    errors = sum(1 for i in issues if i.severity in ("error", "fatal"))
    warnings = sum(1 for i in issues if i.severity == "warning")
    if not errors and not warnings:
        return "OK"
    return f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}"


def validate_files(
    paths: Sequence[str | Path],
    profile: str | None = None,
    *,
    registry: ProfileRegistry | None = None,
    lookup: TerminologyLookup | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    options: ValidationOptions = DEFAULT,
    allow_comments: bool = False,
) -> int:
    """Validate every resource in the files; print one OperationOutcome per resource
    (NDJSON on ``out``) and a summary line per resource on ``err``. Returns the exit
    code: 0 all valid, 1 some resource has errors, 2 some file could not be parsed.
    ``allow_comments``: the files' JSON may carry comments (:mod:`.comments`)."""
    out = out or sys.stdout
    err = err or sys.stderr
    profiles = [profile] if profile else []
    status = 0
    for p in map(Path, paths):
        try:
            items = list(_resources(p, allow_comments))
        except (OSError, jsonio.JsonError) as exc:
            issue = Issue("fatal", "structure", f"cannot read {p.name}: {exc}")
            out.write(jsonio.dumps(operation_outcome([issue])).decode() + "\n")
            err.write(f"{p}: cannot be read: {exc}\n")
            status = 2
            continue
        for where, resource in items:
            issues = validate(
                resource,
                profiles=profiles,
                registry=registry,
                lookup=lookup,
                options=options,
            )
            out.write(jsonio.dumps(operation_outcome(issues)).decode() + "\n")
            err.write(f"{_label(where, resource)}: {_summary(issues)}\n")
            if has_errors(issues) and status == 0:
                status = 1
    return status
