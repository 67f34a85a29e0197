"""Translation of the search IR (:mod:`fhir_server.search.query`) into MongoDB queries.

This is the only module that knows how a search becomes MongoDB filter documents and
aggregation stages; the store (:mod:`fhir_server.storage.mongodb.store`) runs them.

- A value condition is an ``$elemMatch`` on one index array (see
  :mod:`fhir_server.storage.mongodb.index`) with ``p`` (the parameter key) and the value
  fields, so it is a range scan of a multikey compound index. A clause (OR) is an
  ``$or``; the query (AND of clauses) an ``$and`` with ``t`` (type) and ``live``.
- ``:not`` and ``:missing=true`` are ``$nor`` of the positive condition.
- Composite values: one ``$elemMatch`` on ``x_cmp`` whose group holds an entry matching
  each component.
- ``_text``/``_content``: a regular expression per word on ``x_text``/``x_content``,
  anchored at a word start (the words are runs of letters and digits, escaped anyway).
- Chains and ``_has`` are two-step: the inner query runs first (through the
  :data:`Resolver` the store passes in, on the same session) and its result becomes a
  literal list in the outer filter (the target ids for a chain, the referenced
  ``_id`` s for ``_has``). Each step is an indexed query; lists are capped at
  :data:`MAX_IDS`.
- Sorting: per-document sort keys (``$min``/``$max`` over the parameter's entries)
  computed with ``$addFields``, missing values last, ties broken by ``seq`` (order of
  creation). Pages are cut by keyset (a ``$match`` after the boundary row), never by
  ``$skip``; the cursor is an opaque token holding the boundary row's keys.

Values from a request only ever appear as values: as the operand of a comparison
operator in a query document, or wrapped in ``$literal`` inside an aggregation
expression, never as a key, an operator or a field path (:func:`lit` checks their
type), and regular expressions are built from :func:`re.escape` d text.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from fhir_server.errors import bad_request
from fhir_server.search import values
from fhir_server.search.query import (
    ChainCond,
    CompositeCond,
    Condition,
    DateCond,
    HasCond,
    IdCond,
    Include,
    MissingCond,
    NumberCond,
    Param,
    ReferenceCond,
    SearchQuery,
    SortKey,
    StringCond,
    TextCond,
    TokenCond,
    UriCond,
)
from fhir_server.storage.mongodb.index import (
    COMPOSITE_FIELD,
    FIELD_OF_TYPE,
    TEXT_FIELDS,
    Document,
    keys,
)

# Runs a filter on the current-version collection and returns the projected documents.
Resolver = Callable[[Document, Document], Awaitable[list[Document]]]

MAX_IDS = 100_000  # largest intermediate id list of a chain or _has step
_PREFIX_END = "\U0010ffff"  # sorts after any character: [v, v + END) is "starts with v"
NOTHING: Document = {"_id": {"$in": []}}


def lit(value: Any) -> Any:
    """A value from a request, checked to be a plain scalar (never a document)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"not a literal value: {type(value).__name__}")


def _p(param: Param) -> Document:
    ks = keys(param)
    return {"p": ks[0]} if len(ks) == 1 else {"p": {"$in": ks}}


def _starts_with(value: str) -> Document:
    return {"$gte": lit(value), "$lt": lit(value) + _PREFIX_END}


def _any(conds: list[Document]) -> Document:
    if not conds:
        return NOTHING
    return conds[0] if len(conds) == 1 else {"$or": conds}


def _elem(field: str, alternatives: Sequence[Document]) -> Document:
    """Some entry of ``field`` meets one of the alternatives (each a plain conjunction
    of entry fields). An OR over entries is an OR of ``$elemMatch`` es, never an
    ``$or`` inside one: the same meaning (some entry meets A or B iff some entry meets
    A or some entry meets B), each alternative an index range scan, and portable."""
    return _any([{field: {"$elemMatch": alt}} for alt in alternatives])


