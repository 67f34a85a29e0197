"""JSON with comments, for ``fhir-server validate --allow-json-comments`` only.

FHIR JSON is RFC 8259 JSON, which has no comments, and the server's API rejects them.
Resources kept by hand in files (test fixtures, examples under version control) often
carry ``// ...`` or ``/* ... */`` comments, though, and the reference validator can be
told to accept them; the offline validator can too, on request: the comments are
blanked out before the file is parsed, and nothing else changes.

Comments are recognised outside strings only (``"http://x"`` keeps its ``//``); each
character of a comment becomes a space and its line breaks stay, so the line and
column of a later syntax error are those of the original file. An unterminated
``/*`` is left as it is, for the parser to report.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["strip_json_comments"]

# a string (kept), a line comment, or a block comment; scanned left to right, so a
# '//' or '/*' inside a string is part of the string's match
_TOKEN: Final = re.compile(rb'"(?:[^"\\]|\\.)*"|//[^\r\n]*|/\*.*?\*/', re.DOTALL)


def _blank(m: re.Match[bytes]) -> bytes:
    text = m.group(0)
    if text[:1] == b'"':
        return text
    return re.sub(rb"[^\r\n]", b" ", text)


def strip_json_comments(data: bytes) -> bytes:
    """``data`` with its comments replaced by spaces (see the module's description)."""
    if b"/" not in data:
        return data
    return _TOKEN.sub(_blank, data)
