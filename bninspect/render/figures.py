"""The report's plots, drawn by matplotlib as inline SVG (the optional extra ``bninspect[report]``).

Only ``render.report`` imports this module, and only the `report` command imports that: no
other command, and not ``import bninspect``, loads matplotlib.

matplotlib is used through its object-oriented API (``Figure`` and ``savefig``, never
pyplot's global state), inside ``rc_context`` so a caller's settings are left as they were.
Making a figure of ten axes costs ~0.4 s and redrawing it with new data ~0.08 s, so each kind
of figure is made once per report and redrawn for every page. No name from a file is ever
drawn into a figure (matplotlib would parse ``$...$`` in it as mathematics): names go into the
HTML around the figures, escaped there. Lines of more than ``ENVELOPE_ABOVE`` points are drawn
as the minimum and maximum of each of ``ENVELOPE_BINS`` bins, so a figure stays about
100-150 kB however many channels or layers it shows, and an outlier is never averaged away.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from bninspect.rules import SEVERITIES

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from bninspect.services.diff_results import ChannelDiff, LayerDiff
    from bninspect.services.drift import DriftResult, LayerDrift
    from bninspect.services.report import LayerRow

ENVELOPE_ABOVE = 400
ENVELOPE_BINS = 200
STEPS_UP_TO = 128  # channels drawn as steps (one flat step each); beyond, a plain line
# A finding that names more channels than this (BN101 names all of them) is not drawn channel by
# channel: fifty marks say "these", a hundred say only "many", and each costs ~0.1 kB per panel.
MAX_MARKS = 50

# Marker and colour per severity: the shape alone tells them apart, without colour.
SEVERITY_STYLE = {"error": ("X", "#d62728"), "warning": ("^", "#ff7f0e"), "info": ("o", "#1f77b4")}
LINE = "#3b5b92"
SORTED = "#6b6b6b"

_RC = {
    "svg.fonttype": "none",  # text as <text>, not glyph outlines: a fraction of the size
    "svg.hashsalt": "bninspect",  # ids from content: the same report twice is the same file
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],
    "font.size": 8,
    "axes.linewidth": 0.6,
    "axes.titlesize": 8,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "path.simplify": True,
}

PAGE_ROWS = (("running_mean", "μ running_mean"), ("running_var", "σ² running_var"), ("weight", "γ weight"),
             ("bias", "β bias"), ("scale", "scale γ/√(σ²+ε)"))
ABSENT = {"running_mean": "no running statistics", "running_var": "no running statistics",
          "weight": "absent (affine=False: γ = 1)", "bias": "absent (affine=False: β = 0)",
          "scale": "not computable: no running statistics, or tensors of different lengths"}


def require() -> None:
    """Import matplotlib, or raise ImportError when the extra is not installed.

    matplotlib logs through ``logging`` at import (building its font cache on a first run,
    an unwritable cache folder): messages meant for a developer that would land on our
    stderr as a second line. Below error level they are not ours to show.
    """
    logger = logging.getLogger("matplotlib")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.ERROR)
    import matplotlib  # noqa: F401
    import matplotlib.figure  # noqa: F401


def _envelope(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of a line through ``y`` by index: every point, or beyond ENVELOPE_ABOVE points the
    minimum and maximum of each bin (NaN-aware and silent: fmin/fmax skip NaN)."""
    n = y.size
    if n <= ENVELOPE_ABOVE:
        return np.arange(n, dtype=float), y
    starts = np.linspace(0, n, ENVELOPE_BINS + 1).astype(int)[:-1]
    lo, hi = np.fmin.reduceat(y, starts), np.fmax.reduceat(y, starts)
    ends = np.append(starts[1:], n) - 1
    x = np.repeat((starts + ends) / 2, 2)
    out = np.empty(x.size)
    out[0::2], out[1::2] = lo, hi
    return x, out


def _finite(values: np.ndarray) -> np.ndarray:
    """float64 with ±Inf as NaN: matplotlib leaves gaps for NaN, and Inf would break the limits."""
    v = np.asarray(values, dtype=float).copy()
    v[~np.isfinite(v)] = np.nan
    return v


