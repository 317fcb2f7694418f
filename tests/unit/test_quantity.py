"""Kubernetes quantities (common.quantity), checked against apimachinery's own test tables."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from common.quantity import QuantityError, canonical, compare, format_quantity, parse_quantity, to_bytes

Ki, Mi, Gi, Ti, Pi, Ei = (1024**n for n in range(1, 7))
MAX_INT64 = 2**63 - 1


@pytest.mark.parametrize(
    ("text", "value"),
    [
        # From apimachinery TestQuantityParse.
        ("0", 0),
        ("0Ki", 0),
        ("0n", 0),
        ("1", 1),
        ("1Ki", Ki),
        ("7Mi", 7 * Mi),
        ("6Gi", 6 * Gi),
        ("5Ti", 5 * Ti),
        ("4Pi", 4 * Pi),
        ("3Ei", 3 * Ei),
        ("5n", Fraction(5, 10**9)),
        ("4u", Fraction(4, 10**6)),
        ("3m", Fraction(3, 1000)),
        ("8k", 8000),
        ("7M", 7 * 10**6),
        ("6G", 6 * 10**9),
        ("5T", 5 * 10**12),
        ("2P", 2 * 10**15),
        ("1E", 10**18),
        ("1E-3", Fraction(1, 1000)),
        ("1e3", 1000),
        ("1e9", 10**9),
        ("1.3E+6", 1_300_000),
        ("100.035k", 100035),
        ("0.0005k", Fraction(1, 2)),
        ("0.5e-1", Fraction(1, 20)),
        ("6.987654321G", 6987654321),
        ("1.01E", 101 * 10**16),
        ("100.035Ki", Fraction(10243584, 100)),
        ("0.5Mi", Mi // 2),
        ("1.5Gi", 1536 * Mi),
        (".5Gi", 512 * Mi),
        ("+1Gi", Gi),
        ("-1.5Gi", -1536 * Mi),
        # Things that round up to a whole nano, or saturate.
        ("3.001n", Fraction(4, 10**9)),
        ("1.1E-9", Fraction(2, 10**9)),
        ("0.0000000001", Fraction(1, 10**9)),
        ("0.00000012345", Fraction(124, 10**9)),
        ("-0.5n", Fraction(-1, 10**9)),
        ("1e-100000", Fraction(1, 10**9)),
        ("9Ei", MAX_INT64),
        ("9223372036854775807Ki", MAX_INT64),
        ("12E", 12 * 10**18),  # decimal values are not capped
        ("0.000000000001Ki", Fraction(2, 10**9)),
        # "Things written by trolls", and scanner quirks Go accepts (kubernetes/apimachinery#165).
        (".001", Fraction(1, 1000)),
        ("1.", 1),
        ("1.G", 10**9),
        (".", 0),
        ("-", 0),
        ("Gi", 0),
        ("m", 0),
    ],
)
def test_parse_matches_apimachinery(text: str, value: int | Fraction) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize(
    "text",
    # apimachinery's invalid table, plus more of the same.
    ["", "1.1.M", "1+1.0M", "0.1mi", "0.1am", "aoeu", ".5i", "1i", "-3.01i", "-3.01e-", " 1", "1 ",
     "1K", "1e", "1ee3", "1Gi3", "1gi", "1GB", "--1", "1,5", "1e3.5", "\u0661", "1e99999999999999999999"],
)  # fmt: skip
def test_parse_rejects_garbage(text: str) -> None:
    with pytest.raises(QuantityError) as info:
        parse_quantity(text)
    assert info.value.text == text


def test_huge_exponents_are_refused_rather_than_computed() -> None:
    with pytest.raises(QuantityError):
        parse_quantity("1e100000")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1Gi", "1Gi"),
        ("500M", "500M"),
        ("1.5Gi", "1536Mi"),
        ("1e9", "1e9"),
        ("0", "0"),
        ("100m", "100m"),
        ("0.1", "100m"),
        ("1024Mi", "1Gi"),
        ("1000M", "1G"),
        ("1.5", "1500m"),
        ("-1.5", "-1500m"),
        ("1.3E+6", "1300e3"),
        ("80e-3", "80e-3"),
        (".001Ki", "1024m"),
        (".000000001Ki", "1024n"),
        (".000000000001Ki", "2n"),
        ("1536", "1536"),
        ("1025Ki", "1025Ki"),
        ("0.025Ti", "27487790694400m"),
        ("1000E", "1e21"),  # beyond the E suffix: exponent form (kubernetes#140459)
        ("Gi", "0"),
    ],
)
def test_canonical_forms(text: str, expected: str) -> None:
    assert canonical(text) == expected


@pytest.mark.parametrize(
    ("value", "binary", "expected"),
    [
        (1073741824, True, "1Gi"),
        (2147483648, True, "2Gi"),
        (1500 * Mi, True, "1500Mi"),
        (1536, True, "1536"),
        (1000, True, "1k"),  # under 1024: decimal form, like apimachinery
        (5, True, "5"),
        (-5 * Gi, True, "-5Gi"),
        (2**70, True, "1024Ei"),
        (1000000000, False, "1G"),
        (1073741824, False, "1073741824"),
        (1234567 * 10**6, False, "1234567M"),
        (Fraction(1, 10), False, "100m"),
        (Fraction(1, 10**12), False, "1e-12"),
        (0, True, "0"),
    ],
)
def test_format_quantity(value: int | Fraction, binary: bool, expected: str) -> None:
    assert format_quantity(value, binary=binary) == expected


def test_format_refuses_values_with_no_decimal_form() -> None:
    with pytest.raises(ValueError):
        format_quantity(Fraction(1, 3), binary=False)


def test_to_bytes_rounds_away_from_zero_like_value() -> None:
    assert to_bytes("1Gi") == Gi
    assert to_bytes("1.5") == 2
    assert to_bytes("1m") == 1
    assert to_bytes("-1.5") == -2
    assert to_bytes("0.5Ki") == 512
    assert to_bytes("1e9") == 10**9


def test_compare() -> None:
    # apimachinery TestQuantityCmp.
    assert compare("0", "0") == 0
    assert compare("100m", "50m") == 1
    assert compare("50m", "100m") == -1
    assert compare("10000T", "100Gi") == 1
    assert compare("1Gi", 1073741824) == 0
    assert compare(Fraction(1, 2), "500m") == 0


int64s = st.integers(min_value=-MAX_INT64, max_value=MAX_INT64)


@given(value=int64s, binary=st.booleans())
def test_format_then_parse_round_trips(value: int, binary: bool) -> None:
    assert parse_quantity(format_quantity(value, binary=binary)) == value


@given(mantissa=st.integers(min_value=-(10**6), max_value=10**6), power=st.integers(0, 6))
def test_binary_multiples_use_the_largest_suffix(mantissa: int, power: int) -> None:
    value = mantissa * 1024**power
    assume(abs(value) <= MAX_INT64 and mantissa % 1024 != 0 and abs(value) >= 1024)
    text = format_quantity(value, binary=True)
    assert text == f"{mantissa}{['', 'Ki', 'Mi', 'Gi', 'Ti', 'Pi', 'Ei'][power]}"
    assert parse_quantity(text) == value


def test_binary_values_over_int64_are_capped_when_parsed() -> None:
    assert parse_quantity(format_quantity(8 * Ei, binary=True)) == MAX_INT64  # "8Ei", as in Go


@given(nanos=st.integers(min_value=-(10**24), max_value=10**24))
def test_decimal_values_round_trip_through_their_canonical_form(nanos: int) -> None:
    value = Fraction(nanos, 10**9)
    text = format_quantity(value, binary=False)
    assert parse_quantity(text) == value
    assert canonical(text) == text  # canonical forms are fixed points


@given(st.text(alphabet="0123456789.+-eEinumkKMGTPaxyz ", max_size=12))
def test_parse_either_returns_an_exact_value_or_a_quantity_error(text: str) -> None:
    try:
        value = parse_quantity(text)
    except QuantityError:
        return
    assert isinstance(value, Fraction)
    assert (value * 10**9).denominator == 1  # always a whole number of nanos
