from __future__ import annotations

from fhir_server.auth.capability import OAUTH_URIS, add_security, security_block
from fhir_server.auth.config import AuthConfig
from fhir_server.settings import Settings


def test_security_block() -> None:
    cfg = AuthConfig(fhir_base_url="https://fhir.example/fhir")
    sec = security_block(cfg)
    assert sec["cors"] is True
    (ext,) = sec["extension"]
    assert ext["url"] == OAUTH_URIS
    urls = {e["url"]: e["valueUri"] for e in ext["extension"]}
    assert urls == {
        "token": "https://fhir.example/auth/token",
        "authorize": "https://fhir.example/auth/authorize",
    }
    assert sec["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    statement = add_security(
        {"resourceType": "CapabilityStatement", "rest": [{"mode": "server"}]}, cfg
    )
    assert statement["rest"][0]["security"] == sec


def test_config_from_settings() -> None:
    cfg = AuthConfig.from_settings(
        Settings(public_base_url="https://h.example/r4"), auto_approve=True
    )
    assert cfg.audience == "https://h.example/r4"
    assert cfg.issuer == "https://h.example/auth"
    assert cfg.auto_approve
    assert AuthConfig(fhir_base_url="x://y/fhir", issuer_url="https://as/").token_url == (
        "https://as/token"
    )


def test_capability_statement_with_security_validates() -> None:
    from fhir_server.interactions.capabilities import build
    from fhir_server.interactions.router import ROUTES
    from fhir_server.validation.service import validate

    settings = Settings()
    statement = add_security(
        build(settings, ROUTES, date="2025-01-01"), AuthConfig.from_settings(settings)
    )
    errors = [i for i in validate(statement) if i.severity in ("error", "fatal")]
    assert errors == []
