"""`explain`: what the numbers of one BN layer mean, told with the layer's own values.

The result is the explanation itself (titled sections of prose) plus the numbers behind it,
so the text renderer and the JSON document say the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bninspect.errors import InvalidFileError, UsageError
from bninspect.checkpoint import Checkpoint
from bninspect.layers import BNLayer
from bninspect.numerics.reference import channel_fold, channel_output, initial_weight, std
from bninspect.textfmt import num
from bninspect.services.common import find_layer, open_layers, source_name, zero_eps_warnings
from bninspect.services.series import ChannelSeries, layer_series, rule_marks
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
    format: str  # the file's format id (show's), whose terms the sections use
    layer: LayerSummary
    sections: list[Section]
    channel: ChannelWalk | None = None
    numbers: dict[str, float | int | None] = field(default_factory=dict)
    # μ, σ², scale and the channels check rules name, for the terminal's picture (not in JSON).
    _series: ChannelSeries | None = field(default=None, repr=False, compare=False)


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
    scale, shift = channel_fold(m, v, g, b, e)
    sd = std(v)

    def y(x: float) -> float:
        return channel_output(x, m, v, g, b, e)

    examples = [
        {"input": "x = μ (the channel's average input)", "x": m, "y": y(m)},
        {"input": "x = μ + σ (one running standard deviation above)", "x": m + sd, "y": y(m + sd)},
        {"input": "x = μ − σ", "x": m - sd, "y": y(m - sd)},
        {"input": "x = 0", "x": 0.0, "y": y(0.0)},
    ]
    return ChannelWalk(i, g, b, m, v, e, scale, shift, examples)


@dataclass(frozen=True)
class Dialect:
    """How the file's format names and keeps a BatchNorm, so that every sentence fits the file:
    what it stores, in its own convention, with PyTorch's equivalent beside it."""

    family: str  # "pytorch" (state dicts, TorchScript, pickled modules) | "onnx" | "openvino"
    what: str  # "a BatchNorm2d", "an ONNX BatchNormalization node ('/bn/BatchNormalization')"
    names: dict[str, str]  # PyTorch's tensor name → the file's (ONNX: weight → scale)
    eps_from: str  # where ε comes from, in words
    holder: str  # what keeps the module facts here: "a state dict", "the TorchScript module", ...
    attributes: dict  # the format's own facts (ONNX momentum, attributes set, opset)

    def name(self, tensor: str) -> str:
        """The file's name for a tensor, with PyTorch's beside it where they differ."""
        own = self.names.get(tensor, tensor)
        return own if own == tensor else f"{own} (PyTorch's {tensor})"


# ONNX BatchNormalization inputs (onnx/docs/Operators.md): X, scale, B, then mean and var up to
# opset 9 and input_mean, input_var from opset 14 (BatchNormalization-14/15).
_ONNX_NAMES = {"weight": "scale", "bias": "B", "running_mean": "input_mean", "running_var": "input_var"}
_ONNX_OLD_NAMES = {**_ONNX_NAMES, "running_mean": "mean", "running_var": "var"}
# OpenVINO BatchNormInference inputs (opset1 and opset5): data, gamma, beta, mean, variance.
_IR_NAMES = {"weight": "gamma", "bias": "beta", "running_mean": "mean", "running_var": "variance"}
_MODULE_HOLDERS = {"torchscript": "the TorchScript module", "pickled-module": "the pickled module",
                   "live-module": "the module"}


