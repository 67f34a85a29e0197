"""Index extraction: from a resource, the typed index entries of its search parameters.

For each parameter of the resource's type, the parameter's FHIRPath expression is
evaluated (compiled to a fast path walker by :mod:`fhir_server.search.paths` when it is
in the common subset, otherwise with the general FHIRPath engine) and each value found
is turned into entries by the parameter's type:

==========  ===========================================================================
string      ``(code, normalised, exact, grp)`` -- HumanName and Address give one entry per
            part (family, given, prefix, suffix, text / line, city, district, state,
            postalCode, country, text)
token       ``(code, system, code, text, grp)`` -- from code, Coding, CodeableConcept
            (one per coding, plus the text), Identifier, ContactPoint, boolean, string,
            uri, id; ``text`` (normalised) serves ``:text``. Identifiers with a type also
            give ``(code + ':of-type', type system, type code + '|' + value)`` entries.
reference   ``(code, type, id, version, url, identifier system, identifier value, grp)``
            -- ``url`` is set for absolute/canonical/urn references (None for relative
            ``Type/id``); canonical ``url|version`` is split
date        ``(code, lo, hi, grp)`` -- microseconds since the epoch (UTC), closed range
            from the value's precision; Period, Timing (events, bounds) give their span
number      ``(code, lo, hi, grp)`` -- a point (lo == hi) or a Range's bounds
quantity    ``(code, lo, hi, system, code, unit, grp)`` -- Quantity (and Age, Duration,
            Money...) as a point, Range as its bounds
uri         ``(code, value, grp)``
composite   the components' entries under the codes ``code#0``, ``code#1``..., the
            entries of one composite value sharing one ``grp`` number
==========  ===========================================================================

``grp`` is None except for composite components.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from typing import Any

from fhir_server.search import model, values
from fhir_server.search.paths import Memo, Typed, compile_path
from fhir_server.search.registry import Registry, SearchParam, default_registry

log = logging.getLogger(__name__)

StringRow = tuple[str, str, str, int | None]
TokenRow = tuple[str, str | None, str | None, str | None, int | None]
RefRow = tuple[
    str, str | None, str | None, str | None, str | None, str | None, str | None, int | None
]
DateRow = tuple[str, int, int, int | None]
NumberRow = tuple[str, float, float, int | None]
QuantityRow = tuple[str, float, float, str | None, str | None, str | None, int | None]
UriRow = tuple[str, str, int | None]

INF = float("inf")

# Parameters answered from the resource table itself.
NOT_INDEXED = frozenset({"_id"})


@dataclass(slots=True)
class IndexEntries:
    strings: set[StringRow] = field(default_factory=set)
    tokens: set[TokenRow] = field(default_factory=set)
    refs: set[RefRow] = field(default_factory=set)
    dates: set[DateRow] = field(default_factory=set)
    numbers: set[NumberRow] = field(default_factory=set)
    quantities: set[QuantityRow] = field(default_factory=set)
    uris: set[UriRow] = field(default_factory=set)

    def count(self) -> int:
        return (
            len(self.strings)
            + len(self.tokens)
            + len(self.refs)
            + len(self.dates)
            + len(self.numbers)
            + len(self.quantities)
            + len(self.uris)
        )


# --------------------------------------------------------------------------- typing


def _unwrap_extension(value: Any) -> Typed | None:
    """An Extension's value[x] with its type."""
    if not isinstance(value, dict):
        return None
    for k, v in value.items():
        if k.startswith("value") and len(k) > 5:
            return v, model.choice_type_name(k[5:])
    return None


