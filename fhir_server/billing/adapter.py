"""Builds the billing rules' plain inputs from the rehab terminology.

The rules themselves never import the terminology: they take :class:`CodeInfo` values
and :class:`PtpPair` values. This adapter reads them from the terminology package
(the CPT and HCPCS fragments with their ``timed``, ``minutes-per-unit``, ``unit-rule``,
``kind`` and ``discipline`` properties, and the NCCI PTP table) when it is available.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fhir_server.billing.model import CPT, HCPCS, CodeInfo, UnitRule
from fhir_server.billing.ncci import PtpPair

_UNIT_RULES: tuple[UnitRule, ...] = ("fifteen-minute", "midpoint", "per-service")


def code_info(concept: Any) -> CodeInfo | None:
    """A CodeInfo from a terminology Concept (None for modifiers and codes without a
    ``timed`` property)."""
    if concept.first("kind") == "modifier":
        return None
    timed = concept.first("timed")
    if not isinstance(timed, bool):
        return None
    minutes = concept.first("minutes-per-unit")
    minutes = minutes if isinstance(minutes, int) and not isinstance(minutes, bool) else None
    rule = concept.first("unit-rule")
    unit_rule: UnitRule
    if rule in _UNIT_RULES:
        unit_rule = rule
    elif not timed:
        unit_rule = "per-service"
    else:
        unit_rule = "fifteen-minute" if minutes in (None, 15) else "midpoint"
    kind = concept.first("kind")
    return CodeInfo(
        code=concept.code,
        system=concept.system,
        timed=timed,
        minutes_per_unit=(minutes or 15) if timed else None,
        unit_rule=unit_rule,
        kind=kind if isinstance(kind, str) else "treatment",
        disciplines=frozenset(v for v in concept.values("discipline") if isinstance(v, str)),
    )


def code_catalog(systems: Iterable[str] = (CPT, HCPCS)) -> dict[str, CodeInfo]:
    """The procedure codes of the terminology's CPT and HCPCS code systems."""
    from fhir_server import terminology

    tx = terminology.default()
    out: dict[str, CodeInfo] = {}
    for system in systems:
        cs = tx.code_system(system)
        for concept in cs or ():
            info = code_info(concept)
            if info is not None:
                out.setdefault(info.code, info)
    return out


def ptp_pairs(table: Iterable[Any] | None = None) -> list[PtpPair]:
    """PtpPair values from the terminology's NCCI edits (its default table unless one is
    given)."""
    if table is None:
        from fhir_server.terminology.ncci import default_table

        table = default_table()
    return [
        PtpPair(
            column1=e.column1,
            column2=e.column2,
            modifier_indicator=e.modifier_indicator,
            effective=e.effective,
            deletion=e.deletion,
            rationale=e.rationale,
        )
        for e in table
    ]
