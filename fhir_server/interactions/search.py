"""The search interaction: query pairs in, a ``searchset`` Bundle out.

Store-agnostic: the query is parsed into the search IR
(:class:`fhir_server.search.query.SearchQuery`), the store runs it and returns a
:class:`~fhir_server.search.query.SearchResult` page, and this module builds the
Bundle: entries (``search.mode`` match/include/outcome), ``total``, and
``self``/``next``/``previous`` links that carry the store's opaque paging cursor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import urlencode

from fhir_server import jsonio
from fhir_server.errors import operation_outcome
from fhir_server.search.parser import parse
from fhir_server.search.query import Hit, SearchQuery, SearchResult
from fhir_server.search.registry import Registry

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "Resource encoded in summary mode",
}
_ALWAYS = frozenset({"resourceType", "id", "meta"})


class SearchStore(Protocol):
    async def search(self, query: SearchQuery) -> SearchResult: ...


def _subsetted(resource: dict[str, Any], keep: frozenset[str]) -> dict[str, Any]:
    out = {k: v for k, v in resource.items() if k in keep or k in _ALWAYS}
    meta = dict(out.get("meta") or {})
    tags = [t for t in meta.get("tag", ()) if t.get("code") != "SUBSETTED"]
    meta["tag"] = [*tags, SUBSETTED]
    out["meta"] = meta
    return out


def whole(query: SearchQuery) -> bool:
    """Does the search return whole resources (no ``_summary``/``_elements``)?"""
    return query.summary in (None, "false") and not query.elements


def shape(resource: dict[str, Any], query: SearchQuery) -> dict[str, Any]:
    """Apply ``_summary``/``_elements`` to a resource."""
    summary = query.summary
    if whole(query):
        return resource
    from fhir_server import definitions

    rtype = str(resource.get("resourceType", ""))
    try:
        mandatory = definitions.mandatory_elements(rtype)
    except (KeyError, ValueError):
        mandatory = frozenset()
    if summary == "true":
        try:
            keep = definitions.summary_elements(rtype)
        except (KeyError, ValueError):
            keep = frozenset()
        return _subsetted(resource, keep | mandatory)
    if summary == "text":
        return _subsetted(resource, frozenset({"text"}) | mandatory)
    if summary == "data":
        return _subsetted(resource, frozenset(k for k in resource if k != "text"))
    if query.elements:
        wanted = {e.split(".", 1)[0] for e in query.elements}
        names = frozenset(
            k for k in resource if k in wanted or any(k.startswith(w) for w in wanted)
        )
        return _subsetted(resource, names | mandatory)
    return resource


def _link(base_url: str, path: str, params: Sequence[tuple[str, str]]) -> str:
    url = f"{base_url}/{path}" if path else base_url
    return f"{url}?{urlencode(list(params))}" if params else url


def _entry(base_url: str, hit: Hit, query: SearchQuery, raw: bool) -> dict[str, Any]:
    resource: Any
    if raw and whole(query):
        resource = jsonio.Stored(hit.content)  # served as stored, never parsed
    else:
        resource = shape(jsonio.loads_stored(hit.content), query)
    return {
        "fullUrl": f"{base_url}/{hit.resource_type}/{hit.id}",
        "resource": resource,
        "search": {"mode": hit.mode},
    }


async def search(
    store: Any,
    resource_type: str | None,
    params: Sequence[tuple[str, str]],
    *,
    base_url: str,
    strict: bool,
    compartment: tuple[str, str] | None = None,
    registry: Registry | None = None,
    raw: bool = False,
) -> dict[str, Any]:
    """Run a search and return the ``searchset`` Bundle.

    ``store`` is any object with ``async search(SearchQuery) -> SearchResult`` (see
    :class:`SearchStore`); ``compartment`` = (type, id) for
    ``GET [base]/Patient/123/Observation``. ``raw``: entries of whole resources hold
    the stored content as :class:`~fhir_server.jsonio.Stored` (serialised as it is;
    :func:`~fhir_server.jsonio.resource` parses one), for a Bundle that is only sent.
    """
    searcher: SearchStore = store
    base_url = base_url.rstrip("/")
    query = parse(
        resource_type,
        params,
        registry=registry,
        base_url=base_url,
        strict=strict,
        compartment=compartment,
    )
    if query.summary == "count":
        query = SearchQuery(**{**_fields(query), "count": 0, "total": "accurate", "includes": ()})
    result = await searcher.search(query)

    if compartment is not None:
        path = f"{compartment[0]}/{compartment[1]}/{resource_type}"
    else:
        path = resource_type or ""
    this_page = [*query.params, ("_cursor", query.cursor)] if query.cursor else query.params
    links = [{"relation": "self", "url": _link(base_url, path, this_page)}]
    if result.next_cursor is not None:
        links.append(
            {
                "relation": "next",
                "url": _link(base_url, path, [*query.params, ("_cursor", result.next_cursor)]),
            }
        )
    if result.previous_cursor is not None:
        links.append(
            {
                "relation": "previous",
                "url": _link(base_url, path, [*query.params, ("_cursor", result.previous_cursor)]),
            }
        )

    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if result.total is not None:
        bundle["total"] = result.total
    bundle["link"] = links
    entries = [_entry(base_url, h, query, raw) for h in result.matches]
    entries.extend(_entry(base_url, h, query, raw) for h in result.includes)
    if query.warnings:
        entries.append(
            {"resource": operation_outcome(query.warnings), "search": {"mode": "outcome"}}
        )
    if entries:
        bundle["entry"] = entries
    return bundle


def _fields(query: SearchQuery) -> dict[str, Any]:
    return {name: getattr(query, name) for name in query.__dataclass_fields__}
