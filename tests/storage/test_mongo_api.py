"""The whole API suite (every test module of ``tests/api/``) on the MongoDB store.

Every test function of those modules is re-exported here, with the ``store`` fixture
replaced by a MongoDB store (the ``client`` fixture of ``tests/conftest.py`` then serves
the application on it). The modules are taken as they are: a test added to one of them
runs here too, unless it is listed in ``LEFT_OUT`` below with the reason.

Left out:

- ``test_concurrency.test_read_modify_write_loses_no_update`` and
  ``test_concurrency.test_conditional_creates_over_http_make_one_resource``: they need the
  ``live_server`` fixture, a uvicorn server in a thread on a SQLite file, so they do not
  use the ``store`` fixture at all (the same races through the ASGI client,
  ``test_same_if_match_exactly_one_update_wins`` and
  ``test_concurrent_conditional_creates_make_one_resource``, do run here);
- ``test_examples_roundtrip.test_known_invalid_reasons_are_documented``: it checks a table
  of that module and uses no store.

``test_examples_roundtrip.test_examples_round_trip`` (711 PUTs and reads) runs in full on
a real server (``FHIR_TEST_MONGODB_URI``). On the stand-in, which evaluates every write
in Python, it takes 60 to 100 seconds, so there ``test_examples_round_trip_sample`` runs
it on a deterministic sample of 150 examples instead: the first example of every
resource type, every example the server must reject, and evenly spaced others.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

from fhir_server import jsonio
from tests.api import (
    test_bundles,
    test_concurrency,
    test_conditional,
    test_definitions,
    test_examples_roundtrip,
    test_rest,
)
from tests.api.test_examples_roundtrip import KNOWN_INVALID, comparable, without_server_meta
from tests.storage import mongo_support
from tests.storage.mongo_support import mongodb_uri, store

MODULES: tuple[ModuleType, ...] = (
    test_bundles,
    test_concurrency,
    test_conditional,
    test_definitions,
    test_examples_roundtrip,
    test_rest,
)

LIVE_SERVER = "needs the live_server fixture (uvicorn on a SQLite file), not the store fixture"
LEFT_OUT: dict[str, str] = {
    "test_read_modify_write_loses_no_update": LIVE_SERVER,
    "test_conditional_creates_over_http_make_one_resource": LIVE_SERVER,
    "test_known_invalid_reasons_are_documented": "checks a table of its module, uses no store",
    "test_examples_round_trip": "on a sample on the stand-in (too slow there), in full otherwise",
}

# How many examples the round trip takes on the stand-in (every resource type at least).
SAMPLE_SIZE = 150


def _tests(module: ModuleType) -> dict[str, Callable[..., Any]]:
    return {
        name: obj
        for name, obj in vars(module).items()
        if name.startswith("test_")
        and inspect.isfunction(obj)
        and obj.__module__ == module.__name__
    }


REUSED: dict[str, Callable[..., Any]] = {
    name: test
    for module in MODULES
    for name, test in _tests(module).items()
    if name not in LEFT_OUT
}
globals().update(REUSED)

if not mongo_support.uses_stand_in():
    test_examples_round_trip = test_examples_roundtrip.test_examples_round_trip


def sample_examples(lines: list[bytes], size: int = SAMPLE_SIZE) -> list[bytes]:
    """A deterministic sample of the official examples, in the order of the file: the
    first example of every resource type, every known-invalid example (their rejection
    is part of the test), then evenly spaced others up to ``size``."""
    chosen: set[int] = set()
    types: set[str] = set()
    for n, line in enumerate(lines):
        resource = jsonio.loads(line)
        rtype = resource["resourceType"]
        if rtype not in types or f"{rtype}/{resource['id']}" in KNOWN_INVALID:
            types.add(rtype)
            chosen.add(n)
    rest = [n for n in range(len(lines)) if n not in chosen]
    room = size - len(chosen)
    if rest and room > 0:
        chosen.update(rest[:: max(len(rest) // room, 1)][:room])
    return [lines[n] for n in sorted(chosen)]


async def test_examples_round_trip_sample(client: httpx.AsyncClient) -> None:
    """``test_examples_round_trip`` on :func:`sample_examples` (see the module's text)."""
    lines = test_examples_roundtrip.load_examples()
    sample = sample_examples(lines)
    assert len(sample) == SAMPLE_SIZE
    every_type = {jsonio.loads(line)["resourceType"] for line in lines}
    assert {jsonio.loads(line)["resourceType"] for line in sample} == every_type
    rejected: dict[str, str] = {}
    changed: list[str] = []
    for line in sample:
        resource = jsonio.loads(line)
        key = f"{resource['resourceType']}/{resource['id']}"
        r = await client.put(key, content=line, headers=test_examples_roundtrip.FHIR)
        if r.status_code not in (200, 201):
            rejected[key] = " | ".join(i.get("diagnostics", "") for i in r.json()["issue"])
            continue
        back = jsonio.loads((await client.get(key)).content)
        if comparable(without_server_meta(back)) != comparable(without_server_meta(resource)):
            changed.append(key)
    assert changed == []
    unexpected = {k: v for k, v in rejected.items() if k not in KNOWN_INVALID}
    assert unexpected == {}, unexpected
    assert sorted(rejected) == sorted(KNOWN_INVALID)


async def test_custom_search_parameters_survive_a_restart_and_can_be_redefined(
    mongodb_uri: str,
) -> None:
    """A stored SearchParameter is known again when a store opens on the database, and
    redefining it (same url, new code and expression) reindexes the existing data."""
    from fhir_server import definitions
    from fhir_server.search import registry as registries
    from fhir_server.storage.port import NewVersion

    official = registries.default_registry()
    database = f"fhir_test_{uuid.uuid4().hex[:12]}"
    first = mongo_support.make_store(database)
    try:
        registries.use(registries.Registry.from_definitions(definitions.search_parameters()))
        await first.open()
        sp: dict[str, Any] = {
            "resourceType": "SearchParameter",
            "id": "nick",
            "url": "http://example.org/SearchParameter/patient-nickname",
            "name": "nickname",
            "status": "active",
            "description": "A nickname",
            "code": "nickname",
            "base": ["Patient"],
            "type": "string",
            "expression": "Patient.name.where(use='nickname').given",
        }
        pat: dict[str, Any] = {
            "resourceType": "Patient",
            "id": "p1",
            "name": [{"use": "nickname", "given": ["Bob"]}, {"family": "Smith"}],
        }
        async with first.unit_of_work() as uow:
            for n, res in enumerate((pat, sp)):
                content = jsonio.dumps(res)
                await uow.put(
                    NewVersion(
                        res["resourceType"],
                        res["id"],
                        1,
                        f"2024-01-0{n + 1}T00:00:00Z",
                        "create",
                        content,
                        res,
                    )
                )
        async with first.unit_of_work() as uow:
            assert await uow.search("Patient", [("nickname", "bo")]) == ["p1"]
        # a new process: the registry has only the official parameters
        registries.use(registries.Registry.from_definitions(definitions.search_parameters()))
        second = mongo_support.make_store(database)
        await second.open()
        try:
            async with second.unit_of_work() as uow:
                assert await uow.search("Patient", [("nickname", "bo")]) == ["p1"]
                sp2 = {**sp, "code": "surname", "expression": "Patient.name.family"}
                content = jsonio.dumps(sp2)
                await uow.put(
                    NewVersion(
                        "SearchParameter", "nick", 2, "2024-01-03T00:00:00Z", "update", content, sp2
                    )
                )
            async with second.unit_of_work() as uow:
                assert await uow.search("Patient", [("surname", "smi")]) == ["p1"]
                assert await uow.search("Patient", [("surname", "bo")]) == []
        finally:
            await second.close()  # drops the database
    finally:
        registries.use(official)
        await first.close()


def test_every_api_test_runs_here_or_is_left_out_with_a_reason() -> None:
    """No API module or test is skipped silently, and ``LEFT_OUT`` names only real tests."""
    api = Path(test_rest.__file__).parent
    assert {p.stem for p in api.glob("test_*.py")} == {
        m.__name__.rsplit(".", 1)[1] for m in MODULES
    }
    every = {name: test for m in MODULES for name, test in _tests(m).items()}
    assert len(every) == sum(len(_tests(m)) for m in MODULES), "duplicate test names"
    assert set(LEFT_OUT) <= set(every)
    assert set(every) == set(REUSED) | set(LEFT_OUT)
    for name, test in every.items():
        needs_live_server = "live_server" in inspect.signature(test).parameters
        assert needs_live_server == (LEFT_OUT.get(name) == LIVE_SERVER), name


__all__ = ["mongodb_uri", "store", *REUSED]
