"""A Bundle's own JWS signature must carry the Bundle's content
(fhir_server.validation.signatures)."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

from fhir_server.validation import validate
from fhir_server.validation.signatures import check_signature

DOCUMENT = (
    "application/fhir+json;canonicalization=http://hl7.org/fhir/canonicalization/json#document"
)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def bundle() -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "id": "signed",
        "type": "collection",
        "entry": [
            {
                "fullUrl": "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0",
                "resource": {"resourceType": "Patient", "id": "p1", "gender": "male"},
            }
        ],
    }


def sign(b: dict[str, Any], payload: Any, target: str | None = DOCUMENT) -> dict[str, Any]:
    """``b`` with a JWS signature whose payload is ``payload`` (None: detached). The
    signature bytes are not a real signature: the cryptography is not evaluated."""
    header = _b64url(json.dumps({"alg": "RS256", "typ": "JOSE"}).encode())
    body = "" if payload is None else _b64url(json.dumps(payload).encode())
    jws = f"{header}.{body}.{_b64url(b'not-a-real-signature')}"
    signature: dict[str, Any] = {
        "type": [{"system": "urn:iso-astm:E1762-95:2013", "code": "1.2.840.10065.1.12.1.5"}],
        "when": "2024-01-02T03:04:05Z",
        "who": {"display": "Dr Signer"},
        "sigFormat": "application/jose",
        "data": base64.b64encode(jws.encode()).decode(),
    }
    if target is not None:
        signature["targetFormat"] = target
    return {**b, "signature": signature}


def content(b: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in b.items() if k not in ("id", "meta", "signature")}


def test_a_payload_that_is_the_bundle_is_accepted() -> None:
    b = bundle()
    assert check_signature(sign(b, content(b)), "Bundle") == []
    # id (and meta) may be in the payload too, when they are the Bundle's
    assert check_signature(sign(b, b), "Bundle") == []
    assert check_signature(sign(b, content(b), target=None), "Bundle") == []


def test_a_payload_with_other_content_is_an_error() -> None:
    b = bundle()
    other = copy.deepcopy(content(b))
    other["entry"][0]["resource"]["meta"] = {"versionId": "1"}
    issues = check_signature(sign(b, other), "Bundle")
    assert [(i.severity, i.expression) for i in issues] == [("error", ("Bundle.signature.data",))]
    assert "$.entry[0].resource: unexpected property meta" in issues[0].diagnostics
    changed = copy.deepcopy(content(b))
    changed["entry"][0]["resource"]["gender"] = "female"
    assert (
        "$.entry[0].resource.gender" in check_signature(sign(b, changed), "Bundle")[0].diagnostics
    )
    with_other_id = {**content(b), "id": "another"}
    assert len(check_signature(sign(b, with_other_id), "Bundle")) == 1


def test_what_is_not_checked() -> None:
    b = bundle()
    wrong = {**content(b), "type": "searchset"}
    assert check_signature(sign(b, None), "Bundle") == []  # detached
    static = (
        "application/fhir+json;canonicalization=http://hl7.org/fhir/canonicalization/json#static"
    )
    assert check_signature(sign(b, wrong, target=static), "Bundle") == []
    assert check_signature(sign(b, wrong, target="application/fhir+xml"), "Bundle") == []
    xml_sig = sign(b, wrong)
    xml_sig["signature"]["sigFormat"] = "application/signature+xml"
    assert check_signature(xml_sig, "Bundle") == []


def test_validate_checks_the_signature_of_a_bundle() -> None:
    b = bundle()
    wrong = {**content(b), "type": "searchset"}
    errors = [i for i in validate(sign(b, wrong)) if i.severity == "error"]
    assert [i.expression for i in errors] == [("Bundle.signature.data",)]
    assert [i for i in validate(sign(b, content(b))) if i.severity == "error"] == []
