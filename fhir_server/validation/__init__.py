"""Validation of resources against the FHIR R4 base definitions.

:func:`validate_resource` checks structure, cardinality, primitive formats, required
bindings and references (see :mod:`fhir_server.validation.structure`).
"""

from __future__ import annotations

from fhir_server.validation.structure import validate_resource

__all__ = ["validate_resource"]
