"""Small helpers shared by the write interactions: ids, meta, ETags, timestamps."""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, date, datetime
from email.utils import format_datetime
from typing import Any

from fhir_server import definitions, jsonio
from fhir_server.errors import FhirError, bad_request
from fhir_server.interactions.model import FhirRequest
from fhir_server.storage.port import StoredVersion

ID_RE = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_ETAG_RE = re.compile(r'^\s*(?:W/)?"([^"]+)"\s*$')


def new_id() -> str:
    return str(uuid.uuid4())


def now_instant() -> str:
    """The current time as a FHIR instant with microseconds (sortable as text)."""
    return instant_of_ns(time.time_ns())


def instant_of_ns(ns: int) -> str:
    """``YYYY-MM-DDThh:mm:ss.ffffffZ`` of a POSIX time in nanoseconds (formatted by
    hand: ``strftime`` costs several times as much, once per resource written)."""
    seconds, rest = divmod(ns, 1_000_000_000)
    t = time.gmtime(seconds)
    return (
        f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:"
        f"{t.tm_sec:02d}.{rest // 1000:06d}Z"
    )


def check_type(resource_type: str) -> None:
    if resource_type not in definitions.resource_types():
        raise FhirError.of(404, "not-supported", f"Unknown resource type '{resource_type}'")


def check_id(id: str) -> None:
    if not ID_RE.fullmatch(id):
        raise bad_request(f"'{id}' is not a valid resource id (1-64 of A-Z a-z 0-9 - .)")


def parse_body(body: bytes | None) -> Any:
    if not body:
        raise bad_request("The request has no body; a resource is required")
    try:
        return jsonio.loads(body)
    except jsonio.JsonError as exc:
        raise bad_request(str(exc)) from None


def parse_resource(req: FhirRequest, resource_type: str | None = None) -> dict[str, Any]:
    """The request body, which must be a resource (of the given type, if any)."""
    data = req.parsed if req.parsed is not None else parse_body(req.body)
    return expect_resource(data, resource_type)


def expect_resource(data: Any, resource_type: str | None, where: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        raise bad_request("The body must be a JSON object (a FHIR resource)", where or "")
    actual = data.get("resourceType")
    if not isinstance(actual, str):
        raise bad_request("The resource has no resourceType", where or "")
    if resource_type is not None and actual != resource_type:
        raise bad_request(
            f"resourceType '{actual}' does not match the type in the URL, '{resource_type}'",
            where or actual,
        )
    return data


def stamp(resource: dict[str, Any], id: str, version: int, last_updated: str) -> bytes:
    """Set id and meta.versionId/lastUpdated (keeping the rest of meta) and encode."""
    resource["id"] = id
    meta = resource.get("meta")
    meta = dict(meta) if isinstance(meta, dict) else {}
    meta["versionId"] = str(version)
    meta["lastUpdated"] = last_updated
    # Keep a conventional element order: resourceType, id, meta, then the rest.
    ordered: dict[str, Any] = {"resourceType": resource["resourceType"], "id": id, "meta": meta}
    for key, value in resource.items():
        if key not in ordered:
            ordered[key] = value
    resource.clear()
    resource.update(ordered)
    return jsonio.dumps(resource)


def etag(version: int) -> str:
    return f'W/"{version}"'


def parse_etag(value: str) -> int:
    m = _ETAG_RE.match(value)
    if not m or not m.group(1).isdigit():
        raise bad_request(f"'{value}' is not a valid ETag (expected W/\"<versionId>\")")
    return int(m.group(1))


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(instant: str) -> str:
    """RFC 9110 date of a stored instant (``YYYY-MM-DDThh:mm:ss.ffffffZ``, as
    :func:`now_instant` writes them: formatted by hand; any other form through
    :mod:`email.utils`)."""
    if len(instant) == 27 and instant[10] == "T" and instant[-1] == "Z":
        try:
            day = date(int(instant[:4]), int(instant[5:7]), int(instant[8:10]))
        except ValueError:
            pass
        else:
            return (
                f"{_DAYS[day.weekday()]}, {instant[8:10]} {_MONTHS[day.month - 1]}"
                f" {instant[:4]} {instant[11:19]} GMT"
            )
    return format_datetime(datetime.fromisoformat(instant).astimezone(UTC), usegmt=True)


def version_headers(v: StoredVersion, base_url: str) -> dict[str, str]:
    return {
        "ETag": etag(v.version),
        "Last-Modified": http_date(v.last_updated),
        "Location": f"{base_url}/{v.resource_type}/{v.id}/_history/{v.version}",
    }
