"""Deployment rules (BN3xx): what changes a layer's output when it leaves PyTorch (eps,
precision, folding into the producer)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from bninspect.numerics import KERAS_EPS, TORCH_EPS
from bninspect.rules.base import Context, aligned, channel_list, rule, sig

if TYPE_CHECKING:
    from bninspect.layers import BNLayer

# Storage dtypes too coarse for running statistics (their precision: numerics.reference).
LOW_PRECISION = ("float16", "bfloat16")


@rule("BN301", "eps-not-default", "info", "eps differs from PyTorch's default, or from --expect-eps")
def eps_not_default(layer: BNLayer, ctx: Context):
    """
    ## What it does
    Reports a module's eps that is not PyTorch's default 1e-5 (info), or, with
    `--expect-eps E`, a module's eps (or the one given with `--eps`) that differs from E
    (error). A plain state dict does not store eps, so there the rule has nothing to compare.

    ## Why is this bad?
    eps is a module attribute, not a state-dict entry: whoever rebuilds the model from a
    state dict, or converts it to another runtime, must set it by hand, and the defaults
    differ (PyTorch 1e-5, Keras/TensorFlow 1e-3). A model trained with one eps and run with
    another computes `γ·(x − μ)/√(σ² + ε') + β`: a small change for most channels, a large one
    where σ² is comparable to ε (see BN302).

    ## Example
    A model ported from Keras keeps `eps=1e-3`; the deployment code builds it with
    `nn.BatchNorm2d(c)` (eps 1e-5).

    ## Use instead
    Record the eps with the weights (TorchScript, or a config next to the state dict) and
    build the deployment model with it; in CI, pin it with `--expect-eps`.
    """
    expect = ctx.thresholds.expect_eps
    if layer.eps_source not in ("module", "user"):
        return
    if expect is not None and not math.isclose(layer.eps, expect, rel_tol=1e-6):
        yield eps_not_default.finding(
            layer, f"{layer.name}: eps = {layer.eps:g} ({layer.eps_source}) but {expect:g} is expected",
            evidence={"eps": layer.eps, "expected_eps": expect}, severity="error",
            fix=f"build this layer with eps={expect:g}, or correct --expect-eps")
    elif expect is None and layer.eps_source == "module" and not math.isclose(layer.eps, TORCH_EPS, rel_tol=1e-6):
        yield eps_not_default.finding(
            layer, f"{layer.name}: eps = {layer.eps:g}, not PyTorch's default {TORCH_EPS:g}: "
                   "code that rebuilds this model from a state dict must set it",
            evidence={"eps": layer.eps, "pytorch_default_eps": TORCH_EPS},
            fix=f"construct this layer with eps={layer.eps:g} wherever the model is rebuilt; pin it with --expect-eps")


@rule("BN302", "eps-sensitive", "warning", "output depends strongly on eps (1e-5 vs 1e-3)")
def eps_sensitive(layer: BNLayer, ctx: Context):
    """
    ## What it does
    Computes, from the layer's own statistics, how much its output changes when eps goes from
    1e-5 (PyTorch's default) to 1e-3 (Keras/TensorFlow's), for inputs one standard deviation
    from the mean: the RMS over channels of the change, relative to the layer's output scale
    (the RMS of its channels' output spreads). Reports layers where that exceeds
    `--eps-tolerance` (default 0.05, i.e. 5%), with the channels that change most.

    ## Why is this bad?
    eps is not stored in a state dict and the two ecosystems' defaults differ by 100×. For
    a channel with σ² ≫ ε the choice hardly matters (σ² = 1: 0.05%), but the change grows
    like (ε_hi − ε_lo)/(2σ²): with σ² = 0.01 it is 4.6%, with σ² = 1e-4 the output shrinks to
    a third. Such a layer silently computes something else whenever the model is rebuilt or
    converted with the other eps, and the error compounds through the network. A single
    channel with a small variance among thousands does not make a layer eps-sensitive.

    ## Example
    `features.3.bn`: running_var around 2e-4 in most channels; with eps 1e-3 instead of 1e-5
    the output changes by 58% of its scale.

    ## Use instead
    Make sure the eps used at deployment is the one used in training (TorchScript keeps it;
    with a state dict, record it); check with `bninspect check --expect-eps` and `bninspect
    diff` against the exported model.
    """
    import numpy as np

    from bninspect.numerics.reference import channel_change_bound, eps_sensitivity

    stats = aligned(layer, "running_var")
    gamma = layer.gamma()
    if stats is None or gamma.shape[0] != layer.channels:
        return
    var = stats[0]
    tol = ctx.thresholds.eps_tolerance
    positive = var[var > 0]
    # Quick exit: the layer's change is at most the largest per-channel ratio, that of the
    # smallest positive variance.
    if positive.size == 0 or not channel_change_bound(float(np.min(positive))) > tol:
        return
    sens = eps_sensitivity(var, gamma, layer.eps)
    if not sens.layer > tol:
        return
    with np.errstate(invalid="ignore"):
        idx = np.flatnonzero(sens.channels > tol)
    if idx.size == 0:  # many channels just under the tolerance: name the one that moves most
        idx = np.array([int(np.nanargmax(sens.channels))])
    worst = float(np.nanmax(sens.channels))
    yield eps_sensitive.finding(
        layer, f"{layer.name}: switching eps between {TORCH_EPS:g} and {KERAS_EPS:g} changes the output by "
               f"{sens.layer:.1%} of its scale (tolerance {tol:.1%}), up to {worst:.1%} in {channel_list(idx, layer.channels)}; "
               f"running_var there as low as {sig(np.min(var[idx]))}",
        channels=idx, evidence={"relative_change": sig(sens.layer), "max_channel_relative_change": sig(worst),
                                "tolerance": tol, "min_running_var": sig(np.min(var[idx])), "eps": layer.eps},
        fix="deploy with exactly the training eps (record it with the weights); verify with --expect-eps and bninspect diff")


@rule("BN303", "low-precision-statistics", "warning", "running statistics stored in float16/bfloat16")
def low_precision(layer: BNLayer, ctx: Context):
    """
    ## What it does
    Finds layers whose `running_mean` or `running_var` is stored in float16 or bfloat16.

    ## Why is this bad?
    Running statistics are averages updated with a small momentum: `(1 − m)·old + m·batch`
    with m = 0.1 changes a float16 value by less than its rounding step once the update
    is below 2^-11 of it, so the statistics stall. float16 (10 significand bits, smallest
    normal 6.1e-5) also loses small variances to subnormals or zero, and bfloat16 keeps only
    7 bits (0.8% steps). Mixed-precision training (torch.autocast) leaves parameters and
    buffers in float32 for this reason; a half-precision checkpoint has already lost that
    precision.

    A layer stored in low precision as a whole (γ and β too), as YOLO-style checkpoints
    are saved after training, is reported as info unless variances fell below float16's
    normal range: its statistics were updated in float32 and only rounded for storage.

    ## Example
    `model.half()` before `torch.save(model.state_dict())`.

    ## Use instead
    Keep BatchNorm buffers in float32 (convert the rest with `model.half()` then
    `bn.float()` per BatchNorm, or save before converting); re-estimate the statistics if
    they were updated in half precision.
    """
    import numpy as np

    from bninspect.numerics.reference import MACHINE_EPS, SMALLEST_NORMAL

    dtypes = {n: layer.tensors[n].dtype for n in ("running_mean", "running_var") if n in layer.tensors}
    low = {n: d for n, d in dtypes.items() if d in LOW_PRECISION}
    if not low:
        return
    dtype = low.get("running_var") or next(iter(low.values()))
    bits, smallest = round(-math.log2(MACHINE_EPS[dtype])), SMALLEST_NORMAL[dtype]  # significand bits stored
    var = layer.values("running_var")
    evidence = {"significand_bits": bits, "relative_step": sig(2.0**-bits)}
    channels: list[int] = []
    detail = ""
    if var is not None and "running_var" in low:
        channels = np.flatnonzero((var >= 0) & (var < smallest)).tolist()
        evidence["channels_below_normal_range"] = len(channels)
        if channels:
            detail = f"; running_var below {smallest:.2g} (subnormal or zero) in {channel_list(channels, var.shape[0])}"
    stored = " and ".join(f"{n} in {d}" for n, d in low.items())
    # A layer stored in half precision as a whole (γ and β too) is a checkpoint converted for
    # storage after training, as YOLO-style .pt files are: the statistics were updated in
    # float32 and only rounded, which matters where small variances were lost (warning) and
    # otherwise is worth knowing (info). Statistics in half beside float32 γ/β were converted
    # on their own or updated in half: a warning.
    affine = [layer.tensors[n].dtype for n in ("weight", "bias") if n in layer.tensors]
    whole = bool(affine) and all(d in LOW_PRECISION for d in affine)
    evidence["whole_layer_low_precision"] = whole
    yield low_precision.finding(
        layer, f"{layer.name}: {stored}: {bits} significand bits (steps of {2.0**-bits:.2g} relative){detail}"
               + ("; the whole layer is in low precision, as in a checkpoint converted for storage" if whole else ""),
        channels=channels, evidence=evidence, severity="info" if whole and not channels else None,
        fix="keep BatchNorm buffers in float32 (save before model.half(), or .float() the BN modules); re-estimate if updated in half"
            if not whole else "load it as float32 before inference (model.float()), and never train on in half precision")


@rule("BN304", "redundant-producer-bias", "info", "producer conv has a bias that BatchNorm cancels")
def redundant_bias(layer: BNLayer, ctx: Context):
    """
    ## What it does
    Finds BatchNorm layers whose producer (the conv or linear whose output they normalize)
    has a bias.

    ## Why is this bad?
    BatchNorm subtracts the mean of each channel, so a constant per-channel bias b added just
    before it cancels: in training the batch mean contains b, at inference `(x + b − μ)`
    with μ tracking `E[x] + b`. The bias is a parameter that learns nothing, costs an add per
    output, and gives optimizers and weight decay something to drift on.

    ## Example
    `nn.Conv2d(32, 64, 3)` (bias=True by default) followed by `nn.BatchNorm2d(64)`.

    ## Use instead
    Build the conv with `bias=False`. For an existing checkpoint, fold it: running_mean ← running_mean − b,
    then drop the bias (the eval output is unchanged).
    """
    import numpy as np

    producer = layer.producer
    if producer is None or producer.bias is None:
        return
    bias = producer.bias.float64().reshape(-1)
    biggest = float(np.nanmax(np.abs(bias))) if bias.size else 0.0
    yield redundant_bias.finding(
        layer, f"{layer.name}: its producer {producer.name} has a bias (max |b| = {sig(biggest)}) that the mean "
               "subtraction cancels",
        evidence={"max_abs_producer_bias": sig(biggest), "producer_bias_length": int(bias.size)},
        fix=f"build {producer.name} with bias=False; for this checkpoint set running_mean -= bias and drop the bias")
