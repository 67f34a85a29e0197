"""The search intermediate representation (IR): what to find, independent of any store.

:mod:`fhir_server.search.parser` turns query pairs into a :class:`SearchQuery`; each
store translates it (the SQLite store into one parameterised SQL statement). A query
is a conjunction of :data:`Clause` s, each a disjunction of typed conditions:
``?code=a,b&date=ge2020`` is ``[[Token(code=a), Token(code=b)], [Date(ge 2020)]]``.

Index entry codes used by conditions are the parameter code (``code``), ``code#i``
for component ``i`` of a composite and ``code:of-type`` for identifier type tokens --
the same codes :mod:`fhir_server.search.extract` writes.

Dates are closed ranges of integer microseconds since the epoch (UTC); numbers and
quantities are floats (``lo``/``hi`` the range implied by the search value's
precision).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fhir_server.errors import Issue

Prefix = Literal["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"]
PREFIXES: frozenset[str] = frozenset(("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"))
TotalMode = Literal["none", "estimate", "accurate"]
# `_total=estimate` (the default): stores count exactly up to this many matches, on the
# first page only, and give no total beyond it.
ESTIMATE_CAP = 10_000
SummaryMode = Literal["true", "false", "text", "data", "count"]


@dataclass(frozen=True, slots=True)
class Param:
    """A parameter as a condition refers to it: its code and the types it applies to."""

    code: str  # index code (``code``, ``code#0``, ``code:of-type``)
    type: str  # number | date | string | token | reference | quantity | uri | composite
    resource_types: tuple[str, ...]  # the resource types searched with it


@dataclass(frozen=True, slots=True)
class StringCond:
    param: Param
    value: str  # normalised for prefix/contains, as given for exact
    mode: Literal["prefix", "exact", "contains"] = "prefix"


@dataclass(frozen=True, slots=True)
class TokenCond:
    """``system|code``; ``system`` None: any system, "": no system; ``code`` None: any."""

    param: Param
    system: str | None
    code: str | None
    text: str | None = None  # ``:text``: normalised prefix of the text/display
    negate: bool = False  # ``:not`` (and ``:not-in``)
    # ``:in`` ``:not-in`` ``:above`` ``:below``: any of these (system, code) pairs
    # (``system`` and ``code`` are then None), expanded through the local terminology
    codes: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class IdCond:
    """``_id``: the logical id of the resource."""

    ids: tuple[str, ...]
    negate: bool = False


@dataclass(frozen=True, slots=True)
class ReferenceCond:
    """A reference: to ``type/id`` (local), to an absolute ``url``, or by identifier.

    Local references also match absolute references that start with the server's
    base (``SearchQuery.base_url``).
    """

    param: Param
    target_type: str | None = None
    target_id: str | None = None
    version: str | None = None
    url: str | None = None
    identifier_system: str | None = None
    identifier_value: str | None = None
    by_identifier: bool = False


@dataclass(frozen=True, slots=True)
class DateCond:
    param: Param
    prefix: Prefix
    lo: int
    hi: int


@dataclass(frozen=True, slots=True)
class NumberCond:
    """A number (``param.type`` number) or quantity (with optional system/code)."""

    param: Param
    prefix: Prefix
    value: float
    lo: float  # the range implied by the value's precision [lo, hi)
    hi: float
    system: str | None = None  # quantity only; None: any
    code: str | None = None  # quantity only (matches code or, without system, unit)


@dataclass(frozen=True, slots=True)
class UriCond:
    param: Param
    value: str
    mode: Literal["eq", "above", "below"] = "eq"


@dataclass(frozen=True, slots=True)
class TextCond:
    """``_text`` (``field`` "text": the narrative) or ``_content`` ("content": every
    string value): each of ``words`` starts some word of the field (see
    :mod:`fhir_server.search.fulltext`)."""

    field: Literal["text", "content"]
    words: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MissingCond:
    param: Param
    missing: bool


@dataclass(frozen=True, slots=True)
class CompositeCond:
    """All components match within the same composite value."""

    param: Param
    components: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class ChainCond:
    """``ref.param=value``: a reference (``param``) to a resource of ``target_types``
    matching ``inner`` (itself possibly a chain)."""

    param: Param
    target_types: tuple[str, ...]
    inner: tuple[Condition, ...]  # OR-ed conditions on the target


@dataclass(frozen=True, slots=True)
class HasCond:
    """``_has:Type:ref:param=value``: some ``source_type`` resource whose ``ref`` points
    at the resource matches ``inner``."""

    source_type: str
    ref: Param
    inner: tuple[Condition, ...]  # OR-ed conditions on the source


Condition = (
    StringCond
    | TokenCond
    | IdCond
    | ReferenceCond
    | DateCond
    | NumberCond
    | UriCond
    | TextCond
    | MissingCond
    | CompositeCond
    | ChainCond
    | HasCond
)
Clause = tuple[Condition, ...]  # OR


@dataclass(frozen=True, slots=True)
class SortKey:
    param: Param  # ``_id`` and ``_lastUpdated`` sort on the resource itself
    descending: bool = False


@dataclass(frozen=True, slots=True)
class Include:
    """``_include``/``_revinclude``: ``source_type:param[:target_type]``; param ``*``
    means every reference parameter of the source type."""

    source_type: str
    param: str
    target_type: str | None = None
    reverse: bool = False
    iterate: bool = False
    params: tuple[Param, ...] = ()  # the reference parameters it stands for


@dataclass(frozen=True, slots=True)
class SearchQuery:
    resource_types: tuple[str, ...]  # empty: every type
    clauses: tuple[Clause, ...] = ()  # AND
    sort: tuple[SortKey, ...] = ()
    count: int = 20
    cursor: str | None = None
    total: TotalMode = "accurate"
    includes: tuple[Include, ...] = ()
    summary: SummaryMode | None = None
    elements: tuple[str, ...] = ()
    # parameters kept for links (in order, without the cursor) and those ignored
    params: tuple[tuple[str, str], ...] = ()
    ignored: tuple[str, ...] = ()
    warnings: tuple[Issue, ...] = ()  # why the ignored parameters were ignored
    compartment: tuple[str, str] | None = None  # (type, id)
    # this server's base URL: absolute references starting with it are local
    base_url: str | None = None


@dataclass(frozen=True, slots=True)
class Hit:
    resource_type: str
    id: str
    content: bytes
    mode: Literal["match", "include"] = "match"


@dataclass(frozen=True, slots=True)
class SearchResult:
    """One page of results, as a store returns it."""

    matches: list[Hit] = field(default_factory=list)
    includes: list[Hit] = field(default_factory=list)
    total: int | None = None
    next_cursor: str | None = None
    previous_cursor: str | None = None
