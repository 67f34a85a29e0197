"""Test-only helpers: locating the HL7 fhir-test-cases checkout and reading its XML.

The official FHIRPath and FHIRPath Patch suites are written in FHIR XML. The server
only speaks JSON, so :func:`resource_from_xml` converts the (small) XML resources
those suites use into FHIR JSON. It is deliberately minimal: element types come from
the R4 FHIRPath model that fhirpathpy ships and which elements repeat from the R4
definitions (fhir_server.definitions). An element that occurs more than once but is
not known to repeat fails loudly instead of being converted wrongly.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from fhirpathpy.models import models

from fhir_server import definitions
from fhir_server.jsonio import FhirDecimal

FHIR_NS = "http://hl7.org/fhir"
XHTML_NS = "http://www.w3.org/1999/xhtml"

_MODEL: dict[str, Any] = models["r4"]

_INTEGER_TYPES = frozenset({"integer", "positiveInt", "unsignedInt"})


def fhir_test_cases() -> Path:
    """The fhir-test-cases checkout; a missing checkout is a test failure, not a skip."""
    override = os.environ.get("FHIR_TEST_CASES")
    if override:
        root = Path(override)
    else:
        repo = Path(__file__).resolve().parents[2]
        root = repo.parent / "shared" / "conformance" / "fhir-test-cases"
    if not root.is_dir():
        raise AssertionError(
            f"HL7 fhir-test-cases not found at {root}: check it out beside the repository "
            "(../shared/conformance/fhir-test-cases) or set FHIR_TEST_CASES"
        )
    return root


def local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def namespace(tag: str) -> str:
    return tag[1:].split("}", 1)[0] if tag.startswith("{") else ""


def resource_from_xml(element: ET.Element) -> dict[str, Any]:
    """Convert one FHIR XML resource element to FHIR JSON."""
    resource_type = local_name(element.tag)
    out: dict[str, Any] = {"resourceType": resource_type}
    _fill_complex(out, element, resource_type)
    return out


def _element_type(path: str) -> str | None:
    path = _MODEL["pathsDefinedElsewhere"].get(path, path)
    found = _MODEL["path2Type"].get(path)
    if found is None:
        base = path.rsplit(".", 1)[-1]
        if base in ("extension", "modifierExtension"):
            return "Extension"
        if base == "id":
            return "System.String"
    return found  # type: ignore[no-any-return]


def _base_path(path: str) -> str:
    """The path a child's own children hang off (a type name or a backbone path)."""
    return str(_MODEL["pathsDefinedElsewhere"].get(path, path))


def _is_primitive(type_name: str) -> bool:
    return type_name.startswith("System.") or type_name[0].islower()


def _repeats(path: str) -> bool:
    """Whether the element at an ElementDefinition path is a JSON array."""
    try:
        typedef = definitions.type_definition(path.split(".", 1)[0])
    except KeyError:
        return False
    element = typedef.elements.get(path)
    return element is not None and element.is_array


def _fill_complex(out: dict[str, Any], element: ET.Element, path: str) -> None:
    if "id" in element.attrib:
        out["id"] = element.attrib["id"]
    if "url" in element.attrib:
        out["url"] = element.attrib["url"]
    counts: dict[str, int] = {}
    for child in element:
        if not isinstance(child.tag, str):
            continue
        name = local_name(child.tag)
        counts[name] = counts.get(name, 0) + 1
        child_path = f"{path}.{name}"
        repeats = _repeats(child_path)
        if counts[name] > 1 and not repeats:
            raise AssertionError(
                f"{child_path} occurs twice but the definitions say it does not repeat"
            )
        if namespace(child.tag) == XHTML_NS:
            out[name] = xhtml_text(child)
            continue
        value, extra = _convert_child(child, child_path)
        _put(out, name, value, extra, repeats)
    for name in counts:
        extras = out.get("_" + name)
        if isinstance(extras, list):
            extras.extend([None] * (len(out[name]) - len(extras)))


def _convert_child(child: ET.Element, path: str) -> tuple[Any, dict[str, Any] | None]:
    type_name = _element_type(path)
    if type_name is None:  # a backbone element: its children hang off its own path
        obj: dict[str, Any] = {}
        _fill_complex(obj, child, _base_path(path))
        return obj, None
    if type_name == "Resource":
        inner = [c for c in child if isinstance(c.tag, str)]
        return resource_from_xml(inner[0]), None
    if _is_primitive(type_name):
        return _convert_primitive(child, type_name)
    obj = {}
    _fill_complex(obj, child, type_name)
    return obj, None


def _convert_primitive(child: ET.Element, type_name: str) -> tuple[Any, dict[str, Any] | None]:
    raw = child.attrib.get("value")
    value: Any = None
    if raw is not None:
        value = _typed(raw, type_name)
    extra: dict[str, Any] = {}
    _fill_complex(extra, child, "Element")
    return value, extra or None


def _typed(raw: str, type_name: str) -> Any:
    if type_name == "boolean":
        return raw == "true"
    if type_name in _INTEGER_TYPES:
        return int(raw)
    if type_name == "decimal":
        return FhirDecimal(raw)
    return raw


def _put(
    out: dict[str, Any], name: str, value: Any, extra: dict[str, Any] | None, repeats: bool
) -> None:
    if not repeats:
        if value is not None:
            out[name] = value
        if extra is not None:
            out["_" + name] = extra
        return
    values: list[Any] = out.setdefault(name, [])
    values.append(value)
    if extra is not None or "_" + name in out:
        extras: list[Any] = out.setdefault("_" + name, [])
        extras.extend([None] * (len(values) - 1 - len(extras)))
        extras.append(extra)


def finish_primitive_lists(resource: Any) -> Any:
    """Drop all-null value lists left by primitives that only carry extensions."""
    if isinstance(resource, list):
        return [finish_primitive_lists(v) for v in resource]
    if not isinstance(resource, dict):
        return resource
    out: dict[str, Any] = {}
    for key, value in resource.items():
        if isinstance(value, list) and value and all(v is None for v in value):
            continue
        out[key] = finish_primitive_lists(value)
    return out


def xhtml_text(element: ET.Element) -> str:
    """Serialise an XHTML element (the narrative div) as FHIR JSON carries it."""
    return _xhtml(element, top=True)


def _xhtml(element: ET.Element, *, top: bool) -> str:
    name = local_name(element.tag)
    attrs = "".join(
        f' {local_name(k)}="{_escape(v, attr=True)}"' for k, v in element.attrib.items()
    )
    if top:
        attrs = f' xmlns="{XHTML_NS}"' + attrs
    inner = _escape(element.text or "", attr=False)
    for child in element:
        if isinstance(child.tag, str):
            inner += _xhtml(child, top=False)
        inner += _escape(child.tail or "", attr=False)
    if not inner:
        return f"<{name}{attrs}/>"
    return f"<{name}{attrs}>{inner}</{name}>"


def _escape(text: str, *, attr: bool) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if attr:
        text = text.replace('"', "&quot;")
    return text


def load_xml_resource(path: Path) -> dict[str, Any]:
    return finish_primitive_lists(resource_from_xml(ET.parse(path).getroot()))  # type: ignore[no-any-return]
