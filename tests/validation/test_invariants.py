"""The FHIRPath invariants of the R4 base definitions (fhir_server.validation.invariants)
and the compiled evaluator they run on (fhir_server.validation.fastpath)."""

from __future__ import annotations

import copy
import gzip
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_server import definitions, jsonio
from fhir_server.errors import Issue
from fhir_server.fhirpath import FhirPathError
from fhir_server.fhirpath._engine import output_values, parse, run
from fhir_server.validation import invariants as inv_module
from fhir_server.validation import validate, validate_resource
from fhir_server.validation.fastpath import Env, Fallback, It, compile_fast
from fhir_server.validation.invariants import (
    COVERED_BY_STRUCTURE,
    NATIVE,
    NOT_EVALUATED,
    Invariant,
    check_invariants,
    compile_invariant,
    evaluate_invariant,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "data" / "r4-examples.ndjson.gz"


def _examples() -> list[dict[str, Any]]:
    with gzip.open(EXAMPLES, "rb") as fh:
        return [jsonio.loads(line) for line in fh if line.strip()]


ALL = _examples()


def example(rt: str, id: str) -> dict[str, Any]:
    return copy.deepcopy(next(r for r in ALL if r["resourceType"] == rt and r.get("id") == id))


def keys(issues: list[Issue]) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(i.severity, i.diagnostics.split(":")[1].strip(), i.expression) for i in issues]


# --------------------------------------------------------------------------- the examples


def test_no_official_example_breaks_an_error_invariant() -> None:
    for r in ALL:
        errors = [i for i in check_invariants(r) if i.severity != "warning"]
        assert not errors, (r["resourceType"], r.get("id"), errors)


def test_every_base_invariant_compiles() -> None:
    """All 247 distinct base constraints parse; all but one run on the compiled path
    (ctm-1 needs resolve(), which only the full engine has)."""
    not_compiled = []
    for c in definitions.base_constraints():
        if c.key in COVERED_BY_STRUCTURE or c.key in NATIVE:
            continue
        inv = compile_invariant(c.key, c.severity, c.human, c.expression, c.best_practice)
        assert inv.skip_reason is None, (c.key, inv.skip_reason)
        if inv.fast is None:
            not_compiled.append(c.key)
    assert not_compiled == ["ctm-1"]
    assert not NOT_EVALUATED


def _calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Invariant, It, It, It, bool]]:
    """Every (invariant, context) the examples evaluate, guards off, with whether the
    shape guard would have skipped it."""
    calls: list[tuple[Invariant, It, It, It, bool]] = []
    real_skippable = Invariant.skippable

    def record_skip(self: Invariant, obj: Any, type_path: str) -> bool:
        record_skip.last = real_skippable(self, obj, type_path)  # type: ignore[attr-defined]
        return False

    def record_eval(inv: Invariant, c: It, r: It, root: It, lookup: Any = None) -> bool:
        calls.append((inv, c, r, root, record_skip.last))  # type: ignore[attr-defined]
        return True

    record_skip.last = False  # type: ignore[attr-defined]
    monkeypatch.setattr(Invariant, "skippable", record_skip)
    monkeypatch.setattr(inv_module, "evaluate_invariant", record_eval)
    for r in ALL:
        check_invariants(r)
    monkeypatch.undo()
    return calls


def _plain(values: list[Any]) -> list[Any]:
    return [v.value if isinstance(v, It) else v for v in values]


