"""A small UCUM subset: enough to compare two quantities whose units differ.

https://ucum.org/ucum: a unit code is a product/quotient of (prefixed) unit atoms
with integer exponents, integer factors (``10*3``) and ``{annotations}``.
:func:`canonical` turns a value and a unit code into a value in base units and the
dimension of the unit, so ``10000 m`` and ``10 km`` compare equal, and ``kg`` and
``[mi_i]`` are found incomparable.

Covered: the SI base units and the common derived ones (N, Pa, J, W, A, V, Hz, L,
bar), time (min, h, d, wk, mo, a), mm[Hg], cm[H2O], cal, percent and ppm, the
international customary lengths and avoirdupois masses, US volumes, degrees of
angle, enzyme units, arbitrary units (``[IU]`` ...: comparable only with
themselves). Not covered: units with an offset (``Cel``, ``[degF]``), special
(logarithmic) units and the rarely used atoms -- :class:`UnitError` ("not known
here", which is not "invalid").
"""

from __future__ import annotations

import re
from decimal import Context, Decimal
from typing import Final

__all__ = ["UCUM", "Dimension", "UnitError", "canonical", "compare"]

UCUM: Final = "http://unitsofmeasure.org"

# exponents of the base dimensions: length, mass, time, angle, temperature, charge,
# luminous intensity, and the arbitrary units by name
Dimension = tuple[tuple[str, int], ...]


class UnitError(ValueError):
    """A unit code this subset cannot interpret."""


_CTX: Final = Context(prec=34)

_PREFIXES: Final[dict[str, Decimal]] = {
    "Y": Decimal("1e24"),
    "Z": Decimal("1e21"),
    "E": Decimal("1e18"),
    "P": Decimal("1e15"),
    "T": Decimal("1e12"),
    "G": Decimal("1e9"),
    "M": Decimal("1e6"),
    "k": Decimal("1e3"),
    "h": Decimal("1e2"),
    "da": Decimal("1e1"),
    "d": Decimal("1e-1"),
    "c": Decimal("1e-2"),
    "m": Decimal("1e-3"),
    "u": Decimal("1e-6"),
    "n": Decimal("1e-9"),
    "p": Decimal("1e-12"),
    "f": Decimal("1e-15"),
    "a": Decimal("1e-18"),
    "z": Decimal("1e-21"),
    "y": Decimal("1e-24"),
}

# atom -> (factor to base units, dimension, may take a prefix)
_L, _M, _T, _A, _Q, _F = "L", "M", "T", "A", "Q", "F"
_ATOMS: Final[dict[str, tuple[Decimal, dict[str, int], bool]]] = {
    "m": (Decimal(1), {_L: 1}, True),
    "g": (Decimal(1), {_M: 1}, True),
    "s": (Decimal(1), {_T: 1}, True),
    "rad": (Decimal(1), {_A: 1}, True),
    "K": (Decimal(1), {"K": 1}, True),
    "C": (Decimal(1), {_Q: 1}, True),
    "cd": (Decimal(1), {_F: 1}, True),
    "mol": (Decimal("6.0221367e23"), {}, True),
    "sr": (Decimal(1), {_A: 2}, True),
    "Hz": (Decimal(1), {_T: -1}, True),
    "N": (Decimal(1000), {_M: 1, _L: 1, _T: -2}, True),
    "Pa": (Decimal(1000), {_M: 1, _L: -1, _T: -2}, True),
    "J": (Decimal(1000), {_M: 1, _L: 2, _T: -2}, True),
    "W": (Decimal(1000), {_M: 1, _L: 2, _T: -3}, True),
    "A": (Decimal(1), {_Q: 1, _T: -1}, True),
    "V": (Decimal(1000), {_M: 1, _L: 2, _T: -2, _Q: -1}, True),
    "L": (Decimal("1e-3"), {_L: 3}, True),
    "l": (Decimal("1e-3"), {_L: 3}, True),
    "t": (Decimal("1e6"), {_M: 1}, True),
    "bar": (Decimal("1e8"), {_M: 1, _L: -1, _T: -2}, True),
    "m[Hg]": (Decimal("1.33322e8"), {_M: 1, _L: -1, _T: -2}, True),
    "m[H2O]": (Decimal("9.80665e6"), {_M: 1, _L: -1, _T: -2}, True),
    "cal": (Decimal("4184"), {_M: 1, _L: 2, _T: -2}, True),
    "[Cal]": (Decimal("4184000"), {_M: 1, _L: 2, _T: -2}, False),
    "U": (Decimal("6.0221367e23") * Decimal("1e-6") / Decimal(60), {_T: -1}, True),
    "min": (Decimal(60), {_T: 1}, False),
    "h": (Decimal(3600), {_T: 1}, False),
    "d": (Decimal(86400), {_T: 1}, False),
    "wk": (Decimal(604800), {_T: 1}, False),
    "mo": (Decimal("2629800"), {_T: 1}, False),
    "a": (Decimal("31557600"), {_T: 1}, False),
    "deg": (Decimal("0.01745329251994329576923690768488613"), {_A: 1}, False),
    "%": (Decimal("0.01"), {}, False),
    "[ppth]": (Decimal("1e-3"), {}, False),
    "[ppm]": (Decimal("1e-6"), {}, False),
    "[ppb]": (Decimal("1e-9"), {}, False),
    "[in_i]": (Decimal("0.0254"), {_L: 1}, False),
    "[ft_i]": (Decimal("0.3048"), {_L: 1}, False),
    "[yd_i]": (Decimal("0.9144"), {_L: 1}, False),
    "[mi_i]": (Decimal("1609.344"), {_L: 1}, False),
    "[lb_av]": (Decimal("453.59237"), {_M: 1}, False),
    "[oz_av]": (Decimal("28.349523125"), {_M: 1}, False),
    "[stone_av]": (Decimal("6350.29318"), {_M: 1}, False),
    "[gal_us]": (Decimal("3.785411784e-3"), {_L: 3}, False),
    "[qt_us]": (Decimal("0.946352946e-3"), {_L: 3}, False),
    "[pt_us]": (Decimal("0.473176473e-3"), {_L: 3}, False),
    "[cup_us]": (Decimal("0.2365882365e-3"), {_L: 3}, False),
    "[foz_us]": (Decimal("29.5735295625e-6"), {_L: 3}, False),
    "[tbs_us]": (Decimal("14.78676478125e-6"), {_L: 3}, False),
    "[tsp_us]": (Decimal("4.92892159375e-6"), {_L: 3}, False),
}
# arbitrary units: comparable only with themselves (and their prefixed forms)
_ARBITRARY: Final = frozenset({"[IU]", "[iU]", "[arb'U]", "[USP'U]", "[AU]"})