def _all(conds: list[Document]) -> Document:
    conds = [c for c in conds if c]
    if not conds:
        return {}
    return conds[0] if len(conds) == 1 else {"$and": conds}


# --------------------------------------------------------------------------- values


def local_urls(base: str | None, target_type: str, ids: Iterable[str]) -> list[str | None]:
    """The ``u`` values a reference to a local resource may have: none (a relative
    reference) or this server's base + ``Type/id``."""
    out: list[str | None] = [None]
    if base is not None:
        out.extend(f"{base}/{target_type}/{lit(i)}" for i in ids)
    return out


def _range(prefix: str, plo: int, phi: int) -> list[Document]:
    """Date prefixes over an entry's [lo, hi] and the search range [plo, phi], as
    alternatives."""
    lo, hi = lit(plo), lit(phi)
    if prefix == "eq":
        return [{"lo": {"$gte": lo}, "hi": {"$lte": hi}}]
    if prefix == "ne":
        return [{"lo": {"$lt": lo}}, {"hi": {"$gt": hi}}]
    if prefix == "gt":
        return [{"hi": {"$gt": hi}}]
    if prefix == "lt":
        return [{"lo": {"$lt": lo}}]
    if prefix == "ge":
        return [{"hi": {"$gt": hi}}, {"lo": {"$gte": lo}, "hi": {"$lte": hi}}]
    if prefix == "le":
        return [{"lo": {"$lt": lo}}, {"lo": {"$gte": lo}, "hi": {"$lte": hi}}]
    if prefix == "sa":
        return [{"lo": {"$gt": hi}}]
    if prefix == "eb":
        return [{"hi": {"$lt": lo}}]
    # ap: overlaps the (widened) search range
    return [{"lo": {"$lte": hi}, "hi": {"$gte": lo}}]


def _number(cond: NumberCond) -> list[Document]:
    """Number/quantity prefixes over an entry's [lo, hi] (a point: lo == hi)."""
    p = cond.prefix
    clo, chi, v = lit(cond.lo), lit(cond.hi), lit(cond.value)
    if p == "eq":
        return [{"lo": {"$lt": chi}, "hi": {"$gte": clo}}]
    if p == "ne":
        return [{"lo": {"$gte": chi}}, {"hi": {"$lt": clo}}]
    if p == "ap":
        return [{"lo": {"$lte": chi}, "hi": {"$gte": clo}}]
    return [
        {
            "gt": {"hi": {"$gt": v}},
            "lt": {"lo": {"$lt": v}},
            "ge": {"hi": {"$gte": v}},
            "le": {"lo": {"$lte": v}},
            "sa": {"lo": {"$gt": v}},
            "eb": {"hi": {"$lt": v}},
        }[p]
    ]


def _times(left: list[Document], right: list[Document]) -> list[Document]:
    """The alternatives of (any of ``left``) AND (any of ``right``) (disjoint fields)."""
    return [{**a, **b} for a in left for b in right]


