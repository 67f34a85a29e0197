"""Search index tables of the SQLite store, and the translation of search IR into SQL.

Tables (one row per index entry, see :mod:`fhir_server.search.extract`), each with an
index leading with ``(param, value...)`` and ending with ``rid`` so that lookups are
covered. A resource's rows in a table are found by rowid, not by an index: row ``i`` of
resource ``rid`` has rowid ``rid * SPAN + i`` (:data:`SPAN` = 2**20), so rewriting a
resource's rows, sort keys, composite joins and includes read one rowid range. That
saves a third B-tree per table (an ``(rid, param)`` index) on every write, which was
about a third of the cost of indexing a resource:

====================  ==============================================================
``idx_string``        ``value`` (normalised), ``exact``
``idx_token``         ``system``, ``code``, ``text`` (normalised display/text)
``idx_ref``           ``type``, ``id``, ``version``, ``url`` (absolute/canonical only),
                      ``id_system``, ``id_value`` (Reference.identifier)
``idx_date``          ``lo``, ``hi`` (integer microseconds, UTC, closed range)
``idx_number``        ``lo``, ``hi`` (REAL; equal for a point value)
``idx_quantity``      ``lo``, ``hi``, ``system``, ``code``, ``unit``
``idx_uri``           ``value``
====================  ==============================================================

``idx_fulltext`` (FTS5, ``rowid`` = ``rid``) holds the full-text words of each resource
(columns ``text`` and ``content``, see :mod:`fhir_server.search.fulltext`); ``_text``
and ``_content`` are prefix queries on it.

The layout is versioned with ``PRAGMA user_version`` (:data:`LAYOUT`); opening a
database of an older layout rebuilds the index tables from the stored resources
(:func:`create_schema`), in one transaction.

``param`` is a 47-bit integer derived from ``(resource type, code)`` (``*`` instead of
the type for parameters defined on Resource/DomainResource), so rows of different
types never mix under one key and no lookup table has to be kept in step. ``grp`` ties
the component rows of one composite value together. A partial index on
``resource (type) WHERE content IS NOT NULL`` lists the current resources of a type in
rid order (default order, counts).

A query becomes ONE parameterised statement: each clause (an OR of conditions) is an
``rid IN (SELECT rid FROM idx_... WHERE ... UNION ALL ...)`` over the covering indexes.
When such a clause exists the type test is written ``+r.type`` so that SQLite drives
the search from an index set (looking resources up by rowid) instead of walking every
resource of the type; chains and ``_has`` are written as CROSS JOINs from the matching
targets/sources to the references, which fixes that order. Sort keys are correlated
subqueries on the resource's rowid range. Every value is a bound parameter;
nothing from the request is ever formatted into SQL text (table and column names come
from fixed tables in this module).

Order and paging: results are ordered by the ``_sort`` keys (missing values last),
then by ``rid`` -- without ``_sort``, by ``rid`` alone, i.e. in order of creation
(stable while resources are updated). Pages are cut by keyset (``after the last row
of the previous page``), never by OFFSET, so paging stays correct and fast while data
changes; the cursor is an opaque token holding the boundary row's keys.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from fhir_server.errors import FhirError, bad_request
from fhir_server.search import fulltext, parser, values
from fhir_server.search.extract import IndexEntries, extract, extract_param
from fhir_server.search.query import (
    ESTIMATE_CAP,
    ChainCond,
    Clause,
    CompositeCond,
    Condition,
    DateCond,
    HasCond,
    Hit,
    IdCond,
    Include,
    MissingCond,
    NumberCond,
    Param,
    ReferenceCond,
    SearchQuery,
    SearchResult,
    SortKey,
    StringCond,
    TextCond,
    TokenCond,
    UriCond,
)
from fhir_server.search.registry import Registry, SearchParam, default_registry

SCHEMA = """
CREATE TABLE IF NOT EXISTS idx_string (
    rid INTEGER NOT NULL, param INTEGER NOT NULL, value TEXT NOT NULL, exact TEXT NOT NULL,
    grp INTEGER);
CREATE INDEX IF NOT EXISTS idx_string_value ON idx_string (param, value, rid);
CREATE TABLE IF NOT EXISTS idx_token (
    rid INTEGER NOT NULL, param INTEGER NOT NULL, system TEXT, code TEXT, text TEXT,
    grp INTEGER);
CREATE INDEX IF NOT EXISTS idx_token_code ON idx_token (param, code, system, rid);
CREATE TABLE IF NOT EXISTS idx_ref (
    rid INTEGER NOT NULL, param INTEGER NOT NULL, type TEXT, id TEXT, version TEXT,
    url TEXT, id_system TEXT, id_value TEXT, grp INTEGER);
CREATE INDEX IF NOT EXISTS idx_ref_target ON idx_ref (param, id, type, rid);
CREATE INDEX IF NOT EXISTS idx_ref_url ON idx_ref (param, url, rid);
CREATE INDEX IF NOT EXISTS idx_ref_identifier ON idx_ref (param, id_value, rid);
CREATE TABLE IF NOT EXISTS idx_date (
    rid INTEGER NOT NULL, param INTEGER NOT NULL, lo INTEGER NOT NULL, hi INTEGER NOT NULL,
    grp INTEGER);
CREATE INDEX IF NOT EXISTS idx_date_lo ON idx_date (param, lo, hi, rid);
CREATE INDEX IF NOT EXISTS idx_date_hi ON idx_date (param, hi, lo, rid);
CREATE TABLE IF NOT EXISTS idx_number (
    rid INTEGER NOT NULL, param INTEGER NOT NULL, lo REAL NOT NULL, hi REAL NOT NULL,
    grp INTEGER);
