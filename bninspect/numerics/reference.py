"""The numpy-only half of the BN math: formulas, the float64 reference, tolerances, folding, eps.

Every formula here is PyTorch's (torch/nn/modules/batchnorm.py ``_BatchNorm.forward`` and
``torch.nn.functional.batch_norm``; ONNX's BatchNormalization operator spec states the same
inference formula):

* eval mode:  y = γ·(x − μ)/√(σ² + ε) + β, with μ, σ² the running statistics;
* train mode: y = γ·(x − μ_B)/√(σ²_B + ε) + β, with μ_B and the **biased** batch variance σ²_B
  (divide by n = elements per channel), while the running statistics are updated with the
  **unbiased** one (divide by n − 1): running = (1 − m)·running + m·batch, m = momentum, or
  m = 1/num_batches_tracked (after incrementing it) when momentum is None;
* folded:     y = scale·x + shift, scale = γ/√(σ² + ε), shift = β − μ·scale.

The reference is float64 numpy on values first rounded to the dtype under test, so a comparison
measures the kernel's arithmetic, not the rounding of its inputs. This half never imports torch:
show, check, explain and report use it; the torch half (``numerics.kernels``) builds on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bninspect.numerics import KERAS_EPS, TORCH_EPS

# The float types a kernel is checked in, by their torch names.
DTYPES = ("float64", "float32", "float16", "bfloat16")

# Machine epsilon 2^-(p-1) of each format, p = significand bits incl. the implicit one
# (IEEE 754: binary64 p=53, binary32 p=24, binary16 p=11; bfloat16 p=8).
MACHINE_EPS: dict[str, float] = {"float64": 2.0**-52, "float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}

# The smallest normal number 2^(1 − bias) of each format (bfloat16 has float32's exponent).
SMALLEST_NORMAL: dict[str, float] = {"float64": 2.0**-1022, "float32": 2.0**-126, "float16": 2.0**-14,
                                     "bfloat16": 2.0**-126}


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
# 2 ulp; 8 eps covers that with margin (benchmarks/README.md has the measured margins). atol =
# the smallest normal number: results that flush to zero or land in the subnormal range may
# lose everything below it.
TOLERANCES: dict[str, Tolerance] = {name: Tolerance(name, 8 * MACHINE_EPS[name], SMALLEST_NORMAL[name]) for name in DTYPES}


def compute_dtype(dtype: str) -> str:
    """The dtype a checkpoint's layer is recomputed in: its own float type, else float32."""
    return dtype if dtype in DTYPES else "float32"


def other_common_eps(eps: float) -> float:
    """The other of the two common defaults (PyTorch 1e-5, Keras/TensorFlow 1e-3): the one farther from ``eps`` in decades."""
    if eps <= 0:
        return KERAS_EPS
    # log10 of 1e-3 is −3 and of 1e-5 is −5: compare the distances in decades
    return TORCH_EPS if abs(math.log10(eps) + 3) < abs(math.log10(eps) + 5) else KERAS_EPS


def per_channel(values: np.ndarray, ndim: int) -> np.ndarray:
    """A (C,) vector shaped to broadcast over channel axis 1 of an ndim-dimensional input."""
    return np.asarray(values, dtype=np.float64).reshape((1, -1) + (1,) * (ndim - 2))


def rms(values: np.ndarray) -> float:
    """Root mean square √(mean v²), in float64."""
    return float(np.sqrt(np.mean(np.asarray(values, dtype=np.float64) ** 2)))


# ---------------------------------------------------------------- float64 reference

