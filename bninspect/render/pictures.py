"""One-line pictures of a layer's channels: a unicode sparkline per quantity (μ, σ², scale).

Each character is one channel, low ▁ to high █ on the layer's own range, or, where a layer has
more channels than the line has room, one bin of adjacent channels drawn by its value farthest
from the layer's median (an outlier must not vanish into a bin average). A channel that a
check finding names is drawn as ``×`` (its bin too), and a line below says which findings:
readable without colour, where colour only repeats it. The terminal renderers print these only
on a terminal; the HTML report shows the same text in its layer overview.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bninspect.render.common import Styled, num
from bninspect.services.series import ChannelSeries

LEVELS = "▁▂▃▄▅▆▇█"
_LEVEL_CHARS = np.array(list(LEVELS))
MARK = "×"  # a channel a check finding names
UNKNOWN = "?"  # NaN or Inf that no finding names (a rule deselected in the report)
LABELS = (("running_mean", "μ"), ("running_var", "σ²"), ("scale", "scale"))
_LABEL_WIDTH = 6
MIN_CELLS = 8
SHOWN_MARKS = 5


@dataclass
class Sparkline:
    """One quantity drawn as text: the characters, which of them are marks, and what a cell holds."""

    text: str
    marked: list[int]  # positions in ``text`` drawn as MARK
    per_cell: int  # channels per character
    low: float | None  # the range the levels span: finite values of channels not marked
    high: float | None


def sparkline(values: np.ndarray, marks: dict[int, list[str]], cells: int) -> Sparkline:
    """``values`` (one per channel) in at most ``cells`` characters; channels in ``marks`` as ×.

    The report draws three per layer for 10,000 layers: the common case (every value finite,
    nothing marked, one channel a character) takes a few numpy calls.
    """
    n = int(values.size)
    per_cell = max(1, -(-n // max(cells, 1)))
    count = -(-n // per_cell)
    finite = np.isfinite(values)
    all_finite = bool(finite.all())
    named = [c for c in marks if 0 <= c < n] if marks else []
    marked = sorted({c // per_cell for c in named})
    # The levels span the channels that are not marked: a marked outlier (μ = 1e3 among values
    # near 0) is drawn as × and must not flatten every other channel to ▁.
    scaled = finite
    if named:
        scaled = finite.copy()
        scaled[named] = False
    kept = values if all_finite and not named else values[scaled]
    if not kept.size:
        chars = np.full(count, UNKNOWN)
        chars[marked] = MARK
        return Sparkline("".join(chars.tolist()), marked, per_cell, None, None)
    low, high = float(kept.min()), float(kept.max())
    chosen = values
    if per_cell > 1:
        padded = np.full(count * per_cell, np.nan)
        padded[:n] = values
        bins = padded.reshape(count, per_cell)
        # The channel farthest from the median stands for its bin: one wild channel among many shows.
        with np.errstate(invalid="ignore"):
            distance = np.where(np.isfinite(bins), np.abs(bins - float(np.median(kept))), -1.0)
        chosen = bins[np.arange(count), np.argmax(distance, axis=1)]
    if high == low:
        levels = np.full(count, 3)
    else:
        with np.errstate(invalid="ignore", over="ignore"):
            levels = np.rint((chosen - low) * ((len(LEVELS) - 1) / (high - low)))
        levels = np.clip(np.nan_to_num(levels), 0, len(LEVELS) - 1).astype(int)
    chars = _LEVEL_CHARS[levels]
    if not all_finite:
        unknown = np.logical_or.reduceat(~finite, np.arange(0, n, per_cell)) if per_cell > 1 else ~finite
        chars[unknown] = UNKNOWN
    if marked:
        chars[marked] = MARK
    return Sparkline("".join(chars.tolist()), marked, per_cell, low, high)


def range_text(line: Sparkline) -> str:
    """The range the levels span, as the line ends it ("-0.302 … 0.328 without ×")."""
    if line.low is None:
        return "no finite values" + (f" besides {MARK}" if line.marked else "")
    return f"{num(line.low, 3)} … {num(line.high, 3)}" + (f" without {MARK}" if line.marked else "")


def picture_lines(series: ChannelSeries, width: int, titles: dict[str, str] | None = None) -> list[Styled]:
    """The pictures of one layer for a terminal ``width`` columns wide: a line per quantity the
    layer has (μ, σ², scale), then one line naming the marked channels and, where channels
    share a character, how many each holds. ``titles``: rule code → title, for the legend."""
    present = [(label, getattr(series, attr)) for attr, label in LABELS if getattr(series, attr) is not None]
    if not present:
        return []
    # One character per channel where the line has room beside "  scale  " and the widest range.
    whole = [sparkline(values, series.marks, values.size) for _, values in present]
    cells = max(MIN_CELLS, width - 2 - _LABEL_WIDTH - 1 - 2 - max(len(range_text(line)) for line in whole))
    lines: list[Styled] = []
    per_cell = 1
    for (label, values), line in zip(present, whole):
        if values.size > cells:
            line = sparkline(values, series.marks, cells)
        per_cell = max(per_cell, line.per_cell)
        text = Styled("  " + label.ljust(_LABEL_WIDTH) + " ")
        at = 0
        for pos in line.marked:
            text.append(line.text[at:pos]).append(MARK, "bold red")
            at = pos + 1
        text.append(line.text[at:]).append("  " + range_text(line), "dim")
        lines.append(text)
    notes = []
    if series.marks:
        notes.append(f"{MARK} = " + mark_legend(series.marks, titles or {}))
    if per_cell > 1:
        notes.append(f"1 character = {per_cell} channels, drawn by the one farthest from the median")
    if notes:
        lines.append(Styled("  " + "; ".join(notes), "dim"))
    return lines


def mark_legend(marks: dict[int, list[str]], titles: dict[str, str]) -> str:
    """"channels 3, 9 (BN105 running_var = 0 (constant channel))": which channels each code marks."""
    by_code: dict[str, list[int]] = {}
    for channel in sorted(marks):
        for code in marks[channel]:
            by_code.setdefault(code, []).append(channel)
    parts = []
    for code, channels in by_code.items():
        shown = ", ".join(map(str, channels[:SHOWN_MARKS])) + (f", … ({len(channels)} in all)" if len(channels) > SHOWN_MARKS else "")
        word = "channel" if len(channels) == 1 else "channels"
        title = f" {titles[code]}" if code in titles else ""
        parts.append(f"{word} {shown} ({code}{title})")
    return "; ".join(parts)


def rule_titles() -> dict[str, str]:
    """Rule code → title, for the legend of the marks."""
    from bninspect.rules import RULES

    return {code: r.title for code, r in RULES.items()}
