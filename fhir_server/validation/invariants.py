"""FHIRPath invariants (``ElementDefinition.constraint``) of the R4 base definitions.

:func:`check_invariants` walks a resource along the generated element tables and
evaluates, on every element present, the constraints of its definition and of its
type's root (``per-1`` on every Period, ``qty-3`` on every Quantity ...). A constraint
of severity ``error`` that evaluates to ``false`` is an error issue, one of severity
``warning`` a warning; an empty result is not a failure (R4 writes invariants such as
bdl-8, ``fullUrl.contains('/_history/').not()``, to be empty when the element is
absent). Best-practice constraints (dom-6 ...) are only reported when asked for.

Cost
----
Expressions are parsed once (:func:`compile_invariant` is cached) and compiled to
Python closures (:mod:`.fastpath`), which defer to :mod:`fhir_server.fhirpath` beyond
their subset. Most R4 invariants can only fail when some element is present
(``dataAbsentReason.empty() or value.empty()``): for each invariant a shape guard is
derived from its syntax tree -- the top-level ``or``/``implies``/``and`` structure and,
for each operand, the child elements it navigates from its context. When none of those
children are present, the operand's value is the value it has on an empty element,
computed once per context type; an invariant whose value is then known to be true is
not evaluated at all. The guard is conservative: operands that use ``$this``,
``%resource``, ``%context``, type names or functions of the context element as a whole
(``hasValue()``, ``children()``, ``descendants()``) always evaluate.

Not evaluated as FHIRPath
-------------------------
* :data:`COVERED_BY_STRUCTURE`: what the structure validator
  (:mod:`fhir_server.validation.structure`) already checks directly and more precisely
  (ele-1 on every element, ext-1, dom-2/4/5, ref-1);
* :data:`NATIVE`: dom-3 (its FHIRPath walks every descendant once per contained
  resource) and rng-2 (fhirpathpy cannot compare Quantity elements) are Python here;
* :data:`NOT_EVALUATED`: invariants known to be wrong or not evaluable (none in R4
  today);
* an invariant that raises while evaluated on a particular resource yields an
  ``information`` issue naming it, never an error.

Corrected: an invariant whose published expression contradicts its own description is
evaluated in HL7's corrected form (:data:`CORRECTED`: que-12).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache, lru_cache
from typing import Any, Final

from fhirpathpy.engine.nodes import ResourceNode

from fhir_server import definitions
from fhir_server.definitions import BACKBONE, COMPLEX, PRIMITIVE, RESOURCE, Child, TypeDef
from fhir_server.errors import Issue, Severity
from fhir_server.fhirpath import FhirPathError
from fhir_server.fhirpath._engine import parse, run
from fhir_server.validation.fastpath import Env, Fallback, FastExpr, It, compile_fast

__all__ = [
    "CORRECTED",
    "COVERED_BY_STRUCTURE",
    "NOT_EVALUATED",
    "Invariant",
    "check_invariants",
    "compile_invariant",
    "evaluate_invariant",
    "failure_issue",
]

COVERED_BY_STRUCTURE: Final[Mapping[str, str]] = {
    "ele-1": "checked by the structure validator: no empty objects, arrays or strings, and no "
    "element with only an id",
    "ext-1": "checked by the structure validator: an extension has a value[x] or extensions",
    "dom-2": "checked by the structure validator: no nested contained resources",
    "dom-4": "checked by the structure validator: no meta.versionId/lastUpdated in contained",
    "dom-5": "checked by the structure validator: no security labels in contained resources",
    "ref-1": "checked by the structure validator: #id references name a contained resource",
}

# Invariants evaluated by Python code here instead of FHIRPath (same rule, far cheaper:
# dom-3 walks all descendants of the resource once per contained resource).
NATIVE: Final[Mapping[str, str]] = {
    "dom-3": "every contained resource is referenced from elsewhere in the resource (a "
    "'#id' reference, canonical or uri) or refers to its container ('#')",
    "rng-2": "Range.low <= Range.high when both have a value (fhirpathpy cannot compare "
    "Quantity elements: their JSON objects are not FHIRPath quantities)",
}

# Invariants that are not evaluated, keyed by constraint key, with the reason.
NOT_EVALUATED: Final[Mapping[str, str]] = {}

# Invariants whose published R4 expression contradicts their own human description;
# the corrected expression (HL7's technical correction, applied by later versions and
# by the reference validator to R4 content) is evaluated instead. Keyed by constraint
# key: (published expression, corrected expression, why). The correction applies only
# where the published expression is found verbatim (a profile that rewrites the
# constraint keeps its own).
CORRECTED: Final[Mapping[str, tuple[str, str, str]]] = {
    "que-12": (
        "enableWhen.count() > 2 implies enableBehavior.exists()",
        "enableWhen.count() > 1 implies enableBehavior.exists()",
        "'If there are more than one enableWhen, enableBehavior must be specified': R4's "
        "'> 2' lets an item with exactly two conditions omit enableBehavior, leaving it "
        "undefined whether both or either must hold (corrected to '> 1' in R4B/R5)",
    ),
}

_SAFE_CONSTANTS: Final = frozenset({"ucum", "sct", "loinc"})
# Functions whose arguments are evaluated once per input item ($this = the item).
_ITERATING: Final = frozenset({"where", "select", "exists", "all", "repeat", "aggregate"})


# --------------------------------------------------------------------------- guards


@dataclass(frozen=True, slots=True)
class _Leaf:
    """An operand that navigates only the context's children ``names``."""

    ast: dict[str, Any]
    names: frozenset[str]


