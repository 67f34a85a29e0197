"""Therapy billing: documented minutes -> units, modifiers, holds, and the R4 Claim.

Pure functions over plain values and FHIR dicts; no I/O except :func:`load_rules`,
which reads the payer rules file. Entry point::

    from fhir_server.billing import BillingInput, build_claim, load_rules

    draft = build_claim(BillingInput(...))
    if draft.held:            # an error issue: do not persist the claim
        ...
    draft.claim               # the Claim resource dict
    draft.outcome()           # the issues as an OperationOutcome

See ``docs`` of each module: :mod:`.units` (8-minute and CPT rules), :mod:`.modifiers`
(CQ/CO, KX, order), :mod:`.ncci` (PTP pairs), :mod:`.holds` (documentation and
authorization), :mod:`.rules` (payer rules as data), :mod:`.claim` (the builder),
:mod:`.adapter` (inputs from the rehab terminology).
"""

from fhir_server.billing.claim import (
    BillingInput,
    ClaimDraft,
    ClaimLine,
    billed_spend,
    build_claim,
    select_rules,
    year_to_date,
)
from fhir_server.billing.model import (
    CodeCatalog,
    CodeInfo,
    PlanOfCare,
    PriorAuthorization,
    ProgressReport,
    TreatmentHistory,
    timed_code,
    untimed_code,
)
from fhir_server.billing.modifiers import TherapySpend
from fhir_server.billing.ncci import PtpPair
from fhir_server.billing.rules import BillingRules, PayerRules, RulesError, load_rules, parse_rules

__all__ = [
    "BillingInput",
    "BillingRules",
    "ClaimDraft",
    "ClaimLine",
    "CodeCatalog",
    "CodeInfo",
    "PayerRules",
    "PlanOfCare",
    "PriorAuthorization",
    "ProgressReport",
    "PtpPair",
    "RulesError",
    "TherapySpend",
    "TreatmentHistory",
    "billed_spend",
    "build_claim",
    "load_rules",
    "parse_rules",
    "select_rules",
    "timed_code",
    "untimed_code",
    "year_to_date",
]
