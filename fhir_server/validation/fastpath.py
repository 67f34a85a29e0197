"""A compiler from the FHIRPath subset that invariants use to Python closures.

fhirpathpy interprets its syntax tree node by node and costs about 100 microseconds
for even ``text.div.exists()``; a resource carries a dozen invariants, so evaluating
them with it on every write would cost milliseconds. The invariants of the R4 base
definitions (and of typical profiles) use a small part of FHIRPath: navigation,
existence and filtering functions, boolean logic, equality, a few string functions.
:func:`compile_fast` turns such an expression (fhirpathpy's syntax tree, from
:func:`fhir_server.fhirpath._engine.parse`) into nested closures over the R4 element
tables, typically 50-100 times faster.

It is an accelerator, not a second engine:

* an expression using anything outside the subset does not compile (``None``) and is
  evaluated by :mod:`fhir_server.fhirpath`;
* where the subset's semantics get subtle at run time -- dates and times of different
  precision, quantities, a primitive without a value, a collection where one item is
  expected -- the closure raises :class:`Fallback` and the caller evaluates the
  expression with :mod:`fhir_server.fhirpath` instead.

The tests compare both evaluators on every invariant of every official example.

One deliberate difference: ``x is Boolean`` (a FHIRPath System type) is true for a FHIR
``boolean`` element, as in the reference validator; fhirpathpy says false, which makes
R4's own ``que-7`` (``answer is Boolean``) fail on valid Questionnaires.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from decimal import Decimal
from functools import cache, lru_cache
from typing import Any, Final

from fhir_server import definitions
from fhir_server.definitions import BACKBONE, PRIMITIVE, RESOURCE

__all__ = ["Env", "Fallback", "FastExpr", "It", "compile_fast", "navigate"]


class Fallback(Exception):
    """Evaluate this expression with the full FHIRPath engine instead."""


class _Unsupported(Exception):
    pass


class It:
    """An element: its JSON value, a primitive's ``_name`` companion, its model type
    (a type code, a backbone element's path, or a resource type)."""

    __slots__ = ("ext", "type", "value")

    def __init__(self, value: Any, ext: Any, type_: str) -> None:
        self.value = value
        self.ext = ext
        self.type = type_

    def __repr__(self) -> str:
        return f"It({self.value!r}, {self.type})"


class Env:
    """%context, %resource, %rootResource, and the value set lookup of memberOf()."""

    __slots__ = ("context", "lookup", "resource", "root")

    def __init__(
        self,
        context: list[Any],
        resource: list[Any],
        root: list[Any],
        lookup: Callable[[str], Collection[tuple[str, str]] | None] | None = None,
    ) -> None:
        self.context = context
        self.resource = resource
        self.root = root
        self.lookup = lookup


Coll = list[Any]
Fn = Callable[[Coll, Env], Coll]
# a function: (focus, $this, env) -> result
Func = Callable[[Coll, Coll, Env], Coll]

_DATE_TYPES: Final = frozenset({"date", "dateTime", "instant", "time"})
_SYSTEM_OF: Final = {
    "boolean": "Boolean",
    "integer": "Integer",
    "positiveInt": "Integer",
    "unsignedInt": "Integer",
    "decimal": "Decimal",
    "date": "Date",
    "dateTime": "DateTime",
    "instant": "DateTime",
    "time": "Time",
}
_CONSTANTS: Final = {
    "ucum": "http://unitsofmeasure.org",
    "sct": "http://snomed.info/sct",
    "loinc": "http://loinc.org",
}


# --------------------------------------------------------------------------- the model


@cache
def _members(type_path: str) -> dict[str, tuple[tuple[str, str, int], ...]] | None:
    """Element name -> (JSON key, child type, kind) for each JSON key it may use."""
    base = type_path.split(".", 1)[0]
    if base not in definitions.type_names():
        return None
    td = definitions.type_definition(base)
    kids = td.children.get(type_path)
    if kids is None:
        return {}
    out: dict[str, list[tuple[str, str, int]]] = {}
    for key, child in kids.items():
        if child.kind == BACKBONE:
            ctype = child.content_path
        elif child.kind == RESOURCE:
            ctype = "Resource"
        else:
            ctype = child.type_code
        out.setdefault(child.element.name, []).append((key, ctype, child.kind))
    return {k: tuple(v) for k, v in out.items()}


@cache
def _ancestors(type_name: str) -> frozenset[str]:
    names = {type_name}
    cur: str | None = type_name
    while cur is not None and cur in definitions.type_names():
        cur = definitions.type_definition(cur).base
        if cur:
            names.add(cur)
    return frozenset(names)


def _container(it: It) -> dict[str, Any] | None:
    v = it.value
    if type(v) is dict:
        return v
    e = it.ext
    return e if type(e) is dict else None


def _make(value: Any, ext: Any, ctype: str, kind: int, out: Coll) -> None:
    if value is None and type(ext) is not dict:
        return
    if kind == RESOURCE:
        if type(value) is not dict or not isinstance(value.get("resourceType"), str):
            raise Fallback
        ctype = value["resourceType"]
    out.append(It(value, ext, ctype))


def navigate(items: Coll, name: str) -> Coll:
    out: Coll = []
    for it in items:
        if type(it) is not It:
            continue
        container = _container(it)
        if container is None:
            continue
        members = _members(it.type)
        if members is None:
            raise Fallback
        spec = members.get(name)
        if spec is None:
            continue
        for key, ctype, kind in spec:
            v = container.get(key)
            e = container.get("_" + key) if kind == PRIMITIVE else None
            if type(v) is list or type(e) is list:
                vs = v if type(v) is list else []
                es = e if type(e) is list else []
                for i in range(max(len(vs), len(es))):
                    _make(
                        vs[i] if i < len(vs) else None,
                        es[i] if i < len(es) else None,
                        ctype,
                        kind,
                        out,
                    )
            else:
                _make(v, e, ctype, kind, out)
    return out


def _children(items: Coll) -> Coll:
    out: Coll = []
    for it in items:
        if type(it) is not It:
            continue
        container = _container(it)
        if container is None:
            continue
        members = _members(it.type)
        if members is None:
            raise Fallback
        for name in members:
            out.extend(navigate([it], name))
    return out


def _descendants(items: Coll) -> Coll:
    out: Coll = []
    todo = _children(items)
    while todo:
        out.extend(todo)
        todo = _children(todo)
    return out


# --------------------------------------------------------------------------- values


def _value(x: Any) -> Any:
    """The plain value of an item; Fallback for a primitive without one."""
    if type(x) is It:
        if x.value is None:
            raise Fallback
        return x.value
    return x


def _is_number(v: Any) -> bool:
    return (type(v) is int) or isinstance(v, Decimal)


def _dateish(x: Any) -> bool:
    return type(x) is It and x.type in _DATE_TYPES


_DATE_TIME = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2}):(\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2}))?)?)?"
)