CREATE INDEX IF NOT EXISTS idx_number_lo ON idx_number (param, lo, hi, rid);
CREATE TABLE IF NOT EXISTS idx_quantity (
    rid INTEGER NOT NULL, param INTEGER NOT NULL, lo REAL NOT NULL, hi REAL NOT NULL,
    system TEXT, code TEXT, unit TEXT, grp INTEGER);
CREATE INDEX IF NOT EXISTS idx_quantity_lo ON idx_quantity (param, lo, hi, rid);
CREATE TABLE IF NOT EXISTS idx_uri (
    rid INTEGER NOT NULL, param INTEGER NOT NULL, value TEXT NOT NULL, grp INTEGER);
CREATE INDEX IF NOT EXISTS idx_uri_value ON idx_uri (param, value, rid);
-- full text (_text, _content): the normalised words of a resource, rowid = rid
CREATE VIRTUAL TABLE IF NOT EXISTS idx_fulltext USING fts5 (
    text, content, tokenize = 'unicode61 remove_diacritics 2');
-- current (not deleted) resources of a type in rid order: the default sort, keyset
-- paging on rid and counting without reading the resources
CREATE INDEX IF NOT EXISTS resource_live ON resource (type) WHERE content IS NOT NULL;
"""

TABLES = (
    "idx_string",
    "idx_token",
    "idx_ref",
    "idx_date",
    "idx_number",
    "idx_quantity",
    "idx_uri",
)
_TABLE_OF_TYPE = {
    "string": "idx_string",
    "token": "idx_token",
    "reference": "idx_ref",
    "date": "idx_date",
    "number": "idx_number",
    "quantity": "idx_quantity",
    "uri": "idx_uri",
}
_PREFIX_END = "\U0010ffff"  # sorts after any character: [v, v + END) is "starts with v"


def registry() -> Registry:
    return default_registry()


def _hash_key(scope: str, code: str) -> int:
    digest = hashlib.blake2b(f"{scope}\x00{code}".encode(), digest_size=8).digest()
    return int.from_bytes(digest[:6], "big") >> 1


_key_cache: dict[tuple[str, str], int] = {}
_key_cache_of: tuple[int, int] = (0, -1)  # (id, version) of the registry it was built for


def _key(resource_type: str, code: str) -> int:
    """The ``param`` value of a parameter's rows (``*`` scope for common parameters)."""
    global _key_cache_of
    reg = registry()
    if _key_cache_of != (id(reg), reg.version):
        _key_cache.clear()
        _key_cache_of = (id(reg), reg.version)
    key = _key_cache.get((resource_type, code))
    if key is None:
        base = code.partition("#")[0].partition(":")[0]
        p = reg.get(resource_type, base)
        common = p is not None and any(b in ("Resource", "DomainResource") for b in p.base)
        key = _hash_key("*" if common else resource_type, code)
        _key_cache[(resource_type, code)] = key
    return key


def _keys(param: Param) -> list[int]:
    if not param.resource_types:
        return [_hash_key("*", param.code)]
    return sorted({_key(t, param.code) for t in param.resource_types})


def _in(column: str, items: Sequence[Any], args: list[Any]) -> str:
    args.extend(items)
    if len(items) == 1:
        return f"{column} = ?"
    return f"{column} IN ({', '.join('?' * len(items))})"


# --------------------------------------------------------------------------- writing


# Version of the index layout, kept in ``PRAGMA user_version``. 2: rows addressed by
# rowid range (no ``(rid, param)`` indexes).
LAYOUT = 2
SPAN = 1 << 20  # rowids per resource and table: row i of resource rid is rid * SPAN + i


def owned(alias: str, rid: str) -> str:
    """SQL: the rows of ``alias`` that belong to the resource whose rid is the SQL
    expression ``rid`` (a column reference; never request input). The table is written
    ``NOT INDEXED`` where this is used, which leaves SQLite the rowid range only: with no
    statistics it would otherwise prefer a ``(param, ...)`` index and read every row of
    the parameter for each resource."""
    return f"{alias}.rowid BETWEEN {rid} * {SPAN} AND {rid} * {SPAN} + {SPAN - 1}"