@dataclass(frozen=True, slots=True)
class _Op:
    op: str  # "or", "and", "implies"
    left: _Guard
    right: _Guard


_Guard = _Leaf | _Op | None  # None: opaque, always evaluate


def _head_names(node: dict[str, Any], context: bool) -> frozenset[str] | None:
    """Child names of the context an expression navigates; None when it depends on the
    context in a way a name set cannot describe."""
    kind = node.get("type")
    children: list[dict[str, Any]] = node.get("children", [])
    if not context:
        return frozenset()
    if kind == "TermExpression":
        term = children[0]
        tkind = term.get("type")
        if tkind == "InvocationTerm":
            inv = term["children"][0]
            ikind = inv.get("type")
            if ikind == "MemberInvocation":
                name: str = inv["children"][0]["text"].strip("`")
                return None if name[:1].isupper() else frozenset({name})
            return None  # a function of the context, $this, $index, $total
        if tkind == "LiteralTerm":
            return frozenset()
        if tkind == "ExternalConstantTerm":
            const = term["children"][0]["children"][0]
            cname = str(const.get("text", "")).strip("`'\"")
            if cname in _SAFE_CONSTANTS or cname.startswith(("vs-", "ext-")):
                return frozenset()
            return None
        if tkind == "ParenthesizedTerm":
            return _head_names(term["children"][0], True)
        return None
    if kind == "InvocationExpression":
        left = _head_names(children[0], True)
        if left is None:
            return None
        right = children[1]
        if right.get("type") == "FunctionInvocation":
            functn = right["children"][0]
            fname = functn["children"][0]["text"]
            params = functn["children"][1]["children"] if len(functn["children"]) > 1 else []
            for p in params:
                names = _head_names(p, fname not in _ITERATING)
                if names is None:
                    return None
                left = left | names
        return left
    if kind in ("TypeExpression",):
        return _head_names(children[0], True)
    if kind in ("TypeSpecifier", "QualifiedIdentifier", "Identifier"):
        return frozenset()
    out: frozenset[str] = frozenset()
    for ch in children:
        names = _head_names(ch, True)
        if names is None:
            return None
        out |= names
    return out


def _unparen(node: dict[str, Any]) -> dict[str, Any]:
    while node.get("type") == "TermExpression" and node["children"][0].get("type") == (
        "ParenthesizedTerm"
    ):
        node = node["children"][0]["children"][0]
    return node


