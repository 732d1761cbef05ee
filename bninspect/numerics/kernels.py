"""The BatchNorm math in one place: a float64 reference, the device kernels, folding and fusion.

Every formula here is PyTorch's (torch/nn/modules/batchnorm.py ``_BatchNorm.forward`` and
``torch.nn.functional.batch_norm``; ONNX's BatchNormalization operator spec states the same
inference formula):

* eval mode:  y = γ·(x − μ)/√(σ² + ε) + β, with μ, σ² the running statistics;
* train mode: y = γ·(x − μ_B)/√(σ²_B + ε) + β, with μ_B and the **biased** batch variance σ²_B
  (divide by n = elements per channel), while the running statistics are updated with the
  **unbiased** one (divide by n − 1): running = (1 − m)·running + m·batch, m = momentum, or
  m = 1/num_batches_tracked (after incrementing it) when momentum is None;
* folded:     y = scale·x + shift, scale = γ/√(σ² + ε), shift = β − μ·scale;
* fused conv: torch's own ``torch.nn.utils.fusion.fuse_conv_bn_weights``.

The reference is float64 numpy on values first rounded to the dtype under test, so a comparison
measures the kernel's arithmetic, not the rounding of its inputs. This is the one module besides
model runners that imports torch at top level: only commands doing tensor math import it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_weights

from bninspect.errors import UsageError
from bninspect.layers import fold  # noqa: F401  (the one definition; numerics.fold for callers here)

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}

# Machine epsilon 2^-(p-1) of each format, p = significand bits incl. the implicit one
# (IEEE 754: binary64 p=53, binary32 p=24, binary16 p=11; bfloat16 p=8).
MACHINE_EPS: dict[str, float] = {"float64": 2.0**-52, "float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}


@dataclass(frozen=True)
class Tolerance:
    """How far a kernel result may sit from the float64 reference, per element.

    |got − ref| ≤ atol + rtol·M, where M is the sum of the magnitudes of the terms the formula
    adds (for eval: |scale|·(|x| + |μ|) + |β|). Bounding by M rather than |y| is the standard
    forward-error bound for sums (Higham, Accuracy and Stability of Numerical Algorithms, §3):
    when x ≈ μ the subtraction cancels and |y| says nothing about the rounding error.
    """

    dtype: str
    rtol: float
    atol: float

    def allowed(self, magnitude: np.ndarray, growth: float = 1.0) -> np.ndarray:
        """Per-element allowance for a result whose terms have this magnitude."""
        return self.atol + self.rtol * growth * magnitude


# The per-dtype tolerance table. rtol = 8 machine epsilons: a BN kernel does ~5 roundings per
# element (subtract, rsqrt, two multiplies, add), each ≤ ½ eps, and CUDA's rsqrtf adds up to
# 2 ulp; 8 eps covers that with margin. Measured on CPU (torch 2.13, the conformance matrix at
# three seeds, train-mode cases included): the worst element used 0.45 of this allowance in
# float64, 0.28 in float32, 0.12 in float16 and bfloat16 (torch computes half types in float32
# and rounds once). atol = the smallest normal number: results that flush to zero or land in the
# subnormal range may lose everything below it.
TOLERANCES: dict[str, Tolerance] = {
    name: Tolerance(name, 8 * MACHINE_EPS[name], float(torch.finfo(TORCH_DTYPES[name]).tiny))
    for name in TORCH_DTYPES
}


def compute_dtype(dtype: str) -> str:
    """The dtype a checkpoint's layer is recomputed in: its own float type, else float32."""
    return dtype if dtype in TORCH_DTYPES else "float32"


def resolve_devices(device: str) -> list[str]:
    """``cpu``, ``cuda``, ``cuda:N`` or ``all`` as torch device names; no CUDA here is a usage error."""
    spec = device.strip().lower()
    if spec == "cpu":
        return ["cpu"]
    if spec not in ("all", "cuda") and not (spec.startswith("cuda:") and spec[5:].isdigit()):
        raise UsageError(f"unknown device '{device}'; use cpu, cuda, cuda:N or all")
    if not torch.cuda.is_available():
        raise UsageError(f"--device {device} needs CUDA, and CUDA is not available here (torch {torch.__version__})")
    if spec == "all":
        return ["cpu", "cuda:0"]
    if spec == "cuda":
        return ["cuda:0"]
    index, count = int(spec[5:]), torch.cuda.device_count()
    if index >= count:
        raise UsageError(f"--device {device}: this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})")
    return [spec]


