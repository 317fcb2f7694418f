"""Resource quantities: parse `1Gi`, `500M`, `1.5e3` into exact numbers to compare sizes as the server does.

Only comparison is needed here (PVC growth and shrink rules), so a quantity becomes a `Fraction`; the
string stored in the object is never rewritten.
"""

from __future__ import annotations

import re
from fractions import Fraction

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000), "": Fraction(1)}
_DECIMAL.update({"k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9)})
_DECIMAL.update({"T": Fraction(10**12), "P": Fraction(10**15), "E": Fraction(10**18)})
_QUANTITY = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?\d+|[numkMGTPE]?)$")


def parse_quantity(text: str | int | float) -> Fraction:
    """The exact value of a quantity; ValueError if it is not one (as `resource.ParseQuantity`)."""
    if isinstance(text, int | float):
        return Fraction(text)
    match = _QUANTITY.match(text.strip())
    if not match:
        raise ValueError(f"quantities must match the regular expression '{_QUANTITY.pattern}'")
    number, suffix = Fraction(match.group(1)), match.group(2)
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix[:1] in ("e", "E"):
        return number * Fraction(10) ** int(suffix[1:])
    return number * _DECIMAL[suffix]


def storage_of(resources: object) -> Fraction | None:
    """The `storage` entry of a resource list (`{"storage": "1Gi"}`), or None when absent or unparsable."""
    if not isinstance(resources, dict) or "storage" not in resources:
        return None
    try:
        return parse_quantity(resources["storage"])
    except (ValueError, TypeError):
        return None
