"""Small readers over FHIR R4 JSON dicts (the billing input contract)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from fhir_server.billing.model import (
    DISCIPLINE,
    NPI,
    PLAN_CERTIFICATION,
    PRIOR_AUTHORIZATION,
    PlanOfCare,
    PriorAuthorization,
)
from fhir_server.datetimes import parse_lower_bound

Json = Mapping[str, Any]


def ref_of(resource: Json) -> str:
    """``Type/id`` of a resource."""
    return f"{resource.get('resourceType')}/{resource.get('id')}"


def reference(value: Any) -> str | None:
    """The ``reference`` text of a Reference, without a base URL before ``Type/id``."""
    if not isinstance(value, Mapping):
        return None
    text = value.get("reference")
    if not isinstance(text, str) or not text:
        return None
    parts = text.rstrip("/").split("/")
    if len(parts) >= 2 and "://" in text:
        return "/".join(parts[-2:]) if parts[-2] != "_history" else "/".join(parts[-4:-2])
    if len(parts) == 4 and parts[2] == "_history":
        return "/".join(parts[:2])
    return text


def items(value: Any) -> list[Json]:
    """The objects of a list element (a missing element is an empty list)."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [v for v in value if isinstance(v, Mapping)]
    return []


def codings(concept: Any) -> list[Json]:
    if not isinstance(concept, Mapping):
        return []
    return items(concept.get("coding"))


def code_in(concept: Any, *systems: str) -> tuple[str, str] | None:
    """The first (system, code) of a CodeableConcept in one of ``systems``."""
    for coding in codings(concept):
        system, code = coding.get("system"), coding.get("code")
        if system in systems and isinstance(code, str) and isinstance(system, str):
            return system, code
    return None


def discipline_of(concept: Any) -> str | None:
    found = code_in(concept, DISCIPLINE)
    return found[1] if found else None


def extensions(element: Any, url: str) -> list[Json]:
    if not isinstance(element, Mapping):
        return []
    return [e for e in items(element.get("extension")) if e.get("url") == url]


def extension(element: Any, url: str) -> Json | None:
    found = extensions(element, url)
    return found[0] if found else None


def sub_value(ext: Json, url: str, key: str) -> Any:
    """``value[x]`` (``key``, e.g. ``valueString``) of a complex extension's part."""
    part = extension(ext, url)
    return part.get(key) if part is not None else None


def identifier(resource: Json, system: str) -> str | None:
    for ident in items(resource.get("identifier")):
        value = ident.get("value")
        if ident.get("system") == system and isinstance(value, str) and value:
            return value
    return None


def npi(resource: Json) -> str | None:
    return identifier(resource, NPI)


def day(text: Any) -> date | None:
    """The calendar date written in a FHIR date/dateTime (as written, not in UTC)."""
    if not isinstance(text, str) or len(text) < 10:
        return None
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        return None


def instant(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return parse_lower_bound(text) if "T" in text else None
    except ValueError:
        return None


def decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        return None
    try:
        result = Decimal(str(value)) if not isinstance(value, Decimal) else value
    except InvalidOperation:
        return None
    return result if result.is_finite() else None


class Index:
    """Resources by ``Type/id``."""

    def __init__(self, resources: Iterable[Json]) -> None:
        self._by_ref: dict[str, Json] = {}
        for r in resources:
            if isinstance(r, Mapping) and r.get("resourceType") and r.get("id"):
                self._by_ref.setdefault(ref_of(r), r)

    def get(self, ref: str | None) -> Json | None:
        return self._by_ref.get(ref) if ref else None

    def practitioner(self, ref: str | None) -> Json | None:
        """The Practitioner a reference names, directly or through a PractitionerRole."""
        found = self.get(ref)
        if found is not None and found.get("resourceType") == "PractitionerRole":
            return self.get(reference(found.get("practitioner")))
        return found if found is not None and found.get("resourceType") == "Practitioner" else None

    def role(self, ref: str | None) -> Json | None:
        found = self.get(ref)
        return (
            found if found is not None and found.get("resourceType") == "PractitionerRole" else None
        )


def plan_of_care(careplan: Json) -> PlanOfCare:
    """The certification facts of a plan of care (CarePlan)."""
    cert = extension(careplan, PLAN_CERTIFICATION)
    period = careplan.get("period")
    period = period if isinstance(period, Mapping) else {}
    discipline = None
    for category in items(careplan.get("category")):
        discipline = discipline or discipline_of(category)
    certified_on = certifier = delayed = None
    if cert is not None:
        certified_on = day(sub_value(cert, "date", "valueDateTime")) or day(
            sub_value(cert, "date", "valueDate")
        )
        certifier = reference(sub_value(cert, "certifier", "valueReference"))
        delayed_value = sub_value(cert, "delayed-reason", "valueString")
        delayed = delayed_value if isinstance(delayed_value, str) else None
    status = careplan.get("status")
    return PlanOfCare(
        reference=ref_of(careplan),
        discipline=discipline,
        start=day(period.get("start")),
        end=day(period.get("end")),
        certified_on=certified_on,
        certifier=certifier,
        delayed_reason=delayed,
        status=status if isinstance(status, str) else "unknown",
    )


def prior_authorizations(coverage: Json) -> list[PriorAuthorization]:
    """The ``prior-authorization`` extensions of a Coverage (nothing used yet: the
    ledger of used visits and units comes from billed claims)."""
    out: list[PriorAuthorization] = []
    for ext in extensions(coverage, PRIOR_AUTHORIZATION):
        number = sub_value(ext, "number", "valueString")
        if not isinstance(number, str):
            continue
        period = sub_value(ext, "period", "valuePeriod")
        period = period if isinstance(period, Mapping) else {}
        discipline = sub_value(ext, "discipline", "valueCoding")
        visits = sub_value(ext, "visits", "valuePositiveInt")
        units = sub_value(ext, "units", "valuePositiveInt")
        procedures = [
            coding.get("code")
            for e in extensions(ext, "procedure")
            if isinstance(coding := e.get("valueCoding"), Mapping)
        ]
        out.append(
            PriorAuthorization(
                number=number,
                start=day(period.get("start")),
                end=day(period.get("end")),
                discipline=discipline.get("code") if isinstance(discipline, Mapping) else None,
                visits=visits if isinstance(visits, int) else None,
                units=units if isinstance(units, int) else None,
                procedures=frozenset(p for p in procedures if isinstance(p, str)),
            )
        )
    return out
