"""FHIRPath for the server: search indexing, invariants and FHIRPath Patch.

The one entry point for FHIRPath in the server, a cached layer over fhirpathpy with the
R4 model. Callers compile an expression once and apply it to many resources::

    fn = compile_expression("Observation.subject.where(resolve() is Patient)")
    fn(resource, {})            # -> list of plain values
    evaluate(resource, "Patient.name.given")

Results share structure with the input resource (they are not copies): treat them as
read-only. FHIR decimals (:class:`~fhir_server.jsonio.FhirDecimal`) are Decimals and
behave as numbers. Date/time literals and computed dates come back as fhirpathpy's
``FP_DateTime``/``FP_Time``; element values come back as they are in the JSON.

:func:`locate` returns where each selected element lives (object, key, index), which
is what FHIRPath Patch needs to change a resource; :func:`element_info` is the R4
model's view of an element (its path, type and choice types). Expressions that do
not parse, and evaluation failures, raise :class:`FhirPathError` (a ``ValueError``).

Added to fhirpathpy (``_functions``): ``resolve()`` (contained/Bundle references,
otherwise a stand-in of the target type), ``hasValue()``, ``getValue()``,
``htmlChecks()``, ``extension()``/``children()``/``descendants()`` that see primitive
extensions, ``as``/``ofType``/``is`` that use the R4 type model (``as`` filters a
collection, as R4 SearchParameter expressions need), ``hasExtension()`` (used by one
R4 SearchParameter) and a few FHIRPath 2.x string functions. Fixed in fhirpathpy
(``_fixes``, ``_engine``): syntax errors, a primitive and its ``_name`` counted twice,
``1.0`` read as an Integer, string-literal escapes, collection ``=``/``~``, and more;
``tests/fhirpath`` runs the official suite and lists what still fails. A member
named ``div`` (``text.div``) is accepted although the grammar reserves the word.
Standard variables: %resource, %rootResource, %context, %ucum, %sct, %loinc,
%`vs-[name]`, %`ext-[name]`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from fhir_server.fhirpath._engine import FhirPathError, output_values, parse, run
from fhir_server.fhirpath._nodes import ElementInfo, Node, data_of, element_info

__all__ = [
    "Compiled",
    "CompiledExpression",
    "ElementInfo",
    "FhirPathError",
    "Location",
    "compile_expression",
    "element_info",
    "evaluate",
    "locate",
]

Env = Mapping[str, Any] | None
Compiled = Callable[..., list[Any]]


@dataclass(frozen=True, slots=True)
class Location:
    """Where a selected element lives in the resource.

    ``parent[key]`` holds it (``parent[key][index]`` when the element repeats).
    ``value`` is the element itself: the JSON object, or a primitive's value, which
    is None for a primitive that only has extensions (those live in
    ``parent["_" + key]``). ``type`` is the element's type in the R4 model (a type
    code such as ``HumanName``/``date``, or a backbone element's path such as
    ``Patient.contact``); ``element`` is the model's view of the element as a child
    of its parent (its ElementDefinition path and, for ``value[x]``, its choices).
    The resource itself has no parent (``parent``/``key``/``element`` None).
    """

    parent: dict[str, Any] | None
    key: str | None
    index: int | None
    value: Any
    type: str | None
    element: ElementInfo | None = None


def _location(node: Node) -> Location:
    where = node.where
    element = element_info(where.parent_type, where.name) if where.parent_type else None
    value = node.data if node.has_value else None
    return Location(where.container, where.key, where.index, value, node.path, element)


class CompiledExpression:
    """A parsed expression; call it with ``(resource, env=None)``."""

    __slots__ = ("_ast", "expression")

    def __init__(self, expression: str) -> None:
        self.expression = expression
        self._ast = parse(expression)

    def __call__(self, resource: Any, env: Env = None) -> list[Any]:
        return output_values(run(self._ast, self.expression, resource, env))

    def nodes(self, resource: Any, env: Env = None) -> list[Any]:
        """The raw result: fhirpathpy nodes (location-aware for elements) and values."""
        return run(self._ast, self.expression, resource, env)

    def __repr__(self) -> str:
        return f"CompiledExpression({self.expression!r})"


@lru_cache(maxsize=4096)
def compile_expression(expression: str) -> CompiledExpression:
    """Compile a FHIRPath expression against the R4 model (cached)."""
    return CompiledExpression(expression)


def evaluate(resource: Any, expression: str, env: Env = None) -> list[Any]:
    return compile_expression(expression)(resource, env)


def locate(resource: dict[str, Any], expression: str, env: Env = None) -> list[Location]:
    """The elements an expression selects, with where each one lives.

    Raises FhirPathError when the expression selects anything that is not an element
    of ``resource`` (a literal, a computed value, a resolved reference).
    """
    out: list[Location] = []
    for item in compile_expression(expression).nodes(resource, env):
        if isinstance(item, Node):
            out.append(_location(item))
        elif data_of(item) is resource:
            out.append(Location(None, None, None, resource, resource.get("resourceType")))
        else:
            raise FhirPathError(
                expression, "selects something that is not an element of the resource"
            )
    return out
