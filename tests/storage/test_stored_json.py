"""Stored resource content is read back without the duplicate-key check (content this
server wrote cannot have repeated keys), and otherwise exactly as :func:`jsonio.loads`
reads it: decimals keep their text."""

from __future__ import annotations

import pytest

from fhir_server import jsonio
from tests.search.support import load_examples


def test_stored_content_reads_as_loads_does() -> None:
    for resource in load_examples()[:300]:
        content = jsonio.dumps(resource)
        assert jsonio.loads_stored(content) == jsonio.loads(content)


def test_decimals_keep_their_text() -> None:
    content = jsonio.dumps(jsonio.loads(b'{"a": 1.50, "b": [1e3, -0.0], "c": 7}'))
    value = jsonio.loads_stored(content)
    assert isinstance(value["a"], jsonio.FhirDecimal) and value["a"].text == "1.50"
    assert [d.text for d in value["b"]] == ["1e3", "-0.0"] and value["c"] == 7
    assert jsonio.dumps(value) == content


@pytest.mark.parametrize("bad", [b"\xff{}", b"{", b'{"a": NaN}'])
def test_anything_else_fails_as_loads_does(bad: bytes) -> None:
    with pytest.raises(jsonio.JsonError):
        jsonio.loads_stored(bad)