def guess_type(value: Any) -> str:
    """The likely FHIR type of a value from the general FHIRPath engine (no type info)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float | Decimal):
        return "decimal"
    if isinstance(value, str):
        if values.date_range(value) is not None and value[:1].isdigit():
            return "dateTime"
        return "string"
    if isinstance(value, dict):
        if "resourceType" in value:
            return str(value["resourceType"])
        if "coding" in value:
            return "CodeableConcept"
        if "reference" in value or ("identifier" in value and "display" in value):
            return "Reference"
        if "start" in value or "end" in value:
            return "Period"
        if "low" in value or "high" in value:
            return "Range"
        if "family" in value or "given" in value:
            return "HumanName"
        if "line" in value or "city" in value or "postalCode" in value:
            return "Address"
        if "value" in value and ("unit" in value or "currency" in value):
            return "Quantity"
        if "event" in value or "repeat" in value:
            return "Timing"
        if "code" in value:
            return "Coding"
        if "value" in value:
            return "Identifier"
        if "url" in value:
            return "Extension"
    return "string"


# --------------------------------------------------------------------------- converters


def _strings(value: Any, t: str, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, dict):
        if t == "HumanName":
            keys: tuple[str, ...] = ("family", "given", "prefix", "suffix", "text")
        elif t == "Address":
            keys = ("line", "city", "district", "state", "postalCode", "country", "text")
        elif t == "CodeableConcept":
            if isinstance(value.get("text"), str):
                out.append(value["text"])
            for c in value.get("coding", ()):
                if isinstance(c, dict) and isinstance(c.get("display"), str):
                    out.append(c["display"])
            return
        elif t == "Extension":
            inner = _unwrap_extension(value)
            if inner is not None:
                _strings(inner[0], inner[1], out)
            return
        else:
            keys = tuple(k for k, v in value.items() if isinstance(v, str) and k != "id")
        for k in keys:
            v = value.get(k)
            if isinstance(v, str):
                out.append(v)
            elif isinstance(v, list):
                out.extend(x for x in v if isinstance(x, str))


def _norm_text(text: Any) -> str | None:
    return values.normalize(text) if isinstance(text, str) and text else None


def _str_or_none(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


@lru_cache(maxsize=16384)
def implied_system(path: str, code: str) -> str | None:
    """The code system of a ``code`` element's value, from its required binding."""
    from fhir_server import definitions

    try:
        element = definitions.type_definition(path.partition(".")[0]).elements.get(path)
    except (KeyError, ValueError):
        return None
    url = element.required_binding if element is not None else None
    pairs = definitions.value_set_codes(url) if url else None
    if not pairs:
        return None
    systems = {s for s, c in pairs if c == code}
    return systems.pop() if len(systems) == 1 else None


TokenPart = tuple[str, str | None, str | None, str | None]  # (code suffix, system, code, text)


def _part(out: list[TokenPart], suffix: str, system: Any, value: Any, text: str | None) -> None:
    value = _str_or_none(value)
    if value is None and text is None:
        return
    out.append((suffix, _str_or_none(system), value, text))


def token_parts(value: Any, t: str, out: list[TokenPart]) -> None:
    """The token entries of a value, without parameter code and group."""
    if isinstance(value, bool):
        out.append(("", None, "true" if value else "false", None))
    elif isinstance(value, str):
        if value:
            system = implied_system(t[5:], value) if t.startswith("code@") else None
            out.append(("", system, value, None))
    elif isinstance(value, int | Decimal):
        out.append(("", None, str(value), None))
    elif isinstance(value, dict):
        if t == "CodeableConcept":
            for c in value.get("coding", ()):
                if isinstance(c, dict):
                    _part(out, "", c.get("system"), c.get("code"), _norm_text(c.get("display")))
            text = _norm_text(value.get("text"))
            if text is not None:
                out.append(("", None, None, text))
        elif t == "Coding":
            _part(out, "", value.get("system"), value.get("code"), _norm_text(value.get("display")))
        elif t == "Identifier":
            id_type = value.get("type")
            type_text = None
            v = _str_or_none(value.get("value"))
            if isinstance(id_type, dict):
                type_text = _norm_text(id_type.get("text"))
                if v is not None:
                    for c in id_type.get("coding", ()):
                        if isinstance(c, dict) and _str_or_none(c.get("code")):
                            _part(out, ":of-type", c.get("system"), f"{c['code']}|{v}", None)
            _part(out, "", value.get("system"), v, type_text)
        elif t == "ContactPoint":
            _part(out, "", value.get("system"), value.get("value"), None)
        elif t == "Extension":
            inner = _unwrap_extension(value)
            if inner is not None:
                token_parts(inner[0], inner[1], out)
        elif t == "Reference":
            ident = value.get("identifier")
            if isinstance(ident, dict):
                token_parts(ident, "Identifier", out)
        elif model.is_a(t, "Quantity"):
            _part(out, "", value.get("system"), value.get("code"), _norm_text(value.get("unit")))