def test_compiled_path_agrees_with_fhirpathpy_on_every_example(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The differential test of the accelerator: same result as the full engine for
    every invariant on every element of every official example (que-7 differs on
    purpose: see fastpath's docstring). Also: the shape guard only ever skips an
    invariant that holds."""
    calls = _calls(monkeypatch)
    assert len(calls) > 10_000
    compared = 0
    differ = set()
    for inv, c, r, root, skipped in calls:
        full_env = {
            "resource": inv_module._fhirpath_node(r),
            "rootResource": inv_module._fhirpath_node(root),
            "context": inv_module._fhirpath_node(c),
        }
        try:
            full = output_values(run(inv.ast or {}, inv.expression, full_env["context"], full_env))
        except FhirPathError:
            full = None
        if skipped:
            assert full is not None and inv_module._passed(full), (inv.key, c)
        if inv.fast is None:
            continue
        try:
            fast = _plain(inv.fast(c, Env([c], [r], [root])))
        except Fallback:
            continue
        compared += 1
        if fast != full:
            differ.add(inv.key)
    assert compared > 10_000
    assert differ == {"que-7"}


def test_skipping_is_common() -> None:
    """The guard skips invariants whose elements are absent: an empty Observation
    evaluates none of obs-3/obs-6/obs-7."""
    obs = compile_invariant(
        "obs-6", "error", "", "dataAbsentReason.empty() or value.empty()", False
    )
    assert obs.skippable({"resourceType": "Observation", "status": "final"}, "Observation")
    assert not obs.skippable({"dataAbsentReason": {}, "valueString": "x"}, "Observation")
    # a value alone: dataAbsentReason.empty() is true on this shape
    assert obs.skippable({"valueString": "x"}, "Observation")
    ctx = compile_invariant("x-1", "error", "", "hasValue() or name.exists()", False)
    assert not ctx.skippable({}, "Patient")  # a function of the whole context: opaque


# --------------------------------------------------------------------------- failures


def test_period_start_after_end_fails_per_1() -> None:
    enc: dict[str, Any] = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "period": {"start": "2024-03-02T10:00:00Z", "end": "2024-03-02T09:00:00Z"},
    }
    assert keys(check_invariants(enc)) == [
        ("error", "per-1", ("Encounter.period",)),
    ]
    enc["period"]["end"] = "2024-03-02T10:30:00+01:00"  # 09:30Z: still before the start
    assert [k[1] for k in keys(check_invariants(enc))] == ["per-1"]
    enc["period"]["end"] = "2024-03-02T12:30:00+01:00"
    assert check_invariants(enc) == []
    enc["period"] = {"start": "2024-03", "end": "2024-03-02"}  # not comparable: holds
    assert check_invariants(enc) == []


def test_observation_value_and_data_absent_reason_fail_obs_6() -> None:
    obs = example("Observation", "example")
    obs["dataAbsentReason"] = {"text": "unknown"}
    found = keys(check_invariants(obs))
    assert ("error", "obs-6", ("Observation",)) in found


def test_patient_contact_without_details_fails_pat_1() -> None:
    pat = {"resourceType": "Patient", "contact": [{"gender": "female"}, {"name": {"family": "X"}}]}
    assert keys(check_invariants(pat)) == [("error", "pat-1", ("Patient.contact[0]",))]


def test_unreferenced_contained_resource_fails_dom_3() -> None:
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "contained": [
            {"resourceType": "Patient", "id": "p1"},
            {"resourceType": "Patient", "id": "p2"},
        ],
        "subject": {"reference": "#p1"},
    }
    assert keys(check_invariants(obs)) == [("error", "dom-3", ("Observation.contained[1]",))]


def test_range_low_above_high_fails_rng_2_and_quantity_code_without_system_qty_3() -> None:
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "valueRange": {"low": {"value": 5, "unit": "mg"}, "high": {"value": 2, "unit": "mg"}},
        "referenceRange": [{"low": {"value": 1, "code": "mg"}}],
    }
    assert keys(check_invariants(obs)) == [
        ("error", "rng-2", ("Observation.valueRange",)),
        ("error", "qty-3", ("Observation.referenceRange[0].low",)),
    ]


def test_narrative_with_script_fails_txt_1_and_2() -> None:
    pat = {
        "resourceType": "Patient",
        "text": {
            "status": "generated",
            "div": '<div xmlns="http://www.w3.org/1999/xhtml"><script>x()</script></div>',
        },
    }
    found = {k[1] for k in keys(check_invariants(pat))}
    assert {"txt-1", "txt-2"} <= found


def test_questionnaire_exists_operator_with_boolean_answer_passes_que_7() -> None:
    q: dict[str, Any] = {
        "resourceType": "Questionnaire",
        "status": "draft",
        "item": [
            {"linkId": "a", "type": "boolean"},
            {
                "linkId": "b",
                "type": "string",
                "enableWhen": [{"question": "a", "operator": "exists", "answerBoolean": True}],
            },
        ],
    }
    assert check_invariants(q) == []
    q["item"][1]["enableWhen"][0] = {"question": "a", "operator": "exists", "answerString": "x"}
    assert keys(check_invariants(q)) == [
        ("error", "que-7", ("Questionnaire.item[1].enableWhen[0]",))
    ]


def test_que_12_is_applied_in_its_corrected_form() -> None:
    """R4 publishes que-12 as 'enableWhen.count() > 2 implies enableBehavior.exists()',
    against its own description ('more than one enableWhen'); the corrected '> 1' is
    evaluated, also for a profile that carries the published expression."""
    published, corrected, _ = inv_module.CORRECTED["que-12"]
    base = definitions.type_definition("Questionnaire").elements["Questionnaire.item"]
    assert published in {c.expression for c in base.constraints if c.key == "que-12"}
    assert compile_invariant("que-12", "error", "h", published).expression == corrected
    # another expression under the same key is left alone
    assert compile_invariant("que-12", "error", "h", "true").expression == "true"
    condition = {"question": "a", "operator": "exists", "answerBoolean": True}
    q: dict[str, Any] = {
        "resourceType": "Questionnaire",
        "status": "draft",
        "item": [
            {"linkId": "a", "type": "boolean"},
            {"linkId": "b", "type": "string", "enableWhen": [condition, condition]},
        ],
    }
    assert keys(check_invariants(q)) == [("error", "que-12", ("Questionnaire.item[1]",))]
    q["item"][1]["enableBehavior"] = "any"
    assert check_invariants(q) == []
    del q["item"][1]["enableBehavior"]
    q["item"][1]["enableWhen"] = [condition]
    assert check_invariants(q) == []


def test_best_practice_dom_6_is_optional_and_not_for_contained() -> None:
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "contained": [{"resourceType": "Patient", "id": "p"}],
        "subject": {"reference": "#p"},
    }
    assert keys(check_invariants(obs, best_practice=True)) == [
        ("warning", "dom-6", ("Observation",))
    ]
    assert check_invariants(obs) == []


def test_bundle_entries_are_their_own_root() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Patient", "contact": [{}]}}
        ],
    }
    # contact [{}] is a structure error; the invariant walk still reports pat-1 there
    found = keys(check_invariants(bundle))
    assert ("error", "pat-1", ("Bundle.entry[0].resource.contact[0]",)) in found


def test_an_invariant_that_cannot_be_evaluated_is_information() -> None:
    inv = compile_invariant("zz-1", "error", "needs conformsTo", "conformsTo('x')", False)
    assert inv.fast is None
    it = It({"resourceType": "Patient"}, None, "Patient")
    outcome = evaluate_invariant(inv, it, it, it)
    assert isinstance(outcome, str)
    issue = inv_module.error_issue(inv, "Patient", outcome)
    assert issue.severity == "information"


def test_unparsable_invariant_is_skipped_with_a_reason() -> None:
    inv = compile_invariant("zz-2", "error", "broken", "name.where(", False)
    assert inv.skip_reason is not None and "does not parse" in inv.skip_reason


def test_validate_includes_invariants_only_for_structurally_valid_resources() -> None:
    pat: dict[str, Any] = {"resourceType": "Patient", "contact": [{"gender": "female"}]}
    assert [i.diagnostics.split(":")[1].strip() for i in validate(pat)] == ["pat-1"]
    pat["foo"] = 1
    issues = validate(pat)
    assert issues == validate_resource(pat)  # structure errors only


# --------------------------------------------------------------------------- fast path


def fast(expression: str, resource: dict[str, Any], lookup: Any = None) -> list[Any]:
    fn = compile_fast(parse(expression))
    assert fn is not None, expression
    it = It(resource, None, resource["resourceType"])
    return _plain(fn(it, Env([it], [it], [it], lookup)))


def full(expression: str, resource: dict[str, Any]) -> list[Any]:
    node = inv_module._fhirpath_node(It(resource, None, resource["resourceType"]))
    env = {"resource": node, "rootResource": node, "context": node}
    return output_values(run(parse(expression), expression, node, env))


PATIENT = {
    "resourceType": "Patient",
    "name": [{"given": ["Ada", "Lovelace"], "family": "King"}, {"family": "Byron"}],
    "birthDate": "1815-12-10",
    "_birthDate": {"extension": [{"url": "http://x", "valueString": "y"}]},
    "multipleBirthInteger": 2,
    "deceasedBoolean": False,
}


@pytest.mark.parametrize(
    "expression",
    [
        "name.given",
        "name.family | name.family",
        "name.given.count() = 2",
        "name.where(family = 'Byron').exists()",
        "name.all(family.exists())",
        "name.select(given).first()",
        "name.given.tail()",
        "birthDate.hasValue() and birthDate.extension.exists()",
        "multipleBirth.exists() and multipleBirth = 2",
        "deceased = false",
        "name.family.isDistinct()",
        "'a\\'b' + 'c'",
        "(name.count() > 1) implies name.first().family.startsWith('Ki')",
        "name[1].family.contains('yr')",
        "iif(name.exists(), 'yes', 'no')",
        "multipleBirth is integer",
        "name[1].family",
        "name.family.combine(name.family).count()",
        "name.family.intersect('King' | 'Other')",
        "'King' in name.family",
        "name.family contains 'Byron'",
        "birthDate < '1900'",
        "name.given.first().matches('^A')",
        "name.first().family.substring(1, 2)",
        "name.given.first().length() > 3 xor false",
        "%resource.birthDate.exists()",
        "children().count() > 3",
        "descendants().where(family = 'Byron').exists()",
    ],
)
def test_fast_path_matches_the_full_engine(expression: str) -> None:
    try:
        result = fast(expression, PATIENT)
    except Fallback:
        pytest.skip("deferred to the full engine")
    assert result == full(expression, PATIENT), expression


def test_fast_path_member_of_uses_the_lookup() -> None:
    codes = {("http://loinc.org", "1234-5")}
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "1234-5"}]},
    }
    assert fast("code.memberOf('http://x/vs')", obs, lambda url: codes) == [True]
    assert fast("status.memberOf('http://x/vs')", obs, lambda url: codes) == [False]
    with pytest.raises(Fallback):
        fast("code.memberOf('http://x/vs')", obs, lambda url: None)


timestamps = st.datetimes(
    min_value=__import__("datetime").datetime(1990, 1, 1),
    max_value=__import__("datetime").datetime(2030, 1, 1),
)
offsets = st.sampled_from(["Z", "+01:00", "-05:00", "+05:30"])


@settings(max_examples=150, deadline=None)
@given(a=timestamps, b=timestamps, za=offsets, zb=offsets)
def test_fast_path_compares_instants_across_time_zones(a: Any, b: Any, za: str, zb: str) -> None:
    from datetime import datetime, timedelta

    def text(d: datetime, z: str) -> str:
        return d.strftime("%Y-%m-%dT%H:%M:%S") + z

    def utc(d: datetime, z: str) -> datetime:
        if z == "Z":
            return d
        sign = 1 if z[0] == "+" else -1
        return d - sign * timedelta(hours=int(z[1:3]), minutes=int(z[4:6]))

    period = {
        "resourceType": "Encounter",
        "period": {"start": text(a, za), "end": text(b, zb)},
    }
    expected = utc(a, za) <= utc(b, zb)
    assert fast("period.start <= period.end", period) == [expected]


@settings(max_examples=100, deadline=None)
@given(
    a=st.dates(min_value=__import__("datetime").date(1900, 1, 1)),
    b=st.dates(min_value=__import__("datetime").date(1900, 1, 1)),
    cut=st.sampled_from([4, 7, 10]),
)
def test_fast_path_compares_dates_of_any_precision(a: Any, b: Any, cut: int) -> None:
    left, right = a.isoformat(), b.isoformat()[:cut]
    period = {"resourceType": "Encounter", "period": {"start": left, "end": right}}
    result = fast("period.start < period.end", period)
    if left[:cut] != right:
        assert result == [left[:cut] < right]
    elif cut == 10:
        assert result == [False]
    else:
        assert result == []  # equal as far as the less precise goes: unknown


# --------------------------------------------------------------------------- cost


def _median_us(fn: Any, resource: dict[str, Any], n: int = 50) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn(resource)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def test_cost_of_base_and_invariants_for_typical_resources() -> None:
    """Base structure + invariants stay well under a millisecond for typical
    resources (figures printed with ``pytest -s``; the bound is loose so that a busy
    machine does not fail it)."""
    rows = []
    for rt, id in [
        ("Patient", "example"),
        ("Observation", "example"),
        ("Encounter", "example"),
        ("Condition", "example"),
        ("Procedure", "example"),
        ("Goal", "example"),
    ]:
        r = example(rt, id)
        check_invariants(r)  # warm the caches
        base = _median_us(validate_resource, r)
        invariants = _median_us(check_invariants, r)
        rows.append((f"{rt}/{id}", base, invariants))
        print(f"{rt}/{id}: base {base:.0f} us, invariants {invariants:.0f} us")
    assert statistics.median(b + i for _, b, i in rows) < 3000


def _iter_ids() -> Iterator[str]:
    yield from (c.key for c in definitions.base_constraints())


def test_covered_and_native_invariants_exist_in_the_base() -> None:
    known = set(_iter_ids())
    assert set(COVERED_BY_STRUCTURE) <= known
    assert set(NATIVE) <= known
