from __future__ import annotations

from typing import Any

import pytest

from fhir_server.auth.access import (
    Authenticator,
    Principal,
    can,
    compartment_params,
    needs_result_filter,
    patient_compartment_filter,
    resource_in_patient_compartment,
    search_compartment,
)
from fhir_server.auth.scopes import Permissions
from fhir_server.auth.tokens import KeyRing, OidcVerifier, TokenIssuer
from fhir_server.errors import FhirError

BASE = "https://fhir.example/fhir"


def ref(target: str) -> dict[str, str]:
    return {"reference": target}


OBS = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "category": [{"coding": [{"code": "laboratory"}]}],
    "code": {"text": "ROM"},
    "subject": ref("Patient/p1"),
    "performer": [ref("Practitioner/pt-1")],
}


@pytest.mark.parametrize(
    ("resource", "member"),
    [
        (OBS, True),
        ({**OBS, "subject": ref("Patient/p2")}, False),
        ({**OBS, "subject": ref("Group/p1")}, False),
        ({**OBS, "subject": ref("Patient/p1/_history/3")}, True),
        ({**OBS, "subject": ref(f"{BASE}/Patient/p1")}, True),
        ({**OBS, "subject": ref("https://elsewhere/fhir/Patient/p1")}, False),
        ({**OBS, "subject": ref("Group/g"), "performer": [ref("Patient/p1")]}, True),
        (
            {
                "resourceType": "Encounter",
                "status": "finished",
                "class": {"code": "AMB"},
                "subject": ref("Patient/p1"),
            },
            True,
        ),
        (
            {
                "resourceType": "AllergyIntolerance",
                "patient": ref("Patient/p9"),
                "recorder": ref("Patient/p1"),
            },
            True,
        ),
        (
            {
                "resourceType": "Appointment",
                "status": "booked",
                "participant": [
                    {"actor": ref("Practitioner/x"), "status": "accepted"},
                    {"actor": ref("Patient/p1"), "status": "accepted"},
                ],
            },
            True,
        ),
        (
            {
                "resourceType": "Appointment",
                "status": "booked",
                "participant": [{"actor": ref("Practitioner/x"), "status": "accepted"}],
            },
            False,
        ),
        ({"resourceType": "Claim", "patient": ref("Patient/p1")}, True),
        ({"resourceType": "Coverage", "beneficiary": ref("Patient/p1")}, True),
        ({"resourceType": "Patient", "id": "p1"}, True),
        ({"resourceType": "Patient", "id": "p2"}, False),
        (
            {
                "resourceType": "Patient",
                "id": "p2",
                "link": [{"other": ref("Patient/p1"), "type": "seealso"}],
            },
            True,
        ),
        ({"resourceType": "Practitioner", "id": "p1"}, False),
        ({"resourceType": "Observation"}, False),
    ],
)
def test_compartment_membership(resource: dict[str, Any], member: bool) -> None:
    assert resource_in_patient_compartment(resource, "p1", BASE) is member


def test_compartment_params() -> None:
    assert compartment_params("Observation") == ("subject", "performer")
    assert "patient" in compartment_params("AllergyIntolerance")
    assert compartment_params("Practitioner") == ()
    assert compartment_params("Patient") == ("link",)


def principal(scope: str, patient: str | None = "p1") -> Principal:
    return Principal("app", "u", Permissions.of(scope), patient=patient)


def test_can_with_patient_scope() -> None:
    p = principal("patient/Observation.rs patient/Practitioner.rs patient/Patient.r")
    assert can(p, "read", "Observation", OBS)
    assert not can(p, "read", "Observation", {**OBS, "subject": ref("Patient/p2")})
    assert can(p, "search-type", "Observation")
    assert not can(p, "create", "Observation", OBS)
    assert can(p, "read", "Patient", {"resourceType": "Patient", "id": "p1"})
    assert not can(p, "read", "Patient", {"resourceType": "Patient", "id": "p2"})
    assert not can(p, "search-type", "Patient")
    # not in the compartment: the patient scope is not limited by it
    assert can(p, "read", "Practitioner", {"resourceType": "Practitioner", "id": "x"})
    # no patient in context: patient scopes grant nothing
    assert not can(principal("patient/*.rs", patient=None), "read", "Observation", OBS)
    assert not can(principal("patient/*.rs", patient=None), "search-type", "Observation")


def test_can_with_parameters_and_mixed_levels() -> None:
    p = principal("patient/Observation.rs user/Observation.rs?category=vital-signs")
    assert can(p, "read", "Observation", OBS)  # the patient's own lab result
    vital = {
        **OBS,
        "subject": ref("Patient/p2"),
        "category": [{"coding": [{"code": "vital-signs"}]}],
    }
    assert can(p, "read", "Observation", vital)  # another patient's vital signs
    assert not can(p, "read", "Observation", {**OBS, "subject": ref("Patient/p2")})
    assert patient_compartment_filter(p, "Observation") is None
    assert needs_result_filter(p, "search-type", "Observation")
    assert can(p, "search-type", "Observation", params=[("category", "vital-signs")])


def test_search_restrictions() -> None:
    p = principal("patient/*.rs")
    assert patient_compartment_filter(p, "Observation") == [
        ("subject", "Patient/p1"),
        ("performer", "Patient/p1"),
    ]
    assert patient_compartment_filter(p, "Patient") == [("_id", "p1"), ("link", "Patient/p1")]
    assert patient_compartment_filter(p, "Practitioner") is None
    assert search_compartment(p, "Encounter") == ("Patient", "p1")
    assert not needs_result_filter(p, "search-type", "Observation")
    assert needs_result_filter(p, "search-system", None)
    u = principal("user/*.rs patient/*.rs")
    assert patient_compartment_filter(u, "Observation") is None
    assert not needs_result_filter(u, "search-type", "Observation")
    assert needs_result_filter(
        principal("user/Observation.rs?category=x"), "search-type", "Observation"
    )


async def test_authenticator_routes_by_issuer() -> None:
    ours = TokenIssuer(KeyRing.generate(), "https://fhir.example/auth", BASE)
    idp_keys = KeyRing.generate("RS384")
    idp = OidcVerifier("https://idp.example", BASE, jwks=idp_keys.public_jwks())
    auth = Authenticator(ours, [idp])
    tok, _ = ours.issue_access_token(
        subject="Practitioner/pt-1",
        client_id="app",
        scope="user/*.rs",
        fhir_user="Practitioner/pt-1",
    )
    p = await auth.authenticate("Bearer " + tok)
    assert p.client_id == "app" and p.fhir_user == "Practitioner/pt-1" and p.patient is None
    import time

    now = int(time.time())
    ext = idp_keys.sign(
        {
            "iss": "https://idp.example",
            "aud": BASE,
            "sub": "alice",
            "exp": now + 60,
            "azp": "portal",
            "scp": ["patient/*.rs", "launch/patient"],
            "patient": "p1",
        }
    )
    p = await auth.authenticate("bearer " + ext)
    assert p.client_id == "portal" and p.patient == "p1"
    assert can(p, "read", "Observation", OBS)
    other = KeyRing.generate().sign(
        {"iss": "https://unknown", "aud": BASE, "sub": "x", "exp": now + 60}
    )
    with pytest.raises(FhirError) as err:
        await auth.authenticate("Bearer " + other)
    assert err.value.status == 401
    assert "invalid_token" in err.value.headers["WWW-Authenticate"]