# Per-extraction cache of converted values: id(value) -> (value, parts); the value is
# kept so that a recycled id() can never return another value's parts.
Conversions = dict[int, tuple[Any, list[TokenPart]]]


def _tokens(
    value: Any, t: str, code: str, grp: int | None, out: set[TokenRow], cache: Conversions
) -> None:
    if isinstance(value, dict):
        hit = cache.get(id(value))
        if hit is not None and hit[0] is value:
            parts = hit[1]
        else:
            parts = []
            token_parts(value, t, parts)
            cache[id(value)] = (value, parts)
    else:
        parts = []
        token_parts(value, t, parts)
    for suffix, system, c, text in parts:
        out.add((code + suffix if suffix else code, system, c, text, grp))


def _parse_reference(text: str) -> tuple[str | None, str | None, str | None, str | None]:
    """(type, id, version, absolute url) of a (non-contained) reference string."""
    version = None
    base = text
    parts = text.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        version = parts[-1]
        parts = parts[:-2]
        base = "/".join(parts)
    absolute = "://" in text or text.startswith("urn:")
    if len(parts) >= 2 and model.is_resource_type(parts[-2]) and parts[-1]:
        return parts[-2], parts[-1], version, (base if absolute else None)
    if absolute:
        return None, None, version, base
    return None, text, version, None


_URI_TYPES = frozenset(("canonical", "uri", "url", "oid", "uuid"))


def _refs(value: Any, t: str, code: str, grp: int | None, out: set[RefRow]) -> None:
    if isinstance(value, str):
        if not value or value.startswith("#"):
            return  # contained resources are not searchable
        if t in _URI_TYPES:  # canonical: url|version, absolute or relative
            canonical, _, version = value.partition("|")
            if "://" in canonical or canonical.startswith("urn:"):
                out.add((code, None, None, version or None, canonical, None, None, grp))
            else:
                ctype, cid, _, _ = _parse_reference(canonical)
                out.add((code, ctype, cid, version or None, None, None, None, grp))
        else:
            out.add((code, *_parse_reference(value), None, None, grp))
        return
    if not isinstance(value, dict):
        return
    if t == "Extension":
        inner = _unwrap_extension(value)
        if inner is not None:
            _refs(inner[0], inner[1], code, grp, out)
        return
    if "resourceType" in value:  # a resource (e.g. Bundle.entry.resource)
        res_id = value.get("id")
        if isinstance(res_id, str):
            out.add((code, value["resourceType"], res_id, None, None, None, None, grp))
        return
    ref = value.get("reference")
    rt: str | None = None
    rid: str | None = None
    ver: str | None = None
    url: str | None = None
    if isinstance(ref, str):
        if ref.startswith("#"):
            return  # contained resources are not searchable
        rt, rid, ver, url = _parse_reference(ref)
    ident = value.get("identifier")
    id_system = id_value = None
    if isinstance(ident, dict):
        id_system, id_value = ident.get("system"), ident.get("value")
    if rt is None and isinstance(value.get("type"), str):
        rt = value["type"]
    if rt is None and rid is None and url is None and id_value is None:
        return
    out.add((code, rt, rid, ver, url, id_system, id_value, grp))