def entry_match(cond: Condition, base: str | None) -> tuple[str, list[Document]]:
    """(index array, alternative conditions on one of its entries) of a value
    condition; each alternative is a conjunction of entry fields (no operators)."""
    if isinstance(cond, StringCond):
        m = _p(cond.param)
        if cond.mode == "exact":
            m["v"] = lit(values.normalize(cond.value))
            m["x"] = lit(cond.value)
        elif cond.mode == "contains":
            m["v"] = {"$regex": re.escape(lit(cond.value))}
        else:
            m["v"] = _starts_with(cond.value)
        return "x_str", [m]
    if isinstance(cond, TokenCond):
        m = _p(cond.param)
        if cond.text is not None:
            m["t"] = _starts_with(cond.text)
            return "x_tok", [m]
        if cond.codes:  # :in :not-in :above :below (expanded): one alternative per system
            by_system: dict[str, set[str]] = {}
            for sy, c in cond.codes:
                by_system.setdefault(lit(sy), set()).add(lit(c))
            return "x_tok", [
                {**m, "s": sy, "c": {"$in": sorted(cs)}} for sy, cs in sorted(by_system.items())
            ]
        if cond.code is not None:
            m["c"] = lit(cond.code)
        if cond.system == "":
            m["s"] = None
        elif cond.system is not None:
            m["s"] = lit(cond.system)
        return "x_tok", [m]
    if isinstance(cond, ReferenceCond):
        m = _p(cond.param)
        if cond.by_identifier:
            if cond.identifier_value is not None:
                m["iv"] = lit(cond.identifier_value)
            else:
                m["iv"] = {"$ne": None}
            if cond.identifier_system is not None:
                m["is"] = lit(cond.identifier_system)
            return "x_ref", [m]
        if cond.url is not None:
            m["u"] = lit(cond.url)
        else:
            target_id = lit(cond.target_id) or ""
            m["i"] = target_id
            if cond.target_type is not None:
                m["t"] = lit(cond.target_type)
                m["u"] = {"$in": local_urls(base, cond.target_type, [target_id])}
            elif base is None:
                m["u"] = None
            else:
                pattern = f"^{re.escape(base)}/[^/]+/{re.escape(target_id)}$"
                m["u"] = {"$in": [None, re.compile(pattern)]}
        if cond.version is not None:
            m["ver"] = lit(cond.version)
        return "x_ref", [m]
    if isinstance(cond, DateCond):
        return "x_date", _times([_p(cond.param)], _range(cond.prefix, cond.lo, cond.hi))
    if isinstance(cond, NumberCond):
        ranges = _times([_p(cond.param)], _number(cond))
        if cond.param.type != "quantity":
            return "x_num", ranges
        units: list[Document] = [{}]
        if cond.system is not None:
            units = [{"s": lit(cond.system)}]
            if cond.code is not None:
                units[0]["c"] = lit(cond.code)
        elif cond.code is not None:
            units = [{"c": lit(cond.code)}, {"u": lit(cond.code)}]
        return "x_qty", _times(ranges, units)
    if isinstance(cond, UriCond):
        m = _p(cond.param)
        if cond.mode == "below":
            m["v"] = _starts_with(cond.value)
        elif cond.mode == "above":
            m["v"] = {"$in": [lit(u) for u in values.uri_prefixes(cond.value)]}
        else:
            m["v"] = lit(cond.value)
        return "x_uri", [m]
    raise bad_request(f"unsupported condition {type(cond).__name__}")


def full_text(cond: TextCond) -> Document:
    """Every word of the condition starts a word of the full-text field."""
    field = TEXT_FIELDS[cond.field]
    return _all([{field: {"$regex": f"(?:^| ){re.escape(lit(w))}"}} for w in cond.words])


# --------------------------------------------------------------------------- filters


