"""`explain`: what the numbers of one BN layer mean, told with the layer's own values.

The result is the explanation itself (titled sections of prose) plus the numbers behind it,
so the text renderer and the JSON document say the same thing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from bninspect.errors import InvalidFileError, UsageError
from bninspect.layers import BNLayer
from bninspect.textfmt import num
from bninspect.services.common import find_layer, open_layers, zero_eps_warnings
from bninspect.services.show import LayerSummary, summarize


@dataclass
class Section:
    title: str
    paragraphs: list[str]


@dataclass
class ChannelWalk:
    """One channel worked through: its numbers and y for a few telling inputs (eval mode)."""

    index: int
    weight: float
    bias: float
    running_mean: float
    running_var: float
    eps: float
    scale: float
    shift: float
    examples: list[dict[str, float | str]]  # {"input": "μ", "x": ..., "y": ...}


@dataclass
class ExplainResult:
    file: str
    layer: LayerSummary
    sections: list[Section]
    channel: ChannelWalk | None = None
    numbers: dict[str, float | int | None] = field(default_factory=dict)


def _first(values: np.ndarray | None, k: int = 4) -> str:
    if values is None:
        return "absent"
    shown = ", ".join(num(v) for v in values[:k])
    return f"[{shown}{', …' if values.size > k else ''}]"


def _channel_walk(layer: BNLayer, i: int) -> ChannelWalk:
    """Work channel i through y = γ·(x−μ)/√(σ²+ε)+β with its own numbers, in float64."""
    gamma, beta = layer.gamma(), layer.beta()
    mean, var = layer.values("running_mean"), layer.values("running_var")
    assert mean is not None and var is not None
    g, b, m, v, e = float(gamma[i]), float(beta[i]), float(mean[i]), float(var[i]), layer.eps
    scale = g / math.sqrt(v + e) if v + e > 0 else float("nan")
    shift = b - m * scale
    sd = math.sqrt(v) if v >= 0 else float("nan")

    def y(x: float) -> float:
        # eval mode: y = γ·(x − μ)/√(σ² + ε) + β, the same as scale·x + shift
        return g * (x - m) / math.sqrt(v + e) + b if v + e > 0 else float("nan")

    examples = [
        {"input": "x = μ (the channel's average input)", "x": m, "y": y(m)},
        {"input": "x = μ + σ (one running standard deviation above)", "x": m + sd, "y": y(m + sd)},
        {"input": "x = μ − σ", "x": m - sd, "y": y(m - sd)},
        {"input": "x = 0", "x": 0.0, "y": y(0.0)},
    ]
    return ChannelWalk(i, g, b, m, v, e, scale, shift, examples)


def _sections(layer: BNLayer, walk: ChannelWalk | None) -> list[Section]:
    c = layer.channels
    name = layer.name
    p = layer.producer
    mean, var = layer.values("running_mean"), layer.values("running_var")
    fed = (f"the {c} output channels of {p.name} ({p.kind}, {p.out_channels} outputs)" if p
           else f"the {c} channels of its input ({layer.producer_note})")
    present = [n for n in ("weight", "bias", "running_mean", "running_var") if layer.has(n)]
    out = [Section("What the numbers are", [
        f"{name} is a {layer.kind} over {c} channels. Each of its tensors ({', '.join(present) or 'none'}) holds {c} numbers: "
        f"one per channel, not one per layer. Entry i of every tensor belongs to input channel i, and the input is {fed}. "
        f"BatchNorm normalizes each channel separately over the batch and the spatial positions, so every channel has "
        f"its own weight γ_i, bias β_i, running mean μ_i and running variance σ²_i.",
        f"Here: weight γ = {_first(layer.values('weight'))}, bias β = {_first(layer.values('bias'))}, "
        f"running_mean μ = {_first(mean)}, running_var σ² = {_first(var)}"
        + ("" if layer.affine is not False else " (affine=False: γ = 1 and β = 0 for every channel)") + ".",
    ])]
    eps_from = {"module": "stored in the saved module", "user": "from --eps",
                "default": "PyTorch's default; a state dict does not store eps, pass --eps if the model used another"}[layer.eps_source]
    if mean is not None and var is not None:
        scale, shift = layer.folded()
        out.append(Section("Inference (eval mode)", [
            f"In eval mode (after model.eval()) channel i of the output is y_i = γ_i·(x_i − μ_i)/√(σ²_i + ε) + β_i, "
            f"with ε = {layer.eps:g} ({eps_from}). The running statistics are fixed numbers, so this is one "
            f"multiply-add per channel: y_i = scale_i·x_i + shift_i with scale_i = γ_i/√(σ²_i + ε) and "
            f"shift_i = β_i − μ_i·scale_i.",
            f"For this layer scale ranges over {num(float(np.min(scale)))} … {num(float(np.max(scale)))} and shift over "
            f"{num(float(np.min(shift)))} … {num(float(np.max(shift)))}. "
            + (f"Because {p.name} is a {p.kind} right before it, deployment tools can fold scale and shift into that "
               f"layer's weights and bias (only if nothing, such as a ReLU, sits between them)." if p else ""),
            *zero_eps_warnings([layer]),
        ]))
    else:
        out.append(Section("Inference", [
            "This layer has no running statistics (track_running_stats=False), so it normalizes every batch with that "
            "batch's own mean and variance even in eval mode: outputs depend on batch size and batch content.",
        ]))
    m = layer.momentum
    if m is None:  # only a saved module says None (discovery gives state dicts the default)
        mom_text = ("momentum=None (stored in the module): the running statistics are a cumulative average, "
                    "new = old + (batch − old)/k after the k-th batch, with k = num_batches_tracked.")
    else:
        mval = m
        src = "stored in the module" if layer.momentum_source == "module" else "PyTorch's default; not stored in a state dict"
        mom_text = (f"m = momentum = {mval:g} ({src}). After k updates the initial value (μ = 0, σ² = 1) still weighs "
                    f"(1−m)^k: {(1 - mval) ** 100:.3g} after 100 batches, {(1 - mval) ** 1000:.3g} after 1000.")
    out.append(Section("Training (train mode)", [
        "In train mode (model.train()) BatchNorm ignores the running statistics for its output: it normalizes with the "
        "current batch's per-channel mean and biased variance (over N and the spatial positions). It then updates the "
        "running statistics: new = (1 − m)·old + m·batch, where running_var receives the unbiased batch variance "
        "(divided by n − 1, n = values per channel in the batch). " + mom_text,
        "Other frameworks write the same update with the complement: Keras/TensorFlow's moving = decay·moving + "
        "(1 − decay)·batch, so decay 0.99 there is momentum 0.01 here; ONNX BatchNormalization's momentum 0.9 is "
        "PyTorch's 0.1. Keras also defaults to ε = 1e-3 where PyTorch uses 1e-5.",
    ]))
    n = layer.num_batches_tracked
    looks_default = (mean is not None and var is not None and mean.size and bool(np.all(mean == 0)) and bool(np.all(var == 1)))
    if n is None:
        nbt = ("num_batches_tracked is absent: saved before PyTorch 0.4.1 or by a converter. A strict "
               "load_state_dict into a current BatchNorm reports it missing; load with strict=False or add a zero tensor.")
    else:
        nbt = (f"num_batches_tracked = {n}: the number of train-mode forward passes that updated this layer's running "
               "statistics. It is only used to compute the factor when momentum=None. It does not prove the statistics "
               "are trained or untrained: a checkpoint converted from another framework can carry trained statistics "
               "with num_batches_tracked = 0. Judge the statistics by their values.")
    nbt_tail = (" Here running_mean is exactly 0 and running_var exactly 1 in every channel: these are the initial "
                "values, so this layer never saw data in train mode and inference normalizes nothing."
                if looks_default else
                " Here the statistics differ from the initial μ = 0, σ² = 1, so they were computed from data."
                if mean is not None else "")
    out.append(Section("num_batches_tracked", [nbt + nbt_tail]))
    if walk is not None:
        sd = math.sqrt(walk.running_var) if walk.running_var >= 0 else float("nan")
        lines = [
            f"Channel {walk.index}: γ = {num(walk.weight, 6)}, β = {num(walk.bias, 6)}, μ = {num(walk.running_mean, 6)}, "
            f"σ² = {num(walk.running_var, 6)} (σ = {num(sd, 6)}), ε = {walk.eps:g}. "
            f"scale = γ/√(σ²+ε) = {num(walk.scale, 6)}, shift = β − μ·scale = {num(walk.shift, 6)}."
            + (f" This channel is output channel {walk.index} of {p.name}." if p else ""),
        ]
        lines += [f"{ex['input']}: x = {num(float(ex['x']), 6)} gives y = {num(float(ex['y']), 6)}" for ex in walk.examples]
        lines.append("x = μ always gives y = β: the running mean is the input the layer maps to its bias.")
        out.append(Section(f"Channel {walk.index} worked through", lines))
    return out


def explain(path: str, layer_name: str, *, channel: int | None = None, key: str | None = None,
            eps: float | None = None, trust: bool = False, strict: bool = False) -> ExplainResult:
    """Explain one BN layer of ``path`` with its own numbers; ``channel`` works one channel through."""
    found = open_layers(path, trust=trust, key=key, strict=strict, eps=eps)
    if layer_name in found.malformed:  # there is such a layer, but its tensors do not fit together
        raise InvalidFileError(found.malformed[layer_name].message, path=path)
    layer = find_layer(found.layers + found.possible, layer_name)
    problem = layer.shape_problem()
    if problem:  # the numbers cannot be explained channel by channel when their lengths differ
        raise InvalidFileError(problem, path=path)
    walk = None
    if channel is not None:
        if not 0 <= channel < layer.channels:
            raise UsageError(f"--channel {channel} is out of range: {layer.name} has channels 0 to {layer.channels - 1}")
        if not (layer.has("running_mean") and layer.has("running_var")):
            raise UsageError(f"{layer.name} has no running statistics, so there is no fixed inference formula to work through")
        walk = _channel_walk(layer, channel)
    summary = summarize(layer)
    return ExplainResult(file=path, layer=summary, sections=_sections(layer, walk), channel=walk,
                         numbers={"channels": layer.channels, "eps": layer.eps, "momentum": layer.momentum,
                                  "num_batches_tracked": layer.num_batches_tracked})