def create_schema(conn: sqlite3.Connection) -> int:
    """Create the index tables, or rebuild them when the database has an older layout.
    Returns the number of resources re-indexed (0 unless a rebuild happened)."""
    (layout,) = conn.execute("PRAGMA user_version").fetchone()
    existing = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'idx_string'"
    ).fetchone()
    if layout == LAYOUT or existing is None:
        conn.executescript(SCHEMA)
        conn.execute(f"PRAGMA user_version = {LAYOUT}")
        return 0
    if layout > LAYOUT:
        raise RuntimeError(
            f"the database's index layout {layout} is newer than this server's ({LAYOUT})"
        )
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table in (*TABLES, "idx_fulltext"):
            conn.execute(f"DROP TABLE IF EXISTS {table}")
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        rows = conn.execute(
            "SELECT rid, type, content FROM resource WHERE content IS NOT NULL"
        ).fetchall()
        n = reindex(conn, rows, fresh=True)
        conn.execute(f"PRAGMA user_version = {LAYOUT}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return n


def delete(conn: sqlite3.Connection, rid: int) -> None:
    lo = rid * SPAN
    for table in TABLES:
        conn.execute(f"DELETE FROM {table} WHERE rowid BETWEEN ? AND ?", (lo, lo + SPAN - 1))
    conn.execute("DELETE FROM idx_fulltext WHERE rowid = ?", (rid,))


def _check_span(count: int) -> None:
    if count > SPAN:
        raise FhirError.of(
            422,
            "too-costly",
            f"The resource has more than {SPAN} index values of one kind; it cannot be indexed",
        )


def write(
    conn: sqlite3.Connection,
    rid: int,
    resource_type: str,
    resource: dict[str, Any],
    *,
    fresh: bool = False,
) -> None:
    """Replace the index rows of a resource (``fresh``: it has none yet)."""
    if not fresh:
        delete(conn, rid)
    e = extract(resource, registry())
    _insert(conn, resource_type, rid, e)
    conn.execute(
        "INSERT INTO idx_fulltext (rowid, text, content) VALUES (?, ?, ?)",
        (rid, fulltext.text_words(resource), fulltext.content_words(resource)),
    )


def _insert(
    conn: sqlite3.Connection,
    resource_type: str,
    rid: int,
    entries: IndexEntries,
    first: dict[str, int] | None = None,
) -> None:
    """Insert the index rows of one resource's ``entries``, each table's numbered from
    ``first[table]`` (default 0) within the resource's rowid range."""
    k = _key
    for table, (field, columns, marks) in _INSERTS.items():
        values = getattr(entries, field)
        if not values:
            continue
        base = rid * SPAN + (first or {}).get(table, 0)
        _check_span(base - rid * SPAN + len(values))
        conn.executemany(
            f"INSERT INTO {table} (rowid, rid, param, {columns}) VALUES ({marks})",
            [(base + i, rid, k(resource_type, c), *rest) for i, (c, *rest) in enumerate(values)],
        )


# --------------------------------------------------------------------------- conditions


def _row_filter(
    cond: Condition, a: str, args: list[Any], base: str | None = None
) -> tuple[str, str]:
    """(table, SQL boolean over the index row alias ``a``) of a value condition."""
    if isinstance(cond, StringCond):
        table = "idx_string"
        sql = _in(f"{a}.param", _keys(cond.param), args)
        if cond.mode == "exact":
            args.extend((values.normalize(cond.value), cond.value))
            return table, f"{sql} AND {a}.value = ? AND {a}.exact = ?"
        if cond.mode == "contains":
            pattern = cond.value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            args.append(f"%{pattern}%")
            return table, f"{sql} AND {a}.value LIKE ? ESCAPE '\\'"
        args.extend((cond.value, cond.value + _PREFIX_END))
        return table, f"{sql} AND {a}.value >= ? AND {a}.value < ?"
    if isinstance(cond, TokenCond):
        table = "idx_token"
        sql = _in(f"{a}.param", _keys(cond.param), args)
        if cond.text is not None:
            args.extend((cond.text, cond.text + _PREFIX_END))
            return table, f"{sql} AND {a}.text >= ? AND {a}.text < ?"
        if cond.codes:
            sql += " AND " + _in(f"{a}.code", sorted({c for _, c in cond.codes}), args)
            systems = sorted({sy for sy, _ in cond.codes})
            if len(systems) == 1:
                args.append(systems[0])
                sql += f" AND {a}.system = ?"
            else:
                pairs = ", ".join("(?, ?)" for _ in cond.codes)
                args.extend(v for pair in cond.codes for v in pair)
                sql += f" AND ({a}.system, {a}.code) IN (VALUES {pairs})"
            return table, sql
        if cond.code is not None:
            args.append(cond.code)
            sql += f" AND {a}.code = ?"
        if cond.system == "":
            sql += f" AND {a}.system IS NULL"
        elif cond.system is not None:
            args.append(cond.system)
            sql += f" AND {a}.system = ?"
        return table, sql
    if isinstance(cond, ReferenceCond):
        table = "idx_ref"
        sql = _in(f"{a}.param", _keys(cond.param), args)
        if cond.by_identifier:
            if cond.identifier_value is not None:
                args.append(cond.identifier_value)
                sql += f" AND {a}.id_value = ?"
            else:
                sql += f" AND {a}.id_value IS NOT NULL"
            if cond.identifier_system is not None:
                args.append(cond.identifier_system)
                sql += f" AND {a}.id_system = ?"
            return table, sql
        if cond.url is not None:
            args.append(cond.url)
            sql += f" AND {a}.url = ?"
        else:
            args.append(cond.target_id)
            sql += f" AND {a}.id = ?"
            if cond.target_type is not None:
                args.append(cond.target_type)
                sql += f" AND {a}.type = ?"
            sql += " AND " + _local(a, base, args)
        if cond.version is not None:
            args.append(cond.version)
            sql += f" AND {a}.version = ?"
        return table, sql
    if isinstance(cond, DateCond):
        sql = _in(f"{a}.param", _keys(cond.param), args)
        return "idx_date", f"{sql} AND " + _range_sql(cond.prefix, a, cond.lo, cond.hi, args)
    if isinstance(cond, NumberCond):
        table = "idx_quantity" if cond.param.type == "quantity" else "idx_number"
        sql = _in(f"{a}.param", _keys(cond.param), args)
        sql += " AND " + _number_sql(cond, a, args)
        if table == "idx_quantity":
            if cond.system is not None:
                args.append(cond.system)
                sql += f" AND {a}.system = ?"
                if cond.code is not None:
                    args.append(cond.code)
                    sql += f" AND {a}.code = ?"
            elif cond.code is not None:
                args.extend((cond.code, cond.code))
                sql += f" AND ({a}.code = ? OR {a}.unit = ?)"
        return table, sql
    if isinstance(cond, UriCond):
        sql = _in(f"{a}.param", _keys(cond.param), args)
        if cond.mode == "below":
            args.extend((cond.value, cond.value + _PREFIX_END))
            return "idx_uri", f"{sql} AND {a}.value >= ? AND {a}.value < ?"
        if cond.mode == "above":
            return "idx_uri", f"{sql} AND " + _in(f"{a}.value", _uri_prefixes(cond.value), args)
        args.append(cond.value)
        return "idx_uri", f"{sql} AND {a}.value = ?"
    raise bad_request(f"unsupported condition {type(cond).__name__}")


def _uri_prefixes(uri: str) -> list[str]:
    """``uri`` and its parents (``:above``), down to the authority."""
    out = [uri]
    scheme_end = uri.find("://")
    floor = uri.find("/", scheme_end + 3) if scheme_end >= 0 else -1
    current = uri.rstrip("/")
    while True:
        cut = current.rfind("/")
        if cut <= floor or cut < 0:
            break
        current = current[:cut]
        out.append(current)
    return out


def _range_sql(prefix: str, a: str, plo: int, phi: int, args: list[Any]) -> str:
    """Date prefixes over the target range [lo, hi] and the search range [plo, phi]."""
    lo, hi = f"{a}.lo", f"{a}.hi"
    if prefix == "eq":
        # lo <= hi <= phi: a closed range on the lo index
        args.extend((plo, phi, phi))
        return f"{lo} >= ? AND {lo} <= ? AND {hi} <= ?"
    if prefix == "ne":
        args.extend((plo, phi))
        return f"({lo} < ? OR {hi} > ?)"
    if prefix == "gt":
        args.append(phi)
        return f"{hi} > ?"
    if prefix == "lt":
        args.append(plo)
        return f"{lo} < ?"
    if prefix == "ge":
        # both branches imply hi >= plo (lo <= hi): a range on the hi index
        args.extend((plo, phi, plo, phi))
        return f"{hi} >= ? AND ({hi} > ? OR ({lo} >= ? AND {hi} <= ?))"
    if prefix == "le":
        # both branches imply lo <= phi: a range on the lo index
        args.extend((phi, plo, plo, phi))
        return f"{lo} <= ? AND ({lo} < ? OR ({lo} >= ? AND {hi} <= ?))"
    if prefix == "sa":
        args.append(phi)
        return f"{lo} > ?"
    if prefix == "eb":
        args.append(plo)
        return f"{hi} < ?"
    # ap: overlaps the (widened) search range
    args.extend((phi, plo))
    return f"{lo} <= ? AND {hi} >= ?"


def _number_sql(cond: NumberCond, a: str, args: list[Any]) -> str:
    """Number/quantity prefixes over the target range [lo, hi] (a point: lo == hi)."""
    lo, hi = f"{a}.lo", f"{a}.hi"
    p = cond.prefix
    if p == "eq":
        args.extend((cond.hi, cond.lo))
        return f"{lo} < ? AND {hi} >= ?"
    if p == "ne":
        args.extend((cond.hi, cond.lo))
        return f"({lo} >= ? OR {hi} < ?)"
    if p == "ap":
        args.extend((cond.hi, cond.lo))
        return f"{lo} <= ? AND {hi} >= ?"
    args.append(cond.value)
    return {
        "gt": f"{hi} > ?",
        "lt": f"{lo} < ?",
        "ge": f"{hi} >= ?",
        "le": f"{lo} <= ?",
        "sa": f"{lo} > ?",
        "eb": f"{hi} < ?",
    }[p]


def _local(a: str, base: str | None, args: list[Any]) -> str:
    """The reference row ``a`` points at a resource on this server."""
    if base is None:
        return f"{a}.url IS NULL"
    args.append(base + "/")
    return f"({a}.url IS NULL OR {a}.url = ? || {a}.type || '/' || {a}.id)"


def _rid_set(cond: Condition, args: list[Any], base: str | None) -> tuple[str, bool]:
    """A ``SELECT rid ...`` for the resources a condition matches, and whether the
    condition is negated (the resource must NOT be in that set)."""
    if isinstance(cond, TokenCond) and cond.negate:
        positive = dataclasses.replace(cond, negate=False)
        sub, _ = _rid_set(positive, args, base)
        return sub, True
    if isinstance(cond, MissingCond):
        table = _TABLE_OF_TYPE.get(cond.param.type)
        if table is None:
            raise bad_request(f"':missing' is not supported on '{cond.param.code}'")
        where = _in("m.param", _keys(cond.param), args)
        return f"SELECT m.rid FROM {table} m WHERE {where}", cond.missing
    if isinstance(cond, CompositeCond):
        parts: list[tuple[str, str]] = []
        for i, comp in enumerate(cond.components):
            parts.append(_row_filter(comp, f"c{i}", args, base))
        first_table, first_where = parts[0]
        sql = f"SELECT c0.rid FROM {first_table} c0"
        wheres = [first_where]
        for i, (table, where) in enumerate(parts[1:], 1):
            sql += f" JOIN {table} c{i} NOT INDEXED ON {owned(f'c{i}', 'c0.rid')} AND c{i}.grp = c0.grp"
            wheres.append(where)
        return sql + " WHERE " + " AND ".join(wheres), False
    if isinstance(cond, ChainCond):
        # from the targets that match (driven by the inner conditions) to the
        # references to them: CROSS JOIN fixes that join order
        inner, kind = _or_sql(cond.inner, "t", args, base)
        types = _in(f"{'+' if kind == 'rid' else ''}t.type", cond.target_types, args)
        where = _in("ref.param", _keys(cond.param), args)
        local = _local("ref", base, args)
        return (
            "SELECT ref.rid FROM resource t CROSS JOIN idx_ref ref"
            f" WHERE {inner} AND {types} AND t.content IS NOT NULL"
            f" AND {where} AND ref.id = t.id AND ref.type = t.type AND {local}",
            False,
        )
    if isinstance(cond, HasCond):
        # from the matching sources to what they refer to
        inner, kind = _or_sql(cond.inner, "s", args, base)
        args.append(cond.source_type)
        source = f"{'+' if kind == 'rid' else ''}s.type = ?"
        where = _in("ref.param", _keys(cond.ref), args)
        local = _local("ref", base, args)
        return (
            "SELECT t.rid FROM resource s CROSS JOIN idx_ref ref NOT INDEXED CROSS JOIN resource t"
            f" WHERE {inner} AND {source} AND s.content IS NOT NULL"
            f" AND {owned('ref', 's.rid')} AND {where} AND {local}"
            " AND t.type = ref.type AND t.id = ref.id",
            False,
        )
    if isinstance(cond, TextCond):
        args.append(_fts_query(cond))
        return "SELECT rowid FROM idx_fulltext WHERE idx_fulltext MATCH ?", False
    if isinstance(cond, IdCond):
        raise AssertionError("IdCond has no index rows")
    table, where = _row_filter(cond, "x", args, base)
    return f"SELECT x.rid FROM {table} x WHERE {where}", False


def _fts_query(cond: TextCond) -> str:
    """The FTS5 query of a full-text condition: each word a prefix query on the
    condition's column, all of them required. Words are runs of letters and digits
    (:func:`fhir_server.search.fulltext.words`), so quoting them is enough to keep
    them plain terms; the query is a bound value."""
    return " AND ".join(f'{cond.field} : "{w}"*' for w in cond.words)


def _or_sql(
    conds: Sequence[Condition], alias: str, args: list[Any], base: str | None
) -> tuple[str, str]:
    """SQL boolean over resource alias ``alias``: any of ``conds`` holds; and how it
    can drive a search: ``rid`` (one ``rid IN`` set), ``id`` (logical ids) or ``""``."""
    if not conds:
        return "0", ""
    positive: list[str] = []
    others: list[str] = []
    kind = ""
    for cond in conds:
        if isinstance(cond, IdCond):
            sql = _in(f"{alias}.id", cond.ids, args) if cond.ids else "0"
            others.append(f"NOT ({sql})" if cond.negate else sql)
            if not cond.negate:
                kind = "id"
            continue
        sub, negated = _rid_set(cond, args, base)
        if negated:
            others.append(f"{alias}.rid NOT IN ({sub})")
        else:
            positive.append(sub)
    if positive:
        others.insert(0, f"{alias}.rid IN ({' UNION ALL '.join(positive)})")
    if len(others) == 1:
        return others[0], "rid" if positive else kind
    return "(" + " OR ".join(others) + ")", ""


_SIMPLE = (StringCond, TokenCond, ReferenceCond, DateCond, NumberCond, UriCond)
# A clause matching fewer index rows than this drives the search; above it a clause is
# "broad" and is better checked per candidate (or per resource, walking the type)
BROAD = 4000


def _probeable(clause: Clause) -> bool:
    """A clause of one positive value condition on one index table."""
    if len(clause) != 1:
        return False
    cond = clause[0]
    return isinstance(cond, _SIMPLE) and not (isinstance(cond, TokenCond) and cond.negate)


def estimates(conn: sqlite3.Connection, query: SearchQuery) -> dict[int, int]:
    """For each single-condition clause (by position): how many index rows match it,
    counted up to :data:`BROAD` (a covering index range; cheap even when broad)."""
    out: dict[int, int] = {}
    for i, clause in enumerate(query.clauses):
        if _probeable(clause):
            args: list[Any] = []
            table, where = _row_filter(clause[0], "x", args, query.base_url)
            row = conn.execute(
                f"SELECT count(*) FROM (SELECT 1 FROM {table} x WHERE {where} LIMIT ?)",
                [*args, BROAD],
            ).fetchone()
            out[i] = int(row[0])
    return out


def _probes(query: SearchQuery, est: dict[int, int] | None, walk: bool) -> set[int]:
    """The clauses to check per candidate (EXISTS on the ``(rid, param)`` index) rather
    than as a materialised ``rid IN`` set.

    SQLite materialises every ``rid IN (...)`` set, so a broad clause next to a
    selective one would cost as much as the broad one alone whichever it drives from.
    Kept as sets: the most selective single-condition clause (by :func:`estimates`)
    and every other kind of clause (chains, ``_has``, composites, ORs). When every
    clause is broad and ``walk`` (a page without ``_sort``): all are probes and the
    search walks the type's resources in rid order, stopping at the page's end.
    """
    if not est:
        return set()
    others = any(
        _or_sql(clause, "r", [], query.base_url)[1]
        for i, clause in enumerate(query.clauses)
        if i not in est
    )
    driver = min(est, key=lambda i: (est[i], i))
    if est[driver] >= BROAD and (walk or others):
        return set(est)
    return set(est) - {driver}


def _exists(cond: Condition, args: list[Any], base: str | None) -> str:
    table, where = _row_filter(cond, "x", args, base)
    return f"EXISTS (SELECT 1 FROM {table} x NOT INDEXED WHERE {owned('x', 'r.rid')} AND {where})"


def _where(
    query: SearchQuery,
    args: list[Any],
    est: dict[int, int] | None = None,
    walk: bool = False,
) -> str:
    """The WHERE of the match statement over ``resource r``.

    When a clause is a set of rids from an index, the type test is written ``+r.type``
    so that SQLite drives the search from that set rather than from the type's rows.
    ``est``: clause estimates (:func:`estimates`), to pick the driving clause.
    """
    parts = ["r.content IS NOT NULL"]
    kinds: set[str] = set()
    probes = _probes(query, est, walk)
    for i, clause in enumerate(query.clauses):
        if i in probes:
            parts.append(_exists(clause[0], args, query.base_url))
            continue
        sql, kind = _or_sql(clause, "r", args, query.base_url)
        parts.append(sql)
        kinds.add(kind)
    if query.resource_types:
        column = "+r.type" if "rid" in kinds and "id" not in kinds else "r.type"
        parts.append(_in(column, query.resource_types, args))
    return " AND ".join(parts)


# --------------------------------------------------------------------------- sorting


def _sort_expr(key: SortKey, args: list[Any]) -> str:
    p = key.param
    if p.code == "_id":
        return "r.id"
    if p.code == "_lastUpdated":
        return "r.last_updated"
    agg = "max" if key.descending else "min"
    column = {
        "string": "value",
        "token": "code",
        "uri": "value",
        "reference": "coalesce(url, type || '/' || id)",
        "date": "hi" if key.descending else "lo",
        "number": "hi" if key.descending else "lo",
        "quantity": "hi" if key.descending else "lo",
    }.get(p.type)
    table = _TABLE_OF_TYPE.get(p.type)
    if column is None or table is None:
        raise bad_request(f"Cannot sort on '{p.code}'")
    where = _in("s.param", _keys(p), args)
    return f"(SELECT {agg}({column}) FROM {table} s NOT INDEXED WHERE {owned('s', 'r.rid')} AND {where})"


def _encode_cursor(direction: str, keys: Sequence[Any], rid: int) -> str:
    raw = json.dumps([direction, list(keys), rid], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, nkeys: int) -> tuple[str, list[Any], int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        direction, keys, rid = json.loads(raw)
    except (ValueError, TypeError):
        raise bad_request("Invalid paging cursor", "_cursor") from None
    if (
        direction not in ("n", "p")
        or not isinstance(keys, list)
        or len(keys) != nkeys
        or not isinstance(rid, int)
        or isinstance(rid, bool)
        or not all(k is None or isinstance(k, str | int | float) for k in keys)
    ):
        raise bad_request("Invalid paging cursor", "_cursor")
    return direction, keys, rid


def _keyset(
    descs: Sequence[bool], keys: Sequence[Any], rid: int, after: bool
) -> tuple[str, list[Any]]:
    """Rows strictly after (or before) the boundary row in (keys..., rid) order, with
    missing key values last."""
    args: list[Any] = []

    def build(i: int) -> str:
        if i == len(descs):
            args.append(rid)
            return "r_rid > ?" if after else "r_rid < ?"
        e, v = f"k{i}", keys[i]
        greater = (not descs[i]) == after  # moving towards larger values of the key
        if v is None:
            if after:
                return f"({e} IS NULL AND {build(i + 1)})"
            return f"({e} IS NOT NULL OR ({e} IS NULL AND {build(i + 1)}))"
        op = ">" if greater else "<"
        args.append(v)
        strictly = f"{e} {op} ?"
        if after:
            strictly = f"({strictly} OR {e} IS NULL)"
        args.append(v)
        return f"({strictly} OR ({e} = ? AND {build(i + 1)}))"

    return build(0), args


# --------------------------------------------------------------------------- search


def _resolve_includes(
    conn: sqlite3.Connection, query: SearchQuery, matches: list[tuple[int, str, str, bytes]]
) -> list[Hit]:
    if not query.includes or not matches:
        return []
    seen = {m[0] for m in matches}
    out: list[Hit] = []
    frontier = [(m[0], m[1], m[2]) for m in matches]
    first_round = True
    for _ in range(5):
        found: list[tuple[int, str, str, bytes]] = []
        for inc in query.includes:
            if not first_round and not inc.iterate:
                continue
            found.extend(_include_rows(conn, inc, frontier, query.base_url))
        first_round = False
        frontier = []
        for rid, rtype, rid_text, content in found:
            if rid in seen:
                continue
            seen.add(rid)
            out.append(Hit(rtype, rid_text, content, "include"))
            frontier.append((rid, rtype, rid_text))
        if not frontier or not any(i.iterate for i in query.includes) or len(out) > 1000:
            break
    return out


def _include_rows(
    conn: sqlite3.Connection,
    inc: Include,
    frontier: list[tuple[int, str, str]],
    base: str | None,
) -> list[tuple[int, str, str, bytes]]:
    statement = _include_sql(inc, frontier, base)
    if statement is None:
        return []
    sql, args = statement
    if not inc.reverse:
        return [(r[0], r[1], r[2], r[3]) for r in conn.execute(sql, args)]
    wanted = {(rtype, rid_text) for _, rtype, rid_text in frontier}
    return [(r[0], r[1], r[2], r[3]) for r in conn.execute(sql, args) if (r[4], r[5]) in wanted]


def _include_sql(
    inc: Include, frontier: list[tuple[int, str, str]], base: str | None
) -> tuple[str, list[Any]] | None:
    """The statement of one include round (None: nothing to look for)."""
    args: list[Any] = []
    if not inc.reverse:
        rids = [rid for rid, rtype, _ in frontier if inc.source_type in ("*", rtype)]
        if not rids:
            return None
        # the sources' rows by rowid range, from a literal table of their rids
        args.extend(rids)
        sql = (
            f"WITH src(rid) AS (VALUES {', '.join('(?)' for _ in rids)})"
            " SELECT DISTINCT t.rid, t.type, t.id, t.content FROM src CROSS JOIN idx_ref ref NOT INDEXED"
            " JOIN resource t ON t.type = ref.type AND t.id = ref.id"
            f" WHERE {owned('ref', 'src.rid')}"
            + " AND "
            + _local("ref", base, args)
            + " AND t.content IS NOT NULL"
        )
        if inc.params:
            keys = sorted({k for p in inc.params for k in _keys(p)})
            sql += " AND " + _in("ref.param", keys, args)
        if inc.target_type is not None:
            sql += " AND t.type = ?"
            args.append(inc.target_type)
        return sql, args
    wanted = {(rtype, rid_text) for _, rtype, rid_text in frontier}
    if inc.target_type is not None:
        wanted = {w for w in wanted if w[0] == inc.target_type}
    if not wanted:
        return None
    sql = (
        "SELECT DISTINCT s.rid, s.type, s.id, s.content, ref.type, ref.id FROM idx_ref ref"
        " JOIN resource s ON s.rid = ref.rid"
        " WHERE "
        + _in("ref.id", sorted({w[1] for w in wanted}), args)
        + " AND "
        + _in("ref.type", sorted({w[0] for w in wanted}), args)
        + " AND "
        + _local("ref", base, args)
        + " AND s.content IS NOT NULL"
    )
    if inc.params:
        keys = sorted({k for p in inc.params for k in _keys(p)})
        sql += " AND " + _in("ref.param", keys, args)
    if inc.source_type != "*":
        sql += " AND s.type = ?"
        args.append(inc.source_type)
    return sql, args


def search(conn: sqlite3.Connection, query: SearchQuery) -> SearchResult:
    """Run a parsed search: one page of matches (and includes), the total, cursors."""
    est = estimates(conn, query) if len(query.clauses) > 0 else {}
    sort_args: list[Any] = []
    sort_exprs = [_sort_expr(k, sort_args) for k in query.sort]
    where_args: list[Any] = []
    where = _where(query, where_args, est)
    page_args: list[Any] = []
    page_where = _where(query, page_args, est, walk=not query.sort)
    inner_args = sort_args + page_args
    selected = "".join(f", {e} AS k{i}" for i, e in enumerate(sort_exprs))
    inner = (
        f"SELECT r.rid AS r_rid, r.type, r.id, r.content{selected}"
        f" FROM resource r WHERE {page_where}"
    )
    descs = [k.descending for k in query.sort]

    direction = "n"
    keyset = ""
    keyset_args: list[Any] = []
    if query.cursor is not None:
        direction, keys, boundary = _decode_cursor(query.cursor, len(sort_exprs))
        keyset, keyset_args = _keyset(descs, keys, boundary, direction == "n")
    forward = direction == "n"

    def order(reverse: bool) -> str:
        parts = []
        for i, d in enumerate(descs):
            asc = (not d) != reverse
            nulls = "LAST" if not reverse else "FIRST"
            parts.append(f"k{i} {'ASC' if asc else 'DESC'} NULLS {nulls}")
        parts.append(f"r_rid {'DESC' if reverse else 'ASC'}")
        return ", ".join(parts)

    total: int | None = None
    rows: list[Any] = []
    more = False
    if query.count > 0:
        sql = f"SELECT * FROM ({inner})"
        if keyset:
            sql += f" WHERE {keyset}"
        sql += f" ORDER BY {order(not forward)} LIMIT ?"
        rows = conn.execute(sql, [*inner_args, *keyset_args, query.count + 1]).fetchall()
        more = len(rows) > query.count
        rows = rows[: query.count]
        if not forward:
            rows.reverse()
    if query.total != "none":
        if query.cursor is None and not more and query.count > 0:
            total = len(rows)
        elif query.total == "accurate":
            total = conn.execute(
                f"SELECT count(*) FROM resource r WHERE {where}", where_args
            ).fetchone()[0]
        elif query.cursor is None:
            # estimate: exact while cheap (first page only), nothing beyond the cap
            capped = conn.execute(
                f"SELECT count(*) FROM (SELECT 1 FROM resource r WHERE {where} LIMIT ?)",
                [*where_args, ESTIMATE_CAP + 1],
            ).fetchone()[0]
            total = capped if capped <= ESTIMATE_CAP else None

    def cursor_of(row: Any, d: str) -> str:
        return _encode_cursor(d, list(row[4:]), row[0])

    next_cursor = previous_cursor = None
    if rows:
        if (forward and more) or (not forward and query.cursor is not None):
            next_cursor = cursor_of(rows[-1], "n")
        if (forward and query.cursor is not None) or (not forward and more):
            previous_cursor = cursor_of(rows[0], "p")
    matches = [(r[0], r[1], r[2], r[3]) for r in rows]
    return SearchResult(
        matches=[Hit(r[1], r[2], r[3], "match") for r in matches],
        includes=_resolve_includes(conn, query, matches),
        total=total,
        next_cursor=next_cursor,
        previous_cursor=previous_cursor,
    )


def search_ids(
    conn: sqlite3.Connection,
    resource_type: str,
    params: Sequence[tuple[str, str]],
    *,
    base_url: str | None = None,
) -> list[str]:
    """Ids of the current resources of a type matching the parameters (strict).

    ``base_url``: this server's base, so that absolute references starting with it are
    local (as in the search interaction); without it only relative ones are.
    """
    query = parser.parse(resource_type, params, registry=registry(), base_url=base_url, strict=True)
    args: list[Any] = []
    where = _where(query, args, estimates(conn, query))
    rows = conn.execute(f"SELECT r.id FROM resource r WHERE {where} ORDER BY r.rid", args)
    return [r[0] for r in rows]


def explain(conn: sqlite3.Connection, query: SearchQuery) -> list[str]:
    """SQLite's query plan for the match statement of a query (diagnostics, tests)."""
    args: list[Any] = []
    where = _where(query, args, estimates(conn, query))
    rows = conn.execute(f"EXPLAIN QUERY PLAN SELECT r.rid FROM resource r WHERE {where}", args)
    return [str(r[-1]) for r in rows]


def explain_all(conn: sqlite3.Connection, query: SearchQuery) -> dict[str, list[str]]:
    """Query plans of every statement a search runs: ``page`` (with ``_sort`` keys,
    as for the first page), ``count`` and one per ``_include``/``_revinclude`` (over
    the first page's matches, or made-up ones when there are none)."""
    est = estimates(conn, query)

    def plan(sql: str, args: Sequence[Any]) -> list[str]:
        return [str(r[-1]) for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", list(args))]

    sort_args: list[Any] = []
    sort_exprs = [_sort_expr(k, sort_args) for k in query.sort]
    selected = "".join(f", {e} AS k{i}" for i, e in enumerate(sort_exprs))
    page_args: list[Any] = []
    page_where = _where(query, page_args, est, walk=not query.sort)
    order = ", ".join(
        [f"k{i} {'DESC' if k.descending else 'ASC'} NULLS LAST" for i, k in enumerate(query.sort)]
        + ["r_rid"]
    )
    page = (
        f"SELECT * FROM (SELECT r.rid AS r_rid, r.type, r.id{selected} FROM resource r"
        f" WHERE {page_where}) ORDER BY {order} LIMIT ?"
    )
    count_args: list[Any] = []
    count = f"SELECT count(*) FROM resource r WHERE {_where(query, count_args, est)}"
    out = {
        "page": plan(page, [*sort_args, *page_args, query.count + 1]),
        "count": plan(count, count_args),
    }
    rows = conn.execute(page, [*sort_args, *page_args, query.count + 1]).fetchall()
    frontier = [(r[0], r[1], r[2]) for r in rows] or [
        (1, t, "x") for t in query.resource_types or ("Patient",)
    ]
    for n, inc in enumerate(query.includes):
        statement = _include_sql(inc, frontier, query.base_url)
        if statement is not None:
            out[f"include {n}"] = plan(*statement)
    return out


def reindex(
    conn: sqlite3.Connection, rows: Iterable[tuple[int, str, bytes]], *, fresh: bool = False
) -> int:
    """Rewrite the index rows of the given (rid, type, content) (after a registry change;
    ``fresh``: they have no rows yet)."""
    from fhir_server import jsonio

    n = 0
    for rid, rtype, content in rows:
        write(conn, rid, rtype, jsonio.loads(content), fresh=fresh)
        n += 1
    return n


_ROW_COLUMNS = {
    "idx_string": ("strings", "value, exact, grp"),
    "idx_token": ("tokens", "system, code, text, grp"),
    "idx_ref": ("refs", "type, id, version, url, id_system, id_value, grp"),
    "idx_date": ("dates", "lo, hi, grp"),
    "idx_number": ("numbers", "lo, hi, grp"),
    "idx_quantity": ("quantities", "lo, hi, system, code, unit, grp"),
    "idx_uri": ("uris", "value, grp"),
}
# table -> (IndexEntries field, value columns, placeholders of rowid, rid, param, values)
_INSERTS = {
    table: (field, columns, ", ".join("?" * (3 + columns.count(",") + 1)))
    for table, (field, columns) in _ROW_COLUMNS.items()
}


def register_search_parameter(
    conn: sqlite3.Connection, resource: dict[str, Any], *, batch: int = 2000
) -> tuple[SearchParam, int]:
    """Make a (created or updated) SearchParameter resource searchable: add it to the
    registry in use and index the current resources of its base types for it.

    Only the new parameter's rows are written (the other parameters' rows are left
    alone). Call it inside the unit of work that stores the SearchParameter, with that
    unit's connection, so the parameter and its index rows commit together. Returns the
    parameter and the number of resources indexed. Invalid definitions raise a 400
    ``FhirError`` before anything is changed.
    """
    from fhir_server import jsonio
    from fhir_server.search import model

    reg = registry()
    old = reg.by_url(str(resource.get("url") or ""))
    param = reg.add(resource)
    if not param.indexable:
        return param, 0
    if any(b in ("Resource", "DomainResource") for b in param.base):
        types = sorted(
            model.DOMAIN_RESOURCE_TYPES if "Resource" not in param.base else model.RESOURCE_TYPES
        )
    else:
        types = sorted(set(param.base))
    codes = [param.code, f"{param.code}:of-type"]
    if param.type == "composite":
        codes = [f"{param.code}#{i}" for i in range(len(param.components))]
    tables = sorted(set(_ROW_COLUMNS))
    for t in types:
        old_keys = {_key(t, c) for c in codes}
        if old is not None:
            old_codes = [old.code, f"{old.code}:of-type"] + [
                f"{old.code}#{i}" for i in range(len(old.components))
            ]
            old_keys |= {_hash_key("*", c) for c in old_codes} | {
                _hash_key(t, c) for c in old_codes
            }
        for table in tables:
            conn.execute(
                f"DELETE FROM {table} WHERE param IN ({', '.join('?' * len(old_keys))})"
                f" AND rid IN (SELECT rid FROM resource WHERE type = ?)",
                [*sorted(old_keys), t],
            )
    n = 0
    for t in types:
        cursor = conn.execute(
            "SELECT rid, content FROM resource WHERE type = ? AND content IS NOT NULL", (t,)
        )
        while rows := cursor.fetchmany(batch):
            for rid, content in rows:
                entries = extract_param(jsonio.loads(content), param.code, reg)
                first: dict[str, int] = {}
                for table in tables:
                    if getattr(entries, _ROW_COLUMNS[table][0]):
                        # after the resource's rows that are left
                        lo = rid * SPAN
                        (last,) = conn.execute(
                            f"SELECT max(rowid) FROM {table} WHERE rowid BETWEEN ? AND ?",
                            (lo, lo + SPAN - 1),
                        ).fetchone()
                        first[table] = 0 if last is None else last - lo + 1
                _insert(conn, t, rid, entries, first)
                n += 1
    return param, n