def _date_span(value: Any, t: str) -> tuple[int, int] | None:
    if isinstance(value, str):
        return values.date_range(value)
    if not isinstance(value, dict):
        return None
    if t == "Period" or (t not in ("Timing", "Extension") and ("start" in value or "end" in value)):
        start, end = value.get("start"), value.get("end")
        lo = values.date_range(start) if isinstance(start, str) else None
        hi = values.date_range(end) if isinstance(end, str) else None
        if lo is None and hi is None:
            return None
        return (lo[0] if lo else values.MIN_TIME, hi[1] if hi else values.MAX_TIME)
    if t == "Timing":
        spans = [values.date_range(e) for e in value.get("event", ()) if isinstance(e, str)]
        repeat = value.get("repeat")
        if isinstance(repeat, dict) and isinstance(repeat.get("boundsPeriod"), dict):
            spans.append(_date_span(repeat["boundsPeriod"], "Period"))
        found = [s for s in spans if s is not None]
        if not found:
            return None
        return min(s[0] for s in found), max(s[1] for s in found)
    if t == "Extension":
        inner = _unwrap_extension(value)
        return _date_span(inner[0], inner[1]) if inner else None
    return None


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | Decimal):
        return float(value)
    return None


def _numbers(value: Any, t: str, code: str, grp: int | None, out: set[NumberRow]) -> None:
    v = _num(value)
    if v is not None:
        out.add((code, v, v, grp))
    elif isinstance(value, dict):
        if t == "Range" or "low" in value or "high" in value:
            low, high = value.get("low"), value.get("high")
            lo = _num(low.get("value")) if isinstance(low, dict) else None
            hi = _num(high.get("value")) if isinstance(high, dict) else None
            if lo is not None or hi is not None:
                out.add((code, -INF if lo is None else lo, INF if hi is None else hi, grp))
        elif t == "Extension":
            inner = _unwrap_extension(value)
            if inner is not None:
                _numbers(inner[0], inner[1], code, grp, out)
        else:
            v = _num(value.get("value"))
            if v is not None:
                out.add((code, v, v, grp))


def _quantities(value: Any, t: str, code: str, grp: int | None, out: set[QuantityRow]) -> None:
    if not isinstance(value, dict):
        v = _num(value)
        if v is not None:
            out.add((code, v, v, None, None, None, grp))
        return
    if t == "Extension":
        inner = _unwrap_extension(value)
        if inner is not None:
            _quantities(inner[0], inner[1], code, grp, out)
        return
    if t == "Range" or "low" in value or "high" in value:
        low, high = value.get("low"), value.get("high")
        lo = _num(low.get("value")) if isinstance(low, dict) else None
        hi = _num(high.get("value")) if isinstance(high, dict) else None
        if lo is None and hi is None:
            return
        unit_src = low if isinstance(low, dict) and lo is not None else high
        assert isinstance(unit_src, dict)
        out.add(
            (
                code,
                -INF if lo is None else lo,
                INF if hi is None else hi,
                unit_src.get("system"),
                unit_src.get("code"),
                unit_src.get("unit"),
                grp,
            )
        )
        return
    v = _num(value.get("value"))
    if v is None:
        return
    if t == "Money" or "currency" in value:
        out.add((code, v, v, "urn:iso:std:iso:4217", value.get("currency"), None, grp))
    else:
        out.add((code, v, v, value.get("system"), value.get("code"), value.get("unit"), grp))


def _uris(value: Any, t: str, code: str, grp: int | None, out: set[UriRow]) -> None:
    if isinstance(value, str):
        out.add((code, value, grp))
    elif isinstance(value, dict):
        if t == "Extension":
            inner = _unwrap_extension(value)
            if inner is not None:
                _uris(inner[0], inner[1], code, grp, out)
        elif t == "Reference" and isinstance(value.get("reference"), str):
            out.add((code, value["reference"], grp))


def add_values(
    ptype: str,
    code: str,
    items: list[Typed],
    grp: int | None,
    entries: IndexEntries,
    cache: Conversions | None = None,
) -> None:
    """Turn typed values into entries of a parameter of type ``ptype``."""
    if ptype == "token":
        conv = cache if cache is not None else {}
        for v, t in items:
            _tokens(v, t, code, grp, entries.tokens, conv)
    elif ptype == "string":
        texts: list[str] = []
        for v, t in items:
            _strings(v, t, texts)
        for s in texts:
            if s:
                entries.strings.add((code, values.normalize(s), s, grp))
    elif ptype == "reference":
        for v, t in items:
            _refs(v, t, code, grp, entries.refs)
    elif ptype == "date":
        for v, t in items:
            span = _date_span(v, t)
            if span is not None:
                entries.dates.add((code, span[0], span[1], grp))
    elif ptype == "number":
        for v, t in items:
            _numbers(v, t, code, grp, entries.numbers)
    elif ptype == "quantity":
        for v, t in items:
            _quantities(v, t, code, grp, entries.quantities)
    elif ptype == "uri":
        for v, t in items:
            _uris(v, t, code, grp, entries.uris)


