"""Authoring rules of a constraint StructureDefinition (a profile) checked against its
base, when the StructureDefinition itself is validated
(https://hl7.org/fhir/R4/structuredefinition.html, elementdefinition.html,
profiling.html):

* every ``differential.element.path`` names an element of the base type: paths are
  element paths of the type the profile constrains (``Observation.value[x]``, or a
  type-specific name of a choice such as ``Observation.valueQuantity`` when that type
  is one of the choice's), entering data types (``Observation.code.coding.system``);
  a path that names nothing cannot constrain anything;
* every ``slicing.discriminator.path`` identifies an element below the sliced element
  (profiling.html#discriminator: the path, relative to the element being sliced,
  identifies the element on which discrimination is based), through ``$this``,
  ``extension('url')``, ``ofType(T)``; a path through ``resolve()``, another function
  or an abstract resource type is not followed (it is accepted);
* a ``fixed[x]`` value of an element the base profile already fixes is that same value
  (profiling.html: a profile can only constrain its base further, so it cannot change
  a value the base fixed -- an extension derived from another keeps its ``url``).

Only ``derivation`` ``constraint`` definitions of a known base type are looked at
(specializations and logical models define their own elements); paths that cannot be
followed in the R4 tables are accepted, never reported.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

from fhir_server import definitions
from fhir_server.errors import Issue
from fhir_server.validation.registry import ProfileRegistry, base_type_of
from fhir_server.validation.snapshot import element_ids

__all__ = ["check_structure_definition"]

# A position in the R4 tables: (type name, element path within that type).
_State = tuple[str, str]
# Types whose content is not known from the element alone: paths below are accepted.
_OPEN_TYPES: Final = frozenset({"Resource", "DomainResource"})


class _Unknown(Exception):
    """The path cannot be followed in the tables: accepted."""


def _step(states: Sequence[_State], name: str) -> list[_State]:
    """The positions ``name`` leads to from each state (empty: nowhere)."""
    out: list[_State] = []
    for type_name, path in states:
        if type_name in _OPEN_TYPES or type_name not in definitions.type_names():
            raise _Unknown
        out += _child(type_name, path, name)
    return out


def _child(type_name: str, path: str, name: str) -> list[_State]:
    elements = definitions.type_definition(type_name).elements
    ed = elements.get(f"{path}.{name}")
    restrict: list[str] | None = None
    if ed is None and not name.endswith("[x]"):
        ed = elements.get(f"{path}.{name}[x]")
        if ed is None:
            # a type-specific choice name: valueQuantity -> value[x] restricted to Quantity
            for k in range(1, len(name)):
                if not name[k].isupper():
                    continue
                choice = elements.get(f"{path}.{name[:k]}[x]")
                if choice is None:
                    continue
                suffix = name[k:]
                restrict = [
                    t.code for t in choice.types if t.code[:1].upper() + t.code[1:] == suffix
                ]
                if restrict:
                    ed = choice
                break
    if ed is None:
        return []
    if ed.content_reference:
        return [(type_name, ed.content_reference)]
    prefix = ed.path + "."
    if any(p.startswith(prefix) for p in elements):  # inline (backbone) children
        return [(type_name, ed.path)]
    codes = restrict if restrict is not None else [t.code for t in ed.types]
    if not codes:
        raise _Unknown
    return [(code, code) for code in codes]


def _split(expression: str) -> list[str]:
    """A discriminator path's segments: dots inside parentheses or quotes do not split."""
    parts: list[str] = []
    depth = 0
    quoted = False
    current = ""
    for ch in expression:
        if ch == "'" and depth:
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        if ch == "." and not depth and not quoted:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p.strip() for p in parts]


def _follow(states: list[_State], expression: str) -> bool:
    """Whether a discriminator path leads to an element from these positions (True
    when it cannot be followed in the tables)."""
    try:
        for segment in _split(expression):
            if segment == "$this":
                continue
            name, paren, rest = segment.partition("(")
            if not paren or name in ("extension", "modifierExtension"):
                states = _step(states, name)
            elif name in ("ofType", "as"):
                type_name = rest.rstrip(")").strip().strip("'")
                if type_name not in definitions.type_names():
                    return True
                states = [(type_name, type_name)]
            else:  # resolve() and anything else: not followed
                return True
            if not states:
                return False
    except _Unknown:
        return True
    return True


def _locate(root: str, path: str) -> list[_State] | None:
    """The positions of an element path (None: unknown, [] : not an element)."""
    segments = path.split(".")
    if segments[0] != root:
        return []
    states: list[_State] = [(root, root)]
    try:
        for segment in segments[1:]:
            states = _step(states, segment)
            if not states:
                return []
    except _Unknown:
        return None
    return states


def _fixed(el: dict[str, Any]) -> tuple[str, Any] | None:
    for key, value in el.items():
        if key.startswith("fixed"):
            return key, value
    return None


def check_structure_definition(
    sd: dict[str, Any], where: str, registry: ProfileRegistry
) -> list[Issue]:
    """The issues of a StructureDefinition under the rules above."""
    root = sd.get("type")
    diff = (sd.get("differential") or {}).get("element")
    if (
        sd.get("derivation") != "constraint"
        or not isinstance(root, str)
        or root not in definitions.type_names()
        or not isinstance(diff, list)
        or not all(isinstance(e, dict) and isinstance(e.get("path"), str) for e in diff)
    ):
        return []
    issues: list[Issue] = []
    for i, el in enumerate(diff):
        at = f"{where}.differential.element[{i}]"
        states = _locate(root, el["path"])
        if states == []:
            issues.append(
                Issue(
                    "error",
                    "structure",
                    f"the path {el['path']} is not an element of {root}: a differential "
                    "element must constrain an element of the base",
                    (f"{at}.path",),
                )
            )
            continue
        slicing = el.get("slicing")
        discriminators = slicing.get("discriminator") if isinstance(slicing, dict) else None
        for j, d in enumerate(discriminators if isinstance(discriminators, list) else ()):
            path = d.get("path") if isinstance(d, dict) else None
            if states is None or not isinstance(path, str) or _follow(states, path):
                continue
            issues.append(
                Issue(
                    "error",
                    "invalid",
                    f"the discriminator path '{path}' is not an element of the sliced "
                    f"element {el['path']}",
                    (f"{at}.slicing.discriminator[{j}]",),
                )
            )
    issues += _fixed_values(sd, diff, where, registry)
    return issues


def _fixed_values(
    sd: dict[str, Any], diff: list[dict[str, Any]], where: str, registry: ProfileRegistry
) -> list[Issue]:
    base_url = sd.get("baseDefinition")
    if (
        not isinstance(base_url, str)
        or base_type_of(base_url) is not None
        or not any(_fixed(e) for e in diff)
    ):
        return []
    base = registry.snapshot(base_url)
    if base is None:
        return []
    by_id = {str(e.get("id")): e for e in base}
    issues: list[Issue] = []
    for i, (el, eid) in enumerate(zip(diff, element_ids(diff), strict=True)):
        mine = _fixed(el)
        inherited = _fixed(by_id.get(eid) or {})
        if mine is None or inherited is None or mine == inherited:
            continue
        issues.append(
            Issue(
                "error",
                "value",
                f"{eid} is fixed to {json.dumps(inherited[1])} ({inherited[0]}) in the base "
                f"profile {base_url}: a profile cannot change it to {json.dumps(mine[1])}",
                (f"{where}.differential.element[{i}]",),
            )
        )
    return issues
