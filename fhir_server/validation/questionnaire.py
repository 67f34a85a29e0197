"""QuestionnaireResponse answers checked against their Questionnaire.

https://hl7.org/fhir/R4/questionnaireresponse.html and questionnaire.html. The
Questionnaire is ``QuestionnaireResponse.questionnaire``: ``#id`` names a contained
one, anything else a canonical URL (with an optional ``|version``; a relative
``Questionnaire/id`` finds the one whose URL ends so) looked up in the
:class:`~fhir_server.validation.registry.ProfileRegistry`. One that cannot be found is
a warning (an information for example.org URLs), as in the reference validator: the
answers are then not checked.

What is checked, item by item (the response's items are matched by ``linkId``, the
children of a group under ``item``, those of a question under ``answer.item``):

* every ``linkId`` is one of the Questionnaire at that place (one defined elsewhere is
  "in the wrong place"), in the Questionnaire's order; an item that does not
  ``repeats`` appears once and has at most one answer;
  ``questionnaire-minOccurs``/``maxOccurs`` bound the repetitions of a group and the
  answers of a question; ``text``, when given, is the Questionnaire's;
* ``required`` items are present and answered (groups: have items), unless disabled;
  in a response that is not ``completed`` or ``amended`` a missing answer is a
  warning, not an error;
* ``enableWhen`` / ``enableBehavior``: an item that is disabled (so are its
  descendants) has no answers and no items, and is not required (conditions are
  evaluated on the answers of the question in the nearest group both items share;
  one that cannot be evaluated -- the question is not in the Questionnaire, the
  answer types differ -- neither disables the item nor makes it required);
* groups and display items have no answers, other items no ``item`` outside answers;
* the answer ``value[x]`` type is the one of the item type (``choice`` and
  ``open-choice``: Coding, string, integer, date, time or Reference);
* ``answerOption`` (the value is one of the options of its type;
  ``questionnaire-optionExclusive`` options are answered alone; an ``open-choice``
  string that names an option is a warning) and ``answerValueSet`` (a Coding, or a
  string code, is in the value set -- through the terminology lookup, the registry,
  or a ValueSet contained in the Questionnaire or the response; one that cannot be
  expanded is not checked);
* ``maxLength`` and the extensions ``minLength``, ``regex`` (with ``entryFormat``),
  ``minValue``/``maxValue`` (integer, decimal, date, dateTime, time, Quantity),
  ``maxDecimalPlaces``, the SDC ``minQuantity``/``maxQuantity``, ``questionnaire-unit``
  / ``unitOption`` / ``unitValueSet`` (the unit of a quantity), ``mimeType`` and
  ``maxSize`` (attachments) and ``questionnaire-referenceResource`` (the resource type
  a reference may point to). Quantities in different UCUM units are compared through
  :mod:`.ucum`; a bound without a coded unit cannot be compared, which is an error.
* ``Questionnaire.effectivePeriod`` against ``authored`` (a warning).

``readOnly`` and ``initial`` put no constraint on a response (a read-only item may
carry a calculated answer; an initial value is only a default).

Severity and wording follow the reference (Java) validator.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterator
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from fhir_server import definitions
from fhir_server.datetimes import parse_lower_bound
from fhir_server.errors import Issue, IssueCode, Severity
from fhir_server.validation import ucum
from fhir_server.validation.valuesets import Codes, TerminologyLookup

__all__ = ["resolve", "validate_response"]

_EXT: Final = "http://hl7.org/fhir/StructureDefinition/"
_SDC: Final = "http://hl7.org/fhir/uv/sdc/StructureDefinition/"
MIN_VALUE: Final = _EXT + "minValue"
MAX_VALUE: Final = _EXT + "maxValue"
MIN_LENGTH: Final = _EXT + "minLength"
REGEX: Final = _EXT + "regex"
ENTRY_FORMAT: Final = _EXT + "entryFormat"
MAX_DECIMALS: Final = _EXT + "maxDecimalPlaces"
MIME_TYPE: Final = _EXT + "mimeType"
MAX_SIZE: Final = _EXT + "maxSize"
UNIT: Final = _EXT + "questionnaire-unit"
UNIT_OPTION: Final = _EXT + "questionnaire-unitOption"
UNIT_VALUE_SET: Final = _EXT + "questionnaire-unitValueSet"
REFERENCE_RESOURCE: Final = _EXT + "questionnaire-referenceResource"
MIN_OCCURS: Final = _EXT + "questionnaire-minOccurs"
MAX_OCCURS: Final = _EXT + "questionnaire-maxOccurs"
OPTION_EXCLUSIVE: Final = _EXT + "questionnaire-optionExclusive"
MIN_QUANTITY: Final = _SDC + "sdc-questionnaire-minQuantity"
MAX_QUANTITY: Final = _SDC + "sdc-questionnaire-maxQuantity"
UCUM: Final = ucum.UCUM

_CHOICE: Final = ("Coding", "string", "integer", "date", "time", "Reference")
# item type -> the FHIR types of value[x] its answers may have
_ANSWER_TYPES: Final[dict[str, tuple[str, ...]]] = {
    "boolean": ("boolean",),
    "decimal": ("decimal",),
    "integer": ("integer",),
    "date": ("date",),
    "dateTime": ("dateTime",),
    "time": ("time",),
    "string": ("string",),
    "text": ("string",),
    "url": ("uri",),
    "attachment": ("Attachment",),
    "reference": ("Reference",),
    "quantity": ("Quantity",),
    "choice": _CHOICE,
    "open-choice": _CHOICE,
}
_NO_ANSWERS: Final = frozenset({"group", "display", "question"})
_ORDERED: Final = frozenset({"integer", "decimal", "date", "dateTime", "time", "string"})

ValueSetExpander = Callable[[dict[str, Any]], Codes | None]


def _fhir_type(key: str) -> str:
    """``valueDateTime`` -> ``dateTime``, ``valueCoding`` -> ``Coding``."""
    suffix = key[6:] if key.startswith("_value") else key[5:]
    if suffix in ("Coding", "Quantity", "Attachment", "Reference"):
        return suffix
    return suffix[:1].lower() + suffix[1:]


def _value(answer: dict[str, Any]) -> tuple[str, Any, str] | None:
    """(FHIR type, value, JSON key) of an answer's value[x]."""
    for key, value in answer.items():
        if key.startswith("value") and len(key) > 5:
            return _fhir_type(key), value, key
    for key in answer:
        if key.startswith("_value") and len(key) > 6:
            return _fhir_type(key), None, key[1:]
    return None