def _guard(node: dict[str, Any]) -> _Guard:
    node = _unparen(node)
    kind = node.get("type")
    ops = {"OrExpression": "or", "AndExpression": "and", "ImpliesExpression": "implies"}
    if kind in ops and node.get("terminalNodeText") in (["or"], ["and"], ["implies"]):
        left, right = _guard(node["children"][0]), _guard(node["children"][1])
        return _Op(ops[kind], left, right)
    names = _head_names(node, True)
    if names is None:
        return None
    return _Leaf(node, names)


# --------------------------------------------------------------------------- invariants


@dataclass(eq=False, slots=True)
class Invariant:
    """One compiled constraint."""

    key: str
    severity: Severity
    human: str
    expression: str
    best_practice: bool = False
    source: str | None = None
    ast: dict[str, Any] | None = None
    guard: _Guard = None
    fast: FastExpr | None = None
    skip_reason: str | None = None  # set: never evaluated
    _empty_values: dict[tuple[int, str], bool | None] = field(default_factory=dict)

    def skippable(self, obj: Any, type_path: str) -> bool:
        """True when the invariant is known to hold for this element's shape."""
        if self.guard is None or type(obj) is not dict:
            return False
        return self._true(self.guard, obj, type_path) is True

    def _true(self, g: _Guard, obj: dict[str, Any], type_path: str) -> bool | None:
        """True/False when the guard decides the value from the shape, else None."""
        if g is None:
            return None
        if isinstance(g, _Leaf):
            for name in g.names:
                if _present(obj, name):
                    return None
            return self._empty_value(g, type_path)
        left = self._true(g.left, obj, type_path)
        if g.op == "or":
            if left is True:
                return True
            right = self._true(g.right, obj, type_path)
            if right is True:
                return True
            return False if left is False and right is False else None
        if g.op == "and":
            if left is False:
                return False
            right = self._true(g.right, obj, type_path)
            if right is False:
                return False
            return True if left is True and right is True else None
        # implies: true when the left is false (or empty), or the right is true
        if left is False:
            return True
        return True if self._true(g.right, obj, type_path) is True else None

    def _empty_value(self, leaf: _Leaf, type_path: str) -> bool | None:
        """The leaf's value on an element with none of its names (False for empty)."""
        k = (id(leaf), type_path)
        try:
            return self._empty_values[k]
        except KeyError:
            pass
        value: bool | None
        try:
            result = run({"children": [leaf.ast]}, self.expression, _empty_node(type_path), {})
        except FhirPathError:
            value = None
        else:
            if result == [True]:
                value = True
            elif result in ([], [False]):
                value = False
            else:
                value = None
        self._empty_values[k] = value
        return value


def _without_trace(node: dict[str, Any]) -> dict[str, Any]:
    """The syntax tree with ``.trace(...)`` calls removed (fhirpathpy prints them)."""
    children = node.get("children")
    if not children:
        return node
    if node.get("type") == "InvocationExpression" and len(children) == 2:
        right = children[1]
        if right.get("type") == "FunctionInvocation":
            functn = right["children"][0]
            if functn["children"][0].get("text") == "trace":
                return _without_trace(children[0])
    return {**node, "children": [_without_trace(c) for c in children]}


def _present(obj: dict[str, Any], name: str) -> bool:
    if name in obj or "_" + name in obj:
        return True
    n = len(name)
    for key in obj:
        k = key[1:] if key[:1] == "_" else key
        if len(k) > n and k.startswith(name) and k[n].isupper():
            return True
    return False


def _empty_node(type_path: str) -> Any:
    if "." not in type_path and type_path in definitions.resource_types():
        return {"resourceType": type_path}
    return ResourceNode.create_node({}, type_path)  # type: ignore[no-untyped-call]


