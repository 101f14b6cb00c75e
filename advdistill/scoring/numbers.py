"""Plain numbers, SPEC §3: the fast path of the verifier, in this process and without sympy.

Most answers (all of GSM8K's) are plain numbers: `1,234`, `\\$18`, `25\\%`, `18 dollars`, `0.5`,
`3/4`, `\\frac{3}{4}`. Reading them here keeps scoring at thousands of responses per second and
keeps them away from sympy. The rules:

- Noise is dropped: `$`, `^\\circ`, `\\left`/`\\right`, `\\text{…}` wrappers, thin spaces
  (`\\,`, `\\!`, `\\;`, `~`). Only well-formed digit groups are thousands separators:
  `\\d{1,3}(,\\d{3})+`, with `,`, `{,}` or a thin space between groups (`1,234`, `1{,}234`,
  `1\\,234`); `2, 3`, `2,3` and `12,34` are not numbers.
- A percentage (`%`, `\\%`, "percent") is worth its number (SPEC's rule, right for GSM8K:
  `12.5\\%` answers 12.5) and also its hundredth (math-verify's reading: `25\\%` = `1/4`).
- Only unit words may follow the number (`18 apples`, `5 hours`): words of two or more letters
  that are not number words, so `5 and a half`, `3 million` and `5x` are not plain numbers (they
  go to math-verify, which reads them as the expressions they are).
- Two plain numbers are compared as math-verify compares them (`numbers_match`): integers and
  fractions exactly; a decimal against anything by sympy's rounding to 6 decimal places, which is
  what math-verify does (`0.0833333` = `1/12`, `0.333` ≠ `1/3`). The rounding is reproduced here,
  precision quirks included, so the fast path says what math-verify says on the numbers both
  read alike (tests/test_verifier_agreement.py checks it against math-verify itself).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction

# Longer strings are not final answers; they go to math-verify, bounded in time. (Python refuses
# to convert more than 4,300 digits to an int anyway.)
_MAX_CHARS = 4000

_WRAPPER = re.compile(r"\\(?:text|textbf|textrm|textnormal|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_THIN_SPACE = r"(?:\\[,!;: ]|~)"
_GROUP_SEPARATOR = re.compile(rf"(?<=\d)(?:{_THIN_SPACE}|\{{,\}})(?=\d)")
_SPACING = re.compile(_THIN_SPACE)
_NOISE = ("\\$", "$", "^\\circ", "^{\\circ}", "°", "\\left", "\\right")
_PERCENT = re.compile(r"\\?%|\s+per\s?cent(?:age)?\b", re.IGNORECASE)
_INTEGER = r"\d{1,3}(?:,\d{3})+|\d+"
_PLAIN = re.compile(
    rf"(?P<sign>[-+]?)\s*(?P<number>(?:{_INTEGER})(?:\.\d*)?|\.\d+)"
    r"(?:\s*/\s*(?P<denominator>\d+))?(?P<units>(?:\s+[A-Za-z]{2,})*)"
)
_FRAC = re.compile(r"(?P<sign>-?)\s*\\[dt]?frac\s*\{\s*(?P<num>[-+]?\d+)\s*\}\s*\{\s*(?P<den>[-+]?\d+)\s*\}")
# Words that change the value or make the answer an expression: never units.
_NOT_UNITS = frozenset(
    """and or plus minus times over divided by point half halves third thirds quarter quarters
    fourth fourths fifth fifths sixth sixths seventh sevenths eighth eighths ninth ninths tenth
    tenths hundredth hundredths thousandth thousandths zero one two three four five six seven
    eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen
    twenty thirty forty fifty sixty seventy eighty ninety hundred hundreds thousand thousands
    million millions billion billions trillion trillions dozen dozens score pi sqrt root roots
    squared cubed power to of inf infinity none""".split()
)


@dataclass(frozen=True)
class PlainNumber:
    """A number as written: its exact value, and for a decimal its significant digits (sympy
    keeps max(15, digits) of them, which decides how it rounds)."""

    value: Fraction
    decimal_digits: int | None = None  # None: an integer or a fraction, compared exactly
    percent: bool = False

    @property
    def is_decimal(self) -> bool:
        return self.decimal_digits is not None

    def readings(self) -> list[PlainNumber]:
        """The values it may stand for: a percentage is its number or its hundredth."""
        if not self.percent:
            return [self]
        return [PlainNumber(self.value, self.decimal_digits), PlainNumber(self.value / 100, self.decimal_digits)]


def read_number(text: str) -> PlainNumber | None:
    """The plain number `text` states, or None when it is anything else (see the module doc)."""
    if not isinstance(text, str) or len(text) > _MAX_CHARS:
        return None
    s = _WRAPPER.sub(r" \1 ", text)
    s = _GROUP_SEPARATOR.sub(",", s)
    s = _SPACING.sub(" ", s)
    for noise in _NOISE:
        s = s.replace(noise, "")
    s, percents = _PERCENT.subn(" ", s)
    s = s.replace("\u2212", "-").strip().rstrip(".").strip()
    if not s or percents > 1:
        return None
    m = _FRAC.fullmatch(s)
    if m:
        numerator, denominator = int(m["num"]), int(m["den"])
        if denominator == 0:
            return None
        value = Fraction(numerator, denominator)
        return PlainNumber(-value if m["sign"] else value, percent=bool(percents))
    m = _PLAIN.fullmatch(s)
    if not m or any(word.lower() in _NOT_UNITS for word in m["units"].split()):
        return None
    number = m["number"].replace(",", "")
    try:
        value = Fraction(number)
    except (ValueError, ZeroDivisionError):
        return None
    digits = _significant_digits(number) if "." in number else None
    if m["denominator"] is not None:
        if int(m["denominator"]) == 0:
            return None
        value /= int(m["denominator"])
    return PlainNumber(-value if m["sign"] == "-" else value, digits, bool(percents))


def parse_number(text: str) -> Fraction | None:
    """A plain number (with commas, $, %, trailing units, a/b or \\frac{a}{b}) as a Fraction."""
    number = read_number(text)
    return None if number is None else number.value


def _significant_digits(decimal: str) -> int:
    """Digits sympy counts for a decimal string (`Decimal(s).as_tuple().digits`)."""
    try:
        return len(Decimal(decimal).as_tuple().digits)
    except InvalidOperation:
        return 15


# ---------------------------------------------------------------------------------------------
# Comparison: math-verify's verdict on two plain numbers, computed exactly here.
#
# math-verify (`grader.sympy_expr_eq`) tries, in order: sympy's `==`; when either side is a
# decimal (a sympy Float), `a.round(6) == b.round(6)`; then `simplify(a - b).is_zero`. sympy's `==`
# on Floats compares their binary value *and* their precision, and `Expr.round` returns a Float
# whose precision depends on the magnitude of the unrounded number; so for math-verify
# `0.1000000004` is `1/10` but `0.0999999999` is not (both round to 0.1, at different
# precisions). The functions below mirror sympy 1.14's `Expr.round` and `Float.__eq__` with exact
# rational arithmetic; tests/test_verifier_agreement.py compares them with math-verify itself.
# ---------------------------------------------------------------------------------------------

_ROUND_TO = 6  # math-verify's float_rounding
_PYTHON_FLOAT_DPS = 15


def numbers_match(gold: PlainNumber, pred: PlainNumber) -> bool:
    """Whether math-verify would judge `pred` equal to `gold` (both plain numbers), a percentage
    matching by either of its readings."""
    return any(_match(g, p) for g in gold.readings() for p in pred.readings())


def _match(gold: PlainNumber, pred: PlainNumber) -> bool:
    if not gold.is_decimal and not pred.is_decimal:
        return gold.value == pred.value
    if _sympy_number(gold) == _sympy_number(pred):
        return True
    if _sympy_round(gold) == _sympy_round(pred):
        return True
    return _difference_is_zero(gold, pred)


def _dps_to_prec(dps: int) -> int:
    """mpmath's `dps_to_prec`: bits for `dps` decimal digits."""
    return max(1, int(round((int(dps) + 1) * 3.3219280948873626)))


