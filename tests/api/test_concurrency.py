"""Concurrent writers: optimistic locking with If-Match, no lost updates, and
conditional create (If-None-Exist) creating exactly one resource under a race.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any

import httpx

from tests.conftest import LiveServer

FHIR = {"Content-Type": "application/fhir+json"}


def _patient(**extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [{"family": "Race", "given": ["Condition"]}], **extra}


async def test_same_if_match_exactly_one_update_wins(client: httpx.AsyncClient) -> None:
    r = await client.post("Patient", json=_patient(), headers=FHIR)
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    n = 25

    async def attempt(i: int) -> httpx.Response:
        body = _patient(id=pid, multipleBirthInteger=i)
        return await client.put(f"Patient/{pid}", json=body, headers={**FHIR, "If-Match": 'W/"1"'})

    responses = await asyncio.gather(*(attempt(i) for i in range(n)))
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 1, 412: n - 1}, statuses
    winner = next(r for r in responses if r.status_code == 200)
    assert winner.headers["etag"] == 'W/"2"'
    for r in responses:
        if r.status_code == 412:
            assert r.json()["resourceType"] == "OperationOutcome"

    current = await client.get(f"Patient/{pid}")
    assert current.json()["meta"]["versionId"] == "2"
    assert current.json()["multipleBirthInteger"] == winner.json()["multipleBirthInteger"]
    history = (await client.get(f"Patient/{pid}/_history")).json()
    assert len(history["entry"]) == 2  # the losers left no versions behind


def test_read_modify_write_loses_no_update(live_server: LiveServer) -> None:
    threads, per_thread = 4, 12
    base = live_server.base_url + "/"
    with httpx.Client(base_url=base) as c:
        r = c.post("Patient", json=_patient(multipleBirthInteger=0), headers=FHIR)
        assert r.status_code == 201, r.text
        pid = r.json()["id"]

    barrier = threading.Barrier(threads)
    conflicts = [0] * threads
    errors: list[str] = []

    def worker(k: int) -> None:
        try:
            with httpx.Client(base_url=base, timeout=30) as c:
                for _ in range(per_thread):
                    barrier.wait(30)  # every thread reads the same version: real contention
                    while True:
                        got = c.get(f"Patient/{pid}")
                        assert got.status_code == 200, got.text
                        body = got.json()
                        body["multipleBirthInteger"] += 1
                        put = c.put(
                            f"Patient/{pid}",
                            json=body,
                            headers={**FHIR, "If-Match": got.headers["etag"]},
                        )
                        if put.status_code == 412:
                            conflicts[k] += 1
                            continue
                        assert put.status_code == 200, put.text
                        break
        except BaseException as exc:  # reported by the main thread
            errors.append(f"worker {k}: {exc!r}")
            barrier.abort()

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(120)
    assert not errors, errors
    assert not any(t.is_alive() for t in pool)

    total = threads * per_thread
    with httpx.Client(base_url=base) as c:
        final = c.get(f"Patient/{pid}").json()
    assert final["multipleBirthInteger"] == total
    assert final["meta"]["versionId"] == str(total + 1)
    # with everyone starting from the same version each round, most attempts lose a race
    assert sum(conflicts) >= per_thread


async def test_concurrent_conditional_creates_make_one_resource(client: httpx.AsyncClient) -> None:
    n = 20
    ident = {"system": "urn:example:mrn", "value": "once-only-1"}
    headers = {**FHIR, "If-None-Exist": "identifier=urn:example:mrn|once-only-1"}

    async def attempt(i: int) -> httpx.Response:
        body = _patient(identifier=[ident], multipleBirthInteger=i)
        return await client.post("Patient", json=body, headers=headers)

    responses = await asyncio.gather(*(attempt(i) for i in range(n)))
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 1, 200: n - 1}, statuses
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    found = (await client.get("Patient", params={"identifier": "urn:example:mrn|once-only-1"})).json()
    assert [e["resource"]["id"] for e in found.get("entry", [])] == list(ids)


def test_conditional_creates_over_http_make_one_resource(live_server: LiveServer) -> None:
    threads = 6
    base = live_server.base_url + "/"
    barrier = threading.Barrier(threads)
    results: list[tuple[int, str]] = []
    errors: list[str] = []
    headers = {**FHIR, "If-None-Exist": "identifier=urn:example:mrn|http-once"}
    body = _patient(identifier=[{"system": "urn:example:mrn", "value": "http-once"}])

    def worker() -> None:
        try:
            with httpx.Client(base_url=base, timeout=30) as c:
                barrier.wait(30)
                r = c.post("Patient", json=body, headers=headers)
                results.append((r.status_code, r.json()["id"]))
        except BaseException as exc:
            errors.append(repr(exc))
            barrier.abort()

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(60)
    assert not errors, errors
    assert sorted(s for s, _ in results) == [200] * (threads - 1) + [201]
    assert len({i for _, i in results}) == 1
    with httpx.Client(base_url=base) as c:
        found = c.get("Patient", params={"identifier": "urn:example:mrn|http-once"}).json()
    assert [e["resource"]["id"] for e in found.get("entry", [])] == [results[0][1]]
