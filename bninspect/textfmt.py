"""Text formatting shared by every layer: numbers in prose and tables, names from untrusted files."""

from __future__ import annotations

import math
import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


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


def visible(text: str) -> str:
    """``text`` with every control character shown as an escape (``\\x1b``, ``\\n``): names
    from files may carry ANSI sequences or newlines meant to drive the terminal."""
    return _CONTROL.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), str(text))
