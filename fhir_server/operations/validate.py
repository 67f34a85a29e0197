"""``$validate``: https://hl7.org/fhir/R4/resource-operation-validate.html

* ``POST [base]/[type]/$validate`` and ``POST [base]/[type]/[id]/$validate`` with the
  resource as the body, or a Parameters body with ``resource``, ``mode``
  (``create`` | ``update`` | ``delete`` | ``profile``) and ``profile``; ``mode`` and
  ``profile`` may also be URL parameters;
* ``GET [base]/[type]/[id]/$validate[?profile=...&mode=...]`` validates the stored
  resource.

The answer is ``200`` with an OperationOutcome listing the issues -- valid or not, as
the operation itself succeeded -- and a single information issue "All OK" when there
are none. ``400`` is for requests the operation cannot process (no resource, an
unknown mode, a malformed body), ``404`` for an instance that does not exist.

Modes: without a mode (or ``create``) the resource is validated as a write would
validate it: base definitions, invariants, ``meta.profile``, the profiles the
settings require for its type, and ``profile`` if given. ``update`` also requires the
resource's id (and at instance level that it matches the URL). ``profile`` validates
against the base definitions and the named profile only. ``delete`` looks at no
content: the server does not enforce referential integrity, so nothing blocks a
deletion and the outcome is information only (whether the instance exists).
"""

from __future__ import annotations

from typing import Any, Final

from fhir_server import jsonio
from fhir_server.errors import FhirError, Issue, bad_request, operation_outcome
from fhir_server.interactions import resources as res
from fhir_server.interactions.context import Context
from fhir_server.interactions.model import FhirRequest, FhirResponse
from fhir_server.operations.claims_scrub import validate_hook
from fhir_server.operations.registry import Operation, register
from fhir_server.validation.service import validate

DEFINITION: Final = "http://hl7.org/fhir/OperationDefinition/Resource-validate"
MODES: Final = ("create", "update", "delete", "profile")


def _parameter_value(param: dict[str, Any]) -> Any:
    for key, value in param.items():
        if key.startswith("value"):
            return value
    return None


def _is_parameters_call(body: dict[str, Any]) -> bool:
    """A Parameters body carries the operation's parameters when it names them; any
    other Parameters resource is itself the resource to validate."""
    if body.get("resourceType") != "Parameters":
        return False
    names = {p.get("name") for p in body.get("parameter") or () if isinstance(p, dict)}
    return bool(names) and names <= {"resource", "mode", "profile"}


def _arguments(
    req: FhirRequest,
) -> tuple[dict[str, Any] | None, str | None, list[str]]:
    """(resource, mode, profiles) from the body and the URL."""
    mode = req.param("mode")
    profiles = [v for k, v in req.params if k == "profile" and v]
    resource: dict[str, Any] | None = None
    body: Any = req.parsed
    if body is None and req.body:
        body = res.parse_body(req.body)
    if body is not None:
        if not isinstance(body, dict):
            raise bad_request("The body of $validate must be a resource or a Parameters resource")
        if _is_parameters_call(body):
            for p in body.get("parameter") or ():
                name = p.get("name")
                if name == "resource":
                    if not isinstance(p.get("resource"), dict):
                        raise bad_request("The 'resource' parameter must hold a resource")
                    resource = p["resource"]
                elif name == "mode":
                    value = _parameter_value(p)
                    if not isinstance(value, str):
                        raise bad_request("The 'mode' parameter must be a code")
                    mode = value
                elif name == "profile":
                    value = _parameter_value(p)
                    if not isinstance(value, str):
                        raise bad_request("The 'profile' parameter must be a uri")
                    profiles.append(value)
        else:
            resource = body
    if mode is not None and mode not in MODES:
        raise bad_request(f"Unknown $validate mode '{mode}' (expected one of {', '.join(MODES)})")
    return resource, mode, profiles


async def _stored(ctx: Context, rtype: str, rid: str) -> dict[str, Any]:
    v = await ctx.current(rtype, rid)
    if v is None or v.deleted or v.content is None:
        raise FhirError.of(404, "not-found", f"{rtype}/{rid} is not known")
    stored: dict[str, Any] = jsonio.loads(v.content)
    return stored


async def _delete_check(ctx: Context, rtype: str | None, rid: str | None) -> list[Issue]:
    if rtype is None or rid is None:
        raise bad_request("mode=delete needs an instance: [type]/[id]/$validate")
    v = await ctx.current(rtype, rid)
    where = f"{rtype}/{rid}"
    if v is None or v.deleted:
        message = f"{where} does not exist; deleting it would change nothing"
    else:
        message = (
            f"{where} can be deleted: this server does not refuse deletions for resources "
            "that are referenced by others"
        )
    return [Issue("information", "informational", message, (rtype,))]


async def validate_operation(
    ctx: Context, req: FhirRequest, rtype: str | None, rid: str | None
) -> FhirResponse:
    resource, mode, profiles = _arguments(req)
    if mode == "delete":
        return FhirResponse(200, resource=operation_outcome(await _delete_check(ctx, rtype, rid)))
    if resource is None:
        if rtype is None or rid is None or req.method not in ("GET", "HEAD"):
            raise bad_request("$validate needs a resource: the body or a 'resource' parameter")
        resource = await _stored(ctx, rtype, rid)
    if mode == "profile" and not profiles:
        raise bad_request("mode=profile needs a 'profile' parameter")
    issues: list[Issue] = []
    if mode == "update" and rid is not None and resource.get("id") not in (None, rid):
        issues.append(
            Issue(
                "error",
                "invalid",
                f"the resource id '{resource.get('id')}' does not match the id in the URL, '{rid}'",
                (f"{rtype}.id",),
            )
        )
    issues += validate(
        resource,
        profiles=profiles,
        mode="update" if mode == "update" else "create" if mode == "create" else None,
        expected_type=rtype,
        required_profiles=ctx.settings.required_profiles if mode != "profile" else (),
        meta_profiles=mode != "profile",
        registry=ctx.profiles,
    )
    # A Claim is also scrubbed against its payer's billing rules (nothing for other types)
    issues += await validate_hook(ctx, resource)
    return FhirResponse(200, resource=operation_outcome(issues))


OPERATION: Final = register(
    Operation(
        name="validate",
        definition=DEFINITION,
        levels=frozenset({"type", "instance"}),
        handler=validate_operation,
        methods=frozenset({"GET", "POST"}),
    )
)