def fold(mean: np.ndarray, var: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Inference as one multiply-add per channel: (scale, shift), float64."""
    with np.errstate(divide="ignore", invalid="ignore"):
        # scale = γ / √(σ² + ε)
        scale = gamma / np.sqrt(var + eps)
    # shift = β − μ·scale
    return scale, beta - mean * scale


def channel_fold(mean: float, var: float, gamma: float, beta: float, eps: float) -> tuple[float, float]:
    """:func:`fold` for one channel, in Python floats: (scale, shift); NaN where σ² + ε ≤ 0."""
    # scale = γ / √(σ² + ε), shift = β − μ·scale
    scale = gamma / math.sqrt(var + eps) if var + eps > 0 else float("nan")
    return scale, beta - mean * scale


def channel_output(x: float, mean: float, var: float, gamma: float, beta: float, eps: float) -> float:
    """One channel's eval-mode output γ·(x − μ)/√(σ² + ε) + β for one input value (the same as
    scale·x + shift); NaN where σ² + ε ≤ 0."""
    return gamma * (x - mean) / math.sqrt(var + eps) + beta if var + eps > 0 else float("nan")


def std(var: float) -> float:
    """σ = √σ² for one variance; NaN for a negative one (a broken checkpoint)."""
    return math.sqrt(var) if var >= 0 else float("nan")


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
    scale, _ = fold(mean, var, gamma, beta, eps)
    return folded_magnitude(x, mean, scale, beta)


def folded_magnitude(x: np.ndarray, mean: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """M for the tolerance of a folded layer: |scale|·(|x| + |μ|) + |shift|, channel axis 1."""
    n = x.ndim
    return np.abs(per_channel(scale, n)) * (np.abs(x) + np.abs(per_channel(mean, n))) + np.abs(per_channel(shift, n))


def folded_output(x: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Eval-mode BatchNorm folded: y = scale·x + shift, channel axis 1."""
    n = x.ndim
    with np.errstate(invalid="ignore", over="ignore"):
        return per_channel(scale, n) * x + per_channel(shift, n)


def fused_output_magnitude(z: np.ndarray, bias: np.ndarray, mean: np.ndarray, scale: np.ndarray,
                           beta: np.ndarray) -> np.ndarray:
    """M for the tolerance of a producer with BN fused into it, y = Σ_j W'_j·h_j + b', on z = x − b
    (the producer's output without its own bias b): |scale|·(|z| + |b| + |μ|) + |β|, channel axis 1.

    W'_j = fl(W_j·s) and b' = fl((b − μ)·s + β): each stored value is within one tolerance δ of its
    exact value, |W'_j − W_j·s| ≤ δ·|W_j·s| and |b' − (b − μ)·s − β| ≤ δ·(|b·s| + |μ·s| + |β|), which
    through the folded weights' per-channel scale bounds the output by δ·(|s|·|z| + |s|·(|b| + |μ|) + |β|).
    The folded layer's own terms |s|·(|x| + |μ|) + |shift| miss |s|·|b| twice over: a Linear →
    BatchNorm1d head whose bias cancels a large mean of W·h (x ≈ 0, b ≈ −14), correctly folded by
    OpenVINO, was judged different at 2.2e-8 (relative 2e-7).
    """
    n = z.ndim
    s, b, mu = (np.abs(per_channel(v, n)) for v in (scale, bias, mean))
    return s * (np.abs(z) + b + mu) + np.abs(per_channel(beta, n))


