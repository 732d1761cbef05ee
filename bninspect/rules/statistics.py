"""Statistics-health rules (BN1xx): running statistics that are untrained, barely trained,
inconsistent across layers, imported, or numerically dangerous.

Statistics are judged by their values, never by ``num_batches_tracked`` alone: a checkpoint
converted from another framework has trained statistics and a count of 0.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from bninspect.rules.base import Context, aligned, channel_list, name_list, rule, sig

if TYPE_CHECKING:
    import numpy as np

    from bninspect.layers import BNLayer

# Largest finite float16 (IEEE 754 binary16: (2 − 2^-10)·2^15).
FLOAT16_MAX = 65504.0
# Smallest normal float32: a running_var at or below it is zero to float32 precision.
FLOAT32_TINY = 2.0**-126  # np.finfo(np.float32).tiny
# A robust z-score needs enough channels for the median and MAD to mean something.
MIN_CHANNELS_FOR_OUTLIERS = 8


def is_default(layer: BNLayer) -> bool:
    """running_mean exactly 0 and running_var exactly 1 in every channel: PyTorch's initial values
    (``_NormBase.reset_running_stats``), untouched by any train-mode forward pass."""
    import numpy as np

    stats = aligned(layer, "running_mean", "running_var")
    if stats is None or layer.channels == 0:
        return False
    mean, var = stats
    return bool(np.all(mean == 0.0) and np.all(var == 1.0))


@rule("BN101", "default-statistics", "error", "running statistics never updated (mean 0, var 1)")
def default_statistics(layer: BNLayer, ctx: Context):
    """
    ## What it does
    Finds layers whose `running_mean` is exactly 0 and `running_var` exactly 1 in every
    channel: the values PyTorch initialises them with. Decided from the statistics alone, not
    from `num_batches_tracked` (which converters set to 0 on trained statistics).

    ## Why is this bad?
    The layer never ran a forward pass in train mode (or its statistics were reset). In eval
    mode it computes `γ·(x − 0)/√(1 + ε) + β`: it normalizes nothing, so its input's real mean
    and scale pass straight through and every later layer sees activations it was not trained
    on. Accuracy collapses although the weights are fine.

    ## Example
    A head added after training, a model kept in `eval()` during fine-tuning, or a checkpoint
    saved before the first training step.

    ## Use instead
    Estimate the statistics: run a few hundred training batches through the model in train
    mode without gradient steps (or `bninspect drift --write-recalibrated`), then save it.
    """
    if is_default(layer):
        nbt = layer.num_batches_tracked
        counted = "" if nbt is None else f" (num_batches_tracked = {nbt})"
        yield default_statistics.finding(
            layer, f"{layer.name}: running_mean is 0 and running_var is 1 in all {layer.channels} channels{counted}: "
                   "the initial values; this layer normalizes nothing at inference",
            channels=range(layer.channels),
            evidence={"channels": layer.channels, **({} if nbt is None else {"num_batches_tracked": nbt})},
            fix="re-estimate the running statistics on training data in train mode (bninspect drift --write-recalibrated)")


def _momentum_phrase(layer: BNLayer) -> str:
    # Only for a numeric momentum: discovery sets None only from a module (cumulative
    # average), and a state dict gets PyTorch's default with momentum_source "default".
    if layer.momentum_source == "module":
        return f"momentum {layer.momentum:g}"
    return f"momentum {layer.momentum:g} (PyTorch's default; not stored in this file)"


@rule("BN102", "few-updates", "warning", "running statistics from few updates")
def few_updates(layer: BNLayer, ctx: Context):
    """
    ## What it does
    Finds layers with `0 < num_batches_tracked < N` (`--min-updates`, default 200) and states
    how much the initial values (mean 0, variance 1) still weigh in the running statistics.

    ## Why is this bad?
    PyTorch updates `new = (1 − m)·old + m·batch` (m = momentum, default 0.1), so after n
    updates the initial value still weighs `(1 − m)^n`: 0.59 after 5 updates, 0.12 after 20.
    The statistics are biased towards 0 and 1 and, from few batches, noisy; they also lag the
    weights, which changed at every step. With `momentum=None` PyTorch keeps a cumulative
    average (m = 1/n): the initial value weighs nothing, but the average covers only n
    batches, most of them computed with early weights.

    ## Example
    A model trained for 5 steps and saved: `num_batches_tracked = 5`, initial weight 0.59.

    ## Use instead
    Train longer, or re-estimate the statistics with the final weights: run a few hundred
    batches in train mode without gradient steps (`bninspect drift --write-recalibrated`).
    """
    from bninspect.numerics.reference import initial_weight

    n = layer.num_batches_tracked
    if n is None or not 0 < n < ctx.thresholds.min_updates or is_default(layer):
        return
    weight = initial_weight(layer.momentum, n)
    if layer.momentum is None:
        how = ("momentum=None: a cumulative average, so the initial values weigh 0, "
               f"but the statistics average only {n} batches")
    else:
        m = layer.momentum
        how = f"with {_momentum_phrase(layer)} the initial values (mean 0, var 1) still weigh (1 − {m:g})^{n} = {weight:.3g}"
    yield few_updates.finding(
        layer, f"{layer.name}: num_batches_tracked = {n} < {ctx.thresholds.min_updates}: {how}",
        evidence={"num_batches_tracked": n, "min_updates": ctx.thresholds.min_updates, "initial_value_weight": sig(weight)},
        fix="train longer or re-estimate the statistics with the final weights (bninspect drift --write-recalibrated)")


@rule("BN103", "mixed-update-counts", "warning", "num_batches_tracked differs strongly across layers", scope="model")
def mixed_counts(ctx: Context):
    """
    ## What it does
    Groups the layers by `num_batches_tracked` and reports each group whose count differs from
    the most common one by a factor of `--count-ratio` (default 10) or more; counts are
    compared as max/max(min, 1), so 0 against 40 is a factor of 40.

    ## Why is this bad?
    Every train-mode forward pass adds 1 to every BatchNorm layer it goes through, so layers
    trained together carry the same count (a layer used k times per pass carries k times
    it). Counts orders of magnitude apart mean the layers' statistics come from different
    training runs or data: a re-initialised or newly added head, a partially loaded
    checkpoint, or a backbone frozen in eval mode while the rest trained. Statistics from
    the other run may not match the weights they now feed.

    ## Example
    A backbone with `num_batches_tracked = 450000` from pre-training and a head with 300 from
    fine-tuning.

    ## Use instead
    Check that every part was loaded from the checkpoint you meant, then re-estimate the
    statistics of the whole model on the target data (`bninspect drift --write-recalibrated`).
    """
    counts = {l.name: l.num_batches_tracked for l in ctx.layers if l.num_batches_tracked is not None and not l.possible}
    if len(set(counts.values())) < 2:
        return
    tally = Counter(counts.values())
    groups: dict[int, list[str]] = {}
    for name, c in counts.items():
        groups.setdefault(c, []).append(name)
    # The most common count is the reference; on a tie the larger (longer-trained) one.
    reference = max(tally, key=lambda c: (tally[c], c))
    summary = ", ".join(f"{c} ×{k}" for c, k in sorted(tally.items(), key=lambda ck: (-ck[1], -ck[0])))
    for count in sorted(tally, key=lambda c: (-tally[c], c)):
        if count == reference:
            continue
        ratio = max(count, reference) / max(min(count, reference), 1)
        if ratio < ctx.thresholds.count_ratio:
            continue
        members = groups[count]
        yield mixed_counts.finding(
            members[0],
            f"{members[0]}: num_batches_tracked = {count} in {len(members)} layer{'s' if len(members) > 1 else ''} "
            f"({name_list(members)}) but {reference} in {tally[reference]} of {len(counts)} layers "
            f"({ratio:.3g}× apart); counts: {summary}",
            evidence={"num_batches_tracked": count, "layers_with_count": len(members),
                      "most_common_count": reference, "layers_with_most_common_count": tally[reference],
                      "ratio": sig(ratio), "count_ratio": ctx.thresholds.count_ratio},
            fix="check that every part of the model was loaded from the intended checkpoint; re-estimate the statistics of the whole model")


@rule("BN104", "imported-statistics", "info", "trained statistics with num_batches_tracked = 0 (converted)")
def imported_statistics(layer: BNLayer, ctx: Context):
    """
    ## What it does
    Finds layers whose statistics are clearly trained (not the initial mean 0 / variance 1)
    while `num_batches_tracked` is 0. (A missing `num_batches_tracked` is BN206's case.)

    ## Why is this bad?
    It is not wrong in itself: converters (from Keras/TensorFlow, ONNX, Caffe, MXNet) copy the
    statistics and set the count to 0. But such a model was trained under another framework's
    conventions, and those must be carried over by hand: its eps (Keras/TensorFlow default
    1e-3, PyTorch 1e-5) and its momentum (Keras `momentum=0.99` is PyTorch `momentum=0.01`;
    ONNX `momentum=0.9` is PyTorch `0.1`). A wrong eps changes every output a little and
    eps-sensitive layers a lot (BN302).

    ## Example
    `features.2.bn.num_batches_tracked = 0` with `running_var` between 0.02 and 3.1.

    ## Use instead
    Look up the source model's eps and momentum and set them on the PyTorch modules
    (`bn.eps = 1e-3`); check with `bninspect check --expect-eps`.
    """
    import numpy as np

    if layer.num_batches_tracked != 0 or aligned(layer, "running_mean", "running_var") is None or is_default(layer):
        return
    mean, var = layer.values("running_mean"), layer.values("running_var")
    yield imported_statistics.finding(
        layer, f"{layer.name}: num_batches_tracked = 0 but the statistics are trained (running_mean "
               f"{sig(np.nanmin(mean))} … {sig(np.nanmax(mean))}, running_var {sig(np.nanmin(var))} … {sig(np.nanmax(var))}): "
               "likely converted from another framework; check its eps (Keras/TF 1e-3, PyTorch 1e-5) "
               "and momentum convention (Keras 0.99 = PyTorch 0.01)",
        evidence={"num_batches_tracked": 0, "running_mean_min": sig(np.nanmin(mean)), "running_mean_max": sig(np.nanmax(mean)),
                  "running_var_min": sig(np.nanmin(var)), "running_var_max": sig(np.nanmax(var)), "eps": layer.eps},
        fix="set the source framework's eps and momentum on the modules (e.g. bn.eps = 1e-3 for Keras), then check with --expect-eps")


@rule("BN105", "zero-variance", "warning", "running_var = 0 (constant channel)")
def zero_variance(layer: BNLayer, ctx: Context):
    """
    ## What it does
    Finds channels whose `running_var` is 0 (at or below float32's smallest normal number,
    1.2e-38).

    ## Why is this bad?
    The producer's channel was constant on the training data: a dead filter, or a dead ReLU
    feeding it. At inference the layer divides by `√(0 + ε)`, so any input that differs from
    the stored mean, however slightly (another dataset, quantization, float16), is amplified
    by `γ/√ε` (316·γ with ε = 1e-5).

    ## Example
    `features.5.bn.running_var[12] = 0.0` with `weight[12] = 0.8`: gain 253.

    ## Use instead
    Prune the channel (and the matching producer filter), or set its `weight` to 0 so it
    outputs the constant `β` it produced in training.
    """
    import numpy as np

    from bninspect.numerics.reference import zero_variance_gain

    var = layer.values("running_var")
    if var is None or var.shape[0] != layer.channels:
        return
    zero = (var >= 0) & (var <= FLOAT32_TINY)
    if not zero.any():
        return
    idx = np.flatnonzero(zero)
    gain = zero_variance_gain(layer.eps)
    effect = (f"any deviation from the mean is amplified by γ/√ε = γ·{gain:.3g}" if layer.eps > 0 else
              "with eps 0 inference divides by √(σ² + ε) = 0 there: ±inf, NaN where x = μ")
    yield zero_variance.finding(
        layer, f"{layer.name}: running_var is 0 in {channel_list(idx, layer.channels)}: a constant channel; {effect}",
        channels=idx, evidence={"zero_variance_channels": int(idx.size), "amplification_per_unit_gamma": sig(gain), "eps": layer.eps},
        fix="prune these channels with their producer filters, or set their weight to 0 so they output β")


@rule("BN106", "extreme-scale", "warning", "extreme scale |γ|/√(σ²+ε)")
def extreme_scale(layer: BNLayer, ctx: Context):
    """
    ## What it does
    Finds channels whose scale `|γ|/√(σ² + ε)` (the gain eval mode applies to `x − μ`) is
    above `--max-scale` (default 1e3), and reports the largest input that still fits in
    float16 after that multiply.

    ## Why is this bad?
    Noise and rounding in the input are amplified by the same factor. In float16 the
    folded multiply `scale·x` overflows to Inf once `|x| > 65504/scale`; in int8
    quantization the folded conv weights span a range the 8 bits cannot resolve.

    ## Example
    `layer3.1.bn2`: `weight[4] = 12.0`, `running_var[4] = 3e-8`, scale 3.8e3; float16
    overflows for inputs beyond ±17.

    ## Use instead
    Check where the tiny variance or huge γ comes from (a near-dead channel, weight decay
    missing on γ, a bad conversion); run this layer in float32, or prune the channel.
    """
    import numpy as np

    from bninspect.numerics.reference import abs_scale

    stats = aligned(layer, "running_var")
    gamma = layer.gamma()
    if stats is None or gamma.shape[0] != layer.channels:
        return
    (var,) = stats
    scale = abs_scale(gamma, var, layer.eps)  # eval mode: y = scale·(x − μ) + β
    extreme = np.isfinite(scale) & (scale > ctx.thresholds.max_scale)
    if not extreme.any():
        return
    idx = np.flatnonzero(extreme)
    worst = float(scale[idx].max())
    fits = FLOAT16_MAX / worst
    yield extreme_scale.finding(
        layer, f"{layer.name}: scale |γ|/√(σ²+ε) above {ctx.thresholds.max_scale:g} in {channel_list(idx, layer.channels)}, "
               f"up to {worst:.3g}: noise is amplified that much, and in float16 inputs beyond ±{fits:.3g} overflow",
        channels=idx, evidence={"max_scale": sig(worst), "threshold": ctx.thresholds.max_scale, "float16_max_input": sig(fits)},
        fix="find the cause of the tiny variance or huge γ; run this layer in float32 or prune the channel")


@rule("BN107", "dead-channels", "info", "|γ| ≈ 0: channel outputs a constant")
def dead_channels(layer: BNLayer, ctx: Context):
    """
    ## What it does
    Finds channels whose `|γ|` (`weight`) is at or below `--dead-gamma` (default 1e-6).

    ## Why is this bad?
    The channel's output is `γ·(x − μ)/√(σ² + ε) + β`, whose spread is at most `|γ|`: with
    γ ≈ 0 it outputs the constant β whatever its input. It is not an error (L1 penalties on γ
    do this on purpose, "network slimming"), but the channel and its producer filter cost
    compute for nothing.

    ## Example
    `features.3.bn.weight[17] = 3e-9`: that channel always outputs `bias[17]`.

    ## Use instead
    Prune the channel: remove the producer filter and the BN entry, and fold the constant
    β into the next layer's bias.
    """
    import numpy as np

    w = aligned(layer, "weight")
    if w is None:
        return
    (gamma,) = w
    dead = np.abs(gamma) <= ctx.thresholds.dead_gamma
    if not dead.any():
        return
    idx = np.flatnonzero(dead)
    yield dead_channels.finding(
        layer, f"{layer.name}: |γ| ≤ {ctx.thresholds.dead_gamma:g} in {channel_list(idx, layer.channels)}: "
               "these channels output the constant β (prunable)",
        channels=idx, evidence={"dead_channels": int(idx.size), "max_abs_gamma": sig(np.abs(gamma[idx]).max()),
                                "threshold": ctx.thresholds.dead_gamma},
        fix="prune these channels with their producer filters and fold the constant β into the next layer's bias")


def _median(x: np.ndarray) -> float:
    # np.median's generic machinery costs ~50 µs a call; a sort of a few hundred values, ~3 µs.
    import numpy as np

    s = np.sort(x)
    n = s.shape[0]
    return float(0.5 * (s[(n - 1) // 2] + s[n // 2]))


def _robust_scale(x: np.ndarray) -> tuple[float, np.ndarray, float, float]:
    """(median, |x − median|, factor, scale) with robust z = factor·(x − median)/scale; factor 0
    when the values do not vary."""
    med = _median(x)
    dev = abs(x - med)
    mad = _median(dev)
    if mad > 0:
        return med, dev, 0.6745, mad
    mean_ad = dev.mean()
    if mean_ad > 0:
        return med, dev, 1.0, 1.253314 * mean_ad
    return med, dev, 0.0, 1.0


def robust_z(x: np.ndarray) -> np.ndarray:
    """Modified z-scores 0.6745·(x − median)/MAD (Iglewicz & Hoaglin, "How to Detect and Handle
    Outliers", 1993). Where the MAD is 0 (over half the values equal), the mean absolute deviation
    stands in: (x − median)/(1.253314·MeanAD), 1.253314 = √(π/2) makes it a σ estimate for
    normal data. All zeros when the values do not vary."""
    import numpy as np

    med, _, factor, scale = _robust_scale(x)
    return factor * (x - med) / scale if factor else np.zeros_like(x)


def max_abs_robust_z(x: np.ndarray) -> float:
    """The largest |robust_z(x)|, from the largest deviation alone: dividing by a positive
    scale (and rounding) keeps the order, so this is exactly robust_z's maximum, without
    building z for a layer that has no outlier (almost every layer)."""
    _, dev, factor, scale = _robust_scale(x)
    return float(factor * dev.max() / scale) if factor else 0.0


@rule("BN108", "outlier-channels", "info", "running statistics far from the layer's other channels")
def outlier_channels(layer: BNLayer, ctx: Context):
    """
    ## What it does
    Scores each channel's `running_mean`, and the logarithm of its `running_var`, against the
    layer's other channels with a robust z-score (median and MAD, Iglewicz & Hoaglin), and
    reports channels above `--outlier-z` (default 20). Layers with fewer than 8 channels are
    skipped; NaN/Inf (BN001), negative (BN002) and zero (BN105) variances are left to their
    own rules.

    ## Why is this bad?
    Channels of one layer see the same data through similar filters, so their statistics
    usually sit within a few robust deviations of each other. One channel tens of deviations
    away points to a diverging filter, a corrupted value (a flipped exponent bit turns 0.5 into
    1.7e38), or statistics pasted from another layer.

    ## Example
    `layer2.0.bn1.running_mean[9] = 4.1e4` while the other channels lie between −2 and 2.

    ## Use instead
    Compare with an earlier checkpoint; if the weights are fine, re-estimate the statistics
    (`bninspect drift --write-recalibrated`).
    """
    import numpy as np

    stats = aligned(layer, "running_mean", "running_var")
    if stats is None or layer.channels < MIN_CHANNELS_FOR_OUTLIERS:
        return
    mean, var = stats
    flagged: dict[int, float] = {}
    evidence: dict[str, float] = {}
    usable_var = np.isfinite(var) & (var > FLOAT32_TINY)
    all_usable = bool(usable_var.all())
    if all_usable:
        log_var = np.log(var)
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            log_var = np.log(var)
    for name, values, ok in (("running_mean", mean, np.isfinite(mean)), ("log_running_var", log_var, usable_var)):
        whole = all_usable if ok is usable_var else bool(ok.all())
        kept = values if whole else values[ok]
        if kept.size < MIN_CHANNELS_FOR_OUTLIERS or not max_abs_robust_z(kept) > ctx.thresholds.outlier_z:
            continue  # the common case: nothing to report
        idx = np.flatnonzero(ok)
        z = robust_z(kept)
        hits = np.abs(z) > ctx.thresholds.outlier_z
        for i, score in zip(idx[hits], z[hits]):
            flagged[int(i)] = max(flagged.get(int(i), 0.0), abs(float(score)))
        if hits.any():
            evidence[f"{name}_max_z"] = sig(np.abs(z).max())
            evidence[f"{name}_median"] = sig(np.median(kept))
    if not flagged:
        return
    channels = sorted(flagged)
    worst = max(channels, key=flagged.get)
    yield outlier_channels.finding(
        layer, f"{layer.name}: running statistics far from the other channels in {channel_list(channels, layer.channels)}; "
               f"worst channel {worst}: running_mean {sig(mean[worst])}, running_var {sig(var[worst])}, "
               f"robust z {flagged[worst]:.3g} (threshold {ctx.thresholds.outlier_z:g})",
        channels=channels, evidence={**evidence, "outlier_z": ctx.thresholds.outlier_z},
        fix="compare with an earlier checkpoint; re-estimate the statistics if the weights are fine")
