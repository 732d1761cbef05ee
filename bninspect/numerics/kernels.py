"""The torch half of the BN math: kernels on devices, device names, conv-BN fusion, train vs eval.

Each function runs torch's own code (``F.batch_norm``, real ``nn.BatchNorm*d`` modules, torch's
``torch.nn.utils.fusion.fuse_conv_bn_weights``) in a given dtype on a given device, for comparison
with the float64 reference of :mod:`bninspect.numerics.reference`, which holds the formulas. Only
commands that do tensor math import this module.
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
from bninspect.numerics.reference import (ALTERNATIVE_EPS, BATCH_TERMS, DTYPES, after_producer, batch_spread, batch_stats,
                                          batch_terms, draw_params, eval_magnitude, eval_reference, other_axis,
                                          train_eval_gap_from, variance_mistakes)

TORCH_DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPES}

def resolve_devices(device: str, several: bool = True) -> list[str]:
    """``cpu``, ``cuda``, ``cuda:N`` or (where ``several``) ``all`` as torch device names; no CUDA here is a usage error.

    The one ``--device`` grammar: verify compares devices (``all`` is CPU and cuda:0 side by side),
    the commands that run a model take one (:func:`resolve_device`).
    """
    spec = device.strip().lower()
    if spec == "cpu":
        return ["cpu"]
    if not ((several and spec == "all") or spec == "cuda" or (spec.startswith("cuda:") and spec[5:].isdigit())):
        raise UsageError(f"unknown device '{device}'; use {'cpu, cuda, cuda:N or all' if several else 'cpu, cuda or cuda:N'}")
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


def resolve_device(device: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` as one torch device, for the commands that run a model (drift)."""
    return torch.device(resolve_devices(device, several=False)[0])


@contextlib.contextmanager
def one_thread():
    """Run torch's CPU kernels on one intra-op thread inside the block, then restore the setting.

    verify's tensors are small (a few MB at most), where threads buy little, and on a shared, loaded
    machine OpenMP workers waiting on each other cost much (benchmarks/README.md has the numbers).
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

# op → (torch function, spatial dimensions): its weight has that many plus 2 (out, in).
CONV_OPS = {"conv1d": (F.conv1d, 1), "conv2d": (F.conv2d, 2), "conv3d": (F.conv3d, 3)}
_CONV_BY_RANK = {spatial + 2: conv for conv, spatial in CONV_OPS.values()}


def fuse_reference(weight: np.ndarray, bias: np.ndarray | None, mean: np.ndarray, var: np.ndarray, eps: float,
                   gamma: np.ndarray, beta: np.ndarray, transpose: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """torch's own conv-BN fusion, in float64: W' = W·γ/√(σ²+ε), b' = (b − μ)·γ/√(σ²+ε) + β."""
    t = lambda v: as_tensor(v, np.float64)  # noqa: E731
    w, b = fuse_conv_bn_weights(t(weight), t(bias) if bias is not None else None, t(mean), t(var), eps,
                                t(gamma), t(beta), transpose=transpose)
    return w.detach().numpy(), b.detach().numpy()


@dataclass
class FusedCheck:
    """conv → BN in float64 against the fused conv on the device: arrays ready for ``reference.compare``."""

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