_EXPONENT: Final = re.compile(r"(.*?[^0-9+\-])([+-]?[0-9]+)")
_FACTOR: Final = re.compile(r"([0-9]+)(?:[*^]([+-]?[0-9]+))?")


def canonical(value: Decimal, code: str) -> tuple[Decimal, Dimension]:
    """``value`` expressed in base units, and the dimension of ``code``."""
    factor, dims = _term(code.strip())
    return _CTX.multiply(value, factor), tuple(sorted((k, v) for k, v in dims.items() if v))


def compare(v1: Decimal, code1: str, v2: Decimal, code2: str) -> int:
    """-1, 0 or 1 as ``v1 code1`` is less than, equal to or greater than ``v2 code2``.

    Raises :class:`UnitError` when a unit is not known here, ``ValueError`` when the
    units are of different dimensions (not comparable)."""
    c1, d1 = canonical(v1, code1)
    c2, d2 = canonical(v2, code2)
    if d1 != d2:
        raise ValueError(f"'{code1}' and '{code2}' measure different things")
    if c1 == c2:
        return 0
    # conversions are exact decimal products; compare with a little tolerance
    # for the irrational factors (degrees) and the rounding of long products
    scale = max(abs(c1), abs(c2))
    if abs(c1 - c2) <= scale * Decimal("1e-25"):
        return 0
    return -1 if c1 < c2 else 1


def _split(term: str) -> list[tuple[str, str]]:
    """The components of a term with the operator before each ('.' or '/')."""
    out: list[tuple[str, str]] = []
    depth = 0
    op = "."
    start = 0
    if term.startswith("/"):
        op, start = "/", 1
    i = start
    while i < len(term):
        ch = term[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and ch in "./":
            out.append((op, term[start:i]))
            op, start = ch, i + 1
        i += 1
    out.append((op, term[start:]))
    return out


def _term(term: str) -> tuple[Decimal, dict[str, int]]:
    if not term:
        raise UnitError("an empty unit")
    factor = Decimal(1)
    dims: dict[str, int] = {}
    for op, component in _split(term):
        f, d = _component(component)
        sign = 1 if op == "." else -1
        factor = _CTX.multiply(factor, f) if sign == 1 else _CTX.divide(factor, f)
        for k, v in d.items():
            dims[k] = dims.get(k, 0) + sign * v
    return factor, dims


def _component(text: str) -> tuple[Decimal, dict[str, int]]:
    # an annotation only counts as the unit 1; after a unit it is ignored
    brace = text.find("{")
    if brace >= 0:
        if not text.endswith("}"):
            raise UnitError(f"an unterminated annotation in '{text}'")
        text = text[:brace]
        if not text:
            return Decimal(1), {}
    if not text:
        raise UnitError("an empty unit component")
    if text.startswith("(") and text.endswith(")"):
        return _term(text[1:-1])
    m = _FACTOR.fullmatch(text)
    if m is not None:
        base = Decimal(m.group(1))
        if m.group(2) is not None:
            base = _CTX.power(base, int(m.group(2)))
        return base, {}
    exponent = 1
    e = _EXPONENT.fullmatch(text)
    if e is not None and not text.endswith("]"):
        text, exponent = e.group(1), int(e.group(2))
    factor, dims = _simple(text)
    return _CTX.power(factor, exponent), {k: v * exponent for k, v in dims.items()}


def _simple(text: str) -> tuple[Decimal, dict[str, int]]:
    found = _ATOMS.get(text)
    if found is not None:
        return found[0], dict(found[1])
    if text in _ARBITRARY:
        return Decimal(1), {text.lower(): 1}
    for prefix in sorted(_PREFIXES, key=len, reverse=True):
        if text.startswith(prefix) and len(text) > len(prefix):
            atom = text[len(prefix) :]
            found = _ATOMS.get(atom)
            if found is not None and found[2]:
                return _CTX.multiply(_PREFIXES[prefix], found[0]), dict(found[1])
            if atom in _ARBITRARY:
                return _PREFIXES[prefix], {atom.lower(): 1}
    raise UnitError(f"the unit '{text}' is not known here")
