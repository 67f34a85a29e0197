"""Claim scrubber: payer-rule checks on a professional therapy Claim (helper of
:mod:`.claims`, called by ``$validate`` for Claims).

The checks a payer applies before paying, on the Claim as written (whoever wrote it):
at most ``max_modifiers`` modifiers and ``max_diagnosis_pointers`` pointers per line,
pointers that name a diagnosis, at most ``max_diagnoses`` diagnoses, exactly one
discipline modifier (GP/GO/GN) per line, an assistant modifier (CQ/CO) only with its
discipline, codes the payer bundles (97010 for Medicare) or wants under another code
(97014 -> G0283), NCCI pairs (indicator 0 never together; indicator 1 only with a
bypass modifier on the column-2 code) and the KX modifier on every line past the
year's threshold (this practice's other active claims to the same payer, in date
order). The payer rules are those of the Claim's focal Coverage. Errors are what the
payer would deny; the answer of ``$validate`` is still 200.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from decimal import Decimal
from typing import Any

from fhir_server.billing import PayerRules, PtpPair, TherapySpend, select_rules, year_to_date
from fhir_server.billing.fhir import code_in, codings, day, decimal, items, reference
from fhir_server.billing.model import CPT, HCPCS
from fhir_server.billing.modifiers import KxLine, kx_lines
from fhir_server.errors import Issue
from fhir_server.operations.claims_gather import Source, StoreSource, static_inputs

BYPASS_MODIFIERS = frozenset({"59", "XE", "XS", "XP", "XU"})


def _error(code: Any, text: str, where: str) -> Issue:
    return Issue("error", code, text, (where,))


def _modifiers(item: Mapping[str, Any]) -> list[str]:
    return [
        c
        for m in items(item.get("modifier"))
        for x in codings(m)
        if isinstance(c := x.get("code"), str)
    ]


def _line_checks(
    i: int, item: Mapping[str, Any], rules: PayerRules, diagnoses: set[int]
) -> list[Issue]:
    where = f"Claim.item[{i}]"
    out: list[Issue] = []
    mods = _modifiers(item)
    if len(mods) > rules.max_modifiers:
        out.append(
            _error(
                "too-long",
                f"line {i + 1}: {len(mods)} modifiers, at most {rules.max_modifiers}",
                f"{where}.modifier",
            )
        )
    pointers = [p for p in item.get("diagnosisSequence") or () if isinstance(p, int)]
    if len(pointers) > rules.max_diagnosis_pointers:
        out.append(
            _error(
                "too-long",
                f"line {i + 1}: {len(pointers)} diagnosis pointers, at most "
                f"{rules.max_diagnosis_pointers}",
                f"{where}.diagnosisSequence",
            )
        )
    if not pointers:
        out.append(
            _error("required", f"line {i + 1}: no diagnosis pointer", f"{where}.diagnosisSequence")
        )
    for p in pointers:
        if p not in diagnoses:
            out.append(
                _error(
                    "invalid",
                    f"line {i + 1}: pointer {p} names no diagnosis",
                    f"{where}.diagnosisSequence",
                )
            )
    if rules.discipline_modifiers:
        disciplines = [d for d, m in rules.discipline_modifiers.items() if m in mods]
        if not disciplines:
            wanted = "/".join(rules.discipline_modifiers.values())
            out.append(
                _error(
                    "required",
                    f"line {i + 1}: no discipline modifier ({wanted})",
                    f"{where}.modifier",
                )
            )
        elif len(disciplines) > 1:
            out.append(
                _error(
                    "invalid",
                    f"line {i + 1}: more than one discipline modifier",
                    f"{where}.modifier",
                )
            )
        for discipline, modifier in rules.assistant.modifiers.items():
            if modifier in mods and discipline not in disciplines:
                out.append(
                    _error(
                        "business-rule",
                        f"line {i + 1}: {modifier} is for {discipline} services "
                        f"({rules.discipline_modifiers.get(discipline)})",
                        f"{where}.modifier",
                    )
                )
    code = code_in(item.get("productOrService"), CPT, HCPCS)
    if code is None:
        out.append(
            _error(
                "code-invalid", f"line {i + 1}: no CPT or HCPCS code", f"{where}.productOrService"
            )
        )
    elif code[1] in rules.bundled_codes:
        out.append(
            _error(
                "business-rule",
                f"line {i + 1}: {code[1]} is bundled by this payer (never paid separately)",
                f"{where}.productOrService",
            )
        )
    elif code[1] in rules.code_substitutions:
        out.append(
            _error(
                "business-rule",
                f"line {i + 1}: this payer wants {code[1]} billed as "
                f"{rules.code_substitutions[code[1]].code}",
                f"{where}.productOrService",
            )
        )
    quantity = item.get("quantity")
    units = decimal(quantity.get("value")) if isinstance(quantity, Mapping) else None
    if units is None or units < 1 or units != int(units):
        out.append(
            _error(
                "value",
                f"line {i + 1}: units must be a whole number of at least 1",
                f"{where}.quantity",
            )
        )
    if day(item.get("servicedDate")) is None:
        out.append(
            _error(
                "required",
                f"line {i + 1}: one date of service (servicedDate)",
                f"{where}.servicedDate",
            )
        )
    return out


def _ncci(lines: Sequence[Mapping[str, Any]], pairs: Sequence[PtpPair]) -> list[Issue]:
    by_day: dict[date, dict[str, list[int]]] = {}
    for i, item in enumerate(lines):
        on = day(item.get("servicedDate"))
        code = code_in(item.get("productOrService"), CPT, HCPCS)
        if on is not None and code is not None:
            by_day.setdefault(on, {}).setdefault(code[1].upper(), []).append(i)
    out: list[Issue] = []
    for on, codes in sorted(by_day.items()):
        for pair in pairs:
            c1, c2 = pair.column1.upper(), pair.column2.upper()
            if c1 == c2 or c1 not in codes or c2 not in codes or not pair.in_force(on):
                continue
            head = f"{on}: NCCI pair {c1}/{c2} (modifier indicator {pair.modifier_indicator})"
            if pair.modifier_indicator == 0:
                out += [
                    _error("business-rule", f"{head}: never billed together", f"Claim.item[{i}]")
                    for i in codes[c2]
                ]
            elif pair.modifier_indicator == 1:
                for i in codes[c2]:
                    if not BYPASS_MODIFIERS & set(_modifiers(lines[i])):
                        out.append(
                            _error(
                                "business-rule",
                                f"{head}: {c2} needs a bypass modifier (59 or X{{EPSU}}) when the "
                                "services were distinct, else it is not payable",
                                f"Claim.item[{i}].modifier",
                            )
                        )
    return out


def _kx(
    lines: Sequence[Mapping[str, Any]], rules: PayerRules, spend: Sequence[TherapySpend]
) -> list[Issue]:
    kx = rules.kx
    if kx is None:
        return []
    by_modifier = {m: d for d, m in rules.discipline_modifiers.items()}
    dated: list[tuple[date, KxLine]] = []
    for i, item in enumerate(lines):
        on = day(item.get("servicedDate"))
        discipline = next((by_modifier[m] for m in _modifiers(item) if m in by_modifier), None)
        if on is None or discipline is None:
            continue
        net = item.get("net")
        amount = decimal(net.get("value")) if isinstance(net, Mapping) else None
        dated.append((on, KxLine(i, on.year, discipline, amount or Decimal(0))))
    kx_input = [line for _, line in sorted(dated, key=lambda x: (x[0], x[1].key))]
    result = kx_lines(kx_input, spend, kx)
    out: list[Issue] = []
    for line in kx_input:
        has = kx.modifier in _modifiers(lines[line.key])
        where = f"Claim.item[{line.key}].modifier"
        if line.key in result.lines and not has:
            out.append(
                _error(
                    "business-rule",
                    f"line {line.key + 1}: {result.notes[line.key]}: needs {kx.modifier} (and the "
                    "documentation of medical necessity), else it is denied",
                    where,
                )
            )
        elif has and line.key not in result.lines and line.key in result.notes:
            out.append(
                Issue(
                    "warning",
                    "business-rule",
                    f"line {line.key + 1}: {kx.modifier} but {result.notes[line.key]}",
                    (where,),
                )
            )
    return out


def scrub(
    claim: Mapping[str, Any],
    rules: PayerRules,
    pairs: Sequence[PtpPair] = (),
    spend: Sequence[TherapySpend] = (),
) -> list[Issue]:
    """The payer-rule findings on a Claim (pure)."""
    out: list[Issue] = []
    diagnoses = {
        s for d in items(claim.get("diagnosis")) if isinstance(s := d.get("sequence"), int)
    }
    if len(diagnoses) > rules.max_diagnoses:
        out.append(
            _error(
                "too-long",
                f"{len(diagnoses)} diagnoses, at most {rules.max_diagnoses}",
                "Claim.diagnosis",
            )
        )
    lines = items(claim.get("item"))
    for i, item in enumerate(lines):
        out += _line_checks(i, item, rules, diagnoses)
    if rules.ncci.apply:
        out += _ncci(lines, pairs)
    out += _kx(lines, rules, spend)
    return out


async def scrub_claim(source: Source, claim: Mapping[str, Any]) -> list[Issue]:
    """Payer-rule checks for a Claim, with the rules of its focal Coverage and the
    year-to-date amounts of the patient's other active claims to the same payer. Any
    other resource: no findings."""
    if claim.get("resourceType") != "Claim":
        return []
    all_rules, _, pairs = static_inputs()
    insurance = items(claim.get("insurance"))
    focal = next(
        (i for i in insurance if i.get("focal") is True), insurance[0] if insurance else None
    )
    coverage_ref = reference(focal.get("coverage")) if focal else None
    coverage = None
    if coverage_ref and coverage_ref.startswith("Coverage/"):
        coverage = await source.read("Coverage", coverage_ref.split("/", 1)[1])
    if coverage is None:
        return [
            Issue(
                "warning",
                "not-found",
                f"payer rules not checked: the focal Coverage {coverage_ref or '(none)'} is not known",
                ("Claim.insurance",),
            )
        ]
    rules, issues = select_rules(all_rules, coverage)
    if rules is None:
        return [Issue("warning", i.code, i.diagnostics, i.expression) for i in issues]
    spend: list[TherapySpend] = []
    patient = reference(claim.get("patient"))
    insurer = reference(claim.get("insurer"))
    if rules.kx is not None and patient:
        earlier = [
            c
            for c in await source.find("Claim", [("patient", patient), ("status", "active")])
            if c.get("id") != claim.get("id") and reference(c.get("insurer")) == insurer
        ]
        years = {
            d.year for item in items(claim.get("item")) if (d := day(item.get("servicedDate")))
        }
        for year in sorted(years):
            spend += year_to_date(earlier, year, rules)
    return scrub(claim, rules, pairs, spend)


async def validate_hook(ctx: Any, resource: Mapping[str, Any]) -> list[Issue]:
    """For ``$validate``: the scrubber's findings on a Claim (committed data)."""
    if resource.get("resourceType") != "Claim":
        return []
    return await scrub_claim(StoreSource(ctx.store), resource)