def _svg(fig) -> str:  # type: ignore[no-untyped-def]
    """The figure as an <svg> element for inlining (no XML prolog, no DOCTYPE, no date)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]


def drawable_marks(marks: dict[int, list[str]]) -> tuple[dict[int, list[str]], list[str]]:
    """The marks to draw (channel → codes), and the codes left out because each names more than
    MAX_MARKS channels."""
    counts: dict[str, int] = {}
    for codes in marks.values():
        for code in codes:
            counts[code] = counts.get(code, 0) + 1
    many = sorted(code for code, n in counts.items() if n > MAX_MARKS)
    drawn = {c: [code for code in codes if code not in many] for c, codes in marks.items()}
    return {c: codes for c, codes in drawn.items() if codes}, many


def _severity(codes: Sequence[str], severities: dict[str, str]) -> str:
    """The most severe severity among the findings ``codes`` name."""
    return min((severities.get(c, "info") for c in codes), key=SEVERITIES.index)


class _Panel:
    """One axes with its persistent artists: a data line, a marker line per severity, a note."""

    def __init__(self, ax: Axes, drawstyle: str = "default", color: str = LINE) -> None:
        from matplotlib.ticker import MaxNLocator

        self.ax = ax
        ax.xaxis.set_major_locator(MaxNLocator(6, integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(4))
        (self.line,) = ax.plot([], [], lw=0.8, color=color, drawstyle=drawstyle)
        self.marks = {s: ax.plot([], [], ls="", marker=m, color=c, ms=5, mec="black", mew=0.4)[0]
                      for s, (m, c) in SEVERITY_STYLE.items()}
        self.note = ax.text(0.5, 0.5, "", transform=ax.transAxes, ha="center", va="center", color="#555555")

    def show(self, x: np.ndarray, y: np.ndarray, marks: dict[str, tuple[list[float], list[float]]] | None = None,
             note: str = "") -> None:
        """Draw ``y`` over ``x`` with ``marks`` (severity → points); ``note`` where nothing is drawn."""
        self.line.set_data(x, y)
        for severity, artist in self.marks.items():
            artist.set_data(*(marks or {}).get(severity, ([], [])))
        self.note.set_text(note)
        ax = self.ax
        ax.relim()
        if x.size:  # an empty panel keeps the limits its column shares
            ax.set_xlim(-0.5, max(float(np.nanmax(x)), 0.0) + 0.5)
        finite = y[np.isfinite(y)] if y.size else y
        if finite.size:
            ax.autoscale_view(scalex=False)
        else:
            ax.set_ylim(0, 1)


class Figures:
    """The figures of one report; each ``*_svg`` method redraws one figure object and returns it as SVG."""

    def __init__(self) -> None:
        self._layer = None
        self._drift_layer = None
        self._diff_layer = None

    # ── one layer's channels ────────────────────────────────────────────────────────────────

    def _layer_figure(self):  # type: ignore[no-untyped-def]
        if self._layer is None:
            from matplotlib.figure import Figure

            fig = Figure(figsize=(9, 7.6))
            # Shared channel axes: tick labels on the bottom row only, a fifth of the text to lay out.
            axes = fig.subplots(len(PAGE_ROWS), 2, sharex="col")
            fig.subplots_adjust(left=0.075, right=0.985, top=0.965, bottom=0.06, hspace=0.18, wspace=0.14)
            panels = []
            for r, (_, label) in enumerate(PAGE_ROWS):
                by_index, ranked = _Panel(axes[r][0], drawstyle="steps-mid"), _Panel(axes[r][1], color=SORTED)
                axes[r][0].set_ylabel(label)
                panels.append((by_index, ranked))
            axes[0][0].set_title("by channel index")
            axes[0][1].set_title("sorted (each channel at its rank)")
            axes[-1][0].set_xlabel("channel")
            axes[-1][1].set_xlabel("rank")
            self._layer = (fig, panels)
        return self._layer

    def layer_svg(self, values: dict[str, np.ndarray], marks: dict[int, list[str]], severities: dict[str, str]) -> str:
        """μ, σ², γ, β and scale by channel and sorted, the channels findings name marked by
        severity (``marks`` as drawable_marks leaves them)."""
        fig, panels = self._layer_figure()
        for (name, _), (by_index, ranked) in zip(PAGE_ROWS, panels):
            raw = values.get(name)
            if raw is None:
                empty = np.zeros(0)
                by_index.show(empty, empty, note=ABSENT[name])
                ranked.show(empty, empty, note=ABSENT[name])
                continue
            y = _finite(raw)
            order = np.argsort(y, kind="stable")  # NaN last
            rank = np.empty(y.size, dtype=int)
            rank[order] = np.arange(y.size)
            points: dict[str, tuple[list[float], list[float]]] = {}
            ranked_points: dict[str, tuple[list[float], list[float]]] = {}
            for channel in sorted(c for c in marks if c < y.size):
                if math.isnan(y[channel]):
                    continue
                severity = _severity(marks[channel], severities)
                points.setdefault(severity, ([], []))
                points[severity][0].append(channel)
                points[severity][1].append(y[channel])
                ranked_points.setdefault(severity, ([], []))
                ranked_points[severity][0].append(rank[channel])
                ranked_points[severity][1].append(y[channel])
            note = "" if np.isfinite(y).any() else "no finite values"
            by_index.line.set_drawstyle("steps-mid" if y.size <= STEPS_UP_TO else "default")
            by_index.show(*_envelope(y), points, note)
            ranked.show(*_envelope(y[order]), ranked_points, note)
        return _svg(fig)

    # ── drift ───────────────────────────────────────────────────────────────────────────────

    def _drift_layer_figure(self):  # type: ignore[no-untyped-def]
        if self._drift_layer is None:
            from matplotlib.figure import Figure

            fig = Figure(figsize=(9, 4.6))
            axes = fig.subplots(3, 1)
            fig.subplots_adjust(left=0.075, right=0.985, top=0.93, bottom=0.1, hspace=0.5)
            panels = [_Panel(ax, drawstyle="steps-mid") for ax in axes]
            axes[0].set_ylabel("mean shift (σ)")
            axes[1].set_ylabel("var ratio")
            axes[2].set_ylabel("error (σ)")
            axes[0].set_title("running statistics vs the data, per channel")
            axes[2].set_xlabel("channel")
            for ax, level in ((axes[0], 0.0), (axes[1], 1.0)):
                ax.axhline(level, color="#999999", lw=0.6, ls=":")
            self._drift_layer = (fig, panels)
        return self._drift_layer

    def layer_drift_svg(self, layer: LayerDrift) -> str:
        """One layer's drift per channel: mean shift (in σ), variance ratio, normalized-output error."""
        fig, panels = self._drift_layer_figure()
        worst = set(layer.worst_channels)
        for panel, series in zip(panels, (layer.mean_shift, layer.var_ratio, layer.channel_error)):
            y = _finite(np.asarray(series, dtype=float))
            chosen = sorted(c for c in worst if c < y.size and not math.isnan(y[c]))
            panel.show(*_envelope(y), {"warning": (chosen, [y[c] for c in chosen])},
                       "" if y.size else "not measured")
        return _svg(fig)

    def drift_svg(self, result: DriftResult) -> str:
        """Drift score per layer (with --max-drift), and train-mode error by batch size (median and worst layer)."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(9, 3.6))
        score_ax, batch_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.6, 1]})
        fig.subplots_adjust(left=0.07, right=0.985, top=0.88, bottom=0.16, wspace=0.22)
        score = _Panel(score_ax, drawstyle="steps-mid")
        scores = _finite(np.array([l.drift_score if l.drift_score is not None else np.nan for l in result.layers]))
        over = [i for i, l in enumerate(result.layers) if l.exceeds and l.drift_score is not None][:MAX_MARKS]
        score.show(*_envelope(scores), {"error": (over, [scores[i] for i in over])},
                   "" if np.isfinite(scores).any() else "no layer measured")
        score_ax.set_title("drift score per layer (RMS error of the normalized output, in σ)")
        score_ax.set_xlabel("layer (in call order)")
        if not result.synthetic:
            score_ax.axhline(result.max_drift, color=SEVERITY_STYLE["error"][1], lw=0.8, ls="--")
        sizes, worst, median = [], [], []
        for size in result.batch_sizes:
            errors = [b.output_error for l in result.layers for b in l.by_batch_size
                      if b.batch_size == size and b.output_error is not None and math.isfinite(b.output_error)]
            if errors:
                sizes.append(size)
                worst.append(max(errors))
                median.append(float(np.median(errors)))
        if sizes:
            batch_ax.plot(sizes, worst, marker="o", ms=3, lw=0.9, color=SEVERITY_STYLE["error"][1], label="worst layer")
            batch_ax.plot(sizes, median, marker="o", ms=3, lw=0.9, color=LINE, label="median layer")
            batch_ax.axhline(result.batch_tolerance, color="#999999", lw=0.8, ls="--")
            batch_ax.set_xscale("log", base=2)
            batch_ax.set_xticks(sizes, [str(s) for s in sizes])
            batch_ax.legend(loc="upper right", fontsize=7, frameon=False)
        else:
            batch_ax.text(0.5, 0.5, "not measured", transform=batch_ax.transAxes, ha="center", va="center")
        batch_ax.set_title("train-mode error by batch size (σ)")
        batch_ax.set_xlabel("batch size")
        return _svg(fig)

    # ── diff ────────────────────────────────────────────────────────────────────────────────

    def _diff_layer_figure(self):  # type: ignore[no-untyped-def]
        if self._diff_layer is None:
            from matplotlib.figure import Figure

            fig = Figure(figsize=(9, 2.6))
            ax = fig.subplots(1, 1)
            fig.subplots_adjust(left=0.075, right=0.8, top=0.88, bottom=0.2)
            ax.set_title("largest relative difference |a − b|/|a| per channel (log scale; 0 not drawn)")
            ax.set_xlabel("channel")
            self._diff_layer = (fig, ax)
        return self._diff_layer

    def layer_diff_svg(self, d: LayerDiff, channels: dict[str, ChannelDiff]) -> str | None:
        """Per channel, each tensor's largest relative difference (``channels``, by tensor; channels beyond
        tolerance marked); None where no channel differs at all (the page says so in words)."""
        series = [(t, _finite(channels[t.tensor].relative)) for t in d.tensors if t.tensor in channels]
        positive = [(t, np.where(y > 0, y, np.nan)) for t, y in series]
        if not any(np.isfinite(y).any() for _, y in positive):
            return None
        fig, ax = self._diff_layer_figure()
        for artist in [*ax.lines, *ax.collections]:
            artist.remove()
        if ax.get_legend() is not None:
            ax.get_legend().remove()
        for i, (t, y) in enumerate(positive):
            ax.plot(*_envelope(y), lw=0.8, drawstyle="steps-mid", color=f"C{i}", label=t.tensor)
            beyond = [c for c in np.flatnonzero(channels[t.tensor].beyond) if np.isfinite(y[c])]
            if 0 < len(beyond) <= MAX_MARKS:
                marker, colour = SEVERITY_STYLE["error"]
                ax.plot(beyond, y[beyond], ls="", marker=marker, color=colour, ms=5, mec="black", mew=0.4)
        ax.set_yscale("log")
        ax.relim()
        ax.autoscale_view()
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
        return _svg(fig)

    # ── the whole model ─────────────────────────────────────────────────────────────────────

    def overview_svg(self, rows: list[LayerRow]) -> str:
        """Per layer (in model order): the range of μ, of σ² and of |scale| over its channels, and
        which layers have findings, by severity."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(9, 5.4))
        axes = fig.subplots(4, 1, sharex=True, gridspec_kw={"height_ratios": [3, 3, 3, 1.3]})
        fig.subplots_adjust(left=0.075, right=0.985, top=0.95, bottom=0.09, hspace=0.25)
        x = np.arange(len(rows), dtype=float)
        titles = ("μ running_mean: min … max over channels", "σ² running_var: min … max (log)",
                  "|scale|: min … max (log)")
        for ax, attr, title, log in zip(axes, ("running_mean", "running_var", "scale"), titles, (False, True, True)):
            low, high = _ranges([getattr(r.series, attr) for r in rows], absolute=attr == "scale", positive=log)
            xs, lo = _envelope_band(x, low, np.fmin)
            _, hi = _envelope_band(x, high, np.fmax)
            if np.isfinite(lo).any() and np.isfinite(hi).any():
                ax.fill_between(xs, lo, hi, step="mid", color=LINE, alpha=0.35, lw=0)
                ax.plot(xs, hi, drawstyle="steps-mid", color=LINE, lw=0.6)
                ax.plot(xs, lo, drawstyle="steps-mid", color=LINE, lw=0.6)
                if log:
                    ax.set_yscale("log")
            else:
                ax.text(0.5, 0.5, "no finite values", transform=ax.transAxes, ha="center", va="center")
            ax.set_title(title, loc="left")
        found = axes[-1]
        for level, severity in enumerate(SEVERITIES):
            hit = [r.index for r in rows if any(f.severity == severity for f in r.findings)]
            if len(hit) > ENVELOPE_BINS:  # one mark per bin that has a layer with this severity
                hit = sorted({int(i * ENVELOPE_BINS / len(rows)) for i in hit})
                hit = [(b + 0.5) * len(rows) / ENVELOPE_BINS for b in hit]
            marker, colour = SEVERITY_STYLE[severity]
            found.plot(hit, [len(SEVERITIES) - level] * len(hit), ls="", marker=marker, color=colour, ms=5,
                       mec="black", mew=0.4)
        if not any(r.findings for r in rows):
            found.text(0.5, 0.5, "none", transform=found.transAxes, ha="center", va="center", color="#555555")
        found.set_ylim(0.3, len(SEVERITIES) + 0.7)
        found.set_yticks(range(len(SEVERITIES), 0, -1), list(SEVERITIES))
        found.set_title("layers with findings", loc="left")
        found.set_xlabel("layer (model order, as in the table below)")
        found.set_xlim(-0.5, max(len(rows) - 0.5, 0.5))
        from matplotlib.ticker import MaxNLocator

        found.xaxis.set_major_locator(MaxNLocator(10, integer=True))
        return _svg(fig)