def _compare_dates(a: Any, b: Any) -> int | None:
    """-1/0/1, or None when FHIRPath says the comparison is empty (equal as far as the
    less precise one goes). Fallback for anything else: local times, partial times,
    dates against dateTimes with a time zone."""
    if type(a) is not str or type(b) is not str:
        raise Fallback
    ma, mb = _DATE_TIME.fullmatch(a), _DATE_TIME.fullmatch(b)
    if ma is None or mb is None:
        raise Fallback
    ta, tb = ma[4] is not None, mb[4] is not None
    if ta and tb:
        da, db = _instant(ma), _instant(mb)
        return (da > db) - (da < db)
    if ta or tb:
        raise Fallback
    pa = [int(g) for g in ma.groups()[:3] if g is not None]
    pb = [int(g) for g in mb.groups()[:3] if g is not None]
    for u, v in zip(pa, pb, strict=False):
        if u != v:
            return -1 if u < v else 1
    return 0 if len(pa) == len(pb) else None


def _instant(m: re.Match[str]) -> Decimal:
    """Seconds since 0001-01-01 in UTC (seconds and milliseconds are one precision)."""
    from datetime import datetime, timedelta

    tz = m[8]
    offset = 0 if tz == "Z" else (int(tz[1:3]) * 60 + int(tz[4:6])) * (1 if tz[0] == "+" else -1)
    try:
        dt = datetime(int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]), int(m[6]))
    except ValueError:
        raise Fallback from None
    utc = dt - timedelta(minutes=offset) - datetime(1, 1, 1)
    return Decimal(utc.days * 86400 + utc.seconds) + Decimal("0" + (m[7] or ""))


