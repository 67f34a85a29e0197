"""Validation of a resource (or element) against a profile's snapshot.

https://hl7.org/fhir/R4/profiling.html and validation.html. A snapshot is compiled
once into a tree of :class:`Elem` (children by name, slices under their sliced
element); :class:`ProfileValidator` walks an instance along it and checks what the
profile says beyond the base definitions, which the structure validator checks anyway:

* cardinality, where the profile narrows it, and of every slice;
* types: the types a choice may still use, type profiles (a datatype profile, an
  extension definition: the value must conform to one of them), reference target
  profiles (the target's type; a contained target is validated against the profile);
* ``fixed[x]`` (exactly equal) and ``pattern[x]`` (the pattern's content present);
* bindings: required -> error, extensible -> warning when the code is not in the
  value set, resolved through a :data:`~fhir_server.validation.valuesets.TerminologyLookup`
  (value sets that cannot be resolved are not checked); additional bindings (R5's
  ``binding.additional``, in R4 as the cross-version extension
  :data:`ADDITIONAL_BINDING`) of purpose ``required`` or ``maximum`` -> error,
  ``extensible`` -> warning; the other purposes (``preferred``, ``ui``, ``current``,
  ``minimum`` ...) guide implementers and constrain no instance, and an additional
  binding limited to a ``usage`` context is not applied (its context is not known);
* ``maxLength``, ``minValue[x]``/``maxValue[x]`` (a Quantity in another UCUM unit is
  converted, :mod:`.ucum`; a Duration on a date, dateTime or instant is relative to
  now: ``minValueDuration`` 100 a = not more than 100 years ago);
* slicing with discriminators ``value``, ``pattern``, ``type``, ``profile`` and
  ``exists`` (paths such as ``code.coding.code``, ``url``, ``$this``, ``resolve()``,
  ``extension('url')``, ``ofType(T)``), ``closed``/``open``/``openAtEnd`` rules and
  ``ordered``; slicing without discriminators matches by validating against each slice;
* extensions by url, with the extension's own definition when the registry knows it;
* the profile's own constraints (FHIRPath, :mod:`.invariants`).

``mustSupport`` does not affect validity. Every issue names the instance element in
``expression``.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache
from typing import TYPE_CHECKING, Any, Final

from fhir_server import definitions
from fhir_server.definitions import BACKBONE, PRIMITIVE, RESOURCE, ElementDef
from fhir_server.errors import Issue, IssueCode, Severity, has_errors
from fhir_server.validation import invariants, ucum
from fhir_server.validation.fastpath import It, navigate
from fhir_server.validation.invariants import Invariant
from fhir_server.validation.options import DEFAULT, ValidationOptions, extension_allowed
from fhir_server.validation.snapshot import Element, element_ids
from fhir_server.validation.valuesets import Codes, TerminologyLookup
from fhir_server.validation.walk import complex_items

if TYPE_CHECKING:
    from fhir_server.validation.registry import ProfileRegistry

__all__ = ["Elem", "Profile", "ProfileValidator", "TypeRef", "compile_profile"]

_SD: Final = "http://hl7.org/fhir/StructureDefinition/"
_CODED: Final = frozenset({"code", "string", "uri", "url", "canonical", "id", "markdown"})


# --------------------------------------------------------------------------- the tree


@dataclass(frozen=True, slots=True)
class TypeRef:
    code: str
    profiles: tuple[str, ...] = ()
    target_profiles: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Slicing:
    discriminators: tuple[tuple[str, str], ...]  # (type, path)
    rules: str  # open | closed | openAtEnd
    ordered: bool


@dataclass(eq=False, slots=True)
class Elem:
    id: str
    path: str
    name: str  # the last path segment without [x]
    choice: bool
    min: int
    max: int | None  # None: unbounded
    types: tuple[TypeRef, ...]
    fixed: Any = None  # (value,) when set
    pattern: Any = None  # (value,) when set
    binding: tuple[str, str] | None = None  # (strength, value set URL)
    # (purpose, value set URL) of the additional bindings that constrain instances
    additional_bindings: tuple[tuple[str, str], ...] = ()
    constraints: tuple[Invariant, ...] = ()
    slicing: Slicing | None = None
    slice_name: str | None = None
    max_length: int | None = None
    min_value: Any = None
    max_value: Any = None
    content_reference: str | None = None
    children: list[Elem] = field(default_factory=list)
    slices: list[Elem] = field(default_factory=list)
    base: ElementDef | None = None  # the base definition's element, when known
    base_container: tuple[str, str] | None = None  # (type name, path) of its children
    suffixes: dict[str, str] | None = None  # a choice's JSON key suffix -> type code
    is_modifier: bool = False  # ElementDefinition.isModifier

    def type_codes(self) -> set[str]:
        return {t.code for t in self.types}


@dataclass(eq=False, slots=True)
class Profile:
    url: str
    type: str
    root: Elem
    by_id: dict[str, Elem]


def _int_max(raw: Any) -> int | None:
    if raw in (None, "*"):
        return None
    try:
        return int(raw)
    except (TypeError, ValueError):
        return None


def _value_of(el: Element, prefix: str) -> Any:
    for k, v in el.items():
        if k.startswith(prefix) and len(k) > len(prefix) and k[len(prefix)].isupper():
            return (v,)
    return None


@cache
def _base_constraint_keys() -> frozenset[tuple[str, str | None]]:
    return frozenset((c.key, c.expression) for c in definitions.base_constraints())


def _elem(el: Element, eid: str) -> Elem:
    path: str = el["path"]
    last = path.rsplit(".", 1)[-1]
    choice = last.endswith("[x]")
    types = tuple(
        TypeRef(
            code=_type_code(t),
            profiles=tuple(t.get("profile") or ()),
            target_profiles=tuple(t.get("targetProfile") or ()),
        )
        for t in el.get("type") or ()
        if isinstance(t, dict) and isinstance(t.get("code"), str)
    )
    binding = el.get("binding") or {}
    vs = binding.get("valueSet")
    additional = _additional_bindings(binding)
    constraints: list[Invariant] = []
    base_keys = _base_constraint_keys()
    for c in el.get("constraint") or ():
        key, expr = c.get("key"), c.get("expression")
        if not isinstance(key, str) or (key, expr) in base_keys:
            continue
        if key in invariants.COVERED_BY_STRUCTURE:
            continue
        constraints.append(
            invariants.compile_invariant(
                key,
                str(c.get("severity", "error")),
                str(c.get("human", "")),
                expr if isinstance(expr, str) else None,
                False,
                c.get("source"),
            )
        )
    slicing = None
    raw = el.get("slicing")
    if isinstance(raw, dict):
        slicing = Slicing(
            discriminators=tuple(
                (str(d.get("type")), str(d.get("path")))
                for d in raw.get("discriminator") or ()
                if isinstance(d, dict)
            ),
            rules=str(raw.get("rules", "open")),
            ordered=bool(raw.get("ordered")),
        )
    cref = el.get("contentReference")
    max_length = el.get("maxLength")
    return Elem(
        id=eid,
        path=path,
        name=last[:-3] if choice else last,
        choice=choice,
        min=int(el.get("min", 0) or 0),
        max=_int_max(el.get("max", "*")),
        types=types,
        fixed=_value_of(el, "fixed"),
        pattern=_value_of(el, "pattern"),
        binding=(str(binding.get("strength")), vs.split("|", 1)[0])
        if isinstance(vs, str) and binding.get("strength")
        else None,
        additional_bindings=additional,
        constraints=tuple(constraints),
        slicing=slicing,
        slice_name=el.get("sliceName"),
        max_length=max_length if isinstance(max_length, int) else None,
        min_value=_value_of(el, "minValue"),
        max_value=_value_of(el, "maxValue"),
        content_reference=cref.split("#", 1)[-1] if isinstance(cref, str) else None,
        is_modifier=el.get("isModifier") is True,
    )


ADDITIONAL_BINDING: Final = (
    "http://hl7.org/fhir/5.0/StructureDefinition/extension-ElementDefinition.binding.additional"
)
# additional binding purpose -> the strength it checks instances with
_ADDITIONAL_STRENGTH: Final = {
    "required": "required",
    "maximum": "required",
    "extensible": "extensible",
}


def _additional_bindings(binding: Any) -> tuple[tuple[str, str], ...]:
    """(purpose, value set) of the additional bindings of an ElementDefinition.binding
    that constrain instances (see the module docstring)."""
    if not isinstance(binding, dict) or "extension" not in binding:
        return ()
    found: list[tuple[str, str]] = []
    for ext in binding.get("extension") or ():
        if not isinstance(ext, dict) or ext.get("url") != ADDITIONAL_BINDING:
            continue
        parts: dict[str, Any] = {}
        for part in ext.get("extension") or ():
            if isinstance(part, dict) and isinstance(part.get("url"), str):
                value = next((v for k, v in part.items() if k.startswith("value")), None)
                parts.setdefault(part["url"], value)
        purpose, vs = parts.get("purpose"), parts.get("valueSet")
        if "usage" in parts or purpose not in _ADDITIONAL_STRENGTH or not isinstance(vs, str):
            continue
        found.append((str(purpose), vs.split("|", 1)[0]))
    return tuple(found)


def _type_code(t: dict[str, Any]) -> str:
    code: str = t["code"]
    if code.startswith("http://hl7.org/fhirpath/System."):
        for ext in t.get("extension") or ():
            if isinstance(ext, dict) and ext.get("url", "").endswith(
                "structuredefinition-fhir-type"
            ):
                return str(ext.get("valueUrl") or ext.get("valueUri") or "string")
        name = code.rsplit(".", 1)[-1]
        return {"String": "string", "Boolean": "boolean", "Integer": "integer"}.get(
            name, name[:1].lower() + name[1:]
        )
    return code


def compile_profile(url: str, type_name: str, elements: Sequence[Element]) -> Profile:
    """Compile snapshot elements into a tree."""
    ids = element_ids(elements)
    by_id: dict[str, Elem] = {}
    root: Elem | None = None
    for el, eid in zip(elements, ids, strict=True):
        e = _elem(el, eid)
        by_id[eid] = e
        if root is None:
            root = e
            continue
        parent_id, _, last = eid.rpartition(".")
        name, sep, _slice = last.partition(":")
        if sep:
            sliced = by_id.get(f"{parent_id}.{name}" if parent_id else name)
            if "/" in _slice:
                sliced = by_id.get(f"{parent_id}.{name}:{_slice.rpartition('/')[0]}") or sliced
            if sliced is not None:
                sliced.slices.append(e)
                continue
        parent = by_id.get(parent_id)
        if parent is not None:
            parent.children.append(e)
    if root is None:
        raise ValueError(f"profile {url} has no elements")
    _attach_base(root, type_name or root.path.split(".", 1)[0])
    return Profile(url, type_name or root.path, root, by_id)


def _attach_base(root: Elem, type_name: str) -> None:
    if type_name not in definitions.type_names():
        return
    td = definitions.type_definition(type_name)
    root.base = td.elements.get(type_name)
    root.base_container = (type_name, type_name)
    _attach_children(root)


def _attach_children(e: Elem) -> None:
    for c in [*e.children, *e.slices]:
        if c in e.slices:
            c.base, c.base_container = e.base, e.base_container
        elif e.base_container is not None:
            tname, cpath = e.base_container
            td = definitions.type_definition(tname)
            last = c.path.rsplit(".", 1)[-1]
            c.base = td.elements.get(f"{cpath}.{last}")
            c.base_container = _container_of(c, c.base, tname)
        _attach_children(c)


def _container_of(e: Elem, base: ElementDef | None, tname: str) -> tuple[str, str] | None:
    """Where the base definitions define the children of an element."""
    if base is None:
        return None
    if base.content_reference:
        return tname, base.content_reference
    codes = e.type_codes() or {t.code for t in base.types}
    if len(codes) != 1:
        return None
    code = next(iter(codes))
    if code in ("BackboneElement", "Element") and any(
        p.startswith(base.path + ".") for p in definitions.type_definition(tname).elements
    ):
        return tname, base.path
    if code in definitions.type_names():
        return code, code
    return None


# --------------------------------------------------------------------------- instance items


@dataclass(slots=True)
class Occ:
    """One occurrence of an element in the instance."""

    value: Any
    ext: Any  # a primitive's _name companion
    type: str  # its type code (resource type for resources, path for backbones)
    expr: str  # FHIRPath-style location
    key: str  # the JSON property it came from


def _cap(code: str) -> str:
    return code[:1].upper() + code[1:]


@cache
def _choice_types(type_name: str, container_path: str, name: str) -> dict[str, str]:
    """JSON key suffix -> type code for a choice element of the base definitions."""
    td = definitions.type_definition(type_name)
    ed = td.elements.get(f"{container_path}.{name}[x]")
    if ed is None:
        return {}
    return {_cap(t.code): t.code for t in ed.types}


_ALL_SUFFIXES: Final = re.compile(r"[A-Z][A-Za-z0-9]*")


def _occurrences(container: dict[str, Any], c: Elem, expr: str) -> list[Occ]:
    out: list[Occ] = []
    if c.choice:
        suffixes = c.suffixes
        if suffixes is None:
            types = (
                c.base.types if c.base is not None and c.base.choice and c.base.types else c.types
            )
            suffixes = c.suffixes = {_cap(t.code): t.code for t in types}
        n = len(c.name)
        keys = []
        for key in container:
            k = key[1:] if key[:1] == "_" else key
            ok = len(k) > n and k.startswith(c.name) and _ALL_SUFFIXES.fullmatch(k[n:])
            if ok and k not in keys:
                keys.append(k)
        for k in keys:
            code = suffixes.get(k[n:])
            if code is None:
                code = k[n:]
                code = code if code in definitions.type_names() else code[:1].lower() + code[1:]
            out.extend(_items(container, k, code, expr))
        return out
    if c.base_container is not None:
        code = c.base_container[1]  # a type code, or a backbone element's base path
    else:
        code = c.types[0].code if len(c.types) == 1 else ""
        if c.base is not None and c.base.types and not code:
            code = c.base.types[0].code
    return _items(container, c.name, code, expr)


def _items(container: dict[str, Any], key: str, code: str, expr: str) -> list[Occ]:
    v = container.get(key)
    e = container.get("_" + key)
    if v is None and e is None:
        return []
    if type(v) is list or type(e) is list:
        vs = v if type(v) is list else []
        es = e if type(e) is list else []
        out = []
        for i in range(max(len(vs), len(es))):
            vi = vs[i] if i < len(vs) else None
            ei = es[i] if i < len(es) else None
            if vi is None and ei is None:
                continue
            out.append(Occ(vi, ei, _rtype(vi, code), f"{expr}.{key}[{i}]", key))
        return out
    return [Occ(v, e, _rtype(v, code), f"{expr}.{key}", key)]


def _rtype(value: Any, code: str) -> str:
    if code in ("Resource", "DomainResource") and type(value) is dict:
        rt = value.get("resourceType")
        if isinstance(rt, str):
            return rt
    return code


# --------------------------------------------------------------------------- comparisons


def _equal(a: Any, b: Any) -> bool:
    if type(a) is bool or type(b) is bool:
        return a is b
    if isinstance(a, int | Decimal | float) and isinstance(b, int | Decimal | float):
        return bool(Decimal(str(a)) == Decimal(str(b)))
    if type(a) is dict and type(b) is dict:
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if type(a) is list and type(b) is list:
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _pattern_matches(pattern: Any, value: Any) -> bool:
    if type(pattern) is dict:
        if type(value) is not dict:
            return False
        for k, pv in pattern.items():
            if k not in value:
                return False
            if not _pattern_matches(pv, value[k]):
                return False
        return True
    if type(pattern) is list:
        if type(value) is not list:
            return False
        return all(any(_pattern_matches(p, v) for v in value) for p in pattern)
    return _equal(pattern, value)


def _show(value: Any, limit: int = 120) -> str:
    from fhir_server import jsonio

    text = jsonio.dumps(value).decode() if not isinstance(value, str) else value
    return text if len(text) <= limit else text[:limit] + "..."


def _max(m: int | None) -> str:
    return "*" if m is None else str(m)


# --------------------------------------------------------------------------- the validator


class ProfileValidator:
    """Validates instances against profiles of a registry.

    ``lookup`` resolves value sets for binding checks; by default the registry's
    (its ValueSets and the base definitions' required value sets)."""

    def __init__(
        self,
        registry: ProfileRegistry,
        lookup: TerminologyLookup | None = None,
        options: ValidationOptions = DEFAULT,
    ) -> None:
        self.registry = registry
        self.lookup: TerminologyLookup = lookup or registry.value_set_codes
        self.options = options
        self._codes: dict[str, Codes | None] = {}
        self._depth = 0

    # ------------------------------------------------------------------ entry points

    def validate(self, resource: dict[str, Any], url: str, expr: str | None = None) -> list[Issue]:
        """Validate a resource against the profile ``url``."""
        issues: list[Issue] = []
        rt = resource.get("resourceType")
        where = expr or (rt if isinstance(rt, str) else "Resource")
        profile = self.registry.compiled(url)
        if profile is None:
            reason = self.registry.error(url)
            if reason:
                issues.append(
                    Issue(
                        "error", "processing", f"profile {url} cannot be used: {reason}", (where,)
                    )
                )
            else:
                issues.append(
                    Issue(
                        "warning", "not-found", f"profile {url} is unknown: not checked", (where,)
                    )
                )
            return issues
        if profile.type not in (rt, "Resource", "DomainResource"):
            issues.append(
                Issue(
                    "error",
                    "invalid",
                    f"the profile {url} is for {profile.type} resources, not {rt}",
                    (where,),
                )
            )
            return issues
        run = _Run(self, profile, resource, issues)
        root = Occ(resource, None, str(rt), where, "")
        run.element(profile.root, root, resource, resource)
        return issues

    def conforms(self, occ: Occ, url: str, resource: Any, root: Any) -> list[Issue] | None:
        """Issues of an element validated against a (datatype or extension) profile;
        None when the profile is unknown."""
        profile = self.registry.compiled(url)
        if profile is None:
            return None
        issues: list[Issue] = []
        if self._depth > 20:
            return issues
        self._depth += 1
        try:
            run = _Run(self, profile, resource, issues)
            value = occ.value
            rt = value.get("resourceType") if type(value) is dict else None
            if rt is not None and profile.type not in (rt, "Resource", "DomainResource"):
                issues.append(
                    Issue(
                        "error",
                        "invalid",
                        f"the profile {url} is for {profile.type}, not {rt}",
                        (occ.expr,),
                    )
                )
                return issues
            run.element(profile.root, occ, resource, root)
        finally:
            self._depth -= 1
        return issues

    def extensions(self, resource: dict[str, Any], expr: str) -> list[Issue]:
        """Every extension (anywhere in the resource) whose definition the registry
        knows: used in a context its definition allows, and valid against it. One it
        does not know is accepted, or an error, as ``options.unknown_extensions`` says
        (:func:`~fhir_server.validation.options.extension_allowed`)."""
        issues: list[Issue] = []
        rt = resource.get("resourceType")
        if isinstance(rt, str) and rt in definitions.resource_types():
            holder = _Holder(rt, rt, rt, None)
            td = definitions.type_definition(rt)
            self._extensions(resource, td, rt, holder, expr, resource, resource, issues)
        return issues

    def _extensions(
        self,
        obj: dict[str, Any],
        td: definitions.TypeDef,
        path: str,
        holder: _Holder,
        expr: str,
        resource: Any,
        root: Any,
        issues: list[Issue],
    ) -> None:
        kids = td.children.get(path)
        if kids is None:
            return
        for key, value in obj.items():
            if key in ("extension", "modifierExtension"):
                if type(value) is list:
                    self._extension_list(
                        key, value, holder, f"{expr}.{key}", resource, root, issues
                    )
                continue
            name = key[1:] if key[:1] == "_" else key
            child = kids.get(name)
            if child is None:
                continue
            where = f"{expr}.{name}"
            literal = f"{holder.literal}.{child.element.name}"
            items = value if type(value) is list else [value]
            for i, item in enumerate(items):
                if type(item) is not dict:
                    continue
                at = f"{where}[{i}]" if type(value) is list else where
                if child.kind == PRIMITIVE:
                    if key[:1] != "_":
                        continue
                    code = child.type_code
                    inner = _Holder(literal, code, code, None, child.element.path)
                    ptd = definitions.type_definition(code)
                    self._extensions(item, ptd, code, inner, at, resource, root, issues)
                elif child.kind == RESOURCE:
                    rt = item.get("resourceType")
                    if not isinstance(rt, str) or rt not in definitions.resource_types():
                        continue
                    in_container = child.element.name == "contained"
                    if in_container and not self.options.validate_contained:
                        continue  # contained resources are opaque
                    nested_root = root if in_container else item
                    inner = _Holder(rt, rt, rt, None)
                    rtd = definitions.type_definition(rt)
                    self._extensions(item, rtd, rt, inner, at, item, nested_root, issues)
                elif child.kind == BACKBONE:
                    inner = _Holder(
                        literal, child.content_path, "BackboneElement", None, child.element.path
                    )
                    self._extensions(
                        item, td, child.content_path, inner, at, resource, root, issues
                    )
                else:
                    code = child.type_code
                    url = item.get("url") if code == "Extension" else None
                    inner = _Holder(
                        literal,
                        code,
                        code,
                        url if isinstance(url, str) else None,
                        child.element.path,
                    )
                    ctd = definitions.type_definition(code)
                    self._extensions(item, ctd, code, inner, at, resource, root, issues)

    def _extension_list(
        self,
        key: str,
        items: list[Any],
        holder: _Holder,
        where: str,
        resource: Any,
        root: Any,
        issues: list[Issue],
        in_unknown: bool = False,
    ) -> None:
        for i, ext in enumerate(items):
            if type(ext) is not dict:
                continue
            url = ext.get("url")
            at = f"{where}[{i}]"
            sd = self.registry.get(url) if isinstance(url, str) else None
            if sd is None:
                if (
                    isinstance(url, str)
                    # a sub-extension of an unknown complex extension: its relative url
                    # names a part of that (unknown) definition
                    and not (in_unknown and ":" not in url)
                    and not extension_allowed(url, self.options)
                ):
                    issues.append(
                        Issue(
                            "error",
                            "structure",
                            f"the extension {url} is unknown (its definition could not be "
                            "found), so it is not allowed here",
                            (at,),
                        )
                    )
                # an unknown (complex) extension: its own extensions may be known
                nested = ext.get("extension")
                if type(nested) is list:
                    inner = _Holder(f"{holder.literal}.extension", "Extension", "Extension", url)
                    self._extension_list(
                        "extension", nested, inner, f"{at}.extension", resource, root, issues, True
                    )
                continue
            assert isinstance(url, str)
            problem = _context_problem(sd, holder)
            if problem is not None:
                issues.append(
                    Issue(
                        "error",
                        "structure",
                        f"the extension {url} is not allowed here ({holder.literal}): {problem}",
                        (at,),
                    )
                )
            compiled = self.registry.compiled(url)
            modifier = compiled is not None and compiled.root.is_modifier
            if compiled is not None and modifier != (key == "modifierExtension"):
                # extensibility.html: an extension whose definition is a modifier is a
                # modifierExtension, and only such an extension is
                what = "a modifier extension" if modifier else "not a modifier extension"
                issues.append(
                    Issue(
                        "error",
                        "structure",
                        f"the extension {url} is {what} (isModifier of its definition), so it "
                        f"cannot be used as {'an extension' if modifier else 'a modifierExtension'}",
                        (at,),
                    )
                )
            found = self.conforms(Occ(ext, None, "Extension", at, key), url, resource, root)
            if found:
                issues.extend(found)

    def codes(self, url: str) -> Codes | None:
        if url not in self._codes:
            found = self.lookup(url)
            self._codes[url] = None if found is None else frozenset(found)
        return self._codes[url]


class _Run:
    """One validation of an instance against one profile."""

    def __init__(
        self,
        v: ProfileValidator,
        profile: Profile,
        resource: Any,
        issues: list[Issue],
    ) -> None:
        self.v = v
        self.profile = profile
        self.issues = issues

    def add(self, severity: Severity, code: IssueCode, message: str, expr: str) -> None:
        self.issues.append(Issue(severity, code, message, (expr,)))

    def where(self) -> str:
        return f" (from {self.profile.url})"

    # ------------------------------------------------------------------ elements

    def element(self, e: Elem, occ: Occ, resource: Any, root: Any) -> None:
        value = occ.value
        if e.fixed is not None:
            self.fixed(e, occ)
        if e.pattern is not None:
            self.pattern(e, occ)
        if e.binding is not None:
            self.binding(e, occ)
        for purpose, url in e.additional_bindings:
            label = f"value set of an additional binding ({purpose})"
            self.coded(_ADDITIONAL_STRENGTH[purpose], url, occ, label)
        if e.max_length is not None and type(value) is str and len(value) > e.max_length:
            self.add(
                "error",
                "too-long",
                f"value is longer than the maximum length {e.max_length}{self.where()}",
                occ.expr,
            )
        if e.min_value is not None or e.max_value is not None:
            self.bounds(e, occ)
        if e.constraints:
            self.constraints(e, occ, resource, root)
        if occ.type == "Reference" and type(value) is dict:
            self.reference(e, occ, resource, root)
        container = value if type(value) is dict else occ.ext if type(occ.ext) is dict else None
        if type(value) is dict and "resourceType" in value and occ.key:
            # a nested resource (contained, Bundle.entry.resource): its own definition
            # and meta.profile are validated by the caller of validate()
            resource = value
        kids = self.children_of(e)
        if kids:
            if container is not None:
                for c in kids:
                    self.child(c, container, occ.expr, resource, root)
            return
        self.type_profiles(e, occ, resource, root)

    def children_of(self, e: Elem) -> list[Elem]:
        if e.children:
            return e.children
        if e.content_reference:
            target = self.profile.by_id.get(e.content_reference)
            if target is not None:
                return target.children
        return []

    def type_profiles(self, e: Elem, occ: Occ, resource: Any, root: Any) -> None:
        """An element without children in the snapshot: validate it against the
        profiles of its type, if any (extension definitions, datatype profiles)."""
        profiles: list[str] = []
        for t in e.types:
            if t.code == occ.type or len(e.types) == 1:
                profiles += [p for p in t.profiles if not _is_base(p)]
        if not profiles and occ.type == "Extension" and type(occ.value) is dict:
            url = occ.value.get("url")
            if isinstance(url, str) and e.slice_name is None and self.v.registry.get(url):
                profiles = [url]
        if not profiles:
            return
        results: list[list[Issue]] = []
        unusable = False
        for p in profiles:
            found = self.v.conforms(occ, p, resource, root)
            if found is None:
                unusable = True
                continue
            if not has_errors(found):
                self.issues.extend(found)
                return
            results.append(found)
        if not results or (unusable and len(profiles) > 1):
            return  # a profile that cannot be used might have been the one
        if len(results) == 1:
            self.issues.extend(results[0])
            return
        self.add(
            "error",
            "structure",
            f"the value does not conform to any of the profiles {', '.join(profiles)}{self.where()}",
            occ.expr,
        )

    # ------------------------------------------------------------------ children

    def child(
        self, c: Elem, container: dict[str, Any], expr: str, resource: Any, root: Any
    ) -> None:
        occs = _occurrences(container, c, expr)
        if c.choice and c.types:
            allowed = c.type_codes()
            for o in occs:
                if o.type not in allowed:
                    self.add(
                        "error",
                        "structure",
                        f"type {o.type} is not allowed for {c.path} (allowed: "
                        f"{', '.join(sorted(allowed))}){self.where()}",
                        o.expr,
                    )
        self.cardinality(
            c, len(occs), f"{expr}.{c.name}" if not c.choice else f"{expr}.{c.name}[x]"
        )
        if c.slices or (c.slicing is not None and c.slicing.discriminators):
            self.sliced(c, occs, expr, resource, root)
            return
        for o in occs:
            self.element(c, o, resource, root)

    def cardinality(self, c: Elem, count: int, expr: str, slice_: bool = False) -> None:
        base = c.base
        check_min = c.min > 0 and (slice_ or base is None or c.min > base.min)
        check_max = c.max is not None and (
            slice_ or base is None or base.max is None or c.max < base.max
        )
        label = f"{c.path}:{c.slice_name}" if slice_ and c.slice_name else c.path
        if check_min and count < c.min:
            self.add(
                "error",
                "required",
                f"{label}: minimum required = {c.min}, but only found {count}{self.where()}",
                expr,
            )
        if check_max and c.max is not None and count > c.max:
            self.add(
                "error",
                "structure",
                f"{label}: max allowed = {c.max}, but found {count}{self.where()}",
                expr,
            )

    def sliced(self, c: Elem, occs: list[Occ], expr: str, resource: Any, root: Any) -> None:
        slicing = c.slicing or Slicing((), "open", False)
        matched: list[Elem | None] = []
        for o in occs:
            matched.append(self.match_slice(c, slicing, o, resource, root))
        last_index = -1
        seen_unmatched = False
        for o, s in zip(occs, matched, strict=True):
            if s is None:
                seen_unmatched = True
                if slicing.rules == "closed" and not (c.choice and o.type not in c.type_codes()):
                    self.add(
                        "error",
                        "structure",
                        f"this element does not match any known slice defined in the "
                        f"profile{self.where()} and slicing is closed",
                        o.expr,
                    )
                continue
            index = c.slices.index(s)
            if slicing.ordered and index < last_index:
                self.add(
                    "error",
                    "structure",
                    f"as specified by profile{self.where()}, elements of {c.path} are out "
                    f"of order: slice '{s.slice_name}' found after slice "
                    f"'{c.slices[last_index].slice_name}'",
                    o.expr,
                )
            last_index = max(last_index, index)
            if slicing.rules == "openAtEnd" and seen_unmatched:
                self.add(
                    "error",
                    "structure",
                    f"the slicing of {c.path} is openAtEnd, but slice '{s.slice_name}' "
                    f"follows an element that matches no slice{self.where()}",
                    o.expr,
                )
        for s in c.slices:
            count = sum(1 for m in matched if m is s)
            self.cardinality(s, count, f"{expr}.{c.name}", slice_=True)
        for o, s in zip(occs, matched, strict=True):
            self.element(s if s is not None else c, o, resource, root)

    def match_slice(
        self, c: Elem, slicing: Slicing, o: Occ, resource: Any, root: Any
    ) -> Elem | None:
        for s in c.slices:
            if not slicing.discriminators:
                issues = self.isolated(s, o, resource, root)
                if not has_errors(issues):
                    return s
                continue
            if all(
                self.discriminator(s, o, d, p, resource, root) for d, p in slicing.discriminators
            ):
                return s
        return None

    def isolated(self, e: Elem, o: Occ, resource: Any, root: Any) -> list[Issue]:
        issues: list[Issue] = []
        run = _Run(self.v, self.profile, resource, issues)
        run.element(e, o, resource, root)
        return issues

    # ------------------------------------------------------------------ discriminators

    def discriminator(
        self, s: Elem, o: Occ, dtype: str, dpath: str, resource: Any, root: Any
    ) -> bool:
        steps = _steps(dpath)
        values = self.instance_values(o, steps, root)
        candidates = self.definition_at(s, steps)
        if not candidates:
            return False
        target = candidates[0]
        if dtype == "exists":
            if target.max == 0:
                return not values
            if target.min >= 1:
                return bool(values)
            return True
        if dtype in ("value", "pattern"):
            fixed = [c.fixed[0] for c in candidates if c.fixed is not None]
            patterns = [c.pattern[0] for c in candidates if c.pattern is not None]
            if fixed or patterns:
                return any(
                    any(_equal(f, v.value) for f in fixed)
                    or any(_pattern_matches(p, v.value) for p in patterns)
                    for v in values
                )
            bound = next(
                (c.binding for c in candidates if c.binding and c.binding[0] == "required"), None
            )
            if bound is not None:
                codes = self.v.codes(bound[1])
                return codes is not None and any(_coded_in(v, codes) for v in values)
            return True  # the slice does not constrain this discriminator
        if dtype == "type":
            allowed = target.type_codes()
            return bool(values) and all(v.type in allowed for v in values)
        if dtype == "profile":
            resolved = bool(steps) and steps[-1] == ("resolve",)
            urls = [
                p for t in target.types for p in (t.target_profiles if resolved else t.profiles)
            ]
            if not urls or not values:
                return False
            for v in values:
                occ = Occ(v.value, v.ext, v.type, o.expr, o.key)
                if not any(
                    (found := self.v.conforms(occ, u, resource, root)) is not None
                    and not has_errors(found)
                    for u in urls
                ):
                    return False
            return True
        return False

    def instance_values(self, o: Occ, steps: list[tuple[str, ...]], root: Any) -> list[It]:
        items: list[It] = [It(o.value, o.ext, o.type)]
        for step in steps:
            kind = step[0]
            if kind == "this":
                continue
            if kind == "name":
                out: list[It] = []
                for it in items:
                    out.extend(navigate_safe(it, step[1]))
                items = out
            elif kind == "extension":
                items = [
                    x
                    for it in items
                    for x in navigate_safe(it, "extension")
                    if type(x.value) is dict and x.value.get("url") == step[1]
                ]
            elif kind == "ofType":
                items = [it for it in items if it.type == step[1]]
            elif kind == "resolve":
                items = [r for it in items if (r := _resolve(it, root)) is not None]
            else:
                return []
        return items

    def definition_at(self, s: Elem, steps: list[tuple[str, ...]]) -> list[Elem]:
        """The elements of the slice's definition a discriminator path leads to: the
        element itself first, then its slices (a path through a sliced element, such
        as ``code.coding.code`` with ``coding`` sliced, reaches the fixed values set in
        those slices)."""
        current = [s]
        for step in steps:
            kind = step[0]
            if kind in ("this", "ofType"):
                continue
            if kind == "unsupported":
                return []
            nxt: list[Elem] = []
            for cur in current:
                nxt += self._step(cur, step)
            current = nxt
            if not current:
                return []
        return current

    def _step(self, cur: Elem, step: tuple[str, ...]) -> list[Elem]:
        kind = step[0]
        if kind == "resolve":
            root = self._profile_root([p for t in cur.types for p in t.target_profiles])
            return [root] if root is not None else []
        kids = self.children_of(cur)
        if not kids:
            root = self._profile_root([p for t in cur.types for p in t.profiles])
            if root is None:
                return []
            kids = root.children
        if kind == "name":
            found = next((k for k in kids if k.name == step[1]), None)
            return [] if found is None else [found, *found.slices]
        if kind == "extension":
            ext = next((k for k in kids if k.name == "extension"), None)
            if ext is None:
                return []
            for sl in ext.slices:
                if any(step[1] in t.profiles for t in sl.types) or self._fixed_url(sl) == step[1]:
                    return [sl]
            root = self._profile_root([step[1]])
            return [root] if root is not None else []
        return []

    def _fixed_url(self, sl: Elem) -> str | None:
        for k in sl.children:
            if k.name == "url" and k.fixed is not None:
                return str(k.fixed[0])
        return None

    def _profile_root(self, urls: Sequence[str]) -> Elem | None:
        for u in urls:
            if _is_base(u):
                continue
            prof = self.v.registry.compiled(u)
            if prof is not None:
                root: Elem = prof.root
                return root
        return None

    # ------------------------------------------------------------------ value checks

    def fixed(self, e: Elem, o: Occ) -> None:
        expected = e.fixed[0]
        if o.value is None:
            self.add(
                "error",
                "value",
                f"value is missing: fixed to {_show(expected)}{self.where()}",
                o.expr,
            )
            return
        if not _equal(expected, o.value):
            self.add(
                "error",
                "value",
                f"value {_show(o.value)} does not match the fixed value {_show(expected)}"
                f"{self.where()}",
                o.expr,
            )

    def pattern(self, e: Elem, o: Occ) -> None:
        expected = e.pattern[0]
        if o.value is None or not _pattern_matches(expected, o.value):
            self.add(
                "error",
                "value",
                f"value {_show(o.value)} does not match the pattern {_show(expected)}"
                f"{self.where()}",
                o.expr,
            )

    def bounds(self, e: Elem, o: Occ) -> None:
        v = o.value
        if v is None:
            return
        for bound, low in ((e.min_value, True), (e.max_value, False)):
            if bound is None:
                continue
            b = bound[0]
            try:
                if isinstance(b, dict) and isinstance(v, str) and o.type in _DATE_TYPES:
                    self.relative_bound(b, low, v, o)
                    continue
                if isinstance(b, dict) and isinstance(v, dict):  # Quantity
                    order = _quantity_order(v, b)
                    if order is None:
                        continue
                    ok = order >= 0 if low else order <= 0
                elif (
                    isinstance(b, int | Decimal)
                    and isinstance(v, int | Decimal)
                    and type(v) is not bool
                ):
                    ok = (
                        Decimal(str(v)) >= Decimal(str(b))
                        if low
                        else Decimal(str(v)) <= Decimal(str(b))
                    )
                elif isinstance(b, str) and isinstance(v, str):
                    ok = v >= b if low else v <= b
                else:
                    continue
            except ArithmeticError:
                continue
            if not ok:
                self.add(
                    "error",
                    "value",
                    f"value {_show(v)} is {'below the minimum' if low else 'above the maximum'} "
                    f"{_show(b)}{self.where()}",
                    o.expr,
                )

    def relative_bound(self, duration: dict[str, Any], low: bool, value: str, o: Occ) -> None:
        """minValue/maxValue as a Duration on a date, dateTime or instant: relative to
        now (ElementDefinition.minValue[x]'s comment: "the duration value is positive,
        and is either subtracted from or added to the current clock"): subtracted for
        a minimum, added for a maximum. A value of partial precision (a year, a month)
        fails only when all of it lies beyond the limit."""
        limit = _relative_limit(duration, low, _now())
        span = _date_span(value)
        if limit is None or span is None:
            return
        start, end = span
        if (end <= limit) if low else (start > limit):
            self.add(
                "error",
                "value",
                f"value {_show(value)} is {'before' if low else 'after'} "
                f"{limit.date().isoformat()}: the {'minimum' if low else 'maximum'} is "
                f"{_show(duration.get('value'))} {duration.get('code') or duration.get('unit')} "
                f"{'before' if low else 'after'} now{self.where()}",
                o.expr,
            )

    def binding(self, e: Elem, o: Occ) -> None:
        assert e.binding is not None
        strength, url = e.binding
        if strength not in ("required", "extensible"):
            return
        base = e.base
        if (
            strength == "required"
            and base is not None
            and base.binding_strength == "required"
            and base.binding_value_set == url
        ):
            return  # checked by the structure validator
        self.coded(strength, url, o)

    def coded(self, strength: str, url: str, o: Occ, label: str = "") -> None:
        """A coded value is in the value set of a required or extensible binding
        (``label`` names the binding in messages: "required value set" by default)."""
        label = label or f"{strength} value set"
        codes = self.v.codes(url)
        if codes is None:
            return
        value, t = o.value, o.type
        severity: Severity = "error" if strength == "required" else "warning"
        if t in _CODED or (
            type(value) is str and t not in ("Coding", "CodeableConcept", "Quantity")
        ):
            if type(value) is not str:
                return
            if not any(c == value for _, c in codes):
                self.add(
                    severity,
                    "code-invalid",
                    f"the value '{value}' is not in the {label} {url}{self.where()}",
                    o.expr,
                )
            return
        if type(value) is not dict:
            return
        if t == "Coding" or t == "Quantity":
            system, code = value.get("system"), value.get("code")
            if t == "Quantity" and code is None:
                return
            if (system, code) not in codes:
                self.add(
                    severity,
                    "code-invalid",
                    f"the code {system}#{code} is not in the {label} {url}{self.where()}",
                    o.expr,
                )
            return
        if t == "CodeableConcept":
            codings = [c for c in value.get("coding") or () if type(c) is dict]
            if not codings:
                if strength == "required":
                    self.add(
                        "error",
                        "code-invalid",
                        f"no code provided, and a code from the {label} {url} is "
                        f"needed{self.where()}",
                        o.expr,
                    )
                return
            if not any((c.get("system"), c.get("code")) in codes for c in codings):
                shown = ", ".join(f"{c.get('system')}#{c.get('code')}" for c in codings)
                self.add(
                    severity,
                    "code-invalid",
                    f"none of the codes ({shown}) is in the {label} {url}{self.where()}",
                    o.expr,
                )

    def constraints(self, e: Elem, o: Occ, resource: Any, root: Any) -> None:
        context = It(o.value, o.ext, o.type)
        res_it = (
            It(resource, None, str(resource.get("resourceType")))
            if type(resource) is dict
            else context
        )
        root_it = It(root, None, str(root.get("resourceType"))) if type(root) is dict else res_it
        for inv in e.constraints:
            if inv.skip_reason is not None:
                continue
            ok = invariants.evaluate_invariant(inv, context, res_it, root_it, self.v.lookup)
            if ok is True:
                continue
            if ok is False:
                self.issues.append(invariants.failure_issue(inv, o.expr, self.profile.url))
            else:
                self.issues.append(invariants.error_issue(inv, o.expr, ok))

    def reference(self, e: Elem, o: Occ, resource: Any, root: Any) -> None:
        t = next((t for t in e.types if t.code == "Reference"), None)
        if t is None or not t.target_profiles:
            return
        targets = [p for p in t.target_profiles if not _is_base(p)]
        allowed = {self.v.registry.type_of(p) for p in t.target_profiles}
        if None in allowed or "Resource" in allowed:
            return
        ref = o.value.get("reference")
        if not isinstance(ref, str):
            return
        target_type: str | None = None
        target: Any = None
        if ref.startswith("#"):
            target = _contained(root, ref[1:])
        else:
            target = _bundle_entry(root, ref)
            m = _REF_TYPE.search(ref)
            if m is not None:
                target_type = m.group(1)
        if isinstance(target, dict) and isinstance(target.get("resourceType"), str):
            target_type = target["resourceType"]
        if target_type is None:
            return
        if target_type not in allowed:
            self.add(
                "error",
                "structure",
                f"the reference to a {target_type} is not allowed here: the profile allows "
                f"{', '.join(sorted(a for a in allowed if a))}{self.where()}",
                f"{o.expr}.reference",
            )
            return
        if target is not None and targets:
            occ = Occ(target, None, str(target_type), o.expr, "reference")
            results = [self.v.conforms(occ, p, target, root) for p in targets]
            known = [r for r in results if r is not None]
            if known and all(has_errors(r) for r in known):
                self.issues.extend(known[0])


@dataclass(frozen=True, slots=True)
class _Holder:
    """The element an extension is attached to: its path in the resource
    (``Patient.name``), its path in the definitions (``HumanName``,
    ``Questionnaire.item``), its type, and its url when it is itself an extension."""

    literal: str
    type_path: str
    type: str
    url: str | None
    element_path: str = ""  # the ElementDefinition path (``HumanName.family``)


def _context_problem(sd: dict[str, Any], holder: _Holder) -> str | None:
    """Why an extension may not be used on this element (None: it may)."""
    contexts = [c for c in sd.get("context") or () if isinstance(c, dict)]
    if not contexts:
        return None
    allowed: list[str] = []
    for ctx in contexts:
        kind, expression = ctx.get("type"), ctx.get("expression")
        if not isinstance(expression, str):
            continue
        allowed.append(expression)
        if kind == "fhirpath":
            return None  # not evaluated
        if kind == "extension":
            if holder.url is not None and expression.split("|", 1)[0] == holder.url:
                return None
            continue
        if expression in ("Element", "Base", holder.literal, holder.type_path, holder.element_path):
            return None
        if expression.split(".", 1)[0] not in definitions.type_names():
            return None  # not an R4 type (CanonicalResource ...): cannot be judged here
        if "." not in expression:
            if expression == "BackboneElement" and holder.type == "BackboneElement":
                return None
            if holder.type in definitions.type_names() and expression in _ancestors(holder.type):
                return None
    return "its context of use is " + ", ".join(allowed)


@cache
def _ancestors(type_name: str) -> frozenset[str]:
    names = {type_name}
    cur: str | None = type_name
    while cur is not None and cur in definitions.type_names():
        cur = definitions.type_definition(cur).base
        if cur:
            names.add(cur)
    return frozenset(names)


_REF_TYPE: Final = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(?:/_history/[^/]+)?$")


def _is_base(url: str) -> bool:
    if not url.startswith(_SD):
        return False
    return url[len(_SD) :].split("|", 1)[0] in definitions.type_names()


def _coded_in(it: It, codes: Codes) -> bool:
    v = it.value
    if type(v) is str:
        return any(c == v for _, c in codes)
    if type(v) is dict:
        if "coding" in v:
            return any(
                (c.get("system"), c.get("code")) in codes
                for c in v.get("coding") or ()
                if type(c) is dict
            )
        return (v.get("system"), v.get("code")) in codes
    return False


def navigate_safe(it: It, name: str) -> list[It]:
    from fhir_server.validation.fastpath import Fallback

    try:
        return [x for x in navigate([it], name) if type(x) is It]
    except Fallback:
        return []


def _contained(root: Any, local_id: str) -> Any:
    if type(root) is not dict:
        return None
    for r in root.get("contained") or ():
        if type(r) is dict and r.get("id") == local_id:
            return r
    return None


def _bundle_entry(root: Any, ref: str) -> Any:
    """The resource of the Bundle entry a reference points to: by fullUrl, or a
    relative ``Type/id`` matching the end of an absolute fullUrl."""
    if type(root) is not dict or root.get("resourceType") != "Bundle":
        return None
    relative = _REF_TYPE.search(ref) is not None and "://" not in ref
    for entry in root.get("entry") or ():
        if type(entry) is not dict:
            continue
        full = entry.get("fullUrl")
        if not isinstance(full, str):
            continue
        if full == ref or (relative and full.endswith("/" + ref)):
            r = entry.get("resource")
            return r if type(r) is dict else None
    return None


def _resolve(it: It, root: Any) -> It | None:
    v = it.value
    ref = v.get("reference") if type(v) is dict else v if type(v) is str else None
    if not isinstance(ref, str):
        return None
    if ref.startswith("#"):
        target = _contained(root, ref[1:])
        if type(target) is dict:
            return It(target, None, str(target.get("resourceType")))
        return None
    if type(root) is dict and root.get("resourceType") == "Bundle":
        for entry in root.get("entry") or ():
            if type(entry) is dict and entry.get("fullUrl") == ref:
                r = entry.get("resource")
                if type(r) is dict:
                    return It(r, None, str(r.get("resourceType")))
    m = _REF_TYPE.search(ref)
    if m is not None and m.group(1) in definitions.resource_types():
        return It({"resourceType": m.group(1)}, None, m.group(1))
    return None


_STEP: Final = re.compile(
    r"\s*(?:(\$this)|(resolve)\(\)|extension\(\s*'([^']*)'\s*\)|ofType\(\s*([A-Za-z]+)\s*\)|([A-Za-z][A-Za-z0-9_]*)(?:\[x\])?)\s*"
)


def _steps(path: str) -> list[tuple[str, ...]]:
    """A discriminator path as steps: ("this",), ("name", n), ("extension", url),
    ("ofType", T), ("resolve",)."""
    steps: list[tuple[str, ...]] = []
    pos = 0
    while pos < len(path):
        m = _STEP.match(path, pos)
        if m is None or m.end() == pos:
            return [("unsupported", path)]
        if m.group(1):
            steps.append(("this",))
        elif m.group(2):
            steps.append(("resolve",))
        elif m.group(3) is not None:
            steps.append(("extension", m.group(3)))
        elif m.group(4):
            steps.append(("ofType", m.group(4)))
        else:
            steps.append(("name", m.group(5)))
        pos = m.end()
        if pos < len(path):
            if path[pos] != ".":
                return [("unsupported", path)]
            pos += 1
    return steps


_DATE_TYPES: Final = frozenset({"date", "dateTime", "instant"})
# UCUM codes of time units (a Duration's code) as (months, seconds)
_TIME_UNITS: Final[dict[str, tuple[int, int]]] = {
    "a": (12, 0),
    "mo": (1, 0),
    "wk": (0, 7 * 86400),
    "d": (0, 86400),
    "h": (0, 3600),
    "min": (0, 60),
    "s": (0, 1),
}
_DATE_VALUE: Final = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?"
    r"(Z|[+-]\d{2}:\d{2})?)?)?)?",
    re.ASCII,
)


