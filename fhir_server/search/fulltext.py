"""Full-text search: ``_text`` and ``_content`` (https://hl7.org/fhir/R4/search.html#content).

What is searched
    ``_text``: the narrative, ``text.div`` with its markup removed (tags dropped,
    character references decoded). ``_content``: every string value of the resource,
    at any depth (contained resources included; the narrative counted as its text, not
    its markup). Numbers, booleans and the JSON keys are not searched.

Words
    Both texts, and the search value, are cut into *words*: maximal runs of letters
    and digits (anything else, punctuation, ``_`` and white space included, separates
    words), lower-cased and stripped of accents (:func:`fhir_server.search.values.
    normalize`). A text is kept as its distinct words, in order of first appearance,
    separated by single spaces.

Matching
    A search value matches a resource when *every* word of the value is the start of
    some word of the searched text (case- and accent-insensitive word-prefix matching,
    words in any order and not necessarily adjacent): ``_content=diab mell`` matches
    "Diabetes Mellitus". Commas (OR) and repeated parameters (AND) work as for any
    parameter. There is no phrase, boolean (``AND``/``OR``/``NOT``) or fuzzy syntax:
    quotes and operators are separators or plain words. A value without any word is
    invalid. No modifiers are supported.

Stores
    SQLite keeps the words in an FTS5 table, MongoDB in two string fields matched with
    anchored regular expressions; both are written with the other index entries, so
    resources stored before full-text indexing existed are found once rewritten (the
    SQLite store's ``reindex`` does it).

Types without full text (:data:`NOT_INDEXED`)
    AuditEvent: the server writes one per request (the audit trail), so it is the
    type stored most by far, and its words would be most of the full-text index;
    every value in it is machine-written and searchable through its own parameters
    (agent, entity, patient, type, subtype, date...). Its words cost more than a
    third of what indexing one took (about 60 of 170 us, and the full-text row's
    share of the insert). ``_text`` and ``_content`` are not offered for it: the
    CapabilityStatement leaves them out, a search of the type with them is refused
    as an unsupported parameter, and a search of all types never matches one.
"""

from __future__ import annotations

import html
import re
from typing import Any

from fhir_server.search import values

NOT_INDEXED: frozenset[str] = frozenset({"AuditEvent"})

_WORD = re.compile(r"[^\W_]+")
_TAG = re.compile(r"<[^>]*>")
# words longer than this are cut (keeps pathological values from bloating the index)
MAX_WORD = 64


def words(text: str) -> list[str]:
    """The distinct normalised words of a text, in order of first appearance."""
    found = dict.fromkeys(_WORD.findall(values.normalize(text)))
    if any(len(w) > MAX_WORD for w in found):
        return list(dict.fromkeys(w[:MAX_WORD] for w in found))
    return list(found)


def strip_markup(xhtml: str) -> str:
    """The text of an XHTML fragment: tags replaced by spaces, references decoded."""
    return html.unescape(_TAG.sub(" ", xhtml))


def narrative(resource: dict[str, Any]) -> str:
    """The resource's narrative as text (empty when it has none)."""
    text = resource.get("text")
    div = text.get("div") if isinstance(text, dict) else None
    return strip_markup(div) if isinstance(div, str) else ""


def _strings(value: Any, out: list[str], key: str = "") -> None:
    """Append every string value under ``value`` to ``out`` (narrative markup stripped)."""
    if isinstance(value, str):
        out.append(strip_markup(value) if key == "div" else value)
    elif isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, str):
                out.append(strip_markup(v) if k == "div" else v)
            elif isinstance(v, (dict, list)):
                _strings(v, out, k)
    elif isinstance(value, list):
        for v in value:
            _strings(v, out, key)


_CACHE_LIMIT = 8192  # distinct short strings whose words are kept
_CACHEABLE = 120  # longest string (characters) kept in the cache
_cached: dict[str, list[str]] = {}


def _value_words(value: str) -> list[str]:
    """:func:`words` of one string value; those of short values (codes, systems,
    displays, references: most values, repeated across resources) are remembered."""
    if len(value) > _CACHEABLE:
        return words(value)
    found = _cached.get(value)
    if found is None:
        if len(_cached) >= _CACHE_LIMIT:
            _cached.clear()
        found = _cached[value] = words(value)
    return found


def indexed(resource_type: str) -> bool:
    """Do resources of the type get full-text words (``_text``/``_content``)?"""
    return resource_type not in NOT_INDEXED


def text_words(resource: dict[str, Any]) -> str:
    """The words ``_text`` searches, space-separated."""
    return " ".join(words(narrative(resource)))


def content_words(resource: dict[str, Any]) -> str:
    """The words ``_content`` searches, space-separated."""
    strings: list[str] = []
    _strings(resource, strings)
    # the words of each value, in order, without repeats: the same as the words of
    # their concatenation (with a separator no word contains). Runs of ASCII values
    # (most values) are cut into words together, with one regular expression pass;
    # the others one by one, remembered (their normalisation is the costly part).
    seen: dict[str, None] = {}
    run: list[str] = []
    for value in strings:
        if value.isascii():
            run.append(value)
            continue
        if run:
            seen.update(dict.fromkeys(_ascii_words(run)))
            run.clear()
        seen.update(dict.fromkeys(_value_words(value)))
    if run:
        seen.update(dict.fromkeys(_ascii_words(run)))
    return " ".join(seen)


def _ascii_words(values: list[str]) -> list[str]:
    """:func:`words` of ASCII values joined by a separator that no word contains."""
    found = _WORD.findall("\x1f".join(values).lower())
    if any(len(w) > MAX_WORD for w in found):
        return [w[:MAX_WORD] for w in found]
    return found
