"""Validation of resources against the FHIR R4 base definitions.

:func:`validate_resource` checks structure, cardinality, primitive formats, required
bindings and references (see :mod:`fhir_server.validation.structure`).

:func:`validate` adds the FHIRPath invariants of the base definitions
(:mod:`.invariants`) and profiles (:mod:`.profile`, :mod:`.registry`);
:func:`validate_profiles` is the profile part alone, for the write path;
:func:`check_invariants` the invariant part alone; :class:`ValidationOptions` the
policies a caller may add beyond the specification (:mod:`.options`).
"""

from __future__ import annotations

from fhir_server.validation.invariants import check_invariants
from fhir_server.validation.options import ValidationOptions
from fhir_server.validation.registry import DEFINITION_TYPES, ProfileRegistry, default_registry
from fhir_server.validation.service import set_terminology, validate, validate_profiles
from fhir_server.validation.structure import validate_resource

__all__ = [
    "DEFINITION_TYPES",
    "ProfileRegistry",
    "ValidationOptions",
    "check_invariants",
    "default_registry",
    "set_terminology",
    "validate",
    "validate_profiles",
    "validate_resource",
]
