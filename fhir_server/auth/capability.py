"""The ``rest.security`` element of the CapabilityStatement for SMART on FHIR: the
OAuth endpoints (``oauth-uris`` extension), the ``SMART-on-FHIR`` service and CORS."""

from __future__ import annotations

from typing import Any, Final

from fhir_server.auth.config import AuthConfig

OAUTH_URIS: Final = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
SERVICE_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/restful-security-service"


def security_block(config: AuthConfig) -> dict[str, Any]:
    """``CapabilityStatement.rest[0].security``."""
    return {
        "extension": [
            {
                "url": OAUTH_URIS,
                "extension": [
                    {"url": "token", "valueUri": config.token_url},
                    {"url": "authorize", "valueUri": config.authorize_url},
                ],
            }
        ],
        "cors": True,
        "service": [
            {
                "coding": [
                    {"system": SERVICE_SYSTEM, "code": "SMART-on-FHIR", "display": "SMART-on-FHIR"}
                ],
                "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)",
            }
        ],
        "description": (
            "SMART App Launch 2.x: authorization code with PKCE (S256) for apps, "
            "client_credentials with private_key_jwt for backend services; see "
            ".well-known/smart-configuration."
        ),
    }


_WRITES: Final = frozenset({"create", "update", "patch", "delete"})


def add_security(statement: dict[str, Any], config: AuthConfig) -> dict[str, Any]:
    """Put the security block into every ``rest`` entry of a CapabilityStatement
    (in place) and return the statement. The resources only the server writes
    (AuditEvent, Provenance: see :mod:`fhir_server.auth.audit`) lose their write
    interactions."""
    from fhir_server.auth.audit import SERVER_WRITTEN

    for rest in statement.get("rest", ()):
        rest["security"] = security_block(config)
        for resource in rest.get("resource", ()):
            if resource.get("type") in SERVER_WRITTEN:
                resource["interaction"] = [
                    i for i in resource.get("interaction", ()) if i.get("code") not in _WRITES
                ]
                for flag in ("updateCreate", "conditionalCreate", "conditionalUpdate"):
                    resource[flag] = False
                resource["conditionalDelete"] = "not-supported"
    return statement