def dialect(checkpoint: Checkpoint, layer: BNLayer) -> Dialect:
    """The terms of ``layer``'s file: names, where eps and momentum come from, what a user can do."""
    info = checkpoint.modules.get(layer.key_prefix)
    attrs = dict(info.attributes) if info is not None else {}
    fmt = checkpoint.format
    if fmt == "onnx":
        opset = attrs.get("onnx_opset")
        set_here = attrs.get("onnx_attributes", ())
        eps_from = ("the node's epsilon attribute" if "epsilon" in set_here
                    else "ONNX's default: the node sets no epsilon attribute")
        node = attrs.get("onnx_node") or layer.key_prefix
        names = _ONNX_OLD_NAMES if isinstance(opset, int) and opset < 14 else _ONNX_NAMES
        return Dialect("onnx", f"an ONNX BatchNormalization node ('{node}', PyTorch: {layer.kind})", names,
                       _user_eps(layer) or eps_from, "the ONNX node", attrs)
    if fmt == "openvino-ir":
        what = f"an OpenVINO BatchNormInference layer ('{attrs.get('ir_layer', layer.key_prefix)}', PyTorch: {layer.kind})"
        return Dialect("openvino", what, _IR_NAMES, _user_eps(layer) or "the layer's epsilon attribute",
                       "the IR", attrs)
    holder = _MODULE_HOLDERS.get(fmt, "the saved module" if layer.eps_source == "module" else
                                 "a safetensors file" if fmt == "safetensors" else "a state dict")
    eps_from = (_user_eps(layer) or (f"stored in {holder}" if layer.eps_source == "module" else
                f"PyTorch's default; {holder} does not store eps, pass --eps if the model used another"))
    return Dialect("pytorch", f"a {layer.kind}", {}, eps_from, holder, attrs)


def _modern(d: Dialect) -> bool:
    """An ONNX node of opset 14 or later: it has the training_mode attribute."""
    opset = d.attributes.get("onnx_opset")
    return not isinstance(opset, int) or opset >= 14


def _user_eps(layer: BNLayer) -> str:
    return "from --eps" if layer.eps_source == "user" else ""


