"""Real SMART clients against the server over HTTP with authorization on: the PyPI
``fhirclient`` as an app (authorization code with PKCE, the approval given at once by
``auth_auto_approve``) and as a backend service (client_credentials with a JWT
assertion the client signs itself); then what they did is in the audit trail."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import uvicorn
from fhirclient import client
from fhirclient.models import observation as fobservation
from fhirclient.models import patient as fpatient
from fhirclient.server import (
    FHIRNotFoundException,
    FHIRPermissionDeniedException,
    FHIRUnauthorizedException,
)

from fhir_server.app import create_app
from fhir_server.auth.clients import register_client
from fhir_server.auth.server import AuthServer
from fhir_server.auth.tokens import KeyRing
from fhir_server.settings import Settings
from tests.auth.test_wiring import SEED
from tests.conftest import free_port

REDIRECT = "http://127.0.0.1:9/callback"  # never called: the test reads the redirect
APP_KEYS = KeyRing.generate("RS384")


class SecuredServer:
    """``fhir-server serve --auth-auto-approve`` in a thread: uvicorn runs the app's
    lifespan, so the audit trail's background writer runs as in production."""

    def __init__(self, tmp: Path) -> None:
        register_client(
            tmp / "clients.json",
            client_id="rehab-app",
            client_type="public",
            redirect_uris=[REDIRECT],
            scopes="openid fhirUser launch/patient patient/*.rs",
        )
        register_client(
            tmp / "clients.json",
            client_id="nightly-export",
            client_type="confidential",
            scopes="system/Patient.rs system/Observation.rs",
            jwks=APP_KEYS.public_jwks(),
        )
        port = free_port()
        self.settings = Settings(
            database=f"sqlite:///{tmp / 'secured.sqlite'}",
            host="127.0.0.1",
            port=port,
            auth_enabled=True,
            audit_writer_process=True,  # as serve: AuditEvents stored by the writer process
            auth_auto_approve=True,
            auth_default_patient="pa",
            auth_default_user="Practitioner/pr1",
            auth_clients_path=str(tmp / "clients.json"),
            auth_keys_path=str(tmp / "keys.json"),
        )
        self.base_url = self.settings.base_url
        self.app = create_app(self.settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def auth(self) -> AuthServer:
        server: AuthServer = self.app.state.auth_server
        return server

    def admin(self, scope: str = "system/*.cruds") -> dict[str, str]:
        token, _ = self.auth.tokens.issue_access_token(
            subject="admin", client_id="admin", scope=scope
        )
        return {"Authorization": f"Bearer {token}"}

    def __enter__(self) -> SecuredServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        for resource in SEED:
            r = requests.put(
                f"{self.base_url}/{resource['resourceType']}/{resource['id']}",
                json=resource,
                headers=self.admin(),
                timeout=10,
            )
            assert r.status_code == 201, r.text
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def audit_events(self, **params: str) -> list[dict[str, Any]]:
        """AuditEvents matching the search, once the trail has written what it had (the
        writer process's first batch waits for the process to start)."""
        trail = self.app.state.audit
        time.sleep(0.3)  # more than the writer's interval
        deadline = time.monotonic() + 30
        while trail.busy and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not trail.busy, "the audit trail did not catch up"
        assert trail.writer is not None and trail.writer.alive  # stored by the process
        r = requests.get(
            f"{self.base_url}/AuditEvent",
            params={"_count": "500", **params},
            headers=self.admin("system/AuditEvent.rs"),
            timeout=10,
        )
        assert r.status_code == 200, r.text
        return [e["resource"] for e in r.json().get("entry", ())]


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredServer]:
    with SecuredServer(tmp_path_factory.mktemp("secured")) as server:
        yield server


def _client_ids(events: list[dict[str, Any]]) -> set[str]:
    return {
        a["who"]["identifier"]["value"]
        for e in events
        for a in e["agent"]
        if a["type"]["coding"][0]["code"] == "110153" and "who" in a
    }


def test_fhirclient_app_launch_with_pkce(secured: SecuredServer) -> None:
    smart = client.FHIRClient(
        settings={
            "app_id": "rehab-app",
            "api_base": secured.base_url,
            "redirect_uri": REDIRECT,
            "scope": "openid fhirUser patient/*.rs",
        }
    )
    try:
        assert smart.prepare() is False  # the CapabilityStatement asks for OAuth
        url = smart.authorize_url
        assert "code_challenge=" in url and "code_challenge_method=S256" in url
        r = requests.get(url, allow_redirects=False, timeout=10)
        assert r.status_code == 302, r.text
        assert r.headers["location"].startswith(REDIRECT)
        smart.handle_callback(r.headers["location"])
        assert smart.ready and smart.patient_id == "pa"

        patient = fpatient.Patient.read("pa", smart.server)
        assert patient.name[0].family == "Lovelace"
        search = fobservation.Observation.where({"subject": "Patient/pa"})
        found = {o.id for o in search.perform_resources_iter(smart.server)}
        assert found == {"oa-vital", "oa-lab"}
        with pytest.raises(FHIRNotFoundException):
            fpatient.Patient.read("pb", smart.server)  # another patient: as if unknown
        with pytest.raises(FHIRPermissionDeniedException):  # read-only scopes
            fpatient.Patient({"name": [{"family": "New"}]}).create(smart.server)
    finally:
        smart.server.session.close()

    events = [
        e for e in secured.audit_events(patient="Patient/pa") if "rehab-app" in _client_ids([e])
    ]
    outcomes = sorted((e["subtype"][0]["code"], e["outcome"]) for e in events)
    assert outcomes == [("create", "4"), ("read", "0"), ("read", "4"), ("search-type", "0")]
    refused = secured.audit_events(entity="Patient/pb", outcome="4")
    assert "rehab-app" in _client_ids(refused)
    for event in events:  # the user who approved is the requestor
        users = [a for a in event["agent"] if a["requestor"]]
        assert [u["who"] for u in users] == [{"reference": "Practitioner/pr1"}]


def test_fhirclient_backend_service_signs_its_assertion(secured: SecuredServer) -> None:
    token_url = secured.auth.config.token_url
    now = int(time.time())
    assertion = APP_KEYS.sign(
        {
            "iss": "nightly-export",
            "sub": "nightly-export",
            "aud": token_url,
            "exp": now + 240,
            "jti": str(uuid.uuid4()),
        }
    )
    smart = client.FHIRClient(
        settings={
            "app_id": "nightly-export",
            "api_base": secured.base_url,
            "scope": "system/Patient.rs system/Observation.rs",
            "jwt_token": assertion,
        }
    )
    smart.wants_patient = False  # a backend service has no patient context
    try:
        assert smart.prepare() is False
        smart.authorize()
        assert smart.ready
        bundle = fobservation.Observation.where({"_count": "50"}).perform(smart.server)
        assert bundle.total == 3
        assert fpatient.Patient.read("pb", smart.server).id == "pb"
        # the same assertion again: its jti was used
        with pytest.raises(FHIRUnauthorizedException):
            smart.authorize()
    finally:
        smart.server.session.close()

    events = [
        e
        for e in secured.audit_events(subtype="search-type")
        if "nightly-export" in _client_ids([e])
    ]
    assert len(events) == 1
    (client_agent,) = [a for a in events[0]["agent"] if a["requestor"]]
    # no user behind a backend service: the client itself asked
    assert client_agent["who"]["identifier"]["value"] == "nightly-export"
    assert events[0]["outcome"] == "0"
