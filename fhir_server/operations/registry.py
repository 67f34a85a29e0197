"""Operations declared as data: the router invokes them and the CapabilityStatement
lists them from the same declarations.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from fhir_server.errors import FhirError
from fhir_server.interactions import resources as res
from fhir_server.interactions.context import Context
from fhir_server.interactions.model import FhirRequest, FhirResponse

Level = Literal["system", "type", "instance"]
# handler(ctx, request, resource_type or None, id or None)
OperationHandler = Callable[[Context, FhirRequest, str | None, str | None], Awaitable[FhirResponse]]


@dataclass(frozen=True, slots=True)
class Operation:
    name: str  # without the leading $
    definition: str  # canonical URL of the OperationDefinition
    levels: frozenset[Level]
    handler: OperationHandler
    resource_types: frozenset[str] | None = None  # None: any type
    affects_state: bool = False
    methods: frozenset[str] = frozenset({"POST"})


OPERATIONS: dict[str, Operation] = {}  # by name: its first declaration
# Every declaration of each name. A name may be declared at several levels or for
# several types, each with its own OperationDefinition: Bulk Data's ``$export`` is
# three operations (system, Patient, Group).
_DECLARED: dict[str, list[Operation]] = {}


def _overlaps(a: Operation, b: Operation) -> bool:
    if not a.levels & b.levels:
        return False
    if a.resource_types is None or b.resource_types is None:
        return True
    return bool(a.resource_types & b.resource_types)


def register(op: Operation) -> Operation:
    """Declare an operation; it replaces the declarations of its name it overlaps
    (same level and type), and sits beside the others."""
    kept = [o for o in _DECLARED.get(op.name, ()) if not _overlaps(o, op)]
    _DECLARED[op.name] = [*kept, op]
    OPERATIONS[op.name] = _DECLARED[op.name][0]
    return op


def declared() -> list[Operation]:
    """Every declaration (the CapabilityStatement lists each with its definition)."""
    return [op for ops in _DECLARED.values() for op in ops]


def find(name: str, level: Level, resource_type: str | None) -> Operation | None:
    """The declaration of ``$name`` that serves this level and type, if any."""
    for op in _DECLARED.get(name, ()):
        if level in op.levels and (
            resource_type is None or op.resource_types is None or resource_type in op.resource_types
        ):
            return op
    return None


async def invoke(ctx: Context, req: FhirRequest, parts: list[str]) -> FhirResponse:
    name = parts[-1][1:]
    level: Level
    rtype: str | None = None
    rid: str | None = None
    if len(parts) == 1:
        level = "system"
    elif len(parts) == 2:
        level, rtype = "type", parts[0]
    elif len(parts) == 3:
        level, rtype, rid = "instance", parts[0], parts[1]
    else:
        raise FhirError.of(404, "not-found", f"No operation at '{req.path}'")
    if rtype is not None:
        res.check_type(rtype)
    if rid is not None:
        res.check_id(rid)
    if name not in _DECLARED:
        raise FhirError.of(404, "not-supported", f"Unknown operation ${name}")
    op = find(name, level, rtype)
    if op is None:
        raise FhirError.of(404, "not-supported", f"${name} is not available at '{req.path}'")
    method = "GET" if req.method == "HEAD" else req.method
    if method not in op.methods:
        raise FhirError.of(405, "not-supported", f"${name} does not accept {req.method}")
    return await op.handler(ctx, req, rtype, rid)
