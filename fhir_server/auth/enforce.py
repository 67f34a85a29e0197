"""Enforcement of SMART scopes on FHIR interactions (the router calls it when a
request carries a :class:`~fhir_server.auth.access.Principal`).

Rules, per interaction (``403`` = the scopes do not allow the interaction on the
type; ``404`` = the resource exists but the token may not see it, answered like an
unknown resource so that its existence is not revealed):

- ``read``/``vread``/``history-instance``: ``403`` without a scope for the type;
  ``404`` when the resource (the version read, or the current one for history) is
  outside the scopes' parameters or the patient's compartment.
- ``create``: the new resource must be allowed (compartment, scope parameters).
- ``update``/``patch``/``delete`` of an instance: the current resource must be
  allowed (``404`` when it cannot even be read, ``403`` otherwise), and the stored
  result is checked before the unit of work commits (a write cannot move a resource
  out of what the token may write). An update that creates needs ``create`` too.
- conditional ``update``/``patch``/``delete`` (type level): the matched resource is
  not known beforehand, so they need a grant that does not depend on the resource
  (a ``user/``/``system/`` scope without parameters); a conditional update that
  creates is allowed with a per-resource grant (the new resource is checked).
- searches: restricted to the patient's compartment for ``patient/`` scopes (see
  :func:`restore_links`), then every entry (matches and ``_include``\\ d /
  ``_revinclude``\\ d resources) is checked with :func:`~fhir_server.auth.access.can`
  unless a grant makes that unnecessary; ``Bundle.total`` is dropped when matches had
  to be filtered (it would count hidden resources).
- history of a type or the system: entries are filtered the same way; deletions
  (no resource to check) are dropped when filtering is needed.
- transaction/batch: each entry goes through the router (and so these rules);
  transaction ``create`` entries, which the Bundle processor writes directly, are
  checked up front, as is every write of an AuditEvent or Provenance (``405``: the
  server writes those, see :mod:`fhir_server.auth.audit`).
- operations: ``$generate-claim``/``$generate`` need ``read`` of Encounter, and with
  ``persist=true`` ``create`` and ``update`` of Claim and ``update`` of Encounter;
  other operations need ``update`` of their type when they change state, else
  ``read`` (``$validate``, ``$expand``, ``$lookup`` ...); an instance-level
  operation on a resource the token cannot read is ``404``.
- Bulk Data ``$export``: ``Group/[id]/$export`` needs ``read`` of the Group; the
  types exported need ``user/`` or ``system/`` scopes that permit searching them
  (:func:`export_types`: ``403`` for a ``_type`` the scopes do not cover, and for a
  token with ``patient/`` scopes only), and each resource written must be allowed by
  such a scope (:func:`export_filter`, the check searches make).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

from fhir_server import jsonio
from fhir_server.auth.access import Principal, can, forbidden, needs_result_filter
from fhir_server.auth.audit import refuse_server_written
from fhir_server.auth.scopes import ResourceScope
from fhir_server.errors import FhirError
from fhir_server.interactions import resources as res
from fhir_server.interactions.context import Context
from fhir_server.interactions.model import FhirRequest, FhirResponse

Handler = Callable[..., Awaitable[FhirResponse]]

READS = frozenset({"read", "vread", "history-instance"})
WRITES = frozenset({"create", "update", "patch", "delete"})
HISTORY = frozenset({"history-type", "history-system"})
_CLAIM_OPERATIONS = frozenset({"generate-claim", "generate"})


def not_found(resource_type: str, id: str) -> FhirError:
    return FhirError.of(404, "not-found", f"{resource_type}/{id} is not known")


def blanket(principal: Principal, interaction: str, resource_type: str | None) -> bool:
    """Does a grant allow the interaction on every resource of the type (a
    ``user/``/``system/`` scope without parameters)? Then no per-resource check."""
    return principal.permissions.blanket(interaction, resource_type)


def _require(principal: Principal, interaction: str, resource_type: str | None) -> None:
    if not can(principal, interaction, resource_type):
        raise forbidden()


def _content(content: bytes | None) -> dict[str, Any] | None:
    if content is None:
        return None
    data = jsonio.loads(content)
    return data if isinstance(data, dict) else None


# --------------------------------------------------------------------------- reads


async def check_read(
    ctx: Context, principal: Principal, interaction: str, args: Sequence[str]
) -> None:
    """Before a read, vread or instance history (``args`` = type, id[, vid])."""
    rtype, id = args[0], args[1]
    if blanket(principal, interaction, rtype):
        res.check_id(id)
        return  # every resource of the type is allowed: nothing to look at
    _require(principal, interaction, rtype)
    res.check_id(id)
    if interaction == "vread":
        vid = args[2]
        version = await ctx.store.vread(rtype, id, int(vid)) if vid.isdigit() else None
    else:
        version = await ctx.current(rtype, id)
    if version is None:
        return  # the interaction answers 404 itself
    resource = _content(version.content)
    if resource is None:
        if not blanket(principal, interaction, rtype):
            raise not_found(rtype, id)  # a deletion: nothing to check it against
    elif not can(principal, interaction, rtype, resource, base_url=ctx.base_url):
        raise not_found(rtype, id)


# --------------------------------------------------------------------------- writes


def _id_from(resp: FhirResponse, ctx: Context, resource_type: str) -> str | None:
    resource = resp.resource
    if (
        resource is not None
        and isinstance(resource.get("id"), str)
        and resource.get("resourceType") == resource_type
    ):
        return str(resource["id"])
    location = resp.headers.get("Location") or resp.headers.get("location")
    if location:
        rest = location.removeprefix(ctx.base_url.rstrip("/") + "/")
        parts = rest.split("/")
        if len(parts) >= 2 and parts[0] == resource_type:
            return parts[1]
    return None


async def guarded_write(
    ctx: Context,
    principal: Principal,
    interaction: str,
    handler: Handler,
    req: FhirRequest,
    args: Sequence[str],
) -> FhirResponse:
    """Check, run the write in a unit of work, check the stored result, commit."""
    rtype = args[0]
    _require(principal, interaction, rtype)
    base = ctx.base_url
    instance = len(args) >= 2
    new: dict[str, Any] | None = None
    if interaction in ("create", "update"):
        new = res.parse_resource(req, rtype)
        if not can(principal, interaction, rtype, new, base_url=base):
            raise forbidden("The access token does not permit writing this resource")
    conditional_needs_create = False
    if instance:
        id = args[1]
        res.check_id(id)
        current = await ctx.current(rtype, id)
        old = _content(current.content) if current is not None else None
        if old is not None:
            if not can(principal, interaction, rtype, old, base_url=base):
                if not can(principal, "read", rtype, old, base_url=base):
                    raise not_found(rtype, id)
                raise forbidden()
        elif interaction == "update" and not can(principal, "create", rtype, new, base_url=base):
            raise forbidden("The access token does not permit creating this resource")
    elif interaction != "create" and not blanket(principal, interaction, rtype):
        if interaction != "update":
            raise forbidden(f"A conditional {interaction} needs a scope that covers every {rtype}")
        conditional_needs_create = True
    async with ctx.writing() as uow:
        resp = await handler(ctx.within(uow), req, *args)
        if conditional_needs_create and resp.status != 201:
            raise forbidden(f"A conditional update of an existing {rtype} needs a broader scope")
        if interaction != "delete":
            id_ = args[1] if instance else _id_from(resp, ctx, rtype)
            stored = await uow.read(rtype, id_) if id_ is not None else None
            result = _content(stored.content) if stored is not None else None
            if result is not None and not can(principal, interaction, rtype, result, base_url=base):
                raise forbidden("The access token does not permit the resulting resource")
    return resp


async def check_transaction(ctx: Context, principal: Principal, req: FhirRequest) -> None:
    """The create entries of a transaction (the others are dispatched one by one),
    and no write of a resource only the server writes (``405``) in any entry."""
    data = req.parsed if req.parsed is not None else res.parse_body(req.body)
    if not isinstance(data, dict) or data.get("type") != "transaction":
        return
    for entry in data.get("entry") or ():
        if not isinstance(entry, dict):
            continue
        request = entry.get("request") or {}
        resource = entry.get("resource")
        if not isinstance(request, dict):
            continue
        method = str(request.get("method", "")).upper()
        url = request.get("url")
        if method not in ("GET", "HEAD") and isinstance(url, str):
            path = url.removeprefix(ctx.base_url.rstrip("/") + "/").lstrip("/")
            refuse_server_written(path.split("?", 1)[0].split("/", 1)[0])
        if method != "POST":
            continue
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            continue
        rtype = resource["resourceType"]
        if not can(principal, "create", rtype, resource, base_url=ctx.base_url):
            raise forbidden(f"The access token does not permit creating this {rtype}")


# --------------------------------------------------------------------------- searches


def restore_links(
    bundle: Mapping[str, Any], base_url: str, compartment: tuple[str, str], resource_type: str
) -> None:
    """A type search run as a compartment search: give its links the path the client
    asked for (the next page is restricted again, by the same token)."""
    inner = f"{base_url.rstrip('/')}/{compartment[0]}/{compartment[1]}/{resource_type}"
    outer = f"{base_url.rstrip('/')}/{resource_type}"
    for link in bundle.get("link") or ():
        url = link.get("url")
        if isinstance(url, str) and (url == inner or url.startswith(inner + "?")):
            link["url"] = outer + url[len(inner) :]


def _subsetted(resource: Mapping[str, Any]) -> bool:
    tags = (resource.get("meta") or {}).get("tag") or ()
    return any(isinstance(t, dict) and t.get("code") == "SUBSETTED" for t in tags)


async def _visible(
    ctx: Context, principal: Principal, interactions: Sequence[str], resource: dict[str, Any]
) -> bool:
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        return False
    if any(blanket(principal, i, rtype) for i in interactions):
        return True
    if _subsetted(resource) and isinstance(resource.get("id"), str):
        # _summary/_elements may have removed what the decision needs
        stored = await ctx.store.read(rtype, resource["id"])
        full = _content(stored.content) if stored is not None else None
        if full is None:
            return False
        resource = full
    return any(can(principal, i, rtype, resource, base_url=ctx.base_url) for i in interactions)


async def filter_search(
    ctx: Context,
    principal: Principal,
    bundle: dict[str, Any],
    resource_type: str | None,
    compartment_applied: bool,
) -> None:
    """Drop the entries of a searchset the token may not see (in place)."""
    check_matches = (
        needs_result_filter(principal, "search-type", resource_type)
        if compartment_applied
        else not blanket(principal, "search-type", resource_type)
    )
    kept: list[dict[str, Any]] = []
    for entry in bundle.get("entry") or ():
        mode = (entry.get("search") or {}).get("mode")
        if mode == "match" and not check_matches:
            kept.append(entry)
            continue
        resource = entry.get("resource")
        if isinstance(resource, jsonio.Stored):
            resource = entry["resource"] = jsonio.resource(resource)
        if mode == "outcome" or not isinstance(resource, dict):
            kept.append(entry)
            continue
        if mode == "match":
            if await _visible(ctx, principal, ("search-type",), resource):
                kept.append(entry)
        elif await _visible(ctx, principal, ("read", "search-type"), resource):
            kept.append(entry)
    if check_matches:
        bundle.pop("total", None)  # it would count resources the token cannot see
    if kept:
        bundle["entry"] = kept
    else:
        bundle.pop("entry", None)


async def filter_history(
    ctx: Context, principal: Principal, bundle: dict[str, Any], interaction: str
) -> None:
    """Drop the entries of a type/system history the token may not see (in place)."""
    kept: list[dict[str, Any]] = []
    for entry in bundle.get("entry") or ():
        # the history entry's request.url starts with the type (Type/id, or Type)
        rtype = str((entry.get("request") or {}).get("url", "")).split("/")[0]
        if not rtype:
            continue
        if blanket(principal, interaction, rtype):
            kept.append(entry)
            continue
        resource = entry.get("resource")
        if isinstance(resource, jsonio.Stored):
            resource = entry["resource"] = jsonio.resource(resource)
        if isinstance(resource, dict) and can(
            principal, interaction, rtype, resource, base_url=ctx.base_url
        ):
            kept.append(entry)
    if kept:
        bundle["entry"] = kept
    else:
        bundle.pop("entry", None)


def require(principal: Principal, interaction: str, resource_type: str | None) -> None:
    """``403`` unless a scope allows the interaction on the type (for some resources)."""
    _require(principal, interaction, resource_type)


# --------------------------------------------------------------------------- operations


def _persist(req: FhirRequest) -> bool:
    if any(k == "persist" and v.strip().lower() == "true" for k, v in req.params):
        return True
    data = req.parsed
    if data is None and req.body:
        try:
            data = jsonio.loads(req.body)
        except jsonio.JsonError:
            return False
    if isinstance(data, dict) and data.get("resourceType") == "Parameters":
        for p in data.get("parameter") or ():
            if isinstance(p, dict) and p.get("name") == "persist":
                return p.get("valueBoolean") is True
    return False


def operation_needs(
    name: str, resource_type: str | None, affects_state: bool, req: FhirRequest
) -> list[tuple[str, str | None]]:
    """The (interaction, type) pairs an operation needs."""
    if name == "export":  # the types are checked by the operation (export_types)
        return [("read", "Group")] if resource_type == "Group" else []
    if name in _CLAIM_OPERATIONS:
        needs: list[tuple[str, str | None]] = [("read", "Encounter")]
        if _persist(req):
            needs += [("create", "Claim"), ("update", "Claim"), ("update", "Encounter")]
        return needs
    return [("update" if affects_state else "read", resource_type)]


async def check_operation(
    ctx: Context, principal: Principal, req: FhirRequest, parts: Sequence[str]
) -> None:
    from fhir_server.operations.registry import OPERATIONS

    name = parts[-1][1:]
    rtype = parts[0] if len(parts) >= 2 else None
    op = OPERATIONS.get(name)
    if op is None:
        return  # the registry answers 404
    for interaction, type_ in operation_needs(name, rtype, op.affects_state, req):
        _require(principal, interaction, type_)
    if len(parts) == 3 and rtype is not None:
        await check_read(ctx, principal, "read", (rtype, parts[1]))


# --------------------------------------------------------------------------- bulk export

_BULK_LEVELS: Final = ("user", "system")


def _bulk_grants(principal: Principal, resource_type: str) -> list[ResourceScope]:
    grants = principal.permissions.granting("search-type", resource_type)
    return [s for s in grants if s.level in _BULK_LEVELS]


def export_types(
    principal: Principal, candidates: Sequence[str], requested: Sequence[str] | None
) -> list[str]:
    """The types a Bulk Data export of this principal contains: ``requested`` (the
    ``_type`` parameter), each of which must be searchable under a ``user/`` or
    ``system/`` scope (``403`` naming those that are not), or else the ``candidates``
    that are (``403`` when there are none). ``patient/`` scopes grant no bulk export."""
    if requested is not None:
        refused = [t for t in requested if not _bulk_grants(principal, t)]
        if refused:
            raise forbidden(
                "Bulk export needs user/ or system/ read scopes for every type exported;"
                f" the access token has none for {', '.join(refused)}"
            )
        return list(requested)
    allowed = [t for t in candidates if _bulk_grants(principal, t)]
    if not allowed:
        raise forbidden("Bulk export needs user/ or system/ read scopes")
    return allowed


def export_filter(
    principal: Principal, resource_type: str
) -> Callable[[Mapping[str, Any]], bool] | None:
    """Which resources of the type an export may contain: None when all of them (a
    ``user/``/``system/`` scope without parameters grants the type), else the test of
    one resource against the scopes' parameters."""
    grants = _bulk_grants(principal, resource_type)
    if any(not s.parameters for s in grants):
        return None
    permissions = principal.permissions

    def allowed(resource: Mapping[str, Any]) -> bool:
        return permissions.allows("search-type", resource_type, resource, levels=_BULK_LEVELS)

    return allowed
