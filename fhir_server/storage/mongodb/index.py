"""Layout of the search index values kept in each current-version document.

The entries come from :func:`fhir_server.search.extract.extract` (the same entries the
SQLite store writes) and are stored as arrays of small subdocuments, one array per
parameter type, each entry tagged with its parameter key ``p``:

==========  ===========  ==========================================================
array       type         entry fields
==========  ===========  ==========================================================
``x_str``   string       ``v`` normalised value, ``x`` exact value
``x_tok``   token        ``s`` system, ``c`` code, ``t`` normalised text
``x_ref``   reference    ``t`` type, ``i`` id, ``ver`` version, ``u`` absolute url,
                         ``is``/``iv`` identifier system/value
``x_date``  date         ``lo``, ``hi`` (integer microseconds, UTC, closed range)
``x_num``   number       ``lo``, ``hi``
``x_qty``   quantity     ``lo``, ``hi``, ``s`` system, ``c`` code, ``u`` unit
``x_uri``   uri          ``v``
``x_cmp``   composite    ``g`` group number and ``e``: the component entries of one
                         composite value (each shaped as above, with its ``p``)
==========  ===========  ==========================================================

Full text (``_text``, ``_content``, see :mod:`fhir_server.search.fulltext`) is kept in
two strings, ``x_text`` (the narrative's words) and ``x_content`` (the words of every
string value), each the distinct normalised words separated by single spaces, matched
with a regular expression anchored at a word start (no ``$text`` index needed).

Absent optional values are stored as explicit ``None`` so that ``{"s": None}`` means
"no system". ``p`` is ``"<scope>|<code>"``: the resource type (or ``*`` for the
parameters defined on Resource/DomainResource, shared by every type) and the index
code (``code``, ``code#i`` for composite components, ``code:of-type``). Keys never
come from a request: they are built from the parameter registry.

Each array has multikey compound indexes leading with ``p`` (see :data:`INDEXES`), so
an ``$elemMatch`` on ``p`` plus a value is an index range scan.
"""

from __future__ import annotations

from typing import Any

from fhir_server.search import fulltext, model
from fhir_server.search.extract import IndexEntries, extract, extract_param
from fhir_server.search.query import Param
from fhir_server.search.registry import Registry, SearchParam, default_registry

Document = dict[str, Any]

FIELD_OF_TYPE: dict[str, str] = {
    "string": "x_str",
    "token": "x_tok",
    "reference": "x_ref",
    "date": "x_date",
    "number": "x_num",
    "quantity": "x_qty",
    "uri": "x_uri",
}
COMPOSITE_FIELD = "x_cmp"
INDEX_FIELDS: tuple[str, ...] = (*FIELD_OF_TYPE.values(), COMPOSITE_FIELD)
# full-text fields by TextCond.field
TEXT_FIELDS: dict[str, str] = {"text": "x_text", "content": "x_content"}

# (name, [(field, direction)...]) of the current-version collection; all idempotent.
INDEXES: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = (
    ("type_live_seq", (("t", 1), ("live", 1), ("seq", 1))),
    ("type_updated", (("t", 1), ("lu", 1))),
    ("str_value", (("x_str.p", 1), ("x_str.v", 1))),
    ("tok_code", (("x_tok.p", 1), ("x_tok.c", 1), ("x_tok.s", 1))),
    ("tok_text", (("x_tok.p", 1), ("x_tok.t", 1))),
    ("ref_target", (("x_ref.p", 1), ("x_ref.i", 1), ("x_ref.t", 1))),
    ("ref_url", (("x_ref.p", 1), ("x_ref.u", 1))),
    ("ref_identifier", (("x_ref.p", 1), ("x_ref.iv", 1))),
    ("ref_reverse", (("x_ref.i", 1), ("x_ref.t", 1))),
    ("date_lo", (("x_date.p", 1), ("x_date.lo", 1), ("x_date.hi", 1))),
    ("date_hi", (("x_date.p", 1), ("x_date.hi", 1))),
    ("num_lo", (("x_num.p", 1), ("x_num.lo", 1), ("x_num.hi", 1))),
    ("qty_lo", (("x_qty.p", 1), ("x_qty.lo", 1), ("x_qty.hi", 1))),
    ("uri_value", (("x_uri.p", 1), ("x_uri.v", 1))),
    ("cmp_param", (("x_cmp.e.p", 1),)),
)


def registry() -> Registry:
    return default_registry()


_key_cache: dict[tuple[str, str], str] = {}
_key_cache_of: tuple[int, int] = (0, -1)


def key(resource_type: str, code: str) -> str:
    """The ``p`` of a parameter's entries (``*`` scope for common parameters)."""
    global _key_cache_of
    reg = registry()
    if _key_cache_of != (id(reg), reg.version):
        _key_cache.clear()
        _key_cache_of = (id(reg), reg.version)
    k = _key_cache.get((resource_type, code))
    if k is None:
        base = code.partition("#")[0].partition(":")[0]
        p = reg.get(resource_type, base)
        common = p is not None and any(b in ("Resource", "DomainResource") for b in p.base)
        k = f"{'*' if common else resource_type}|{code}"
        _key_cache[(resource_type, code)] = k
    return k


