"""Bundle.total while paging: counted on the first page and carried in the paging
cursor, so every later page (next or previous) reports the total as of the first page
-- Bundle.total is the number of matches when the search was executed -- and no page
counts again. On every store; and on SQLite, totals counted from the covering index
count resources, not index rows."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_server.search.parser import parse
from fhir_server.search.query import SearchResult
from fhir_server.storage.port import Store
from fhir_server.storage.sqlite import search_index
from fhir_server.storage.sqlite.store import SqliteStore
from tests.search.support import put_all


def person(id: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": id, "gender": "other", **extra}


async def run(
    store: Store, params: list[tuple[str, str]], cursor: str | None = None
) -> SearchResult:
    more = [("_cursor", cursor)] if cursor else []
    return await store.search(parse("Patient", [*params, *more], strict=True))


@pytest.mark.parametrize("total", ["estimate", "accurate", None])
async def test_later_pages_report_the_first_pages_total(
    each_store: Store, total: str | None
) -> None:
    store = each_store
    await put_all(store, [person(f"p{i:02d}") for i in range(12)])
    params = [("gender", "other"), ("_count", "5")]
    if total:
        params.append(("_total", total))
    first = await run(store, params)
    assert first.total == 12
    # matches created after the first page: the total stays as of the first page
    await put_all(store, [person(f"q{i}") for i in range(3)])
    second = await run(store, params, first.next_cursor)
    assert second.total == 12 and second.previous_cursor is not None
    back = await run(store, params, second.previous_cursor)
    assert [h.id for h in back.matches] == [h.id for h in first.matches]
    assert back.total == 12
    last = second
    while last.next_cursor is not None:
        last = await run(store, params, last.next_cursor)
        assert last.total == 12
    assert last.matches[-1].id == "q2"  # the new ones are there, the total is not redone


async def test_no_total_when_asked_for_none(each_store: Store) -> None:
    await put_all(each_store, [person(f"p{i:02d}") for i in range(7)])
    params = [("gender", "other"), ("_count", "3"), ("_total", "none")]
    result = await run(each_store, params)
    while True:
        assert result.total is None
        if result.next_cursor is None:
            break
        result = await run(each_store, params, result.next_cursor)


async def test_a_page_that_does_not_count_is_not_slowed_by_counting(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await put_all(store, [person(f"p{i:02d}") for i in range(9)])
    params = [("gender", "other"), ("_count", "4"), ("_total", "accurate")]
    first = await run(store, params)
    assert first.total == 9

    def no_count(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("a later page counted again")

    def no_estimates(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a later page estimated again")

    monkeypatch.setattr(search_index, "_count_sql", no_count)
    real_plan = search_index.plan

    def plan(conn: Any, query: Any, est: Any = None) -> Any:
        if est is None:
            no_estimates()
        return real_plan(conn, query, est)

    monkeypatch.setattr(search_index, "plan", plan)
    second = await run(store, params, first.next_cursor)
    assert second.total == 9


async def test_a_cursor_without_a_total_still_pages(store: SqliteStore) -> None:
    """Cursors made before totals were carried: no total for an estimate, a count
    for an accurate total."""
    await put_all(store, [person(f"p{i:02d}") for i in range(6)])
    rid = store.reader.execute("SELECT rid FROM resource WHERE id = 'p03'").fetchone()[0]
    old = search_index._encode_cursor(search_index._Cursor("n", [], rid))
    estimate = await run(store, [("gender", "other"), ("_count", "4")], old)
    assert [h.id for h in estimate.matches] == ["p04", "p05"] and estimate.total is None
    accurate = await run(store, [("gender", "other"), ("_count", "4"), ("_total", "accurate")], old)
    assert accurate.total == 6


@pytest.mark.parametrize("total", ["estimate", "accurate"])
async def test_totals_count_resources(store: SqliteStore, total: str) -> None:
    """Resources with several matching index rows count once; a parameter common to
    every type (``_tag``) counts only the searched type."""
    tag = {"tag": [{"system": "http://t", "code": "x"}]}
    await put_all(
        store,
        [
            person(
                f"p{i}",
                identifier=[
                    {"system": "http://mrn", "value": f"a{i}"},
                    {"system": "http://mrn", "value": f"b{i}"},
                ],
                meta=tag,
            )
            for i in range(5)
        ]
        + [
            {
                "resourceType": "Observation",
                "id": f"o{i}",
                "status": "final",
                "code": {"text": "x"},
                "meta": tag,
            }
            for i in range(4)
        ],
    )
    for params in (
        [("identifier", "http://mrn|")],
        [("_tag", "http://t|x")],
        [("_tag", "http://t|x"), ("identifier", "http://mrn|")],
        [("gender", "other"), ("identifier", "http://mrn|")],
    ):
        result = await run(store, [*params, ("_count", "2"), ("_total", total)])
        assert result.total == 5, params
    result = await store.search(
        parse(None, [("_tag", "http://t|x"), ("_count", "2"), ("_total", total)], strict=True)
    )
    assert result.total == 9