def _extensions(item: dict[str, Any], url: str) -> list[dict[str, Any]]:
    exts = item.get("extension")
    if type(exts) is not list:
        return []
    return [e for e in exts if type(e) is dict and e.get("url") == url]


def _ext_value(item: dict[str, Any], url: str) -> tuple[str, Any] | None:
    """(FHIR type, value) of the first extension with a url."""
    for ext in _extensions(item, url):
        found = _value(ext)
        if found is not None and found[1] is not None:
            return found[0], found[1]
    return None


def _int_ext(item: dict[str, Any], url: str) -> int | None:
    found = _ext_value(item, url)
    if found is None or isinstance(found[1], bool):
        return None
    try:
        return int(found[1])
    except (TypeError, ValueError, ArithmeticError):
        return None


def _items(node: dict[str, Any]) -> list[dict[str, Any]]:
    items = node.get("item")
    return [i for i in items if type(i) is dict] if type(items) is list else []


def _answers(node: dict[str, Any]) -> list[dict[str, Any]]:
    answers = node.get("answer")
    return [a for a in answers if type(a) is dict] if type(answers) is list else []


def _show(value: Any) -> str:
    if value is True or value is False:
        return "true" if value else "false"
    return str(value)


def _quantity_text(q: dict[str, Any]) -> str:
    text = f"{q.get('comparator', '')}{_show(q.get('value'))}"
    if isinstance(q.get("unit"), str):
        text += f" {q['unit']}"
    system, code = q.get("system"), q.get("code")
    if system is not None or code is not None:
        name = "UCUM" if system == UCUM else (system or "")
        text += f" ({name}#{code or ''})"
    return text


def _coding_text(c: dict[str, Any]) -> str:
    return f"{c.get('system', '')}#{c.get('code', '')}"


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | Decimal | float | str):
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def _compare_dates(a: str, b: str) -> int | None:
    """Order two date/dateTime values by their earliest instant, a less precise value
    before a more precise one starting at the same instant (so 2022-06-30 is after
    2022-06); None when one is not a date."""
    try:
        la, lb = parse_lower_bound(a), parse_lower_bound(b)
    except ValueError:
        return None
    if la != lb:
        return -1 if la < lb else 1
    return (len(a) > len(b)) - (len(a) < len(b))


_TIME: Final = re.compile(r"([0-9]{2}):([0-9]{2})(?::([0-9]{2}(?:\.[0-9]+)?))?")


def _compare_times(a: str, b: str) -> int | None:
    ma, mb = _TIME.fullmatch(a), _TIME.fullmatch(b)
    if ma is None or mb is None:
        return None
    ta = (int(ma[1]), int(ma[2]), Decimal(ma[3] or 0))
    tb = (int(mb[1]), int(mb[2]), Decimal(mb[3] or 0))
    return (ta > tb) - (ta < tb)


def _compare(kind: str, a: Any, b: Any) -> int | None:
    """-1, 0, 1 comparing two values of a FHIR type; None when they cannot be."""
    if kind in ("integer", "decimal"):
        da, db = _decimal(a), _decimal(b)
        if da is None or db is None:
            return None
        return (da > db) - (da < db)
    if not isinstance(a, str) or not isinstance(b, str):
        return None
    if kind in ("date", "dateTime"):
        return _compare_dates(a, b)
    if kind == "time":
        return _compare_times(a, b)
    if kind == "string":
        return (a > b) - (a < b)
    return None


def _reference_type(ref: str) -> str | None:
    """The resource type a literal reference names (None for #id and URNs)."""
    if ref.startswith(("#", "urn:")):
        return None
    path = ref.split("?", 1)[0].split("#", 1)[0]
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) < 2:
        return None
    return parts[-2]


# --------------------------------------------------------------------------- resolving


def resolve(
    response: dict[str, Any], lookup: Callable[[str], dict[str, Any] | None]
) -> tuple[str | None, dict[str, Any] | None]:
    """(the reference, the Questionnaire) of a QuestionnaireResponse: ``#id`` in its
    contained resources, else through ``lookup`` (canonical URL -> Questionnaire)."""
    ref = response.get("questionnaire")
    if not isinstance(ref, str) or not ref:
        return None, None
    if ref.startswith("#"):
        for r in response.get("contained") or ():
            if (
                type(r) is dict
                and r.get("resourceType") == "Questionnaire"
                and r.get("id") == ref[1:]
            ):
                return ref, r
        return ref, None
    return ref, lookup(ref)


