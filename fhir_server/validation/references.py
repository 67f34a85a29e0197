"""References resolved inside the resource being validated: between the entries of a
document Bundle, and between the resources of a Parameters.

Document Bundles (always checked)
---------------------------------
A FHIR document is a Bundle of type ``document`` whose first entry is a Composition;
"any other resources referenced from the Composition must be included as subsequent
entries in the Bundle" (R4 Composition, and documents.html 3.3.1: the document holds
frozen versions of what it presents). So each literal reference of the Composition's
own content -- ``subject``, ``encounter``, ``author``, ``attester.party``,
``custodian``, and in every section (nested ones too) ``author``, ``focus`` and
``entry`` -- must resolve to exactly one entry of the Bundle. References that are not
part of the document's content (``relatesTo`` other documents, ``event.detail``,
extensions) are not checked, nor are ``#id`` references to contained resources (the
structure validator checks those: ref-1).

Resolution follows R4's rules for references in Bundles (bundle.html#references):

* a relative reference ``Type/id`` is made absolute with the root of the referring
  entry's ``fullUrl`` when that is a RESTful URL (``[root]/Type/id``), and matched
  against the entries' ``fullUrl``; when the referring entry has no RESTful
  ``fullUrl`` (a ``urn:uuid:``), it is matched by resource type and id;
* an absolute reference (``http(s)://``, ``urn:uuid:``, ``urn:oid:``) is matched
  against ``fullUrl``;
* a version-specific reference (``.../_history/vid``) is matched without its version,
  then on ``Resource.meta.versionId`` -- a Bundle may hold several versions of a
  resource under one ``fullUrl`` (bdl-7), and then a reference without a version is
  ambiguous: an error in a document, whose content must be unambiguous.

Parameters (an option)
----------------------
A Parameters has no ``fullUrl`` for its resources, so a relative reference between
them (``Coverage.beneficiary`` -> ``Patient/1`` in ``$member-match``) resolves by type
and id (and ``meta.versionId`` when versioned). Whether one that resolves to nothing is
an error is the validating party's choice, as the target may well exist on a server:
``ValidationOptions.resolve_references`` (:mod:`.options`) makes it one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Final

from fhir_server import definitions
from fhir_server.definitions import BACKBONE, RESOURCE
from fhir_server.errors import Issue
from fhir_server.validation.walk import complex_items

__all__ = ["check_document", "check_parameters"]

_ID: Final = r"[A-Za-z0-9\-\.]{1,64}"
_RELATIVE: Final = re.compile(rf"([A-Z][A-Za-z]+)/({_ID})(?:/_history/({_ID}))?", re.ASCII)
_RESTFUL: Final = re.compile(
    rf"((?:https?)://\S+?)/([A-Z][A-Za-z]+)/({_ID})(?:/_history/({_ID}))?", re.ASCII
)
# The Composition elements whose targets are the document's content.
_COMPOSITION: Final = ("subject", "encounter", "author", "custodian")
_SECTION: Final = ("author", "focus", "entry")


def _version(resource: Any) -> str | None:
    meta = resource.get("meta") if type(resource) is dict else None
    v = meta.get("versionId") if type(meta) is dict else None
    return v if isinstance(v, str) else None


def _references(value: Any, expr: str) -> Iterator[tuple[str, str]]:
    """(reference, expression of its ``reference`` element) of a Reference or a list
    of them; ``#id`` references are left to ref-1."""
    items = value if type(value) is list else [value]
    for i, item in enumerate(items):
        ref = item.get("reference") if type(item) is dict else None
        if isinstance(ref, str) and ref and ref[0] != "#":
            where = f"{expr}[{i}]" if type(value) is list else expr
            yield ref, f"{where}.reference"


# --------------------------------------------------------------------------- documents


def _document_references(composition: dict[str, Any], expr: str) -> Iterator[tuple[str, str]]:
    for name in _COMPOSITION:
        yield from _references(composition.get(name), f"{expr}.{name}")
    attesters = composition.get("attester")
    if type(attesters) is list:
        for i, attester in enumerate(attesters):
            if type(attester) is dict:
                yield from _references(attester.get("party"), f"{expr}.attester[{i}].party")
    yield from _sections(composition.get("section"), f"{expr}.section")


def _sections(sections: Any, expr: str) -> Iterator[tuple[str, str]]:
    if type(sections) is not list:
        return
    for i, section in enumerate(sections):
        if type(section) is not dict:
            continue
        where = f"{expr}[{i}]"
        for name in _SECTION:
            yield from _references(section.get(name), f"{where}.{name}")
        yield from _sections(section.get("section"), f"{where}.section")


