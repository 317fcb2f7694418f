"""Resource quantities: Kubernetes ``resource.Quantity`` parsing and canonical formatting, exactly.

The grammar is apimachinery's (``quantity.go``)::

    <quantity>        ::= <signedNumber><suffix>
    <number>          ::= <digits> | <digits>.<digits> | <digits>. | .<digits>
    <suffix>          ::= <binarySI> | <decimalExponent> | <decimalSI>
    <binarySI>        ::= Ki | Mi | Gi | Ti | Pi | Ei
    <decimalSI>       ::= n | u | m | "" | k | M | G | T | P | E
    <decimalExponent> ::= "e" <signedNumber> | "E" <signedNumber>

Values are exact `Fraction`s, never floats. As in ``ParseQuantity``: a non-zero value is rounded up
(away from zero) to a whole nano (10^-9), a binary-suffixed value is capped at 2^63-1, and the
scanner's quirks are kept: a bare suffix or sign parses as zero (``"Gi"``, ``"-"``, ``"."``,
kubernetes/apimachinery#165) and ``"1."`` is one. One deliberate difference: decimal exponents
over 1000 and numbers of over 4000 digits are rejected (Go keeps them as an unbounded decimal; no
real quantity uses them).

Formatting is ``Quantity.String()`` (``CanonicalizeBytes``): no precision lost, no fractional digits,
the largest suffix possible. Decimal: the exponent is the largest multiple of 3 that keeps the
mantissa whole (``1.5`` → ``1500m``, ``10^9`` → ``1G``); beyond the suffixes (10^-9..10^18) the
exponent form is used (``1e21``, as apimachinery does since kubernetes#140459). Binary: a whole
value of at least 1024 in magnitude uses the largest power of 1024 that divides it (``1.5Gi`` →
``1536Mi``); anything else (small or fractional) is shown in decimal form (``1000`` → ``1k``).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Literal

Format = Literal["BinarySI", "DecimalSI", "DecimalExponent"]

_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_DECIMAL_SUFFIX = {exp: suffix for suffix, exp in _DECIMAL.items()}
_BINARY_SUFFIX = {bits // 10: suffix for suffix, bits in _BINARY.items()}
_NANO = 10**9
_MAX_INT64 = 2**63 - 1
_MAX_EXPONENT = 1000
_MAX_DIGITS = 4000  # Python refuses to convert longer digit strings to int

# The shape apimachinery's scanner accepts: sign, digits, optional fraction, then a run of suffix
# letters, an optional sign and digits (the suffix itself is checked afterwards).
_SCAN = re.compile(r"([+-]?)([0-9]*)(?:\.([0-9]*))?([eEinumkKMGTP]*[+-]?[0-9]*)")
_EXPONENT = re.compile(r"[+-]?[0-9]+")


class QuantityError(ValueError):
    """Text that is not a Kubernetes quantity."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(f"quantity {text!r}: {reason}")
        self.text = text
        self.reason = reason


def _parse(text: str) -> tuple[Fraction, Format]:
    if not text:
        raise QuantityError(text, "empty")
    match = _SCAN.fullmatch(text)
    if match is None:
        raise QuantityError(text, "quantities must match '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")
    sign, whole, frac, suffix = match.groups()
    frac = frac or ""
    significant = (whole + frac).lstrip("0")
    if len(significant) > _MAX_DIGITS:
        raise QuantityError(text, "too many digits")
    digits = int(significant) if significant else 0
    fmt: Format
    if suffix in _DECIMAL:
        fmt, value = "DecimalSI", Fraction(digits) * Fraction(10) ** (_DECIMAL[suffix] - len(frac))
    elif suffix in _BINARY:
        fmt, value = "BinarySI", Fraction(digits * 2 ** _BINARY[suffix], 10 ** len(frac))
    elif len(suffix) > 1 and suffix[0] in "eE" and _EXPONENT.fullmatch(suffix[1:]):
        if len(suffix[1:].lstrip("+-").lstrip("0")) > 19 or abs(int(suffix[1:])) > _MAX_INT64:
            raise QuantityError(text, "unable to parse quantity's suffix")  # strconv.ParseInt fails
        exponent = int(suffix[1:]) - len(frac)
        fmt = "DecimalExponent"
        if digits == 0:
            value = Fraction(0)
        elif exponent + len(significant) < -9:  # below one nano: rounds up to exactly 1n below
            value = Fraction(1, _NANO)
        elif exponent > _MAX_EXPONENT:
            raise QuantityError(text, "exponent too large")
        else:
            value = Fraction(digits) * Fraction(10) ** exponent
    else:
        raise QuantityError(text, "unable to parse quantity's suffix")
    if (value * _NANO).denominator != 1:  # round up, away from zero, to a whole nano
        value = Fraction(math.ceil(value * _NANO), _NANO)
    if fmt == "BinarySI":
        value = min(value, Fraction(_MAX_INT64))
        if 0 < value < 1:
            fmt = "DecimalSI"
    return (-value if sign == "-" else value), fmt