def _resolved_type(
    response: dict[str, Any], ref: str, definition_type: Callable[[str], str | None] | None
) -> str | None:
    """The type of the resource ``ref`` resolves to (a contained one for ``#id``)."""
    if ref.startswith("#"):
        for r in response.get("contained") or ():
            if type(r) is dict and r.get("id") == ref[1:]:
                rt = r.get("resourceType")
                return rt if isinstance(rt, str) else None
        return None
    return definition_type(ref) if definition_type is not None else None


class _Index:
    """The items of a Questionnaire by linkId, with their ancestors."""

    def __init__(self, questionnaire: dict[str, Any]) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self.parents: dict[str, tuple[int, ...]] = {}  # linkId -> ids of its ancestors
        self._walk(questionnaire, ())

    def _walk(self, node: dict[str, Any], chain: tuple[int, ...]) -> None:
        for item in _items(node):
            link = item.get("linkId")
            if isinstance(link, str) and link not in self.items:
                self.items[link] = item
                self.parents[link] = chain
            self._walk(item, (*chain, id(item)))


# a response node (the response, or one of its items) with the Questionnaire item it
# answers (None for the response itself)
_Frame = tuple[dict[str, Any] | None, dict[str, Any]]


class _Validator:
    def __init__(
        self,
        response: dict[str, Any],
        questionnaire: dict[str, Any],
        where: str,
        value_set_codes: TerminologyLookup | None,
        knows_value_set: Callable[[str], bool],
        expand: ValueSetExpander,
    ) -> None:
        self.response = response
        self.questionnaire = questionnaire
        self.where = where
        self.value_set_codes = value_set_codes
        self.knows_value_set = knows_value_set
        self.expand = expand
        self.index = _Index(questionnaire)
        self.completed = response.get("status") in ("completed", "amended")
        self.issues: list[Issue] = []

    def add(self, severity: Severity, code: IssueCode, message: str, expr: str) -> None:
        self.issues.append(Issue(severity, code, message, (expr,)))

    # ------------------------------------------------------------------ items

    def run(self) -> list[Issue]:
        self.authored()
        self.items(_items(self.questionnaire), self.response, self.where, ((None, self.response),))
        return self.issues

    def authored(self) -> None:
        period = self.questionnaire.get("effectivePeriod")
        authored = self.response.get("authored")
        if type(period) is not dict or not isinstance(authored, str):
            return
        end, start = period.get("end"), period.get("start")
        expr = f"{self.where}.authored"
        if isinstance(end, str) and (_compare_dates(authored, end) or 0) > 0:
            self.add(
                "warning",
                "business-rule",
                f"The authored date '{authored}' is after the end of the permitted period "
                f"defined in the Questionnaire ('{end}')",
                expr,
            )
        if isinstance(start, str) and (_compare_dates(authored, start) or 0) < 0:
            self.add(
                "warning",
                "business-rule",
                f"The authored date '{authored}' is before the start of the permitted period "
                f"defined in the Questionnaire ('{start}')",
                expr,
            )

    def items(
        self,
        q_items: list[dict[str, Any]],
        node: dict[str, Any],
        expr: str,
        stack: tuple[_Frame, ...],
        parent: bool | None = True,
    ) -> None:
        """The response items under ``node`` against the Questionnaire items that may
        appear there; ``parent`` is whether the item they are nested in is enabled (the
        descendants of a disabled item are disabled)."""
        position: dict[str, int] = {}
        for i, qi in enumerate(q_items):
            link = qi.get("linkId")
            if isinstance(link, str):
                position.setdefault(link, i)
        found: dict[str, list[tuple[dict[str, Any], str]]] = {}
        last = -1
        raw = node.get("item")
        entries = list(enumerate(raw)) if type(raw) is list else []
        for i, item in entries:
            if type(item) is not dict:
                continue
            where = f"{expr}.item[{i}]"
            link = item.get("linkId")
            if not isinstance(link, str):
                continue  # linkId is 1..1: reported by the structure validator
            at = position.get(link)
            if at is None:
                elsewhere = self.index.items.get(link)
                if elsewhere is None:
                    self.add(
                        "error", "not-found", f"LinkId '{link}' not found in questionnaire", where
                    )
                else:
                    self.add(
                        "error",
                        "structure",
                        f"Structural Error: item with linkId '{link}' is in the wrong place",
                        where,
                    )
                    enabled = _both(parent, self.enabled(elsewhere, stack))
                    self.item(elsewhere, item, where, stack, enabled)
                continue
            if at < last:
                self.add("error", "structure", "Structural Error: items are out of order", where)
            last = at
            found.setdefault(link, []).append((item, where))
        for qi in q_items:
            link = qi.get("linkId")
            if not isinstance(link, str):
                continue
            enabled = _both(parent, self.enabled(qi, stack))
            occurrences = found.get(link)
            if occurrences:
                self.occurrences(qi, occurrences, stack, enabled, parent is False)
            elif enabled is True and qi.get("required") is True:
                self.missing(f"No response answer found for required item '{link}'", expr)
            elif enabled is True and qi.get("type") != "display":
                self.occurs(qi, 0, expr, "repetitions" if qi.get("type") == "group" else "answers")

    def missing(self, message: str, expr: str, code: IssueCode = "required") -> None:
        self.add("error" if self.completed else "warning", code, message, expr)

    def occurs(self, qi: dict[str, Any], count: int, expr: str, what: str) -> None:
        """questionnaire-minOccurs / maxOccurs."""
        high = _int_ext(qi, MAX_OCCURS)
        if high is not None and count > high:
            self.add(
                "error",
                "invalid",
                f"The maximum number of {what} is {high} but this has {count} {what}",
                expr,
            )
        low = _int_ext(qi, MIN_OCCURS)
        if low is not None and count < low:
            self.missing(
                f"The minimum number of {what} is {low} but this has {count} {what}",
                expr,
                "invalid",
            )

    def occurrences(
        self,
        qi: dict[str, Any],
        occurrences: list[tuple[dict[str, Any], str]],
        stack: tuple[_Frame, ...],
        enabled: bool | None,
        reported: bool,
    ) -> None:
        """The response items of one Questionnaire item; ``reported``: it is in a
        disabled item, which was reported."""
        link = qi.get("linkId")
        if len(occurrences) > 1 and qi.get("repeats") is not True:
            self.add(
                "error",
                "invalid",
                f"Only one response item with this linkId ('{link}') allowed",
                occurrences[1][1],
            )
        if qi.get("type") == "group" and enabled is True:
            self.occurs(qi, len(occurrences), occurrences[0][1], "repetitions")
        for item, where in occurrences:
            if enabled is False and not reported and (_answers(item) or _items(item)):
                self.add(
                    "error",
                    "invalid",
                    f"Item has answer, even though it is not enabled (item id = '{link}')",
                    where,
                )
            self.item(qi, item, where, stack, enabled)

    def item(
        self,
        qi: dict[str, Any],
        item: dict[str, Any],
        expr: str,
        stack: tuple[_Frame, ...],
        enabled: bool | None,
    ) -> None:
        link = qi.get("linkId")
        kind = qi.get("type")
        text = item.get("text")
        if isinstance(text, str) and text and text != qi.get("text"):
            self.add(
                "error",
                "invalid",
                f"If text exists, it must match the questionnaire definition for linkId '{link}'",
                expr,
            )
        answers = _answers(item)
        inner = (*stack, (qi, item))
        if kind not in _ANSWER_TYPES and kind not in _NO_ANSWERS:
            self.add(
                "error",
                "required",
                f"The questionnaire item '{link}' has no valid type ({_show(kind)}), so its "
                "answers cannot be validated",
                expr,
            )
            return
        if enabled is True and kind not in _NO_ANSWERS:
            if qi.get("required") is True and not answers:
                self.missing(f"No response answer found for required item '{link}'", expr)
            self.occurs(qi, len(answers), expr, "answers")
        if len(answers) > 1 and qi.get("repeats") is not True:
            self.add(
                "error", "invalid", "Only one response answer item with this linkId allowed", expr
            )
        for j, answer in enumerate(answers):
            where = f"{expr}.answer[{j}]"
            if kind == "display":
                self.add("error", "structure", "Items of type 'display' cannot have answers", expr)
                break
            if kind in _NO_ANSWERS:
                self.add(
                    "error", "structure", f"Items of type {kind} should not have answers", expr
                )
                break
            self.answer(qi, str(kind), answer, where, len(answers))
            self.items(_items(qi), answer, where, inner, enabled)
        children = _items(item)
        if kind == "display":
            if children:
                self.add(
                    "error",
                    "structure",
                    f"Items of type display should not have items - linkId '{link}'",
                    expr,
                )
        elif kind not in ("group", "question"):
            if children:
                self.add(
                    "error",
                    "structure",
                    "Items not of type group should not have items outside answers "
                    "(use answer.item not .item)",
                    expr,
                )
        else:
            if enabled is True and qi.get("required") is True and not children:
                self.missing("No sub-items found for required group", expr, "invariant")
            self.items(_items(qi), item, expr, inner, enabled)

    # ------------------------------------------------------------------ enableWhen

    def enabled(self, qi: dict[str, Any], stack: tuple[_Frame, ...]) -> bool | None:
        """Whether an item is enabled where ``stack`` ends; None when its enableWhen
        conditions cannot be evaluated."""
        conditions = qi.get("enableWhen")
        if type(conditions) is not list or not conditions:
            return True
        results = [self.condition(qi, c, stack) for c in conditions if type(c) is dict]
        if not results:
            return True
        if qi.get("enableBehavior") == "all":
            if False in results:
                return False
            return True if all(r is True for r in results) else None
        # "any", a single condition, or (against que-12) no behavior: enabled if any
        if True in results:
            return True
        return False if all(r is False for r in results) else None

    def condition(
        self, source: dict[str, Any], condition: dict[str, Any], stack: tuple[_Frame, ...]
    ) -> bool | None:
        question = condition.get("question")
        operator = condition.get("operator")
        if not isinstance(question, str) or question not in self.index.items:
            return None
        expected = next(
            (
                (_fhir_type("value" + k[6:]), v)
                for k, v in condition.items()
                if k.startswith("answer") and len(k) > 6
            ),
            None,
        )
        if expected is None:
            return None
        values = [v for v in self.answers_to(source, question, stack) if v is not None]
        if operator == "exists":
            if not isinstance(expected[1], bool):
                return None
            return bool(values) == expected[1]
        outcomes = [self.test(operator, v, expected) for v in values]
        if True in outcomes:
            return True
        return False if all(o is False for o in outcomes) else None

    def answers_to(
        self, source: dict[str, Any], question: str, stack: tuple[_Frame, ...]
    ) -> Iterator[tuple[str, Any] | None]:
        """The answer values of ``question`` in the nearest response node of the group
        the Questionnaire nests both items in (the response when there is none)."""
        source_parents = self.index.parents.get(str(source.get("linkId")), ())
        target_parents = self.index.parents.get(question, ())
        shared = {p for p in source_parents if p in target_parents}
        focus = self.response
        for q_item, node in reversed(stack):
            if q_item is not None and id(q_item) in shared:
                focus = node
                break
        for item in self.find_below(focus, question):
            for answer in _answers(item):
                found = _value(answer)
                yield None if found is None else (found[0], found[1])

    def find_below(self, item: dict[str, Any], link: str) -> Iterator[dict[str, Any]]:
        if item.get("linkId") == link:
            yield item
        for child in _items(item):
            yield from self.find_below(child, link)
        for answer in _answers(item):
            for child in _items(answer):
                yield from self.find_below(child, link)

    @staticmethod
    def test(operator: Any, actual: tuple[str, Any], expected: tuple[str, Any]) -> bool | None:
        (atype, a), (etype, e) = actual, expected
        if atype != etype and {atype, etype} != {"date", "dateTime"}:
            return None
        if atype == "Coding":
            if type(a) is not dict or type(e) is not dict:
                return None
            same = a.get("code") == e.get("code") and (
                e.get("system") is None or a.get("system") == e.get("system")
            )
            order = 0 if same else None
        elif atype == "Quantity":
            if type(a) is not dict or type(e) is not dict:
                return None
            coded = a.get("code") is not None and e.get("code") is not None
            if coded and (a.get("system"), a.get("code")) != (e.get("system"), e.get("code")):
                return None
            if not coded and a.get("unit") != e.get("unit"):
                return None
            order = _compare("decimal", a.get("value"), e.get("value"))
        elif atype == "Reference":
            if type(a) is not dict or type(e) is not dict:
                return None
            order = 0 if a.get("reference") == e.get("reference") else None
        elif atype == "boolean":
            order = 0 if a == e else None
        else:
            order = _compare(atype, a, e)
        if operator == "=":
            return order == 0
        if operator == "!=":
            return order != 0
        if order is None:
            return None
        if operator == ">":
            return order > 0
        if operator == "<":
            return order < 0
        if operator == ">=":
            return order >= 0
        if operator == "<=":
            return order <= 0
        return None

    # ------------------------------------------------------------------ answers

    def answer(
        self, qi: dict[str, Any], kind: str, answer: dict[str, Any], expr: str, count: int
    ) -> None:
        found = _value(answer)
        if found is None:
            return
        vtype, value, key = found
        where = f"{expr}.{key}"
        allowed = _ANSWER_TYPES[kind]
        if vtype not in allowed:
            wanted = (
                f"of the type {allowed[0]}"
                if len(allowed) == 1
                else f"one of the types {', '.join(allowed)}"
            )
            self.add("error", "invariant", f"Answer value must be {wanted} not {vtype}", where)
            return
        if value is None:
            return  # a value given by extensions only
        if kind in ("choice", "open-choice"):
            self.choice(qi, kind == "open-choice", vtype, value, where, count)
            return
        if vtype in ("integer", "decimal", "date", "dateTime", "time"):
            self.bounds(qi, vtype, value, where)
        if vtype in ("integer", "date", "time", "string", "Reference"):
            self.option(qi, vtype, value, where)
        if vtype == "decimal":
            self.decimals(qi, value, where)
        elif vtype == "string":
            self.string(qi, kind, value, where)
        elif vtype == "Attachment" and type(value) is dict:
            self.attachment(qi, value, where)
        elif vtype == "Reference" and type(value) is dict:
            self.reference(qi, value, where)
        elif vtype == "Quantity" and type(value) is dict:
            self.quantity(qi, value, where)

    def bounds(self, qi: dict[str, Any], vtype: str, value: Any, where: str) -> None:
        for url, low in ((MIN_VALUE, True), (MAX_VALUE, False)):
            bound = _ext_value(qi, url)
            if bound is None:
                continue
            btype, b = bound
            if btype == "Quantity":
                continue
            order = _compare(vtype, value, b)
            if order is None:
                continue
            if low and order < 0:
                self.add(
                    "error",
                    "invariant",
                    f"The value {_show(value)} is less than the allowed minimum of {_show(b)}",
                    where,
                )
            elif not low and order > 0:
                self.add(
                    "error",
                    "invariant",
                    f"The value {_show(value)} is greater than the allowed maximum of {_show(b)}",
                    where,
                )

    def options(self, qi: dict[str, Any]) -> list[tuple[str, Any, dict[str, Any]]]:
        """(FHIR type, value, option) of the item's answerOptions."""
        out = []
        raw = qi.get("answerOption")
        for option in raw if type(raw) is list else ():
            if type(option) is dict:
                found = _value(option)
                if found is not None and found[1] is not None:
                    out.append((found[0], found[1], option))
        return out

    def option(self, qi: dict[str, Any], vtype: str, value: Any, where: str) -> None:
        """The value is one of the item's answerOptions of its type."""
        options = self.options(qi)
        if not options:
            return
        same = [v for t, v, _ in options if t == vtype]
        if not same:
            self.add(
                "error",
                "invariant",
                f"Option list has no option values of type {vtype}",
                where,
            )
        elif not any(self.same_value(vtype, value, v) for v in same):
            shown = value.get("reference") if type(value) is dict else _show(value)
            what = "reference" if vtype == "Reference" else vtype
            self.add(
                "error",
                "invariant",
                f"The {what} {shown} is not in the set of permitted values",
                where,
            )

    @staticmethod
    def same_value(vtype: str, a: Any, b: Any) -> bool:
        if vtype in ("integer", "decimal"):
            return _compare(vtype, a, b) == 0
        if vtype == "Reference":
            return type(a) is dict and type(b) is dict and a.get("reference") == b.get("reference")
        return bool(a == b)

    def choice(
        self, qi: dict[str, Any], open_choice: bool, vtype: str, value: Any, where: str, count: int
    ) -> None:
        options = self.options(qi)
        if vtype == "Coding":
            if type(value) is not dict:
                return
            if options:
                self.coding_option(value, options, where, count)
            elif isinstance(qi.get("answerValueSet"), str):
                self.coding_in_value_set(value, str(qi["answerValueSet"]), where)
            else:
                self.add(
                    "information",
                    "invariant",
                    "Cannot validate options because no option or options are provided",
                    where,
                )
            return
        if vtype == "string" and open_choice:
            for t, v, _ in options:
                if t == "Coding" and type(v) is dict:
                    names = [v.get("display"), v.get("code")]
                    if any(isinstance(n, str) and n.lower() == value.lower() for n in names):
                        self.add(
                            "warning",
                            "invariant",
                            f"The string value '{value}' matches an entry in the list of valid "
                            "Codings, so this is probably an error",
                            where,
                        )
                        break
            if not options:
                self.add(
                    "information",
                    "invariant",
                    "Cannot validate string answer option because no option list is provided",
                    where,
                )
            return
        if not options:
            self.add(
                "information",
                "invariant",
                f"Cannot validate {vtype} answer option because no option list is provided",
                where,
            )
            return
        self.option(qi, vtype, value, where)

    def coding_option(
        self,
        value: dict[str, Any],
        options: list[tuple[str, Any, dict[str, Any]]],
        where: str,
        count: int,
    ) -> None:
        codings = [(v, o) for t, v, o in options if t == "Coding" and type(v) is dict]
        if not codings:
            self.add("error", "invariant", "Option list has no option values of type coding", where)
            return
        for option, holder in codings:
            if option.get("system") == value.get("system") and option.get("code") == value.get(
                "code"
            ):
                exclusive = _ext_value(holder, OPTION_EXCLUSIVE)
                if exclusive is not None and exclusive[1] is True and count > 1:
                    self.add(
                        "error",
                        "invariant",
                        f"Selected answer {_coding_text(option)} is an exclusive option - "
                        "can't select anything else at the same time",
                        where,
                    )
                return
        self.add(
            "error",
            "invariant",
            f"The code {value.get('system', '')}::{value.get('code', '')} is not in the set of "
            "permitted values",
            where,
        )

    def value_set(self, url: str) -> tuple[Codes | None, bool]:
        """(codes, known) of an answerValueSet / unitValueSet: ``#id`` in the
        Questionnaire's or the response's contained resources, else by URL."""
        if url.startswith("#"):
            for holder in (self.questionnaire, self.response):
                for r in holder.get("contained") or ():
                    if (
                        type(r) is dict
                        and r.get("resourceType") == "ValueSet"
                        and r.get("id") == url[1:]
                    ):
                        return self.expand(r), True
            return None, False
        codes = self.value_set_codes(url) if self.value_set_codes is not None else None
        return codes, codes is not None or self.knows_value_set(url)

    def unchecked_value_set(self, url: str, known: bool, where: str) -> None:
        if known:
            self.add(
                "information",
                "informational",
                f"The value set '{url}' cannot be expanded here, so the answer was not "
                "checked against it",
                where,
            )
        else:
            self.add(
                "warning",
                "code-invalid",
                f"ValueSet '{url}' not found, so the answer was not checked against it",
                where,
            )

    def coding_in_value_set(self, value: dict[str, Any], url: str, where: str) -> None:
        system, code = value.get("system"), value.get("code")
        if not isinstance(code, str):
            return
        if not isinstance(system, str):
            self.add(
                "warning",
                "code-invalid",
                "Coding has no system. A code with no system has no defined meaning, and it "
                "cannot be validated. A system should be provided",
                where,
            )
            return
        codes, known = self.value_set(url)
        if codes is None:
            self.unchecked_value_set(url, known, where)
        elif (system, code) not in codes:
            self.add(
                "error",
                "code-invalid",
                f"The code '{code}' in the system '{system}' is not in the options value set "
                f"({url}) specified by the questionnaire",
                where,
            )

    def string(self, qi: dict[str, Any], kind: str, value: Any, where: str) -> None:
        if not isinstance(value, str):
            return
        low = _int_ext(qi, MIN_LENGTH)
        if low is not None and len(value) < low:
            self.add(
                "error",
                "invariant",
                f"The answer '{value}' is shorter than the required minimum length of {low}",
                where,
            )
        high = qi.get("maxLength")
        if isinstance(high, int) and not isinstance(high, bool) and len(value) > high:
            self.add(
                "error",
                "invariant",
                f"The answer '{value}' is longer than the allowed maximum length of {high}",
                where,
            )
        regex = _ext_value(qi, REGEX)
        if regex is not None and isinstance(regex[1], str):
            self.pattern(qi, value, regex[1], where)
        if kind == "string" and ("\r" in value or "\n" in value):
            self.add(
                "warning", "invariant", "The answer should not contain new line characters", where
            )
        url = qi.get("answerValueSet")
        if isinstance(url, str):
            codes, known = self.value_set(url)
            if codes is None:
                self.unchecked_value_set(url, known, where)
            elif value not in {c for _, c in codes}:
                self.add(
                    "error",
                    "invariant",
                    f"The value '{value}' is not in the list of allowed values (value set '{url}')",
                    where,
                )

    def pattern(self, qi: dict[str, Any], value: str, regex: str, where: str) -> None:
        try:
            ok = re.fullmatch(regex, value) is not None
        except re.error:
            self.add(
                "warning",
                "invariant",
                f"The regex '{regex}' of the questionnaire cannot be evaluated",
                where,
            )
            return
        if ok:
            return
        entry = _ext_value(qi, ENTRY_FORMAT)
        shown = f"'{entry[1]}' (regex '{regex}')" if entry is not None else f"'{regex}'"
        self.add(
            "error",
            "invariant",
            f"The answer '{value}' does not conform to the expected format {shown}",
            where,
        )

    def decimals(self, qi: dict[str, Any], value: Any, where: str) -> None:
        places = _int_ext(qi, MAX_DECIMALS)
        number = _decimal(value)
        if places is None or number is None:
            return
        exponent = number.as_tuple().exponent
        found = -exponent if isinstance(exponent, int) and exponent < 0 else 0
        if found > places:
            self.add(
                "error",
                "invariant",
                f"The value {_show(value)} has too many decimal places (limit = {places})",
                where,
            )

    def attachment(self, qi: dict[str, Any], value: dict[str, Any], where: str) -> None:
        allowed = [
            str(v[1])
            for e in _extensions(qi, MIME_TYPE)
            if (v := _value(e)) is not None and isinstance(v[1], str)
        ]
        if allowed:
            content_type = value.get("contentType")
            if not isinstance(content_type, str):
                self.add(
                    "error",
                    "required",
                    f"The attachment has no content type (allowed = {', '.join(allowed)})",
                    where,
                )
            elif not any(_mime_matches(content_type, a) for a in allowed):
                self.add(
                    "error",
                    "required",
                    f"The mime type {content_type} is not valid for this answer (allowed = "
                    f"{', '.join(allowed)})",
                    where,
                )
        limit = _ext_value(qi, MAX_SIZE)
        maximum = _decimal(limit[1]) if limit is not None else None
        if maximum is None:
            return
        size: int | None = None
        data = value.get("data")
        if isinstance(data, str):
            try:
                size = len(base64.b64decode(data, validate=False))
            except (binascii.Error, ValueError):
                size = None
        if size is None and isinstance(value.get("size"), int):
            size = int(value["size"])
        if size is not None and size > maximum:
            self.add(
                "error",
                "required",
                f"The attachment is too large (allowed = {maximum}, found = {size})",
                where,
            )

    def reference(self, qi: dict[str, Any], value: dict[str, Any], where: str) -> None:
        ref = value.get("reference")
        if not isinstance(ref, str) or not ref:
            return
        rt: str | None
        if ref.startswith("#"):
            rt = next(
                (
                    str(r.get("resourceType"))
                    for r in self.response.get("contained") or ()
                    if type(r) is dict and r.get("id") == ref[1:]
                ),
                None,
            )
        else:
            rt = _reference_type(ref)
        allowed = [
            str(v[1])
            for e in _extensions(qi, REFERENCE_RESOURCE)
            if (v := _value(e)) is not None and isinstance(v[1], str)
        ]
        if rt is None:
            return
        if allowed:
            if rt not in allowed:
                self.add(
                    "error",
                    "invariant",
                    f"The resource type '{rt}' in the reference {ref} is not allowed (allowed = "
                    f"{','.join(allowed)})",
                    where,
                )
        elif rt[:1].isupper() and rt not in definitions.resource_types():
            self.add(
                "error",
                "invariant",
                f"The resource type {rt} in the reference {ref} is not valid",
                where,
            )

    def quantity(self, qi: dict[str, Any], value: dict[str, Any], where: str) -> None:
        for url, low in (
            (MIN_VALUE, True),
            (MIN_QUANTITY, True),
            (MAX_VALUE, False),
            (MAX_QUANTITY, False),
        ):
            bound = _ext_value(qi, url)
            if bound is not None and bound[0] == "Quantity" and type(bound[1]) is dict:
                self.quantity_bound(value, bound[1], low, where)
        self.decimals(qi, value.get("value"), where)
        options = [
            v[1]
            for url in (UNIT_OPTION, UNIT)
            for e in _extensions(qi, url)
            if (v := _value(e)) is not None and v[0] == "Coding" and type(v[1]) is dict
        ]
        if options and not any(_unit_matches(value, o) for o in options):
            shown = ",".join(
                (f"{o['display']} " if isinstance(o.get("display"), str) else "")
                + f"({'UCUM' if o.get('system') == UCUM else o.get('system', '')}#{o.get('code')})"
                for o in options
            )
            self.add(
                "error",
                "invariant",
                f"The value {_quantity_text(value)} has a unit that is not valid (allowed = "
                f"{shown})",
                where,
            )
        unit_vs = _ext_value(qi, UNIT_VALUE_SET)
        if unit_vs is not None and isinstance(unit_vs[1], str):
            url = unit_vs[1]
            system, code = value.get("system"), value.get("code")
            message = (
                f"The value {_quantity_text(value)} has a unit that is not in the unit value "
                f"set '{url}'"
            )
            if not isinstance(system, str) or not isinstance(code, str):
                self.add("error", "invariant", message, where)
                return
            codes, known = self.value_set(url)
            if codes is None:
                self.unchecked_value_set(url, known, where)
            elif (system, code) not in codes:
                self.add("error", "invariant", message, where)

    def quantity_bound(
        self, value: dict[str, Any], bound: dict[str, Any], low: bool, where: str
    ) -> None:
        which = "minimum" if low else "maximum"
        v, b = _decimal(value.get("value")), _decimal(bound.get("value"))
        if v is None or b is None:
            return
        shown = f"The quantity {_quantity_text(value)}"
        limit = f"the allowed {which} of {_quantity_text(bound)}"
        vs, vc, bs, bc = (
            value.get("system"),
            value.get("code"),
            bound.get("system"),
            bound.get("code"),
        )
        if not all(isinstance(x, str) for x in (vs, vc, bs, bc)):
            self.add(
                "error",
                "invariant",
                f"{shown} cannot be compared to {limit} because no formal units are specified",
                where,
            )
            return
        if (vs, vc) == (bs, bc):
            order = (v > b) - (v < b)
        elif vs == UCUM and bs == UCUM:
            try:
                order = ucum.compare(v, str(vc), b, str(bc))
            except ucum.UnitError as exc:
                self.add(
                    "information",
                    "informational",
                    f"{shown} was not compared to {limit}: {exc}",
                    where,
                )
                return
            except ValueError:
                self.add(
                    "error",
                    "invariant",
                    f"{shown} cannot be compared to {limit}: the units measure different things",
                    where,
                )
                return
        else:
            self.add("error", "invariant", f"{shown} cannot be compared to {limit}", where)
            return
        if low and order < 0:
            self.add("error", "invariant", f"{shown} is less than {limit}", where)
        elif not low and order > 0:
            self.add("error", "invariant", f"{shown} is greater than {limit}", where)


