"""Number formatting shared by services that write prose and by renderers."""

from __future__ import annotations

import math


def num(x: float | None, digits: int = 4) -> str:
    """A compact number: ``digits`` significant digits, NaN/Inf spelled out, None as an em dash."""
    if x is None:
        return "—"
    x = float(x)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Inf" if x > 0 else "-Inf"
    if x == 0:
        return "0"
    return f"{x:.{digits}g}"