@lru_cache(maxsize=8192)
def compile_invariant(
    key: str,
    severity: str,
    human: str,
    expression: str | None,
    best_practice: bool = False,
    source: str | None = None,
) -> Invariant:
    """Compile a constraint (cached); an invariant that cannot be compiled carries its
    ``skip_reason`` instead of failing."""
    sev: Severity = "warning" if severity == "warning" else "error"
    inv = Invariant(key, sev, human, expression or "", best_practice, source)
    if not expression:
        inv.skip_reason = "the constraint has no FHIRPath expression"
        return inv
    reason = NOT_EVALUATED.get(key)
    if reason is not None:
        inv.skip_reason = reason
        return inv
    correction = CORRECTED.get(key)
    if correction is not None and expression == correction[0]:
        expression = inv.expression = correction[1]
    try:
        inv.ast = _without_trace(parse(expression))
    except FhirPathError as exc:
        inv.skip_reason = f"the expression does not parse: {exc.reason}"
        return inv
    inv.guard = _guard(inv.ast["children"][0])
    inv.fast = compile_fast(inv.ast)
    return inv


def evaluate_invariant(
    inv: Invariant,
    context: It,
    resource: It,
    root: It,
    lookup: Callable[[str], Collection[tuple[str, str]] | None] | None = None,
) -> bool | str:
    """Evaluate on one element: True when the invariant holds, False when it fails, or
    the error message when it cannot be evaluated.

    The compiled closure runs when the expression compiled (:mod:`.fastpath`); it
    defers to :mod:`fhir_server.fhirpath` where its subset ends."""
    assert inv.ast is not None
    if inv.fast is not None:
        try:
            return _passed(inv.fast(context, Env([context], [resource], [root], lookup)))
        except Fallback:
            pass
        except RecursionError:
            return "the expression nests too deeply"
    env = {
        "resource": _fhirpath_node(resource),
        "rootResource": _fhirpath_node(root),
        "context": _fhirpath_node(context),
    }
    try:
        result = run(inv.ast, inv.expression, env["context"], env)
    except FhirPathError as exc:
        return exc.reason
    except RecursionError:
        return "the expression nests too deeply"
    return _passed(result)


def _passed(result: list[Any]) -> bool:
    # Only a false result fails: R4 invariants such as bdl-8
    # (``fullUrl.contains('/_history/').not()``) are written to be empty when the
    # element they test is absent.
    return not any(r is False or (type(r) is It and r.value is False) for r in result)


def _fhirpath_node(it: It) -> Any:
    # a node, not the bare JSON object: fhirpathpy takes a %variable that is a plain
    # dict for a System object (``%resource.type().name`` would be 'Object')
    return ResourceNode.create_node(it.value, it.type, it.ext)  # type: ignore[no-untyped-call]


def failure_issue(inv: Invariant, expression: str, source: str | None = None) -> Issue:
    where = f" (from {source})" if source else ""
    return Issue(
        inv.severity,
        "invariant",
        f"Constraint failed: {inv.key}: '{inv.human}'{where}",
        (expression,),
    )


def error_issue(inv: Invariant, expression: str, message: str) -> Issue:
    return Issue(
        "information",
        "informational",
        f"Constraint {inv.key} could not be evaluated and was not checked: {message}",
        (expression,),
    )


# --------------------------------------------------------------------------- the walker


def _from_constraint(c: definitions.Constraint) -> Invariant | None:
    if c.key in COVERED_BY_STRUCTURE:
        return None
    return compile_invariant(c.key, c.severity, c.human, c.expression, c.best_practice, c.source)


@cache
def _own(td_name: str, path: str) -> tuple[Invariant, ...]:
    el = definitions.type_definition(td_name).elements.get(path)
    if el is None:
        return ()
    return tuple(i for c in el.constraints if (i := _from_constraint(c)) is not None)


@cache
def _for_child(td_name: str, path: str, type_code: str, kind: int) -> tuple[Invariant, ...]:
    """The invariants of a child element: its own, then its type's root ones."""
    out = list(_own(td_name, path))
    if kind in (COMPLEX, PRIMITIVE) and type_code in definitions.type_names():
        keys = {i.key for i in out}
        out += [i for i in _own(type_code, type_code) if i.key not in keys]
    return tuple(out)