def _both(a: bool | None, b: bool | None) -> bool | None:
    """Three-valued and: enabled when both are, disabled when either is."""
    if a is False or b is False:
        return False
    return True if a is True and b is True else None


def _mime_matches(content_type: str, allowed: str) -> bool:
    actual = content_type.split(";", 1)[0].strip().lower()
    wanted = allowed.split(";", 1)[0].strip().lower()
    if wanted.endswith("/*"):
        return actual.startswith(wanted[:-1])
    return actual == wanted or actual.startswith(wanted)


def _unit_matches(value: dict[str, Any], option: dict[str, Any]) -> bool:
    system, code = option.get("system"), option.get("code")
    if system is not None and system != value.get("system"):
        return False
    if code is not None:
        return bool(code == value.get("code"))
    display = option.get("display")
    return display is None or display == value.get("unit")


def validate_response(
    response: dict[str, Any],
    where: str,
    *,
    questionnaire: Callable[[str], dict[str, Any] | None],
    value_set_codes: TerminologyLookup | None,
    knows_value_set: Callable[[str], bool],
    expand: ValueSetExpander,
    definition_type: Callable[[str], str | None] | None = None,
) -> list[Issue]:
    """The issues of a QuestionnaireResponse against its Questionnaire.

    ``questionnaire`` finds a Questionnaire by canonical URL (``|version`` allowed);
    ``value_set_codes``/``knows_value_set`` answer for the value sets answers are
    bound to by URL, ``expand`` for ValueSet resources contained in the Questionnaire
    or the response. ``where`` is the response's location (its type at the root).
    ``definition_type`` names the type of the resource a canonical URL resolves to,
    if known: ``questionnaire`` is ``canonical(Questionnaire)``, so a canonical that
    resolves to another type of resource (or a ``#id`` naming a contained resource of
    another type) is an error."""
    ref, found = resolve(response, questionnaire)
    if ref is None:
        return []
    if found is None:
        wrong = _resolved_type(response, ref, definition_type)
        if wrong is not None and wrong != "Questionnaire":
            return [
                Issue(
                    "error",
                    "invalid",
                    f"The canonical URL '{ref}' refers to a resource of the wrong type: found "
                    f"{wrong}, expected Questionnaire",
                    (f"{where}.questionnaire",),
                )
            ]
        example = ref.startswith(("http://example.org", "https://example.org"))
        return [
            Issue(
                "information" if example else "warning",
                "not-found",
                f"The questionnaire '{ref}' could not be resolved, so no validation can be "
                "performed against the base questionnaire",
                (f"{where}.questionnaire",),
            )
        ]
    return _Validator(response, found, where, value_set_codes, knows_value_set, expand).run()
