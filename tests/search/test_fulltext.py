"""``_text`` and ``_content``: word-prefix full-text search, on every store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_server.errors import FhirError
from fhir_server.search import fulltext
from fhir_server.search.parser import parse
from fhir_server.search.query import TextCond
from fhir_server.storage.port import Store
from fhir_server.storage.sqlite import search_index
from fhir_server.storage.sqlite.store import SqliteStore
from tests.search.support import delete, put_all

XHTML = 'xmlns="http://www.w3.org/1999/xhtml"'


def narrative(html: str) -> dict[str, Any]:
    return {"status": "generated", "div": f"<div {XHTML}>{html}</div>"}


RESOURCES: list[dict[str, Any]] = [
    {
        "resourceType": "Condition",
        "id": "c1",
        "text": narrative("<p>Type 2 <b>Diabetes</b> mellitus &amp; Zoë&#39;s notes</p>"),
        "subject": {"reference": "Patient/p1"},
        "note": [{"text": "Follow-up in spring"}],
    },
    {
        "resourceType": "Condition",
        "id": "c2",
        "text": narrative("Hypertension"),
        "code": {"text": "Essential hypertension (disorder)"},
        "subject": {"reference": "Patient/p1"},
        "note": [{"text": "diabetic diet advised"}],
    },
    {
        "resourceType": "Condition",
        "id": "c3",
        "subject": {"reference": "Patient/p2"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "display": "Asthma"}]},
    },
    {"resourceType": "Patient", "id": "p1", "name": [{"family": "Ångström"}]},
    {"resourceType": "Patient", "id": "p2", "name": [{"family": "Moss"}]},
]


def test_words_are_normalised_letter_and_digit_runs() -> None:
    assert fulltext.words("Type-2 DIABETES, type_2 Zoë!") == ["type", "2", "diabetes", "zoe"]
    assert fulltext.strip_markup("<b>a</b>&amp;<i>b</i>").split() == ["a", "&", "b"]
    r = {"resourceType": "Patient", "text": narrative("<p>Hello</p>"), "active": True}
    assert fulltext.text_words(r) == "hello"
    assert fulltext.content_words(r) == "patient generated hello"


_VALUES = st.text(
    alphabet=st.sampled_from("abcZÉé ö-_1.,|\n\u0301ßİ") | st.characters(), max_size=40
) | st.text(alphabet="ab ", min_size=100, max_size=200)


@settings(max_examples=300, deadline=None)
@given(st.lists(_VALUES, max_size=12), st.lists(st.integers(0, 11), max_size=12))
def test_content_words_are_the_words_of_all_values_in_order(
    values: list[str], repeats: list[int]
) -> None:
    """Words are taken by runs of ASCII values and value by value for the others
    (short ones remembered); the result is the words of all the values together,
    whichever were seen before."""
    picked = values + [values[i] for i in repeats if i < len(values)]
    resource = {"resourceType": "Basic", "extension": [{"valueString": v} for v in picked]}
    strings: list[str] = []
    fulltext._strings(resource, strings)
    expected = " ".join(fulltext.words("\n".join(strings)))
    assert fulltext.content_words(resource) == expected
    assert fulltext.content_words(resource) == expected  # from the cache the second time


def test_the_word_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fulltext, "_CACHE_LIMIT", 10)
    monkeypatch.setattr(fulltext, "_cached", {})
    for i in range(25):
        assert fulltext._value_words(f"code-{i}") == ["code", str(i)]
        assert len(fulltext._cached) <= 10
    long = "x" * (fulltext._CACHEABLE + 1)
    assert fulltext._value_words(long) == [long[: fulltext.MAX_WORD]]
    assert long not in fulltext._cached


def test_parsing() -> None:
    q = parse("Condition", [("_text", "Diab Mell,asthma"), ("_content", "zoë")])
    assert q.clauses == (
        (TextCond("text", ("diab", "mell")), TextCond("text", ("asthma",))),
        (TextCond("content", ("zoe",)),),
    )
    lenient = parse("Condition", [("_text", "!!"), ("_content:exact", "x")])
    assert lenient.clauses == () and lenient.ignored == ("_text", "_content:exact")
    with pytest.raises(FhirError):
        parse("Condition", [("_text", "  ")], strict=True)
    # _text is defined on DomainResource only
    with pytest.raises(FhirError):
        parse("Bundle", [("_text", "x")], strict=True)


@pytest.fixture
async def loaded(each_store: Store) -> AsyncIterator[Store]:
    await put_all(each_store, RESOURCES)
    yield each_store


async def found(store: Store, resource_type: str | None, *params: tuple[str, str]) -> list[str]:
    result = await store.search(parse(resource_type, list(params), strict=True))
    return sorted(h.id for h in result.matches)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ([("_text", "diabetes")], ["c1"]),
        ([("_text", "DIAB")], ["c1"]),  # a word prefix, any case
        ([("_text", "mellitus diabetes")], ["c1"]),  # every word, any order
        ([("_text", "diabetes asthma")], []),
        ([("_text", "zoe")], ["c1"]),  # accents ignored, entities decoded
        ([("_text", "betes")], []),  # not inside a word
        ([("_text", "div"), ("_text", "xhtml")], []),  # markup is not text
        ([("_text", "spring")], []),  # only the narrative
        ([("_text", "hypert,mell")], ["c1", "c2"]),  # comma: OR
        ([("_text", "hypertension"), ("_text", "type")], []),  # repeated: AND
        ([("_content", "spring")], ["c1"]),
        ([("_content", "diab")], ["c1", "c2"]),  # narrative and note
        ([("_content", "asthma")], ["c3"]),  # a display
        ([("_content", "disorder essential")], ["c2"]),
        ([("_content", "snomed")], ["c3"]),  # a uri is a string value too
        ([("_content", "p2")], ["c3"]),
        ([("_content", "diab"), ("subject", "Patient/p1")], ["c1", "c2"]),
    ],
)
async def test_condition_searches(
    loaded: Store, params: list[tuple[str, str]], expected: list[str]
) -> None:
    assert await found(loaded, "Condition", *params) == expected


async def test_system_search_chains_and_has(loaded: Store) -> None:
    assert await found(loaded, None, ("_content", "angstrom")) == ["p1"]
    assert await found(loaded, "Condition", ("subject:Patient._content", "angs")) == ["c1", "c2"]
    assert await found(loaded, "Patient", ("_has:Condition:subject:_text", "asthma,hyper")) == [
        "p1"
    ]


async def test_updates_and_deletes_keep_the_text_current(loaded: Store) -> None:
    changed = {**RESOURCES[0], "text": narrative("Prediabetes")}
    await put_all(loaded, [changed])
    assert await found(loaded, "Condition", ("_text", "diabetes")) == []
    assert await found(loaded, "Condition", ("_text", "prediab")) == ["c1"]
    await delete(loaded, "Condition", "c1")
    assert await found(loaded, "Condition", ("_content", "spring,prediab")) == []
    assert await found(loaded, "Condition", ("_content", "diab")) == ["c2"]


async def test_hostile_words_are_plain_terms(loaded: Store) -> None:
    for value in ('" OR *', "NEAR(a b)", "content : x", "text:*", ".*", "(?i)a|b", "^$"):
        result = await loaded.search(parse("Condition", [("_content", value)]))
        assert all(h.id in {"c1", "c2", "c3"} for h in result.matches)
    assert await found(loaded, "Condition", ("_content", '"NEAR" OR asthma')) == []
    assert await found(loaded, "Condition", ("_content", "a*")) == ["c2", "c3"]


async def test_sqlite_reindex_fills_the_full_text_of_older_rows(store: SqliteStore) -> None:
    await put_all(store, RESOURCES)
    conn = store.writer
    conn.execute("DELETE FROM idx_fulltext")  # as a database from before full text
    assert await found(store, "Condition", ("_content", "diab")) == []
    rows = conn.execute("SELECT rid, type, content FROM resource WHERE content IS NOT NULL")
    search_index.reindex(conn, rows.fetchall())
    conn.commit()
    assert await found(store, "Condition", ("_content", "diab")) == ["c1", "c2"]


AUDIT_EVENT = {
    "resourceType": "AuditEvent",
    "id": "ae1",
    "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
    "recorded": "2026-01-01T00:00:00Z",
    "agent": [{"name": "Angstrom reader", "requestor": True}],
    "source": {"observer": {"display": "angstrom server"}},
}


async def test_audit_events_get_no_full_text(each_store: Store) -> None:
    """The audit trail's records are not full-text indexed (fulltext.NOT_INDEXED): a
    search of the type with _text/_content is refused, one of all types never finds
    them, and their other parameters still work."""
    await put_all(each_store, [*RESOURCES, AUDIT_EVENT])
    assert await found(each_store, None, ("_content", "angstrom")) == ["p1"]
    with pytest.raises(FhirError) as refused:
        parse("AuditEvent", [("_content", "angstrom")], strict=True)
    assert refused.value.issues[0].code == "not-supported"
    assert "AuditEvent" in (refused.value.issues[0].diagnostics or "")
    lenient = parse("AuditEvent", [("_text", "angstrom")])
    assert lenient.ignored == ("_text",)
    assert await found(each_store, "AuditEvent", ("agent-name", "angstrom")) == ["ae1"]
    if isinstance(each_store, SqliteStore):
        (rows,) = each_store.reader.execute(
            "SELECT count(*) FROM idx_fulltext WHERE rowid ="
            " (SELECT rid FROM resource WHERE type = 'AuditEvent')"
        ).fetchone()
        assert rows == 0


def test_the_capability_statement_offers_full_text_where_it_is_indexed() -> None:
    from fhir_server.interactions.capabilities import _search_params

    def full_text(resource_type: str) -> set[str]:
        names = {p["name"] for p in _search_params(resource_type)}
        return names & {"_text", "_content"}

    assert full_text("Patient") == {"_text", "_content"}
    assert full_text("Bundle") == {"_content"}  # _text is defined on DomainResource
    assert full_text("AuditEvent") == set()