class _Walk:
    __slots__ = ("best_practice", "contained", "issues")

    def __init__(self, best_practice: bool, contained: bool = True) -> None:
        self.issues: list[Issue] = []
        self.best_practice = best_practice
        self.contained = contained

    def check(
        self,
        invariants: tuple[Invariant, ...],
        context: It,
        type_path: str,
        obj: Any,
        expr: str,
        resource: It,
        root: It,
    ) -> None:
        for inv in invariants:
            if inv.best_practice and not self.best_practice:
                continue
            if inv.key == "dom-3" and not self.contained:
                continue
            native = _NATIVE_CHECKS.get(inv.key) if inv.key in NATIVE else None
            if native is not None:
                for where in native(obj, expr):
                    self.issues.append(failure_issue(inv, where))
                continue
            if inv.skip_reason is not None or inv.skippable(obj, type_path):
                continue
            ok = evaluate_invariant(inv, context, resource, root)
            if ok is True:
                continue
            if ok is False:
                self.issues.append(failure_issue(inv, expr))
            else:
                self.issues.append(error_issue(inv, expr, ok))

    def resource(self, res: Any, expr: str, root: It | None, contained: bool = False) -> None:
        if type(res) is not dict:
            return
        rt = res.get("resourceType")
        if not isinstance(rt, str) or rt not in definitions.resource_types():
            return
        td = definitions.type_definition(rt)
        invs = _own(rt, rt)
        if contained:  # the container's narrative covers its contained resources
            invs = tuple(i for i in invs if i.key != "dom-6")
        me = It(res, None, rt)
        root = root or me
        self.check(invs, me, rt, res, expr, me, root)
        self.children(res, td, rt, expr, me, root)

    def children(
        self, obj: dict[str, Any], td: TypeDef, path: str, expr: str, resource: It, root: It
    ) -> None:
        kids = td.children.get(path)
        if kids is None:
            return
        for key, value in obj.items():
            if key[:1] == "_":
                child = kids.get(key[1:])
                if child is None or child.kind != PRIMITIVE or key[1:] in obj:
                    continue  # primitives are visited with their value
                self.primitive(key[1:], None, value, child, td, expr, resource, root)
                continue
            child = kids.get(key)
            if child is None:
                continue
            if child.kind == PRIMITIVE:
                self.primitive(key, value, obj.get("_" + key), child, td, expr, resource, root)
                continue
            for item, where in _items(value, f"{expr}.{key}"):
                if type(item) is not dict:
                    continue
                self.element(item, child, td, where, resource, root)

    def element(
        self, item: dict[str, Any], child: Child, td: TypeDef, expr: str, resource: It, root: It
    ) -> None:
        kind = child.kind
        if kind == RESOURCE:
            # a contained resource keeps its container as %rootResource; a Bundle
            # entry or a Parameters resource is a root of its own
            if child.element.name == "contained":
                if self.contained:
                    self.resource(item, expr, root, contained=True)
            else:
                self.resource(item, expr, None)
            return
        if kind == BACKBONE:
            path = child.content_path
            invs = _own(td.name, child.element.path)
            if invs:
                self.check(invs, It(item, None, path), path, item, expr, resource, root)
            self.children(item, td, path, expr, resource, root)
            return
        code = child.type_code
        invs = _for_child(td.name, child.element.path, code, kind)
        if invs:
            self.check(invs, It(item, None, code), code, item, expr, resource, root)
        self.children(item, definitions.type_definition(code), code, expr, resource, root)

    def primitive(
        self,
        key: str,
        value: Any,
        companion: Any,
        child: Child,
        td: TypeDef,
        expr: str,
        resource: It,
        root: It,
    ) -> None:
        invs = _for_child(td.name, child.element.path, child.type_code, PRIMITIVE)
        ptd = definitions.type_definition(child.type_code)
        if type(value) is list or type(companion) is list:
            values = value if type(value) is list else []
            comps = companion if type(companion) is list else []
            for i in range(max(len(values), len(comps))):
                v = values[i] if i < len(values) else None
                c = comps[i] if i < len(comps) else None
                self.one_primitive(v, c, child, ptd, invs, f"{expr}.{key}[{i}]", resource, root)
        else:
            self.one_primitive(value, companion, child, ptd, invs, f"{expr}.{key}", resource, root)

    def one_primitive(
        self,
        value: Any,
        companion: Any,
        child: Child,
        ptd: TypeDef,
        invs: tuple[Invariant, ...],
        expr: str,
        resource: It,
        root: It,
    ) -> None:
        if invs and value is not None:
            it = It(value, companion, child.type_code)
            self.check(invs, it, child.type_code, None, expr, resource, root)
        if type(companion) is dict:
            self.children(companion, ptd, ptd.name, expr, resource, root)