def producer_reference(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, groups: int = 1,
                       stride: tuple[int, ...] | None = None, pads: tuple[tuple[int, int], ...] | None = None,
                       dilation: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A linear layer (2-D ``weight``) or convolution in float64 on ``x``: (Σ w·x + b, Σ|w|·|x| + |b|),
    what :func:`reference.after_producer` takes."""
    x64 = x.astype(np.float64)
    if weight.ndim == 2:
        b = bias if bias is not None else np.zeros(weight.shape[0])
        return x64 @ weight.T + b, np.abs(x64) @ np.abs(weight).T + np.abs(b)
    conv = _CONV_BY_RANK[weight.ndim]
    spatial = weight.ndim - 2
    xt = as_tensor(x64)
    if pads is not None and any(p for pair in pads for p in pair):
        # F.pad takes (last dim begin, end, second-to-last begin, end, ...)
        xt = F.pad(xt, tuple(p for pair in reversed(pads) for p in pair))
    kw = {"stride": stride or (1,) * spatial, "dilation": dilation or (1,) * spatial, "groups": groups}
    wt, bt = as_tensor(weight), None if bias is None else as_tensor(bias)
    with torch.no_grad():
        return conv(xt, wt, bt, **kw).numpy(), conv(xt.abs(), wt.abs(), None if bt is None else bt.abs(), **kw).numpy()


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
    ref, magnitude = after_producer(pre, pre_mag, mean, var, g, bt, eps)

    with torch.no_grad(), _no_tf32():
        fw, fb = fuse_conv_bn_weights(wt.to(device), None if bt_ is None else bt_.to(device), _tensor(mean, dtype, device),
                                      _tensor(var, dtype, device), eps, _tensor(gamma, dtype, device),
                                      _tensor(beta, dtype, device))
        got = conv(zt.to(device), fw, fb, groups=groups)
    reduction = int(np.prod(wt.shape[1:]))
    return FusedCheck(_to_numpy(got), ref, magnitude, reduction)


# ---------------------------------------------------------------- what-ifs

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
    # v = mean(z²) − z̄²: no cancellation to fear for N(0, 1) draws, and much faster than torch.var_mean
    zbar, norm, zmin, zmax = (t.double().numpy() for t in (z.mean(1), torch.linalg.vector_norm(z, dim=1), z.amin(1), z.amax(1)))
    v = np.maximum(norm**2 / n - zbar**2, 0.0)
    _, sd = draw_params(mean, var)
    return train_eval_gap_from(sd, var, gamma, eps, zbar, v, zmin, zmax)


# ---------------------------------------------------------------- statistics of a data pass

def channel_view(x: torch.Tensor) -> torch.Tensor:
    """A BN input [N, C, *] as [C, elements] in float64 (the batch and spatial dims merged)."""
    x = x.detach().to(torch.float64)
    return x.transpose(0, 1).reshape(x.shape[1], -1)


class Population:
    """Exact per-channel mean and sum of squared deviations, merged batch by batch (Chan et al.),
    on the device the batches come from."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def add(self, flat: torch.Tensor) -> None:
        """Merge one [C, elements] batch (see :func:`channel_view`)."""
        nb = flat.shape[1]
        if nb == 0:
            return
        mb = flat.mean(dim=1)
        m2b = ((flat - mb[:, None]) ** 2).sum(dim=1)
        if self.mean is None:
            self.n, self.mean, self.m2 = nb, mb, m2b
            return
        # Chan et al.: M2 = M2_a + M2_b + δ²·n_a·n_b/n, mean = mean_a + δ·n_b/n
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + delta**2 * (self.n * nb / n)
        self.n = n

    def stats(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean, biased variance, unbiased variance) as float64 numpy arrays."""
        mean = self.mean.cpu().numpy()
        m2 = self.m2.cpu().numpy()
        unbiased = m2 / (self.n - 1) if self.n > 1 else np.zeros_like(m2)
        return mean, m2 / self.n, unbiased


class BatchSpread:
    """Sums over batches of one size of the per-batch terms ``reference.batch_spread`` needs (per channel)."""

    def __init__(self, eps: float) -> None:
        self.eps = eps
        self.k = 0
        self.terms: dict[str, torch.Tensor] = {}
        self.one_value = False

    def add(self, flat: torch.Tensor) -> None:
        """Add one [C, elements] batch (see :func:`channel_view`)."""
        if flat.shape[1] < 2:
            self.one_value = True  # PyTorch refuses train mode with one value per channel
            return
        mu = flat.mean(dim=1)
        var = flat.var(dim=1, unbiased=False)  # train mode normalizes with the biased variance
        s = torch.sqrt(var + self.eps)  # s_B = √(σ²_B + ε)
        for name, value in zip(BATCH_TERMS, batch_terms(mu, var, s)):
            self.terms[name] = self.terms[name] + value if name in self.terms else value
        self.k += 1

    def spread(self, mu_p: np.ndarray, var_p: np.ndarray) -> tuple[float, float, float]:
        """``reference.batch_spread`` of the batches added so far, against population statistics (k ≥ 1)."""
        return batch_spread({k: v.cpu().numpy() for k, v in self.terms.items()}, self.k, mu_p, var_p, self.eps)


# ---------------------------------------------------------------- deployment mistakes, for --expected


def explanations(x: np.ndarray, mean: np.ndarray, var: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float,
                 affine: bool, channels_last: bool) -> Iterator[tuple[str, np.ndarray, np.ndarray, str | None]]:
    """What a runtime that made each usual mistake would output for ``x`` (logical N, C, … layout), float64,
    with the magnitude M of that computation's terms (for ``reference.compare``) and the dtype whose
    tolerance judges it (None: the expected output's own).

    One at a time: each candidate is two arrays the size of ``x``, and holding all of them at
    once made `verify --expected` need about forty times the input's float64 size.

    ``channels_last``: the file holding ``x`` is N, …, C; the axis mistake reads its bytes the other way.
    """

    def add(cause: str, m: np.ndarray, v: np.ndarray, g: np.ndarray, b: np.ndarray,
            e: float) -> tuple[str, np.ndarray, np.ndarray, str | None]:
        with np.errstate(invalid="ignore"):
            return cause, eval_reference(x, m, v, g, b, e), eval_magnitude(x, m, v, g, b, e), None

    for alt in ALTERNATIVE_EPS:
        if alt != eps:
            yield add(f"eps {alt:g} instead of {eps:g}", mean, var, gamma, beta, alt)
    squared, root = variance_mistakes(var)
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
               other_axis(eval_reference, x, mean, var, gamma, beta, eps, channels_last),
               other_axis(eval_magnitude, x, mean, var, gamma, beta, eps, channels_last), None)
    if affine:
        yield add("γ and β swapped", mean, var, beta, gamma, eps)
        yield add("affine dropped (γ = 1, β = 0)", mean, var, np.ones_like(gamma), np.zeros_like(beta), eps)
    yield add("μ and σ² swapped", var, mean, gamma, beta, eps)
    magnitude = eval_magnitude(x, mean, var, gamma, beta, eps)
    for half in ("float16", "bfloat16"):
        yield f"{half} arithmetic", device_eval(round_to(x, half), mean, var, gamma, beta, eps, half, "cpu"), magnitude, half


