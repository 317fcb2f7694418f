"""Go value syntax: strconv and time parsing and printing, so flags and metrics read and write like Go.

Parsers raise ValueError with the text Go's flag package puts after the colon (`parse error`,
`value out of range`); `parse_duration` raises time.ParseDuration's own messages.
"""

from __future__ import annotations

import json
import math
import re

BOOLS = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True}
BOOLS |= {"0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}
_INT = re.compile(r"0[xX](_?[0-9a-fA-F])+|0[bB](_?[01])+|0[oO](_?[0-7])+|0(_?[0-7])*|[1-9](_?[0-9])*")
_FLOAT = re.compile(
    r"[+-]?(([0-9_]+\.?[0-9_]*|\.[0-9_]+)([eE][+-]?[0-9]+)?|0[xX][0-9a-fA-F_.]+[pP][+-]?[0-9]+)"
)
_INFINITY = re.compile(r"[+-]?(inf|infinity)", re.IGNORECASE)
_DURATION_UNITS = {"ns": 1, "us": 10**3, "µs": 10**3, "μs": 10**3, "ms": 10**6, "s": 10**9}
_DURATION_UNITS |= {"m": 60 * 10**9, "h": 3600 * 10**9}


def parse_bool(text: str) -> bool:
    """Go's strconv.ParseBool."""
    if text not in BOOLS:
        raise ValueError("parse error")
    return BOOLS[text]


def parse_int(text: str, *, unsigned: bool = False) -> int:
    """Go's strconv.ParseInt(text, 0, 64) (or ParseUint): decimal, 0x.., 0o.., 0b.., legacy 0-octal."""
    body, sign = text, 1
    if not unsigned and body[:1] in ("+", "-"):
        sign, body = (-1 if body[0] == "-" else 1), body[1:]
    if not _INT.fullmatch(body):
        raise ValueError("parse error")
    digits = body.replace("_", "")
    if digits[:2].lower() in ("0x", "0b", "0o"):
        value = int(digits[2:], {"x": 16, "b": 2, "o": 8}[digits[1].lower()])
    else:
        value = int(digits, 8 if digits.startswith("0") else 10)
    value *= sign
    low, high = (0, 2**64 - 1) if unsigned else (-(2**63), 2**63 - 1)
    if not low <= value <= high:
        raise ValueError("value out of range")
    return value


def parse_float(text: str) -> float:
    """Go's strconv.ParseFloat(text, 64), including `inf`, `nan` and hex floats (`0x1p-2`)."""
    if text.lower() == "nan":
        return math.nan
    if _INFINITY.fullmatch(text):
        return -math.inf if text.startswith("-") else math.inf
    if not _FLOAT.fullmatch(text):
        raise ValueError("parse error")
    try:
        if "x" in text.lower():
            sign = -1.0 if text.startswith("-") else 1.0
            value = sign * float.fromhex(text.lstrip("+-").replace("_", ""))
        else:
            value = float(text)
    except ValueError:
        raise ValueError("parse error") from None
    if math.isinf(value):
        raise ValueError("value out of range")
    return value


def parse_duration(text: str) -> float:
    """Go's time.ParseDuration, in seconds: `[-+]?([0-9]*(\\.[0-9]*)?[a-z]+)+`, or exactly `0`."""
    invalid = ValueError(f"time: invalid duration {go_quote(text)}")
    rest, negative = text, text[:1] == "-"
    if rest[:1] in ("+", "-"):
        rest = rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise invalid
    total = 0
    while rest:
        number = re.match(r"([0-9]*)(?:\.([0-9]*))?", rest)
        assert number is not None  # the pattern can match the empty string
        whole, fraction = number.group(1), number.group(2)
        if not whole and not fraction:
            raise invalid
        rest = rest[number.end() :]
        unit_text = re.match(r"[^0-9.]+", rest)
        if unit_text is None:
            raise ValueError(f"time: missing unit in duration {go_quote(text)}")
        unit = _DURATION_UNITS.get(unit_text.group())
        if unit is None:
            raise ValueError(f"time: unknown unit {go_quote(unit_text.group())} in duration {go_quote(text)}")
        rest = rest[unit_text.end() :]
        total += int(whole or "0") * unit
        if fraction:
            total += int(int(fraction) * (unit / 10 ** len(fraction)))
        if total > 2**63 - (0 if negative else 1):
            raise invalid
    return (-total if negative else total) / 1e9


def format_float(value: float) -> str:
    """A float as Go prints it with %v and strconv 'g' -1 (`5`, `0.25`, `1e+06`, `1.8446744073709552e+19`)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    match = re.fullmatch(r"(\d+)(?:\.(\d+))?(?:e([+-]\d+))?", repr(abs(value)))
    assert match is not None  # repr of a finite positive float always has this shape
    whole, fraction, exp = match.group(1), match.group(2) or "", int(match.group(3) or 0)
    digits = (whole + fraction).lstrip("0")
    point = len(whole) + exp - (len(whole + fraction) - len(digits))  # value = 0.<digits> * 10**point
    digits = digits.rstrip("0")
    sign = "-" if value < 0 else ""
    if not -4 <= point - 1 < 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mantissa}e{point - 1:+03d}"
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return sign + digits + "0" * (point - len(digits))
    return f"{sign}{digits[:point]}.{digits[point:]}"


def format_duration(seconds: float) -> str:
    """Go's time.Duration.String(): `0s`, `500ms`, `1.5s`, `5m0s`, `1h0m0s`."""
    nanos = round(seconds * 1e9)
    sign, nanos = ("-" if nanos < 0 else ""), abs(nanos)

    def fixed(value: int, places: int) -> str:
        whole, frac = divmod(value, 10**places)
        tail = str(frac).rjust(places, "0").rstrip("0")
        return f"{whole}.{tail}" if tail else str(whole)

    if nanos == 0:
        return "0s"
    if nanos < 10**3:
        return f"{sign}{nanos}ns"
    if nanos < 10**6:
        return f"{sign}{fixed(nanos, 3)}µs"
    if nanos < 10**9:
        return f"{sign}{fixed(nanos, 6)}ms"
    minutes, rest = divmod(nanos, 60 * 10**9)
    text = fixed(rest, 9) + "s"
    if minutes:
        hours, minutes = divmod(minutes, 60)
        text = f"{minutes}m{text}" if not hours else f"{hours}h{minutes}m{text}"
    return sign + text


def go_quote(text: str) -> str:
    """A string quoted like Go's %q (close enough for error messages)."""
    return json.dumps(text, ensure_ascii=False)


def parse_uint(text: str) -> int:
    """Go's strconv.ParseUint(text, 0, 64): no sign allowed."""
    return parse_int(text, unsigned=True)


def format_bool(value: object) -> str:
    """Go's strconv.FormatBool."""
    return "true" if value else "false"


def parse_string_map(text: str, current: dict[str, str]) -> dict[str, str]:
    """csi-lib-utils standardflags `stringMap.Set`: `k:v,k2:v2`, merged into the current map."""
    merged = dict(current)
    for item in text.split(","):
        pair = item.split(":")
        if len(pair) != 2:
            raise ValueError(f"malformed item in list of labels: {item}")
        merged[pair[0]] = pair[1]
    return merged


def format_string_map(value: dict[str, str]) -> str:
    """A Go map printed with %s: `map[k:v k2:v2]`, keys sorted."""
    return "map[" + " ".join(f"{k}:{v}" for k, v in sorted(value.items())) + "]"