def _matches(
    ref: str, referrer_url: str | None, entries: list[tuple[str | None, dict[str, Any]]]
) -> tuple[list[int], str | None] | None:
    """The indexes of the entries a reference resolves to and the version it asks for;
    None when it is not a reference resolvable inside a Bundle (conditional ...)."""
    m = _RELATIVE.fullmatch(ref)
    if m is not None:
        rtype, rid, version = m.group(1), m.group(2), m.group(3)
        base = _RESTFUL.fullmatch(referrer_url) if referrer_url else None
        if base is not None:
            target = f"{base.group(1)}/{rtype}/{rid}"
            found = [i for i, (url, _) in enumerate(entries) if url == target]
        else:
            found = [
                i
                for i, (_, r) in enumerate(entries)
                if r.get("resourceType") == rtype and r.get("id") == rid
            ]
    elif ref.startswith(("http://", "https://", "urn:uuid:", "urn:oid:")):
        absolute = _RESTFUL.fullmatch(ref)
        version = absolute.group(4) if absolute is not None else None
        target = ref.split("/_history/", 1)[0] if version is not None else ref
        found = [i for i, (url, _) in enumerate(entries) if url == target]
    else:
        return None
    if version is not None:
        found = [i for i in found if _version(entries[i][1]) == version]
    return found, version


def check_document(bundle: dict[str, Any], expr: str) -> list[Issue]:
    """The references of a document's Composition resolve to one entry each."""
    raw = bundle.get("entry")
    if type(raw) is not list or not raw:
        return []
    first = raw[0]
    composition = first.get("resource") if type(first) is dict else None
    if type(composition) is not dict or composition.get("resourceType") != "Composition":
        return []  # bdl-11 (the first resource is a Composition) reports it
    entries: list[tuple[str | None, dict[str, Any]]] = []
    for e in raw:
        url = e.get("fullUrl") if type(e) is dict else None
        res = e.get("resource") if type(e) is dict else None
        entries.append((url if isinstance(url, str) else None, res if type(res) is dict else {}))
    referrer = entries[0][0]
    issues: list[Issue] = []
    for ref, where in _document_references(composition, f"{expr}.entry[0].resource"):
        found = _matches(ref, referrer, entries)
        if found is None:
            continue
        indexes, version = found
        if not indexes:
            issues.append(
                Issue(
                    "error",
                    "not-found",
                    f"'{ref}' does not resolve to an entry of the document"
                    + (
                        f" (no entry has that fullUrl with meta.versionId '{version}')"
                        if version
                        else ""
                    )
                    + ": a document includes the resources its Composition refers to",
                    (where,),
                )
            )
        elif len(indexes) > 1:
            issues.append(
                Issue(
                    "error",
                    "invalid",
                    f"'{ref}' matches {len(indexes)} entries of the document (entries "
                    f"{', '.join(map(str, indexes))}: versions of one resource); a reference "
                    "in a document must identify one version (Type/id/_history/vid)",
                    (where,),
                )
            )
    return issues


# --------------------------------------------------------------------------- Parameters


def _parameter_resources(parameters: Any, expr: str) -> Iterator[tuple[dict[str, Any], str]]:
    if type(parameters) is not list:
        return
    for i, p in enumerate(parameters):
        if type(p) is not dict:
            continue
        r = p.get("resource")
        if type(r) is dict and isinstance(r.get("resourceType"), str):
            yield r, f"{expr}[{i}].resource"
        yield from _parameter_resources(p.get("part"), f"{expr}[{i}].part")


def _typed_references(
    obj: dict[str, Any], td: definitions.TypeDef, path: str, expr: str
) -> Iterator[tuple[str, str]]:
    """Every literal reference of a resource (its contained resources included, other
    nested resources not: they resolve in their own context)."""
    for key, child, item, where in complex_items(obj, td, path, expr):
        if child.kind == RESOURCE:
            rt = item.get("resourceType")
            if key == "contained" and isinstance(rt, str) and rt in definitions.resource_types():
                yield from _typed_references(item, definitions.type_definition(rt), rt, where)
        elif child.kind == BACKBONE:
            yield from _typed_references(item, td, child.content_path, where)
        elif child.type_code == "Reference":
            ref = item.get("reference")
            if isinstance(ref, str):
                yield ref, f"{where}.reference"
        elif child.type_code not in ("Extension", "Meta", "Narrative", "Coding"):
            ctd = definitions.type_definition(child.type_code)
            yield from _typed_references(item, ctd, child.type_code, where)


def check_parameters(parameters: dict[str, Any], expr: str) -> list[Issue]:
    """Relative references between the resources of a Parameters resolve to one of
    them (by type, id and, when versioned, meta.versionId)."""
    resources = list(_parameter_resources(parameters.get("parameter"), f"{expr}.parameter"))
    if not resources:
        return []
    known: dict[tuple[str, str], list[str | None]] = {}
    for r, _ in resources:
        rid = r.get("id")
        if isinstance(rid, str):
            known.setdefault((r["resourceType"], rid), []).append(_version(r))
    issues: list[Issue] = []
    for r, where in resources:
        rt = r["resourceType"]
        if rt not in definitions.resource_types():
            continue
        for ref, at in _typed_references(r, definitions.type_definition(rt), rt, where):
            m = _RELATIVE.fullmatch(ref)
            if m is None:
                continue  # absolute, urn:, #id, conditional: not resolvable here
            versions = known.get((m.group(1), m.group(2)))
            version = m.group(3)
            if versions is None or (version is not None and version not in versions):
                issues.append(
                    Issue(
                        "error",
                        "not-found",
                        f"'{ref}' does not resolve to a resource of the Parameters",
                        (at,),
                    )
                )
    return issues
