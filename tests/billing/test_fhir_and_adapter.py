"""Readers of the input contract, and the terminology adapter."""

from __future__ import annotations

from datetime import date

import pytest

from fhir_server.billing.fhir import plan_of_care, prior_authorizations, reference
from tests.billing.builders import authorization, coverage, plan


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Patient/1", "Patient/1"),
        ("Patient/1/_history/2", "Patient/1"),
        ("https://example.org/fhir/Patient/1", "Patient/1"),
        ("https://example.org/fhir/Patient/1/_history/2", "Patient/1"),
        ("urn:uuid:8a6b", "urn:uuid:8a6b"),
    ],
)
def test_reference(text: str, expected: str) -> None:
    assert reference({"reference": text}) == expected


def test_reference_missing() -> None:
    assert reference(None) is None and reference({"display": "x"}) is None


def test_plan_of_care_certification() -> None:
    p = plan_of_care(plan(delayed_reason="fax lost"))
    assert (p.discipline, p.start, p.end) == ("PT", date(2026, 10, 1), date(2026, 12, 29))
    assert p.certified_on == date(2026, 10, 5) and p.certifier == "Practitioner/md-garcia"
    assert p.delayed_reason == "fax lost"
    assert plan_of_care(plan(signed=None)).certified_on is None


def test_prior_authorizations_from_coverage() -> None:
    cov = coverage(auths=[authorization("PA-1", "2026-10-01", "2026-12-31", "OT", visits=None)])
    (auth,) = prior_authorizations(cov)
    assert auth.number == "PA-1" and auth.discipline == "OT" and auth.visits is None
    assert auth.covers(date(2026, 12, 31)) and not auth.covers(date(2027, 1, 1))


def test_code_catalog_from_the_terminology() -> None:
    from fhir_server.billing.adapter import code_catalog

    codes = code_catalog()
    if not codes:
        pytest.skip("no rehab terminology")
    assert codes["97110"].timed and codes["97110"].unit_rule == "fifteen-minute"
    assert codes["97550"].minutes_per_unit == 30 and codes["97550"].unit_rule == "midpoint"
    assert not codes["97162"].timed and codes["97162"].kind == "evaluation"
    assert "GP" not in codes  # modifiers are not procedure codes