@contextlib.contextmanager
def one_thread():
    """Run torch's CPU kernels on one intra-op thread inside the block, then restore the setting.

    verify's tensors are small (a few MB at most), where threads buy little, and on a shared, loaded
    machine OpenMP workers waiting on each other cost much: the ResNet-50 benchmark measured 11.0 s
    with torch's default 2 threads and 1.3 s with one (2 cores, load average ~10).
    """
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def round_to(values: np.ndarray, dtype: str) -> np.ndarray:
    """Values rounded to ``dtype`` and widened back to float64 (what a kernel in that dtype sees)."""
    return as_tensor(values, np.float64).to(TORCH_DTYPES[dtype]).double().numpy()


def per_channel(values: np.ndarray, ndim: int) -> np.ndarray:
    """A (C,) vector shaped to broadcast over channel axis 1 of an ndim-dimensional input."""
    return np.asarray(values, dtype=np.float64).reshape((1, -1) + (1,) * (ndim - 2))


# ---------------------------------------------------------------- float64 reference (numpy)

def eval_reference(x: np.ndarray, mean: np.ndarray, var: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                   eps: float) -> np.ndarray:
    """Eval-mode BatchNorm in float64, channel axis 1: y = γ·(x − μ)/√(σ² + ε) + β."""
    n = x.ndim
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_std = 1.0 / np.sqrt(per_channel(var, n) + eps)
        return per_channel(gamma, n) * (x - per_channel(mean, n)) * inv_std + per_channel(beta, n)


def eval_magnitude(x: np.ndarray, mean: np.ndarray, var: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                   eps: float) -> np.ndarray:
    """M for the tolerance: |γ/√(σ² + ε)|·(|x| + |μ|) + |β|, the magnitudes of the terms y sums."""
    n = x.ndim
    scale, _ = fold(mean, var, gamma, beta, eps)
    return np.abs(per_channel(scale, n)) * (np.abs(x) + np.abs(per_channel(mean, n))) + np.abs(per_channel(beta, n))


@dataclass
class BatchStats:
    """One batch's per-channel statistics, float64."""

    mean: np.ndarray
    var_biased: np.ndarray  # divide by n: what train mode normalizes with
    var_unbiased: np.ndarray  # divide by n − 1: what updates running_var
    n: int  # elements per channel: N × spatial


def batch_stats(x: np.ndarray) -> BatchStats:
    """Per-channel mean and variances over every axis but 1, in float64."""
    axes = (0,) + tuple(range(2, x.ndim))
    n = x.size // x.shape[1]
    mean = x.mean(axis=axes)
    # σ²_B = Σ(x − μ_B)²/n (biased); unbiased = σ²_B · n/(n − 1)
    sq = ((x - per_channel(mean, x.ndim)) ** 2).sum(axis=axes)
    with np.errstate(divide="ignore", invalid="ignore"):
        unbiased = sq / (n - 1) if n > 1 else np.full_like(mean, np.nan)
    return BatchStats(mean, sq / n, unbiased, n)