def _prec_to_dps(prec: int) -> int:
    """mpmath's `prec_to_dps`: decimal digits that `prec` bits hold."""
    return max(1, int(round(int(prec) / 3.3219280948873626) - 1))


def _to_binary(value: Fraction, prec: int) -> Fraction:
    """`value` rounded to `prec` significant bits, ties to even (an mpmath mpf)."""
    if value == 0:
        return value
    sign = -1 if value < 0 else 1
    value = abs(value)
    exponent = value.numerator.bit_length() - value.denominator.bit_length() - prec
    while True:
        mantissa = value / Fraction(2) ** exponent
        if mantissa >= 2**prec:
            exponent += 1
        elif mantissa < 2 ** (prec - 1):
            exponent -= 1
        else:
            break
    return sign * round(mantissa) * Fraction(2) ** exponent


def _float_precision(number: PlainNumber) -> int:
    return _dps_to_prec(max(_PYTHON_FLOAT_DPS, number.decimal_digits or 0))


def _sympy_number(number: PlainNumber) -> tuple:
    """What sympy's `==` compares: exact values, or a Float's binary value and precision."""
    if not number.is_decimal:
        return ("exact", number.value)
    prec = _float_precision(number)
    return ("float", _to_binary(number.value, prec), prec)


def _magnitude(value: Fraction) -> int | None:
    """sympy's `_mag`: i with 0.1 <= |x| / 10**i < 1, computed on the 53-bit value as sympy does."""
    try:
        x = abs(float(value))
    except OverflowError:
        return None
    if x == 0 or math.isinf(x):
        return None
    mag = int(math.ceil(math.log10(x)))
    if x / float(Fraction(10) ** mag) >= 1:
        mag += 1
    return mag


