"""Parse search query pairs into the IR (:class:`~fhir_server.search.query.SearchQuery`).

- repeated parameters are AND-ed, comma-separated values OR-ed; ``\\,`` ``\\$`` ``\\|``
  and ``\\\\`` escape the separators;
- prefixes ``eq ne gt lt ge le sa eb ap`` on number, date and quantity values;
- modifiers: ``:missing`` (all types), ``:exact`` ``:contains`` (string), ``:not``
  ``:text`` ``:of-type`` ``:in`` ``:not-in`` ``:above`` ``:below`` (token, through the
  local terminology), ``:[type]`` ``:identifier`` (reference), ``:above``
  ``:below`` (uri);
- ``_text`` and ``_content`` (full text, see :mod:`fhir_server.search.fulltext`);
- chains (``subject:Patient.name=x``, several levels) and ``_has`` (nested too);
- result parameters ``_sort _count _cursor _total _include _revinclude (:iterate)
  _summary _elements _type``.

A parameter that is unknown, unsupported or has an invalid value is an error in
strict mode (a 400 whose OperationOutcome names every such parameter); otherwise it is
ignored and listed in ``SearchQuery.ignored``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import cache
from typing import Literal, cast

from fhir_server.errors import FhirError, Issue
from fhir_server.search import fulltext, model, values
from fhir_server.search.query import (
    PREFIXES,
    ChainCond,
    Clause,
    CompositeCond,
    Condition,
    DateCond,
    HasCond,
    IdCond,
    Include,
    MissingCond,
    NumberCond,
    Param,
    Prefix,
    ReferenceCond,
    SearchQuery,
    SortKey,
    StringCond,
    SummaryMode,
    TextCond,
    TokenCond,
    TotalMode,
    UriCond,
)
from fhir_server.search.registry import Registry, SearchParam, default_registry

DEFAULT_COUNT = 20
MAX_COUNT = 1000
MAX_CHAIN_DEPTH = 4

UriMode = Literal["eq", "above", "below"]
_IGNORED_SILENTLY = frozenset({"_format", "_pretty"})
_RESOURCE_COLUMNS = frozenset({"_id", "_lastUpdated"})
_FULL_TEXT = frozenset({"_text", "_content"})
_SORTABLE = frozenset({"string", "token", "date", "number", "quantity", "uri", "reference"})


class _Invalid(Exception):
    """A parameter that cannot be used (unknown, unsupported or with a bad value)."""

    def __init__(self, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.code = code


class Parser:
    def __init__(
        self,
        registry: Registry,
        base_url: str | None = None,
        now_us: int | None = None,
    ) -> None:
        self.registry = registry
        self.base_url = base_url.rstrip("/") if base_url else None
        self.now_us = now_us if now_us is not None else int(time.time() * 1_000_000)

    # ------------------------------------------------------------------ parameters

    def params_of(self, types: Sequence[str]) -> dict[str, SearchParam]:
        if len(types) == 1:
            return self.registry.for_type(types[0])
        return self.registry.common(types)

    def lookup(self, types: Sequence[str], code: str) -> tuple[SearchParam, Param]:
        p = self.params_of(types).get(code)
        if p is None:
            where = ", ".join(types) if types else "all resource types"
            raise _Invalid(f"Unknown search parameter '{code}' for {where}", "not-supported")
        return p, Param(code, p.type, tuple(types))

    def conditions(
        self, types: tuple[str, ...], name: str, raw: str, depth: int = 0
    ) -> tuple[Condition, ...]:
        """The OR-ed conditions of one ``name=raw`` pair on resources of ``types``."""
        if depth > MAX_CHAIN_DEPTH:
            raise _Invalid("Chains and _has are limited to 4 levels", "too-costly")
        if name.startswith("_has:"):
            return (self.has(types, name, raw, depth),)
        head, dot, rest = name.partition(".")
        code, _, modifier = head.partition(":")
        if dot:
            return (self.chain(types, code, modifier, rest, raw, depth),)
        sp, param = self.lookup(types, code)
        if code in _FULL_TEXT:
            if modifier:
                raise _Invalid(f"Modifier ':{modifier}' is not supported on '{code}'")
            unindexed = [t for t in types if not fulltext.indexed(t)]
            if unindexed:
                raise _Invalid(
                    f"'{code}' is not supported for {', '.join(unindexed)}"
                    " (its records are not full-text indexed; search its other parameters)",
                    "not-supported",
                )
            return tuple(self.full_text(code, p) for p in values.split_escaped(raw, ","))
        if modifier == "missing":
            if raw not in ("true", "false"):
                raise _Invalid(f"'{name}' must be true or false")
            if code == "_id":
                return (IdCond((), negate=raw == "false"),)
            if sp.type == "composite":
                first = self.registry.by_url(sp.components[0].definition) if sp.components else None
                if first is None:
                    raise _Invalid(f"Search parameter '{code}' is not supported", "not-supported")
                param = Param(f"{code}#0", first.type, param.resource_types)
            return (MissingCond(param, raw == "true"),)
        if sp.type == "special" or (not sp.indexable and code not in _RESOURCE_COLUMNS):
            raise _Invalid(f"Search parameter '{code}' is not supported", "not-supported")
        parts = values.split_escaped(raw, ",")
        if code == "_id":
            if modifier not in ("", "not"):
                raise _Invalid(f"Modifier ':{modifier}' is not supported on _id")
            ids = tuple(values.unescape(p) for p in parts)
            return (IdCond(ids, negate=modifier == "not"),)
        if sp.type == "composite":
            if modifier:
                raise _Invalid(f"Modifier ':{modifier}' is not supported on '{code}'")
            return tuple(self.composite(sp, param, p) for p in parts)
        return tuple(self.value(sp, param, modifier, p) for p in parts)

    @staticmethod
    def full_text(code: str, raw: str) -> TextCond:
        found = tuple(fulltext.words(values.unescape(raw)))
        if not found:
            raise _Invalid(f"'{code}' needs at least one word (letters or digits)")
        return TextCond("text" if code == "_text" else "content", found)

    def value(self, sp: SearchParam, param: Param, modifier: str, raw: str) -> Condition:
        t = sp.type
        if t == "string":
            if modifier not in ("", "exact", "contains"):
                raise _Invalid(f"Modifier ':{modifier}' is not supported on string '{sp.code}'")
            v = values.unescape(raw)
            if modifier == "exact":
                return StringCond(param, v, "exact")
            return StringCond(param, values.normalize(v), "contains" if modifier else "prefix")
        if t == "token":
            return self.token(sp, param, modifier, raw)
        if t == "reference":
            return self.reference(sp, param, modifier, raw)
        if t == "uri":
            if modifier not in ("", "above", "below"):
                raise _Invalid(f"Modifier ':{modifier}' is not supported on uri '{sp.code}'")
            return UriCond(param, values.unescape(raw), cast(UriMode, modifier or "eq"))
        if modifier:
            raise _Invalid(f"Modifier ':{modifier}' is not supported on {t} '{sp.code}'")
        if t == "date":
            return self.date(param, raw)
        if t == "number":
            return self.number(param, raw)
        if t == "quantity":
            return self.quantity(param, raw)
        raise _Invalid(f"Search parameter '{sp.code}' is not supported", "not-supported")

    @staticmethod
    def prefix(raw: str) -> tuple[Prefix, str]:
        if len(raw) > 2 and raw[:2] in PREFIXES and not raw[:2].isdigit():
            return cast(Prefix, raw[:2]), raw[2:]
        return "eq", raw

    def date(self, param: Param, raw: str) -> DateCond:
        prefix, text = self.prefix(values.unescape(raw))
        span = values.date_range(text)
        if span is None:
            raise _Invalid(f"Invalid date '{raw}' for '{param.code}'")
        lo, hi = span
        if prefix == "ap":
            gap = abs(self.now_us - (lo + hi) // 2) // 10
            lo, hi = lo - gap, hi + gap
        return DateCond(param, prefix, lo, hi)

    def _number(self, param: Param, text: str) -> tuple[Prefix, float, float, float]:
        prefix, text = self.prefix(text)
        d = values.parse_decimal(text)
        if d is None:
            raise _Invalid(f"Invalid number '{text}' for '{param.code}'")
        lo, hi = values.number_range(d)
        v = float(d)
        if prefix == "ap":
            margin = abs(v) / 10
            lo, hi = min(lo, v - margin), max(hi, v + margin)
        return prefix, v, lo, hi

    def number(self, param: Param, raw: str) -> NumberCond:
        prefix, v, lo, hi = self._number(param, values.unescape(raw))
        return NumberCond(param, prefix, v, lo, hi)

    def quantity(self, param: Param, raw: str) -> NumberCond:
        parts = [values.unescape(p) for p in values.split_escaped(raw, "|")]
        if len(parts) not in (1, 3):
            raise _Invalid(f"Invalid quantity '{raw}' for '{param.code}'")
        prefix, v, lo, hi = self._number(param, parts[0])
        system = parts[1] or None if len(parts) == 3 else None
        code = parts[2] or None if len(parts) == 3 else None
        return NumberCond(param, prefix, v, lo, hi, system, code)

    def token(self, sp: SearchParam, param: Param, modifier: str, raw: str) -> TokenCond:
        if modifier == "text":
            return TokenCond(param, None, None, text=values.normalize(values.unescape(raw)))
        if modifier == "of-type":
            parts = [values.unescape(p) for p in values.split_escaped(raw, "|")]
            if len(parts) != 3 or not parts[1] or not parts[2]:
                raise _Invalid(f"'{sp.code}:of-type' needs system|code|value")
            p = Param(param.code + ":of-type", param.type, param.resource_types)
            return TokenCond(p, parts[0], f"{parts[1]}|{parts[2]}")
        if modifier in ("in", "not-in"):
            return TokenCond(
                param,
                None,
                None,
                negate=modifier == "not-in",
                codes=_value_set(values.unescape(raw)),
            )
        if modifier in ("above", "below"):
            return TokenCond(param, None, None, codes=_hierarchy(modifier, sp.code, raw))
        if modifier not in ("", "not"):
            raise _Invalid(
                f"Modifier ':{modifier}' is not supported on token '{sp.code}'", "not-supported"
            )
        parts = values.split_escaped(raw, "|", 1)
        if len(parts) == 1:
            return TokenCond(param, None, values.unescape(raw), negate=modifier == "not")
        system, code = values.unescape(parts[0]), values.unescape(parts[1])
        if not system and not code:
            raise _Invalid(f"Invalid token '{raw}' for '{sp.code}'")
        return TokenCond(param, system, code or None, negate=modifier == "not")

    def reference(self, sp: SearchParam, param: Param, modifier: str, raw: str) -> ReferenceCond:
        v = values.unescape(raw)
        if modifier == "identifier":
            parts = values.split_escaped(raw, "|", 1)
            if len(parts) == 1:
                return ReferenceCond(param, identifier_value=v, by_identifier=True)
            return ReferenceCond(
                param,
                identifier_system=values.unescape(parts[0]),
                identifier_value=values.unescape(parts[1]) or None,
                by_identifier=True,
            )
        target_type: str | None = None
        if modifier:
            if not model.is_resource_type(modifier):
                raise _Invalid(f"Modifier ':{modifier}' is not supported on reference '{sp.code}'")
            if sp.targets and modifier not in sp.targets:
                raise _Invalid(f"'{sp.code}' cannot refer to {modifier}")
            target_type = modifier
        if not v:
            raise _Invalid(f"Empty reference for '{sp.code}'")
        if self.base_url and v.startswith(self.base_url + "/"):
            v = v[len(self.base_url) + 1 :]
        if "://" in v or v.startswith("urn:"):
            url, _, canonical_version = v.partition("|")
            return ReferenceCond(param, url=url, version=canonical_version or None)
        parts = v.split("/")
        version: str | None = None
        if len(parts) == 4 and parts[2] == "_history":
            version = parts[3]
            parts = parts[:2]
        if len(parts) == 2:
            rt, rid = parts
            if not model.is_resource_type(rt):
                raise _Invalid(f"Unknown resource type in reference '{v}'")
            if target_type is not None and rt != target_type:
                raise _Invalid(f"Reference '{v}' contradicts ':{target_type}'")
            target_type = rt
        elif len(parts) == 1:
            rid = v
            if target_type is None and len(sp.targets) == 1:
                target_type = sp.targets[0]
        else:
            raise _Invalid(f"Invalid reference '{v}' for '{sp.code}'")
        return ReferenceCond(param, target_type=target_type, target_id=rid, version=version)

    def composite(self, sp: SearchParam, param: Param, raw: str) -> CompositeCond:
        parts = values.split_escaped(raw, "$")
        if len(parts) != len(sp.components):
            raise _Invalid(f"'{sp.code}' needs {len(sp.components)} components separated by '$'")
        conds: list[Condition] = []
        for i, (comp, part) in enumerate(zip(sp.components, parts, strict=True)):
            csp = self.registry.by_url(comp.definition)
            if csp is None or csp.type in ("composite", "special"):
                raise _Invalid(f"Search parameter '{sp.code}' is not supported", "not-supported")
            cparam = Param(f"{param.code}#{i}", csp.type, param.resource_types)
            conds.append(self.value(csp, cparam, "", part))
        return CompositeCond(param, tuple(conds))

    def chain(
        self,
        types: tuple[str, ...],
        code: str,
        modifier: str,
        rest: str,
        raw: str,
        depth: int,
    ) -> ChainCond:
        sp, param = self.lookup(types, code)
        if sp.type != "reference":
            raise _Invalid(f"'{code}' is not a reference parameter and cannot be chained")
        if modifier:
            if not model.is_resource_type(modifier):
                raise _Invalid(f"Invalid chain type ':{modifier}'")
            candidates: tuple[str, ...] = (modifier,)
        else:
            candidates = tuple(sp.targets) or tuple(sorted(model.RESOURCE_TYPES))
        inner_code = rest.partition(".")[0].partition(":")[0]
        targets = tuple(t for t in candidates if self.registry.get(t, inner_code) is not None)
        if not targets:
            raise _Invalid(f"No target of '{code}' has a search parameter '{inner_code}'")
        if len({self.registry.get(t, inner_code) for t in targets}) == 1:
            return ChainCond(param, targets, self.conditions(targets, rest, raw, depth + 1))
        # different definitions per target type: each condition is keyed to its type
        inner: list[Condition] = []
        for t in targets:
            inner.extend(self.conditions((t,), rest, raw, depth + 1))
        return ChainCond(param, targets, tuple(inner))

    def has(self, types: tuple[str, ...], name: str, raw: str, depth: int) -> HasCond:
        parts = name.split(":", 3)
        if len(parts) != 4 or not parts[1] or not parts[2] or not parts[3]:
            raise _Invalid(f"Invalid _has parameter '{name}'")
        _, source, ref_code, inner_name = parts
        if not model.is_resource_type(source):
            raise _Invalid(f"Unknown resource type '{source}' in '{name}'")
        ref_sp = self.registry.get(source, ref_code)
        if ref_sp is None or ref_sp.type != "reference":
            raise _Invalid(f"'{ref_code}' is not a reference parameter of {source}")
        ref = Param(ref_code, "reference", (source,))
        return HasCond(source, ref, self.conditions((source,), inner_name, raw, depth + 1))

    # ------------------------------------------------------------------ result parameters

    def sort(self, types: tuple[str, ...], raw: str) -> tuple[SortKey, ...]:
        keys: list[SortKey] = []
        for item in raw.split(","):
            item = item.strip()
            desc = item.startswith("-")
            code = item[1:] if desc else item
            if not code:
                raise _Invalid("Empty _sort key")
            if code in _RESOURCE_COLUMNS:
                keys.append(SortKey(Param(code, "special", types), desc))
                continue
            sp, param = self.lookup(types, code)
            if sp.type not in _SORTABLE or not sp.indexable:
                raise _Invalid(f"Cannot sort on '{code}'")
            keys.append(SortKey(param, desc))
        return tuple(keys)

    def include(self, types: tuple[str, ...], name: str, raw: str) -> Include:
        reverse = name.startswith("_revinclude")
        modifier = name.partition(":")[2]
        if modifier not in ("", "iterate", "recurse"):
            raise _Invalid(f"Unknown modifier '{name}'")
        iterate = modifier in ("iterate", "recurse")
        if raw == "*":
            return Include("*", "*", None, reverse, iterate, ())
        parts = raw.split(":")
        if len(parts) not in (2, 3):
            raise _Invalid(f"Invalid {name} '{raw}'")
        source, code = parts[0], parts[1]
        target = parts[2] if len(parts) == 3 else None
        if not model.is_resource_type(source):
            raise _Invalid(f"Unknown resource type '{source}' in {name}")
        if target is not None and not model.is_resource_type(target):
            raise _Invalid(f"Unknown resource type '{target}' in {name}")
        if not reverse and not iterate and types and source not in types:
            raise _Invalid(f"{name}={raw} does not apply to {', '.join(types)}")
        if code == "*":
            params = tuple(
                Param(c, "reference", (source,))
                for c, p in sorted(self.registry.for_type(source).items())
                if p.type == "reference" and p.indexable
            )
        else:
            sp = self.registry.get(source, code)
            if sp is None or sp.type != "reference":
                raise _Invalid(f"'{code}' is not a reference parameter of {source}")
            params = (Param(code, "reference", (source,)),)
        return Include(source, code, target, reverse, iterate, params)


def _value_set(url: str) -> tuple[tuple[str, str], ...]:
    """The (system, code) pairs of a value set known to the local terminology."""
    from fhir_server import terminology

    members = terminology.value_set_membership(url)
    if members is None:
        raise _Invalid(
            f"Value set '{url}' is not known here or cannot be expanded", "not-supported"
        )
    if not members:
        return (("", ""),)  # matches nothing
    return tuple(sorted(members))


def _hierarchy(modifier: str, code: str, raw: str) -> tuple[tuple[str, str], ...]:
    """``system|code`` and the codes it subsumes (``:below``) or is subsumed by
    (``:above``) in a code system known to the local terminology."""
    from fhir_server import terminology

    parts = values.split_escaped(raw, "|", 1)
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise _Invalid(f"'{code}:{modifier}' needs system|code")
    system, value = values.unescape(parts[0]), values.unescape(parts[1])
    cs = terminology.default().code_system(system)
    if cs is None:
        raise _Invalid(f"Code system '{system}' is not known here", "not-supported")
    concept = cs.get(value)
    if concept is None:
        raise _Invalid(f"Code '{value}' is not in '{system}'")
    related = (
        cs.descendants(concept.code) if modifier == "below" else sorted(cs.ancestors(concept.code))
    )
    return tuple((system, c) for c in (concept.code, *related))


@cache
def _compartment_members(ctype: str) -> dict[str, tuple[str, ...]] | None:
    """The resource types of the compartment ``ctype`` and their parameters (None: no
    such compartment); read once, not on every compartment search."""
    from fhir_server import definitions

    for cd in definitions.compartment_definitions():
        if cd.get("code") == ctype:
            return {
                entry["code"]: tuple(entry.get("param", ()))
                for entry in cd.get("resource", ())
                if isinstance(entry.get("code"), str)
            }
    return None


def _compartment_clause(parser: Parser, resource_type: str, compartment: tuple[str, str]) -> Clause:
    ctype, cid = compartment
    members = _compartment_members(ctype)
    if members is None:
        raise FhirError.of(400, "invalid", f"Unknown compartment '{ctype}'")
    if resource_type not in members:
        raise FhirError.of(400, "invalid", f"{resource_type} is not in the {ctype} compartment")
    conds: list[Condition] = []
    for code in members[resource_type]:
        sp = parser.registry.get(resource_type, code)
        if sp is None or sp.type != "reference":
            continue
        ref = Param(code, "reference", (resource_type,))
        conds.append(ReferenceCond(ref, target_type=ctype, target_id=cid))
    if resource_type == ctype:
        conds.append(IdCond((cid,)))
    return tuple(conds)


def parse(
    resource_type: str | None,
    params: Sequence[tuple[str, str]],
    *,
    registry: Registry | None = None,
    base_url: str | None = None,
    strict: bool = False,
    compartment: tuple[str, str] | None = None,
    now_us: int | None = None,
) -> SearchQuery:
    """Parse query pairs for a search on ``resource_type`` (None: all types)."""
    parser = Parser(registry or default_registry(), base_url, now_us)
    issues: list[Issue] = []
    ignored: list[str] = []

    def reject(name: str, exc: _Invalid) -> None:
        severity = "error" if strict else "warning"
        code = exc.code if exc.code in ("not-supported", "too-costly") else "invalid"
        issues.append(Issue(severity, code, str(exc), (name,)))  # type: ignore[arg-type]
        if name not in ignored:
            ignored.append(name)

    if resource_type is not None:
        if not model.is_resource_type(resource_type):
            raise FhirError.of(404, "not-supported", f"Unknown resource type '{resource_type}'")
        types: tuple[str, ...] = (resource_type,)
    else:
        types = ()
        for name, raw in params:
            if name == "_type":
                for t in raw.split(","):
                    t = t.strip()
                    if not model.is_resource_type(t):
                        reject(name, _Invalid(f"Unknown resource type '{t}' in _type"))
                    elif t not in types:
                        types += (t,)

    clauses: list[Clause] = []
    sort: tuple[SortKey, ...] = ()
    count = DEFAULT_COUNT
    cursor: str | None = None
    # Without _total the server chooses (search.html#total): an exact count when it is
    # cheap (at most ESTIMATE_CAP matches), none otherwise, so paging a broad search
    # does not recount it on every page.
    total: TotalMode = "estimate"
    includes: list[Include] = []
    summary: SummaryMode | None = None
    elements: tuple[str, ...] = ()
    seen_result: set[str] = set()

    for name, raw in params:
        base_name = name.partition(":")[0]
        try:
            if base_name in _IGNORED_SILENTLY or name == "_type":
                continue
            if base_name in ("_include", "_revinclude"):
                includes.append(parser.include(types, name, raw))
                continue
            if name in ("_sort", "_count", "_cursor", "_total", "_summary", "_elements"):
                if name in seen_result:
                    raise _Invalid(f"'{name}' may only be given once")
                seen_result.add(name)
            if name == "_sort":
                sort = parser.sort(types, raw)
            elif name == "_count":
                if not raw.isdigit():
                    raise _Invalid(f"_count must be a non-negative integer, not '{raw}'")
                count = min(int(raw), MAX_COUNT)
            elif name == "_cursor":
                cursor = raw
            elif name == "_total":
                if raw not in ("none", "estimate", "accurate"):
                    raise _Invalid("_total must be none, estimate or accurate")
                total = cast(TotalMode, raw)
            elif name == "_summary":
                if raw not in ("true", "false", "text", "data", "count"):
                    raise _Invalid("_summary must be true, false, text, data or count")
                summary = cast(SummaryMode, raw)
            elif name == "_elements":
                elements = tuple(e.strip() for e in raw.split(",") if e.strip())
            elif name in ("_contained", "_containedType"):
                if raw not in ("false", "container"):
                    raise _Invalid(f"'{name}={raw}' is not supported", "not-supported")
            else:
                clauses.append(parser.conditions(types, name, raw))
        except _Invalid as exc:
            reject(name, exc)

    if strict and issues:
        raise FhirError(400, tuple(issues))
    if compartment is not None:
        if resource_type is None:
            raise FhirError.of(400, "invalid", "A compartment search needs a resource type")
        clauses.insert(0, _compartment_clause(parser, resource_type, compartment))
    kept = tuple((n, v) for n, v in params if n not in ignored and n != "_cursor")
    return SearchQuery(
        resource_types=types,
        clauses=tuple(clauses),
        sort=sort,
        count=count,
        cursor=cursor,
        total=total,
        includes=tuple(includes),
        summary=summary,
        elements=elements,
        params=kept,
        ignored=tuple(ignored),
        warnings=tuple(issues),
        compartment=compartment,
        base_url=parser.base_url,
    )
