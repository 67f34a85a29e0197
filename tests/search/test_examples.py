"""Every search parameter against the official R4 examples.

All examples are loaded into one SQLite store (once per module). For every parameter
that has a value in some example, a value taken from that example's index entries must
find it, and a value that does not match must not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from fhir_server.search import values
from fhir_server.search.extract import IndexEntries, extract_param
from fhir_server.search.registry import SearchParam, default_registry
from fhir_server.storage.sqlite import search_index
from fhir_server.storage.sqlite.store import SqliteStore
from tests.search.support import escape, load_examples, put_all

NO_MATCH = "zz-no-such-value-zz"


@dataclass
class Case:
    resource_type: str
    id: str
    code: str
    match: str
    miss: str | None
    name: str  # parameter name with modifier


@pytest.fixture(scope="module")
def loaded() -> Iterator[tuple[SqliteStore, list[dict[str, Any]]]]:
    resources = load_examples()
    store = SqliteStore(":memory:")
    asyncio.run(store.open())
    asyncio.run(put_all(store, resources))
    yield store, resources
    asyncio.run(store.close())


def _fmt_number(v: float) -> str:
    text = repr(v)
    return text[:-2] if text.endswith(".0") else text


def _token_value(row: tuple[Any, ...]) -> tuple[str, str, str | None] | None:
    """(modifier, matching value, non-matching value) from a token row."""
    _, system, code, text, _ = row
    if code is not None:
        if system is not None:
            return "", f"{escape(system)}|{escape(code)}", f"{escape(system)}|{NO_MATCH}"
        return "", escape(code), NO_MATCH
    if text is not None:
        return ":text", escape(text), NO_MATCH
    return None


def _value_for(
    ptype: str, e: IndexEntries, code: str, grp: int | None
) -> tuple[str, str, str | None] | None:
    """(modifier, matching value, non-matching value) from one parameter's entries."""
    if ptype == "string":
        rows = sorted(r for r in e.strings if r[0] == code and r[3] == grp)
        if rows:
            return "", escape(rows[0][1]), NO_MATCH
    elif ptype == "token":
        rows = sorted((r for r in e.tokens if r[0] == code and r[4] == grp), key=repr)
        for row in rows:
            found = _token_value(row)
            if found is not None:
                return found
    elif ptype == "reference":
        refs = sorted((r for r in e.refs if r[0] == code and r[7] == grp), key=repr)
        for _, rt, rid, version, url, id_system, id_value, _ in refs:
            if rt and rid and url is None:
                return "", f"{rt}/{escape(rid)}", f"{rt}/{NO_MATCH}"
            if url is not None:
                v = escape(url) + (f"|{escape(version)}" if version else "")
                return "", v, f"{escape(url)}-{NO_MATCH}"
            if id_value is not None:
                sys_part = escape(id_system) + "|" if id_system else ""
                return ":identifier", sys_part + escape(id_value), NO_MATCH
    elif ptype == "date":
        dates = [r for r in e.dates if r[0] == code and r[3] == grp]
        if dates:
            lo, hi = dates[0][1], dates[0][2]
            match = (
                "ge" + values.format_instant(lo)
                if lo > values.MIN_TIME
                else "le" + values.format_instant(hi)
            )
            top = max(r[2] for r in dates)
            bottom = min(r[1] for r in dates)
            if top < values.MAX_TIME:
                miss: str | None = "sa" + values.format_instant(top)
            elif bottom > values.MIN_TIME:
                miss = "eb" + values.format_instant(bottom)
            else:
                miss = None
            return "", match, miss
    elif ptype in ("number", "quantity"):
        nums: list[tuple[Any, ...]] = [
            r
            for r in (e.numbers if ptype == "number" else e.quantities)
            if r[0] == code and r[-1] == grp
        ]
        if nums:
            lo, hi = nums[0][1], nums[0][2]
            match = "ge" + _fmt_number(lo) if lo != -values_inf() else "le" + _fmt_number(hi)
            top = max(r[2] for r in nums)
            miss = None if top == values_inf() else "gt" + _fmt_number(top)
            return "", match, miss
    elif ptype == "uri":
        uris = sorted(r for r in e.uris if r[0] == code and r[2] == grp)
        if uris:
            return "", escape(uris[0][1]), escape(uris[0][1]) + NO_MATCH
    return None


def values_inf() -> float:
    return float("inf")


def _composite_case(
    resource: dict[str, Any], p: SearchParam, e: IndexEntries
) -> tuple[str, str | None] | None:
    reg = default_registry()
    comp_types = []
    for c in p.components:
        cp = reg.by_url(c.definition)
        assert cp is not None
        comp_types.append(cp.type)
    groups = sorted(
        {
            r[-1]
            for rows in (e.strings, e.tokens, e.refs, e.dates, e.numbers, e.quantities, e.uris)
            for r in rows
        }
        - {None}
    )
    for grp in groups:
        parts = []
        for i, t in enumerate(comp_types):
            found = _value_for(t, e, f"{p.code}#{i}", grp)
            if found is None or found[0]:
                break
            parts.append(found)
        else:
            match = "$".join(f[1] for f in parts)
            miss = None
            if parts[0][2] is not None:
                miss = "$".join([parts[0][2], *(f[1] for f in parts[1:])])
            return match, miss
    return None


def _cases(resources: list[dict[str, Any]]) -> tuple[list[Case], set[tuple[str, str]]]:
    reg = default_registry()
    cases: list[Case] = []
    all_params: set[tuple[str, str]] = set()
    by_type: dict[str, list[dict[str, Any]]] = {}
    for r in resources:
        by_type.setdefault(r["resourceType"], []).append(r)
    for rtype in sorted(by_type):
        for code, p in sorted(reg.for_type(rtype).items()):
            if not p.indexable or code == "_id":
                continue
            all_params.add((rtype, code))
            for r in by_type[rtype]:
                e = extract_param(r, code)
                if p.type == "composite":
                    found_c = _composite_case(r, p, e)
                    if found_c is None:
                        continue
                    cases.append(Case(rtype, r["id"], code, found_c[0], found_c[1], code))
                    break
                found = _value_for(p.type, e, code, None)
                if found is None:
                    continue
                modifier, match, miss = found
                cases.append(Case(rtype, r["id"], code, match, miss, code + modifier))
                break
    return cases, all_params


def test_every_parameter_with_an_example_value_finds_it(
    loaded: tuple[SqliteStore, list[dict[str, Any]]],
) -> None:
    store, resources = loaded
    cases, all_params = _cases(resources)
    types_with_examples = {r["resourceType"] for r in resources}
    failures: list[str] = []
    for case in cases:
        found = search_index.search_ids(store.reader, case.resource_type, [(case.name, case.match)])
        if case.id not in found:
            failures.append(f"{case.resource_type}?{case.name}={case.match} misses {case.id}")
        if case.miss is not None:
            found = search_index.search_ids(
                store.reader, case.resource_type, [(case.name, case.miss)]
            )
            if case.id in found:
                failures.append(f"{case.resource_type}?{case.name}={case.miss} finds {case.id}")
    covered = {(c.resource_type, c.code) for c in cases}
    share = len(covered) / len(all_params)
    print(
        f"\nsearch parameters of the {len(types_with_examples)} example types: "
        f"{len(all_params)}; with a value in some example: {len(covered)} ({share:.1%});"
        f" failures: {len(failures)}"
    )
    assert not failures, "\n".join(failures[:50])
    assert share > 0.5
