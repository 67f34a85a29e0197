"""The typed boundary to fhirpathpy: everything this package calls in it, in one place.

fhirpathpy ships ``py.typed`` but its functions are unannotated; wrapping them here
keeps the rest of the package type-checked strictly.
"""

from __future__ import annotations

from typing import Any

from fhirpathpy import engine as _engine
from fhirpathpy.engine import util as _util
from fhirpathpy.engine.evaluators import evaluators as EVALUATORS
from fhirpathpy.engine.invocations import invocation_registry as _registry
from fhirpathpy.engine.invocations.constants import constants as _constants
from fhirpathpy.engine.nodes import (
    FP_DateTime,
    FP_Quantity,
    FP_Time,
    FP_Type,
    ResourceNode,
    TypeInfo,
)
from fhirpathpy.models import models as _models
from fhirpathpy.parser.ASTPathListener import ASTPathListener

__all__ = [
    "EVALUATORS",
    "R4_MODEL",
    "REGISTRY",
    "FP_DateTime",
    "FP_Quantity",
    "FP_Time",
    "FP_Type",
    "ResourceNode",
    "TypeInfo",
    "arraify",
    "ast_of",
    "create_node",
    "do_eval",
    "get_data",
    "reset_constants",
    "type_is",
]

R4_MODEL: dict[str, Any] = _models["r4"]
REGISTRY: dict[str, dict[str, Any]] = _registry  # type: ignore[assignment]


def do_eval(ctx: dict[str, Any], data: Any, node: dict[str, Any]) -> Any:
    return _engine.do_eval(ctx, data, node)  # type: ignore[no-untyped-call]


def get_data(value: Any) -> Any:
    return _util.get_data(value)  # type: ignore[no-untyped-call]


def arraify(value: Any) -> list[Any]:
    return _util.arraify(value)  # type: ignore[no-untyped-call,no-any-return]


def create_node(data: Any, path: str | None = None) -> Any:
    return ResourceNode.create_node(data, path)  # type: ignore[no-untyped-call]


def reset_constants() -> None:
    _constants.reset()  # type: ignore[no-untyped-call]


def type_is(value: Any, type_info: Any) -> bool:
    """fhirpathpy's is-a test of a value/node against a type specifier."""
    info = TypeInfo.from_value(value)  # type: ignore[no-untyped-call]
    return bool(info is not None and info.is_(type_info))


def ast_of(tree: Any) -> dict[str, Any]:
    """fhirpathpy's AST for an antlr4 parse tree of the entireExpression rule."""
    from antlr4.tree.Tree import ParseTreeWalker

    listener = ASTPathListener()  # type: ignore[no-untyped-call]
    ParseTreeWalker().walk(listener, tree)
    entire: dict[str, Any] = listener.parentStack[0]["children"][0]
    return {"children": entire["children"]}


def set_model() -> None:
    """fhirpathpy only sets the model as a side effect of is()/as(); set it up front."""
    TypeInfo.model = R4_MODEL  # type: ignore[assignment]
