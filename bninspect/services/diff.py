"""`diff`: where the BatchNorm behaviour of two artifacts of one model differs, per layer and channel.

Layers are matched by name, then by order and channel count; a BN that one side folded into
its conv (an ONNX export with constant folding, OpenVINO's conversion, ``fuse_conv_bn``) is
compared by folding the other side's conv + BN with ``torch.nn.utils.fusion.fuse_conv_bn_weights``.

Tolerances come from the less precise dtype of each pair (``numerics.reference.MACHINE_EPS``):

* a stored tensor agrees when |a − b| ≤ eps·|a| + tiny·eps/2 (one correct rounding to that
  dtype, subnormals included), so a value float16 cannot hold (a variance above 65504 becomes
  inf) is reported at its channel;
* a folded weight/bias and the BN output agree within ``numerics.reference.TOLERANCES`` against the
  magnitude of the terms summed (γ/√(σ²+ε)·(|x|+|μ|) + |β|), as ``verify`` judges kernels.

The output effect feeds both sides the same inputs drawn from side A's running statistics,
x_c ~ N(μ_c, σ²_c), and compares their eval-mode outputs in float64.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from bninspect.checkpoint import FORMAT_NAMES, Checkpoint, TensorRef
from bninspect.layers import BNLayer, Discovery
from bninspect.services.common import open_layers, select, source_name, validate_eps, zero_eps_warnings
from bninspect.services.diff_results import (ChannelDiff, Compared, DiffResult, LayerDiff, OutputEffect, SettingDiff,
                                             Side, Target, TensorDiff)

SCHEMA = "bninspect.diff/1"
BN_TENSORS = ("weight", "bias", "running_mean", "running_var")
SAMPLES_PER_CHANNEL = 256
SEED = 0
# Float types from least to most precise, to pick the tolerance of a pair.
_PRECISION = ("bfloat16", "float16", "float32", "float64")


# ---------------------------------------------------------------- tolerances

def _lower(*dtypes: str) -> str:
    floats = [d for d in dtypes if d in _PRECISION]
    return min(floats, key=_PRECISION.index) if floats else "float32"


def _num(x: float) -> str:
    return f"{x:.4g}"


def _compare_tensor(label: str, a: TensorRef | None, b: TensorRef | None, va: np.ndarray, vb: np.ndarray,
                    magnitude: np.ndarray | None, dtype_a: str, dtype_b: str) -> tuple[TensorDiff, ChannelDiff | None]:
    """Elementwise comparison per output channel (axis 0); tolerance of the less precise dtype.
    With it, the per-channel largest relative difference and channels beyond tolerance (None where shapes differ).

    ``magnitude`` None: a stored value, |Δ| ≤ eps·|a| + tiny·eps/2; otherwise a computed one (folded),
    |Δ| ≤ tiny + 8·eps·magnitude.
    """
    from bninspect.numerics.reference import MACHINE_EPS, TOLERANCES

    shape_a = list(a.shape) if a is not None else list(va.shape)
    shape_b = list(b.shape) if b is not None else list(vb.shape)
    if va.shape != vb.shape:
        return TensorDiff(label, dtype_a, dtype_b, shape_a, shape_b, False, False, math.inf, math.inf, None,
                          int(va.shape[0]) if va.ndim else 1), None
    lower = _lower(dtype_a, dtype_b)
    identical = (a is not None and b is not None and dtype_a == dtype_b
                 and np.array_equal(a.numpy(), b.numpy(), equal_nan=True))
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        err = np.abs(va - vb)
        same = (np.isnan(va) & np.isnan(vb)) | (va == vb)
        err = np.where(same, 0.0, np.where(np.isnan(err), np.inf, err))
        if magnitude is None:
            # One correct rounding: ≤ eps/2·|a| for normal numbers (we allow eps), ≤ half the smallest
            # subnormal (tiny·eps/2) below the normal range.
            allowed = MACHINE_EPS[lower] * np.abs(va) + TOLERANCES[lower].atol * MACHINE_EPS[lower] / 2
        else:
            tol = TOLERANCES[lower]
            allowed = tol.allowed(np.broadcast_to(magnitude, va.shape))
        beyond = err > allowed
        rel = np.where(va != 0, err / np.abs(va), np.where(err > 0, np.inf, 0.0))
    flat = rel.reshape(va.shape[0], -1) if va.ndim else rel.reshape(1, -1)
    per_channel = flat.max(axis=1) if flat.size else np.zeros(0)
    worst = int(np.argmax(per_channel)) if per_channel.size else None
    channel_beyond = beyond.reshape(flat.shape).any(axis=1) if flat.size else np.zeros(0, dtype=bool)
    off = np.flatnonzero(channel_beyond)
    beyond_channels = int(off.size)
    value_a = value_b = None
    if worst is not None and err.size and float(err.max()) > 0:
        row = int(np.argmax(flat[worst]))
        value_a = float(va.reshape(flat.shape)[worst, row])
        value_b = float(vb.reshape(flat.shape)[worst, row])
    return TensorDiff(label, dtype_a, dtype_b, shape_a, shape_b, bool(identical), not bool(beyond.any()),
                      float(err.max()) if err.size else 0.0, float(per_channel.max()) if per_channel.size else 0.0,
                      worst if (err.size and float(err.max()) > 0) else None, beyond_channels, value_a, value_b,
                      [int(c) for c in off]), ChannelDiff(per_channel, channel_beyond)


def _output_effect(mean: np.ndarray, var: np.ndarray, scale_a: np.ndarray, shift_a: np.ndarray,
                   scale_b: np.ndarray, shift_b: np.ndarray, dtype: str, channel_offset: np.ndarray | None = None,
                   beta: np.ndarray | None = None) -> OutputEffect:
    """Both sides' eval outputs y = scale·x + shift on x_c ~ N(μ_c, σ²_c) from A's statistics.

    ``channel_offset`` shifts B's input (a folded conv adds its own bias b: y_B = s_B·(z − b) + b'_B);
    ``beta`` (A's β) must come with it, for the folded side's rounding bound.
    """
    from bninspect.numerics.reference import (TOLERANCES, compare, folded_magnitude, folded_output,
                                              fused_output_magnitude, per_channel)

    x = _inputs(mean, var)
    ya = folded_output(x, scale_a, shift_a)
    with np.errstate(invalid="ignore", over="ignore"):
        xb = x if channel_offset is None else x - per_channel(channel_offset, 2)
        yb = folded_output(xb, scale_b, shift_b)
        if channel_offset is None:
            # The terms summed on A's side bound its rounding (numerics.reference.Tolerance).
            magnitude = folded_magnitude(x, mean, scale_a, shift_a)
        else:
            # The fold path (conv, Gemm or MatMul with BN fused: torch.nn.utils.fusion, ONNX constant
            # folding, OpenVINO): z = Σ_j W_j·h_j = x − b, and the folded weight and bias comparisons
            # check each stored value; B's per-channel scale is the folded weights' least-squares ratio to W.
            magnitude = fused_output_magnitude(xb, channel_offset, mean, scale_a, beta)
    cmp = compare(yb, ya, magnitude, TOLERANCES[dtype])
    return OutputEffect(cmp.max_abs_err, cmp.max_rel_err, cmp.worst_channel, cmp.passed, SAMPLES_PER_CHANNEL)


def _inputs(mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """A's inputs x_c ~ N(μ_c, σ²_c), (SAMPLES_PER_CHANNEL, C): the same draws for every measurement of a layer."""
    from bninspect.numerics.reference import synthetic_input

    return synthetic_input(mean, var, (SAMPLES_PER_CHANNEL, mean.shape[0]), np.random.default_rng(SEED))


def _effects(la: BNLayer, lb: BNLayer, d: LayerDiff) -> dict[str, float]:
    """How far each difference alone moves A's eval output, max |Δy| on A's inputs: each differing
    tensor's (``output_effect`` on its TensorDiff) and eps's (returned by setting name). The causes
    are ordered by these, worst first."""
    from bninspect.numerics.reference import fold, folded_output

    params = {n: _stat(la, n) for n in BN_TENSORS}
    x = _inputs(params["running_mean"], params["running_var"])

    def output(p: dict[str, np.ndarray], eps: float) -> np.ndarray:
        return folded_output(x, *fold(p["running_mean"], p["running_var"], p["weight"], p["bias"], eps))

    y0 = output(params, la.eps)

    def effect(y: np.ndarray) -> float:
        with np.errstate(invalid="ignore", over="ignore"):
            err = np.abs(y - y0)
        # a NaN that A has too is no difference; one that B's value brings in is the largest
        err = np.where(np.isnan(y) & np.isnan(y0), 0.0, np.where(np.isnan(err), np.inf, err))
        return float(err.max()) if err.size else 0.0

    for t in d.tensors:
        if not t.within and t.shape_a == t.shape_b and t.tensor in params:
            t.output_effect = effect(output({**params, t.tensor: _stat(lb, t.tensor)}, la.eps))
    return {"eps": effect(output(params, lb.eps))} if la.eps != lb.eps else {}


def _explanations(la: BNLayer, lb: BNLayer, d: LayerDiff) -> list[tuple[str, set[str]]]:
    """The usual mistakes that turn A's tensors into B's (what ``verify --expected`` tests on
    outputs, here on the stored values): each with the tensors it accounts for."""
    from bninspect.numerics.reference import MACHINE_EPS, TOLERANCES, variance_mistakes

    differing = {t.tensor for t in d.tensors if not t.within and t.shape_a == t.shape_b}
    if not differing:
        return []
    lower = _lower(*(t.dtype_a for t in d.tensors), *(t.dtype_b for t in d.tensors))
    # A derived value (a square root, a product) may be a few roundings off what B stores.
    rtol, atol = 4 * MACHINE_EPS[lower], TOLERANCES[lower].atol

    def fits(candidate: np.ndarray, actual: np.ndarray) -> bool:
        return bool(np.all(_close(candidate, actual, rtol, atol)))

    a = {n: _stat(la, n) for n in BN_TENSORS}
    b = {n: _stat(lb, n) for n in BN_TENSORS}
    found: list[tuple[str, set[str]]] = []
    for x, y, text in (("weight", "bias", "γ and β exchanged: B's weight is A's bias and B's bias A's weight"),
                       ("running_mean", "running_var",
                        "μ and σ² exchanged: B's running_mean is A's running_var and the reverse")):
        if {x, y} <= differing and fits(a[y], b[x]) and fits(a[x], b[y]):
            found.append((text, {x, y}))
    left = differing - {n for _, names in found for n in names}
    if "running_var" in left:
        square, root = variance_mistakes(a["running_var"])
        if fits(root, b["running_var"]):
            found.append(("standard deviation stored where the variance belongs: B's running_var = √(A's running_var) "
                          "in every channel", {"running_var"}))
        elif fits(square, b["running_var"]):
            found.append(("variance squared: B's running_var = (A's running_var)² in every channel (A may hold the "
                          "standard deviation where the variance belongs)", {"running_var"}))
    left = differing - {n for _, names in found for n in names}
    if left and not found:
        moved = _permutation(a, b, sorted({c for t in d.tensors if t.tensor in left for c in t.channels_off}), rtol, atol)
        if moved:
            found.append((moved, set(left)))
    for name in sorted(left - {n for _, names in found for n in names}, key=BN_TENSORS.index):
        factor = _factor(a[name], b[name], fits)
        if factor is not None:
            found.append((f"{name} × {factor:.6g} in every channel{_bessel(factor) if name == 'running_var' else ''}",
                          {name}))
    return found


def _close(candidate: np.ndarray, actual: np.ndarray, rtol: float, atol: float) -> np.ndarray:
    """Elementwise: within rtol of the larger magnitude plus atol, NaN where both are NaN."""
    with np.errstate(invalid="ignore", over="ignore"):
        ok = np.abs(candidate - actual) <= rtol * np.maximum(np.abs(candidate), np.abs(actual)) + atol
    return ok | (np.isnan(candidate) & np.isnan(actual))


def _permutation(a: dict[str, np.ndarray], b: dict[str, np.ndarray], off: list[int], rtol: float, atol: float) -> str:
    """"channels 3 and 5 exchanged" where B's differing channels hold A's channels in another order
    (every tensor moved alike), else ""."""
    if len(off) < 2:
        return ""
    names = [n for n in BN_TENSORS if a[n].shape == b[n].shape]
    amat, bmat = np.stack([a[n][off] for n in names], axis=1), np.stack([b[n][off] for n in names], axis=1)
    source: dict[int, int] = {}
    for row, i in enumerate(off):
        # B's channel i against every differing channel of A at once
        same = _close(amat, bmat[row], rtol, atol).all(axis=1)
        same[row] = False
        hits = np.flatnonzero(same)
        if not hits.size:
            return ""
        source[i] = off[int(hits[0])]
    if sorted(source.values()) != off:
        return ""
    if len(off) == 2:
        return f"channels {off[0]} and {off[1]} exchanged (every tensor)"
    moves = ", ".join(f"{i} ← {j}" for i, j in list(source.items())[:6]) + (", …" if len(off) > 6 else "")
    return f"channels permuted (every tensor): B's channel ← A's channel {moves} ({len(off)} channels)"


def _factor(a: np.ndarray, b: np.ndarray, fits: Callable[[np.ndarray, np.ndarray], bool]) -> float | None:
    """k where B = k·A in every channel (k ≠ 1), else None."""
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = b / a
    usable = ratios[np.isfinite(ratios) & (a != 0)]
    if not usable.size:
        return None
    k = float(np.median(usable))
    return k if k != 1 and np.isfinite(k) and fits(k * a, b) else None


def _bessel(k: float) -> str:
    """Where a variance factor is Bessel's correction n/(n−1) (or its inverse) for a whole n."""
    n = k / (k - 1) if k > 1 else 1 / (1 - k)
    if 2 <= round(n) <= 65536 and abs(n - round(n)) < 1e-3 * n:
        what = "n/(n−1): the unbiased correction applied once more" if k > 1 else "(n−1)/n: the biased variance"
        return f" ({what}, n = {round(n)})"
    return ""


# ---------------------------------------------------------------- settings

def _settings(la: BNLayer, lb: BNLayer, fa: str, fb: str) -> list[SettingDiff]:
    out: list[SettingDiff] = []
    if not math.isclose(la.eps, lb.eps, rel_tol=1e-6, abs_tol=0.0):
        assumed = [side for side, l in (("A", la), ("B", lb)) if l.eps_source == "default"]
        why = f" ({' and '.join(assumed)}: PyTorch's default, assumed: a state dict stores no eps; pass --eps)" if assumed else ""
        out.append(SettingDiff("eps", la.eps, lb.eps, "difference", f"eps {_num(la.eps)} vs {_num(lb.eps)}{why}"))
    ma, mb = la.momentum, lb.momentum
    onnx_side = "B" if fb == "onnx" else "A" if fa == "onnx" else ""
    if la.momentum_source == "module" and lb.momentum_source == "module":
        if (ma is None) != (mb is None) or (ma is not None and mb is not None and not math.isclose(ma, mb, rel_tol=1e-6)):
            out.append(SettingDiff("momentum", ma, mb, "difference",
                                   f"momentum {ma} vs {mb} (PyTorch convention; changes training updates, not inference)"))
    if onnx_side:
        onnx_layer = lb if onnx_side == "B" else la
        other = la if onnx_side == "B" else lb
        m = onnx_layer.momentum
        if m is not None and (other.momentum is None or math.isclose(m, other.momentum, rel_tol=1e-6)):
            out.append(SettingDiff("momentum", ma, mb, "note",
                                   f"ONNX momentum {_num(1 - m)} on {onnx_side} is PyTorch momentum {_num(m)}: ONNX weighs "
                                   "the running value, PyTorch the batch (same update, complementary conventions)"))
    for side, layer, fmt in (("A", la, fa), ("B", lb, fb)):
        if layer.training:
            what = "training_mode=1" if fmt == "onnx" else "saved in training mode"
            out.append(SettingDiff("training", la.training, lb.training, "error",
                                   f"{side} is {what}: it normalizes with batch statistics at inference, not the running ones"))
    if la.affine is not None and lb.affine is not None and la.affine != lb.affine:
        out.append(SettingDiff("affine", la.affine, lb.affine, "difference",
                               f"affine {la.affine} vs {lb.affine} (γ=1, β=0 assumed where absent)"))
    if la.channels != lb.channels:
        out.append(SettingDiff("channels", la.channels, lb.channels, "error", f"{la.channels} vs {lb.channels} channels"))
    return out


# ---------------------------------------------------------------- comparing a pair

def _stat(layer: BNLayer, name: str) -> np.ndarray:
    if name == "weight":
        return layer.gamma()
    if name == "bias":
        return layer.beta()
    v = layer.values(name)
    return v if v is not None else np.full(layer.channels, np.nan)


def _dtype(layer: BNLayer, name: str) -> str:
    ref = layer.tensors.get(name)
    if ref is not None:
        return ref.dtype
    ref = layer.tensors.get("running_mean") or layer.tensors.get("weight")
    return ref.dtype if ref is not None else "float32"


def compare_bn(la: BNLayer, lb: BNLayer, fa: str, fb: str, matched_by: str) -> Compared:
    """Two BN layers: each tensor, the settings, and the output effect."""
    d = LayerDiff(la.name, lb.name, matched_by, "bn", "", la.channels, "identical")
    done = Compared(d, (la, lb))
    d.settings = _settings(la, lb, fa, fb)
    if la.channels != lb.channels:
        d.status = "different"
        d.causes.append(f"{la.channels} vs {lb.channels} channels")
        return done
    for name in BN_TENSORS:
        ra, rb = la.tensors.get(name), lb.tensors.get(name)
        if ra is None and rb is None:
            continue
        t, channels = _compare_tensor(name, ra, rb, _stat(la, name), _stat(lb, name), None, _dtype(la, name), _dtype(lb, name))
        d.tensors.append(t)
        if channels is not None:
            done.channels[name] = channels
    # Statistics that are there but not tensors are a shape problem (below), not track_running_stats=False.
    stats = [l.has("running_mean") and l.has("running_var")
             or not {"running_mean", "running_var"}.isdisjoint(l.unusable) for l in (la, lb)]
    if stats[0] != stats[1]:
        side = "B" if stats[0] else "A"
        d.settings.append(SettingDiff("track_running_stats", stats[0], stats[1], "error",
                                      f"{side} has no running statistics: it normalizes with batch statistics at inference"))
    problem_a, problem_b = la.shape_problem(), lb.shape_problem()
    effects: dict[str, float] = {}
    explained: set[str] = set()
    if not (problem_a or problem_b):
        effects = _effects(la, lb, d)
        found = _explanations(la, lb, d)
        d.explanations = [text for text, _ in found]
        explained = {n for _, names in found for n in names}
    if problem_a or problem_b:
        # Tensors of different lengths (check's BN003) cannot be folded into one scale/shift;
        # the tensors themselves are still compared above. a/b: whether each side has them.
        # Values that are not tensors at all break loading the file: that leads the causes.
        broken = bool(la.unusable.keys() - {"num_batches_tracked"} or lb.unusable.keys() - {"num_batches_tracked"})
        d.settings.append(SettingDiff("shapes", problem_a is not None, problem_b is not None,
                                      "error" if broken else "note", f"output effect not computed: {problem_a or problem_b}"))
    elif all(stats):
        lower = _lower(*(t.dtype_a for t in d.tensors), *(t.dtype_b for t in d.tensors))
        sa, ta = la.folded()
        sb, tb = lb.folded()
        d.output = _output_effect(_stat(la, "running_mean"), _stat(la, "running_var"), sa, ta, sb, tb, lower)
    _judge(d, effects, explained)
    return done


def _fuse(weight: np.ndarray, bias: np.ndarray | None, layer: BNLayer, transpose: bool) -> tuple[np.ndarray, np.ndarray]:
    """The layer fused into its producer's ``weight``/``bias`` by :func:`numerics.kernels.fuse_reference`, float64."""
    from bninspect.numerics.kernels import fuse_reference

    return fuse_reference(weight, bias, _stat(layer, "running_mean"), _stat(layer, "running_var"), layer.eps,
                          layer.gamma(), layer.beta(), transpose)


def fold_targets(disc: Discovery) -> list[Target]:
    """Every conv/linear of a checkpoint that is not the producer of one of its BN layers, in key order."""
    used = {l.producer.key_prefix for l in disc.layers if l.producer is not None}
    ckpt: Checkpoint = disc.checkpoint
    groups: dict[str, dict[str, TensorRef]] = {}
    for key, ref in ckpt.tensors.items():
        prefix, _, leaf = key.rpartition(".")
        groups.setdefault(prefix, {})[leaf] = ref
    out: list[Target] = []
    for prefix, t in groups.items():
        w = t.get("weight")
        if w is None or not 2 <= w.ndim <= 5 or "running_mean" in t or prefix in used:
            continue
        info = ckpt.modules.get(prefix)
        attrs = info.attributes if info is not None else {}
        transposed = bool(info is not None and "Transpose" in info.type_name)
        out_ch = w.shape[1] * int(attrs.get("groups", 1) or 1) if transposed else w.shape[0]
        out.append(Target(ckpt.display(prefix), prefix, w, t.get("bias"), out_ch, transposed, attrs.get("folded_bn")))
    return out


def compare_folded(layer: BNLayer, target: Target, bn_side: str, matched_by: str) -> Compared:
    """A BN with its producer on one side against the conv it was folded into on the other."""
    from bninspect.numerics.reference import fused_bias_magnitude

    a_is_bn = bn_side == "a"
    name_a, name_b = (layer.name, target.name) if a_is_bn else (target.name, layer.name)
    d = LayerDiff(name_a, name_b, matched_by, "folded", "b" if a_is_bn else "a", layer.channels, "equivalent")
    done = Compared(d, (layer, target))
    prod = layer.producer
    problem = _unfoldable(layer, target)
    if problem or prod is None:
        d.status = "different"
        d.causes.append(problem)
        return done
    w0 = prod.weight.float64()
    b0 = prod.bias.float64() if prod.bias is not None else None
    wf, bf = _fuse(w0, b0, layer, target.transposed)
    wt = target.weight.float64()
    bt = target.bias.float64().reshape(-1) if target.bias is not None else np.zeros(layer.channels)
    dt_w = _lower(prod.weight.dtype, _dtype(layer, "running_var"))
    dt_bias = _lower(prod.bias.dtype if prod.bias is not None else dt_w, _dtype(layer, "running_var"))
    scale, _ = layer.folded()
    # Folded bias b' = (b − μ)·s + β: its rounding scales with the terms summed.
    bias_mag = fused_bias_magnitude(b0, _stat(layer, "running_mean"), scale, layer.beta())
    tw, channels_w = _compare_tensor("folded weight", prod.weight, target.weight, wf, wt, np.abs(wf), dt_w, target.weight.dtype)
    tb, channels_b = _compare_tensor("folded bias", None, target.bias, bf, bt, bias_mag, dt_bias,
                                     target.bias.dtype if target.bias is not None else "float32")
    done.channels = {t.tensor: c for t, c in ((tw, channels_w), (tb, channels_b)) if c is not None}
    if not a_is_bn:  # keep "a" and "b" meaning the two files as given
        tw.dtype_a, tw.dtype_b = tw.dtype_b, tw.dtype_a
        tb.dtype_a, tb.dtype_b = tb.dtype_b, tb.dtype_a
    d.tensors = [tw, tb]
    s_eff = _effective_scale(w0, wt, target.transposed, layer.channels)
    sa, ta = layer.folded()
    offset = b0 if b0 is not None else np.zeros(layer.channels)
    lower = _lower(dt_w, target.weight.dtype)
    # A's BN input z is the producer output with A's conv bias; B's folded conv sees the same z − b.
    d.output = _output_effect(_stat(layer, "running_mean"), _stat(layer, "running_var"), sa, ta, s_eff, bt, lower, offset,
                              layer.beta())
    # Each folded tensor's own effect on y = s·(x − b) + b': the scale's error times x − b, the bias's as it is.
    z = np.abs(_inputs(_stat(layer, "running_mean"), _stat(layer, "running_var")) - offset).max(axis=0)
    with np.errstate(invalid="ignore", over="ignore"):
        tw.output_effect = float(np.nan_to_num(np.abs(s_eff - sa) * z, nan=np.inf).max()) if z.size else 0.0
        tb.output_effect = float(np.nan_to_num(np.abs(bt - bf), nan=np.inf).max()) if bt.size else 0.0
    d.settings = []
    if layer.training:
        d.settings.append(SettingDiff("training", layer.training, None, "error",
                                      f"{layer.name} is in training mode on the BN side: the folded side uses running statistics"))
    _judge(d)
    implied = _implied_eps(layer, s_eff, lower) if d.status == "different" else None
    if implied is not None:  # an explanation of a difference already found, never a finding by itself
        message = (f"the folded weights fit eps ≈ {_num(implied)}, not {layer.name}'s eps {_num(layer.eps)} "
                   f"({'B' if a_is_bn else 'A'} was folded with another eps)")
        d.settings.append(SettingDiff("eps", layer.eps if a_is_bn else implied, implied if a_is_bn else layer.eps,
                                      "difference", message))
        d.causes.insert(0, message)
    return done


def _unfoldable(layer: BNLayer, target: Target) -> str:
    """Why ``layer`` cannot be folded to compare with ``target`` ("" where it can)."""
    problem = layer.shape_problem()
    if problem:
        return f"cannot fold it to compare with {target.name}: {problem}"
    prod = layer.producer
    if prod is None or tuple(prod.weight.shape) != tuple(target.weight.shape):
        shape = list(prod.weight.shape) if prod is not None else None
        return f"{layer.name} has no producer of the folded conv's shape {list(target.weight.shape)} (it has {shape})"
    return ""


def _effective_scale(w0: np.ndarray, wt: np.ndarray, transposed: bool, channels: int) -> np.ndarray:
    """The folded conv's per-channel scale relative to the unfused conv (least squares), so the
    output effect can be measured where the BN sat: y = s·(z − b) + b'."""
    flat_w0, flat_wt = w0.reshape(w0.shape[0], -1), wt.reshape(wt.shape[0], -1)
    if transposed:
        flat_w0 = np.moveaxis(w0, 1, 0).reshape(channels, -1)
        flat_wt = np.moveaxis(wt, 1, 0).reshape(channels, -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        s_eff = (flat_w0 * flat_wt).sum(axis=1) / (flat_w0 * flat_w0).sum(axis=1)
    return np.nan_to_num(s_eff)


def _implied_eps(layer: BNLayer, s_eff: np.ndarray, dtype: str) -> float | None:
    """The eps the folded side was built with (``reference.implied_eps``) to three significant digits, or None."""
    from bninspect.numerics.reference import MACHINE_EPS, implied_eps

    eps = implied_eps(layer.gamma(), _stat(layer, "running_var"), s_eff, layer.eps, max(1e-5, 16 * MACHINE_EPS[dtype]))
    return None if eps is None else float(f"{eps:.3g}")


def _judge(d: LayerDiff, effects: dict[str, float] | None = None, explained: set[str] | frozenset = frozenset()) -> None:
    """Status and causes of one pair, worst first: what breaks inference (settings in error), the
    usual mistakes that explain B's values, then each other difference by how far it alone moves
    the output (``effects`` for settings, ``output_effect`` for tensors; unknown counts as worst)."""
    effects = effects or {}
    causes = [s.message for s in d.settings if s.severity == "error"] + d.explanations
    ranked: list[tuple[float, str]] = []
    for s in d.settings:
        if s.severity == "difference":
            effect = effects.get(s.setting)
            ranked.append((effect or 0.0, s.message + (f"; moves the output by up to {_num(effect)}" if effect else "")))
    for t in d.tensors:
        if t.within or t.tensor in explained:
            continue
        effect = math.inf if t.output_effect is None else t.output_effect
        if t.shape_a != t.shape_b and math.isinf(t.max_abs) and t.channel is None:  # not comparable
            ranked.append((effect, f"{t.tensor}: shape {t.shape_a} vs {t.shape_b}"))
            continue
        where = f" channel {t.channel}" if t.channel is not None else ""
        vals = f" ({_num(t.value_a)} vs {_num(t.value_b)})" if t.value_a is not None else ""
        alone = f"; alone it moves the output by up to {_num(effect)}" if 0 < effect < math.inf else ""
        ranked.append((effect, f"{t.tensor}{where}{vals}: rel. difference {_num(t.max_rel)}, beyond {t.dtype_a}/{t.dtype_b} "
                               f"rounding" + (f" in {t.channels_beyond} channels" if t.channels_beyond > 1 else "") + alone))
    causes += [message for _, message in sorted(ranked, key=lambda r: -r[0])]
    if d.output is not None and not d.output.within:
        causes.append(f"output differs by up to {_num(d.output.max_abs)} (rel. {_num(d.output.max_rel)}) at channel {d.output.channel}")
    d.causes = causes + d.causes
    if d.causes:
        d.status = "different"
    elif d.mode == "bn" and all(t.identical for t in d.tensors) and not any(s.severity != "note" for s in d.settings):
        d.status = "identical"
    else:
        d.status = "equivalent"


# ---------------------------------------------------------------- matching

def _pairs_by_order(keys_a: list[Any], keys_b: list[Any]) -> list[tuple[int, int]]:
    """Index pairs aligned on equal keys (channel counts or weight shapes), order kept."""
    sm = difflib.SequenceMatcher(None, keys_a, keys_b, autojunk=False)
    return [(blk.a + k, blk.b + k) for blk in sm.get_matching_blocks() for k in range(blk.size)]


def _match_names(xs: list[BNLayer], ys: list[BNLayer]) -> list[tuple[BNLayer, BNLayer]]:
    by_name = {}
    for y in ys:
        by_name.setdefault(y.name, y)
        by_name.setdefault(y.key_prefix, y)
    out, taken = [], set()
    for x in xs:
        y = by_name.get(x.name) or by_name.get(x.key_prefix)
        if y is not None and id(y) not in taken:
            out.append((x, y))
            taken.add(id(y))
    return out


def _match_folded(bns: list[BNLayer], targets: list[Target]) -> list[tuple[BNLayer, Target, str]]:
    out: list[tuple[BNLayer, Target, str]] = []
    free = list(targets)
    rest: list[BNLayer] = []
    # Only a BN with running statistics can have been folded (eval-mode folding uses them).
    for layer in (l for l in bns if l.has("running_mean") and l.has("running_var")):
        hit = next((t for t in free if t.folded_bn in (layer.name, layer.key_prefix)), None)
        if hit is None and layer.producer is not None:
            hit = next((t for t in free if t.folded_bn is None and t.key_prefix == layer.producer.key_prefix), None)
        if hit is not None:
            free.remove(hit)
            out.append((layer, hit, "folded, by name"))
        else:
            rest.append(layer)
    # By order: a BN's producer weight shape must equal the folded conv's.
    with_prod = [l for l in rest if l.producer is not None]
    for i, j in _pairs_by_order([tuple(l.producer.weight.shape) for l in with_prod], [tuple(t.weight.shape) for t in free]):  # type: ignore[union-attr]
        out.append((with_prod[i], free[j], "folded, by order"))
    return out


def diff(path_a: str, path_b: str, *, layers: list[str] | None = None, trust: bool = False, key: str | None = None,
         key_b: str | None = None, eps: float | None = None, run: bool = False) -> DiffResult:
    """Compare the BN layers of two artifacts (see the module docstring); ``run`` adds runtime witnesses.

    ``eps`` stands in for A's eps where A does not store one (a plain state dict).
    """
    result, _ = diff_with_details(path_a, path_b, layers=layers, trust=trust, key=key, key_b=key_b, eps=eps, run=run)
    return result


def diff_with_details(path_a: str, path_b: str, *, layers: list[str] | None = None, trust: bool = False,
                      key: str | None = None, key_b: str | None = None, eps: float | None = None,
                      run: bool = False) -> tuple[DiffResult, list[Compared]]:
    """:func:`diff`, and beside its result each layer's :class:`Compared` (the report plots their channels)."""
    validate_eps(eps)
    da = open_layers(path_a, trust=trust, key=key)
    db = open_layers(path_b, trust=trust, key=key_b)
    if eps is not None:
        for layer in da.layers:
            if layer.eps_source == "default":
                layer.eps, layer.eps_source = float(eps), "user"
    matching = _match(da, db)
    notes = matching.notes
    compared = _compare_matched(da, db, matching)
    only_a = [l.name for l in da.layers if id(l) not in matching.used_a]
    only_b = [l.name for l in db.layers if id(l) not in matching.used_b]
    if layers:
        import fnmatch

        keep = {l.name for l in select(da.layers + db.layers, layers)}
        compared = [c for c in compared if c.diff.name in keep or c.diff.name_b in keep]
        only_a = [n for n in only_a if any(fnmatch.fnmatchcase(n, g) for g in layers)]
        only_b = [n for n in only_b if any(fnmatch.fnmatchcase(n, g) for g in layers)]

    if run:
        from bninspect.services.diff_witness import attach_witnesses

        notes += attach_witnesses(compared, da, db)
    diffs = [c.diff for c in compared]
    notes += _closing_notes(da, db, diffs)
    verdict, causes = _verdict(diffs, only_a, only_b)
    fa, fb = da.checkpoint.format, db.checkpoint.format
    return DiffResult(
        a=Side(source_name(path_a), fa, FORMAT_NAMES.get(fa, fa), len(da.layers), list(da.checkpoint.notes)),
        b=Side(source_name(path_b), fb, FORMAT_NAMES.get(fb, fb), len(db.layers), list(db.checkpoint.notes)),
        verdict=verdict, causes=causes, layers=diffs, only_a=only_a, only_b=only_b, notes=notes,
        exit_code=0 if verdict in ("identical", "equivalent") else 1,
    ), compared


@dataclass
class _Matching:
    """How the layers of A and B pair up: BN with BN (by name, then order), BN with a folded conv."""

    matched: list[tuple[str, BNLayer, BNLayer]]  # (how, A's, B's)
    folded: list[tuple[BNLayer, Target, str, str]]  # (the BN, the conv it went into, how, the BN's side)
    used_a: set[int]  # ids of A's layers in a pair
    used_b: set[int]
    notes: list[str]


def _match(da: Discovery, db: Discovery) -> _Matching:
    """Pair the layers: by name, then the rest by order and channel count, then BNs against folded convs."""
    notes: list[str] = []
    matched = [("name", x, y) for x, y in _match_names(da.layers, db.layers)]
    used_a = {id(x) for _, x, _ in matched}
    used_b = {id(y) for _, _, y in matched}
    rest_a = [l for l in da.layers if id(l) not in used_a]
    rest_b = [l for l in db.layers if id(l) not in used_b]
    by_order = [(rest_a[i], rest_b[j]) for i, j in _pairs_by_order([l.channels for l in rest_a], [l.channels for l in rest_b])]
    if by_order:
        notes.append(f"{len(by_order)} layer(s) matched by order and channel count (their names differ)")
        matched += [("order", x, y) for x, y in by_order]
        used_a |= {id(x) for x, _ in by_order}
        used_b |= {id(y) for _, y in by_order}
        rest_a = [l for l in rest_a if id(l) not in used_a]
        rest_b = [l for l in rest_b if id(l) not in used_b]
    folded: list[tuple[BNLayer, Target, str, str]] = []
    if rest_a:
        folded += [(l, t, how, "a") for l, t, how in _match_folded(rest_a, fold_targets(db))]
    if rest_b:
        folded += [(l, t, how, "b") for l, t, how in _match_folded(rest_b, fold_targets(da))]
    if folded:
        sides = sorted({"B" if side == "a" else "A" for *_, side in folded})
        notes.append(f"{len(folded)} BN layer(s) are folded into their conv on {' and '.join(sides)}: compared as "
                     "torch.nn.utils.fusion.fuse_conv_bn_weights of the other side's conv + BN")
    used_a |= {id(l) for l, _, _, side in folded if side == "a"}
    used_b |= {id(l) for l, _, _, side in folded if side == "b"}
    return _Matching(matched, folded, used_a, used_b, notes)


def _compare_matched(da: Discovery, db: Discovery, matching: _Matching) -> list[Compared]:
    """Every pair compared, in A's layer order (a BN of B folded on A's side: at its place in B)."""
    order_a = {id(l): i for i, l in enumerate(da.layers)}
    order_b = {id(l): i for i, l in enumerate(db.layers)}
    fa, fb = da.checkpoint.format, db.checkpoint.format
    results: list[tuple[int, Compared]] = []
    for how, x, y in matching.matched:
        results.append((order_a[id(x)], compare_bn(x, y, fa, fb, how)))
    for layer, target, how, side in matching.folded:
        pos = order_a[id(layer)] if side == "a" else order_b[id(layer)]
        results.append((pos, compare_folded(layer, target, side, how)))
    results.sort(key=lambda r: r[0])
    return [c for _, c in results]


def _closing_notes(da: Discovery, db: Discovery, diffs: list[LayerDiff]) -> list[str]:
    """What the user should know about the whole comparison: sides without BN, eps 0, dtype changes."""
    notes: list[str] = []
    if not da.layers and not db.layers:
        notes.append("neither side has BatchNorm layers (both folded, or none): there is nothing to compare")
    else:
        for disc, side in ((da, "A"), (db, "B")):
            if not disc.layers and not any(d.folded_side == side.lower() for d in diffs):
                notes.append(f"{side} has no BatchNorm layers")
    notes += zero_eps_warnings(da.layers + db.layers)
    dtype_changes = sorted({(t.dtype_a, t.dtype_b) for d in diffs for t in d.tensors if t.dtype_a != t.dtype_b
                            and t.tensor in BN_TENSORS + ("folded weight",)})
    for da_t, db_t in dtype_changes:
        notes.append(f"dtype changes {da_t} → {db_t}; values are compared within {_lower(da_t, db_t)} rounding")
    return notes


def _verdict(diffs: list[LayerDiff], only_a: list[str], only_b: list[str]) -> tuple[str, list[str]]:
    """The summary: identical, equivalent within tolerance, or different with the top causes."""
    bad = [d for d in diffs if d.status == "different"]
    causes: list[str] = []

    def weight(d: LayerDiff) -> tuple[int, float]:
        errors = any(s.severity == "error" for s in d.settings)
        effect = d.output.max_rel if d.output is not None and math.isfinite(d.output.max_rel) else math.inf
        return (0 if errors else 1, -effect)

    for d in sorted(bad, key=weight)[:5]:
        name = d.name if d.name == d.name_b else f"{d.name} ↔ {d.name_b}"
        causes.append(f"{name}: {d.causes[0]}")
    if only_a:
        causes.append(f"{len(only_a)} BN layer(s) only in A: {', '.join(only_a[:5])}")
    if only_b:
        causes.append(f"{len(only_b)} BN layer(s) only in B: {', '.join(only_b[:5])}")
    if bad or only_a or only_b:
        return "different", causes
    if not diffs:
        return "identical", []  # neither side has BN layers: nothing differs
    if all(d.status == "identical" for d in diffs):
        return "identical", []
    return "equivalent", []