def _eq1(x: Any, y: Any) -> bool:
    a, b = _value(x), _value(y)
    if _dateish(x) or _dateish(y):
        if type(a) is str and a == b:
            return True
        c = _compare_dates(a, b)
        if c is None:
            raise Fallback
        return c == 0
    if type(a) is bool or type(b) is bool:
        return a is b
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if type(a) is str and type(b) is str:
        return a == b
    if type(a) is dict and type(b) is dict:
        return bool(a == b)
    if type(a) is type(b):
        raise Fallback
    return False


def _equal(a: Coll, b: Coll) -> Coll:
    if not a or not b:
        return []
    if len(a) != len(b):
        return [False]
    return [all(_eq1(x, y) for x, y in zip(a, b, strict=True))]


def _single(coll: Coll) -> Any:
    if len(coll) != 1:
        raise Fallback
    return coll[0]


def _truth(coll: Coll) -> bool | None:
    if not coll:
        return None
    v = _value(_single(coll))
    if type(v) is not bool:
        raise Fallback
    return v


def _string(coll: Coll) -> str | None:
    if not coll:
        return None
    v = _value(_single(coll))
    if type(v) is not str:
        raise Fallback
    return v


def _distinct(items: Coll) -> Coll:
    out: Coll = []
    for x in items:
        if not any(_eq1(x, y) for y in out):
            out.append(x)
    return out


def _is_type(x: Any, spec: str) -> bool:
    ns, _, name = spec.rpartition(".")
    if type(x) is It:
        t = x.type
        if "." in t:  # a backbone element
            return name in ("BackboneElement", "Element") and ns in ("", "FHIR")
        if ns in ("", "FHIR") and name in _ancestors(t):
            return True
        return ns in ("", "System") and _SYSTEM_OF.get(t, "String" if _is_stringy(t) else "") == (
            name
        )
    system = {bool: "Boolean", int: "Integer", str: "String"}.get(type(x))
    if system is None and isinstance(x, Decimal):
        system = "Decimal"
    return system == name and ns in ("", "System")


def _is_stringy(type_code: str) -> bool:
    return definitions.is_primitive_type(type_code) and type_code not in _SYSTEM_OF


# --------------------------------------------------------------------------- compiler


FastExpr = Callable[[It | dict[str, Any], Env], Coll]


def compile_fast(ast: dict[str, Any]) -> FastExpr | None:
    """Compile fhirpathpy's tree of an expression; None when it uses anything outside
    the supported subset."""
    try:
        fn = _compile(ast["children"][0])
    except _Unsupported:
        return None

    def run(context: It | dict[str, Any], env: Env) -> Coll:
        return fn([context], env)

    return run


def _compile(node: dict[str, Any]) -> Fn:
    kind = node.get("type")
    compiler = _COMPILERS.get(str(kind))
    if compiler is None:
        raise _Unsupported(kind)
    return compiler(node)


def _term(node: dict[str, Any]) -> Fn:
    return _compile(node["children"][0])