def _round_half_even(value: Fraction, places: int) -> Fraction:
    scale = 10**places
    return Fraction(round(value * scale), scale)


def _sympy_round(number: PlainNumber) -> tuple | None:
    """`x.round(6)` as sympy 1.14 computes it, as a comparable value (None: beyond floats)."""
    if not number.is_decimal and number.value.denominator == 1:
        return ("integer", number.value)  # Integer.round returns the Integer
    original = _sympy_number(number)[1]
    if original == 0:
        return _sympy_number(number)  # `if not x: return x`
    mag = _magnitude(number.value)
    if mag is None:
        return None
    allow = mag + _ROUND_TO
    if number.is_decimal:
        dps = _prec_to_dps(_float_precision(number))
        allow = min(allow, dps)
    else:
        dps = max(_PYTHON_FLOAT_DPS, allow)
    rounded = _round_half_even(number.value, _ROUND_TO)
    if rounded.denominator == 1:  # Float(str(rv), dps)
        prec = _dps_to_prec(dps)
        return ("float", _to_binary(rounded, prec), prec)
    if allow == 0 and rounded > original:
        allow += 1
    prec = _dps_to_prec(allow)
    return ("float", _to_binary(rounded, prec), prec)


def _difference_is_zero(gold: PlainNumber, pred: PlainNumber) -> bool:
    """`simplify(gold - pred).is_zero`: the exact side is rounded to the Float's precision."""
    if gold.is_decimal and pred.is_decimal:
        return _sympy_number(gold)[1] == _sympy_number(pred)[1]
    decimal, exact = (gold, pred) if gold.is_decimal else (pred, gold)
    prec = _float_precision(decimal)
    return _to_binary(exact.value, prec) == _to_binary(decimal.value, prec)
