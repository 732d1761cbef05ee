"""`show`: every BN layer of a checkpoint with its tensors, statistics and producer, as plain data."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bninspect.checkpoint import FORMAT_NAMES
from bninspect.layers import TENSOR_NAMES, BNLayer, Discovery
from bninspect.numerics.reference import TORCH_EPS
from bninspect.services.common import open_layers, select, source_name, zero_eps_warnings
from bninspect.services.series import ChannelSeries, layer_series, rule_marks


@dataclass
class TensorInfo:
    key: str  # the original key in the file
    shape: list[int]
    dtype: str


@dataclass
class ProducerInfo:
    name: str
    key_prefix: str
    kind: str
    out_channels: int


@dataclass
class ChannelRow:
    """One channel i: the i-th entry of every BN tensor, and its folded inference form."""

    index: int
    weight: float  # γ (1 where affine=False)
    bias: float  # β (0 where affine=False)
    running_mean: float | None  # μ
    running_var: float | None  # σ²
    scale: float | None  # γ / √(σ² + ε)
    shift: float | None  # β − μ·scale
    producer_channel: str | None  # "features.2.dw_conv_k3 output 5"


@dataclass
class Stats:
    running_mean_min: float | None = None
    running_mean_max: float | None = None
    running_var_min: float | None = None
    running_var_max: float | None = None
    weight_abs_min: float | None = None


@dataclass
class LayerSummary:
    name: str
    key_prefix: str
    kind: str
    kind_source: str
    channels: int
    tensors: dict[str, TensorInfo]
    num_batches_tracked: int | None
    eps: float
    eps_source: str
    momentum: float | None
    momentum_source: str
    affine: bool | None
    track_running_stats: bool | None
    training: bool | None
    producer: ProducerInfo | None
    producer_note: str
    stats: Stats
    possible: bool = False
    evidence: str = ""
    per_channel: list[ChannelRow] | None = None
    # With per_channel: μ, σ², scale and the channels check rules name, for the terminal's
    # pictures. Private (not in the JSON document, which keeps the plain numbers).
    _series: ChannelSeries | None = field(default=None, repr=False, compare=False)


@dataclass
class ShowResult:
    file: str
    format: str
    format_name: str
    container: str
    alternatives: list[str]
    prefix: str
    eps_note: str
    layers: list[LayerSummary]
    possible: list[LayerSummary]
    other_norms: dict[str, int]
    total_layers: int  # BN layers selected (before --limit)
    omitted: int  # left out by --limit
    total_channels: int
    total_parameters: int  # γ and β values
    total_buffer_values: int  # running_mean, running_var and num_batches_tracked values
    notes: list[str] = field(default_factory=list)
    safety: Any = None  # what a real load of the file would run (formats.verdict.Verdict), where it has one


_PARAMETERS = ("weight", "bias")  # γ and β
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _stats(layer: BNLayer) -> Stats:
    s = Stats()
    mean, var, w = layer.values("running_mean"), layer.values("running_var"), layer.values("weight")
    # min/max propagate NaN on purpose: a NaN statistic must show, not hide behind nanmin.
    if mean is not None and mean.size:
        s.running_mean_min, s.running_mean_max = float(mean.min()), float(mean.max())
    if var is not None and var.size:
        s.running_var_min, s.running_var_max = float(var.min()), float(var.max())
    if w is not None and w.size:
        s.weight_abs_min = float(np.abs(w).min())
    return s


def per_channel(layer: BNLayer) -> list[ChannelRow]:
    """The per-channel table: entry i of every tensor belongs to input channel i."""
    n = layer.channels
    gamma, beta = layer.gamma(), layer.beta()
    mean, var = layer.values("running_mean"), layer.values("running_var")
    scale = shift = None
    if mean is not None and var is not None and mean.shape == var.shape == gamma.shape == beta.shape:
        scale, shift = layer.folded()
    def at(a: np.ndarray | None, i: int) -> float | None:
        return float(a[i]) if a is not None and i < a.size else None

    return [ChannelRow(index=i, weight=at(gamma, i), bias=at(beta, i), running_mean=at(mean, i),
                       running_var=at(var, i), scale=at(scale, i), shift=at(shift, i),
                       producer_channel=f"{layer.producer.name} output {i}" if layer.producer else None)
            for i in range(n)]


def summarize(layer: BNLayer, channels: bool = False, marks: dict[int, list[str]] | None = None) -> LayerSummary:
    """A layer as plain data (no TensorRefs), optionally with its per-channel table (and its
    pictures' series, with ``marks``: channel → codes of the check findings naming it)."""
    p = layer.producer
    return LayerSummary(
        name=layer.name, key_prefix=layer.key_prefix, kind=layer.kind, kind_source=layer.kind_source,
        channels=layer.channels,
        tensors={n: TensorInfo(f"{layer.key_prefix}.{n}" if layer.key_prefix else n, list(r.shape), r.dtype)
                 for n, r in sorted(layer.tensors.items(), key=lambda kv: TENSOR_NAMES.index(kv[0]))},
        num_batches_tracked=layer.num_batches_tracked, eps=layer.eps, eps_source=layer.eps_source,
        momentum=layer.momentum, momentum_source=layer.momentum_source, affine=layer.affine,
        track_running_stats=layer.track_running_stats, training=layer.training,
        producer=ProducerInfo(p.name, p.key_prefix, p.kind, p.out_channels) if p else None,
        producer_note=layer.producer_note, stats=_stats(layer), possible=layer.possible, evidence=layer.evidence,
        per_channel=per_channel(layer) if channels else None,
        _series=layer_series(layer, marks) if channels else None,
    )


# Where eps comes from in a format whose layers are modules or nodes, in the file's own terms.
_EPS_HOLDERS = {"onnx": "from the BatchNormalization nodes' epsilon attributes",
                "openvino-ir": "from the BatchNormInference layers' epsilon attributes",
                "torchscript": "stored in the TorchScript modules",
                "live-module": "the modules' own"}


def eps_note(layers: list[BNLayer], fmt: str = "") -> str:
    """Where eps comes from, in words: the state-dict assumption must be visible."""
    if not layers:
        return ""
    sources = {l.eps_source for l in layers}
    values = Counter(l.eps for l in layers)
    listed = ", ".join(f"{v:g}" + (f" ×{n}" if len(values) > 1 else "") for v, n in values.most_common())
    if sources == {"user"}:
        return f"eps: {listed} (from --eps)"
    if sources == {"default"}:
        return f"eps: {TORCH_EPS:g} (PyTorch default; not stored in this file — pass --eps if the model used another)"
    if sources == {"module"}:
        return f"eps: {listed} ({_EPS_HOLDERS.get(fmt, 'stored in the saved modules')})"
    return f"eps: {listed} (from the saved modules where present, else the PyTorch default {TORCH_EPS:g})"


def show(path: str, *, layers: list[str] | None = None, channels: bool = False, key: str | None = None,
         eps: float | None = None, limit: int | None = None, trust: bool = False, strict: bool = False) -> ShowResult:
    """Open ``path`` and summarize its BN layers (filtered by ``layers`` globs, cut at ``limit``)."""
    found: Discovery = open_layers(path, trust=trust, key=key, strict=strict, eps=eps)
    return describe(found, source_name(path), layers=layers, channels=channels, limit=limit)


def describe(found: Discovery, path: str, *, layers: list[str] | None = None, channels: bool = False,
             limit: int | None = None) -> ShowResult:
    """The ShowResult of layers already discovered in ``path`` (what `show` and `report` print)."""
    chosen = select(found.layers, layers)
    shown = chosen if limit is None or limit <= 0 else chosen[:limit]
    ck = found.checkpoint
    marks = rule_marks(shown, ck) if channels else {}
    # One pass over every selected layer (10,000 in a big file), shapes only: no values are read
    # for the layers --limit leaves out.
    channels_total = parameters = buffer_values = 0
    problems = []
    for l in chosen:
        channels_total += l.channels
        tensors = l.tensors
        for n in _PARAMETERS:
            if n in tensors:
                parameters += tensors[n].numel
        for n in _BUFFERS:
            if n in tensors:
                buffer_values += tensors[n].numel
        problem = l.shape_problem()
        if problem:
            problems.append(problem)
        if "num_batches_tracked" in l.unusable:
            problems.append(f"{l.name}: num_batches_tracked is {l.unusable['num_batches_tracked']}, not a tensor "
                            "(load_state_dict refuses it)")
    return ShowResult(
        file=path, format=ck.format, format_name=FORMAT_NAMES.get(ck.format, ck.format),
        container=ck.container, alternatives=list(ck.alternatives), prefix=ck.prefix,
        eps_note=eps_note(chosen, ck.format),
        layers=[summarize(l, channels, marks.get(l.name)) for l in shown],
        possible=[summarize(l) for l in found.possible] if not layers else [],
        other_norms=dict(found.other_norms),
        total_layers=len(chosen), omitted=len(chosen) - len(shown),
        total_channels=channels_total, total_parameters=parameters, total_buffer_values=buffer_values,
        notes=list(ck.notes) + [m.message for m in found.malformed.values()] + problems + zero_eps_warnings(chosen),
        safety=ck.verdict,
    )
