"""Payer rules are data: the shipped file, overrides per payer, TOML, errors."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from fhir_server.billing.claim import select_rules
from fhir_server.billing.rules import RulesError, load_rules, parse_rules
from tests.billing.builders import coverage


def test_shipped_rules() -> None:
    rules = load_rules()
    medicare, commercial = rules.profiles["medicare"], rules.profiles["cpt-per-code"]
    assert medicare.unit_method == "pooled-8-minute" and commercial.unit_method == "per-code"
    assert medicare.discipline_modifiers == {"PT": "GP", "OT": "GO", "SLP": "GN"}
    assert medicare.max_modifiers == 4 and medicare.max_diagnoses == 12
    assert medicare.bundled_codes == {"97010"}
    assert medicare.code_substitutions["97014"].code == "G0283"
    assert medicare.kx is not None and commercial.kx is None
    assert medicare.progress_report_max_treatment_days == 10
    assert medicare.certification_max_days == 90
    assert commercial.requires_prior_authorization and not medicare.requires_prior_authorization


def test_payer_override_starts_from_its_profile() -> None:
    data = {
        "profiles": {
            "medicare": {
                "unit_method": "pooled-8-minute",
                "assistant": {"modifiers": {"PT": "CQ"}, "de_minimis_percent": 10},
            }
        },
        "payers": {
            "Organization/mac": {
                "profile": "medicare",
                "tie_break": ["code-desc"],
                "assistant": {"residual_rule": "de-minimis"},
            }
        },
    }
    rules = parse_rules(data)
    payer = rules.for_payer("medicare", "Organization/mac")
    assert payer is not None and payer.tie_break == ("code-desc",)
    assert payer.assistant.residual_rule == "de-minimis"
    assert payer.assistant.modifiers == {"PT": "CQ"}  # merged, not replaced
    assert rules.for_payer("medicare", "Organization/other") == rules.profiles["medicare"]
    assert rules.for_payer(None) is None


def test_coverage_selects_rules_by_billing_profile() -> None:
    rules, issues = select_rules(load_rules(), coverage("cpt-per-code"))
    assert rules is not None and rules.profile == "cpt-per-code" and not issues
    rules, issues = select_rules(load_rules(), coverage("barter"))
    assert rules is None and issues[0].severity == "error"


def test_toml_rules(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(
        '[profiles.medicare]\nunit_method = "pooled-8-minute"\ntie_break = ["fee", "code"]\n'
        '[profiles.medicare.kx]\ngroups = { PT = "PT-SLP" }\nthresholds = { 2026 = "2480" }\n',
        "utf-8",
    )
    medicare = load_rules(path).profiles["medicare"]
    assert medicare.tie_break == ("fee", "code")
    assert medicare.kx is not None and medicare.kx.thresholds == {2026: Decimal(2480)}


@pytest.mark.parametrize(
    "profile",
    [
        {"unit_method": "guess"},
        {"unit_method": "per-code", "tie_break": ["coin-flip"]},
        {"unit_method": "per-code", "max_modifiers": -1},
        {"unit_method": "per-code", "surprise": True},
        {"unit_method": "per-code", "kx": {"thresholds": {"next year": 1}}},
        {"unit_method": "per-code", "kx": {"thresholds": {"2026": "lots"}}},
        {"unit_method": "per-code", "assistant": {"residual_rule": "coin"}},
        {"unit_method": "per-code", "ncci": {"unknown_timing": "ignore"}},
        {"unit_method": "per-code", "requires_certification": "yes"},
    ],
)
def test_bad_rules_are_refused(profile: dict[str, object]) -> None:
    with pytest.raises(RulesError):
        parse_rules({"profiles": {"p": profile}})


def test_unreadable_file(tmp_path: Path) -> None:
    bad = tmp_path / "rules.json"
    bad.write_text("{not json", "utf-8")
    with pytest.raises(RulesError):
        load_rules(bad)
    with pytest.raises(RulesError):
        parse_rules({"profiles": {}, "payers": {"Organization/x": {"profile": "nope"}}})
