"""Per-channel series for pictures: a layer's values by channel, and the channels `check` names.

The terminal pictures (`show --channels`, `explain`) and the HTML report draw the same data:
running_mean (μ), running_var (σ²) and scale = γ/√(σ²+ε) channel by channel, with the
channels that a check rule names (BN001 non-finite, BN105 zero variance, BN106 extreme
scale, BN107 dead γ, BN108 outliers, ...) marked. Marks come from the rules themselves, so a
picture marks exactly what `bninspect check` reports: nothing on a healthy checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    import numpy as np

    from bninspect.checkpoint import Checkpoint
    from bninspect.layers import BNLayer
    from bninspect.rules import Finding


@dataclass
class ChannelSeries:
    """One layer's per-channel values for a picture (float64; None where the layer lacks them)."""

    running_mean: np.ndarray | None
    running_var: np.ndarray | None
    scale: np.ndarray | None  # γ/√(σ²+ε); None without running statistics or when lengths differ
    marks: dict[int, list[str]] = field(default_factory=dict)  # channel → codes of the findings naming it


def channel_marks(findings: Iterable[Finding]) -> dict[str, dict[int, list[str]]]:
    """Layer name → channel → codes of the findings that name that channel (in finding order)."""
    out: dict[str, dict[int, list[str]]] = {}
    for f in findings:
        if not f.channels:
            continue
        layer = out.setdefault(f.layer, {})
        for c in f.channels:
            codes = layer.setdefault(c, [])
            if f.code not in codes:
                codes.append(f.code)
    return out


def rule_marks(layers: list[BNLayer], checkpoint: Checkpoint | None) -> dict[str, dict[int, list[str]]]:
    """Marks from every per-layer check rule at its default thresholds, on ``layers`` only.

    Model-wide rules (BN103, BN203) compare layers with each other and name no channels.
    """
    from bninspect.rules import Context, run_rules, select_rules

    rules = [r for r in select_rules() if r.scope == "layer"]
    return channel_marks(run_rules(Context(layers=list(layers), checkpoint=checkpoint), rules))


def layer_series(layer: BNLayer, marks: dict[int, list[str]] | None = None) -> ChannelSeries:
    """μ, σ² and scale of ``layer`` by channel, with ``marks`` (channel → codes)."""
    mean, var = layer.values("running_mean"), layer.values("running_var")
    scale = None
    if mean is not None and var is not None and layer.shape_problem() is None:
        scale, _ = layer.folded()
    return ChannelSeries(running_mean=mean, running_var=var, scale=scale, marks=dict(marks or {}))