def _ranges(series: list[np.ndarray | None], absolute: bool, positive: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per layer, the min and max of its finite values (NaN where none; only > 0 for a log axis)."""
    low, high = np.full(len(series), np.nan), np.full(len(series), np.nan)
    for i, values in enumerate(series):
        if values is None or not values.size:
            continue
        v = np.abs(values) if absolute else values
        keep = np.isfinite(v) & (v > 0) if positive else np.isfinite(v)
        if keep.any():
            low[i], high[i] = float(v[keep].min()), float(v[keep].max())
    return low, high


def _envelope_band(x: np.ndarray, y: np.ndarray, reduce) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """``y`` over ``x``, or beyond ENVELOPE_ABOVE layers one value per bin (``reduce``: np.fmin or np.fmax)."""
    n = y.size
    if n <= ENVELOPE_ABOVE:
        return x, y
    starts = np.linspace(0, n, ENVELOPE_BINS + 1).astype(int)[:-1]
    ends = np.append(starts[1:], n) - 1
    return (starts + ends) / 2, reduce.reduceat(y, starts)


@contextlib.contextmanager
def figures() -> Iterator[Figures]:
    """The report's figures under the report's matplotlib settings (the caller's are restored after)."""
    import matplotlib

    with matplotlib.rc_context(_RC):
        yield Figures()