def _invocation_term(node: dict[str, Any]) -> Fn:
    inv = node["children"][0]
    kind = inv.get("type")
    if kind == "MemberInvocation":
        name = _identifier(inv["children"][0])
        if name[:1].isupper():  # a type name: keeps the resources of that type
            return lambda this, env: [
                x
                for x in this
                if type(x) is It and "." not in x.type and name in _ancestors(x.type)
            ]
        return lambda this, env: navigate(this, name)
    if kind == "FunctionInvocation":
        func = _function(inv)
        return lambda this, env: func(this, this, env)
    if kind == "ThisInvocation":
        return lambda this, env: this
    raise _Unsupported(kind)


def _identifier(node: dict[str, Any]) -> str:
    text: str = node["text"]
    if text.startswith("`") and text.endswith("`"):
        text = text[1:-1]
    return text


def _invocation_expression(node: dict[str, Any]) -> Fn:
    left = _compile(node["children"][0])
    right = node["children"][1]
    kind = right.get("type")
    if kind == "MemberInvocation":
        name = _identifier(right["children"][0])
        if name[:1].isupper():
            raise _Unsupported("type name after a dot")
        return lambda this, env: navigate(left(this, env), name)
    if kind == "FunctionInvocation":
        func = _function(right)
        return lambda this, env: func(left(this, env), this, env)
    raise _Unsupported(kind)


_STRING_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|.)", re.DOTALL)
_ESCAPES = {"r": "\r", "n": "\n", "t": "\t", "f": "\f"}


def _literal(node: dict[str, Any]) -> Fn:
    lit = node["children"][0]
    kind = lit.get("type")
    text: str = lit.get("text", "")
    value: Any
    if kind == "StringLiteral":
        value = _STRING_ESCAPE.sub(
            lambda m: chr(int(m[1][1:], 16)) if len(m[1]) == 5 else _ESCAPES.get(m[1], m[1]),
            text[1:-1],
        )
    elif kind == "NumberLiteral":
        value = Decimal(text) if "." in text else int(text)
    elif kind == "BooleanLiteral":
        value = text == "true"
    elif kind == "NullLiteral":
        return lambda this, env: []
    else:
        raise _Unsupported(kind)
    result = [value]
    return lambda this, env: result


def _external(node: dict[str, Any]) -> Fn:
    const = node["children"][0]["children"][0]
    name = _identifier(const).strip("'\"`")
    if name in _CONSTANTS:
        value = [_CONSTANTS[name]]
        return lambda this, env: value
    if name.startswith("vs-"):
        vs = ["http://hl7.org/fhir/ValueSet/" + name[3:]]
        return lambda this, env: vs
    if name.startswith("ext-"):
        ext = ["http://hl7.org/fhir/StructureDefinition/" + name[4:]]
        return lambda this, env: ext
    if name == "resource":
        return lambda this, env: env.resource
    if name == "rootResource":
        return lambda this, env: env.root
    if name == "context":
        return lambda this, env: env.context
    raise _Unsupported(name)


def _logic(node: dict[str, Any]) -> Fn:
    op = node["terminalNodeText"][0]
    a, b = _compile(node["children"][0]), _compile(node["children"][1])
    if op == "and":

        def f_and(this: Coll, env: Env) -> Coll:
            x = _truth(a(this, env))
            if x is False:
                return [False]
            y = _truth(b(this, env))
            if y is False:
                return [False]
            return [True] if x is True and y is True else []

        return f_and
    if op == "or":

        def f_or(this: Coll, env: Env) -> Coll:
            x = _truth(a(this, env))
            if x is True:
                return [True]
            y = _truth(b(this, env))
            if y is True:
                return [True]
            return [False] if x is False and y is False else []

        return f_or
    if op == "implies":

        def f_implies(this: Coll, env: Env) -> Coll:
            x = _truth(a(this, env))
            if x is False:
                return [True]
            y = _truth(b(this, env))
            if y is True:
                return [True]
            if x is True and y is False:
                return [False]
            return []

        return f_implies
    if op == "xor":

        def f_xor(this: Coll, env: Env) -> Coll:
            x, y = _truth(a(this, env)), _truth(b(this, env))
            return [] if x is None or y is None else [x != y]

        return f_xor
    raise _Unsupported(op)


