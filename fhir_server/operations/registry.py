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


OPERATIONS: dict[str, Operation] = {}


def register(op: Operation) -> Operation:
    OPERATIONS[op.name] = op
    return op


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
    op = OPERATIONS.get(name)
    if op is None:
        raise FhirError.of(404, "not-supported", f"Unknown operation ${name}")
    if level not in op.levels or (
        rtype is not None and op.resource_types is not None and rtype not in op.resource_types
    ):
        raise FhirError.of(404, "not-supported", f"${name} is not available at '{req.path}'")
    method = "GET" if req.method == "HEAD" else req.method
    if method not in op.methods:
        raise FhirError.of(405, "not-supported", f"${name} does not accept {req.method}")
    return await op.handler(ctx, req, rtype, rid)
