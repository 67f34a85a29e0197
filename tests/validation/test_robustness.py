"""The validator reports, never raises: random damage to real examples."""

from __future__ import annotations

import copy
import gzip
import random
from pathlib import Path
from typing import Any

from fhir_server import definitions, jsonio
from fhir_server.definitions import Child, ElementDef, ElementType
from fhir_server.validation import validate_resource
from fhir_server.validation.structure import _Walker

EXAMPLES = Path(__file__).resolve().parent.parent / "data" / "r4-examples.ndjson.gz"

JUNK: list[Any] = [
    None,
    [],
    {},
    "",
    "x",
    1,
    2**40,
    jsonio.FhirDecimal("1.5"),
    True,
    [None],
    {"id": "x"},
    {"extension": [{"url": "u"}]},
    {"resourceType": "Patient"},
    {"reference": ["x"]},
    {"coding": [{"system": ["x"], "code": {"a": 1}}]},
]


def _nodes(value: Any, out: list[tuple[Any, Any]], parent: Any = None, key: Any = None) -> None:
    out.append((parent, key))
    if isinstance(value, dict):
        for k, v in value.items():
            _nodes(v, out, value, k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _nodes(v, out, value, i)


def test_random_damage_never_raises() -> None:
    with gzip.open(EXAMPLES, "rb") as fh:
        small = [jsonio.loads(line) for line in fh if 10 < len(line) < 6000]
    rnd = random.Random(20240101)
    damaged = 0
    for _ in range(400):
        resource = copy.deepcopy(rnd.choice(small))
        nodes: list[tuple[Any, Any]] = []
        _nodes(resource, nodes)
        parent, key = rnd.choice(nodes[1:])
        if rnd.random() < 0.7:
            parent[key] = copy.deepcopy(rnd.choice(JUNK))
        elif isinstance(parent, dict):
            parent["_" + str(key)] = copy.deepcopy(rnd.choice(JUNK))
        issues = validate_resource(resource)
        damaged += bool(issues)
        assert all(i.expression for i in issues)
    assert damaged > 200  # most damage is detected


def _bound(type_code: str, url: str) -> Child:
    el = ElementDef(
        path="X.y",
        name="y",
        min=0,
        max=1,
        types=(ElementType(type_code),),
        choice=False,
        content_reference=None,
        binding_strength="required",
        binding_value_set=url,
        is_summary=False,
        is_modifier=False,
        constraints=(),
    )
    return Child("y", el, el.types[0], type_code, definitions.COMPLEX, "X.y")


def test_required_binding_on_coding() -> None:
    child = _bound("Coding", "http://hl7.org/fhir/ValueSet/administrative-gender")
    system = "http://hl7.org/fhir/administrative-gender"
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"system": system, "code": "male"}, []),
        ({"system": system, "code": "banana"}, ["code-invalid"]),
        ({"code": "male"}, ["code-invalid"]),
        ({"system": ["x"], "code": "male"}, ["code-invalid"]),
    ]
    for coding, codes in cases:
        walker = _Walker()
        walker.coding(coding, child, "X.y")
        assert [i.code for i in walker.issues] == codes, coding
        assert all(i.expression == ("X.y",) for i in walker.issues)
    walker = _Walker()
    walker.coding({"code": "x"}, _bound("Coding", "http://hl7.org/fhir/ValueSet/mimetypes"), "X.y")
    assert walker.issues == []
