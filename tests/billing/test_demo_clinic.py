"""The builder over the demo clinic (examples/) with codes and NCCI pairs read from the
rehab terminology through the adapter."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from fhir_server import jsonio
from fhir_server.billing import BillingInput, ClaimDraft, build_claim
from fhir_server.billing.adapter import code_catalog, ptp_pairs
from fhir_server.billing.fhir import ref_of, reference

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo-clinic.json"


def _resources() -> list[dict[str, Any]]:
    if not DEMO.exists():
        pytest.skip("no demo clinic")
    bundle = json.loads(DEMO.read_text("utf-8"))
    return [e["resource"] for e in bundle.get("entry", [])]


def _claims() -> dict[str, ClaimDraft]:
    resources = _resources()
    by_type: dict[str, list[dict[str, Any]]] = {}
    for r in resources:
        by_type.setdefault(r["resourceType"], []).append(r)
    index = {ref_of(r): r for r in resources}
    codes = code_catalog()
    fees = {code: Decimal("30.00") for code in codes}
    out: dict[str, ClaimDraft] = {}
    for enc in by_type.get("Encounter", []):
        if enc.get("status") != "finished":
            continue
        patient = index[reference(enc["subject"]) or ""]
        coverage = next(
            c for c in by_type["Coverage"] if reference(c.get("beneficiary")) == ref_of(patient)
        )
        out[enc["id"]] = build_claim(
            BillingInput(
                encounters=[enc],
                procedures=[
                    p for p in by_type["Procedure"] if reference(p.get("encounter")) == ref_of(enc)
                ],
                coverage=coverage,
                patient=patient,
                organization=index[reference(enc["serviceProvider"]) or ""],
                created="2026-11-01T08:00:00Z",
                codes=codes,
                fee_schedule=fees,
                practitioners=by_type["Practitioner"] + by_type["PractitionerRole"],
                conditions=by_type["Condition"],
                plans_of_care=by_type["CarePlan"],
                ptp_pairs=ptp_pairs(),
            )
        )
    return out


def test_demo_sessions_become_valid_claims() -> None:
    from fhir_server.validation import validate

    claims = _claims()
    assert claims
    for enc_id, draft in claims.items():
        claim = jsonio.loads(jsonio.dumps(draft.claim))
        claim["id"] = f"claim-{enc_id}"
        problems = [i for i in validate(claim) if i.severity in ("error", "fatal")]
        assert problems == [], enc_id
        assert all(len(item["modifier"]) <= 4 for item in claim.get("item", []))


def test_demo_expired_certification_is_held() -> None:
    held = {enc_id for enc_id, draft in _claims().items() if draft.held}
    assert any(enc_id.startswith("enc-grace") for enc_id in held)