def _now() -> datetime:
    """The current time (UTC, naive) relative bounds are measured from."""
    return datetime.now(UTC).replace(tzinfo=None)


def _add_months(when: datetime, months: int) -> datetime:
    year, month = divmod(when.month - 1 + months, 12)
    year += when.year
    day = min(when.day, calendar.monthrange(year, month + 1)[1])
    return when.replace(year=year, month=month + 1, day=day)


def _relative_limit(duration: dict[str, Any], low: bool, now: datetime) -> datetime | None:
    """now - duration (a minimum) or now + duration (a maximum); None when the
    duration is not a time quantity in UCUM."""
    value, code = duration.get("value"), duration.get("code") or duration.get("unit")
    unit = _TIME_UNITS.get(code) if isinstance(code, str) else None
    if unit is None or isinstance(value, bool) or not isinstance(value, int | Decimal | float):
        return None
    amount = Decimal(str(value))
    sign = -1 if low else 1
    months, seconds = unit
    try:
        if months and amount == amount.to_integral_value():
            return _add_months(now, sign * months * int(amount))
        if months:  # a fraction of a year or month: in days, as UCUM defines them
            seconds = 31557600 if months == 12 else 2629800
        return now + timedelta(seconds=sign * float(amount * seconds))
    except (OverflowError, ValueError):
        return None


