"""The MongoDB translation of the search IR: the query documents it produces, parameter
type by parameter type (no server needed)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from fhir_server.errors import FhirError
from fhir_server.search.parser import parse
from fhir_server.search.query import SearchQuery
from fhir_server.storage.mongodb import query as mq
from fhir_server.storage.mongodb.index import Document, index_fields, key

BASE = "http://test/fhir"
OPERATORS = {
    "$and", "$or", "$nor", "$in", "$nin", "$eq", "$ne", "$gt", "$gte", "$lt", "$lte",
    "$elemMatch", "$all", "$regex",
}  # fmt: skip
FIELDS = {
    "_id", "t", "i", "live", "seq", "p", "v", "x", "s", "c", "u", "lo", "hi", "is", "iv",
    "ver", "e", "g", *(f"_n{i}" for i in range(4)), *(f"_k{i}" for i in range(4)),
    "x_str", "x_tok", "x_ref", "x_date", "x_num", "x_qty", "x_uri", "x_cmp",
}  # fmt: skip


class FakeResolver:
    """Records the inner queries of chains and _has and answers them."""

    def __init__(self, *answers: list[Document]) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[Document, Document]] = []

    async def __call__(self, match: Document, projection: Document) -> list[Document]:
        self.calls.append((match, projection))
        return self.answers.pop(0) if self.answers else []


async def translate(
    rtype: str, *params: tuple[str, str], base: str | None = BASE, resolver: Any = None
) -> Document:
    query = parse(rtype, list(params), base_url=base, strict=True)
    return await mq.Translator(resolver or FakeResolver(), base).filter(query)


def clause(doc: Document) -> Any:
    """The search condition of a single-parameter query (type and live stripped)."""
    assert doc["$and"][0] == {"t": "Patient"} or "t" in doc["$and"][0]
    assert doc["$and"][1] == {"live": True}
    rest = doc["$and"][2:]
    return rest[0] if len(rest) == 1 else rest


def keys_in(doc: Any) -> set[str]:
    """Every key of every document nested in ``doc``."""
    if isinstance(doc, dict):
        return set(doc) | {k for v in doc.values() for k in keys_in(v)}
    if isinstance(doc, list | tuple):
        return {k for v in doc for k in keys_in(v)}
    return set()


def values_in(doc: Any) -> list[Any]:
    if isinstance(doc, dict):
        return [x for v in doc.values() for x in values_in(v)]
    if isinstance(doc, list | tuple):
        return [x for v in doc for x in values_in(v)]
    return [doc]


P_NAME = key("Patient", "name")
P_GENDER = key("Patient", "gender")


# --------------------------------------------------------------------------- types


async def test_type_and_live_come_first() -> None:
    doc = await translate("Patient")
    assert doc == {"$and": [{"t": "Patient"}, {"live": True}]}
    doc = await mq.Translator(FakeResolver()).filter(SearchQuery(()))
    assert doc == {"live": True}


async def test_string() -> None:
    assert clause(await translate("Patient", ("name", "Pét"))) == {
        "x_str": {"$elemMatch": {"p": P_NAME, "v": {"$gte": "pet", "$lt": "pet\U0010ffff"}}}
    }
    assert clause(await translate("Patient", ("name:exact", "Pét"))) == {
        "x_str": {"$elemMatch": {"p": P_NAME, "v": "pet", "x": "Pét"}}
    }
    assert clause(await translate("Patient", ("name:contains", "a.b"))) == {
        "x_str": {"$elemMatch": {"p": P_NAME, "v": {"$regex": re.escape("a.b")}}}
    }


async def test_full_text_is_an_anchored_regex_per_word() -> None:
    assert clause(await translate("Patient", ("_text", "Diab"))) == {
        "x_text": {"$regex": "(?:^| )diab"}
    }
    assert clause(await translate("Patient", ("_content", "Zoë mell.*,x"))) == {
        "$or": [
            {
                "$and": [
                    {"x_content": {"$regex": "(?:^| )zoe"}},
                    {"x_content": {"$regex": "(?:^| )mell"}},
                ]
            },
            {"x_content": {"$regex": "(?:^| )x"}},
        ]
    }


async def test_token() -> None:
    assert clause(await translate("Patient", ("gender", "male"))) == {
        "x_tok": {"$elemMatch": {"p": P_GENDER, "c": "male"}}
    }
    assert clause(await translate("Patient", ("gender", "http://s|male"))) == {
        "x_tok": {"$elemMatch": {"p": P_GENDER, "c": "male", "s": "http://s"}}
    }
    assert clause(await translate("Patient", ("identifier", "|x"))) == {
        "x_tok": {"$elemMatch": {"p": key("Patient", "identifier"), "c": "x", "s": None}}
    }
    assert clause(await translate("Patient", ("gender:not", "male"))) == {
        "$nor": [{"x_tok": {"$elemMatch": {"p": P_GENDER, "c": "male"}}}]
    }
    text = clause(await translate("Observation", ("code:text", "Weig")))
    assert text["x_tok"]["$elemMatch"]["t"] == {"$gte": "weig", "$lt": "weig\U0010ffff"}
    # a clause of several values is an $or
    assert clause(await translate("Patient", ("gender", "male,female"))) == {
        "$or": [
            {"x_tok": {"$elemMatch": {"p": P_GENDER, "c": "male"}}},
            {"x_tok": {"$elemMatch": {"p": P_GENDER, "c": "female"}}},
        ]
    }


async def test_identifier_of_type_and_common_parameters() -> None:
    doc = clause(await translate("Patient", ("_tag", "http://t|a")))
    assert doc == {"x_tok": {"$elemMatch": {"p": "*|_tag", "c": "a", "s": "http://t"}}}


async def test_reference() -> None:
    org = key("Patient", "organization")
    assert clause(await translate("Patient", ("organization", "Organization/o1"))) == {
        "x_ref": {
            "$elemMatch": {
                "p": org,
                "i": "o1",
                "t": "Organization",
                "u": {"$in": [None, f"{BASE}/Organization/o1"]},
            }
        }
    }
    # without a type: any local reference to that id (relative, or absolute on BASE)
    m = await translate("Observation", ("subject", "o1"))
    m = m["$and"][2]["x_ref"]["$elemMatch"]
    assert m["i"] == "o1" and "t" not in m
    assert m["u"]["$in"][0] is None
    pattern = m["u"]["$in"][1]
    assert pattern.match(f"{BASE}/Organization/o1") and not pattern.match("http://x/O/o1")
    # an absolute reference elsewhere: by url
    m = clause(await translate("Patient", ("organization", "http://x/fhir/Organization/o1")))
    assert m["x_ref"]["$elemMatch"]["u"] == "http://x/fhir/Organization/o1"
    # a server that does not know its base: only relative references are local
    m = await translate("Observation", ("subject", "o1"), base=None)
    assert m["$and"][2]["x_ref"]["$elemMatch"]["u"] is None
    m = clause(await translate("Patient", ("organization:identifier", "http://s|v")))
    assert m == {"x_ref": {"$elemMatch": {"p": org, "iv": "v", "is": "http://s"}}}


@pytest.mark.parametrize(
    ("value", "alternatives"),
    [
        ("1974", 1),
        ("eq1974", 1),
        ("ne1974", 2),
        ("gt1974", 1),
        ("lt1974", 1),
        ("ge1974", 2),
        ("le1974", 2),
        ("sa1974", 1),
        ("eb1974", 1),
        ("ap1974", 1),
    ],
)
async def test_date_prefixes(value: str, alternatives: int) -> None:
    doc = clause(await translate("Patient", ("birthdate", value)))
    alts = doc.get("$or", [doc])
    assert len(alts) == alternatives
    for alt in alts:
        m = alt["x_date"]["$elemMatch"]
        assert m["p"] == key("Patient", "birthdate")
        assert set(m) <= {"p", "lo", "hi"}
        assert all(isinstance(x, int) for x in values_in({k: m[k] for k in m if k != "p"}))


async def test_date_ranges() -> None:
    q = parse("Patient", [("birthdate", "1974")], strict=True)
    cond = q.clauses[0][0]
    lo, hi = cond.lo, cond.hi  # type: ignore[union-attr]
    m = clause(await translate("Patient", ("birthdate", "1974")))["x_date"]["$elemMatch"]
    assert (m["lo"], m["hi"]) == ({"$gte": lo}, {"$lte": hi})
    doc = clause(await translate("Patient", ("birthdate", "ge1974")))
    assert [a["x_date"]["$elemMatch"] for a in doc["$or"]] == [
        {"p": key("Patient", "birthdate"), "hi": {"$gt": hi}},
        {"p": key("Patient", "birthdate"), "lo": {"$gte": lo}, "hi": {"$lte": hi}},
    ]


async def test_number_and_quantity() -> None:
    m = clause(await translate("RiskAssessment", ("probability", "0.8")))
    m = m["x_num"]["$elemMatch"]
    assert m["lo"] == {"$lt": pytest.approx(0.85)} and m["hi"] == {"$gte": pytest.approx(0.75)}
    m = clause(await translate("RiskAssessment", ("probability", "gt0.8")))
    assert m["x_num"]["$elemMatch"]["hi"] == {"$gt": 0.8}
    vq = key("Observation", "value-quantity")
    doc = clause(await translate("Observation", ("value-quantity", "gt5|http://u|kg")))
    assert doc == {
        "x_qty": {"$elemMatch": {"p": vq, "hi": {"$gt": 5.0}, "s": "http://u", "c": "kg"}}
    }
    # a code without a system matches the code or the unit
    doc = clause(await translate("Observation", ("value-quantity", "gt5||kg")))
    assert [a["x_qty"]["$elemMatch"] for a in doc["$or"]] == [
        {"p": vq, "hi": {"$gt": 5.0}, "c": "kg"},
        {"p": vq, "hi": {"$gt": 5.0}, "u": "kg"},
    ]


async def test_uri() -> None:
    url = key("ValueSet", "url")
    assert clause(await translate("ValueSet", ("url", "http://a/b"))) == {
        "x_uri": {"$elemMatch": {"p": url, "v": "http://a/b"}}
    }
    below = clause(await translate("ValueSet", ("url:below", "http://a/b")))
    assert below["x_uri"]["$elemMatch"]["v"] == {
        "$gte": "http://a/b",
        "$lt": "http://a/b\U0010ffff",
    }
    above = clause(await translate("ValueSet", ("url:above", "http://a/b/c")))
    assert above["x_uri"]["$elemMatch"]["v"] == {"$in": ["http://a/b/c", "http://a/b"]}


async def test_composite() -> None:
    doc = clause(
        await translate("Observation", ("component-code-value-quantity", "http://l|8480-6$gt119"))
    )
    group = doc["x_cmp"]["$elemMatch"]
    code, value = group["e"]["$all"]
    assert code["$elemMatch"]["c"] == "8480-6" and code["$elemMatch"]["s"] == "http://l"
    assert value["$elemMatch"]["hi"] == {"$gt": 119.0}
    assert code["$elemMatch"]["p"].endswith("#0") and value["$elemMatch"]["p"].endswith("#1")
    # a component with alternatives gives one group match per combination
    doc = clause(
        await translate("Observation", ("component-code-value-quantity", "http://l|8480-6$ne119"))
    )
    assert len(doc["$or"]) == 2


async def test_missing_and_id() -> None:
    present = {"x_date": {"$elemMatch": {"p": key("Patient", "birthdate")}}}
    assert clause(await translate("Patient", ("birthdate:missing", "false"))) == present
    assert clause(await translate("Patient", ("birthdate:missing", "true"))) == {"$nor": [present]}
    assert clause(await translate("Patient", ("_id", "a,b"))) == {"i": {"$in": ["a", "b"]}}


async def test_token_value_set_codes_by_system() -> None:
    from fhir_server.search.query import Param, TokenCond

    cond = TokenCond(
        Param("gender", "token", ("Patient",)),
        None,
        None,
        codes=(("http://a", "1"), ("http://a", "2"), ("http://b", "1")),
    )
    field, alts = mq.entry_match(cond, None)
    assert field == "x_tok"
    assert alts == [
        {"p": P_GENDER, "s": "http://a", "c": {"$in": ["1", "2"]}},
        {"p": P_GENDER, "s": "http://b", "c": {"$in": ["1"]}},
    ]


# --------------------------------------------------------------------------- chains, _has


async def test_chain_is_two_indexed_steps() -> None:
    resolver = FakeResolver([{"t": "Patient", "i": "p1"}, {"t": "Patient", "i": "p2"}])
    doc = clause(await translate("Observation", ("subject:Patient.name", "pet"), resolver=resolver))
    ((inner, projection),) = resolver.calls
    assert projection == {"t": 1, "i": 1}
    assert inner == {
        "$and": [
            {"t": "Patient"},
            {"live": True},
            {"x_str": {"$elemMatch": {"p": P_NAME, "v": {"$gte": "pet", "$lt": "pet\U0010ffff"}}}},
        ]
    }
    assert doc == {
        "x_ref": {
            "$elemMatch": {
                "p": key("Observation", "subject"),
                "t": "Patient",
                "i": {"$in": ["p1", "p2"]},
                "u": {"$in": [None, f"{BASE}/Patient/p1", f"{BASE}/Patient/p2"]},
            }
        }
    }
    # nothing found: nothing matches (and no second query)
    doc = clause(await translate("Observation", ("subject:Patient.name", "x")))
    assert doc == mq.NOTHING


async def test_nested_chain_resolves_inside_out() -> None:
    resolver = FakeResolver([{"t": "Organization", "i": "o1"}], [{"t": "Patient", "i": "p1"}])
    await translate("Observation", ("patient.organization.name", "acme"), resolver=resolver)
    first, second = (call[0] for call in resolver.calls)
    assert first["$and"][0] == {"t": "Organization"}
    assert second["$and"][0] == {"t": "Patient"}
    assert second["$and"][2]["x_ref"]["$elemMatch"]["i"] == {"$in": ["o1"]}


async def test_has_collects_the_local_targets() -> None:
    subject = key("Observation", "subject")
    resolver = FakeResolver(
        [
            {"x_ref": [{"p": subject, "t": "Patient", "i": "p1", "u": None}]},
            {"x_ref": [{"p": subject, "t": "Patient", "i": "p2", "u": f"{BASE}/Patient/p2"}]},
            {"x_ref": [{"p": subject, "t": "Patient", "i": "p3", "u": "http://else/Patient/p3"}]},
            {"x_ref": [{"p": "other", "t": "Patient", "i": "p4", "u": None}]},
        ]
    )
    doc = clause(
        await translate("Patient", ("_has:Observation:subject:code", "x"), resolver=resolver)
    )
    assert doc == {"_id": {"$in": ["Patient/p1", "Patient/p2"]}}
    ((inner, projection),) = resolver.calls
    assert projection == {"x_ref": 1}
    assert inner["$and"][:2] == [{"t": "Observation"}, {"live": True}]


async def test_too_broad_chain_is_refused() -> None:
    many = [{"t": "Patient", "i": str(i)} for i in range(mq.MAX_IDS + 1)]
    with pytest.raises(FhirError):
        await translate(
            "Observation", ("subject:Patient.gender", "male"), resolver=FakeResolver(many)
        )


# --------------------------------------------------------------------------- includes


async def test_include_and_revinclude_filters() -> None:
    q = parse("Observation", [("_include", "Observation:subject")], base_url=BASE)
    subject = key("Observation", "subject")
    frontier = [
        {
            "t": "Observation",
            "i": "o1",
            "x_ref": [
                {"p": subject, "t": "Patient", "i": "p1", "u": None},
                {"p": subject, "t": "Patient", "i": "p9", "u": "http://else/Patient/p9"},
            ],
        }
    ]
    assert mq.include_targets_filter(q.includes[0], frontier, BASE) == {
        "_id": {"$in": ["Patient/p1"]},
        "live": True,
    }
    q = parse("Patient", [("_revinclude", "Observation:subject")], base_url=BASE)
    doc = mq.revinclude_sources_filter(q.includes[0], [{"t": "Patient", "i": "p1"}], BASE)
    assert doc == {
        "$and": [
            {"t": "Observation"},
            {
                "x_ref": {
                    "$elemMatch": {
                        "p": subject,
                        "t": "Patient",
                        "i": {"$in": ["p1"]},
                        "u": {"$in": [None, f"{BASE}/Patient/p1"]},
                    }
                }
            },
            {"live": True},
        ]
    }


# --------------------------------------------------------------------------- sort, paging


def test_sort_keys_and_order() -> None:
    q = parse("Patient", [("_sort", "-birthdate,name"), ("_count", "5")], strict=True)
    page = mq.page_pipeline(q, {"live": True})
    stages = [next(iter(s)) for s in page.pipeline]
    assert stages == ["$match", "$addFields", "$addFields", "$sort", "$limit", "$project"]
    k0 = page.pipeline[1]["$addFields"]["_k0"]["$reduce"]
    assert "$gt" in k0["in"]["$cond"][0]["$and"][1]["$or"][1]  # descending: greatest value
    assert page.pipeline[3]["$sort"] == {"_n0": 1, "_k0": -1, "_n1": 1, "_k1": 1, "seq": 1}
    assert page.pipeline[4] == {"$limit": 6}
    q = parse("Patient", [("_sort", "_id")], strict=True)
    page = mq.page_pipeline(q, {"live": True})
    assert page.pipeline[1]["$addFields"]["_k0"] == "$i"


def test_unsorted_pages_by_seq_with_the_keyset_in_the_match() -> None:
    cursor = mq.encode_cursor("n", [], 42)
    q = parse("Patient", [("_cursor", cursor), ("_count", "3")], strict=True)
    page = mq.page_pipeline(q, {"live": True})
    assert page.pipeline[0] == {"$match": {"$and": [{"live": True}, {"seq": {"$gt": 42}}]}}
    assert page.pipeline[1] == {"$sort": {"seq": 1}}
    back = parse("Patient", [("_cursor", mq.encode_cursor("p", [], 42))], strict=True)
    page = mq.page_pipeline(back, {"live": True})
    assert page.pipeline[0]["$match"]["$and"][1] == {"seq": {"$lt": 42}}
    assert page.pipeline[1] == {"$sort": {"seq": -1}} and not page.forward


def test_keyset_with_missing_values_last() -> None:
    after = mq.keyset([False], ["b"], 7, after=True)
    assert after == {
        "$or": [
            {"_n0": {"$gt": 0}},
            {"_n0": 0, "_k0": {"$gt": "b"}},
            {"_n0": 0, "_k0": "b", "seq": {"$gt": 7}},
        ]
    }
    # after a row without a value: only rows without a value, later in seq
    assert mq.keyset([True], [None], 7, after=True) == {
        "$or": [{"_n0": {"$gt": 1}}, {"_n0": 1, "_k0": None, "seq": {"$gt": 7}}]
    }
    before = mq.keyset([True], [3], 7, after=False)
    assert before["$or"][1] == {"_n0": 0, "_k0": {"$gt": 3}}


@pytest.mark.parametrize(
    "cursor",
    ["", "!!", mq.encode_cursor("x", [], 1), mq.encode_cursor("n", ["a"], 1), "WyJuIixbXSwiMSJd"],
)
def test_tampered_cursors_are_bad_requests(cursor: str) -> None:
    with pytest.raises(FhirError):
        mq.decode_cursor(cursor, 0)


def test_cursor_round_trip() -> None:
    token = mq.encode_cursor("p", ["a", None, 1.5, float("inf")], 2**62)
    assert mq.decode_cursor(token, 4) == ("p", ["a", None, 1.5, float("inf")], 2**62)


# --------------------------------------------------------------------------- safety


HOSTILE = ['{"$gt": ""}', "$gt", "$where", "' OR 1=1 --", "a.b", "$$ROOT", "^.*$", "\\"]


@pytest.mark.parametrize("value", HOSTILE)
async def test_hostile_values_are_only_ever_literal_values(value: str) -> None:
    from tests.search.support import escape

    v = escape(value)
    chain = [{"t": "Organization", "i": value}]
    has = [{"x_ref": [{"p": key("Observation", "subject"), "t": "Patient", "i": value}]}]
    for rtype, params, answers in (
        ("Patient", [("name", v)], []),
        ("Patient", [("name:exact", v)], []),
        ("Patient", [("name:contains", v)], []),
        ("Patient", [("identifier", f"{v}|{v}")], []),
        ("Patient", [("_id", v)], []),
        ("Patient", [("organization", v)], []),
        ("Patient", [("organization", f"Organization/{v}")], []),
        ("Patient", [("organization:identifier", f"{v}|{v}")], []),
        ("Patient", [("_tag", v)], []),
        ("Patient", [("organization.name", v)], [chain]),
        ("Patient", [("_has:Observation:subject:code", v)], [has]),
        ("ValueSet", [("url:above", f"http://x/{v}")], []),
        ("Observation", [("value-quantity", f"5|{v}|{v}")], []),
    ):
        doc = await translate(rtype, *params, resolver=FakeResolver(*answers))
        for k in keys_in(doc):
            assert k in FIELDS or k in OPERATORS, (params, k)
        for x in values_in(doc):
            assert x is None or isinstance(x, str | int | float | bool | re.Pattern), x
    # the value itself is there, as a value
    doc = clause(await translate("Patient", ("identifier", f"{escape(value)}|{escape(value)}")))
    assert doc == {
        "x_tok": {"$elemMatch": {"p": key("Patient", "identifier"), "c": value, "s": value}}
    }
    # in :contains a value is an escaped pattern: matched as text
    doc = clause(await translate("Patient", ("name:contains", "^.*$")))
    pattern = doc["x_str"]["$elemMatch"]["v"]["$regex"]
    assert re.search(pattern, "a^.*$b") and not re.search(pattern, "anything")


def test_literal_guard_refuses_documents() -> None:
    with pytest.raises(TypeError):
        mq.lit({"$gt": ""})
    assert mq.lit('{"$gt": ""}') == '{"$gt": ""}'


def test_sort_expressions_wrap_keys_as_literals() -> None:
    q = parse("Patient", [("_sort", "name")], strict=True)
    expr = mq.sort_expression(q.sort[0])
    cond = expr["$reduce"]["input"]["$map"]["input"]["$filter"]["cond"]
    assert cond == {"$in": ["$$e.p", {"$literal": [P_NAME]}]}


# --------------------------------------------------------------------------- index layout


def test_index_fields_of_a_resource() -> None:
    obs = {
        "resourceType": "Observation",
        "id": "o",
        "status": "final",
        "code": {"coding": [{"system": "http://l", "code": "1"}]},
        "subject": {"reference": "Patient/p"},
        "component": [
            {
                "code": {"coding": [{"system": "http://l", "code": "2"}]},
                "valueQuantity": {"value": 3},
            }
        ],
    }
    fields = index_fields("Observation", obs)
    assert {"p": key("Observation", "code"), "s": "http://l", "c": "1", "t": None} in fields[
        "x_tok"
    ]
    ref = {
        "p": key("Observation", "subject"),
        "t": "Patient",
        "i": "p",
        "ver": None,
        "u": None,
        "is": None,
        "iv": None,
    }
    assert ref in fields["x_ref"]
    groups = fields["x_cmp"]
    assert groups and all({"g", "e"} == set(g) for g in groups)
    assert fields["x_text"] == ""
    assert fields["x_content"] == "observation o final http l 1 patient p 2"
    # component entries live only in their groups
    assert not any("#" in e["p"] for f in ("x_tok", "x_qty") for e in fields[f])