def keys(param: Param) -> list[str]:
    """The keys a condition on ``param`` looks for (one per resource type searched)."""
    if not param.resource_types:
        return [f"*|{param.code}"]
    return sorted({key(t, param.code) for t in param.resource_types})


def index_fields(resource_type: str, resource: dict[str, Any]) -> Document:
    """The index arrays of a resource (every field of :data:`INDEX_FIELDS`) and its
    full-text strings (:data:`TEXT_FIELDS`; none for the types without full text)."""
    out = _fields(resource_type, extract(resource, registry()))
    indexed = fulltext.indexed(resource_type)
    out[TEXT_FIELDS["text"]] = fulltext.text_words(resource) if indexed else ""
    out[TEXT_FIELDS["content"]] = fulltext.content_words(resource) if indexed else ""
    return out


def _fields(resource_type: str, e: IndexEntries, first_group: int = 1) -> Document:
    """Index arrays of extracted entries; composite groups numbered from ``first_group``."""
    rt = resource_type
    out: Document = {f: [] for f in INDEX_FIELDS}
    groups: dict[int, list[Document]] = {}

    def put(field: str, grp: int | None, entry: Document) -> None:
        if grp is None:
            out[field].append(entry)
        else:
            groups.setdefault(grp + first_group - 1, []).append(entry)

    for c, v, x, g in sorted(e.strings, key=repr):
        put("x_str", g, {"p": key(rt, c), "v": v, "x": x})
    for c, s, code, t, g in sorted(e.tokens, key=repr):
        put("x_tok", g, {"p": key(rt, c), "s": s, "c": code, "t": t})
    for c, t, i, ver, u, isys, ival, g in sorted(e.refs, key=repr):
        put(
            "x_ref",
            g,
            {"p": key(rt, c), "t": t, "i": i, "ver": ver, "u": u, "is": isys, "iv": ival},
        )
    for c, lo, hi, g in sorted(e.dates, key=repr):
        put("x_date", g, {"p": key(rt, c), "lo": lo, "hi": hi})
    for c, nlo, nhi, g in sorted(e.numbers, key=repr):
        put("x_num", g, {"p": key(rt, c), "lo": nlo, "hi": nhi})
    for c, qlo, qhi, s, code, unit, g in sorted(e.quantities, key=repr):
        put("x_qty", g, {"p": key(rt, c), "lo": qlo, "hi": qhi, "s": s, "c": code, "u": unit})
    for c, v, g in sorted(e.uris, key=repr):
        put("x_uri", g, {"p": key(rt, c), "v": v})
    out[COMPOSITE_FIELD] = [{"g": g, "e": entries} for g, entries in sorted(groups.items())]
    return out


def _codes(param: SearchParam) -> list[str]:
    """The index codes a parameter's entries are written under."""
    if param.type == "composite":
        return [f"{param.code}#{i}" for i in range(len(param.components))]
    return [param.code, f"{param.code}:of-type"]


def param_types(param: SearchParam) -> list[str]:
    """The resource types whose documents hold entries of ``param``."""
    if "Resource" in param.base:
        return sorted(model.RESOURCE_TYPES)
    if "DomainResource" in param.base:
        return sorted(model.DOMAIN_RESOURCE_TYPES)
    return sorted(set(param.base))


def stale_keys(resource_type: str, param: SearchParam, old: SearchParam | None) -> set[str]:
    """The ``p`` of the entries that a (re)defined parameter replaces in the documents of
    ``resource_type``: its own keys, and every key of the definition it replaces."""
    out = {key(resource_type, c) for c in _codes(param)}
    if old is not None:
        out |= {f"{scope}|{c}" for c in _codes(old) for scope in ("*", resource_type)}
    return out


def with_param_reindexed(
    doc: Document, resource_type: str, resource: dict[str, Any], param: SearchParam, stale: set[str]
) -> Document:
    """The index arrays of ``doc`` with the entries under ``stale`` keys replaced by the
    entries of ``param`` extracted from ``resource`` (the document's content)."""
    fresh = _fields(
        resource_type,
        extract_param(resource, param.code, registry()),
        first_group=1 + max((int(g["g"]) for g in doc.get(COMPOSITE_FIELD) or []), default=0),
    )
    out: Document = {}
    for f in FIELD_OF_TYPE.values():
        kept = [e for e in doc.get(f) or [] if e.get("p") not in stale]
        out[f] = kept + fresh[f]
    groups = [
        g
        for g in doc.get(COMPOSITE_FIELD) or []
        if not any(e.get("p") in stale for e in g.get("e") or [])
    ]
    out[COMPOSITE_FIELD] = groups + fresh[COMPOSITE_FIELD]
    return out


def empty_index_fields() -> Document:
    out: Document = {f: [] for f in INDEX_FIELDS}
    out.update({f: "" for f in TEXT_FIELDS.values()})
    return out
