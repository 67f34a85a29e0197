"""Every official R4 example can be PUT and read back unchanged (apart from meta).

The examples that the server rejects must be rejected for a real violation of the R4
specification; they are named here with the reason, so the list stays truthful: a test
fails if one of them starts to pass, or if any other example is rejected.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_server import jsonio
from fhir_server.jsonio import FhirDecimal

EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "r4-examples.ndjson.gz"
FHIR = {"Content-Type": "application/fhir+json"}

# id -> why the official example violates R4 (each checked against the spec)
KNOWN_INVALID: dict[str, str] = {
    "DeviceMetric/example": "DeviceMetric.parent may reference Device only; the example points"
    " to a DeviceDefinition",
    "DeviceUseStatement/example": "DeviceUseStatement.reasonReference allows Condition,"
    " Observation, DiagnosticReport, DocumentReference, Media; the example points to a Procedure",
    "MedicationRequest/medrx0301": "MedicationRequest.dispenseRequest.performer may reference"
    " Organization only; the example points to a Practitioner",
    "Observation/clinical-gender": "Observation.performer does not allow Encounter targets",
    "Questionnaire/qs1": "Questionnaire.item.linkId is 1..1; nested display items have none",
}


def load_examples() -> list[bytes]:
    return [line for line in gzip.decompress(EXAMPLES.read_bytes()).splitlines() if line.strip()]


def comparable(node: Any) -> Any:
    """A form in which 1.50 and 1.5 differ (lossless comparison)."""
    if isinstance(node, FhirDecimal):
        return ("decimal", node.text)
    if isinstance(node, dict):
        return {k: comparable(v) for k, v in node.items()}
    if isinstance(node, list):
        return [comparable(v) for v in node]
    return node


def without_server_meta(resource: dict[str, Any]) -> dict[str, Any]:
    out = dict(resource)
    meta = dict(out.pop("meta", {}) or {})
    meta.pop("versionId", None)
    meta.pop("lastUpdated", None)
    if meta:
        out["meta"] = meta
    return out


async def test_examples_round_trip(client: httpx.AsyncClient) -> None:
    lines = load_examples()
    assert len(lines) > 700
    rejected: dict[str, str] = {}
    changed: list[str] = []
    for line in lines:
        resource = jsonio.loads(line)
        rtype, rid = resource["resourceType"], resource["id"]
        key = f"{rtype}/{rid}"
        r = await client.put(key, content=line, headers=FHIR)
        if r.status_code not in (200, 201):
            rejected[key] = " | ".join(i.get("diagnostics", "") for i in r.json()["issue"])
            continue
        back = jsonio.loads((await client.get(key)).content)
        if comparable(without_server_meta(back)) != comparable(without_server_meta(resource)):
            changed.append(key)
    assert changed == []
    unexpected = {k: v for k, v in rejected.items() if k not in KNOWN_INVALID}
    assert unexpected == {}, unexpected
    assert sorted(rejected) == sorted(KNOWN_INVALID)
    assert len(rejected) <= 0.01 * len(lines)


@pytest.mark.parametrize("key", sorted(KNOWN_INVALID))
def test_known_invalid_reasons_are_documented(key: str) -> None:
    assert len(KNOWN_INVALID[key]) > 20
