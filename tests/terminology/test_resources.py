"""The terminology resources under terminology/: valid R4, consistent, and carrying
the facts the billing rules (shared rehab-billing doc) depend on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fhir_server import terminology as tx
from fhir_server.terminology.registry import default_directory
from fhir_server.validation import validate_resource

DIR = default_directory()
FILES = sorted(DIR.glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_the_folder_has_resources() -> None:
    assert len(FILES) >= 30


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_resource_is_valid_r4_and_named_after_its_id(path: Path) -> None:
    resource = load(path)
    assert path.name == f"{resource['resourceType']}-{resource['id']}.json"
    assert validate_resource(resource) == []
    assert resource["status"] == "active"


def test_canonical_urls_are_unique_per_kind_except_fragments_of_external_systems() -> None:
    seen: dict[tuple[str, str], str] = {}
    for path in FILES:
        r = load(path)
        key = (r["resourceType"], r["url"])
        assert key not in seen, f"{path.name} repeats {seen.get(key)}"
        seen[key] = path.name
        if r["resourceType"] in ("ValueSet", "ConceptMap") or r["url"].startswith(tx.BASE):
            assert r["url"] == f"{tx.BASE}/{r['resourceType']}/{r['id']}"


def test_code_system_counts_match_concepts() -> None:
    def count(concepts: list[dict[str, Any]]) -> int:
        return sum(1 + count(c.get("concept", [])) for c in concepts)

    for path in DIR.glob("CodeSystem-*.json"):
        cs = load(path)
        assert cs["count"] == count(cs["concept"]), path.name


def test_fixed_names_used_by_claims() -> None:
    assert {c.code for c in tx.default().code_system(tx.DISCIPLINE) or ()} == {"PT", "OT", "SLP"}
    functions = tx.default().code_system(tx.PERFORMER_FUNCTION)
    assert functions is not None
    assert {c.code for c in functions} == {"therapist", "assistant", "student"}
    methods = tx.default().code_system(tx.UNIT_CALCULATION_METHOD)
    assert methods is not None
    assert {c.code for c in methods} == {"medicare", "cpt-per-code"}


# The code table of the billing doc, section 2: T = timed 15-minute, U = untimed.
BILLING_TABLE = {
    "T": "97110 97112 97113 97116 97124 97140 97530 97533 97535 97537 97542 97750 97755 "
    "97760 97761 97763 97032 97033 97034 97035 97036 97129 97130",
    "U": "97161 97162 97163 97164 97165 97166 97167 97168 97010 97012 97016 97018 97022 "
    "97024 97026 97028 97014 G0283 97150 92507 92508 92521 92522 92523 92524 92526 92610 "
    "92611 92612",
}


@pytest.mark.parametrize(
    ("code", "timed"),
    [(c, kind == "T") for kind, codes in BILLING_TABLE.items() for c in codes.split()],
)
def test_billing_doc_codes_are_known_with_their_timing(code: str, timed: bool) -> None:
    assert tx.is_timed(code) is timed
    assert tx.minutes_per_unit(code) == (15 if timed else None)
    assert tx.unit_rule(code) == ("fifteen-minute" if timed else "per-service")
    assert tx.disciplines(code)


@pytest.mark.parametrize(
    ("code", "minutes"),
    [("97550", 30), ("92605", 60), ("92607", 60), ("96105", 60), ("96125", 60)],
)
def test_codes_of_other_lengths_use_the_midpoint_rule(code: str, minutes: int) -> None:
    assert tx.is_timed(code) is True
    assert tx.minutes_per_unit(code) == minutes
    assert tx.unit_rule(code) == "midpoint"


def test_billing_details_on_codes() -> None:
    bundled = tx.lookup(tx.CPT, "97010")
    assert bundled is not None and bundled.first("medicare-bundled") is True
    unattended = tx.lookup(tx.CPT, "97014")
    assert unattended is not None and unattended.first("medicare-alternative") == "G0283"
    assert tx.disciplines("97161") == {"PT"}
    assert tx.disciplines("97165") == {"OT"}
    assert tx.disciplines("92507") == {"SLP"}
    addon = tx.lookup(tx.CPT, "97130")
    assert addon is not None and addon.first("add-on") is True


@pytest.mark.parametrize(
    ("code", "kind", "discipline"),
    [
        ("GP", "discipline", "PT"),
        ("GO", "discipline", "OT"),
        ("GN", "discipline", "SLP"),
        ("CQ", "assistant", "PT"),
        ("CO", "assistant", "OT"),
        ("KX", "threshold", None),
        ("XE", "distinct-service", None),
        ("XS", "distinct-service", None),
        ("XP", "distinct-service", None),
        ("XU", "distinct-service", None),
    ],
)
def test_hcpcs_modifiers(code: str, kind: str, discipline: str | None) -> None:
    concept = tx.lookup(tx.HCPCS, code)
    assert concept is not None
    assert concept.first("modifier-kind") == kind
    assert concept.first("modifier-discipline") == discipline


def test_cpt_modifier_59_and_modifier_value_sets() -> None:
    concept = tx.lookup(tx.CPT, "59")
    assert concept is not None and concept.first("modifier-kind") == "distinct-service"
    bypass = tx.value_set_membership(f"{tx.BASE}/ValueSet/ncci-bypass-modifiers")
    assert bypass == frozenset({(tx.CPT, "59")} | {(tx.HCPCS, m) for m in ("XE", "XS", "XP", "XU")})
    modifiers = tx.value_set_membership(tx.VS_MODIFIERS)
    procedures = tx.value_set_membership(tx.VS_PROCEDURES)
    assert modifiers and procedures and not modifiers & procedures


def test_timed_and_untimed_sets_split_the_procedures() -> None:
    timed = tx.value_set_membership(tx.VS_TIMED)
    untimed = tx.value_set_membership(tx.VS_UNTIMED)
    procedures = tx.value_set_membership(tx.VS_PROCEDURES)
    assert timed and untimed and procedures
    assert not timed & untimed
    assert timed | untimed == procedures


def test_descriptions_are_neutral_and_short() -> None:
    # Our own words: short labels, never the long AMA descriptor style.
    cpt = tx.default().code_system(tx.CPT)
    assert cpt is not None and cpt.content == "fragment"
    for concept in cpt:
        assert concept.display and len(concept.display) <= 100, concept.code
        assert "each 15 minutes" not in concept.display.lower()


def test_role_taxonomy_property_agrees_with_the_concept_map() -> None:
    cm = tx.default().concept_map(f"{tx.BASE}/ConceptMap/therapy-role-to-nucc")
    assert cm is not None
    mapped = {e["code"]: e["target"][0]["code"] for e in cm["group"][0]["element"]}
    roles = tx.default().code_system(tx.PRACTITIONER_ROLE)
    assert roles is not None
    assert {c.code: c.first("nucc-taxonomy") for c in roles} == mapped
    assert mapped["PT"] == "225100000X"
    assert mapped["PTA"] == "225200000X"
    assert mapped["OT"] == "225X00000X"
    assert mapped["OTA"] == "224Z00000X"
    assert mapped["SLP"] == "235Z00000X"
    for code in mapped.values():
        assert tx.lookup(tx.NUCC, code) is not None


def test_icd_fragment_shape() -> None:
    icd = tx.default().code_system(tx.ICD10CM)
    assert icd is not None
    billable = [c for c in icd if not c.abstract]
    assert 80 <= len(billable) <= 200
    low_back = tx.lookup(tx.ICD10CM, "M54.5")
    assert low_back is not None and low_back.abstract  # a header code since FY2022
    for code, display in [
        ("M54.50", "Low back pain, unspecified"),
        ("M54.2", "Cervicalgia"),
        ("M17.11", "Unilateral primary osteoarthritis, right knee"),
        ("I69.320", "Aphasia following cerebral infarction"),
        ("R13.12", "Dysphagia, oropharyngeal phase"),
        ("R26.89", "Other abnormalities of gait and mobility"),
        ("M62.81", "Muscle weakness (generalized)"),
    ]:
        concept = tx.lookup(tx.ICD10CM, code)
        assert concept is not None and concept.display == display
        assert not concept.abstract
    for concept in billable:
        assert concept.parents or len(concept.code) == 3, concept.code


def test_outcome_measures() -> None:
    members = tx.value_set_membership(f"{tx.BASE}/ValueSet/outcome-measures")
    assert members is not None
    for code in ("LEFS", "QUICKDASH", "BBS", "ODI", "NDI", "FOTO-FS", "6MWT", "TUG"):
        assert (tx.OUTCOME_MEASURE, code) in members
    for code in ("72514-3", "97909-6", "89423-8", "66247-8"):
        assert (tx.LOINC, code) in members
    assert (tx.OUTCOME_MEASURE, "performance-test") not in members  # a grouping concept
    odi = tx.lookup(tx.OUTCOME_MEASURE, "ODI")
    assert odi is not None and odi.first("loinc") == "97909-6"
    assert odi.first("higher-is-better") is False


def test_place_of_service() -> None:
    telehealth = tx.value_set_membership(f"{tx.BASE}/ValueSet/telehealth-place-of-service")
    assert telehealth == frozenset({(tx.POS, "02"), (tx.POS, "10")})
    office = tx.lookup(tx.POS, "11")
    assert office is not None and office.display == "Office"


def test_every_value_set_expands() -> None:
    for url in tx.default().urls("ValueSet"):
        members = tx.value_set_membership(url)
        assert members, url
