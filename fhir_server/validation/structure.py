"""Validation of a parsed JSON resource against the R4 base StructureDefinitions.

Driven entirely by the generated element tables (:mod:`fhir_server.definitions`): for
every JSON object the walker looks each property up in the precomputed children map
of its element path, so the cost is one dict lookup per property plus the checks of
its value. No FHIRPath is evaluated here; the FHIRPath invariants of the
definitions are left to a separate module, except for the few structural ones that
are cheap to check directly (ext-1, dom-2, dom-4, dom-5, ref-1 and ele-1's "no empty
elements"). A ``Coding.display`` is checked against the display of an R4 code
system (:mod:`.displays`). ``Attachment.size``, when given with ``data``, is the size
of the decoded data; a ``urn:uuid:`` in a uri/url/canonical holds a well-formed UUID.

Required bindings
-----------------
* ``code`` (and any other bound primitive): the value must be a code of the
  expansion.
* ``Coding``: its (system, code) must be in the expansion.
* ``CodeableConcept``: R4 requires the concept to be "from the specified value set";
  for a CodeableConcept that means at least one of its codings must be a
  (system, code) of the value set -- the other codings are translations and are not
  checked against it. Text alone does not satisfy a required binding (the binding
  strength definitions allow text instead of a code only for *extensible* bindings),
  so a CodeableConcept with no coding at all is reported too.
* Value sets that cannot be expanded locally (external code systems: BCP-13 mime
  types, ISO 4217 currencies, UCUM, LOINC answer lists) are not checked.

References
----------
``Reference.reference`` must be ``#id`` (naming a contained resource of the
resource), ``Type/id`` or ``Type/id/_history/vid``, an absolute ``http(s)`` URL, a
``urn:uuid:`` or ``urn:oid:`` URI, or a conditional ``Type?query`` (resolved by
transaction processing). When the type can be read from the reference it must be a
known resource type and, if the element restricts its targets, one of them. A
``urn:uuid:``/``urn:oid:`` that is not well formed is a warning, not an error:
``Reference.reference`` is a string (unlike a uri element, where a ``urn:uuid:`` must
hold a UUID), and such a reference merely cannot resolve.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Final

from fhir_server import definitions
from fhir_server.definitions import BACKBONE, PRIMITIVE, RESOURCE, Child, TypeDef
from fhir_server.errors import Issue, IssueCode
from fhir_server.validation import primitives
from fhir_server.validation.displays import check_display, is_english
from fhir_server.validation.options import DEFAULT, ValidationOptions
from fhir_server.validation.references import check_document

_ID: Final = r"[A-Za-z0-9\-\.]{1,64}"
_RELATIVE_REF: Final = re.compile(rf"([A-Z][A-Za-z]+)/{_ID}(?:/_history/{_ID})?", re.ASCII)
_ABSOLUTE_REF: Final = re.compile(
    rf"https?://[^\s/]+(?:/[^\s/]*)*?/([A-Z][A-Za-z]+)/{_ID}(?:/_history/{_ID})?", re.ASCII
)
_URL: Final = re.compile(r"https?://\S+", re.ASCII)
_CONDITIONAL_REF: Final = re.compile(r"([A-Z][A-Za-z]+)\?\S*", re.ASCII)
_UUID: Final = re.compile(
    r"urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_OID: Final = re.compile(r"urn:oid:[0-2](?:\.(?:0|[1-9][0-9]*))+")

_MAX_DEPTH: Final = 200
_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")  # has a scheme: http:, urn:...


class _TooDeep(Exception):
    pass


class _Walker:
    """State of one validate_resource call."""

    __slots__ = ("checkers", "depth", "english", "issues", "options")

    def __init__(self, options: ValidationOptions = DEFAULT) -> None:
        self.issues: list[Issue] = []
        self.depth = 0
        self.options = options
        # whether the resource being walked is in English (or says no language):
        # displays are checked only then (.displays)
        self.english = True
        # the primitive checkers, per type code: the plain ones, or (only when some
        # option adds checks to primitives) ones with the policy checks
        self.checkers = _checkers if not options.checks_primitives else _policy_checkers(options)

    def err(self, code: IssueCode, message: str, expression: str) -> None:
        self.issues.append(Issue("error", code, message, (expression,)))

    def checker(self, type_code: str) -> primitives.Checker:
        if self.checkers is _checkers:
            return _checker(type_code)
        check = self.checkers[type_code] = primitives.policy_checker(type_code, self.options)
        return check

    # ------------------------------------------------------------------ resources

    def resource(
        self,
        res: Any,
        expr: str | None,
        *,
        expected_type: str | None = None,
        contained: bool = False,
        container_ids: frozenset[str] | None = None,
    ) -> None:
        where = expr or "Resource"
        if not isinstance(res, dict):
            self.err("structure", f"a resource must be a JSON object, not {_kind(res)}", where)
            return
        rt = res.get("resourceType")
        if rt is None:
            self.err("required", "the resource has no resourceType", where)
            return
        if not isinstance(rt, str) or rt not in definitions.resource_types():
            if isinstance(rt, str) and rt in definitions.type_names():
                message = f"'{rt}' is not a concrete resource type"
            else:
                message = f"unknown resourceType {_show(rt)}"
            self.err("structure", message, f"{where}.resourceType")
            return
        if expected_type is not None and rt != expected_type:
            self.err(
                "invalid",
                f"expected a {expected_type} resource, found resourceType '{rt}'",
                expr or rt,
            )
            return
        expr = expr or rt
        if contained and not self.options.validate_contained:
            self.contained_rules(res, expr)  # the container's rules (dom-2/4/5) only
            return
        td = definitions.type_definition(rt)
        ids = container_ids if contained else _contained_ids(res.get("contained"))
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise _TooDeep
        english = self.english
        language = res.get("language")
        if type(language) is str:
            self.english = is_english(language)
        self.obj(res, td, rt, expr, ids, is_resource=True)
        self.english = english
        self.depth -= 1
        if contained:
            self.contained_rules(res, expr)
        if rt == "Bundle":
            self.bundle_rules(res, expr)

    def bundle_rules(self, bundle: dict[str, Any], expr: str) -> None:
        """Bundle rules the reference validator applies beyond the invariants: a link
        relation occurs once (bundle.html#links), entry.fullUrl is an absolute URL
        or a urn:uuid:/urn:oid: (Bundle.entry.fullUrl's definition), and a document
        includes what its Composition refers to (:func:`.references.check_document`)."""
        links = bundle.get("link")
        if isinstance(links, list):
            seen: set[str] = set()
            for i, link in enumerate(links):
                relation = link.get("relation") if isinstance(link, dict) else None
                if isinstance(relation, str):
                    if relation in seen:
                        self.err(
                            "invalid",
                            f"The link relation '{relation}' can only occur once",
                            f"{expr}.link[{i}]",
                        )
                    seen.add(relation)
        entries = bundle.get("entry")
        if isinstance(entries, list):
            for i, entry in enumerate(entries):
                full_url = entry.get("fullUrl") if isinstance(entry, dict) else None
                if isinstance(full_url, str) and full_url and not _ABSOLUTE.match(full_url):
                    self.err(
                        "invalid",
                        f"The fullUrl must be an absolute URL or a urn:uuid:/urn:oid: (not"
                        f" '{full_url}')",
                        f"{expr}.entry[{i}].fullUrl",
                    )
        if bundle.get("type") == "document":
            self.issues += check_document(bundle, expr)

    def contained_rules(self, res: dict[str, Any], expr: str) -> None:
        if "contained" in res:
            self.err(
                "invariant",
                "dom-2: a contained resource SHALL NOT contain nested resources",
                f"{expr}.contained",
            )
        meta = res.get("meta")
        if isinstance(meta, dict):
            for key in ("versionId", "lastUpdated"):
                if key in meta or "_" + key in meta:
                    self.err(
                        "invariant",
                        f"dom-4: a contained resource SHALL NOT have a meta.{key}",
                        f"{expr}.meta.{key}",
                    )
            if "security" in meta:
                self.err(
                    "invariant",
                    "dom-5: a contained resource SHALL NOT have a security label",
                    f"{expr}.meta.security",
                )

    # ------------------------------------------------------------------ objects

    def obj(
        self,
        obj: dict[str, Any],
        td: TypeDef,
        path: str,
        expr: str,
        ids: frozenset[str] | None,
        *,
        is_resource: bool = False,
        primitive_element: bool = False,
    ) -> None:
        children = td.children.get(path)
        if children is None:  # pragma: no cover - every complex path has id/extension
            self.err("structure", f"{path} cannot have content", expr)
            return
        if not obj:
            self.err("structure", "empty object: FHIR JSON does not allow {}", expr)
            return
        if len(obj) == 1 and "id" in obj and not primitive_element:
            self.err("structure", "an element SHALL have a value or children, not only an id", expr)
        choices: dict[str, str] | None = None
        for key, value in obj.items():
            child = children.get(key)
            if child is None:
                if key[:1] == "_":
                    child = children.get(key[1:])
                    if child is not None and child.kind == PRIMITIVE:
                        if child.element.choice:
                            choices = self.choice(choices, child, key[1:], obj, expr)
                        self.primitive_extension(obj, key, value, child, td, expr)
                        continue
                    if child is not None:
                        self.err(
                            "structure",
                            f"'{key}' is not allowed: only primitive elements have a '_' "
                            "sibling with their id/extensions",
                            f"{expr}.{key}",
                        )
                        continue
                elif key == "resourceType" and is_resource:
                    continue
                self.err("structure", f"unknown element '{key}' in {path}", f"{expr}.{key}")
                continue
            el = child.element
            if el.choice:
                choices = self.choice(choices, child, key, obj, expr)
            kind = child.kind
            if kind == PRIMITIVE:
                if child.array or value is None or type(value) is list:
                    self.primitive_property(obj, key, value, child, expr)
                else:  # the common case, inlined
                    problem = (self.checkers.get(child.type_code) or self.checker(child.type_code))(
                        value
                    )
                    if problem is not None:
                        self.err(problem[0], problem[1], f"{expr}.{key}")
                    elif el.binding_strength == "required":
                        self.bound_code(value, child, f"{expr}.{key}")
            elif child.array:
                if type(value) is not list:
                    self.err(
                        "structure",
                        f"'{key}' has cardinality {el.min}..{_max(el.max)} and must be a JSON "
                        f"array, not {_kind(value)}",
                        f"{expr}.{key}",
                    )
                elif not value:
                    self.err(
                        "structure", "empty array: FHIR JSON does not allow []", f"{expr}.{key}"
                    )
                else:
                    if el.max is not None and len(value) > el.max:
                        self.err(
                            "structure",
                            f"'{key}' allows at most {el.max} items, found {len(value)}",
                            f"{expr}.{key}",
                        )
                    for i, item in enumerate(value):
                        self.complex(item, child, td, f"{expr}.{key}[{i}]", ids, kind)
            elif type(value) is list:
                self.err(
                    "structure",
                    f"'{key}' has cardinality {el.min}..1 and must not be an array",
                    f"{expr}.{key}",
                )
            else:
                self.complex(value, child, td, f"{expr}.{key}", ids, kind)
        for el, names in td.required.get(path, ()):
            for name in names:
                if name in obj:
                    break
            else:
                shown = el.name + "[x]" if el.choice else el.name
                self.err(
                    "required",
                    f"missing required element '{shown}' (cardinality {el.min}..{_max(el.max)})",
                    f"{expr}.{shown}",
                )

    def choice(
        self, seen: dict[str, str] | None, child: Child, key: str, obj: dict[str, Any], expr: str
    ) -> dict[str, str]:
        if seen is None:
            seen = {}
        path = child.element.path
        first = seen.get(path)
        if first is None:
            seen[path] = key
        elif first != key:
            self.err(
                "structure",
                f"'{child.element.name}[x]' allows a single type, found both '{first}' and '{key}'",
                f"{expr}.{key}",
            )
        return seen

    def complex(
        self,
        value: Any,
        child: Child,
        td: TypeDef,
        expr: str,
        ids: frozenset[str] | None,
        kind: int,
    ) -> None:
        if type(value) is not dict:
            if kind == RESOURCE:
                self.resource(value, expr)
                return
            self.err(
                "structure",
                f"expected a JSON object for {child.type_code}, found {_kind(value)}",
                expr,
            )
            return
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise _TooDeep
        if kind == BACKBONE:
            self.obj(value, td, child.content_path, expr, ids)
        elif kind == RESOURCE:
            contained = child.element.name == "contained" and child.element.path.count(".") == 1
            self.resource(value, expr, contained=contained, container_ids=ids)
        else:
            code = child.type_code
            ctd = definitions.type_definition(code)
            self.obj(value, ctd, code, expr, ids)
            if code == "Reference":
                self.reference(value, child, expr, ids)
            elif code == "Attachment":
                self.attachment(value, expr)
            elif code == "Extension":
                self.extension(value, expr)
            elif code == "Coding":
                if child.element.binding_strength == "required":
                    self.coding(value, child, expr)
                if "display" in value and self.english:
                    problem = check_display(value, expr, self.options.wrong_displays)
                    if problem is not None:
                        self.issues.append(problem)
            elif code == "CodeableConcept" and child.element.binding_strength == "required":
                self.codeable_concept(value, child, expr)
        self.depth -= 1

    # ------------------------------------------------------------------ primitives

    def primitive_property(
        self, obj: dict[str, Any], key: str, value: Any, child: Child, expr: str
    ) -> None:
        el = child.element
        check = self.checkers.get(child.type_code) or self.checker(child.type_code)
        if child.array:
            if type(value) is not list:
                self.err(
                    "structure",
                    f"'{key}' has cardinality {el.min}..{_max(el.max)} and must be a JSON array, "
                    f"not {_kind(value)}",
                    f"{expr}.{key}",
                )
                return
            if not value:
                self.err("structure", "empty array: FHIR JSON does not allow []", f"{expr}.{key}")
                return
            ext = obj.get("_" + key)
            if ext is not None and (type(ext) is not list or len(ext) != len(value)):
                self.err(
                    "structure",
                    f"'_{key}' must be an array of the same length as '{key}' ({len(value)})",
                    f"{expr}.{key}",
                )
                ext = None
            if el.max is not None and len(value) > el.max:
                self.err(
                    "structure",
                    f"'{key}' allows at most {el.max} items, found {len(value)}",
                    f"{expr}.{key}",
                )
            for i, item in enumerate(value):
                if item is None:
                    if ext is None or ext[i] is None:
                        self.err(
                            "structure",
                            "null is only allowed in an array of primitives as a placeholder "
                            f"aligned with an id/extension in '_{key}'",
                            f"{expr}.{key}[{i}]",
                        )
                    continue
                problem = check(item)
                if problem is not None:
                    self.err(problem[0], problem[1], f"{expr}.{key}[{i}]")
                elif el.binding_strength == "required":
                    self.bound_code(item, child, f"{expr}.{key}[{i}]")
            return
        if type(value) is list:
            self.err(
                "structure",
                f"'{key}' has cardinality {el.min}..1 and must not be an array",
                f"{expr}.{key}",
            )
            return
        if value is None:
            self.err("structure", f"null is not allowed as the value of '{key}'", f"{expr}.{key}")
            return
        problem = check(value)
        if problem is not None:
            self.err(problem[0], problem[1], f"{expr}.{key}")
        elif el.binding_strength == "required":
            self.bound_code(value, child, f"{expr}.{key}")

    def primitive_extension(
        self, obj: dict[str, Any], key: str, value: Any, child: Child, td: TypeDef, expr: str
    ) -> None:
        """``_name``: the id/extensions of primitive element ``name``."""
        name = key[1:]
        ptd = definitions.type_definition(child.type_code)
        element_children = child.type_code  # the primitive type's id/extension
        base = obj.get(name)
        if child.array:
            if type(value) is not list:
                self.err(
                    "structure",
                    f"'{key}' must be a JSON array, not {_kind(value)}",
                    f"{expr}.{key}",
                )
                return
            if not value:
                self.err("structure", "empty array: FHIR JSON does not allow []", f"{expr}.{key}")
                return
            values = base if type(base) is list and len(base) == len(value) else None
            for i, item in enumerate(value):
                where = f"{expr}.{name}[{i}]"
                if item is None:
                    if base is None:
                        self.err(
                            "structure",
                            f"null in '{key}' without a value in '{name}' at the same index",
                            where,
                        )
                    continue
                if type(item) is not dict:
                    self.err(
                        "structure",
                        f"expected a JSON object in '{key}', found {_kind(item)}",
                        where,
                    )
                    continue
                has_value = values is not None and values[i] is not None
                self.element_of_primitive(item, ptd, element_children, where, has_value)
            return
        if type(value) is not dict:
            self.err(
                "structure", f"'{key}' must be a JSON object, not {_kind(value)}", f"{expr}.{key}"
            )
            return
        self.element_of_primitive(value, ptd, element_children, f"{expr}.{name}", base is not None)

    def element_of_primitive(
        self,
        item: dict[str, Any],
        ptd: TypeDef,
        path: str,
        where: str,
        has_value: bool,
    ) -> None:
        if "value" in item:
            self.err(
                "structure",
                "unknown element 'value': the value of a primitive is the property itself",
                f"{where}.value",
            )
            item = {k: v for k, v in item.items() if k != "value"}
            if not item:
                return
        if not item:
            self.err("structure", "empty object: FHIR JSON does not allow {}", where)
            return
        if not has_value and "extension" not in item:
            self.err(
                "structure",
                "a primitive element SHALL have a value or extensions, not only an id",
                where,
            )
        self.obj(item, ptd, path, where, None, primitive_element=True)

    # ------------------------------------------------------------------ bindings

    def bound_code(self, value: Any, child: Child, expr: str) -> None:
        url = child.element.binding_value_set
        if url is None:
            return
        vs = definitions.value_set(url)
        if vs is not None and value not in vs.codes:
            self.err(
                "code-invalid",
                f"value '{_short(str(value))}' is not in the required value set {url}",
                expr,
            )

    def coding(self, value: dict[str, Any], child: Child, expr: str) -> None:
        url = child.element.binding_value_set
        vs = definitions.value_set(url) if url else None
        if vs is None:
            return
        system, code = value.get("system"), value.get("code")
        if not (type(system) is str and type(code) is str and (system, code) in vs.pairs):
            self.err(
                "code-invalid",
                f"coding {_coding_text(system, code)} is not in the required value set {url}",
                expr,
            )

    def codeable_concept(self, value: dict[str, Any], child: Child, expr: str) -> None:
        url = child.element.binding_value_set
        vs = definitions.value_set(url) if url else None
        if vs is None:
            return
        codings = value.get("coding")
        if type(codings) is not list or not codings:
            self.err(
                "code-invalid",
                f"no coding from the required value set {url} (text alone does not satisfy "
                "a required binding)",
                expr,
            )
            return
        pairs = vs.pairs
        for c in codings:
            if type(c) is dict:
                system, code = c.get("system"), c.get("code")
                if type(system) is str and type(code) is str and (system, code) in pairs:
                    return
        shown = ", ".join(
            _coding_text(c.get("system"), c.get("code")) for c in codings if type(c) is dict
        )
        self.err(
            "code-invalid",
            f"none of the codings ({shown}) is in the required value set {url}",
            expr,
        )

    # ------------------------------------------------------------------ references, extensions

    def reference(
        self, value: dict[str, Any], child: Child, expr: str, ids: frozenset[str] | None
    ) -> None:
        ref = value.get("reference")
        if type(ref) is not str or not ref:
            return
        where = f"{expr}.reference"
        target: str | None = None
        if ref[0] == "#":
            if len(ref) > 1 and ids is not None and ref[1:] not in ids:
                self.err(
                    "invalid",
                    f"ref-1: local reference '{_short(ref)}' does not match the id of a "
                    "contained resource",
                    where,
                )
            return
        if ref.startswith("urn:"):
            if ref.startswith(("urn:uuid:", "urn:oid:")):
                # Reference.reference is a string, not a uri: a malformed urn:uuid:/urn:oid:
                # breaks no rule of its type, it just cannot identify (resolve to) anything
                uuid = ref.startswith("urn:uuid:")
                if (_UUID if uuid else _OID).fullmatch(ref) is None:
                    self.issues.append(
                        Issue(
                            "warning",
                            "value",
                            f"'{_short(ref)}' is not a well-formed "
                            + (
                                "urn:uuid: (a UUID is 8-4-4-4-12 hex digits)"
                                if uuid
                                else "urn:oid: (an OID is dot-separated numbers)"
                            )
                            + ", so the reference cannot resolve",
                            (where,),
                        )
                    )
            else:
                self.err(
                    "value",
                    f"'{_short(ref)}' is not a valid reference: a URN reference must be a "
                    "urn:uuid: or urn:oid:",
                    where,
                )
            return
        m = _RELATIVE_REF.fullmatch(ref) or _CONDITIONAL_REF.fullmatch(ref)
        if m is not None:
            target = m.group(1)
        elif ref.startswith(("http://", "https://")):
            if _URL.fullmatch(ref) is None:
                self.err("value", f"'{_short(ref)}' is not a valid reference URL", where)
                return
            am = _ABSOLUTE_REF.fullmatch(ref)
            if am is None or am.group(1) not in definitions.resource_types():
                return  # not a FHIR RESTful URL: nothing more to check
            target = am.group(1)
        else:
            self.err(
                "value",
                f"'{_short(ref)}' is not a valid reference: expected Type/id, an absolute "
                "URL, #id of a contained resource, urn:uuid: or urn:oid:",
                where,
            )
            return
        if target not in definitions.resource_types():
            self.err(
                "value", f"'{target}' in reference '{_short(ref)}' is not a resource type", where
            )
            return
        allowed = child.type.target_types if child.type is not None else None
        if allowed is not None and target not in allowed:
            self.err(
                "invalid",
                f"a reference to a {target} is not allowed here (allowed: "
                f"{', '.join(sorted(allowed))})",
                where,
            )

    def attachment(self, value: dict[str, Any], expr: str) -> None:
        """Attachment.size, when given with the data, is the size of the decoded data."""
        size, data = value.get("size"), value.get("data")
        if type(size) is not int or type(data) is not str:
            return
        actual = _decoded_size(data)
        if actual is not None and actual != size:
            self.err(
                "value",
                f"Stated Attachment Size {size} does not match actual attachment size {actual}",
                f"{expr}.size",
            )

    def extension(self, value: dict[str, Any], expr: str) -> None:
        has_extension = "extension" in value
        has_value = any(k.startswith(("value", "_value")) for k in value)
        if has_extension == has_value:
            self.err(
                "invariant",
                "ext-1: an extension must have either extensions or a value[x], not both"
                if has_value
                else "ext-1: an extension must have either extensions or a value[x]",
                expr,
            )


_checkers: dict[str, primitives.Checker] = {}


@lru_cache(maxsize=32)
def _policy_checkers(options: ValidationOptions) -> dict[str, primitives.Checker]:
    return {}


def _checker(type_code: str) -> primitives.Checker:
    check = _checkers[type_code] = primitives.checker(type_code)
    return check


def _decoded_size(data: str) -> int | None:
    """The number of bytes base64 text decodes to (None when it is not base64)."""
    text = "".join(data.split())
    if len(text) % 4:
        return None
    return len(text) // 4 * 3 - len(text) + len(text.rstrip("="))


def _contained_ids(contained: Any) -> frozenset[str]:
    if type(contained) is not list:
        return frozenset()
    return frozenset(r["id"] for r in contained if type(r) is dict and isinstance(r.get("id"), str))


def _max(value: int | None) -> str:
    return "*" if value is None else str(value)


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _show(value: Any) -> str:
    return f"'{value}'" if isinstance(value, str) else _kind(value)


def _coding_text(system: Any, code: Any) -> str:
    return f"{system if system is not None else '(no system)'}#{code if code is not None else '(no code)'}"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if value is True or value is False:
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float) or hasattr(value, "as_tuple"):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def validate_resource(
    resource: Any,
    *,
    expected_type: str | None = None,
    options: ValidationOptions = DEFAULT,
) -> list[Issue]:
    """Check a parsed JSON resource against the R4 base definitions.

    Returns the issues found (empty when the resource is structurally valid); every
    issue names the offending element with a FHIRPath-style expression. ``options``
    adds the policy checks of primitive values (:mod:`.options`).
    """
    walker = _Walker(options)
    try:
        walker.resource(resource, None, expected_type=expected_type)
    except (_TooDeep, RecursionError):
        walker.err(
            "too-costly",
            f"the resource is nested more than {_MAX_DEPTH} levels deep",
            _root_expression(resource),
        )
    return walker.issues


def _root_expression(resource: Any) -> str:
    if isinstance(resource, dict) and isinstance(resource.get("resourceType"), str):
        return str(resource["resourceType"])
    return "Resource"