# --------------------------------------------------------------------------- plans

Evaluate = Callable[[Any, list[Typed], Memo], list[Typed]]


def _fallback(expression: str) -> Evaluate:
    from fhir_server.fhirpath import compile_expression

    try:
        fn = compile_expression(expression)
    except Exception:  # an expression the engine cannot compile indexes nothing
        log.warning("search expression not supported: %s", expression)

        def nothing(resource: Any, context: list[Typed], memo: Memo) -> list[Typed]:
            return []

        return nothing

    def run(resource: Any, context: list[Typed], memo: Memo) -> list[Typed]:
        out: list[Typed] = []
        for item, _ in context:
            try:
                found = fn(item, {})
            except Exception:
                log.debug("search expression failed: %s", expression, exc_info=True)
                continue
            for v in found:
                if not isinstance(v, dict | list | str | bool | int | float | Decimal):
                    v = str(v)
                out.append((v, guess_type(v)))
        return out

    return run


def compile_evaluator(expression: str, resource_type: str | None) -> Evaluate:
    fast = compile_path(expression, resource_type)
    return fast if fast is not None else _fallback(expression)


@dataclass(frozen=True, slots=True)
class _ComponentPlan:
    code: str
    type: str
    evaluate: Evaluate


@dataclass(frozen=True, slots=True)
class _ParamPlan:
    code: str
    type: str
    evaluate: Evaluate
    components: tuple[_ComponentPlan, ...] = ()
    # Top-level elements the expression starts from; when a resource has none of them
    # the parameter has no value there and is not evaluated. None: always evaluate.
    roots: frozenset[str] | None = None


_PART_START = re.compile(r"\(*\s*([A-Za-z]+)\.([A-Za-z]+)")
# expressions that can yield a value without their root element (e.g. `X.exists() and
# X != false` gives false for a missing X): never skipped
_NOT_ROOTED = ("exists", "empty", "not(", "iif", "count", "%", "$", "today", "now")


def _union_parts(expression: str) -> list[str]:
    parts: list[str] = []
    depth, start, quoted = 0, 0, False
    for i, ch in enumerate(expression):
        if ch == "'":
            quoted = not quoted
        elif quoted:
            continue
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(expression[start:i])
            start = i + 1
    parts.append(expression[start:])
    return parts


def expression_roots(expression: str, resource_type: str) -> frozenset[str] | None:
    """The top-level element names a search expression reads on ``resource_type``."""
    if any(word in expression for word in _NOT_ROOTED):
        return None
    roots: set[str] = set()
    for part in _union_parts(expression):
        m = _PART_START.match(part.strip())
        if m is None:
            return None
        rtype, first = m.groups()
        if rtype in (resource_type, "Resource", "DomainResource"):
            roots.add(first)
        elif not rtype[:1].isupper():
            return None
        # a part rooted on another resource type has no value on this one
    return frozenset(roots)


def _stems(resource: dict[str, Any]) -> set[str]:
    """Element names present: each key, and for a choice (`valueQuantity`) its stem."""
    stems: set[str] = set()
    for key in resource:
        stems.add(key)
        for i in range(1, len(key)):
            if key[i].isupper():
                stems.add(key[:i])
                break
    return stems


