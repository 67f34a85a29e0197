"""A Bundle's own JWS signature carries the Bundle's content
(https://hl7.org/fhir/R4/datatypes.html#Signature, json.html#canonical, RFC 7515).

``Bundle.signature`` with ``sigFormat`` ``application/jose`` holds, base64 encoded, a
JWS in compact serialization (``header.payload.signature``). The signature is over the
content as ``targetFormat`` says (FHIR JSON, canonicalized by
``http://hl7.org/fhir/canonicalization/json`` or its ``#document`` variant). When the
JWS carries its payload (it is not detached), that payload is the content signed, so it
must be this Bundle: the Bundle's JSON without ``signature`` (a signature cannot sign
itself) and, as the canonicalization may leave them out, without ``id`` and ``meta``
when the payload has none. A payload that differs -- another Bundle, or this one with
other content -- does not sign this resource.

Not checked: detached signatures (empty payload: the canonical bytes would have to be
rebuilt), the other canonicalization variants (``#data``, ``#static``,
``#narrative``), other signature formats, and the cryptography itself (certificates
and keys are not evaluated here). Malformed data is left to the base64Binary checks.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Final

from fhir_server import jsonio
from fhir_server.errors import Issue

__all__ = ["check_signature"]

_CANONICAL: Final = "http://hl7.org/fhir/canonicalization/json"
_CHECKED_VARIANTS: Final = (_CANONICAL, _CANONICAL + "#document")


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _canonicalization(target_format: Any) -> str | None:
    """The canonicalization a ``targetFormat`` names ("" for plain FHIR JSON); None for
    a format that is not FHIR JSON."""
    if not isinstance(target_format, str):
        return ""  # no targetFormat: the resource's own format
    mime, *params = (p.strip() for p in target_format.split(";"))
    if mime not in ("application/fhir+json", "application/json+fhir", "application/json"):
        return None
    for p in params:
        key, _, value = p.partition("=")
        if key.strip() == "canonicalization":
            return value.strip().strip('"')
    return ""


def _payload(data: str) -> Any:
    """The JSON payload of a compact JWS in base64; None when there is none to check."""
    try:
        jws = base64.b64decode(data, validate=False).decode("ascii")
    except (binascii.Error, ValueError):
        return None
    parts = jws.strip().split(".")
    if len(parts) != 3 or not parts[1]:
        return None  # not a compact JWS, or a detached one
    try:
        header = json.loads(_b64url(parts[0]))
        raw = parts[1].encode() if header.get("b64") is False else _b64url(parts[1])
        return jsonio.loads(raw)
    except (binascii.Error, ValueError, AttributeError, jsonio.JsonError):
        return None


def _difference(a: Any, b: Any, path: str) -> str | None:
    """Where two JSON values first differ (a JSONPath-like location and what differs)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in a:
            if key not in b:
                return f"{path}: unexpected property {key}"
        for key in b:
            if key not in a:
                return f"{path}: missing property {key}"
        for key in a:
            found = _difference(a[key], b[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} items instead of {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = _difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if a == b else f"{path}: different values"


def check_signature(bundle: dict[str, Any], where: str) -> list[Issue]:
    """The issues of a Bundle's own JWS signature under the rule above."""
    sig = bundle.get("signature")
    if not isinstance(sig, dict) or sig.get("sigFormat") != "application/jose":
        return []
    data = sig.get("data")
    canonicalization = _canonicalization(sig.get("targetFormat"))
    if not isinstance(data, str) or canonicalization is None:
        return []
    if canonicalization and canonicalization not in _CHECKED_VARIANTS:
        return []
    payload = _payload(data)
    if payload is None:
        return []
    content = {
        k: v
        for k, v in bundle.items()
        if k != "signature" and (k not in ("id", "meta") or k in payload)
    }
    if not isinstance(payload, dict):
        found: str | None = "$: not a JSON object"
    else:
        found = _difference(payload, content, "$")
    if found is None:
        return []
    return [
        Issue(
            "error",
            "invalid",
            "the signature's JWS payload is not this Bundle's content, so it does not sign "
            f"this Bundle (they differ at {found})",
            (f"{where}.signature.data",),
        )
    ]