def _equality(node: dict[str, Any]) -> Fn:
    op = node["terminalNodeText"][0]
    a, b = _compile(node["children"][0]), _compile(node["children"][1])
    if op == "=":
        return lambda this, env: _equal(a(this, env), b(this, env))
    if op == "!=":

        def ne(this: Coll, env: Env) -> Coll:
            r = _equal(a(this, env), b(this, env))
            return [not r[0]] if r else []

        return ne
    raise _Unsupported(op)


def _inequality(node: dict[str, Any]) -> Fn:
    op = node["terminalNodeText"][0]
    a, b = _compile(node["children"][0]), _compile(node["children"][1])

    def compare(this: Coll, env: Env) -> Coll:
        left, right = a(this, env), b(this, env)
        if not left or not right:
            return []
        x, y = _single(left), _single(right)
        u, v = _value(x), _value(y)
        if _dateish(x) or _dateish(y):
            c = _compare_dates(u, v)
            if c is None:
                return []
            return [
                c < 0 if op == "<" else c > 0 if op == ">" else c <= 0 if op == "<=" else c >= 0
            ]
        if type(u) is bool or type(v) is bool:
            raise Fallback
        if not ((_is_number(u) and _is_number(v)) or (type(u) is str and type(v) is str)):
            raise Fallback
        if op == "<":
            return [u < v]
        if op == ">":
            return [u > v]
        if op == "<=":
            return [u <= v]
        return [u >= v]

    if op not in ("<", ">", "<=", ">="):
        raise _Unsupported(op)
    return compare


def _additive(node: dict[str, Any]) -> Fn:
    op = node["terminalNodeText"][0]
    a, b = _compile(node["children"][0]), _compile(node["children"][1])

    def add(this: Coll, env: Env) -> Coll:
        left, right = a(this, env), b(this, env)
        if op == "&":
            s = _string(left) if left else ""
            t = _string(right) if right else ""
            return [(s or "") + (t or "")]
        if not left or not right:
            return []
        u, v = _value(_single(left)), _value(_single(right))
        if _dateish(left[0]) or _dateish(right[0]) or type(u) is bool or type(v) is bool:
            raise Fallback
        if op == "+":
            if type(u) is str and type(v) is str:
                return [u + v]
            if _is_number(u) and _is_number(v):
                return [u + v]
        elif op == "-" and _is_number(u) and _is_number(v):
            return [u - v]
        raise Fallback

    if op not in ("+", "-", "&"):
        raise _Unsupported(op)
    return add


def _union(node: dict[str, Any]) -> Fn:
    a, b = _compile(node["children"][0]), _compile(node["children"][1])
    return lambda this, env: _distinct(a(this, env) + b(this, env))


def _membership(node: dict[str, Any]) -> Fn:
    op = node["terminalNodeText"][0]
    a, b = _compile(node["children"][0]), _compile(node["children"][1])

    def member(this: Coll, env: Env) -> Coll:
        left, right = a(this, env), b(this, env)
        item, coll = (left, right) if op == "in" else (right, left)
        if not item:
            return []
        x = _single(item)
        return [any(_eq1(x, y) for y in coll)]

    if op not in ("in", "contains"):
        raise _Unsupported(op)
    return member


def _type_expression(node: dict[str, Any]) -> Fn:
    op = node["terminalNodeText"][0]
    a = _compile(node["children"][0])
    spec = node["children"][1]["text"].replace("`", "")
    if op == "is":

        def is_(this: Coll, env: Env) -> Coll:
            left = a(this, env)
            if not left:
                return []
            return [_is_type(_single(left), spec)]

        return is_
    if op == "as":
        return lambda this, env: [x for x in a(this, env) if _is_type(x, spec)]
    raise _Unsupported(op)


def _paren(node: dict[str, Any]) -> Fn:
    return _compile(node["children"][0])


