"""history at instance, type and system level (https://hl7.org/fhir/R4/http.html#history).

Newest first; paged by a keyset cursor (the store's version sequence), so pages stay
correct while new versions are written: new versions only ever appear before page 1.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fhir_server import jsonio
from fhir_server.datetimes import instant_lower_bound
from fhir_server.errors import FhirError, bad_request
from fhir_server.interactions import resources as res
from fhir_server.interactions.context import Context
from fhir_server.interactions.model import FhirRequest, FhirResponse
from fhir_server.storage.port import HistoryQuery, StoredVersion

CURSOR = "_cursor"
_KNOWN = {"_count", "_since", "_at", CURSOR, "_format", "_pretty", "_summary", "_elements"}


def _count(ctx: Context, req: FhirRequest) -> int:
    raw = req.param("_count")
    if raw is None:
        return ctx.settings.default_page_size
    if not raw.isdigit():
        raise bad_request(f"_count must be a non-negative integer, not '{raw}'", "_count")
    return min(int(raw), ctx.settings.max_page_size)


def _instant(req: FhirRequest, name: str) -> str | None:
    raw = req.param(name)
    if raw is None:
        return None
    try:
        return instant_lower_bound(raw)
    except ValueError:
        raise bad_request(f"{name} must be a FHIR instant or dateTime, not '{raw}'", name) from None


def _entry(ctx: Context, v: StoredVersion) -> dict[str, Any]:
    url = f"{v.resource_type}/{v.id}"
    entry: dict[str, Any] = {"fullUrl": f"{ctx.base_url}/{url}"}
    if v.content is not None:
        entry["resource"] = jsonio.Stored(v.content)  # sent as stored, not parsed
    method = {"create": "POST", "update": "PUT", "patch": "PATCH", "delete": "DELETE"}[v.method]
    entry["request"] = {"method": method, "url": url if method != "POST" else v.resource_type}
    status = {"create": "201 Created", "delete": "204 No Content"}.get(v.method, "200 OK")
    entry["response"] = {
        "status": status,
        "etag": res.etag(v.version),
        "lastModified": v.last_updated,
    }
    return entry


async def history(
    ctx: Context, req: FhirRequest, resource_type: str | None = None, id: str | None = None
) -> FhirResponse:
    if id is not None:
        res.check_id(id)
    for name, _ in req.params:
        if name not in _KNOWN:
            raise bad_request(f"Unknown parameter '{name}' for history", name)
    cursor_raw = req.param(CURSOR)
    if cursor_raw is not None and not cursor_raw.isdigit():
        raise bad_request(f"Invalid paging cursor '{cursor_raw}'", CURSOR)
    count = _count(ctx, req)
    query = HistoryQuery(
        resource_type=resource_type,
        id=id,
        since=_instant(req, "_since"),
        at=_instant(req, "_at"),
        count=count,
        before_seq=int(cursor_raw) if cursor_raw else None,
    )
    page = await ctx.store.history(query)
    if (
        id is not None
        and not page.versions
        and cursor_raw is None
        and await ctx.store.read(resource_type or "", id) is None
    ):
        raise FhirError.of(404, "not-found", f"{resource_type}/{id} is not known")
    path = "/".join(p for p in (resource_type, id, "_history") if p)
    base_params = [(k, v) for k, v in req.params if k != CURSOR]
    links = [{"relation": "self", "url": _url(ctx, path, list(req.params))}]
    if page.next_cursor is not None:
        links.append(
            {
                "relation": "next",
                "url": _url(ctx, path, [*base_params, (CURSOR, str(page.next_cursor))]),
            }
        )
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "history",
        "link": links,
        "entry": [_entry(ctx, v) for v in page.versions],
    }
    if not bundle["entry"]:
        del bundle["entry"]
    return FhirResponse(200, resource=bundle)


def _url(ctx: Context, path: str, params: list[tuple[str, str]]) -> str:
    url = f"{ctx.base_url}/{path}"
    return f"{url}?{urlencode(params)}" if params else url
