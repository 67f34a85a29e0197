from __future__ import annotations

import pytest

from fhir_server.auth.scopes import (
    STAFF_ROLES,
    Permissions,
    ResourceScope,
    ScopeError,
    ScopeSet,
    parse_scope,
    role_scopes,
)

LAB = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"


def obs(category: str = "laboratory", patient: str = "p1") -> dict[str, object]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": category,
                    }
                ]
            }
        ],
        "code": {"text": "x"},
        "subject": {"reference": f"Patient/{patient}"},
    }


@pytest.mark.parametrize(
    ("v1", "v2"),
    [
        ("patient/Observation.read", "patient/Observation.rs"),
        ("user/Encounter.write", "user/Encounter.cud"),
        ("system/*.*", "system/*.cruds"),
        ("user/*.read", "user/*.rs"),
    ],
)
def test_v1_equals_v2(v1: str, v2: str) -> None:
    a, b = parse_scope(v1), parse_scope(v2)
    assert isinstance(a, ResourceScope) and isinstance(b, ResourceScope)
    assert a.permissions == b.permissions
    assert a.normalized() == b.normalized() == v2
    assert a.v1 and not b.v1


@pytest.mark.parametrize(
    "bad",
    [
        "patient/Observation.sr",  # letters out of order
        "patient/Observation.",
        "patient/Banana.rs",
        "doctor/Observation.rs",
        "patient/Observation.read?category=x",  # v1 takes no parameters
        "patient/Observation.rs?",
        "random",
    ],
)
def test_invalid_scopes(bad: str) -> None:
    with pytest.raises(ScopeError):
        parse_scope(bad)
    assert ScopeSet.parse(bad).unrecognized == (bad,)


def test_named_scopes_and_parameters() -> None:
    s = ScopeSet.parse(
        f"openid fhirUser launch/patient offline_access patient/Observation.rs?category={LAB} bogus"
    )
    assert {"openid", "fhirUser", "launch/patient", "offline_access"} <= s.names
    assert s.unrecognized == ("bogus",)
    (r,) = s.resources
    assert r.parameters == (("category", LAB),)
    assert r.level == "patient" and r.letters == "rs"


@pytest.mark.parametrize(
    ("scope", "interaction", "rtype", "allowed"),
    [
        ("patient/Observation.rs", "read", "Observation", True),
        ("patient/Observation.rs", "search-type", "Observation", True),
        ("patient/Observation.rs", "vread", "Observation", True),
        ("patient/Observation.rs", "history-instance", "Observation", True),
        ("patient/Observation.rs", "create", "Observation", False),
        ("patient/Observation.read", "search-type", "Observation", True),
        ("patient/Observation.read", "update", "Observation", False),
        ("user/Observation.write", "create", "Observation", True),
        ("user/Observation.write", "patch", "Observation", True),
        ("user/Observation.write", "delete", "Observation", True),
        ("user/Observation.write", "read", "Observation", False),
        ("user/*.cruds", "delete", "Encounter", True),
        ("user/*.r", "search-type", "Encounter", False),
        ("user/*.s", "search-system", None, True),
        ("user/Observation.s", "search-system", None, False),
        ("system/*.*", "update", "Patient", True),
        ("user/Encounter.cruds", "read", "Observation", False),
    ],
)
def test_permission_matrix(scope: str, interaction: str, rtype: str | None, allowed: bool) -> None:
    assert Permissions.of(scope).allows(interaction, rtype) is allowed


def test_unknown_interaction_is_an_error() -> None:
    with pytest.raises(ValueError):
        Permissions.of("user/*.cruds").allows("frobnicate", "Patient")


def test_scope_parameters_restrict_by_token() -> None:
    perms = Permissions.of(f"patient/Observation.rs?category={LAB}")
    assert perms.allows("read", "Observation", obs("laboratory"))
    assert not perms.allows("read", "Observation", obs("vital-signs"))
    # code alone, or any code of the system
    assert Permissions.of("user/Observation.rs?category=laboratory").allows(
        "read", "Observation", obs()
    )
    assert Permissions.of(
        "user/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|"
    ).allows("read", "Observation", obs("vital-signs"))
    assert not Permissions.of("user/Observation.rs?category=http://other|laboratory").allows(
        "read", "Observation", obs()
    )
    # unknown parameter: grants nothing for a resource
    assert not Permissions.of("user/Observation.rs?nonsense=1").allows("read", "Observation", obs())
    # several parameters must all match
    both = Permissions.of("user/Observation.rs?category=laboratory&status=final")
    assert both.allows("read", "Observation", obs())
    assert not Permissions.of("user/Observation.rs?category=laboratory&status=amended").allows(
        "read", "Observation", obs()
    )
    # without a resource: "for some resources"; with search params: exact
    assert perms.allows("search-type", "Observation")
    assert perms.allows("search-type", "Observation", params=[("category", LAB)])
    assert not perms.allows("search-type", "Observation", params=[("code", "x")])
    assert not perms.allows(
        "search-type", "Observation", params=[("category", LAB + ",vital-signs")]
    )
    assert not perms.unconditional("search-type", "Observation")


def test_parameterless_scope_wins_over_parameterized() -> None:
    perms = Permissions.of(f"patient/Observation.rs?category={LAB} user/Observation.rs")
    assert perms.allows("read", "Observation", obs("vital-signs"))
    assert perms.unconditional("read", "Observation")
    assert not perms.patient_only("read", "Observation")
    assert Permissions.of("patient/*.rs").patient_only("read", "Observation")


def test_restricted_to_allowed_scopes() -> None:
    allowed = ScopeSet.parse("openid fhirUser launch/patient patient/*.rs user/Observation.cruds")
    asked = ScopeSet.parse(
        "openid offline_access patient/Observation.read patient/Encounter.cruds"
        " user/*.rs system/*.rs"
    )
    got = asked.restricted_to(allowed)
    assert got.names == {"openid"}
    texts = {r.normalized() for r in got.resources}
    assert texts == {"patient/Observation.rs", "patient/Encounter.rs", "user/Observation.rs"}
    # a request that is granted as asked keeps its text (v1 stays v1)
    assert "patient/Observation.read" in got.strings()
    # parameters narrow
    narrow = ScopeSet.parse(f"patient/Observation.rs?category={LAB}")
    assert narrow.subset_of(ScopeSet.parse("patient/Observation.rs"))
    assert not ScopeSet.parse("patient/Observation.rs").subset_of(narrow)
    assert ScopeSet.parse("patient/Observation.rs").restricted_to(narrow).strings() == [
        f"patient/Observation.rs?category={LAB}"
    ]


def test_staff_roles_are_valid_user_scopes() -> None:
    for role in STAFF_ROLES:
        s = role_scopes(role)
        assert not s.unrecognized, role
        assert s.levels() == {"user"}
        assert {"openid", "fhirUser"} <= s.names
    auditor = Permissions(role_scopes("auditor"))
    assert auditor.allows("read", "AuditEvent") and not auditor.allows("update", "Patient")
    biller = Permissions(role_scopes("biller"))
    assert biller.allows("create", "Claim") and not biller.allows("create", "Observation")
    therapist = Permissions(role_scopes("therapist"))
    assert therapist.allows("update", "Observation") and not therapist.allows("create", "Claim")
    front = Permissions(role_scopes("front-desk"))
    assert front.allows("create", "Appointment") and not front.allows("read", "Observation")
    assistant = Permissions(role_scopes("assistant"))
    assert assistant.allows("create", "Observation")
    assert not assistant.allows("delete", "Observation")