def train_reference(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> tuple[np.ndarray, BatchStats]:
    """Train-mode BatchNorm in float64: y = γ·(x − μ_B)/√(σ²_B + ε) + β with the biased σ²_B."""
    stats = batch_stats(x)
    return eval_reference(x, stats.mean, stats.var_biased, gamma, beta, eps), stats


def momentum_factor(momentum: float | None, count: int) -> float:
    """The batch's weight m in running = (1 − m)·running + m·batch: momentum, or 1/count when momentum is None."""
    # count is num_batches_tracked after this batch: momentum=None is a cumulative average
    return 1.0 / count if momentum is None else momentum


def running_update(mean: np.ndarray, var: np.ndarray, stats: BatchStats, momentum: float | None,
                   num_batches_tracked: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The running statistics after one train-mode step: (running_mean, running_var, num_batches_tracked)."""
    # num_batches_tracked += 1 happens first; momentum=None then averages over all batches seen
    count = num_batches_tracked + 1
    factor = momentum_factor(momentum, count)
    # running = (1 − m)·running + m·batch, with the UNBIASED batch variance for running_var
    new_mean = (1.0 - factor) * mean + factor * stats.mean
    new_var = (1.0 - factor) * var + factor * stats.var_unbiased
    return new_mean, new_var, count


# ---------------------------------------------------------------- comparison

@dataclass
class Comparison:
    """A result against its reference: the worst errors and whether every element is within tolerance."""

    max_abs_err: float
    max_rel_err: float  # max |got − ref| / max |ref| (normwise: elementwise blows up where y ≈ 0)
    worst_fraction: float  # max over elements of |got − ref| / allowance: ≤ 1 passes
    passed: bool
    worst_channel: int | None  # channel (axis 1) of the worst element, None for 1-D results


def compare(got: np.ndarray, ref: np.ndarray, magnitude: np.ndarray, tol: Tolerance, growth: float = 1.0) -> Comparison:
    """Compare elementwise; NaN where the reference has NaN (and equal infinities) count as agreement."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(got - ref)
        same = (np.isnan(got) & np.isnan(ref)) | (np.isinf(ref) & (got == ref))
        err = np.where(same, 0.0, np.where(np.isnan(err), np.inf, err))
        allowed = np.broadcast_to(tol.allowed(np.nan_to_num(magnitude, nan=0.0, posinf=np.inf), growth), err.shape)
        fraction = np.where(err == 0, 0.0, err / allowed)
    if err.size == 0:
        return Comparison(0.0, 0.0, 0.0, True, None)
    worst = int(np.argmax(fraction))
    finite_ref = np.abs(ref[np.isfinite(ref)])
    scale = float(finite_ref.max()) if finite_ref.size else 0.0
    max_abs = float(err.max())
    rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    channel = int(np.unravel_index(worst, err.shape)[1]) if err.ndim >= 2 else None
    return Comparison(max_abs, rel, float(fraction.reshape(-1)[worst]), bool(fraction.max() <= 1.0), channel)


# ---------------------------------------------------------------- device kernels (torch)

def as_tensor(values: np.ndarray, dtype: type | np.dtype | None = None) -> torch.Tensor:
    """A CPU tensor of ``values`` (converted to numpy ``dtype`` where given), sharing their memory
    where numpy may write it, else a copy: a file's values are read-only buffers, which torch
    warns about (on stderr, a line that is not ours) and must not write through."""
    array = np.ascontiguousarray(values, dtype=dtype)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def _tensor(values: np.ndarray | None, dtype: str, device: str) -> torch.Tensor | None:
    if values is None:
        return None
    return as_tensor(values, np.float64).to(device=device, dtype=TORCH_DTYPES[dtype])


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(device="cpu", dtype=torch.float64).numpy()


def _memory_format(ndim: int) -> torch.memory_format:
    return torch.channels_last_3d if ndim == 5 else torch.channels_last


def device_eval(x: np.ndarray, mean: np.ndarray, var: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None,
                eps: float, dtype: str, device: str, channels_last: bool = False) -> np.ndarray:
    """``F.batch_norm`` in eval mode, in ``dtype`` on ``device``; returned as float64 numpy."""
    xt = _tensor(x, dtype, device)
    if channels_last and x.ndim in (4, 5):
        xt = xt.contiguous(memory_format=_memory_format(x.ndim))
    with torch.no_grad():
        y = F.batch_norm(xt, _tensor(mean, dtype, device), _tensor(var, dtype, device), _tensor(gamma, dtype, device),
                         _tensor(beta, dtype, device), False, 0.0, eps)
    return _to_numpy(y)


def device_folded(x: np.ndarray, mean: np.ndarray, var: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                  eps: float, dtype: str, device: str) -> np.ndarray:
    """The folded form computed the way a runtime that folds BN would: all in ``dtype`` on ``device``."""
    n = x.ndim
    shape = (1, -1) + (1,) * (n - 2)
    with torch.no_grad():
        m, v, g, b = (_tensor(a, dtype, device) for a in (mean, var, gamma, beta))
        # scale = γ·rsqrt(σ² + ε); shift = β − μ·scale; y = scale·x + shift
        scale = g * torch.rsqrt(v + eps)
        shift = b - m * scale
        y = _tensor(x, dtype, device) * scale.reshape(shape) + shift.reshape(shape)
    return _to_numpy(y)


def device_module_step(kind: str, x: np.ndarray, mean: np.ndarray, var: np.ndarray, gamma: np.ndarray | None,
                       beta: np.ndarray | None, eps: float, momentum: float | None, num_batches_tracked: int,
                       training: bool, dtype: str, device: str, channels_last: bool = False
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """One forward of a real ``nn.BatchNorm1d/2d/3d`` module: (y, running_mean, running_var, num_batches_tracked) after it."""
    channels = len(mean)
    module_cls = {"BatchNorm1d": torch.nn.BatchNorm1d, "BatchNorm2d": torch.nn.BatchNorm2d,
                  "BatchNorm3d": torch.nn.BatchNorm3d}[kind]
    affine = gamma is not None
    # move to the dtype first: copying float64 values into the default float32 buffers would round them
    bn = module_cls(channels, eps=eps, momentum=momentum, affine=affine).to(device=device, dtype=TORCH_DTYPES[dtype])
    with torch.no_grad():
        bn.running_mean.copy_(as_tensor(mean, np.float64))
        bn.running_var.copy_(as_tensor(var, np.float64))
        bn.num_batches_tracked.fill_(num_batches_tracked)
        if affine:
            bn.weight.copy_(as_tensor(gamma, np.float64))
            bn.bias.copy_(as_tensor(beta, np.float64))
    bn.train(training)
    xt = _tensor(x, dtype, device)
    if channels_last and x.ndim in (4, 5):
        xt = xt.contiguous(memory_format=_memory_format(x.ndim))
    with torch.no_grad():
        y = bn(xt)
    return _to_numpy(y), _to_numpy(bn.running_mean), _to_numpy(bn.running_var), int(bn.num_batches_tracked.item())


# ---------------------------------------------------------------- conv → BN fusion

CONV_OPS = {"conv1d": (F.conv1d, 1), "conv2d": (F.conv2d, 2), "conv3d": (F.conv3d, 3)}


def infer_groups(weight_shape: tuple[int, ...], channels: int, groups: int | None) -> int:
    """The producer's groups: as the file says, else depthwise when weight is (C, 1, k…) with out = C, else 1."""
    if groups:
        return groups
    if len(weight_shape) >= 3 and weight_shape[1] == 1 and weight_shape[0] == channels and channels > 1:
        return channels
    return 1


def fuse_reference(weight: np.ndarray, bias: np.ndarray | None, mean: np.ndarray, var: np.ndarray, eps: float,
                   gamma: np.ndarray, beta: np.ndarray, transpose: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """torch's own conv-BN fusion, in float64: W' = W·γ/√(σ²+ε), b' = (b − μ)·γ/√(σ²+ε) + β."""
    t = lambda v: as_tensor(v, np.float64)  # noqa: E731
    w, b = fuse_conv_bn_weights(t(weight), t(bias) if bias is not None else None, t(mean), t(var), eps,
                                t(gamma), t(beta), transpose=transpose)
    return w.detach().numpy(), b.detach().numpy()


@dataclass
class FusedCheck:
    """conv → BN in float64 against the fused conv on the device: arrays ready for :func:`compare`."""

    got: np.ndarray
    ref: np.ndarray
    magnitude: np.ndarray
    reduction: int  # terms summed per output (in_channels/groups × kernel volume)


@contextlib.contextmanager
def _no_tf32():
    # cuDNN convolutions default to TF32 on Ampere and later (torch.backends.cudnn.allow_tf32);
    # the fusion check measures folding, not TF32's 10-bit mantissa.
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = old


def fused_conv_check(op: str, conv_weight: np.ndarray, conv_bias: np.ndarray | None, groups: int,
                     mean: np.ndarray, var: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None,
                     eps: float, dtype: str, device: str, seed: int = 0, batch: int = 1) -> FusedCheck:
    """Run conv then BN (float64 reference) and the conv fused by ``fuse_conv_bn_weights`` (``dtype`` on ``device``).

    The conv input is seeded N(0, 1), sized kernel + 1 per spatial dim with no padding: every
    weight meets 2 to 8 input values per output channel, and a 2048-channel 3×3 conv stays cheap.
    ``conv_weight`` may be in its stored precision: it is rounded to ``dtype`` once, in torch.
    """
    conv, _ = CONV_OPS[op]
    tdt = TORCH_DTYPES[dtype]
    wt = as_tensor(conv_weight).to(tdt)
    in_channels = wt.shape[1] * groups
    spatial = tuple(k + 1 for k in wt.shape[2:])
    zt = torch.from_numpy(np.random.default_rng(seed).standard_normal((batch, in_channels) + spatial, dtype=np.float32)).to(tdt)
    bt_ = None if conv_bias is None else as_tensor(conv_bias).to(tdt)
    channels = len(mean)
    g = np.ones(channels) if gamma is None else gamma
    bt = np.zeros(channels) if beta is None else beta

    with torch.no_grad():
        # the reference conv in float64 on the rounded values; the magnitude Σ|w|·|z| + |b| only bounds
        # the rounding error, so float32 is precise enough for it
        pre = conv(zt.double(), wt.double(), None if bt_ is None else bt_.double(), groups=groups).numpy()
        pre_mag = conv(zt.float().abs(), wt.float().abs(), None if bt_ is None else bt_.float().abs(), groups=groups)
        pre_mag = pre_mag.double().numpy() * (1 + 1e-5)
    ref = eval_reference(pre, mean, var, g, bt, eps)
    # terms of y = scale·(Σ w·z + b − μ) + β: eval_magnitude with Σ|w|·|z| + |b| in place of |x|
    magnitude = eval_magnitude(pre_mag, mean, var, g, bt, eps)

    with torch.no_grad(), _no_tf32():
        fw, fb = fuse_conv_bn_weights(wt.to(device), None if bt_ is None else bt_.to(device), _tensor(mean, dtype, device),
                                      _tensor(var, dtype, device), eps, _tensor(gamma, dtype, device),
                                      _tensor(beta, dtype, device))
        got = conv(zt.to(device), fw, fb, groups=groups)
    reduction = int(np.prod(wt.shape[1:]))
    return FusedCheck(_to_numpy(got), ref, magnitude, reduction)


def dot_growth(reduction: int) -> float:
    """Tolerance growth for a sum of ``reduction`` products: √K, the usual statistical rounding-error growth
    (Higham §2.8: errors of a K-term sum grow like √K·u in practice, K·u at worst), plus the fold's own rounding."""
    return float(np.sqrt(reduction)) + 2.0


# ---------------------------------------------------------------- what-ifs

def eps_change(x: np.ndarray, mean: np.ndarray, var: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
               eps_from: float, eps_to: float) -> tuple[float, int | None]:
    """The largest output change on ``x`` if a runtime used ``eps_to`` instead of ``eps_from``, and its channel.

    y(ε₂) − y(ε₁) = γ·(x − μ)·(1/√(σ² + ε₂) − 1/√(σ² + ε₁)): it matters where σ² is comparable to ε.
    """
    # A NaN statistic (check's BN104) makes NaN outputs at both eps: no change to report there.
    with np.errstate(invalid="ignore"):
        diff = np.abs(eval_reference(x, mean, var, gamma, beta, eps_to) - eval_reference(x, mean, var, gamma, beta, eps_from))
    diff = np.where(np.isnan(diff), 0.0, diff)
    if diff.size == 0:
        return 0.0, None
    worst = int(np.argmax(diff))
    return float(diff.reshape(-1)[worst]), int(np.unravel_index(worst, diff.shape)[1])


def train_eval_gap(mean: np.ndarray, var: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float,
                   shape: tuple[int, ...], seed: int) -> float:
    """max |train-mode − eval-mode output| on a seeded batch x_c = μ_c + σ_c·z, z ~ N(0, 1) of ``shape``:
    what a forgotten ``model.eval()`` costs at this layer for that batch size.

    With z̄, v the batch mean and biased variance of z in channel c:
      eval:  y = γ·(x − μ)/√(σ² + ε) + β        = γ·s_e·z + β,          s_e = σ/√(σ² + ε)
      train: y = γ·(x − μ_B)/√(σ²_B + ε) + β    = γ·s_t·(z − z̄) + β,    s_t = σ/√(σ²·v + ε)
    so the gap γ·((s_t − s_e)·z − s_t·z̄) is linear in z and its largest size is at the channel's
    smallest or largest z: four reductions instead of two full BN passes (batches of 32 for every
    layer would otherwise be verify's slowest part).
    """
    # z drawn as (C, N·spatial): the values are iid, so the layout is free and the reductions run contiguous
    z = torch.randn((shape[1], int(np.prod(shape)) // shape[1]), generator=torch.Generator().manual_seed(seed))
    n = z.shape[1]
    # v = mean(z²) − z̄²: no cancellation to fear for N(0, 1) draws, and 10× faster than torch.var_mean
    zbar, norm, zmin, zmax = (t.double().numpy() for t in (z.mean(1), torch.linalg.vector_norm(z, dim=1), z.amin(1), z.amax(1)))
    v = np.maximum(norm**2 / n - zbar**2, 0.0)
    _, sd = _draw_params(mean, var)
    with np.errstate(invalid="ignore", divide="ignore"):
        s_e = sd / np.sqrt(np.asarray(var, dtype=np.float64) + eps)
        s_t = sd / np.sqrt(sd**2 * v + eps)
        slope, offset = s_t - s_e, s_t * zbar
        gap = np.abs(gamma) * np.maximum(np.abs(slope * zmin - offset), np.abs(slope * zmax - offset))
    return float(np.nanmax(gap)) if not np.all(np.isnan(gap)) else float("nan")


def _draw_params(mean: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # negative or non-finite variances (broken checkpoints) draw with σ = 0 and NaN means with μ = 0,
    # so a layer's own defects show in its outputs, not as NaN inputs
    mu = np.nan_to_num(np.asarray(mean, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    sd = np.sqrt(np.clip(np.nan_to_num(np.asarray(var, dtype=np.float64), nan=0.0, posinf=0.0), 0.0, None))
    return mu, sd


def synthetic_input(mean: np.ndarray, var: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """x_c ~ N(μ_c, σ²_c) with channel axis 1: a correct eval-mode output is then ~N(β_c, γ_c²)."""
    n = len(shape)
    mu, sd = _draw_params(mean, var)
    return per_channel(mu, n) + per_channel(sd, n) * rng.standard_normal(shape)


# ---------------------------------------------------------------- deployment mistakes, for --expected

# Keras applications' ResNet uses epsilon=1.001e-5 (keras/applications/resnet.py); 1e-3 is the
# Keras/TensorFlow BatchNormalization default; 0 is a runtime that drops ε.
ALTERNATIVE_EPS = (1e-3, 1e-5, 1.001e-5, 0.0)


def explanations(x: np.ndarray, mean: np.ndarray, var: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float,
                 affine: bool, channels_last: bool) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """What a runtime that made each usual mistake would output for ``x`` (logical N, C, … layout), float64,
    with the magnitude M of that computation's terms (for :func:`compare`).

    One at a time: each candidate is two arrays the size of ``x``, and holding all of them at
    once made `verify --expected` need about forty times the input's float64 size.

    ``channels_last``: the file holding ``x`` is N, …, C; the axis mistake reads its bytes the other way.
    """

    def add(cause: str, m: np.ndarray, v: np.ndarray, g: np.ndarray, b: np.ndarray,
            e: float) -> tuple[str, np.ndarray, np.ndarray]:
        with np.errstate(invalid="ignore"):
            return cause, eval_reference(x, m, v, g, b, e), eval_magnitude(x, m, v, g, b, e)

    for alt in ALTERNATIVE_EPS:
        if alt != eps:
            yield add(f"eps {alt:g} instead of {eps:g}", mean, var, gamma, beta, alt)
    with np.errstate(invalid="ignore"):  # not around a yield: the caller would run inside it
        squared, root = var**2, np.sqrt(var)
    # the runtime took running_var for σ and squared it, or for σ² stored as σ and took its root
    yield add("running_var squared (read as a standard deviation)", mean, squared, gamma, beta, eps)
    yield add("square root of running_var used (variance stored as standard deviation)", mean, root, gamma, beta, eps)
    stats = batch_stats(x)
    yield add("batch statistics used instead of running statistics (train mode)", stats.mean, stats.var_biased, gamma, beta, eps)
    if stats.n > 1:
        n = stats.n
        yield add("batch statistics with the unbiased variance", stats.mean, stats.var_unbiased, gamma, beta, eps)
        # a runtime re-applying Bessel's correction to a running_var that already has it, or undoing it
        yield add(f"running_var × n/(n−1) (unbiased correction applied again, n={n})", mean, var * n / (n - 1), gamma, beta, eps)
        yield add(f"running_var × (n−1)/n (biased variance, n={n})", mean, var * (n - 1) / n, gamma, beta, eps)
    if x.ndim >= 3:
        yield ("channel axis confused (NHWC read as NCHW)" if channels_last else "channel axis confused (NCHW read as NHWC)",
               _other_axis(eval_reference, x, mean, var, gamma, beta, eps, channels_last),
               _other_axis(eval_magnitude, x, mean, var, gamma, beta, eps, channels_last))
    if affine:
        yield add("γ and β swapped", mean, var, beta, gamma, eps)
        yield add("affine dropped (γ = 1, β = 0)", mean, var, np.ones_like(gamma), np.zeros_like(beta), eps)
    yield add("μ and σ² swapped", var, mean, gamma, beta, eps)
    magnitude = eval_magnitude(x, mean, var, gamma, beta, eps)
    for half in ("float16", "bfloat16"):
        yield f"{half} arithmetic", device_eval(round_to(x, half), mean, var, gamma, beta, eps, half, "cpu"), magnitude


def layout_name(ndim: int, channels_last: bool) -> str:
    """A layout in the usual letters: N,C,H,W / N,H,W,C for 4-D, N,C,L / N,L,C, N,C,D,H,W / N,D,H,W,C."""
    spatial = {3: "L", 4: "HW", 5: "DHW"}.get(ndim, "…")
    return ",".join(["N", *spatial, "C"] if channels_last else ["N", "C", *spatial])


def output_layout_mistakes(y: np.ndarray, magnitude: np.ndarray, file_shape: tuple[int, ...],
                           channels_last: bool) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The correct output ``y`` (logical N, C, …) as a runtime that wrote it in the other layout
    would leave it in a file of ``file_shape``, read back as that file is read (``channels_last``):
    transposed (an N,H,W,C array where N,C,H,W was meant), or its N,H,W,C buffer reshaped to the
    file's shape without a transpose (what a copy into a preallocated array does). Only the
    mistakes whose result has the file's shape are returned; each with its magnitude, alike."""
    if y.ndim < 3:
        return []
    declared, other = layout_name(y.ndim, channels_last), layout_name(y.ndim, not channels_last)

    def written(a: np.ndarray) -> np.ndarray:
        # the runtime's output in the other layout
        return np.ascontiguousarray(np.moveaxis(a, 1, -1) if not channels_last else a)

    def read(a: np.ndarray) -> np.ndarray:
        # what reading the file with the declared layout makes of it
        return np.moveaxis(a, -1, 1) if channels_last else a

    out = []
    w, wm = written(y), written(magnitude)
    if w.shape == tuple(file_shape) and read(w).shape == y.shape:
        out.append((f"output in {other} layout where {declared} was expected (transposed)", read(w), read(wm)))
    if w.size == int(np.prod(file_shape)) and read(w.reshape(file_shape)).shape == y.shape:
        out.append((f"output's {other} buffer saved in an {declared}-shaped array (reshaped, not transposed)",
                    read(w.reshape(file_shape)), read(wm.reshape(file_shape))))
    return out


def _other_axis(formula, x: np.ndarray, mean: np.ndarray, var: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                eps: float, channels_last: bool) -> np.ndarray:
    """``formula`` (reference or magnitude) on the file's bytes read with the other channel convention, in the logical layout."""
    file = np.moveaxis(x, 1, -1) if channels_last else x
    flat = np.ascontiguousarray(file).reshape(-1)
    c = x.shape[1]
    with np.errstate(invalid="ignore"):
        if channels_last:
            # bytes N,…,C read as N,C,…: channel = index within a sample // (spatial size)
            wrong = formula(flat.reshape(x.shape[0], c, -1), mean, var, gamma, beta, eps).reshape(file.shape)
            return np.moveaxis(wrong, -1, 1)
        # bytes N,C,… read as N,…,C: channel = flat index mod C
        wrong = formula(np.moveaxis(flat.reshape(x.shape[0], -1, c), -1, 1), mean, var, gamma, beta, eps)
        return np.moveaxis(wrong, 1, -1).reshape(x.shape)