# --------------------------------------------------------------------------- native checks


def _dom3(res: Any, expr: str) -> list[str]:
    if type(res) is not dict or type(res.get("contained")) is not list:
        return []
    refs: set[str] = set()
    _local_references(res, refs)
    out: list[str] = []
    for i, c in enumerate(res["contained"]):
        if type(c) is not dict:
            continue
        cid = c.get("id")
        if not isinstance(cid, str) or "#" + cid in refs:
            continue
        inner: set[str] = set()
        _local_references(c, inner)
        if "#" not in inner:  # nor does it refer to its container
            out.append(f"{expr}.contained[{i}]")
    return out


def _local_references(value: Any, out: set[str]) -> None:
    """Every string starting with '#' anywhere in a JSON value (references, canonicals
    and uris to contained resources; a string that is none of those is harmless)."""
    if type(value) is dict:
        for v in value.values():
            _local_references(v, out)
    elif type(value) is list:
        for v in value:
            _local_references(v, out)
    elif type(value) is str and value[:1] == "#":
        out.add(value)


def _rng2(rng: Any, expr: str) -> list[str]:
    if type(rng) is not dict:
        return []
    low, high = rng.get("low"), rng.get("high")
    if type(low) is not dict or type(high) is not dict:
        return []
    lv, hv = low.get("value"), high.get("value")
    if isinstance(lv, bool) or isinstance(hv, bool):
        return []
    if not isinstance(lv, int | Decimal) or not isinstance(hv, int | Decimal):
        return []
    lu = (low.get("system"), low.get("code")) if "code" in low else low.get("unit")
    hu = (high.get("system"), high.get("code")) if "code" in high else high.get("unit")
    if lu != hu:
        return []  # different units: not comparable without UCUM conversion
    return [expr] if lv > hv else []


_NATIVE_CHECKS: Final[Mapping[str, Callable[[Any, str], list[str]]]] = {
    "dom-3": _dom3,
    "rng-2": _rng2,
}


def _items(value: Any, expr: str) -> Iterator[tuple[Any, str]]:
    if type(value) is list:
        for i, item in enumerate(value):
            yield item, f"{expr}[{i}]"
    else:
        yield value, expr


def check_invariants(
    resource: Any, *, best_practice: bool = False, contained: bool = True
) -> list[Issue]:
    """Evaluate the base invariants on every element of a parsed resource.

    Run it on a resource that passed the structure validator: elements it cannot
    place are ignored here. ``best_practice=True`` adds the constraints flagged as
    best practice (dom-6 "a resource should have narrative" ...), which the reference
    validator also ignores by default. ``contained=False`` leaves contained resources
    out (their invariants, and dom-3: whether each is referenced)."""
    walk = _Walk(best_practice, contained)
    if type(resource) is dict and isinstance(resource.get("resourceType"), str):
        with contextlib.suppress(RecursionError):  # reported by the structure validator
            walk.resource(resource, resource["resourceType"], None)
    return walk.issues