def _sections(layer: BNLayer, walk: ChannelWalk | None, d: Dialect) -> list[Section]:
    c = layer.channels
    name = layer.name
    p = layer.producer
    mean, var = layer.values("running_mean"), layer.values("running_var")
    fed = (f"the {c} output channels of {p.name} ({p.kind}, {p.out_channels} outputs)" if p
           else f"the {c} channels of its input ({layer.producer_note})")
    present = [d.names.get(n, n) for n in ("weight", "bias", "running_mean", "running_var") if layer.has(n)]
    out = [Section("What the numbers are", [
        f"{name} is {d.what} over {c} channels. Each of its tensors ({', '.join(present) or 'none'}) holds {c} numbers: "
        f"one per channel, not one per layer. Entry i of every tensor belongs to input channel i, and the input is {fed}. "
        f"BatchNorm normalizes each channel separately over the batch and the spatial positions, so every channel has "
        + ("its own weight γ_i, bias β_i, running mean μ_i and running variance σ²_i." if not d.names else
           f"its own {d.names['weight']} γ_i, {d.names['bias']} β_i, {d.names['running_mean']} μ_i and "
           f"{d.names['running_var']} σ²_i (PyTorch's weight, bias, running_mean and running_var)."),
        f"Here: {d.names.get('weight', 'weight')} γ = {_first(layer.values('weight'))}, "
        f"{d.names.get('bias', 'bias')} β = {_first(layer.values('bias'))}, "
        f"{d.names.get('running_mean', 'running_mean')} μ = {_first(mean)}, "
        f"{d.names.get('running_var', 'running_var')} σ² = {_first(var)}"
        + ("" if layer.affine is not False else " (affine=False: γ = 1 and β = 0 for every channel)") + ".",
    ])]
    if mean is not None and var is not None:
        scale, shift = layer.folded()
        out.append(Section("Inference (eval mode)" if d.family == "pytorch" else "Inference", [
            _inference(layer, d),
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
    out.append(Section("Training (train mode)" if d.family == "pytorch" else "Training", _training(layer, d)))
    out.append(Section("num_batches_tracked" if d.family == "pytorch" else "Update count", [_count(layer, d, mean, var)]))
    if walk is not None:
        sd = std(walk.running_var)
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


def _inference(layer: BNLayer, d: Dialect) -> str:
    """The inference formula, in the file's terms where they differ from PyTorch's."""
    folded = ("The running statistics are fixed numbers, so this is one multiply-add per channel: y_i = scale_i·x_i + "
              "shift_i with scale_i = γ_i/√(σ²_i + ε) and shift_i = β_i − μ_i·scale_i.")
    pytorch = "y_i = γ_i·(x_i − μ_i)/√(σ²_i + ε) + β_i"
    if d.family == "onnx":
        n = d.names
        mode = ("This node has training_mode=1: a runtime normalizes with batch statistics instead (see Training). "
                if layer.training else "")
        when = "With training_mode=0 (the default) the node" if _modern(d) else "Inferring (one output, Y), the node"
        return (f"{mode}{when} outputs Y_i = {n['weight']}_i·(X_i − {n['running_mean']}_i)"
                f"/√({n['running_var']}_i + epsilon) + {n['bias']}_i, with epsilon = {layer.eps:g} ({d.eps_from}): "
                f"PyTorch's eval mode, {pytorch} with ε = {layer.eps:g}. {folded}")
    if d.family == "openvino":
        return (f"BatchNormInference outputs (data_i − mean_i)/√(variance_i + epsilon)·gamma_i + beta_i, with "
                f"epsilon = {layer.eps:g} ({d.eps_from}): PyTorch's eval mode, {pytorch} with ε = {layer.eps:g}. {folded}")
    return (f"In eval mode (after model.eval()) channel i of the output is {pytorch}, with ε = {layer.eps:g} "
            f"({d.eps_from}). {folded}")


_OTHER_CONVENTIONS = ("Other frameworks write the same update with the complement: Keras/TensorFlow's moving = "
                      "decay·moving + (1 − decay)·batch, so decay 0.99 there is momentum 0.01 here; ONNX "
                      "BatchNormalization's momentum 0.9 is PyTorch's 0.1. Keras also defaults to ε = 1e-3 where "
                      "PyTorch uses 1e-5.")


def _training(layer: BNLayer, d: Dialect) -> list[str]:
    """How training normalizes and updates the statistics, in the file's convention."""
    if d.family == "openvino":
        return ["BatchNormInference is inference only: the IR keeps no momentum, no training mode and no update rule. "
                "The statistics are what training left: in PyTorch, new = (1 − m)·old + m·batch with momentum m = 0.1 "
                "by default, running_var from the unbiased batch variance; in Keras/TensorFlow, moving = "
                "decay·moving + (1 − decay)·batch with decay 0.99 (PyTorch's momentum 0.01)."]
    if d.family == "onnx":
        stored = d.attributes.get("onnx_momentum")
        set_here = "momentum" in d.attributes.get("onnx_attributes", ())
        m = layer.momentum
        source = "the node's momentum attribute" if set_here else "ONNX's default: the node sets no momentum attribute"
        mode = ("This node has training_mode=1: it normalizes with the batch's statistics and outputs updated ones. "
                if layer.training else "This node has training_mode=0: it normalizes with the stored statistics and "
                "updates nothing. " if _modern(d) else
                f"Before opset 14 (this file: opset {d.attributes.get('onnx_opset')}) a node trains when it has the "
                "outputs for updated statistics besides Y; bninspect reads its stored statistics either way. ")
        return [
            f"This file stores ONNX momentum = {num(stored) if stored is not None else '?'} ({source}). ONNX's momentum "
            f"weighs the running value: running = momentum·running + (1 − momentum)·batch. PyTorch writes the same "
            f"update with the complement, new = (1 − m)·old + m·batch: this is PyTorch's momentum m = "
            f"{num(m) if m is not None else '?'}.",
            f"{mode}When it trains, the operator's reference implementation (onnx.reference) updates "
            f"{d.names['running_var']} with the batch's population (biased) variance, where PyTorch's running_var "
            "takes the unbiased one (divided by n − 1).",
            "Keras/TensorFlow's decay is ONNX's momentum (moving = decay·moving + (1 − decay)·batch): decay 0.99 is "
            "ONNX momentum 0.99 and PyTorch momentum 0.01. Keras also defaults to ε = 1e-3 where PyTorch and ONNX use 1e-5.",
        ]
    m = layer.momentum
    if m is None:  # only a saved module says None (discovery gives state dicts the default)
        mom_text = (f"momentum=None (stored in {d.holder}): the running statistics are a cumulative average, "
                    "new = old + (batch − old)/k after the k-th batch, with k = num_batches_tracked.")
    else:
        src = (f"stored in {d.holder}" if layer.momentum_source == "module"
               else f"PyTorch's default; not stored in {d.holder}")
        mom_text = (f"m = momentum = {m:g} ({src}). After k updates the initial value (μ = 0, σ² = 1) still weighs "
                    f"(1−m)^k: {initial_weight(m, 100):.3g} after 100 batches, {initial_weight(m, 1000):.3g} after 1000.")
    return [
        "In train mode (model.train()) BatchNorm ignores the running statistics for its output: it normalizes with the "
        "current batch's per-channel mean and biased variance (over N and the spatial positions). It then updates the "
        "running statistics: new = (1 − m)·old + m·batch, where running_var receives the unbiased batch variance "
        "(divided by n − 1, n = values per channel in the batch). " + mom_text,
        _OTHER_CONVENTIONS,
    ]


def _count(layer: BNLayer, d: Dialect, mean: np.ndarray | None, var: np.ndarray | None) -> str:
    """What the update counter says (PyTorch) or that the format has none (ONNX, OpenVINO)."""
    from bninspect.rules.statistics import is_default

    looks_default = mean is not None and var is not None and is_default(layer)
    tail = (" Here running_mean is exactly 0 and running_var exactly 1 in every channel: these are the initial "
            "values, so this layer never saw data in train mode and inference normalizes nothing."
            if looks_default else
            " Here the statistics differ from the initial μ = 0, σ² = 1, so they were computed from data."
            if mean is not None else "")
    if d.family != "pytorch":
        operator = "ONNX's BatchNormalization" if d.family == "onnx" else "OpenVINO's BatchNormInference"
        return (f"{operator} keeps no count of updates: PyTorch's num_batches_tracked has no counterpart in this file "
                "(PyTorch needs it only for momentum=None, a cumulative average the format cannot express). A model "
                "rebuilt in PyTorch from these numbers starts its count at 0, which proves nothing about the "
                "statistics: judge them by their values." + tail)
    n = layer.num_batches_tracked
    if n is None:
        nbt = ("num_batches_tracked is absent: saved before PyTorch 0.4.1 or by a converter. A strict "
               "load_state_dict into a current BatchNorm reports it missing; load with strict=False or add a zero tensor.")
    else:
        nbt = (f"num_batches_tracked = {n}: the number of train-mode forward passes that updated this layer's running "
               "statistics. It is only used to compute the factor when momentum=None. It does not prove the statistics "
               "are trained or untrained: a checkpoint converted from another framework can carry trained statistics "
               "with num_batches_tracked = 0. Judge the statistics by their values.")
    return nbt + tail


def explain(path: str, layer_name: str, *, channel: int | None = None, key: str | None = None,
            eps: float | None = None, trust: bool = False, strict: bool = False) -> ExplainResult:
    """Explain one BN layer of ``path`` with its own numbers; ``channel`` works one channel through."""
    found = open_layers(path, trust=trust, key=key, strict=strict, eps=eps)
    path = source_name(path)  # a live module (Python API) is named, not printed
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
    d = dialect(found.checkpoint, layer)
    return ExplainResult(file=path, format=found.checkpoint.format, layer=summary, sections=_sections(layer, walk, d),
                         channel=walk,
                         numbers={"channels": layer.channels, "eps": layer.eps, "momentum": layer.momentum,
                                  "num_batches_tracked": layer.num_batches_tracked,
                                  "onnx_momentum": d.attributes.get("onnx_momentum") if d.family == "onnx" else None},
                         _series=layer_series(layer, rule_marks([layer], found.checkpoint).get(layer.name)))