def _indexer(node: dict[str, Any]) -> Fn:
    a, b = _compile(node["children"][0]), _compile(node["children"][1])

    def index(this: Coll, env: Env) -> Coll:
        coll, idx = a(this, env), b(this, env)
        if not idx:
            return []
        i = _value(_single(idx))
        if type(i) is not int:
            raise Fallback
        return [coll[i]] if 0 <= i < len(coll) else []

    return index


# --------------------------------------------------------------------------- functions


def _function(inv: dict[str, Any]) -> Func:
    functn = inv["children"][0]
    name = functn["children"][0]["text"]
    params: list[dict[str, Any]] = (
        functn["children"][1]["children"] if len(functn["children"]) > 1 else []
    )
    maker = _FUNCTIONS.get(name)
    if maker is None:
        raise _Unsupported(name)
    return maker(params)


def _arity(params: list[dict[str, Any]], *allowed: int) -> None:
    if len(params) not in allowed:
        raise _Unsupported("arity")


def _fn0(impl: Callable[[Coll], Coll]) -> Callable[[list[dict[str, Any]]], Func]:
    def make(params: list[dict[str, Any]]) -> Func:
        _arity(params, 0)
        return lambda focus, this, env: impl(focus)

    return make


def _empty(focus: Coll) -> Coll:
    return [not focus]


def _count(focus: Coll) -> Coll:
    return [len(focus)]


def _not(focus: Coll) -> Coll:
    v = _truth(focus)
    return [] if v is None else [not v]


def _has_value(focus: Coll) -> Coll:
    if len(focus) != 1:
        return [False]
    x = focus[0]
    if type(x) is It:
        return [x.value is not None and type(x.value) is not dict]
    return [True]


def _is_distinct(focus: Coll) -> Coll:
    return [len(_distinct(focus)) == len(focus)]


def _to_integer(focus: Coll) -> Coll:
    if not focus:
        return []
    v = _value(_single(focus))
    if type(v) is bool:
        return [1 if v else 0]
    if type(v) is int:
        return [v]
    if type(v) is str and re.fullmatch(r"[+-]?[0-9]+", v):
        return [int(v)]
    return []


def _to_string(focus: Coll) -> Coll:
    if not focus:
        return []
    x = _single(focus)
    if _dateish(x):
        raise Fallback
    v = _value(x)
    if type(v) is bool:
        return ["true" if v else "false"]
    if type(v) is str:
        return [v]
    if type(v) is int:
        return [str(v)]
    raise Fallback


def _length(focus: Coll) -> Coll:
    s = _string(focus)
    return [] if s is None else [len(s)]


@lru_cache(maxsize=512)
def _narrative_ok(div: str) -> bool:
    from fhir_server.fhirpath._functions import html_checks

    return bool(html_checks({}, [div]))


def _html_checks(focus: Coll) -> Coll:
    for x in focus:
        v = _value(x)
        if type(v) is not str or not _narrative_ok(v):
            return [False]
    return [True]


def _lambda_fn(
    impl: Callable[[Coll, Callable[[Any], Coll]], Coll], arities: tuple[int, ...] = (1,)
) -> Callable[[list[dict[str, Any]]], Func]:
    def make(params: list[dict[str, Any]]) -> Func:
        _arity(params, *arities)
        crit = _compile(params[0]) if params else None

        def call(focus: Coll, this: Coll, env: Env) -> Coll:
            if crit is None:
                return impl(focus, lambda item: [True])
            return impl(focus, lambda item: crit([item], env))

        return call

    return make


def _exists_impl(focus: Coll, crit: Callable[[Any], Coll]) -> Coll:
    return [any(_truth(crit(x)) is True for x in focus)]


def _where_impl(focus: Coll, crit: Callable[[Any], Coll]) -> Coll:
    return [x for x in focus if _truth(crit(x)) is True]


def _all_impl(focus: Coll, crit: Callable[[Any], Coll]) -> Coll:
    return [all(_truth(crit(x)) is True for x in focus)]