def fused_bias_magnitude(bias: np.ndarray | None, mean: np.ndarray, scale: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """M for the tolerance of a fused bias b' = (b − μ)·s + β: |β| + |μ·s| + |b·s| (b = 0 where the producer has none)."""
    return np.abs(beta) + np.abs(mean * scale) + np.abs((bias if bias is not None else 0) * scale)


def implied_eps(gamma: np.ndarray, var: np.ndarray, scale: np.ndarray, own_eps: float, rtol: float) -> float | None:
    """The eps a fold was built with, where one eps explains every channel's ``scale`` and it is not ``own_eps``.

    s = γ/√(σ² + ε)  ⇒  ε = (γ/s)² − σ², per channel; the median, checked against all channels.
    """
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        per_channel_eps = (gamma / scale) ** 2 - var
        ok = np.isfinite(per_channel_eps) & (gamma != 0) & (scale != 0)
        if not ok.any():
            return None
        eps = float(np.median(per_channel_eps[ok]))
        if eps < 0 or math.isclose(eps, own_eps, rel_tol=1e-2):
            return None
        fitted = gamma / np.sqrt(var + eps)
        if not np.allclose(fitted[ok], scale[ok], rtol=rtol, atol=0.0):
            return None
    return eps


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


def running_update_magnitude(x: np.ndarray, mean: np.ndarray, var: np.ndarray, stats: BatchStats,
                             factor: float) -> tuple[np.ndarray, np.ndarray]:
    """M for the tolerance of :func:`running_update` with batch weight ``factor`` on batch ``x``:
    (for running_mean, for running_var), the magnitudes of the terms each sums."""
    # running = (1 − m)·old + m·batch; the batch mean's own sum rounds with Σ|x|/n, not |Σx|/n (cancellation),
    # and the unbiased variance's with about 2·σ² + μ²
    axes = (0,) + tuple(range(2, x.ndim))
    spread = np.abs(x).mean(axis=axes)
    return ((1 - factor) * np.abs(mean) + factor * (np.abs(stats.mean) + spread),
            (1 - factor) * np.abs(var) + factor * 2 * stats.var_unbiased + factor * stats.mean**2)


def initial_weight(momentum: float | None, updates: int) -> float:
    """How much the initial running statistics (μ = 0, σ² = 1) still weigh after ``updates`` train-mode
    steps: (1 − m)^k, and 0 for momentum None (a cumulative average)."""
    # new = (1 − m)·old + m·batch, k times
    return 0.0 if momentum is None else (1.0 - momentum) ** updates


def variance_mistakes(var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(σ²)² and √σ²: the variance a runtime uses when it takes running_var for σ and squares it,
    or stores σ in its place and takes the root (NaN for negative variances)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return var**2, np.sqrt(var)


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


def eval_check(got: np.ndarray, x: np.ndarray, mean: np.ndarray, var: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
               eps: float, tol: Tolerance) -> Comparison:
    """A runtime's eval-mode output ``got`` for input ``x`` against the float64 reference, within ``tol``."""
    return compare(got, eval_reference(x, mean, var, gamma, beta, eps), eval_magnitude(x, mean, var, gamma, beta, eps), tol)


def after_producer(pre: np.ndarray, pre_magnitude: np.ndarray, mean: np.ndarray, var: np.ndarray, gamma: np.ndarray,
                   beta: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """BN after a producer (conv, linear) in float64: (output, magnitude of the terms summed), given the
    producer's output ``pre`` = Σ w·x + b and ``pre_magnitude`` = Σ|w|·|x| + |b|."""
    # terms of y = scale·(Σ w·x + b − μ) + β: eval_magnitude with Σ|w|·|x| + |b| in place of |x|
    return eval_reference(pre, mean, var, gamma, beta, eps), eval_magnitude(pre_magnitude, mean, var, gamma, beta, eps)


def infer_groups(weight_shape: tuple[int, ...], channels: int, groups: int | None) -> int:
    """The producer's groups: as the file says, else depthwise when weight is (C, 1, k…) with out = C, else 1."""
    if groups:
        return groups
    if len(weight_shape) >= 3 and weight_shape[1] == 1 and weight_shape[0] == channels and channels > 1:
        return channels
    return 1


def dot_growth(reduction: int) -> float:
    """Tolerance growth for a sum of ``reduction`` products: √K, the usual statistical rounding-error growth
    (Higham §2.8: errors of a K-term sum grow like √K·u in practice, K·u at worst), plus the fold's own rounding."""
    return float(np.sqrt(reduction)) + 2.0


# ---------------------------------------------------------------- eps

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


def channel_change_bound(var: float, eps_lo: float = TORCH_EPS, eps_hi: float = KERAS_EPS) -> float:
    """The relative change 1 − √((σ² + ε_lo)/(σ² + ε_hi)) of a channel with variance σ² (shrinks as σ² grows)."""
    return 1.0 - math.sqrt((var + eps_lo) / (var + eps_hi))


@dataclass
class EpsSensitivity:
    """How much a layer's output moves between two eps values, given its statistics."""

    layer: float  # RMS over channels of the change, relative to the layer's output scale
    channels: np.ndarray  # per channel: the change relative to max(own spread, layer scale); NaN if unusable


def eps_sensitivity(var: np.ndarray, gamma: np.ndarray, eps: float,
                    eps_lo: float = TORCH_EPS, eps_hi: float = KERAS_EPS) -> EpsSensitivity:
    """How much the output moves when eps goes from ``eps_lo`` to ``eps_hi``, for inputs one
    standard deviation from the mean, relative to the layer's output scale.

    For channel c with σ_c = √var_c and input x = μ_c + σ_c:
        y_c(ε) = γ_c·σ_c/√(σ_c² + ε) + β_c
        Δ_c    = |γ_c|·σ_c·|1/√(σ_c² + ε_lo) − 1/√(σ_c² + ε_hi)|
    Each channel's output spread under the stored statistics and the layer's own eps, and the
    layer's output scale (their RMS):
        s_c    = |γ_c|·σ_c/√(σ_c² + ε),   S = √(mean_c s_c²)
    Layer: √(mean_c Δ_c²) / S, the change of the whole output relative to its scale; it is at
    most the largest per-channel ratio Δ_c/s_c = 1 − √((σ_c² + ε_lo)/(σ_c² + ε_hi)) (for
    σ² ≫ ε about (ε_hi − ε_lo)/(2σ²)). Per channel: Δ_c / max(s_c, S), so a channel small next
    to the layer is judged against the layer and one that dominates against itself. Channels
    with var_c ≤ 0 or non-finite values are left out (NaN): a constant or broken channel has no
    input spread to change, and BN105/BN002/BN001 report those.
    """
    ok = np.isfinite(var) & (var > 0) & np.isfinite(gamma)
    nan = np.full(var.shape, np.nan)
    if not ok.any():
        return EpsSensitivity(math.nan, nan)
    v, g = var[ok], np.abs(gamma[ok])
    sigma = np.sqrt(v)
    delta = g * sigma * np.abs(1.0 / np.sqrt(v + eps_lo) - 1.0 / np.sqrt(v + eps_hi))
    spread = g * sigma / np.sqrt(v + eps)
    scale = math.sqrt(float(np.mean(spread**2)))
    if scale == 0.0:
        return EpsSensitivity(math.nan, nan)
    per_channel_change = nan.copy()
    per_channel_change[ok] = delta / np.maximum(spread, scale)
    return EpsSensitivity(math.sqrt(float(np.mean(delta**2))) / scale, per_channel_change)


def zero_variance_gain(eps: float) -> float:
    """1/√ε: how much a channel with σ² = 0 amplifies any deviation from its mean, per unit γ."""
    return 1.0 / math.sqrt(eps) if eps > 0 else math.inf


def abs_scale(gamma: np.ndarray, var: np.ndarray, eps: float) -> np.ndarray:
    """|γ|/√(σ² + ε) per channel: eval mode is y = scale·(x − μ) + β."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.abs(gamma) / np.sqrt(var + eps)


# ---------------------------------------------------------------- drift between statistics

def normalized_error(mu_p: np.ndarray, var_b: np.ndarray, var_p: np.ndarray,
                     mu_u: np.ndarray, var_u: np.ndarray, eps: float) -> np.ndarray:
    """Per channel: RMS of (x − μ_u)/s_u − (x − μ_p)/s_p over data of mean μ_p and biased variance var_b.

    = √(var_b·(1/s_u − 1/s_p)² + ((μ_p − μ_u)/s_u)²), s = √(σ² + ε); 0 when the used statistics
    (μ_u, var_u) equal the ideal ones (μ_p, var_p).
    """
    s_u, s_p = np.sqrt(var_u + eps), np.sqrt(var_p + eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(var_b * (1 / s_u - 1 / s_p) ** 2 + ((mu_p - mu_u) / s_u) ** 2)


def statistics_shift(mu_p: np.ndarray, var_p: np.ndarray, mu_r: np.ndarray, var_r: np.ndarray,
                     eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Per channel: the running mean's shift (μ_r − μ_p)/s_p in population standard deviations, and
    the variance ratio (σ²_r + ε)/(σ²_p + ε), s_p = √(σ²_p + ε)."""
    return (mu_r - mu_p) / np.sqrt(var_p + eps), (var_r + eps) / (var_p + eps)


# The per-batch sums the small-batch drift needs: per batch, its mean μ_B, biased variance σ²_B and
# s_B = √(σ²_B + ε); summed over batches (numerics.kernels.BatchSpread accumulates them).
BATCH_TERMS = ("mu", "mu2", "var", "var2", "var_s2", "var_s")


def batch_terms(mu, var, s) -> tuple:
    """The summands of :data:`BATCH_TERMS` for one batch: μ_B, μ_B², σ²_B, σ²_B², σ²_B/s_B², σ²_B/s_B
    (any array type with arithmetic: the accumulator keeps them on the model's device)."""
    return mu, mu**2, var, var**2, var / s**2, var / s


def batch_spread(terms: dict[str, np.ndarray], k: int, mu_p: np.ndarray, var_p: np.ndarray,
                 eps: float) -> tuple[float, float, float]:
    """From the sums over K batches of :data:`BATCH_TERMS`: (RMS spread of μ_B around μ_p in units of
    s_p, RMS spread of σ²_B around σ²_p relative to σ²_p + ε, RMS error of train-mode normalization).

    The population statistics are known only at the end, so the squares are expanded:
    Σ(μ_B − μ_p)² = Σμ_B² − 2μ_pΣμ_B + Kμ_p², and likewise for the variance and output terms.
    """
    t = terms
    s_p = np.sqrt(var_p + eps)
    mean_sq = np.maximum(t["mu2"] - 2 * mu_p * t["mu"] + k * mu_p**2, 0.0) / k
    var_sq = np.maximum(t["var2"] - 2 * var_p * t["var"] + k * var_p**2, 0.0) / k
    # per batch: σ²_B(1/s_B − 1/s_p)² + ((μ_p − μ_B)/s_p)², averaged over the K batches
    out_sq = (t["var_s2"] - 2 * t["var_s"] / s_p + t["var"] / s_p**2) / k + mean_sq / s_p**2
    return rms(np.sqrt(mean_sq) / s_p), rms(np.sqrt(var_sq) / (var_p + eps)), rms(np.sqrt(np.maximum(out_sq, 0.0)))


# ---------------------------------------------------------------- synthetic inputs

def draw_params(mean: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(μ, σ) to draw inputs with: non-finite means become 0, negative or non-finite variances σ = 0."""
    # so a layer's own defects show in its outputs, not as NaN inputs
    mu = np.nan_to_num(np.asarray(mean, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    sd = np.sqrt(np.clip(np.nan_to_num(np.asarray(var, dtype=np.float64), nan=0.0, posinf=0.0), 0.0, None))
    return mu, sd


def synthetic_input(mean: np.ndarray, var: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """x_c ~ N(μ_c, σ²_c) with channel axis 1: a correct eval-mode output is then ~N(β_c, γ_c²)."""
    n = len(shape)
    mu, sd = draw_params(mean, var)
    return per_channel(mu, n) + per_channel(sd, n) * rng.standard_normal(shape)


def train_eval_gap_from(sd: np.ndarray, var: np.ndarray, gamma: np.ndarray, eps: float, zbar: np.ndarray,
                        v: np.ndarray, zmin: np.ndarray, zmax: np.ndarray) -> float:
    """max |train − eval output| over a batch x_c = μ_c + σ_c·z, from z's per-channel mean z̄, biased
    variance v, minimum and maximum (see ``numerics.kernels.train_eval_gap``)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        s_e = sd / np.sqrt(np.asarray(var, dtype=np.float64) + eps)
        s_t = sd / np.sqrt(sd**2 * v + eps)
        slope, offset = s_t - s_e, s_t * zbar
        gap = np.abs(gamma) * np.maximum(np.abs(slope * zmin - offset), np.abs(slope * zmax - offset))
    return float(np.nanmax(gap)) if not np.all(np.isnan(gap)) else float("nan")


# ---------------------------------------------------------------- deployment mistakes, for --expected

# Keras applications' ResNet uses epsilon=1.001e-5 (keras/applications/resnet.py); 1e-3 is the
# Keras/TensorFlow BatchNormalization default; 0 is a runtime that drops ε.
ALTERNATIVE_EPS = (KERAS_EPS, TORCH_EPS, 1.001e-5, 0.0)


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


def other_axis(formula, x: np.ndarray, mean: np.ndarray, var: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
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
