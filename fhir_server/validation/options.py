"""Validation policies: checks that are not rules of the R4 specification itself but a
choice of the validating party, off (the server's behaviour) unless asked for.

The server validates every write, ``$validate`` and ``fhir-server validate`` by the
specification; a :class:`ValidationOptions` adds stricter policies (the reference
validator has the same ones, and HL7's validator test cases set them per case):

* ``security_checks`` -- a ``string`` value containing what looks like an HTML tag
  (``<b>``, ``</script>``, ``<img src=...>``) is an error: strings are plain text, and
  markup in them is a script-injection risk for applications that render them as
  HTML. Markdown and narrative are not affected (narrative has its own rules: txt-1).
* ``html_in_markdown`` -- when False, a ``markdown`` value containing a raw HTML tag
  (outside code spans and code blocks, and not escaped as ``\\<``) is an error: the
  presentation layer will (or should) escape it, so it is almost always a mistake.
* ``unknown_extensions`` -- ``accept`` (the default: clients may carry extensions the
  server has no definition for, and R4 lets them) or ``error``: an extension whose
  definition is unknown is an error, except when its URL is

  - in one of ``allowed_extension_domains`` (a URL prefix),
  - HL7's own core namespace ``http://hl7.org/fhir/StructureDefinition/`` (core
    extensions are all known; the ones beyond R4 belong to HL7's extensions pack,
    which is not bundled here, so they are accepted unchecked),
  - a cross-version extension ``http://hl7.org/fhir/[version]/StructureDefinition/
    extension-...`` (defined by the rules of the FHIR version it names), or
  - an example URL (see below) while ``example_urls`` is True.

* ``example_urls`` -- when False, a ``uri``/``url``/``canonical`` value whose host is
  a domain reserved for examples (RFC 2606: ``example.com``, ``example.net``,
  ``example.org`` and their subdomains, or a name under ``.example``) is an error:
  content meant for real use should not point at example addresses.
* ``validate_contained`` -- when False, contained resources are treated as opaque: only
  that each is a JSON object with a known ``resourceType`` (so ``#id`` references can
  resolve) is checked, not their content (base definitions, invariants inside them,
  profiles, extensions), nor whether each is referenced from its container (dom-3).
  The container's own rules about them still apply (dom-2, dom-4, dom-5, and ref-1 for
  its ``#id`` references). For a caller that validates contained resources by other
  means, or not at all (the reference validator's ``validateContains=IGNORE``).

* ``resolve_references`` -- when True, a relative reference (``Type/id``) between the
  resources of a Parameters must resolve to one of them (by type and id, and
  ``meta.versionId`` when versioned): a Parameters carrying related resources (the
  Coverage and the Patient of ``$member-match``) should be complete. Off by default,
  as the target may exist on a server (:mod:`.references`).

* ``wrong_displays`` -- the severity of a ``Coding.display`` that is not the display
  of its code in an R4 code system (:mod:`.displays`): ``warning`` (the default) or
  ``error``. R4 asks the display to be "a representation of the meaning of the code
  in the system, following the rules of the system", so a display naming another
  concept is a mistake worth reporting; but it does not make the code system's text
  mandatory (a client may show its own wording, and the specification's own examples
  differ from it in case), so a write is not refused for it. The reference validator
  reports it as an error unless told otherwise.

``$validate`` answers "would this write be accepted", so it uses the write defaults;
the CLI exposes every option (``fhir-server validate --help``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import urlsplit

__all__ = [
    "DEFAULT",
    "UnknownExtensions",
    "ValidationOptions",
    "WrongDisplays",
    "extension_allowed",
    "html_tag_in_markdown",
    "html_tag_in_string",
    "is_example_url",
]

UnknownExtensions = Literal["accept", "error"]
WrongDisplays = Literal["warning", "error"]


@dataclass(frozen=True, slots=True)
class ValidationOptions:
    """Policies beyond the specification's rules; the defaults are the server's."""

    security_checks: bool = False
    html_in_markdown: bool = True
    unknown_extensions: UnknownExtensions = "accept"
    allowed_extension_domains: tuple[str, ...] = ()
    example_urls: bool = True
    validate_contained: bool = True
    resolve_references: bool = False
    wrong_displays: WrongDisplays = "warning"

    @property
    def checks_primitives(self) -> bool:
        """Whether some option adds checks to primitive values."""
        return self.security_checks or not self.html_in_markdown or not self.example_urls


DEFAULT: Final = ValidationOptions()

# An HTML start or end tag: '<' or '</', a tag name, optional attributes, '>' or '/>'.
# A '<' followed by anything else (a comparison "a < b", "<5 mg", an autolink
# "<http://x>", an email "<a@b.org>") is no tag.
_TAG: Final = re.compile(
    r"</?[A-Za-z][A-Za-z0-9-]*(?:\s+[^<>]*?)?\s*/?>",
    re.ASCII,
)
_FENCE: Final = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def html_tag_in_string(text: str) -> str | None:
    """The first thing in ``text`` that looks like an HTML tag, if any."""
    if "<" not in text:
        return None
    m = _TAG.search(text)
    return m.group(0) if m else None


def html_tag_in_markdown(text: str) -> str | None:
    """The first raw HTML tag of a markdown text, if any: not escaped with a
    backslash, not in a code span (backticks), a fenced or an indented code block."""
    if "<" not in text:
        return None
    fence: str | None = None
    previous_blank = True
    for line in text.splitlines():
        opened = _FENCE.match(line)
        if fence is not None:
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence):
                fence = None
            continue
        if opened:
            fence = opened.group(1)
            continue
        if previous_blank and (line.startswith("    ") or line.startswith("\t")):
            continue  # an indented code block (only after a blank line in CommonMark)
        previous_blank = not line.strip()
        found = _tag_in_markdown_line(line)
        if found is not None:
            return found
    return None


def _tag_in_markdown_line(line: str) -> str | None:
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c == "\\":
            i += 2  # an escaped character, "\<" among them
            continue
        if c == "`":
            run = len(line) - len(line[i:].lstrip("`"))
            ticks = line[i : i + run]
            end = line.find(ticks, i + run)
            if end >= 0:
                i = end + run  # a code span: literal text
                continue
            i += run
            continue
        if c == "<":
            m = _TAG.match(line, i)
            if m is not None:
                return m.group(0)
        i += 1
    return None


def is_example_url(url: str) -> bool:
    """Whether an absolute URL's host is a domain reserved for examples (RFC 2606)."""
    if "example" not in url.lower():
        return False
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return False
    if not host:
        return False
    host = host.rstrip(".").lower()
    if host.endswith(".example") or host == "example":
        return True
    return any(
        host == d or host.endswith("." + d) for d in ("example.com", "example.net", "example.org")
    )


_XVER: Final = re.compile(r"http://hl7\.org/fhir/\d+\.\d+/StructureDefinition/extension-")
_CORE: Final = "http://hl7.org/fhir/StructureDefinition/"


def extension_allowed(url: str, options: ValidationOptions) -> bool:
    """Whether an extension whose definition is unknown is accepted under ``options``."""
    if options.unknown_extensions == "accept":
        return True
    if url.startswith(_CORE) or _XVER.match(url):
        return True
    if options.example_urls and is_example_url(url):
        return True
    return any(url.startswith(domain) for domain in options.allowed_extension_domains)
