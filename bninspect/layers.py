"""The domain model: a BatchNorm layer and the discovery that finds them in a Checkpoint.

Everything downstream (services, rules, renderers) speaks :class:`BNLayer`, never raw keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bninspect.checkpoint import Checkpoint, TensorRef

# PyTorch's defaults for nn.BatchNorm*d (torch/nn/modules/batchnorm.py: eps=1e-5, momentum=0.1).
DEFAULT_EPS = 1e-5
DEFAULT_MOMENTUM = 0.1

TENSOR_NAMES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


@dataclass
class Producer:
    """The layer whose output a BN layer normalizes (conv or linear before it, matching width)."""

    name: str  # display name
    key_prefix: str  # original module path in the file
    kind: str  # "conv 3×3", "depthwise conv 3×3", "pointwise conv 1×1", "grouped conv 3×3 (groups=4)", "transposed conv 2×2", "linear"
    op: str  # "conv1d" | "conv2d" | "conv3d" | "conv_transpose1d" | ... | "linear"
    out_channels: int
    in_channels: int
    groups: int | None  # None where unknown (state dict: inferred only when depthwise is evident)
    weight: TensorRef
    bias: TensorRef | None


@dataclass
class BNLayer:
    """One BatchNorm layer: its tensors (or their absence) and the facts we know or assume."""

    name: str  # display name (wrapper prefix stripped)
    key_prefix: str  # original module path in the file, without trailing dot
    kind: str  # "BatchNorm1d" | "BatchNorm2d" | "BatchNorm3d" | "SyncBatchNorm" | "FrozenBatchNorm2d" | "BatchNorm"
    kind_source: str  # "module" | "producer" (inferred from the producer's weight rank) | "unknown"
    channels: int
    tensors: dict[str, TensorRef]  # present ones among TENSOR_NAMES
    eps: float
    eps_source: str  # "module" | "default" | "user"
    momentum: float | None  # None = cumulative average (only when a module says so)
    momentum_source: str  # "module" | "default"
    affine: bool | None = None  # None where no module says; evident from weight/bias presence
    track_running_stats: bool | None = None
    training: bool | None = None  # None: a state dict has no mode
    producer: Producer | None = None
    producer_note: str = ""  # why there is no producer, or how it was matched
    possible: bool = False  # a "possible BatchNorm with track_running_stats=False" (no running stats)
    evidence: str = ""  # for possible layers: why we think so
    _cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def has(self, tensor: str) -> bool:
        return tensor in self.tensors

    def values(self, tensor: str) -> np.ndarray | None:
        """A tensor's values as a flat float64 array (None when the layer lacks it). Cached."""
        if tensor not in self.tensors:
            return None
        if tensor not in self._cache:
            self._cache[tensor] = self.tensors[tensor].float64().reshape(-1)
        return self._cache[tensor]

    @property
    def num_batches_tracked(self) -> int | None:
        ref = self.tensors.get("num_batches_tracked")
        if ref is None or ref.numel != 1:
            return None
        return int(np.asarray(ref.numpy()).reshape(-1)[0])

    def gamma(self) -> np.ndarray:
        """γ, with the affine=False identity (ones) where the layer has no weight."""
        w = self.values("weight")
        return w if w is not None else np.ones(self.channels)

    def beta(self) -> np.ndarray:
        """β, with the affine=False identity (zeros) where the layer has no bias."""
        b = self.values("bias")
        return b if b is not None else np.zeros(self.channels)

    def folded(self, eps: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Inference as one multiply-add per channel, in float64: y = scale·x + shift.

        scale = γ / √(σ² + ε), shift = β − μ·scale (needs running statistics).
        """
        e = self.eps if eps is None else eps
        mean, var = self.values("running_mean"), self.values("running_var")
        if mean is None or var is None:
            raise ValueError(f"layer {self.name} has no running statistics")
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = self.gamma() / np.sqrt(var + e)
        return scale, self.beta() - mean * scale


@dataclass
class Discovery:
    """What discovery found in one checkpoint."""

    checkpoint: Checkpoint
    layers: list[BNLayer]  # BatchNorm layers with running statistics (or a module saying BN)
    possible: list[BNLayer]  # possible BN with track_running_stats=False, with evidence
    other_norms: dict[str, int]  # e.g. {"GroupNorm": 2, "LayerNorm": 1} or {"LayerNorm/GroupNorm-like": 3}


def discover(checkpoint: Checkpoint, eps: float | None = None) -> Discovery:
    """Find every BatchNorm layer of a checkpoint (see the module docstring of ``bninspect.layers``)."""
    raise NotImplementedError("discovery is being written")