@dataclass(frozen=True, slots=True)
class Translator:
    """Builds filters; ``resolve`` runs the inner step of chains and ``_has``."""

    resolve: Resolver
    base: str | None = None

    async def condition(self, cond: Condition) -> Document:
        """A filter on current-version documents: the condition holds."""
        if isinstance(cond, IdCond):
            ids = [lit(i) for i in cond.ids]
            return {"i": {"$nin" if cond.negate else "$in": ids}}
        if isinstance(cond, TokenCond) and cond.negate:
            positive = replace(cond, negate=False)
            return {"$nor": [await self.condition(positive)]}
        if isinstance(cond, MissingCond):
            field = FIELD_OF_TYPE.get(cond.param.type)
            if field is None:
                raise bad_request(f"':missing' is not supported on '{cond.param.code}'")
            present = _elem(field, [_p(cond.param)])
            return {"$nor": [present]} if cond.missing else present
        if isinstance(cond, CompositeCond):
            # some group holds, for each component, an entry meeting one of its
            # alternatives: one $elemMatch per combination of alternatives
            choices = [entry_match(c, self.base)[1] for c in cond.components]
            return _any(
                [
                    {
                        COMPOSITE_FIELD: {
                            "$elemMatch": {"e": {"$all": [{"$elemMatch": a} for a in combo]}}
                        }
                    }
                    for combo in itertools.product(*choices)
                ]
            )
        if isinstance(cond, TextCond):
            return full_text(cond)
        if isinstance(cond, ChainCond):
            return await self._chain(cond)
        if isinstance(cond, HasCond):
            return await self._has(cond)
        field, alternatives = entry_match(cond, self.base)
        return _elem(field, alternatives)

    async def any_of(self, conds: Sequence[Condition]) -> Document:
        return _any([await self.condition(c) for c in conds])

    async def filter(self, query: SearchQuery) -> Document:
        """The filter of the documents a query matches."""
        parts: list[Document] = [{"live": True}]
        if query.resource_types:
            types = [lit(t) for t in query.resource_types]
            parts.insert(0, {"t": types[0] if len(types) == 1 else {"$in": types}})
        for clause in query.clauses:
            parts.append(await self.any_of(clause))
        return _all(parts)

    async def _chain(self, cond: ChainCond) -> Document:
        types = [lit(t) for t in cond.target_types]
        inner = _all(
            [
                {"t": types[0] if len(types) == 1 else {"$in": types}},
                {"live": True},
                await self.any_of(cond.inner),
            ]
        )
        found = await self.resolve(inner, {"t": 1, "i": 1})
        if len(found) > MAX_IDS:
            raise bad_request(f"the chained search '{cond.param.code}' matches too many resources")
        by_type: dict[str, list[str]] = {}
        for doc in found:
            by_type.setdefault(doc["t"], []).append(doc["i"])
        if not by_type:
            return NOTHING
        targets = [
            {"t": t, "i": {"$in": sorted(ids)}, "u": {"$in": local_urls(self.base, t, sorted(ids))}}
            for t, ids in sorted(by_type.items())
        ]
        return _elem("x_ref", _times([_p(cond.param)], targets))

    async def _has(self, cond: HasCond) -> Document:
        inner = _all([{"t": lit(cond.source_type)}, {"live": True}, await self.any_of(cond.inner)])
        ref_keys = set(keys(cond.ref))
        found = await self.resolve(inner, {"x_ref": 1})
        targets = sorted(
            {
                f"{t}/{i}"
                for doc in found
                for t, i in local_targets(doc.get("x_ref") or (), ref_keys, self.base)
            }
        )
        if len(targets) > MAX_IDS:
            raise bad_request("the _has search matches too many resources")
        return {"_id": {"$in": targets}} if targets else NOTHING


def local_targets(
    entries: Iterable[Document], ref_keys: set[str] | None, base: str | None
) -> list[tuple[str, str]]:
    """(type, id) of the local resources the reference entries point at (of the given
    parameter keys; None: any)."""
    out: list[tuple[str, str]] = []
    for e in entries:
        t, i, u = e.get("t"), e.get("i"), e.get("u")
        if not t or not i or (ref_keys is not None and e.get("p") not in ref_keys):
            continue
        if u is None or (base is not None and u == f"{base}/{t}/{i}"):
            out.append((t, i))
    return out


# --------------------------------------------------------------------------- includes


def include_keys(inc: Include) -> set[str] | None:
    if not inc.params:
        return None
    return {k for p in inc.params for k in keys(p)}


def include_targets_filter(
    inc: Include, frontier: Sequence[Document], base: str | None
) -> Document | None:
    """``_include``: the filter of the resources the frontier documents refer to."""
    ref_keys = include_keys(inc)
    targets = {
        f"{t}/{i}"
        for doc in frontier
        if inc.source_type in ("*", doc["t"])
        for t, i in local_targets(doc.get("x_ref") or (), ref_keys, base)
        if inc.target_type is None or t == inc.target_type
    }
    if not targets:
        return None
    return {"_id": {"$in": sorted(targets)}, "live": True}


