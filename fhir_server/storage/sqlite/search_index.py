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

Date windows: single-value clauses on one date parameter (``date=ge<day>&date=lt<day
+1>``) are searched as one condition on one index row (:class:`DateWindow`), a bounded
range of the ``(param, lo, hi)`` index, when no resource has several rows of the
parameter; ``idx_date_stats`` keeps, per parameter, that fact and the widest finite
range, which bounds ``lo`` from below. Each clause on its own would be a scan of about
half of the parameter's rows.

Totals (``_total``): counted on the first page only, by reading the driving clause's
index rows and stopping at :data:`~fhir_server.search.query.ESTIMATE_CAP` for an
estimate (a query of one clause on the searched type's parameter: the covering index
alone). Later pages report the first page's total, carried in the cursor.

Order and paging: results are ordered by the ``_sort`` keys (missing values last),
then by ``rid`` -- without ``_sort``, by ``rid`` alone, i.e. in order of creation
(stable while resources are updated). Pages are cut by keyset (``after the last row
of the previous page``), never by OFFSET, so paging stays correct and fast while data
changes; the cursor is an opaque token holding the boundary row's keys and, from the
first page, the total and the clause estimates (so later pages neither count nor
estimate again).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from fhir_server.errors import FhirError, bad_request
from fhir_server.search import fulltext, parser, values
from fhir_server.search.extract import DateRow, IndexEntries, extract, extract_param
from fhir_server.search.query import (
    ESTIMATE_CAP,
    ChainCond,
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
-- most references have neither a URL nor an identifier: these two list only the rows
-- that do (every query on them compares the column, which implies NOT NULL), which
-- spares two B-tree inserts per local reference
CREATE INDEX IF NOT EXISTS idx_ref_url ON idx_ref (param, url, rid) WHERE url IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_ref_identifier ON idx_ref (param, id_value, rid)
    WHERE id_value IS NOT NULL;
CREATE TABLE IF NOT EXISTS idx_date (
    rid INTEGER NOT NULL, param INTEGER NOT NULL, lo INTEGER NOT NULL, hi INTEGER NOT NULL,
    grp INTEGER);
CREATE INDEX IF NOT EXISTS idx_date_lo ON idx_date (param, lo, hi, rid);
CREATE INDEX IF NOT EXISTS idx_date_hi ON idx_date (param, hi, lo, rid);
-- per date parameter key: the widest finite range of its rows (hi - lo, rows open at
-- either end left out) and whether some resource has several rows (multi), only ever
-- raised, by the writes (see _note_dates)
CREATE TABLE IF NOT EXISTS idx_date_stats (
    param INTEGER PRIMARY KEY, span INTEGER NOT NULL, multi INTEGER NOT NULL);
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


_key_cache: dict[str, dict[str, int]] = {}  # resource type -> code -> key
_key_cache_of: tuple[int, int] = (0, -1)  # (id, version) of the registry it was built for


def _type_keys(resource_type: str) -> dict[str, int]:
    """The keys known so far of a type's parameters (see :func:`_key`), for the
    registry in use."""
    global _key_cache_of
    reg = registry()
    if _key_cache_of != (id(reg), reg.version):
        _key_cache.clear()
        _key_cache_of = (id(reg), reg.version)
    keys = _key_cache.get(resource_type)
    if keys is None:
        keys = _key_cache[resource_type] = {}
    return keys


def _key(resource_type: str, code: str) -> int:
    """The ``param`` value of a parameter's rows (``*`` scope for common parameters)."""
    keys = _type_keys(resource_type)
    key = keys.get(code)
    if key is None:
        base = code.partition("#")[0].partition(":")[0]
        p = registry().get(resource_type, base)
        common = p is not None and any(b in ("Resource", "DomainResource") for b in p.base)
        key = keys[code] = _hash_key("*" if common else resource_type, code)
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
# rowid range (no ``(rid, param)`` indexes); 3: ``idx_date_stats``.
LAYOUT = 4
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
    if layout in (2, 3):
        # the rows are right; layout 3 added the date statistics, 4 made two of the
        # reference indexes partial
        try:
            conn.execute("DROP INDEX IF EXISTS idx_ref_url")
            conn.execute("DROP INDEX IF EXISTS idx_ref_identifier")
            if layout == 2:
                conn.execute("DROP TABLE IF EXISTS idx_date_stats")
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            if layout == 2:
                conn.execute(
                    "INSERT INTO idx_date_stats (param, span, multi)"
                    " SELECT param, max(CASE WHEN lo > ? AND hi < ? THEN hi - lo ELSE 0"
                    " END), count(*) > count(DISTINCT rid) FROM idx_date GROUP BY param",
                    (values.MIN_TIME, values.MAX_TIME),
                )
            conn.execute(f"PRAGMA user_version = {LAYOUT}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return 0
    try:
        for table in (*TABLES, "idx_date_stats", "idx_fulltext"):
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


class DateStats:
    """What a writer knows to be in ``idx_date_stats`` already, so that a write whose
    date rows raise no figure skips the statement (most writes): the figures of
    committed units of work (``committed``) and of one unit in progress (its own
    ``pending`` dict, forgotten when it rolls back; units whose commits overlap do not
    see each other's). The table only ever grows, so knowing less than it holds costs a
    redundant statement, never a wrong figure."""

    __slots__ = ("committed",)

    def __init__(self) -> None:
        self.committed: dict[int, tuple[int, int]] = {}

    def raises(self, key: int, span: int, multi: int, pending: dict[int, tuple[int, int]]) -> bool:
        known = pending.get(key) or self.committed.get(key)
        if known is not None and known[0] >= span and known[1] >= multi:
            return False
        old = known or (0, 0)
        pending[key] = (max(old[0], span), max(old[1], multi))
        return True

    def commit(self, pending: dict[int, tuple[int, int]]) -> None:
        committed = self.committed
        for key, (span, multi) in pending.items():
            old = committed.get(key, (0, 0))
            committed[key] = (max(old[0], span), max(old[1], multi))


@dataclasses.dataclass(slots=True)
class Indexed:
    """What a resource adds to the index, computed without the database: its rows per
    table (``(i, param, *values)``, ``i`` numbering them within the resource's rowid
    range), the ``idx_date_stats`` figures they raise and its full-text words
    (``_text``, ``_content``; None for a type without full text)."""

    rows: list[tuple[str, list[tuple[Any, ...]]]]
    figures: list[tuple[int, int, int]]
    words: tuple[str, str] | None


def index(resource_type: str, resource: dict[str, Any]) -> Indexed:
    """The index rows of a resource (see :class:`Indexed`)."""
    entries = extract(resource, registry())
    figures = _date_figures(resource_type, entries.dates) if entries.dates else []
    words = None
    if fulltext.indexed(resource_type):
        words = (fulltext.text_words(resource), fulltext.content_words(resource))
    return Indexed(_table_rows(resource_type, entries), figures, words)


def write(
    conn: sqlite3.Connection,
    rid: int,
    resource_type: str,
    resource: dict[str, Any],
    *,
    fresh: bool = False,
) -> None:
    """Replace the index rows of a resource (``fresh``: it has none yet); every date
    figure is (re)stated."""
    if not fresh:
        delete(conn, rid)
    write_indexed(conn, rid, index(resource_type, resource))


def write_indexed(conn: sqlite3.Connection, rid: int, indexed: Indexed) -> None:
    """Insert the rows of :func:`index` for the resource ``rid`` (which has none)."""
    _insert_rows(conn, rid, indexed.rows)
    _raise_figures(conn, indexed.figures)
    if indexed.words is not None:
        conn.execute(
            "INSERT INTO idx_fulltext (rowid, text, content) VALUES (?, ?, ?)",
            (rid, *indexed.words),
        )


def _table_rows(
    resource_type: str, entries: IndexEntries, first: dict[str, int] | None = None
) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """Each table's rows of ``entries`` as ``(i, param, *values)``, ``i`` counting from
    ``first[table]`` (default 0) within the resource's rowid range."""
    keys = _type_keys(resource_type)
    out = []
    for table, field in _FIELDS:
        values = getattr(entries, field)
        if not values:
            continue
        start = (first or {}).get(table, 0)
        _check_span(start + len(values))
        out.append(
            (
                table,
                [
                    (start + i, keys[c] if c in keys else _key(resource_type, c), *rest)
                    for i, (c, *rest) in enumerate(values)
                ],
            )
        )
    return out


def _insert_rows(
    conn: sqlite3.Connection, rid: int, rows: list[tuple[str, list[tuple[Any, ...]]]]
) -> None:
    base = rid * SPAN
    for table, table_rows in rows:
        conn.executemany(
            _INSERTS[table], [(base + i, rid, param, *rest) for i, param, *rest in table_rows]
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
    _insert_rows(conn, rid, _table_rows(resource_type, entries, first))
    if entries.dates:
        _raise_figures(conn, _date_figures(resource_type, entries.dates))


def _date_figures(resource_type: str, rows: Iterable[DateRow]) -> list[tuple[int, int, int]]:
    """The ``idx_date_stats`` figures of one resource's date rows (all of its rows of
    each parameter): the widest finite range, and whether it has several rows of a
    parameter. Figures are never lowered (deletes and updates leave them), so they
    bound every row there is; see :func:`_window_parts`."""
    seen: dict[str, tuple[int, int]] = {}  # code -> (rows, widest finite span)
    for code, lo, hi, _ in rows:
        n, span = seen.get(code, (0, 0))
        if lo > values.MIN_TIME and hi < values.MAX_TIME:
            span = max(span, hi - lo)
        seen[code] = (n + 1, span)
    return [(_key(resource_type, c), span, int(n > 1)) for c, (n, span) in seen.items()]


_RAISE_FIGURE = (
    " ON CONFLICT (param) DO UPDATE SET span = max(span, excluded.span),"
    " multi = max(multi, excluded.multi)"
    " WHERE excluded.span > span OR excluded.multi > multi"
)


def _raise_figures(conn: sqlite3.Connection, figures: list[tuple[int, int, int]]) -> None:
    if figures:
        conn.executemany(
            "INSERT INTO idx_date_stats (param, span, multi) VALUES (?, ?, ?)" + _RAISE_FIGURE,
            figures,
        )


# ------------------------------------------------------------------ set-based writing
# The rows of many new resources as a few statements over JSON arrays: each statement
# runs as one call into SQLite, which lets another thread run them without waiting for
# the GIL after every row (see the store's deferred first versions). ``?1`` is the rid
# of the batch's first resource; a row's first element numbers its resource within the
# batch. (The figures' statement leaves ``?1`` unused, to take the same parameters.)


_REAL_TABLES = ("idx_number", "idx_quantity")  # lo, hi may be infinite (open ranges)
_INFINITE = {math.inf: "9e999", -math.inf: "-9e999"}  # JSON has no infinity; SQLite
# reads these as +-infinity when it casts them to REAL


def _batch_insert(table: str, columns: str) -> str:
    names = [c.strip() for c in columns.split(",")]
    values = ", ".join(
        f"CAST(value->>{3 + k} AS REAL)"
        if table in _REAL_TABLES and c in ("lo", "hi")
        else f"value->>{3 + k}"
        for k, c in enumerate(names)
    )
    return (
        f"INSERT INTO {table} (rowid, rid, param, {columns})"
        f" SELECT (?1 + (value->>0)) * {SPAN} + (value->>1), ?1 + (value->>0), value->>2,"
        f" {values} FROM json_each(?2)"
    )


BATCH_FULLTEXT = (
    "INSERT INTO idx_fulltext (rowid, text, content)"
    " SELECT ?1 + (value->>0), value->>1, value->>2 FROM json_each(?2)"
)
BATCH_FIGURES = (
    "INSERT INTO idx_date_stats (param, span, multi)"
    " SELECT value->>0, value->>1, value->>2 FROM json_each(?2) WHERE true" + _RAISE_FIGURE
)


class Batch:
    """The index rows of new resources numbered 0, 1, ... within a batch whose rids are
    only known when it is written (:meth:`statements`)."""

    __slots__ = ("figures", "fulltext", "rows")

    def __init__(self) -> None:
        self.rows: dict[str, list[tuple[Any, ...]]] = {}
        self.fulltext: list[tuple[int, str, str]] = []
        self.figures: list[tuple[int, int, int]] = []

    def add(self, n: int, indexed: Indexed) -> None:
        for table, table_rows in indexed.rows:
            if table in _REAL_TABLES:  # (i, param, lo, hi, ...)
                inf = _INFINITE
                table_rows = [
                    (i, p, inf.get(lo, lo), inf.get(hi, hi), *rest)
                    for i, p, lo, hi, *rest in table_rows
                ]
            self.rows.setdefault(table, []).extend((n, *row) for row in table_rows)
        if indexed.words is not None:
            self.fulltext.append((n, *indexed.words))
        self.figures.extend(indexed.figures)

    def statements(self) -> list[tuple[str, tuple[bytes]]]:
        """(SQL, parameters without the first rid) of each statement."""
        dumps = orjson.dumps
        out = [(_BATCH_INSERTS[t], (dumps(rows),)) for t, rows in self.rows.items()]
        if self.fulltext:
            out.append((BATCH_FULLTEXT, (dumps(self.fulltext),)))
        if self.figures:
            out.append((BATCH_FIGURES, (dumps(self.figures),)))
        return out


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
        return "idx_date", f"{sql} AND " + _range_sql(
            cond.prefix, f"{a}.lo", f"{a}.hi", cond.lo, cond.hi, args
        )
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
            return "idx_uri", f"{sql} AND " + _in(
                f"{a}.value", values.uri_prefixes(cond.value), args
            )
        args.append(cond.value)
        return "idx_uri", f"{sql} AND {a}.value = ?"
    raise bad_request(f"unsupported condition {type(cond).__name__}")


def _range_sql(prefix: str, lo: str, hi: str, plo: int, phi: int, args: list[Any]) -> str:
    """Date prefixes over the target range [lo, hi] (SQL expressions) and the search
    range [plo, phi]."""
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


def _rid_set(cond: _Cond, args: list[Any], base: str | None) -> tuple[str, bool]:
    """A ``SELECT rid ...`` for the resources a condition matches, and whether the
    condition is negated (the resource must NOT be in that set)."""
    if isinstance(cond, DateWindow):
        scans = _window_parts(cond, "x", args)
        return " UNION ALL ".join(f"SELECT x.rid FROM idx_date x WHERE {w}" for w in scans), False
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
    conds: Sequence[_Cond], alias: str, args: list[Any], base: str | None
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


# ----------------------------------------------------------------- date windows


# prefixes whose single-value clauses on one date parameter are combined into a window
_WINDOW_PREFIXES = frozenset(("eq", "ge", "gt", "le", "lt", "sa", "eb"))


@dataclasses.dataclass(frozen=True, slots=True)
class DateWindow:
    """Several single-value date clauses on one parameter (``date=ge2024-01-01&
    date=lt2024-01-02``), searched as ONE condition on one index row: all of ``conds``
    hold for the same ``[lo, hi]`` row. That is the same as each clause holding for
    some row only when no resource has two rows of the parameter, which
    ``idx_date_stats`` tells (:func:`plan` combines clauses only then). ``span``: the
    widest finite range among the parameter's rows, which bounds ``lo`` from below
    (:func:`_window_parts`)."""

    param: Param
    conds: tuple[DateCond, ...]
    span: int


_Cond = Condition | DateWindow
_Clause = tuple[_Cond, ...]


def _window_filter(w: DateWindow, lo: str, hi: str, args: list[Any]) -> str:
    """SQL: a row ``[lo, hi]`` (SQL expressions) matches every condition of ``w``."""
    return " AND ".join(_range_sql(c.prefix, lo, hi, c.lo, c.hi, args) for c in w.conds)


def _window_parts(w: DateWindow, a: str, args: list[Any]) -> list[str]:
    """The WHERE of each index range scan that together find the rows matching ``w``
    (no row in two of them).

    The conditions bound ``lo`` from above (``eq le lt``) and from below (``eq sa``),
    and ``hi`` from below (``ge gt``). A row of finite range has ``lo >= hi - span``,
    so a lower bound ``h`` on ``hi`` becomes ``lo >= h - span``: one bounded scan of
    the ``(param, lo, hi)`` index instead of everything before the window's end and
    everything after its start. Rows open at the end (``hi`` = MAX_TIME, e.g. a Period
    without end) below that bound and rows open at the start (``lo`` = MIN_TIME) are
    two more short scans, of the ``(param, hi, lo)`` and ``(param, lo, hi)`` indexes.
    The conditions themselves are written on ``+lo``/``+hi`` (checked in the covering
    index, not usable to pick it) so that SQLite scans by the bounds given here.
    """
    lo_min: list[int] = []
    lo_max: list[int] = []
    hi_min: list[int] = []
    for c in w.conds:
        if c.prefix == "eq":  # plo <= lo and hi <= phi (and lo <= phi, see _range_sql)
            lo_min.append(c.lo)
            lo_max.append(c.hi)
        elif c.prefix == "sa":  # lo > phi
            lo_min.append(c.hi + 1)
        elif c.prefix == "le":  # lo <= phi
            lo_max.append(c.hi)
        elif c.prefix == "lt":  # lo < plo
            lo_max.append(c.lo - 1)
        elif c.prefix == "ge":  # hi >= plo
            hi_min.append(c.lo)
        elif c.prefix == "gt":  # hi > phi
            hi_min.append(c.hi + 1)
    floor = max(lo_min) if lo_min else None
    ceiling = min(lo_max) if lo_max else None
    keys = _keys(w.param)
    lo, hi = f"{a}.lo", f"{a}.hi"
    if hi_min and (floor is None or max(hi_min) - w.span > floor):
        bound = max(hi_min) - w.span
        if bound > values.MIN_TIME:
            parts = []
            sql = _in(f"{a}.param", keys, args)
            args.append(bound)
            sql += f" AND {lo} >= ?"
            if ceiling is not None:
                args.append(ceiling)
                sql += f" AND {lo} <= ?"
            parts.append(sql + " AND " + _window_filter(w, f"+{lo}", f"+{hi}", args))
            # open at the end, starting before the bound
            sql = _in(f"{a}.param", keys, args)
            args.extend((values.MAX_TIME, values.MIN_TIME, bound))
            sql += f" AND {hi} = ? AND {lo} > ? AND {lo} < ?"
            parts.append(sql + " AND " + _window_filter(w, f"+{lo}", f"+{hi}", args))
            # open at the start
            sql = _in(f"{a}.param", keys, args)
            args.append(values.MIN_TIME)
            sql += f" AND {lo} = ?"
            parts.append(sql + " AND " + _window_filter(w, f"+{lo}", f"+{hi}", args))
            return parts
    if floor is None and ceiling is None:
        # only lower bounds on hi, and no useful span: let SQLite pick the index
        sql = _in(f"{a}.param", keys, args)
        return [sql + " AND " + _window_filter(w, lo, hi, args)]
    sql = _in(f"{a}.param", keys, args)
    if floor is not None:
        args.append(floor)
        sql += f" AND {lo} >= ?"
    if ceiling is not None:
        args.append(ceiling)
        sql += f" AND {lo} <= ?"
    return [sql + " AND " + _window_filter(w, f"+{lo}", f"+{hi}", args)]


def _combine_dates(conn: sqlite3.Connection, query: SearchQuery) -> tuple[_Clause, ...]:
    """The query's clauses, with the single-value date clauses on one parameter made
    one :class:`DateWindow` (in place of the first of them) where that is exact."""
    found: dict[Param, list[tuple[int, DateCond]]] = {}
    for i, clause in enumerate(query.clauses):
        if len(clause) == 1:
            cond = clause[0]
            if isinstance(cond, DateCond) and cond.prefix in _WINDOW_PREFIXES:
                found.setdefault(cond.param, []).append((i, cond))
    groups = {p: group for p, group in found.items() if len(group) > 1}
    clauses: list[_Clause] = list(query.clauses)
    if not groups:
        return tuple(clauses)
    keys = sorted({k for p in groups for k in _keys(p)})
    args: list[Any] = []
    stats: dict[int, tuple[int, int]] = {
        row[0]: (row[1], row[2])
        for row in conn.execute(
            f"SELECT param, span, multi FROM idx_date_stats WHERE {_in('param', keys, args)}",
            args,
        )
    }
    dropped: set[int] = set()
    for p, group in groups.items():
        figures = [stats[k] for k in _keys(p) if k in stats]
        if any(multi for _, multi in figures):
            continue  # some resource has several values: each clause on its own
        span = max((s for s, _ in figures), default=0)
        clauses[group[0][0]] = (DateWindow(p, tuple(c for _, c in group), span),)
        dropped.update(i for i, _ in group[1:])
    return tuple(c for i, c in enumerate(clauses) if i not in dropped)


# ----------------------------------------------------------------- planning


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """How a query is run: its clauses as searched (date windows combined) and, for each
    single-condition clause (by position in ``clauses``), how many index rows match it,
    counted up to :data:`BROAD`."""

    clauses: tuple[_Clause, ...]
    est: dict[int, int]


def _probeable(clause: _Clause) -> bool:
    """A clause of one positive value condition on one index table."""
    if len(clause) != 1:
        return False
    cond = clause[0]
    if isinstance(cond, DateWindow):
        return True
    return isinstance(cond, _SIMPLE) and not (isinstance(cond, TokenCond) and cond.negate)


def plan(conn: sqlite3.Connection, query: SearchQuery, est: dict[int, int] | None = None) -> Plan:
    """Combine date windows and estimate the single-condition clauses (each a covering
    index range, counted up to :data:`BROAD`: cheap even when broad). ``est``: the
    estimates of an earlier page of the same search, used if they fit the clauses."""
    clauses = _combine_dates(conn, query) if len(query.clauses) > 1 else query.clauses
    if est is not None and sorted(est) == [
        i for i, clause in enumerate(clauses) if _probeable(clause)
    ]:
        return Plan(clauses, est)
    est = {}
    for i, clause in enumerate(clauses):
        if _probeable(clause):
            args: list[Any] = []
            sub, _ = _rid_set(clause[0], args, query.base_url)
            row = conn.execute(f"SELECT count(*) FROM ({sub} LIMIT ?)", [*args, BROAD]).fetchone()
            est[i] = int(row[0])
    return Plan(clauses, est)


def estimates(conn: sqlite3.Connection, query: SearchQuery) -> dict[int, int]:
    """:attr:`Plan.est` of the query (by position among the planned clauses, which are
    the query's unless date clauses were combined)."""
    return plan(conn, query).est


def _driver(p: Plan) -> int | None:
    """The clause to drive from: the most selective single-condition one."""
    return min(p.est, key=lambda i: (p.est[i], i)) if p.est else None


def _probes(query: SearchQuery, p: Plan, walk: bool) -> set[int]:
    """The clauses to check per candidate (EXISTS on the resource's rowid range) rather
    than as a materialised ``rid IN`` set.

    SQLite materialises every ``rid IN (...)`` set, so a broad clause next to a
    selective one would cost as much as the broad one alone whichever it drives from.
    Kept as sets: the most selective single-condition clause (by :func:`estimates`)
    and every other kind of clause (chains, ``_has``, composites, ORs). When every
    clause is broad and ``walk`` (a page without ``_sort``): all are probes and the
    search walks the type's resources in rid order, stopping at the page's end.
    """
    driver = _driver(p)
    if driver is None:
        return set()
    others = any(
        _or_sql(clause, "r", [], query.base_url)[1]
        for i, clause in enumerate(p.clauses)
        if i not in p.est
    )
    if p.est[driver] >= BROAD and (walk or others):
        return set(p.est)
    return set(p.est) - {driver}


def _exists(cond: _Cond, args: list[Any], base: str | None) -> str:
    if isinstance(cond, DateWindow):
        table = "idx_date"
        where = _in("x.param", _keys(cond.param), args)
        where += " AND " + _window_filter(cond, "x.lo", "x.hi", args)
    else:
        table, where = _row_filter(cond, "x", args, base)
    return f"EXISTS (SELECT 1 FROM {table} x NOT INDEXED WHERE {owned('x', 'r.rid')} AND {where})"


def _where(
    query: SearchQuery,
    args: list[Any],
    p: Plan | None = None,
    walk: bool = False,
    driven_by: int | None = None,
) -> str:
    """The WHERE of the match statement over ``resource r``.

    When a clause is a set of rids from an index, the type test is written ``+r.type``
    so that SQLite drives the search from that set rather than from the type's rows.
    ``p``: the plan (:func:`plan`: combined clauses and estimates, to pick the driving
    clause); without it the query's clauses, each a set. ``driven_by``: the statement
    reads the matches of this clause itself (joining ``resource r`` to them), so it is
    left out here and every other single-condition clause is a probe.
    """
    p = p or Plan(query.clauses, {})
    parts = ["r.content IS NOT NULL"]
    kinds: set[str] = set()
    probes = set(p.est) - {driven_by} if driven_by is not None else _probes(query, p, walk)
    for i, clause in enumerate(p.clauses):
        if i == driven_by:
            continue
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


def _index_only(query: SearchQuery, cond: _Cond) -> bool:
    """Whether every index row of the condition's parameter belongs to a current
    resource of a searched type: the rows of deleted resources are removed, and the
    parameter's keys are per type (not ``*``) for types that are searched."""
    if not isinstance(cond, (*_SIMPLE, DateWindow)):
        return False
    param = cond.param
    if not param.resource_types:
        return not query.resource_types
    if query.resource_types and not set(param.resource_types) <= set(query.resource_types):
        return False
    return all(_key(t, param.code) == _hash_key(t, param.code) for t in param.resource_types)


def _count_sql(query: SearchQuery, p: Plan, args: list[Any], cap: int | None) -> str:
    """The statement counting the matches (all of them, or up to ``cap + 1``).

    With a single-condition clause to drive from, the count reads that clause's index
    rows and stops at the cap: no ``rid IN`` set of every match is built first. A query
    of that one clause on a parameter of the searched type is counted on the covering
    index alone (its rows are those of current resources of the type); otherwise each
    row's resource is looked up by rowid and the other clauses probed.
    """
    driver = _driver(p)
    limit = ""
    if driver is None:
        where = _where(query, args, p)
        if cap is not None:
            args.append(cap + 1)
            return f"SELECT count(*) FROM (SELECT 1 FROM resource r WHERE {where} LIMIT ?)"
        return f"SELECT count(*) FROM resource r WHERE {where}"
    cond = p.clauses[driver][0]
    sub, _ = _rid_set(cond, args, query.base_url)
    if len(p.clauses) == 1 and _index_only(query, cond):
        inner = f"SELECT DISTINCT hit.rid FROM ({sub}) hit"
    else:
        where = _where(query, args, p, driven_by=driver)
        inner = (
            f"SELECT DISTINCT hit.rid FROM ({sub}) hit"
            f" CROSS JOIN resource r ON r.rid = hit.rid WHERE {where}"
        )
    if cap is not None:
        args.append(cap + 1)
        limit = " LIMIT ?"
    return f"SELECT count(*) FROM ({inner}{limit})"


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


@dataclasses.dataclass(frozen=True, slots=True)
class _Cursor:
    """What a paging token holds: the direction, the boundary row's sort keys and rid;
    and from the first page, the total it reported (later pages report it again) and
    the plan's estimates (:attr:`Plan.est`; later pages drive the search the same way
    without counting index rows again)."""

    direction: str
    keys: list[Any]
    rid: int
    total: int | None = None
    est: dict[int, int] | None = None


def _encode_cursor(c: _Cursor) -> str:
    items: list[Any] = [c.direction, list(c.keys), c.rid, c.total]
    if c.est is not None:
        items.append(sorted(c.est.items()))
    raw = json.dumps(items, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, nkeys: int) -> _Cursor:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        items = json.loads(raw)
        if not isinstance(items, list) or not 3 <= len(items) <= 5:
            raise ValueError
        direction, keys, rid = items[:3]
        total = items[3] if len(items) > 3 else None
        pairs = items[4] if len(items) > 4 else None
        est = None if pairs is None else {int(i): int(n) for i, n in pairs}
    except (ValueError, TypeError):
        raise bad_request("Invalid paging cursor", "_cursor") from None
    if (
        direction not in ("n", "p")
        or not isinstance(keys, list)
        or len(keys) != nkeys
        or not _is_int(rid)
        or not (total is None or (_is_int(total) and total >= 0))
        or not (pairs is None or all(_is_int(i) and _is_int(n) for i, n in pairs))
        or not all(k is None or isinstance(k, str | int | float) for k in keys)
    ):
        raise bad_request("Invalid paging cursor", "_cursor")
    return _Cursor(direction, keys, rid, total, est)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
    """Run a parsed search: one page of matches (and includes), the total, cursors.

    Its statements read one snapshot (a read transaction, unless ``conn`` is in one).

    The total is counted on the first page only (``_total=estimate``: up to
    :data:`~fhir_server.search.query.ESTIMATE_CAP`) and carried in the paging cursors,
    so later pages report the count as of the first page -- Bundle.total is the
    number of matches "when the search was executed" -- and never count again.
    """
    if conn.in_transaction:
        return _search(conn, query)
    conn.execute("BEGIN")
    try:
        return _search(conn, query)
    finally:
        conn.execute("COMMIT")


def _search(conn: sqlite3.Connection, query: SearchQuery) -> SearchResult:
    nkeys = len(query.sort)
    came = None if query.cursor is None else _decode_cursor(query.cursor, nkeys)
    p = plan(conn, query, came.est if came else None)
    sort_args: list[Any] = []
    sort_exprs = [_sort_expr(k, sort_args) for k in query.sort]
    page_args: list[Any] = []
    page_where = _where(query, page_args, p, walk=not query.sort)
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
    if came is not None:
        direction = came.direction
        keyset, keyset_args = _keyset(descs, came.keys, came.rid, direction == "n")
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

    def count(cap: int | None) -> int | None:
        """The number of matches; None if over ``cap``."""
        args: list[Any] = []
        (n,) = conn.execute(_count_sql(query, p, args, cap), args).fetchone()
        return None if cap is not None and n > cap else int(n)

    if query.total != "none":
        if came is not None:
            total = came.total  # as of the first page
            if total is None and query.total == "accurate":  # a cursor without one
                total = count(None)
        elif not more and query.count > 0:
            total = len(rows)
        else:
            # estimate: exact up to the cap, nothing beyond it
            total = count(ESTIMATE_CAP if query.total == "estimate" else None)

    def cursor_of(row: Any, d: str) -> str:
        return _encode_cursor(_Cursor(d, list(row[4:]), row[0], total, p.est or None))

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
    where = _where(query, args, plan(conn, query))
    rows = conn.execute(f"SELECT r.id FROM resource r WHERE {where} ORDER BY r.rid", args)
    return [r[0] for r in rows]


def explain(conn: sqlite3.Connection, query: SearchQuery) -> list[str]:
    """SQLite's query plan for the match statement of a query (diagnostics, tests)."""
    args: list[Any] = []
    where = _where(query, args, plan(conn, query))
    rows = conn.execute(f"EXPLAIN QUERY PLAN SELECT r.rid FROM resource r WHERE {where}", args)
    return [str(r[-1]) for r in rows]


def explain_all(conn: sqlite3.Connection, query: SearchQuery) -> dict[str, list[str]]:
    """Query plans of every statement a search runs: ``page`` (with ``_sort`` keys,
    as for the first page), ``count`` (as the query's ``_total`` counts on the first
    page) and one per ``_include``/``_revinclude`` (over the first page's matches, or
    made-up ones when there are none)."""
    p = plan(conn, query)

    def explained(sql: str, args: Sequence[Any]) -> list[str]:
        return [str(r[-1]) for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", list(args))]

    sort_args: list[Any] = []
    sort_exprs = [_sort_expr(k, sort_args) for k in query.sort]
    selected = "".join(f", {e} AS k{i}" for i, e in enumerate(sort_exprs))
    page_args: list[Any] = []
    page_where = _where(query, page_args, p, walk=not query.sort)
    order = ", ".join(
        [f"k{i} {'DESC' if k.descending else 'ASC'} NULLS LAST" for i, k in enumerate(query.sort)]
        + ["r_rid"]
    )
    page = (
        f"SELECT * FROM (SELECT r.rid AS r_rid, r.type, r.id{selected} FROM resource r"
        f" WHERE {page_where}) ORDER BY {order} LIMIT ?"
    )
    count_args: list[Any] = []
    cap = ESTIMATE_CAP if query.total == "estimate" else None
    count = _count_sql(query, p, count_args, cap)
    out = {
        "page": explained(page, [*sort_args, *page_args, query.count + 1]),
        "count": explained(count, count_args),
    }
    rows = conn.execute(page, [*sort_args, *page_args, query.count + 1]).fetchall()
    frontier = [(r[0], r[1], r[2]) for r in rows] or [
        (1, t, "x") for t in query.resource_types or ("Patient",)
    ]
    for n, inc in enumerate(query.includes):
        statement = _include_sql(inc, frontier, query.base_url)
        if statement is not None:
            out[f"include {n}"] = explained(*statement)
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
# table -> INSERT of one row: rowid, rid, param, values
_INSERTS = {
    table: f"INSERT INTO {table} (rowid, rid, param, {columns})"
    f" VALUES ({', '.join('?' * (3 + columns.count(',') + 1))})"
    for table, (_, columns) in _ROW_COLUMNS.items()
}
_FIELDS = [(table, field) for table, (field, _) in _ROW_COLUMNS.items()]
_BATCH_INSERTS = {
    table: _batch_insert(table, columns) for table, (_, columns) in _ROW_COLUMNS.items()
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
