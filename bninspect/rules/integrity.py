"""Integrity rules (BN0xx): values and shapes no working BatchNorm layer can have."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bninspect.rules.base import Context, channel_list, rule, sig

if TYPE_CHECKING:
    from bninspect.layers import BNLayer

FLOAT_TENSORS = ("weight", "bias", "running_mean", "running_var")


@rule("BN001", "non-finite-values", "error", "NaN or Inf in a BatchNorm tensor")
def non_finite(layer: BNLayer, ctx: Context):
    """
    ## What it does
    Finds NaN or Inf in a layer's `weight`, `bias`, `running_mean` or `running_var`, and names
    the tensors and channels.

    ## Why is this bad?
    In eval mode every output of a channel is `γ·(x − μ)/√(σ² + ε) + β`: one non-finite term
    makes the whole channel NaN or Inf for every input, and the next layer spreads it to all
    channels. It usually means training diverged (a loss spike, a learning rate too high, fp16
    overflow) or the file was corrupted.

    ## Example
    `features.2.bn.running_var[3] = nan` after a diverged fine-tuning run.

    ## Use instead
    Restore the layer from an earlier checkpoint, or re-estimate its running statistics on
    training data (`bninspect drift --write-recalibrated`), and find why training diverged.
    """
    import numpy as np

    bad_channels: set[int] = set()
    parts, evidence = [], {}
    for name in FLOAT_TENSORS:
        v = layer.values(name)
        if v is None or np.isfinite(v).all():
            continue
        nan, inf = np.flatnonzero(np.isnan(v)), np.flatnonzero(np.isinf(v))
        idx = np.union1d(nan, inf)
        bad_channels.update(int(i) for i in idx)
        kinds = "/".join(k for k, n in (("NaN", nan.size), ("Inf", inf.size)) if n)
        parts.append(f"{kinds} in {name}, {channel_list(idx, v.shape[0])}")
        evidence[f"{name}_nan"] = int(nan.size)
        evidence[f"{name}_inf"] = int(inf.size)
    if parts:
        yield non_finite.finding(
            layer, f"{layer.name}: " + "; ".join(parts), channels=sorted(bad_channels), evidence=evidence,
            fix="restore this layer from a good checkpoint or re-estimate its statistics; find why training diverged")


@rule("BN002", "negative-variance", "error", "negative running_var")
def negative_variance(layer: BNLayer, ctx: Context):
    """
    ## What it does
    Finds channels whose `running_var` is below zero.

    ## Why is this bad?
    A variance cannot be negative. `√(σ² + ε)` is NaN once `σ² < −ε`, and just above that the
    scale `γ/√(σ² + ε)` explodes, so the channel's output is garbage at inference. PyTorch's
    update `new = (1 − m)·old + m·batch` keeps a non-negative variance non-negative, so a
    negative one comes from a bug outside BatchNorm: a bad conversion, hand-edited statistics,
    or corruption.

    ## Example
    `layer1.0.bn2.running_var[7] = -0.31`.

    ## Use instead
    Re-estimate the running statistics on training data (`bninspect drift
    --write-recalibrated`) or restore them from the checkpoint you converted from.
    """
    import numpy as np

    var = layer.values("running_var")
    if var is None:
        return
    negative = var < 0
    if negative.any():
        idx = np.flatnonzero(negative)
        yield negative_variance.finding(
            layer, f"{layer.name}: running_var is negative in {channel_list(idx, var.shape[0])}; lowest {sig(var[idx].min())}",
            channels=idx, evidence={"negative_channels": int(idx.size), "min_running_var": sig(var[idx].min())},
            fix="re-estimate the running statistics (bninspect drift --write-recalibrated) or restore them from the source checkpoint")


@rule("BN003", "length-mismatch", "error", "tensors disagree in length, or C differs from the producer", scope="model")
def length_mismatch(ctx: Context):
    """
    ## What it does
    Checks that `weight`, `bias`, `running_mean` and `running_var` are tensors that all hold
    one value per channel (C values, 1-D), that `num_batches_tracked` is a tensor holding a
    single number, and that C equals the output channels of the producer discovery matched
    (the conv or linear the layer normalizes). Entries named like a BatchNorm's that give no
    C at all (no 1-D tensor among them) are reported too: as an error where some are not
    tensors (a list, a string, a Python number), as info where they are tensors of other
    shapes (a custom module may keep statistics as [1, C]).

    ## Why is this bad?
    Entry i of each tensor belongs to channel i. Tensors of different lengths cannot all be
    right: `load_state_dict` refuses them with a size-mismatch error, and converters that
    copy them anyway pair statistics with the wrong channels. A value that is not a tensor
    (what a `weights_only` pickle still allows) is refused by `load_state_dict` too.

    Only the producer discovery matched is compared: the nearest earlier conv of another width
    is often not the producer at all (a DenseNet or pre-activation block normalizes its
    input, not the previous conv's output), so comparing with it would report healthy models.

    ## Example
    `head.bn.weight` has 15 values while `head.bn.running_mean` has 16; `bn2.running_mean` is
    a 0-dim tensor, or the Python int 0.

    ## Use instead
    Re-export the layer from the model that trained it; if the model was pruned, prune the
    BatchNorm tensors with the same channel mask as the conv.
    """
    fix = "re-export the layer from the model that trained it (after pruning, prune BN tensors with the conv's channel mask)"
    for layer in ctx.layers:
        problems, evidence = _mismatches(layer)
        if problems:
            yield length_mismatch.finding(layer, f"{layer.name}: C = {layer.channels} but " + ", ".join(problems),
                                          evidence=evidence, fix=fix)
    for name, bad in ctx.malformed.items():
        yield length_mismatch.finding(name, bad.message, severity="error" if bad.not_tensors else "info",
                                      evidence={"not_tensors": int(bad.not_tensors)}, fix=fix)


def _mismatches(layer: BNLayer) -> tuple[list[str], dict]:
    """What in one layer does not hold C values, as phrases, and the numbers behind them."""
    lengths = {}
    problems = []
    for name in FLOAT_TENSORS:
        ref = layer.tensors.get(name)
        if ref is not None:
            lengths[name] = ref.numel
            if ref.ndim != 1 and ref.numel == layer.channels:  # [1, C] or, for C = 1, a 0-dim tensor
                problems.append(f"{name} has shape {list(ref.shape)}")
            elif ref.numel != layer.channels:
                problems.append(f"{name} has {ref.numel}" + (f" (shape {list(ref.shape)})" if ref.ndim != 1 else ""))
    evidence: dict = {"channels": layer.channels, **{f"{k}_length": v for k, v in lengths.items()}}
    nbt = layer.tensors.get("num_batches_tracked")
    if nbt is not None and nbt.numel != 1:
        problems.append(f"num_batches_tracked has {nbt.numel} values instead of 1")
        evidence["num_batches_tracked_length"] = nbt.numel
    for name, what in layer.unusable.items():
        problems.append(f"{name} is {what}, not " + ("a tensor" if name == "num_batches_tracked"
                                                      else f"a 1-D tensor of {layer.channels} values"))
    if layer.unusable:
        evidence["unusable"] = dict(layer.unusable)
    producer = layer.producer
    if producer is not None and producer.out_channels != layer.channels:
        problems.append(f"its producer {producer.name} has {producer.out_channels} output channels")
        evidence["producer_out_channels"] = producer.out_channels
    return problems, evidence