def revinclude_sources_filter(
    inc: Include, frontier: Sequence[Document], base: str | None
) -> Document | None:
    """``_revinclude``: the filter of the resources that refer to the frontier."""
    by_type: dict[str, set[str]] = {}
    for doc in frontier:
        if inc.target_type is None or doc["t"] == inc.target_type:
            by_type.setdefault(doc["t"], set()).add(doc["i"])
    if not by_type:
        return None
    targets = [
        {"t": t, "i": {"$in": sorted(ids)}, "u": {"$in": local_urls(base, t, sorted(ids))}}
        for t, ids in sorted(by_type.items())
    ]
    m: Document = {}
    ref_keys = include_keys(inc)
    if ref_keys is not None:
        ks = sorted(ref_keys)
        m["p"] = ks[0] if len(ks) == 1 else {"$in": ks}
    parts: list[Document] = [_elem("x_ref", _times([m], targets)), {"live": True}]
    if inc.source_type != "*":
        parts.insert(0, {"t": lit(inc.source_type)})
    return _all(parts)


# --------------------------------------------------------------------------- sorting


def sort_expression(key: SortKey) -> Any:
    """An aggregation expression of a document's sort key (null when it has none)."""
    p = key.param
    if p.code == "_id":
        return "$i"
    if p.code == "_lastUpdated":
        return "$lu"
    field = FIELD_OF_TYPE.get(p.type)
    column: Any = {
        "string": "$$e.v",
        "token": "$$e.c",
        "uri": "$$e.v",
        "reference": {"$ifNull": ["$$e.u", {"$concat": ["$$e.t", "/", "$$e.i"]}]},
        "date": "$$e.hi" if key.descending else "$$e.lo",
        "number": "$$e.hi" if key.descending else "$$e.lo",
        "quantity": "$$e.hi" if key.descending else "$$e.lo",
    }.get(p.type)
    if column is None or field is None:
        raise bad_request(f"Cannot sort on '{p.code}'")
    entries = {
        "$filter": {
            "input": {"$ifNull": [f"${field}", []]},
            "as": "e",
            "cond": {"$in": ["$$e.p", {"$literal": keys(p)}]},
        }
    }
    column_values = {"$map": {"input": entries, "as": "e", "in": column}}
    # the least (greatest) non-null value; $reduce rather than $min/$max of an array,
    # which not every implementation evaluates over the array's elements
    better = {"$gt" if key.descending else "$lt": ["$$this", "$$value"]}
    return {
        "$reduce": {
            "input": column_values,
            "initialValue": None,
            "in": {
                "$cond": [
                    {
                        "$and": [
                            {"$ne": ["$$this", None]},
                            {"$or": [{"$eq": ["$$value", None]}, better]},
                        ]
                    },
                    "$$this",
                    "$$value",
                ]
            },
        }
    }


def encode_cursor(
    direction: str, sort_keys: Sequence[Any], seq: int, total: int | None = None
) -> str:
    """The opaque paging token: direction, the boundary row's sort keys and ``seq``, and
    the total reported on the first page (if any), which later pages report again."""
    items: list[Any] = [direction, list(sort_keys), seq]
    if total is not None:
        items.append(total)
    raw = json.dumps(items, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str, nkeys: int) -> tuple[str, list[Any], int, int | None]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        items = json.loads(raw)
        if not isinstance(items, list) or len(items) not in (3, 4):
            raise ValueError
        direction, sort_keys, seq = items[:3]
        total = items[3] if len(items) == 4 else None
    except (ValueError, TypeError):
        raise bad_request("Invalid paging cursor", "_cursor") from None
    if (
        direction not in ("n", "p")
        or not isinstance(sort_keys, list)
        or len(sort_keys) != nkeys
        or not _is_int(seq)
        or not (total is None or (_is_int(total) and total >= 0))
        or not all(k is None or isinstance(k, str | int | float) for k in sort_keys)
        or any(isinstance(k, bool) for k in sort_keys)
    ):
        raise bad_request("Invalid paging cursor", "_cursor")
    return direction, sort_keys, seq, total


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def decode_cursor(cursor: str, nkeys: int) -> tuple[str, list[Any], int]:
    """(direction, sort keys, seq) of a paging token; a 400 if it is not one."""
    direction, sort_keys, seq, _ = _decode(cursor, nkeys)
    return direction, sort_keys, seq


