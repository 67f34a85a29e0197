"""Fast evaluation of the FHIRPath subset that search parameter expressions use.

Almost every R4 search parameter expression is a union of simple paths, sometimes with
``.where(resolve() is Type)``, ``.where(field='literal')``, ``.as(Type)``/``as Type``/
``.ofType(Type)``, ``.extension('url')``, ``[n]`` or ``%resource``. Such expressions
are compiled here into plans walked directly over the JSON dicts, yielding each value
with its FHIR type (from the R4 element model), which the extractors need to tell a
Coding from an Identifier. Anything else makes :func:`compile_path` return ``None``
and the caller falls back to the general FHIRPath engine.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from fhir_server.search import model
from fhir_server.search.model import ChildInfo

Typed = tuple[Any, str]  # (JSON value, FHIR type name or backbone path)


class _Unsupported(Exception):
    pass


_TOKEN_RE = re.compile(
    r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<num>[0-9]+)|(?P<id>%?[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>[.()\[\]|=,]))"
)


def _tokenize(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None or m.end() == pos:
            raise _Unsupported(text[pos:])
        out.append(m.group(m.lastgroup or "op"))
        pos = m.end()
    return out


# --- plan ---------------------------------------------------------------------------
# A step transforms a list of typed values into another.
Step = Callable[[list[Typed], Any], list[Typed]]


@dataclass(frozen=True, slots=True)
class _Path:
    root: str  # "resource" (filtered by type), "context", "%resource" or "union"
    root_types: frozenset[str]
    union: tuple[_Path, ...]
    steps: tuple[Step, ...]
    # The text of the path up to each step: results of paths that depend on the resource
    # only (not on a composite's context) are memoised under it during one extraction.
    keys: tuple[str, ...] | None = None
    cacheable: bool = False


def _context_free(path: _Path) -> bool:
    if path.root == "union":
        return all(_context_free(p) for p in path.union)
    return path.root != "context"


def _child_step(name: str) -> Step:
    infos: dict[str, ChildInfo] = {}

    def step(items: list[Typed], resource: Any) -> list[Typed]:
        out: list[Typed] = []
        for value, ctx in items:
            if not isinstance(value, dict):
                continue
            if ctx == "Resource":
                ctx = value.get("resourceType", "Resource")
            info = infos.get(ctx)
            if info is None:
                info = infos[ctx] = _with_code_paths(ctx, name, model.child(ctx, name))
            if not info:
                continue
            if len(info) == 1:
                key, t = info[0]
                v = value.get(key)
                if v is None:
                    continue
                if isinstance(v, list):
                    out.extend((x, t) for x in v if x is not None)
                else:
                    out.append((v, t))
            else:
                cmap = _choice_map(info)
                if len(cmap) < len(value):
                    pairs = [(k, value[k]) for k in cmap if k in value]
                else:
                    pairs = [(k, v) for k, v in value.items() if k in cmap]
                for k, v in pairs:
                    t = cmap[k]
                    if v is not None:
                        if isinstance(v, list):
                            out.extend((x, t) for x in v)
                        else:
                            out.append((v, t))
        return out

    return step


def _with_code_paths(ctx: str, name: str, info: ChildInfo) -> ChildInfo:
    """Mark ``code`` values with their element path (``code@Patient.gender``) so that
    the token extractor can find the code system their required binding implies."""
    return tuple((k, f"code@{ctx}.{name}" if t == "code" else t) for k, t in info)


@cache
def _choice_map(info: tuple[tuple[str, str], ...]) -> dict[str, str]:
    return dict(info)


def reference_type(ref: Any) -> str | None:
    """The resource type a Reference points at, from its ``reference`` or ``type``."""
    if not isinstance(ref, dict):
        return None
    text = ref.get("reference")
    if isinstance(text, str) and not text.startswith("#"):
        parts = text.split("/")
        if len(parts) >= 4 and parts[-2] == "_history":
            parts = parts[:-2]
        if len(parts) >= 2 and model.is_resource_type(parts[-2]):
            return parts[-2]
    t = ref.get("type")
    return t if isinstance(t, str) else None


def _where_resolve_is(types: frozenset[str]) -> Step:
    def step(items: list[Typed], resource: Any) -> list[Typed]:
        return [(v, t) for v, t in items if reference_type(v) in types]

    return step


def _where_equals(field: str, literal: str) -> Step:
    def step(items: list[Typed], resource: Any) -> list[Typed]:
        return [(v, t) for v, t in items if isinstance(v, dict) and v.get(field) == literal]

    return step


def _where_has_extension(url: str) -> Step:
    def step(items: list[Typed], resource: Any) -> list[Typed]:
        return [
            (v, t)
            for v, t in items
            if isinstance(v, dict)
            and any(isinstance(e, dict) and e.get("url") == url for e in v.get("extension", ()))
        ]

    return step


def _of_type(wanted: str) -> Step:
    matches: dict[str, bool] = {}

    def step(items: list[Typed], resource: Any) -> list[Typed]:
        out: list[Typed] = []
        for v, t in items:
            if t == "Resource" and isinstance(v, dict):
                t = v.get("resourceType", t)
            ok = matches.get(t)
            if ok is None:
                ok = matches[t] = model.is_a(t.partition("@")[0], wanted)
            if ok:
                out.append((v, t))
        return out

    return step


def _extension(url: str) -> Step:
    def step(items: list[Typed], resource: Any) -> list[Typed]:
        out: list[Typed] = []
        for v, _ in items:
            if isinstance(v, dict):
                for e in v.get("extension", ()):
                    if isinstance(e, dict) and e.get("url") == url:
                        out.append((e, "Extension"))
        return out

    return step


def _index(n: int) -> Step:
    def step(items: list[Typed], resource: Any) -> list[Typed]:
        return [items[n]] if n < len(items) else []

    return step


class _Parser:
    def __init__(self, tokens: list[str]) -> None:
        self.toks = tokens
        self.pos = 0

    def peek(self, k: int = 0) -> str | None:
        i = self.pos + k
        return self.toks[i] if i < len(self.toks) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            raise _Unsupported(f"expected {expected}, got {tok}")
        self.pos += 1
        return tok

    def union(self) -> list[_Path]:
        paths = [self.term()]
        while self.peek() == "|":
            self.take()
            paths.append(self.term())
        return paths

    def term(self) -> _Path:
        tok = self.peek()
        start = self.pos
        steps: list[Step] = []
        keys: list[str] = []
        if tok == "(":
            self.take()
            inner = self.union()
            self.take(")")
            path = _Path("union", frozenset(), tuple(inner), ())
        elif tok is not None and tok[0] == "%":
            if self.take() != "%resource":
                raise _Unsupported(tok)
            path = _Path("%resource", frozenset(), (), ())
        elif tok is not None and (tok[0].isalpha() or tok[0] == "_"):
            name = self.take()
            if name[0].isupper() and self.peek() != "(":
                if name in ("Resource", "DomainResource"):
                    types = frozenset({"*"})
                elif model.is_resource_type(name):
                    types = frozenset({name})
                else:
                    raise _Unsupported(name)
                path = _Path("resource", types, (), ())
            else:
                path = _Path("context", frozenset(), (), ())
                steps.append(self.function_or_child(name))
                keys.append(" ".join(self.toks[start : self.pos]))
        else:
            raise _Unsupported(str(tok))
        while True:
            tok = self.peek()
            if tok == ".":
                self.take()
                steps.append(self.function_or_child(self.take()))
            elif tok == "[":
                self.take()
                n = self.take()
                if not n.isdigit():
                    raise _Unsupported(n)
                self.take("]")
                steps.append(_index(int(n)))
            elif tok == "as":
                self.take()
                steps.append(_of_type(self.type_name()))
            else:
                break
            keys.append(" ".join(self.toks[start : self.pos]))
        path = _Path(path.root, path.root_types, path.union, tuple(steps), tuple(keys))
        return _Path(
            path.root,
            path.root_types,
            path.union,
            path.steps,
            path.keys,
            bool(keys) and _context_free(path),
        )

    def type_name(self) -> str:
        name = self.take()
        if name == "FHIR" and self.peek() == ".":
            self.take()
            name = self.take()
        if not name[0].isalpha():
            raise _Unsupported(name)
        return name

    def function_or_child(self, name: str) -> Step:
        if self.peek() != "(":
            if not (name[0].isalpha() or name[0] == "_"):
                raise _Unsupported(name)
            return _child_step(name)
        self.take("(")
        if name in ("as", "ofType"):
            step = _of_type(self.type_name())
        elif name == "extension":
            url = self.take()
            if url[0] != "'":
                raise _Unsupported(url)
            step = _extension(url[1:-1])
        elif name == "where":
            step = self.where_condition()
        else:
            raise _Unsupported(name)
        self.take(")")
        return step

    def where_condition(self) -> Step:
        tok = self.take()
        if tok == "resolve":
            self.take("(")
            self.take(")")
            self.take("is")
            types = {self.type_name()}
            return _where_resolve_is(frozenset(types))
        if tok == "hasExtension":
            self.take("(")
            url = self.take()
            if url[0] != "'":
                raise _Unsupported(url)
            self.take(")")
            return _where_has_extension(url[1:-1])
        if tok[0].isalpha() and self.peek() == "=":
            self.take("=")
            lit = self.take()
            if lit[0] != "'":
                raise _Unsupported(lit)
            return _where_equals(tok, lit[1:-1].replace("\\'", "'"))
        raise _Unsupported(tok)


def _prune(paths: list[_Path], resource_type: str | None) -> list[_Path]:
    """Drop union branches rooted at another resource type; unwrap single unions."""
    if resource_type is None:
        return paths
    out: list[_Path] = []
    for p in paths:
        if p.root == "resource":
            if "*" in p.root_types or resource_type in p.root_types:
                out.append(p)
        elif p.root == "union":
            inner = _prune(list(p.union), resource_type)
            if not inner:
                continue
            if len(inner) == 1 and not p.steps:
                out.append(inner[0])
            else:
                out.append(_Path(p.root, p.root_types, tuple(inner), p.steps, p.keys, p.cacheable))
        else:
            out.append(p)
    return out


Memo = dict[str, list[Typed]]
Evaluator = Callable[[Any, list[Typed], Memo], list[Typed]]


def _run(path: _Path, resource: Any, context: list[Typed], memo: Memo) -> list[Typed]:
    steps = path.steps
    if path.cacheable:
        keys = path.keys
        assert keys is not None
        hit = memo.get(keys[-1])
        if hit is not None:
            return hit
        first = 0
        # resume from the longest memoised prefix
        for i in range(len(keys) - 2, -1, -1):
            hit = memo.get(keys[i])
            if hit is not None:
                items = hit
                first = i + 1
                break
        else:
            items = _root_items(path, resource, context, memo)
        for i in range(first, len(steps)):
            if items:
                items = steps[i](items, resource)
            memo[keys[i]] = items
        return items
    if path.root == "context" and path.keys and len(context) == 1:
        # a component's path relative to one composite value: memoised per value
        # (several composites share a base, e.g. Observation code-value-*)
        value = context[0][0]
        key = f"{id(value)}:{path.keys[-1]}"
        hit = memo.get(key)
        if hit is not None:
            return hit
        memo.setdefault(_KEEP_ALIVE, []).append(context[0])  # so that id() stays unique
        items = context
        for step in steps:
            if not items:
                break
            items = step(items, resource)
        memo[key] = items
        return items
    items = _root_items(path, resource, context, memo)
    for step in steps:
        if not items:
            return items
        items = step(items, resource)
    return items


_KEEP_ALIVE = "\x00values"


def _root_items(path: _Path, resource: Any, context: list[Typed], memo: Memo) -> list[Typed]:
    if path.root == "resource":
        rt = resource.get("resourceType")
        if "*" in path.root_types or rt in path.root_types:
            return [(resource, rt)]
        return []
    if path.root == "context":
        return context
    if path.root == "%resource":
        return [(resource, resource.get("resourceType"))]
    items: list[Typed] = []
    for p in path.union:
        items.extend(_run(p, resource, context, memo))
    return items


_EXISTS_NOT_FALSE = re.compile(r"\s*(?P<p>[A-Za-z.]+)\.exists\(\) and (?P=p) != false\s*")


def _exists_not_false(inner: Evaluator) -> Evaluator:
    """``X.exists() and X != false`` (e.g. Patient.deceased): a boolean."""

    def run(resource: Any, context: list[Typed], memo: Memo) -> list[Typed]:
        found = inner(resource, context, memo)
        if not found:
            return [(False, "boolean")]
        return [(not all(v is False for v, _ in found), "boolean")]

    return run


def compile_path(expression: str, resource_type: str | None = None) -> Evaluator | None:
    """Compile ``expression`` (pruned to ``resource_type``), or None if unsupported.

    The evaluator takes the resource and the context items (the resource itself for a
    parameter's expression, the composite's value for a component's expression).
    """
    m = _EXISTS_NOT_FALSE.fullmatch(expression)
    if m is not None:
        inner = compile_path(m["p"], resource_type)
        return None if inner is None else _exists_not_false(inner)
    try:
        parser = _Parser(_tokenize(expression))
        paths = parser.union()
        if parser.peek() is not None:
            return None
    except _Unsupported:
        return None
    paths = _prune(paths, resource_type)

    if len(paths) == 1:
        only = paths[0]

        def run_one(resource: Any, context: list[Typed], memo: Memo) -> list[Typed]:
            return _run(only, resource, context, memo)

        return run_one

    def run(resource: Any, context: list[Typed], memo: Memo) -> list[Typed]:
        out: list[Typed] = []
        for p in paths:
            out.extend(_run(p, resource, context, memo))
        return out

    return run
