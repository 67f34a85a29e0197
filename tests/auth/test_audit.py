"""The audit trail with authorization on: an AuditEvent for every interaction and
every failed authorization, a Provenance for every write, both written by the server
only (see ``fhir_server.auth.audit``)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from fhir_server import jsonio, validation
from fhir_server.app import create_app
from fhir_server.auth.audit import AuditTrail
from fhir_server.auth.tokens import KeyRing, TokenIssuer
from fhir_server.settings import Settings
from fhir_server.storage.sqlite.store import SqliteStore
from tests.auth.test_wiring import BASE, Env, observation, open_env

ROOT = Path(__file__).resolve().parents[2]
USER = "Practitioner/pr1"


@pytest.fixture
async def env(store: SqliteStore, tmp_path: Path) -> AsyncIterator[Env]:
    async with open_env(store, tmp_path) as e:
        yield e


def trail(env: Env) -> AuditTrail:
    audit: AuditTrail = env.app.state.audit
    return audit


def stored(store: SqliteStore, resource_type: str) -> dict[str, dict[str, Any]]:
    """The current resources of a type, straight from the store (not through the
    API, which would audit the look)."""
    rows = store.reader.execute(
        "SELECT id, content FROM resource WHERE type = ? AND content IS NOT NULL",
        (resource_type,),
    ).fetchall()
    return {rid: jsonio.loads(content) for rid, content in rows}


class Trail:
    """The AuditEvents and Provenances written since the last look."""

    def __init__(self, env: Env, store: SqliteStore) -> None:
        self.env = env
        self.store = store
        self.seen = {t: set(stored(store, t)) for t in ("AuditEvent", "Provenance")}

    async def new(self, resource_type: str = "AuditEvent", flush: bool = True) -> list[Any]:
        if flush:
            await trail(self.env).flush()
        now = stored(self.store, resource_type)
        out = [r for rid, r in now.items() if rid not in self.seen[resource_type]]
        self.seen[resource_type] |= set(now)
        return sorted(out, key=lambda r: str(r.get("recorded")))


def subtype(event: dict[str, Any]) -> str | None:
    codes = [c["code"] for c in event.get("subtype", ())]
    return codes[0] if codes else None


def entities(event: dict[str, Any]) -> list[str]:
    return [e["what"]["reference"] for e in event.get("entity", ()) if "what" in e]


def agent(event: dict[str, Any], code: str) -> dict[str, Any] | None:
    for a in event["agent"]:
        if a["type"]["coding"][0]["code"] == code:
            return dict(a)
    return None


def assert_valid(resource: dict[str, Any]) -> None:
    issues = validation.validate_resource(resource)
    assert not [i for i in issues if i.severity in ("error", "fatal")], issues


def user_bearer(env: Env, scope: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + env.token(scope, user=USER)}


# --------------------------------------------------------------------------- recorded


async def test_a_read_a_search_a_create_and_an_operation_each_leave_one(
    env: Env, store: SqliteStore
) -> None:
    t = Trail(env, store)
    h = user_bearer(env, "user/*.cruds")

    r = await env.client.get("/fhir/Patient/pa", headers=h)
    assert r.status_code == 200
    (read,) = await t.new()
    assert read["type"]["code"] == "rest"
    assert (subtype(read), read["action"], read["outcome"]) == ("read", "R", "0")
    assert "Patient/pa/_history/1" in entities(read)
    client = agent(read, "110153")
    assert client is not None and client["who"]["identifier"]["value"] == "tests"
    assert client["requestor"] is False and client["network"]["address"]
    user = agent(read, "IRCP")
    assert user == {**user, "who": {"reference": USER}, "requestor": True}
    assert read["source"]["observer"]["identifier"]["value"] == BASE
    assert_valid(read)

    r = await env.client.get(
        "/fhir/Observation", params={"subject": "Patient/pa", "_count": "5"}, headers=h
    )
    assert r.status_code == 200
    (search,) = await t.new()
    assert (subtype(search), search["action"], search["outcome"]) == ("search-type", "E", "0")
    query = next(e for e in search["entity"] if e["role"]["code"] == "24")
    assert base64.b64decode(query["query"]).decode() == "subject=Patient%2Fpa&_count=5"
    assert query["description"].startswith("GET Observation?")
    patient = next(e for e in search["entity"] if e["role"]["code"] == "1")
    assert patient["what"]["reference"] == "Patient/pa"
    assert_valid(search)

    r = await env.client.post(
        "/fhir/Observation", json=observation("ignored", "pa", "vital-signs"), headers=h
    )
    assert r.status_code == 201
    oid = r.json()["id"]
    # written with the data: there before any flush
    (create,) = await t.new(flush=False)
    assert (subtype(create), create["action"], create["outcome"]) == ("create", "C", "0")
    assert f"Observation/{oid}/_history/1" in entities(create)
    assert "Patient/pa" in entities(create)
    assert_valid(create)
    assert trail(env).pending == 0

    r = await env.client.post(
        "/fhir/Patient/$validate",
        json={"resourceType": "Patient", "name": [{"family": "X"}]},
        headers=h,
    )
    assert r.status_code == 200, r.text
    (operation,) = await t.new()
    assert (subtype(operation), operation["action"]) == ("operation", "E")
    assert any(e.get("name") == "$validate" for e in operation["entity"])
    assert_valid(operation)


async def test_audit_events_are_searchable(env: Env, store: SqliteStore) -> None:
    t = Trail(env, store)
    h = user_bearer(env, "user/Patient.rs user/AuditEvent.rs")
    assert (await env.client.get("/fhir/Patient/pb", headers=h)).status_code == 200
    assert (await env.client.get("/fhir/Observation/oa-vital", headers=h)).status_code == 403
    await t.new()
    r = await env.client.get(
        "/fhir/AuditEvent", params={"entity": "Patient/pb", "subtype": "read"}, headers=h
    )
    assert r.status_code == 200
    found = [e["resource"] for e in r.json().get("entry", ())]
    assert len(found) == 1 and "Patient/pb/_history/1" in entities(found[0])
    r = await env.client.get("/fhir/AuditEvent", params={"outcome": "4", "agent": USER}, headers=h)
    (refused,) = [e["resource"] for e in r.json()["entry"]]
    assert refused["outcomeDesc"].startswith("403")
    # without a scope for AuditEvent: refused, and that is audited too
    r = await env.client.get("/fhir/AuditEvent", headers=user_bearer(env, "user/Patient.rs"))
    assert r.status_code == 403


def _tamper(token: str) -> str:
    head, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["scope"] = "system/*.cruds"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"{head}.{forged}.{signature}"


def _bad_token(env: Env, kind: str) -> str | None:
    server = env.server
    if kind == "missing":
        return None
    if kind == "wrong-audience":
        other = TokenIssuer(server.keys, server.config.issuer, "http://elsewhere/fhir")
        return other.issue_access_token(subject="x", client_id="tests", scope="system/*.rs")[0]
    if kind == "expired":
        return server.tokens.issue_access_token(
            subject="x", client_id="tests", scope="system/*.rs", lifetime=-120
        )[0]
    if kind == "tampered":
        return _tamper(env.token("user/Patient.rs"))
    assert kind == "wrongly-signed"
    now = int(time.time())
    claims = {
        "iss": server.config.issuer,
        "aud": BASE,
        "sub": "x",
        "client_id": "tests",
        "scope": "system/*.rs",
        "iat": now,
        "exp": now + 300,
    }
    # our key id, someone else's key
    stranger = KeyRing.generate().current.private_key
    return jwt.encode(claims, stranger, algorithm="ES384", headers={"kid": server.keys.current.kid})


@pytest.mark.parametrize(
    "kind", ["missing", "wrong-audience", "expired", "tampered", "wrongly-signed"]
)
async def test_every_rejected_token_is_audited(env: Env, store: SqliteStore, kind: str) -> None:
    t = Trail(env, store)
    token = _bad_token(env, kind)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = await env.client.get("/fhir/Patient/pa", headers=headers)
    assert r.status_code == 401, r.text
    (event,) = await t.new()
    assert event["outcome"] == "4"
    assert event["outcomeDesc"].startswith("401")
    assert subtype(event) == "read" and "Patient/pa" in entities(event)
    client = agent(event, "110153")
    assert client is not None and "who" not in client  # nobody was authenticated
    assert client["requestor"] is True
    assert_valid(event)


async def test_a_missing_scope_is_audited(env: Env, store: SqliteStore) -> None:
    t = Trail(env, store)
    h = user_bearer(env, "user/Observation.rs")
    assert (await env.client.get("/fhir/Patient/pa", headers=h)).status_code == 403
    r = await env.client.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=h)
    assert r.status_code == 403
    read, create = await t.new()
    assert (subtype(read), read["outcome"]) == ("read", "4")
    assert read["outcomeDesc"].startswith("403")
    assert (subtype(create), create["action"], create["outcome"]) == ("create", "C", "4")
    client = agent(create, "110153")
    assert client is not None and client["who"]["identifier"]["value"] == "tests"
    assert await t.new("Provenance") == []


async def test_batch_entries_are_audited_one_by_one(env: Env, store: SqliteStore) -> None:
    t = Trail(env, store)
    h = user_bearer(env, "patient/*.read")
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": "Patient/pa"}},
            {"request": {"method": "GET", "url": "Observation?subject=Patient/pa"}},
        ],
    }
    h = {"Authorization": "Bearer " + env.token("patient/*.read", patient="pa")}
    r = await env.client.post("/fhir", json=batch, headers=h)
    assert r.status_code == 200
    events = await t.new()
    assert sorted(subtype(e) or "" for e in events) == ["batch", "read", "search-type"]
    assert all("Patient/pa" in entities(e) for e in events)  # the token's patient


# --------------------------------------------------------------------------- Provenance


async def test_a_create_has_its_provenance(env: Env, store: SqliteStore) -> None:
    t = Trail(env, store)
    h = user_bearer(env, "user/*.cruds")
    r = await env.client.post(
        "/fhir/Observation", json=observation("x", "pb", "vital-signs"), headers=h
    )
    assert r.status_code == 201
    oid = r.json()["id"]
    (prov,) = await t.new("Provenance", flush=False)
    assert prov["target"] == [{"reference": f"Observation/{oid}/_history/1"}]
    assert prov["activity"]["coding"][0]["code"] == "CREATE"
    author, app = prov["agent"]
    assert author["who"] == {"reference": USER}
    assert author["type"]["coding"][0]["code"] == "author"
    assert app["who"]["identifier"]["value"] == "tests"
    assert app["onBehalfOf"] == {"reference": USER}
    assert_valid(prov)
    assert [subtype(e) for e in await t.new(flush=False)] == ["create"]
    # an update and a delete: one each
    r = await env.client.put(
        f"/fhir/Observation/{oid}",
        json={**observation(oid, "pb", "laboratory")},
        headers=h,
    )
    assert r.status_code == 200
    assert (await env.client.delete(f"/fhir/Observation/{oid}", headers=h)).status_code == 204
    update, delete = await t.new("Provenance", flush=False)
    assert update["target"] == [{"reference": f"Observation/{oid}/_history/2"}]
    assert update["activity"]["coding"][0]["code"] == "UPDATE"
    assert delete["target"] == [{"reference": f"Observation/{oid}/_history/3"}]
    assert delete["activity"]["coding"][0]["code"] == "DELETE"
    events = await t.new()
    assert [(subtype(e), e["action"]) for e in events] == [("update", "U"), ("delete", "D")]


async def test_a_transaction_has_one_provenance_for_all_its_writes(
    env: Env, store: SqliteStore
) -> None:
    t = Trail(env, store)
    h = user_bearer(env, "user/*.cruds")
    tx = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:0b3c2d56-1f4e-4a8e-9d7e-1c2b3a4d5e6f",
                "resource": {"resourceType": "Patient", "name": [{"family": "New"}]},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": observation(
                    "ignored",
                    "0",
                    "vital-signs",
                    subject={"reference": "urn:uuid:0b3c2d56-1f4e-4a8e-9d7e-1c2b3a4d5e6f"},
                ),
                "request": {"method": "POST", "url": "Observation"},
            },
            {
                "resource": observation("oa-vital", "pa", "laboratory"),
                "request": {"method": "PUT", "url": "Observation/oa-vital"},
            },
            {"request": {"method": "DELETE", "url": "Observation/ob-vital"}},
        ],
    }
    r = await env.client.post("/fhir", json=tx, headers=h)
    assert r.status_code == 200, r.text
    (prov,) = await t.new("Provenance", flush=False)
    targets = {x["reference"] for x in prov["target"]}
    created = {e["response"]["location"].removeprefix(BASE + "/") for e in r.json()["entry"][:2]}
    assert targets == created | {
        "Observation/oa-vital/_history/2",
        "Observation/ob-vital/_history/2",
    }
    assert prov["activity"]["coding"][0]["code"] == "OPERATE"
    assert prov["activity"]["text"] == "transaction"
    assert_valid(prov)
    (event,) = await t.new(flush=False)
    assert (subtype(event), event["action"], event["outcome"]) == ("transaction", "E", "0")
    assert targets <= set(entities(event))


async def test_a_failed_write_leaves_no_provenance(env: Env, store: SqliteStore) -> None:
    t = Trail(env, store)
    h = user_bearer(env, "user/*.cruds")
    bad = {"resourceType": "Observation", "id": "oa-vital", "status": "nonsense"}
    r = await env.client.put("/fhir/Observation/oa-vital", json=bad, headers=h)
    assert r.status_code == 400
    assert await t.new("Provenance") == []
    (event,) = await t.new()
    assert (subtype(event), event["outcome"]) == ("update", "4")
    assert entities(event) == ["Observation/oa-vital"]


async def test_claim_generation_has_its_provenance(env: Env, store: SqliteStore) -> None:
    from tests.operations.test_claims import DEMO, _fees, params

    admin = env.bearer("system/*.cruds")
    for bundle in (json.loads(DEMO.read_text()), _fees()):
        r = await env.client.post("/fhir", json=bundle, headers=admin)
        assert r.status_code == 200, r.text
    t = Trail(env, store)
    body = params(patient="Patient/pat-ada", start="2026-10-01", end="2026-10-31", persist=True)
    r = await env.client.post(
        "/fhir/Claim/$generate", json=body, headers=user_bearer(env, "user/*.cruds")
    )
    assert r.status_code == 200, r.text
    claim = next(p["resource"] for p in r.json()["parameter"] if p["name"] == "claim")
    (prov,) = await t.new("Provenance", flush=False)
    targets = {x["reference"] for x in prov["target"]}
    assert f"Claim/{claim['id']}/_history/1" in targets
    assert {t.split("/_history/")[0] for t in targets if t.startswith("Encounter/")} == {
        f"Encounter/enc-ada-{n}" for n in (1, 2, 3, 4)
    }
    assert prov["activity"]["text"] == "Claim/$generate"
    (event,) = await t.new(flush=False)
    assert (subtype(event), event["action"]) == ("operation", "E")
    assert "Patient/pat-ada" in entities(event)


# --------------------------------------------------------------------------- read-only


WRITES = [
    ("POST", "/fhir/AuditEvent", {"resourceType": "AuditEvent"}),
    ("POST", "/fhir/Provenance", {"resourceType": "Provenance"}),
    ("PUT", "/fhir/AuditEvent?subtype=read", {"resourceType": "AuditEvent"}),
    ("DELETE", "/fhir/Provenance?_id=x", None),
]


async def test_audit_records_cannot_be_written_through_the_api(
    env: Env, store: SqliteStore
) -> None:
    h = user_bearer(env, "system/*.cruds user/*.cruds")
    await trail(env).flush()
    event_id, event = next(iter(stored(store, "AuditEvent").items()))
    prov_id, prov = next(iter(stored(store, "Provenance").items()))
    attempts: list[tuple[str, str, Any]] = [
        *WRITES,
        ("PUT", f"/fhir/AuditEvent/{event_id}", {**event, "outcome": "0"}),
        ("DELETE", f"/fhir/AuditEvent/{event_id}", None),
        ("DELETE", f"/fhir/Provenance/{prov_id}", None),
        ("PUT", f"/fhir/Provenance/{prov_id}", prov),
        ("PATCH", f"/fhir/AuditEvent/{event_id}", [{"op": "remove", "path": "/entity"}]),
    ]
    for method, url, body in attempts:
        headers = dict(h)
        headers["Content-Type"] = (
            "application/json-patch+json" if method == "PATCH" else "application/fhir+json"
        )
        r = await env.client.request(
            method, url, headers=headers, content=json.dumps(body) if body else None
        )
        assert r.status_code == 405, (method, url, r.text)
        assert r.json()["resourceType"] == "OperationOutcome"
    for entry in (
        {
            "resource": {"resourceType": "Provenance"},
            "request": {"method": "POST", "url": "Provenance"},
        },
        {"resource": event, "request": {"method": "PUT", "url": f"AuditEvent/{event_id}"}},
        {"request": {"method": "DELETE", "url": f"AuditEvent/{event_id}"}},
    ):
        tx = {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
        r = await env.client.post("/fhir", json=tx, headers=h)
        assert r.status_code == 405, r.text
        assert r.json()["resourceType"] == "OperationOutcome"
    tx = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {
                    "resourceType": "Provenance",
                    "target": [{"reference": "Patient/pa"}],
                    "recorded": "2026-01-01T00:00:00Z",
                    "agent": [{"who": {"reference": USER}}],
                },
                "request": {"method": "POST", "url": "Provenance"},
            }
        ],
    }
    r = await env.client.post("/fhir", json=tx, headers=h)
    assert r.status_code == 405, r.text
    batch = {"resourceType": "Bundle", "type": "batch", "entry": tx["entry"]}
    r = await env.client.post("/fhir", json=batch, headers=h)
    assert r.json()["entry"][0]["response"]["status"].startswith("405")
    # nothing changed
    assert stored(store, "AuditEvent")[event_id] == event
    assert stored(store, "Provenance")[prov_id] == prov


async def test_the_capability_statement_says_so(env: Env) -> None:
    statement = (await env.client.get("/fhir/metadata")).json()
    by_type = {r["type"]: r for r in statement["rest"][0]["resource"]}
    for rtype in ("AuditEvent", "Provenance"):
        codes = {i["code"] for i in by_type[rtype]["interaction"]}
        assert codes.isdisjoint({"create", "update", "patch", "delete"})
        assert {"read", "search-type"} <= codes
    assert "create" in {i["code"] for i in by_type["Patient"]["interaction"]}


async def test_reading_the_audit_trail_is_audited_once(env: Env, store: SqliteStore) -> None:
    t = Trail(env, store)
    await t.new()
    h = user_bearer(env, "user/AuditEvent.rs")
    event_id = next(iter(stored(store, "AuditEvent")))
    assert (await env.client.get(f"/fhir/AuditEvent/{event_id}", headers=h)).status_code == 200
    (event,) = await t.new()
    assert subtype(event) == "read"
    assert f"AuditEvent/{event_id}/_history/1" in entities(event)
    # writing the record is not itself recorded
    assert await trail(env).flush() == 0
    assert await t.new() == []


# --------------------------------------------------------------------------- batching


async def test_the_background_writer_batches_and_flushes_at_shutdown(
    env: Env, store: SqliteStore
) -> None:
    t = Trail(env, store)
    audit = trail(env)
    h = user_bearer(env, "user/*.rs")
    async with env.app.router.lifespan_context(env.app):
        assert (await env.client.get("/fhir/Patient/pa", headers=h)).status_code == 200
        assert audit.pending == 1
        for _ in range(100):  # within the interval, written by the writer
            if audit.pending == 0:
                break
            await asyncio.sleep(0.02)
        assert audit.pending == 0
        assert len(await t.new(flush=False)) == 1
        for _ in range(audit.batch_size + 5):
            await env.client.get("/fhir/Patient/pb", headers=h)
        await asyncio.sleep(0)  # a full batch wakes the writer at once
        await asyncio.sleep(0.05)
        assert audit.pending < audit.batch_size
        for _ in range(3):
            await env.client.get("/fhir/Patient/pb", headers=h)
    # the lifespan's end wrote the rest
    assert audit.pending == 0
    assert len(await t.new(flush=False)) == audit.batch_size + 8


async def test_a_store_failure_keeps_the_events_for_the_next_batch(
    env: Env, store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = Trail(env, store)
    audit = trail(env)
    h = user_bearer(env, "user/*.rs")
    await env.client.get("/fhir/Patient/pa", headers=h)

    async def broken(batch: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(audit, "_write", broken)
    assert await audit.flush() == 0 and audit.pending == 1
    monkeypatch.undo()
    assert await audit.flush() == 1
    assert len(await t.new()) == 1


# --------------------------------------------------------------------------- --no-auth


async def test_without_authorization_nothing_is_recorded(store: SqliteStore) -> None:
    """``serve --no-auth`` (loopback only, for local development): no audit trail."""
    app = create_app(Settings(database=":memory:", public_base_url=BASE), store)
    assert getattr(app.state, "audit", None) is None
    assert app.state.context.audit is None
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        r = await c.put("/fhir/Patient/pa", json={"resourceType": "Patient", "id": "pa"})
        assert r.status_code == 201
        assert (await c.get("/fhir/Patient/pa")).status_code == 200
        assert (await c.get("/fhir/Patient", params={"_id": "pa"})).status_code == 200
        assert (await c.get("/fhir/Patient/nope")).status_code == 404
    assert stored(store, "AuditEvent") == {}
    assert stored(store, "Provenance") == {}