def carried_total(query: SearchQuery) -> int | None:
    """The total the query's paging cursor carries from the first page (None: none)."""
    if query.cursor is None:
        return None
    return _decode(query.cursor, len(query.sort))[3]


def _order(descs: Sequence[bool]) -> list[tuple[str, bool]]:
    """(field, ascending) of the page order: per key ``_n`` (missing last) then ``_k``;
    finally ``seq``."""
    out: list[tuple[str, bool]] = []
    for i, d in enumerate(descs):
        out.append((f"_n{i}", True))
        out.append((f"_k{i}", not d))
    out.append(("seq", True))
    return out


def keyset(descs: Sequence[bool], sort_keys: Sequence[Any], seq: int, after: bool) -> Document:
    """Documents strictly after (or before) the boundary row in page order."""
    order = _order(descs)
    bound: dict[str, Any] = {"seq": lit(seq)}
    for i, k in enumerate(sort_keys):
        bound[f"_n{i}"] = 1 if k is None else 0
        bound[f"_k{i}"] = lit(k)
    alternatives: list[Document] = []
    for j, (field, ascending) in enumerate(order):
        if field.startswith("_k") and bound[field] is None:
            continue  # nothing is strictly beyond a missing value among missing values
        op = "$gt" if ascending == after else "$lt"
        alt = {f: bound[f] for f, _ in order[:j]}
        alt[field] = {op: bound[field]}
        alternatives.append(alt)
    return _any(alternatives)


@dataclass(frozen=True, slots=True)
class Page:
    pipeline: list[Document]
    forward: bool  # False: the rows come in reverse page order
    has_cursor: bool


def page_pipeline(query: SearchQuery, match: Document, extra_fields: Sequence[str] = ()) -> Page:
    """The aggregation pipeline of one page (``count`` + 1 rows, to tell if there is
    more) of the documents ``match`` selects."""
    descs = [k.descending for k in query.sort]
    pipeline: list[Document] = [{"$match": match}]
    if query.sort:
        fields: Document = {}
        for i, k in enumerate(query.sort):
            fields[f"_k{i}"] = sort_expression(k)
        pipeline.append({"$addFields": fields})
        pipeline.append(
            {
                "$addFields": {
                    f"_n{i}": {"$cond": [{"$eq": [{"$ifNull": [f"$_k{i}", None]}, None]}, 1, 0]}
                    for i in range(len(query.sort))
                }
            }
        )
    forward = True
    if query.cursor is not None:
        direction, sort_keys, seq = decode_cursor(query.cursor, len(descs))
        forward = direction == "n"
        after = keyset(descs, sort_keys, seq, forward)
        if query.sort:
            pipeline.append({"$match": after})
        else:
            pipeline[0] = {"$match": _all([match, after])}
    sort = {f: (1 if asc == forward else -1) for f, asc in _order(descs)}
    pipeline.append({"$sort": sort})
    pipeline.append({"$limit": query.count + 1})
    projection: Document = {"_id": 0, "t": 1, "i": 1, "c": 1, "seq": 1}
    for i in range(len(descs)):
        projection[f"_k{i}"] = 1
    for f in extra_fields:
        projection[f] = 1
    pipeline.append({"$project": projection})
    return Page(pipeline, forward, query.cursor is not None)


def cursor_of(doc: Document, nkeys: int, direction: str, total: int | None = None) -> str:
    return encode_cursor(direction, [doc.get(f"_k{i}") for i in range(nkeys)], doc["seq"], total)
