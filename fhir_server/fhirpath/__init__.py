"""FHIRPath evaluation for search indexing, invariants and FHIRPath Patch.

A thin, cached layer over fhirpathpy (R4 model). Callers compile an expression once
and apply it to many resources. Functions fhirpathpy lacks are shimmed here.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

from fhirpathpy import compile as _compile
from fhirpathpy.models import models as _models

Compiled = Callable[..., list[Any]]

_R4 = _models["r4"]


@lru_cache(maxsize=4096)
def compile_expression(expression: str) -> Compiled:
    """Compile a FHIRPath expression against the R4 model (cached)."""
    return _compile(expression, model=_R4)  # type: ignore[no-any-return]


def evaluate(resource: Any, expression: str, env: dict[str, Any] | None = None) -> list[Any]:
    fn = compile_expression(expression)
    return fn(resource, env or {})
