"""Parsing and running FHIRPath expressions on top of fhirpathpy's evaluator.

What this layer adds to fhirpathpy:

* a parser that rejects syntax errors (fhirpathpy's recovers silently and evaluates
  a prefix of the expression);
* member navigation that treats a primitive and its ``_name`` companion as one node
  and records where every node lives (:mod:`._nodes`);
* the FHIR-specific functions and fixes of :mod:`._functions`;
* the standard FHIR environment variables (%resource, %rootResource, %context,
  %ucum, %sct, %loinc, %`vs-*`, %`ext-*`).

fhirpathpy keeps its member navigation in a module-level table; importing this module
replaces that one entry process-wide (this package is the server's only FHIRPath
entry point, so nothing else depends on the original behaviour).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from antlr4 import CommonTokenStream, InputStream
from antlr4.error.ErrorListener import ErrorListener
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

from fhir_server.fhirpath import _fp, _functions
from fhir_server.fhirpath._fixes import number_literal, string_literal
from fhir_server.fhirpath._nodes import Node, child_nodes, data_of

Ast = dict[str, Any]

UCUM = "http://unitsofmeasure.org"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
VALUE_SET_BASE = "http://hl7.org/fhir/ValueSet/"
EXTENSION_BASE = "http://hl7.org/fhir/StructureDefinition/"

_fp.set_model()


class FhirPathError(ValueError):
    """An expression that does not parse, or failed while being evaluated."""

    def __init__(self, expression: str, message: str) -> None:
        super().__init__(f"FHIRPath '{expression}': {message}")
        self.expression = expression
        self.reason = message


class _RaisingListener(ErrorListener):  # type: ignore[misc]
    def syntaxError(
        self, recognizer: Any, offending: Any, line: int, column: int, msg: str, e: Any
    ) -> None:
        raise SyntaxError(f"syntax error at {line}:{column}: {msg}")


# Quoted strings and delimited identifiers, which member-name rewriting must skip.
_QUOTED = re.compile(r"('(?:\\.|[^'\\])*'|`(?:\\.|[^`\\])*`)")
_DIV_MEMBER = re.compile(r"\.(\s*)div\b")


def _quote_div_members(expression: str) -> str:
    """``Narrative.div`` clashes with the ``div`` operator keyword; read ``.div`` as a name.

    The grammar only accepts ``text.`div```, but FHIR tooling (and the official FHIRPath
    Patch tests) write ``text.div``; after a dot it can only be a member name.
    """
    pieces = _QUOTED.split(expression)
    for i in range(0, len(pieces), 2):  # even pieces are outside quotes
        pieces[i] = _DIV_MEMBER.sub(r".\1`div`", pieces[i])
    return "".join(pieces)


def parse(expression: str) -> Ast:
    """Parse an expression into fhirpathpy's AST; syntax errors raise FhirPathError."""
    listener = _RaisingListener()
    lexer = FHIRPathLexer(InputStream(_quote_div_members(expression)))
    lexer.removeErrorListeners()
    lexer.addErrorListener(listener)
    parser = FHIRPathParser(CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser.addErrorListener(listener)
    try:
        tree = parser.entireExpression()  # type: ignore[no-untyped-call]
    except SyntaxError as exc:
        raise FhirPathError(expression, str(exc)) from None
    except Exception as exc:  # antlr4 recognition errors
        raise FhirPathError(expression, f"syntax error: {exc}") from None
    return _fp.ast_of(tree)


class Variables(Mapping[str, Any]):
    """%-variables: the caller's, then the standard FHIR ones."""

    def __init__(self, resource: Any, env: Mapping[str, Any]) -> None:
        self._values: dict[str, Any] = {
            "ucum": UCUM,
            "sct": SNOMED,
            "loinc": LOINC,
            "context": resource,
            "resource": resource,
            "rootResource": resource,
        }
        for name, value in env.items():
            self._values[name.removeprefix("%")] = value

    def __getitem__(self, name: str) -> Any:
        if name in self._values:
            return self._values[name]
        if name.startswith("vs-"):
            return VALUE_SET_BASE + name[3:]
        if name.startswith("ext-"):
            return EXTENSION_BASE + name[4:]
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        return name in self._values or name.startswith(("vs-", "ext-"))

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def run(ast: Ast, expression: str, resource: Any, env: Mapping[str, Any] | None) -> list[Any]:
    """Evaluate a parsed expression; the result items are fhirpathpy nodes/values."""
    _fp.reset_constants()
    ctx: dict[str, Any] = {
        "dataRoot": _fp.arraify(resource),
        "vars": Variables(resource, env or {}),
        "model": _fp.R4_MODEL,
        "userInvocationTable": _functions.TABLE,
    }
    try:
        result = _fp.do_eval(ctx, ctx["dataRoot"], ast["children"][0])
    except FhirPathError:
        raise
    except Exception as exc:  # fhirpathpy raises bare Exceptions of many kinds
        raise FhirPathError(expression, str(exc) or type(exc).__name__) from None
    return result if isinstance(result, list) else [result]


def output_values(items: list[Any]) -> list[Any]:
    """Plain values for callers: node data, without value-less primitives."""
    out: list[Any] = []
    for item in items:
        if isinstance(item, Node) and not item.has_value:
            continue
        out.append(_fp.get_data(item))
    return out


def _member_invocation(ctx: dict[str, Any], parent_data: Any, node: Ast) -> list[Any]:
    key: str = _fp.do_eval(ctx, parent_data, node["children"][0])[0].replace("`", "")
    if not isinstance(parent_data, list):
        return []
    if key[:1].isupper():  # a type name: keeps the resources of that type
        return [
            _fp.create_node(item, key)
            for item in parent_data
            if isinstance(data_of(item), dict) and data_of(item).get("resourceType") == key
        ]
    out: list[Any] = []
    for item in parent_data:
        out.extend(child_nodes(item, key))
    return out


_fp.EVALUATORS["MemberInvocation"] = _member_invocation
_fp.EVALUATORS["NumberLiteral"] = number_literal
_fp.EVALUATORS["StringLiteral"] = string_literal
