"""``Coding.display`` against the display of its code in an R4 code system.

R4 defines ``Coding.display`` as "a representation of the meaning of the code in the
system, following the rules of the system" (datatypes.html#Coding). For the code
systems the R4 package defines in full (FHIR's own, HL7 v2 and v3 tables and the other
``terminology.hl7.org`` systems of R4, DICOM) the generated tables hold each concept's
display (:func:`fhir_server.definitions.code_system_displays`), and a Coding of one of
them with a ``display`` is checked:

* the display may differ from the code system's in letter case only (the
  specification's own examples write "low" for ``Low`` and "Restful Operation" for
  ``RESTful Operation``);
* a display that matches only once runs of white space are collapsed is reported as
  wrong white space; any other display is a wrong display;
* the tables hold the code systems' own (English) displays, not their translations, so
  a Coding in a resource whose ``language`` is not English is not checked, nor one
  whose code, or code system, the tables do not know.

The severity is a policy (:attr:`.ValidationOptions.wrong_displays`): a warning by
default, an error when asked for. Checking costs nothing for a Coding without a display
or of another code system (one dict lookup once the table is loaded).
"""

from __future__ import annotations

from typing import Any

from fhir_server import definitions
from fhir_server.errors import Issue, Severity

__all__ = ["check_display", "is_english"]


def is_english(language: str | None) -> bool:
    """Whether a resource in ``language`` (a BCP-47 tag; None: not stated) is
    checked: no language, ``en`` or ``en-*``."""
    if language is None:
        return True
    tag = language.lower()
    return tag == "en" or tag.startswith("en-")


def check_display(coding: dict[str, Any], expr: str, severity: Severity) -> Issue | None:
    """The problem with ``coding``'s display, if any; ``expr`` is the Coding's path."""
    display = coding.get("display")
    system = coding.get("system")
    code = coding.get("code")
    if type(display) is not str or type(system) is not str or type(code) is not str:
        return None
    table = definitions.code_system_displays(system)
    if table is None:
        return None
    expected = table.get(code)
    if expected is None or display == expected:
        return None
    if display.casefold() == expected.casefold():
        return None
    if " ".join(display.split()).casefold() == " ".join(expected.split()).casefold():
        what = "Wrong white space in the display"
    else:
        what = "Wrong display"
    return Issue(
        severity,
        "invalid",
        f"{what} '{display}' for {system}#{code}: the code system's display is '{expected}'",
        (f"{expr}.display",),
    )