def _date_span(text: str) -> tuple[datetime, datetime] | None:
    """The interval [start, end) a date, dateTime or instant of any precision covers
    (UTC, naive; a value without a time zone is taken as UTC)."""
    m = _DATE_VALUE.fullmatch(text)
    if m is None:
        return None
    year, month, day, hour, minute, second, zone = m.groups()
    try:
        if month is None:
            start = datetime(int(year), 1, 1)
            return start, _add_months(start, 12)
        if day is None:
            start = datetime(int(year), int(month), 1)
            return start, _add_months(start, 1)
        start = datetime(int(year), int(month), int(day))
        if hour is None:
            return start, start + timedelta(days=1)
        start = start.replace(hour=int(hour), minute=int(minute), second=int(second or 0))
        if zone and zone != "Z":
            offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
            start = start - offset if zone[0] == "+" else start + offset
        return start, start + timedelta(seconds=1)
    except (OverflowError, ValueError):
        return None


def _quantity_order(value: dict[str, Any], bound: dict[str, Any]) -> int | None:
    """-1, 0, 1 comparing a Quantity with a minValue/maxValue Quantity: in the same
    unit, or in UCUM units converted to each other (:mod:`.ucum`); None when they
    cannot be compared."""
    bv, vv = bound.get("value"), value.get("value")
    if bv is None or vv is None:
        return None
    v, b = Decimal(str(vv)), Decimal(str(bv))
    if bound.get("code") == value.get("code"):
        return (v > b) - (v < b)
    codes = (value.get("code"), bound.get("code"))
    if value.get("system") == bound.get("system") == ucum.UCUM and all(
        isinstance(c, str) for c in codes
    ):
        try:
            return ucum.compare(v, str(codes[0]), b, str(codes[1]))
        except ValueError:  # a unit not known here, or of another dimension
            return None
    return None


def iter_nested_resources(resource: Any, expr: str) -> Iterator[tuple[dict[str, Any], str]]:
    """Every resource nested in a resource (contained, Bundle entries, Parameters
    resources ...) with its location, depth first."""
    if type(resource) is not dict:
        return
    rt = resource.get("resourceType")
    if not isinstance(rt, str) or rt not in definitions.resource_types():
        return
    yield from _nested(resource, definitions.type_definition(rt), rt, expr)


def _nested(
    obj: dict[str, Any], td: definitions.TypeDef, path: str, expr: str
) -> Iterator[tuple[dict[str, Any], str]]:
    for _, child, item, where in complex_items(obj, td, path, expr):
        if child.kind == RESOURCE:
            rt = item.get("resourceType")
            if isinstance(rt, str) and rt in definitions.resource_types():
                yield item, where
                yield from _nested(item, definitions.type_definition(rt), rt, where)
        elif child.kind == BACKBONE:
            yield from _nested(item, td, child.content_path, where)
        elif child.type_code not in ("Extension", "Reference", "Meta", "Narrative", "Coding"):
            ctd = definitions.type_definition(child.type_code)
            yield from _nested(item, ctd, child.type_code, where)