def _select_impl(focus: Coll, crit: Callable[[Any], Coll]) -> Coll:
    out: Coll = []
    for x in focus:
        out.extend(crit(x))
    return out


def _arg_fn(
    impl: Callable[..., Coll], arities: tuple[int, ...] = (1,)
) -> Callable[[list[dict[str, Any]]], Func]:
    """A function whose arguments are evaluated against $this."""

    def make(params: list[dict[str, Any]]) -> Func:
        _arity(params, *arities)
        args = [_compile(p) for p in params]

        def call(focus: Coll, this: Coll, env: Env) -> Coll:
            return impl(focus, *(arg(this, env) for arg in args))

        return call

    return make


def _string_arg(coll: Coll) -> str | None:
    if not coll:
        return None
    v = _value(_single(coll))
    if type(v) is not str:
        raise Fallback
    return v


def _matches(focus: Coll, regex: Coll) -> Coll:
    pattern = _string_arg(regex)
    s = _string(focus)
    if pattern is None or s is None:
        return []
    return [re.search(pattern, s, re.DOTALL) is not None]


def _starts_with(focus: Coll, prefix: Coll) -> Coll:
    p = _string_arg(prefix)
    s = _string(focus)
    if p is None or s is None:
        return []
    return [s.startswith(p)]


def _ends_with(focus: Coll, suffix: Coll) -> Coll:
    p = _string_arg(suffix)
    s = _string(focus)
    if p is None or s is None:
        return []
    return [s.endswith(p)]


def _contains(focus: Coll, sub: Coll) -> Coll:
    p = _string_arg(sub)
    s = _string(focus)
    if p is None or s is None:
        return []
    return [p in s]


def _substring(focus: Coll, start: Coll, length: Coll | None = None) -> Coll:
    s = _string(focus)
    if s is None or not start:
        return []
    i = _value(_single(start))
    if type(i) is not int:
        raise Fallback
    if i < 0 or i >= len(s):
        return []
    if length is None or not length:
        return [s[i:]]
    n = _value(_single(length))
    if type(n) is not int:
        raise Fallback
    return [s[i : i + n]]


def _replace_matches(focus: Coll, regex: Coll, substitution: Coll) -> Coll:
    s = _string(focus)
    pattern, repl = _string_arg(regex), _string_arg(substitution)
    if s is None or pattern is None or repl is None:
        return []
    if pattern == "":
        return [s]
    try:
        return [re.sub(pattern, re.sub(r"\$(\d+)", r"\\\1", repl), s)]
    except re.error:
        raise Fallback from None


def _combine(focus: Coll, other: Coll) -> Coll:
    return focus + other


def _intersect(focus: Coll, other: Coll) -> Coll:
    return [x for x in _distinct(focus) if any(_eq1(x, y) for y in other)]


def _union_fn(focus: Coll, other: Coll) -> Coll:
    return _distinct(focus + other)


def _extension(focus: Coll, url: Coll) -> Coll:
    u = _string_arg(url)
    if u is None:
        return []
    out: Coll = []
    for e in navigate(focus, "extension"):
        if type(e.value) is dict and e.value.get("url") == u:
            out.append(e)
    return out


def _type_fn(filter_: bool, single: bool) -> Callable[[list[dict[str, Any]]], Func]:
    def make(params: list[dict[str, Any]]) -> Func:
        _arity(params, 1)
        spec = params[0].get("text", "").replace("`", "")
        if not re.fullmatch(r"[A-Za-z]+(\.[A-Za-z]+)?", spec):
            raise _Unsupported("type specifier")

        def call(focus: Coll, this: Coll, env: Env) -> Coll:
            if single:
                if not focus:
                    return []
                return [_is_type(_single(focus), spec)]
            return [x for x in focus if _is_type(x, spec)]

        return call

    return make


