"""What ``diff`` returns (the JSON document's shape) and what it keeps beside it for the runtime
witnesses and the report: the compared layers and per-channel arrays, never serialized.

Here rather than in ``services.diff`` so that ``diff_witness`` (which diff calls for ``--run``)
needs only these types, not diff itself: the two modules would otherwise import each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bninspect.checkpoint import TensorRef
from bninspect.layers import BNLayer


@dataclass
class TensorDiff:
    """One tensor (or folded weight/bias) of a matched pair."""

    tensor: str  # "running_var", "folded weight", ...
    dtype_a: str
    dtype_b: str
    shape_a: list[int]
    shape_b: list[int]
    identical: bool  # same dtype, shape and bits
    within: bool  # within the tolerance of the less precise dtype
    max_abs: float
    max_rel: float  # max |a − b| / |a| over elements where a ≠ 0
    channel: int | None  # output channel of the largest relative difference
    channels_beyond: int  # channels with an element beyond tolerance
    value_a: float | None = None  # the worst element on each side
    value_b: float | None = None
    channels_off: list[int] = field(default_factory=list)  # those channels, every one of them
    # How far B's tensor alone (A's elsewhere) moves the eval output: max |Δy| on A's inputs
    # (None where it cannot be computed on its own: shapes differ, a folded layer's)
    output_effect: float | None = None


@dataclass
class SettingDiff:
    """A module fact that differs (or is worth saying): eps, momentum, training, affine, kind."""

    setting: str
    a: Any
    b: Any
    severity: str  # "error" (breaks deployment), "difference", "note" (same meaning, said once)
    message: str


@dataclass
class OutputEffect:
    """The largest eval-mode output difference on inputs drawn from A's running statistics."""

    max_abs: float
    max_rel: float  # relative to the largest |output|
    channel: int | None
    within: bool
    samples_per_channel: int


@dataclass
class Witness:
    """A runtime's own output for B's BN layer against A's float64 recomputation."""

    runtime: str  # "onnxruntime 1.32.0"
    max_abs: float
    max_rel: float
    channel: int | None
    within: bool
    note: str = ""


@dataclass
class LayerDiff:
    """One matched pair of layers (or a BN against the conv it was folded into)."""

    name: str  # name on side A
    name_b: str
    matched_by: str  # "name" | "order" | "folded, by name" | "folded, by order"
    mode: str  # "bn" (both sides have the BN) | "folded" (one side has it fused into its producer)
    folded_side: str  # "" | "a" | "b"
    channels: int
    status: str  # "identical" | "equivalent" | "different"
    tensors: list[TensorDiff] = field(default_factory=list)
    settings: list[SettingDiff] = field(default_factory=list)
    output: OutputEffect | None = None
    witness: Witness | None = None
    causes: list[str] = field(default_factory=list)
    # The usual mistakes that account for B's values (std for variance, channels exchanged, γ/β or
    # μ/σ² swapped, a constant factor), as verify --expected names them; they lead the causes.
    explanations: list[str] = field(default_factory=list)


@dataclass
class Side:
    """One of the two artifacts: where it is, what format, how many BN layers, what the reader noted."""

    path: str
    format: str
    format_name: str
    layers: int
    notes: list[str]


@dataclass
class DiffResult:
    """Everything ``diff`` found; the renderer prints it, ``--json`` dumps it."""

    a: Side
    b: Side
    verdict: str  # "identical" | "equivalent" | "different"
    causes: list[str]  # the top causes, worst first
    layers: list[LayerDiff]
    only_a: list[str]
    only_b: list[str]
    notes: list[str]
    exit_code: int


@dataclass
class ChannelDiff:
    """One compared tensor per output channel, for the report's plots (not in the JSON document)."""

    relative: np.ndarray  # the largest |a − b|/|a| of the channel's elements
    beyond: np.ndarray  # bool: some element of the channel is beyond tolerance


@dataclass
class Target:
    """A conv/linear on the folded side that no BN there normalizes: where a BN may have gone."""

    name: str
    key_prefix: str
    weight: TensorRef
    bias: TensorRef | None
    out_channels: int
    transposed: bool
    folded_bn: str | None  # the BN the file says was fused in, where it says


@dataclass
class Compared:
    """One matched pair's :class:`LayerDiff` with the objects it compared: what the runtime witnesses
    run and the report plots. Kept beside the results, never in them."""

    diff: LayerDiff
    pair: tuple[BNLayer, BNLayer] | tuple[BNLayer, Target]  # (A's BN, B's BN), or (the BN, the conv it was folded into)
    channels: dict[str, ChannelDiff] = field(default_factory=dict)  # by TensorDiff.tensor, where shapes agree