def parse_quantity(text: str) -> Fraction:
    """The exact value of a quantity string (``resource.ParseQuantity``); `QuantityError` if invalid."""
    return _parse(text)[0]


def to_bytes(text: str) -> int:
    """A quantity as a whole number, rounded away from zero like ``Quantity.Value()``
    (e.g. a PVC's storage request in bytes)."""
    value = parse_quantity(text)
    magnitude = math.ceil(abs(value))
    return -magnitude if value < 0 else magnitude


def _decimal(value: Fraction) -> tuple[int, int]:
    """(mantissa, exponent) with value == mantissa * 10**exponent, exponent a multiple of 3 and as
    large as possible; `value` must be a finite decimal."""
    den = value.denominator
    twos = fives = 0
    while den % 2 == 0:
        den //= 2
        twos += 1
    while den % 5 == 0:
        den //= 5
        fives += 1
    if den != 1:
        raise ValueError(f"{value} is not a finite decimal and has no quantity form")
    scale = max(twos, fives)
    mantissa, exponent = value.numerator * 10**scale // value.denominator, -scale
    while mantissa % 10 == 0:
        mantissa //= 10
        exponent += 1
    shift = exponent % 3  # move down to a multiple of 3
    return mantissa * 10**shift, exponent - shift


def format_quantity(value: int | Fraction, *, binary: bool) -> str:
    """The canonical string of `value` (``Quantity.String()``) in BinarySI (`binary`) or DecimalSI.

    >>> format_quantity(2**31, binary=True), format_quantity(10**9, binary=False)
    ('2Gi', '1G')
    """
    return _format(Fraction(value), "BinarySI" if binary else "DecimalSI")


def _format(value: Fraction, fmt: Format) -> str:
    if value == 0:
        return "0"
    if fmt == "BinarySI" and abs(value) >= 1024 and value.denominator == 1:
        mantissa, power = int(value), 0
        while mantissa % 1024 == 0 and power < max(_BINARY_SUFFIX):
            mantissa //= 1024
            power += 1
        return f"{mantissa}{_BINARY_SUFFIX.get(power, '')}"
    mantissa, exponent = _decimal(value)
    if fmt != "DecimalExponent" and exponent in _DECIMAL_SUFFIX:
        return f"{mantissa}{_DECIMAL_SUFFIX[exponent]}"
    return f"{mantissa}e{exponent}" if exponent else str(mantissa)


def canonical(text: str) -> str:
    """What the API server stores for `text`: ``ParseQuantity(text).String()``, keeping the format the
    text was written in (``"1.5Gi"`` → ``"1536Mi"``, ``"1e9"`` → ``"1e9"``, ``"1000M"`` → ``"1G"``)."""
    value, fmt = _parse(text)
    return _format(value, fmt)


def compare(a: str | int | Fraction, b: str | int | Fraction) -> int:
    """-1, 0 or 1 as `a` is less than, equal to or greater than `b` (``Quantity.Cmp``); strings are parsed."""
    x = parse_quantity(a) if isinstance(a, str) else Fraction(a)
    y = parse_quantity(b) if isinstance(b, str) else Fraction(b)
    return (x > y) - (x < y)