def _iif(params: list[dict[str, Any]]) -> Func:
    _arity(params, 2, 3)
    cond, ok = _compile(params[0]), _compile(params[1])
    fail = _compile(params[2]) if len(params) == 3 else None

    def call(focus: Coll, this: Coll, env: Env) -> Coll:
        if len(focus) > 1:
            raise Fallback
        c = _truth(cond(focus, env))
        if c is True:
            return ok(focus, env)
        return fail(focus, env) if fail is not None else []

    return call


def _member_of(params: list[dict[str, Any]]) -> Func:
    """memberOf(valueset): needs a terminology lookup (Env.lookup); without one, or for
    a value set it cannot expand, the full engine decides (which has no memberOf)."""
    _arity(params, 1)
    arg = _compile(params[0])

    def call(focus: Coll, this: Coll, env: Env) -> Coll:
        url = _string_arg(arg(this, env))
        if not focus or url is None:
            return []
        if env.lookup is None:
            raise Fallback
        codes = env.lookup(url)
        if codes is None:
            raise Fallback
        x = _single(focus)
        v = _value(x)
        if type(v) is str:
            return [any(c == v for _, c in codes)]
        if type(v) is dict:
            codings = v.get("coding") if "coding" in v or x.type == "CodeableConcept" else [v]
            return [
                any(
                    type(c) is dict and (c.get("system"), c.get("code")) in codes
                    for c in codings or ()
                )
            ]
        raise Fallback

    return call


def _first(focus: Coll) -> Coll:
    return focus[:1]


def _last(focus: Coll) -> Coll:
    return focus[-1:]


def _tail(focus: Coll) -> Coll:
    return focus[1:]


_FUNCTIONS: Final[dict[str, Callable[[list[dict[str, Any]]], Func]]] = {
    "empty": _fn0(_empty),
    "exists": _lambda_fn(_exists_impl, (0, 1)),
    "count": _fn0(_count),
    "not": _fn0(_not),
    "where": _lambda_fn(_where_impl),
    "all": _lambda_fn(_all_impl),
    "select": _lambda_fn(_select_impl),
    "first": _fn0(_first),
    "last": _fn0(_last),
    "tail": _fn0(_tail),
    "hasValue": _fn0(_has_value),
    "isDistinct": _fn0(_is_distinct),
    "distinct": _fn0(_distinct),
    "toInteger": _fn0(_to_integer),
    "toString": _fn0(_to_string),
    "length": _fn0(_length),
    "htmlChecks": _fn0(_html_checks),
    "children": _fn0(_children),
    "descendants": _fn0(_descendants),
    "matches": _arg_fn(_matches),
    "startsWith": _arg_fn(_starts_with),
    "endsWith": _arg_fn(_ends_with),
    "contains": _arg_fn(_contains),
    "substring": _arg_fn(_substring, (1, 2)),
    "replaceMatches": _arg_fn(_replace_matches, (2,)),
    "combine": _arg_fn(_combine),
    "intersect": _arg_fn(_intersect),
    "union": _arg_fn(_union_fn),
    "extension": _arg_fn(_extension),
    "ofType": _type_fn(True, False),
    "as": _type_fn(True, False),
    "is": _type_fn(False, True),
    "iif": _iif,
    "memberOf": _member_of,
}

_COMPILERS: Final[dict[str, Callable[[dict[str, Any]], Fn]]] = {
    "TermExpression": _term,
    "InvocationTerm": _invocation_term,
    "InvocationExpression": _invocation_expression,
    "LiteralTerm": _literal,
    "ExternalConstantTerm": _external,
    "ParenthesizedTerm": _paren,
    "OrExpression": _logic,
    "AndExpression": _logic,
    "ImpliesExpression": _logic,
    "EqualityExpression": _equality,
    "InequalityExpression": _inequality,
    "AdditiveExpression": _additive,
    "UnionExpression": _union,
    "MembershipExpression": _membership,
    "TypeExpression": _type_expression,
    "IndexerExpression": _indexer,
}
