"""Paging stays stable while other requests write between the page fetches.

A search is paged with a small ``_count`` through the search interaction (following
the Bundle's ``next`` links), and before every page other resources are created,
updated (some keeping their sort key, some changing it) and deleted. Whatever the
order (creation order, ``_sort`` on a date either way, with or without a filter):

- every resource that existed from the start, was not deleted and whose sort key did
  not change appears exactly once, and these appear in the order of the search;
- no resource whose sort key did not change appears twice (created ones included);
- a resource deleted before its page was fetched does not appear.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from fhir_server.interactions.search import search as search_interaction
from fhir_server.storage.port import Store
from tests.search.support import delete, put_all

BASE = "http://test/fhir"
ORIGINALS = 30


def person(id: str, birth: str | None, name: str = "Original") -> dict[str, Any]:
    r: dict[str, Any] = {
        "resourceType": "Patient",
        "id": id,
        "active": True,
        "name": [{"family": name}],
    }
    if birth is not None:
        r["birthDate"] = birth
    return r


def original_birth(i: int) -> str | None:
    # pairs share a date (ties are broken by creation order); the last three have none
    return None if i >= ORIGINALS - 3 else f"{1950 + i // 2}-01-01"


NEW_BIRTHS = ("1940-06-01", "1960-01-01", "2001-01-01", None)


async def fetch(store: Store, params: list[tuple[str, str]]) -> tuple[list[str], Any]:
    bundle = await search_interaction(store, "Patient", params, base_url=BASE, strict=False)
    ids = [e["resource"]["id"] for e in bundle.get("entry", ()) if e["search"]["mode"] == "match"]
    nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
    return ids, parse_qsl(urlsplit(nxt[0]).query) if nxt else None


def expected_order(
    ids: list[str], birth: dict[str, str | None], created: dict[str, int], sort: str
) -> list[str]:
    """``ids`` in the search's order: by creation, or by birth date (missing last),
    ties by creation."""
    by_creation = sorted(ids, key=lambda i: created[i])
    if sort == "":
        return by_creation
    present = [i for i in by_creation if birth[i] is not None]
    present.sort(key=lambda i: str(birth[i]), reverse=sort.startswith("-"))
    # sort() is stable, but reverse=True keeps ties in their original order too
    return present + [i for i in by_creation if birth[i] is None]


@pytest.mark.parametrize(
    "params",
    [
        [],
        [("_sort", "birthdate")],
        [("_sort", "-birthdate")],
        [("active", "true"), ("_sort", "birthdate")],
        [("active", "true")],
    ],
    ids=["default", "birthdate", "-birthdate", "filtered-birthdate", "filtered-default"],
)
async def test_no_stable_resource_is_repeated_or_skipped(
    each_store: Store, params: list[tuple[str, str]]
) -> None:
    store = each_store
    sort = dict(params).get("_sort", "")
    birth: dict[str, str | None] = {}
    created: dict[str, int] = {}

    async def write(r: dict[str, Any]) -> None:
        await put_all(store, [r])
        created.setdefault(r["id"], len(created))
        birth[r["id"]] = r.get("birthDate")

    for i in range(ORIGINALS):
        await write(person(f"p{i:02d}", original_birth(i)))
    originals = set(created)
    changed: set[str] = set()  # their sort key changed while paging
    deleted: set[str] = set()
    seen: list[str] = []
    seen_after_delete: list[str] = []

    query: list[tuple[str, str]] | None = [*params, ("_count", "4")]
    page = 0
    while query is not None:
        ids, query = await fetch(store, query)
        seen.extend(ids)
        seen_after_delete.extend(rid for rid in ids if rid in deleted)
        # other clients write before the next page is fetched
        await write(person(f"n{page:02d}", NEW_BIRTHS[page % len(NEW_BIRTHS)]))
        live = sorted(originals - deleted)
        keep = live[(7 * page) % len(live)]
        await write(person(keep, birth[keep], name=f"Renamed{page}"))  # same sort key
        move = live[(11 * page + 3) % len(live)]
        if sort:
            # to the far end either way: from not yet seen to seen, or the other way
            await write(person(move, "1930-01-01" if page % 2 else "2010-01-01"))
            changed.add(move)
        else:
            await write(person(move, "1930-01-01"))  # creation order never changes
        gone = live[(13 * page + 5) % len(live)]
        if gone not in (keep, move):
            await delete(store, "Patient", gone)
            deleted.add(gone)
        page += 1
        assert page < 100, "paging does not end"

    assert page > 5  # several pages, with writes between each
    assert seen_after_delete == []
    stable = originals - changed - deleted
    for rid in set(seen) - changed:
        assert seen.count(rid) == 1, f"{rid} was returned {seen.count(rid)} times"
    assert stable <= set(seen), f"skipped: {sorted(stable - set(seen))}"
    in_order = [rid for rid in seen if rid in stable]
    assert in_order == expected_order(sorted(stable), birth, created, sort)
    assert deleted and (changed or not sort)  # the schedule did delete and move resources