def _plan_for(registry: Registry, resource_type: str) -> tuple[_ParamPlan, ...]:
    plans: list[_ParamPlan] = []
    for code, p in sorted(registry.for_type(resource_type).items()):
        if not p.indexable or code in NOT_INDEXED or p.expression is None:
            continue
        comps: list[_ComponentPlan] = []
        if p.type == "composite":
            ok = True
            for i, c in enumerate(p.components):
                cp = registry.by_url(c.definition)
                if cp is None or cp.type in ("composite", "special"):
                    ok = False
                    break
                comps.append(
                    _ComponentPlan(f"{code}#{i}", cp.type, compile_evaluator(c.expression, None))
                )
            if not ok or not comps:
                continue
        plans.append(
            _ParamPlan(
                code,
                p.type,
                compile_evaluator(p.expression, resource_type),
                tuple(comps),
                expression_roots(p.expression, resource_type),
            )
        )
    return tuple(plans)


def _param_plan(p: SearchParam, registry: Registry, resource_type: str) -> _ParamPlan | None:
    for plan in _plans(registry, resource_type):
        if plan.code == p.code:
            return plan
    return None


_plan_cache: dict[tuple[int, int, str], tuple[_ParamPlan, ...]] = {}


def _plans(registry: Registry, resource_type: str) -> tuple[_ParamPlan, ...]:
    key = (id(registry), registry.version, resource_type)
    plans = _plan_cache.get(key)
    if plans is None:
        plans = _plan_for(registry, resource_type)
        _plan_cache[key] = plans
    return plans


def extract(resource: dict[str, Any], registry: Registry | None = None) -> IndexEntries:
    """All index entries of a resource."""
    reg = registry if registry is not None else default_registry()
    rt = resource.get("resourceType")
    entries = IndexEntries()
    if not isinstance(rt, str):
        return entries
    root: list[Typed] = [(resource, rt)]
    memo: Memo = {}
    conv: Conversions = {}
    grp = 0
    present = _stems(resource)
    for plan in _plans(reg, rt):
        if plan.roots is not None and present.isdisjoint(plan.roots):
            continue
        items = plan.evaluate(resource, root, memo)
        if not items:
            continue
        if not plan.components:
            add_values(plan.type, plan.code, items, None, entries, conv)
            continue
        for item in items:
            if _add_composite(resource, item, plan.components, grp + 1, entries, memo, conv):
                grp += 1
    return entries


_TABLE_OF_TYPE = {
    "string": "strings",
    "token": "tokens",
    "reference": "refs",
    "date": "dates",
    "number": "numbers",
    "quantity": "quantities",
    "uri": "uris",
}


def _rows_of(entries: IndexEntries, ptype: str) -> set[Any]:
    rows: set[Any] = getattr(entries, _TABLE_OF_TYPE[ptype])
    return rows


def _add_composite(
    resource: dict[str, Any],
    item: Typed,
    components: tuple[_ComponentPlan, ...],
    grp: int,
    entries: IndexEntries,
    memo: Memo,
    conv: Conversions,
) -> bool:
    """Add one composite value's component entries if every component has a value."""
    part = IndexEntries()
    ctx = [item]
    for comp in components:
        rows = _rows_of(part, comp.type)
        before = len(rows)
        add_values(comp.type, comp.code, comp.evaluate(resource, ctx, memo), grp, part, conv)
        if len(rows) == before:
            return False
    entries.strings |= part.strings
    entries.tokens |= part.tokens
    entries.refs |= part.refs
    entries.dates |= part.dates
    entries.numbers |= part.numbers
    entries.quantities |= part.quantities
    entries.uris |= part.uris
    return True


def extract_param(
    resource: dict[str, Any], code: str, registry: Registry | None = None
) -> IndexEntries:
    """The index entries of one parameter of a resource (for tests and tools)."""
    reg = registry if registry is not None else default_registry()
    rt = resource.get("resourceType")
    entries = IndexEntries()
    if not isinstance(rt, str):
        return entries
    p = reg.get(rt, code)
    if p is None:
        return entries
    plan = _param_plan(p, reg, rt)
    if plan is None:
        return entries
    root: list[Typed] = [(resource, rt)]
    memo: Memo = {}
    items = plan.evaluate(resource, root, memo)
    if not plan.components:
        add_values(plan.type, plan.code, items, None, entries)
    else:
        grp = 0
        for item in items:
            if _add_composite(resource, item, plan.components, grp + 1, entries, memo, {}):
                grp += 1
    return entries
