"""How numbers look wherever a person reads them (tables, `best`, the report): 4 significant digits.

Machine-readable output (`--json`, MLflow) keeps full precision; only what is printed for people goes
through `number`.
"""

from __future__ import annotations

import math

DIGITS = 4


def number(value: object, digits: int = DIGITS) -> str:
    """`value` rounded to `digits` significant digits: 0.123456 -> "0.1235", 2.5e-06 -> "2.5e-06",
    123456.7 -> "123500". Integers (also as text, e.g. a logged ``steps`` param) stay whole; None is "-";
    text that is not a number (``None``, ``random_tiny8``, ``[0.95, 1.0]``) is shown as it is."""
    if value is None:
        return "-"
    if isinstance(value, str):
        try:
            int(value)
            return value
        except ValueError:
            pass
        try:
            value = float(value)
        except ValueError:
            return value
    if isinstance(value, (bool, int)):
        return str(value)
    if not isinstance(value, float):
        return str(value)
    if value == 0:
        return "0"
    if not math.isfinite(value):
        return str(value)
    rounded = float(f"{value:.{digits}g}")
    if 10**digits <= abs(rounded) < 1e15:
        # "g" would write 1.235e+05 where a person expects the whole number 123500.
        return f"{rounded:.0f}"
    return f"{value:.{digits}g}"
