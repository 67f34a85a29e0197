"""The write core: create, update and delete on a unit of work.

HTTP handlers and the transaction processor both come here, so a write behaves the
same whether it arrives alone or inside a Bundle. Every write is validated against the
R4 base definitions before it reaches the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from fhir_server import jsonio, validation
from fhir_server.errors import FhirError, Issue, bad_request, has_errors
from fhir_server.interactions import resources as res
from fhir_server.interactions.context import Context, conflict
from fhir_server.storage.port import NewVersion, StoredVersion, UnitOfWork, VersionConflict


@dataclass(frozen=True, slots=True)
class WriteResult:
    version: StoredVersion
    status: int  # 200 updated / existing, 201 created, 204 deleted / nothing to delete
    resource: dict[str, Any] | None  # the stored resource (None for a deletion)
    issues: Sequence[Issue] = ()


def validate(ctx: Context, resource: dict[str, Any], resource_type: str) -> list[Issue]:
    """Validate a resource about to be written; raise when there is an error.

    The R4 base rules (structure, then the base invariants) fail with 400; the
    profiles the resource claims in ``meta.profile`` or that the server requires for
    its type fail with 422 (http.html: the resource violates applicable profiles).
    Warnings and information come back to go into a ``return=OperationOutcome``.
    """
    if not ctx.settings.validate_writes:
        return []
    issues = validation.validate_resource(resource, expected_type=resource_type)
    if not has_errors(issues):
        issues += validation.check_invariants(resource)
    if has_errors(issues):
        raise FhirError(400, tuple(issues))
    profile_issues = validation.validate_profiles(
        resource, required_profiles=ctx.settings.required_profiles, registry=ctx.profiles
    )
    if has_errors(profile_issues):
        raise FhirError(422, tuple(profile_issues))
    return issues + profile_issues


def criteria_params(query: str) -> list[tuple[str, str]]:
    """Search parameters of a conditional interaction (`If-None-Exist`, `Type?query`)."""
    query = query.lstrip("?")
    if "?" in query:  # a full `Type?params` string
        query = query.split("?", 1)[1]
    params = parse_qsl(query, keep_blank_values=True)
    if not params:
        raise bad_request(f"The search criteria '{query}' are empty")
    return params


async def resolve_conditional(
    ctx: Context, uow: UnitOfWork, resource_type: str, params: Sequence[tuple[str, str]]
) -> list[str]:
    return await uow.search(resource_type, params, base_url=ctx.base_url)


def _if_match(current: StoredVersion | None, if_match: int | None, what: str) -> None:
    if if_match is None:
        return
    if current is None or current.version != if_match:
        found = "does not exist" if current is None else f"is at version {current.version}"
        raise FhirError.of(
            412,
            "conflict",
            f"If-Match expected version {if_match} of {what}, but it {found}",
        )


async def _put(
    uow: UnitOfWork,
    resource_type: str,
    id: str,
    version: int,
    method: Any,
    resource: dict[str, Any] | None,
    last_updated: str,
) -> StoredVersion:
    content = res.stamp(resource, id, version, last_updated) if resource is not None else None
    try:
        return await uow.put(
            NewVersion(resource_type, id, version, last_updated, method, content, resource)
        )
    except VersionConflict as exc:
        raise conflict(exc) from None


async def create(
    ctx: Context,
    uow: UnitOfWork,
    resource_type: str,
    resource: dict[str, Any],
    *,
    if_none_exist: str | None = None,
    id: str | None = None,
) -> WriteResult:
    """Create with a server-assigned id (or ``id``, chosen by a transaction beforehand)."""
    if if_none_exist:
        matches = await resolve_conditional(ctx, uow, resource_type, criteria_params(if_none_exist))
        if len(matches) > 1:
            raise FhirError.of(
                412,
                "multiple-matches",
                f"If-None-Exist '{if_none_exist}' matched {len(matches)} resources;"
                " the criteria are not selective enough",
            )
        if matches:
            existing = await uow.read(resource_type, matches[0])
            assert existing is not None and existing.content is not None
            return WriteResult(existing, 200, jsonio.loads(existing.content))
    issues = validate(ctx, resource, resource_type)
    new_id = id or res.new_id()
    # The client's id is ignored on create (http.html#create).
    version = await _put(uow, resource_type, new_id, 1, "create", resource, res.now_instant())
    return WriteResult(version, 201, resource, issues)


async def update(
    ctx: Context,
    uow: UnitOfWork,
    resource_type: str,
    id: str,
    resource: dict[str, Any],
    *,
    if_match: int | None = None,
    method: str = "update",
) -> WriteResult:
    """Update (or update-as-create when the id is new or was deleted)."""
    res.check_id(id)
    body_id = resource.get("id")
    if body_id is None:
        raise bad_request("The resource in an update must carry an id", f"{resource_type}.id")
    if body_id != id:
        raise bad_request(
            f"The resource id '{body_id}' does not match the id in the URL, '{id}'",
            f"{resource_type}.id",
        )
    issues = validate(ctx, resource, resource_type)
    current = await uow.read(resource_type, id)
    _if_match(current, if_match, f"{resource_type}/{id}")
    next_version = (current.version if current else 0) + 1
    created = current is None or current.deleted
    version = await _put(uow, resource_type, id, next_version, method, resource, res.now_instant())
    return WriteResult(version, 201 if created else 200, resource, issues)


async def delete(
    uow: UnitOfWork, resource_type: str, id: str, *, if_match: int | None = None
) -> WriteResult | None:
    """Delete (a new, empty version). None when there was nothing to delete."""
    current = await uow.read(resource_type, id)
    _if_match(current, if_match, f"{resource_type}/{id}")
    if current is None or current.deleted:
        return None
    version = await _put(
        uow, resource_type, id, current.version + 1, "delete", None, res.now_instant()
    )
    return WriteResult(version, 204, None)
