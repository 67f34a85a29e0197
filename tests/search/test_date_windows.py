"""Several date clauses on one parameter (``date=ge2024-03-10&date=lt2024-03-11``) are
searched by the SQLite store as one bounded range scan (a date window): same results
as each clause on its own, whatever the periods (inside, straddling either edge,
covering the window, open at either end, very long) and prefixes; not combined when
some resource has several values of the parameter."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fhir_server.search import values
from fhir_server.search.parser import parse
from fhir_server.search.query import DateCond, SearchQuery
from fhir_server.storage.sqlite import search_index
from fhir_server.storage.sqlite.store import SqliteStore
from tests.search.support import delete, put_all


def encounter(id: str, start: str | None = None, end: str | None = None) -> dict[str, Any]:
    r: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": id,
        "status": "finished",
        "class": {"code": "AMB"},
    }
    period = {k: v for k, v in (("start", start), ("end", end)) if v is not None}
    if period:
        r["period"] = period
    return r


ENCOUNTERS = [
    encounter("inside", "2024-03-10T09:00:00Z", "2024-03-10T10:00:00Z"),
    encounter("day-before", "2024-03-09T09:00:00Z", "2024-03-09T10:00:00Z"),
    encounter("day-after", "2024-03-11T09:00:00Z", "2024-03-11T10:00:00Z"),
    encounter("straddles-start", "2024-03-09T23:00:00Z", "2024-03-10T01:00:00Z"),
    encounter("straddles-end", "2024-03-10T23:00:00Z", "2024-03-11T01:00:00Z"),
    encounter("at-start", "2024-03-10T00:00:00Z", "2024-03-10T00:30:00Z"),
    encounter("ends-at-midnight", "2024-03-10T23:30:00Z", "2024-03-11T00:00:00Z"),
    encounter("ends-before-start", "2024-03-09T22:00:00Z", "2024-03-09T23:59:59Z"),
    encounter("covers", "2024-03-01", "2024-03-20"),
    encounter("decades", "1990-01-01", "2030-12-31"),
    encounter("whole-day", "2024-03-10", "2024-03-10"),
    encounter("open-end-before", "2024-03-01T08:00:00Z"),
    encounter("open-end-long-ago", "2023-01-01"),
    encounter("open-end-inside", "2024-03-10T12:00:00Z"),
    encounter("open-end-after", "2024-03-12T08:00:00Z"),
    encounter("open-start-before", None, "2024-03-05T08:00:00Z"),
    encounter("open-start-inside", None, "2024-03-10T12:00:00Z"),
    encounter("open-start-after", None, "2024-03-15T08:00:00Z"),
    encounter("long-ago", "2020-01-01", "2020-01-02"),
    encounter("no-period"),
]

# each a list of `date` values, one clause each (ANDed)
WINDOWS = [
    ["ge2024-03-10", "lt2024-03-11"],
    ["ge2024-03-10", "le2024-03-10"],
    ["gt2024-03-09", "lt2024-03-11"],
    ["gt2024-03-09", "le2024-03-10"],
    ["ge2024-03-10T00:00:00Z", "lt2024-03-10T00:30:00Z"],
    ["ge2024-03-09T23:30:00Z", "lt2024-03-10T00:30:00Z"],
    ["ge2024-03-10T12:00:00Z", "le2024-03-10T12:00:00Z"],
    ["sa2024-03-09", "eb2024-03-11"],
    ["sa2024-03-09", "lt2024-03-11"],
    ["ge2024-03-10", "eb2024-03-12"],
    ["eq2024-03", "ge2024-03-10"],
    ["2024-03-10", "lt2024-03-11"],
    ["2024-03", "2024-03-10"],
    ["ge2024-03-10", "gt2024-03-09"],  # lower bounds on hi only
    ["le2024-03-10", "lt2024-03-11"],  # upper bounds on lo only
    ["ge2024-03-10", "lt2024-03-10"],  # empty
    ["ge2024-03-11", "lt2024-03-10"],  # inverted
    ["ge2024-03-10", "lt2024-03-11", "le2024-03-10T12:00:00Z"],
    ["ge2019", "lt2031"],
    ["ge1000", "lt3000"],
    ["ge2024-03-10", "lt2024-03-11", "ne2024-03-10T09:00:00Z"],  # ne stays apart
    ["ge2024-03-10", "lt2024-03-11", "ap2024-03-10"],  # ap stays apart
]


LONG = ("covers", "decades")


@pytest.fixture(params=["with-long-periods", "short-periods-only"])
async def clinic(store: SqliteStore, request: pytest.FixtureRequest) -> AsyncIterator[SqliteStore]:
    """The encounters; or without the long ones, so that the window's scan of finite
    periods is narrow and the open-ended ones before it are found apart."""
    keep = [e for e in ENCOUNTERS if request.param == "with-long-periods" or e["id"] not in LONG]
    await put_all(store, keep)
    yield store


async def matches(store: SqliteStore, rtype: str, params: list[tuple[str, str]]) -> list[str]:
    result = await store.search(parse(rtype, [*params, ("_count", "1000")], strict=True))
    return sorted(h.id for h in result.matches)


async def clause_by_clause(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch, rtype: str, params: list[tuple[str, str]]
) -> list[str]:
    """The matches with every clause searched on its own (nothing combined)."""
    with monkeypatch.context() as m:

        def apart(conn: sqlite3.Connection, query: SearchQuery) -> Any:
            return query.clauses

        m.setattr(search_index, "_combine_dates", apart)
        return await matches(store, rtype, params)


def windows(store: SqliteStore, rtype: str, params: list[tuple[str, str]]) -> int:
    query = parse(rtype, params, strict=True)
    p = search_index.plan(store.reader, query)
    return sum(isinstance(c[0], search_index.DateWindow) for c in p.clauses)


async def test_a_one_day_window(clinic: SqliteStore) -> None:
    params = [("date", "ge2024-03-10"), ("date", "lt2024-03-11")]
    assert windows(clinic, "Encounter", params) == 1
    found = await matches(clinic, "Encounter", params)
    assert found == sorted(
        [
            "inside",
            "straddles-end",  # ge: reaches past the day; lt: starts before its end
            "at-start",
            "ends-at-midnight",
            "covers",
            "decades",
            "whole-day",
            "open-end-before",
            "open-end-long-ago",
            "open-end-inside",
            "open-start-after",
            # not "straddles-start" nor "open-start-inside": ending within the day,
            # they do not reach past it and do not start in it (ge)
        ]
        if found.count("covers")
        else [
            "inside",
            "straddles-end",
            "at-start",
            "ends-at-midnight",
            "whole-day",
            "open-end-before",
            "open-end-long-ago",
            "open-end-inside",
            "open-start-after",
        ]
    )


@pytest.mark.parametrize("values", WINDOWS, ids=["&".join(w) for w in WINDOWS])
async def test_same_matches_as_clause_by_clause(
    clinic: SqliteStore, monkeypatch: pytest.MonkeyPatch, values: list[str]
) -> None:
    params = [("date", v) for v in values]
    combined = sum(1 for v in values if not v.startswith(("ne", "ap")))
    assert windows(clinic, "Encounter", params) == 1
    assert len(search_index.plan(clinic.reader, parse("Encounter", params)).clauses) == (
        len(values) - combined + 1
    )
    expected = await clause_by_clause(clinic, monkeypatch, "Encounter", params)
    assert await matches(clinic, "Encounter", params) == expected
    # the same as a driving clause, as a probe next to a selective clause, and counted
    ids = [("_id", "inside,covers,open-end-before,open-start-inside,no-period")]
    expected = await clause_by_clause(clinic, monkeypatch, "Encounter", [*params, *ids])
    assert await matches(clinic, "Encounter", [*params, *ids]) == expected
    result = await clinic.search(parse("Encounter", [*params, ("_count", "1")]))
    everything = await matches(clinic, "Encounter", params)
    assert result.total == len(everything)
    ids_only = await search_ids(clinic, params)
    assert ids_only == everything


async def search_ids(store: SqliteStore, params: list[tuple[str, str]]) -> list[str]:
    async with store.unit_of_work() as uow:
        return sorted(await uow.search("Encounter", params))


async def test_the_window_drives_the_search_from_a_bounded_range(clinic: SqliteStore) -> None:
    query = parse("Encounter", [("date", "ge2024-03-10"), ("date", "lt2024-03-11")])
    est = search_index.estimates(clinic.reader, query)
    assert list(est) == [0] and est[0] in (9, 11)  # one clause: the window's rows
    plans = search_index.explain_all(clinic.reader, query)
    page = " | ".join(plans["page"])
    assert "idx_date_lo (param=? AND lo>? AND lo<?)" in page, page  # bounded both ways
    assert "idx_date_hi (param=? AND hi=? AND lo>? AND lo<?)" in page, page  # open end
    assert "idx_date_lo (param=? AND lo=?)" in page, page  # open start


async def test_several_values_per_resource_keep_clauses_apart(store: SqliteStore) -> None:
    """Goal.target.due: a Goal due on the 1st and the 20th matches ``ge10&lt11`` (each
    clause holds for one of its dates) though none of its dates is in the window."""
    goal = {
        "resourceType": "Goal",
        "id": "g1",
        "lifecycleStatus": "active",
        "description": {"text": "walk"},
        "subject": {"reference": "Patient/p"},
        "target": [{"dueDate": "2024-03-01"}, {"dueDate": "2024-03-20"}],
    }
    params = [("target-date", "ge2024-03-10"), ("target-date", "lt2024-03-11")]
    await put_all(store, [{**goal, "target": goal["target"][:1]}])
    assert windows(store, "Goal", params) == 1  # one value each so far
    await put_all(store, [goal])
    assert windows(store, "Goal", params) == 0
    assert await matches(store, "Goal", params) == ["g1"]
    # never lowered: an update or a delete leaves the figures
    await put_all(store, [{**goal, "target": goal["target"][:1]}])
    await delete(store, "Goal", "g1")
    assert windows(store, "Goal", params) == 0


def stats(conn: sqlite3.Connection) -> list[tuple[int, int, int]]:
    return conn.execute("SELECT param, span, multi FROM idx_date_stats ORDER BY param").fetchall()


async def test_stats_bound_the_finite_ranges(clinic: SqliteStore) -> None:
    query = parse("Encounter", [("date", "ge2024-03-10"), ("date", "lt2024-03-11")])
    (clause,) = search_index.plan(clinic.reader, query).clauses
    window = clause[0]
    assert isinstance(window, search_index.DateWindow)
    assert all(isinstance(c, DateCond) for c in window.conds)
    # the widest finite period ("decades", else two days); open-ended ones do not count
    (widest,) = clinic.reader.execute(
        "SELECT max(hi - lo) FROM idx_date WHERE param = ? AND lo > ? AND hi < ?",
        (search_index._key("Encounter", "date"), values.MIN_TIME, values.MAX_TIME),
    ).fetchone()
    assert window.span == widest
    assert widest > 40 * 365 * 86400 * 10**6 or widest < 2 * 86400 * 10**6


async def test_a_database_of_layout_2_gets_its_stats_at_open(tmp_path: Path) -> None:
    path = str(tmp_path / "db.sqlite")
    store = SqliteStore(path)
    await store.open()
    try:
        await put_all(store, ENCOUNTERS)
        before = stats(store.reader)
    finally:
        await store.close()
    assert before
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE idx_date_stats")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    store = SqliteStore(path)
    await store.open()
    try:
        assert store.reader.execute("PRAGMA user_version").fetchone()[0] == search_index.LAYOUT
        assert stats(store.reader) == before
        assert (
            await matches(store, "Encounter", [("date", "ge2024-03-10"), ("date", "lt2024-03-11")])
        ).count("inside") == 1
    finally:
        await store.close()
