"""Mode and configuration rules (BN2xx): how the saved layers will behave at inference.

The training flag, momentum and module class are facts only a module carries (a TorchScript
archive, read statically, or a pickled module opened with --trust); from a plain state dict
these rules stay silent, except where the tensors themselves show the fact (BN201, BN206).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bninspect.rules.base import Context, name_list, rule

if TYPE_CHECKING:
    from bninspect.layers import BNLayer

# Exported graphs keep no batch counter at all (ONNX BatchNormalization and OpenVINO
# BatchNormInference take only scale, bias, mean and variance): its absence says nothing there.
FORMATS_WITHOUT_COUNT = frozenset({"onnx", "openvino-ir"})


@rule("BN201", "no-running-statistics", "warning", "no running statistics: inference uses batch statistics")
def no_running_statistics(layer: BNLayer, ctx: Context):
    """
    ## What it does
    Finds BatchNorm layers without running statistics: modules with
    `track_running_stats=False`, and weight/bias pairs that discovery judged a "possible
    BatchNorm" because they follow a conv of the same width without running buffers.

    ## Why is this bad?
    Without running statistics BatchNorm normalizes with the statistics of each batch, in
    eval mode too. Outputs then depend on the batch size and on the other samples in the
    batch: a single image gives different results than the same image in a batch of 64, and
    a batch of one 1×1 feature map cannot be normalized at all.

    ## Example
    `nn.BatchNorm2d(64, track_running_stats=False)`; the state dict holds only
    `bn.weight` and `bn.bias`.

    ## Use instead
    Train with `track_running_stats=True`, or estimate running statistics afterwards on
    training data (create the buffers, run batches in train mode) and enable them; if
    batch-dependent output is intended, always infer with large representative batches.
    """
    if layer.has("running_mean") and layer.has("running_var"):
        return
    if "running_mean" in layer.unusable or "running_var" in layer.unusable:
        return  # it has statistics, just not as tensors: BN003 says so
    if layer.possible:
        why = layer.evidence or "possible BatchNorm with track_running_stats=False: weight and bias, no running statistics"
    elif layer.track_running_stats is False:
        why = "track_running_stats=False"
    else:
        why = "no running_mean/running_var"
    yield no_running_statistics.finding(
        layer, f"{layer.name}: {why}: inference normalizes with each batch's own statistics, "
               "so outputs depend on batch size and batch content",
        evidence={"channels": layer.channels, "possible": int(layer.possible)},
        fix="train with track_running_stats=True or estimate running statistics on training data; else infer only with large batches")


@rule("BN202", "training-mode", "error", "BatchNorm saved in training mode")
def training_mode(layer: BNLayer, ctx: Context):
    """
    ## What it does
    Finds BatchNorm modules whose `training` flag is true in a saved module (a TorchScript
    archive or a pickled `nn.Module`).

    ## Why is this bad?
    In train mode BatchNorm normalizes with the statistics of the current batch, not the
    running statistics, and updates the running statistics with every call. A model scripted
    or saved without `model.eval()` keeps doing that after deployment: outputs depend on the
    batch, a batch of one is normalized against itself, and the stored statistics drift with
    whatever data the service sees.

    ## Example
    `torch.jit.script(model)` called on a model still in train mode after training.

    ## Use instead
    Call `model.eval()` before `torch.jit.script`, `torch.jit.trace`, `torch.save(model)` or
    an export, or call `.eval()` on the loaded module before inference.
    """
    if layer.training is True:
        yield training_mode.finding(
            layer, f"{layer.name}: saved in training mode: at inference it normalizes with batch statistics "
                   "and keeps updating its running statistics",
            evidence={"training": 1},
            fix="call model.eval() before torch.jit.script/trace or torch.save(model); or .eval() the loaded module")


@rule("BN203", "mixed-modes", "warning", "some BatchNorm modules in training mode, others in eval", scope="model")
def mixed_modes(ctx: Context):
    """
    ## What it does
    Reports a saved module in which some BatchNorm modules are in training mode and others in
    eval mode.

    ## Why is this bad?
    `model.eval()` sets every submodule to eval; a mix means something switched single
    modules afterwards (`module.train()` on a submodule, a freezing helper that forgot a
    branch, a custom `train()` override). The training-mode part normalizes with batch
    statistics at inference (BN202) while the rest does not, which is rarely intended and
    hard to see in outputs.

    ## Example
    A detector scripted with a frozen backbone in eval mode and the head still in train mode.

    ## Use instead
    Call `model.eval()` on the whole model right before saving or exporting it.
    """
    training = [l.name for l in ctx.layers if l.training is True]
    evaluating = [l.name for l in ctx.layers if l.training is False]
    if training and evaluating:
        yield mixed_modes.finding(
            training[0], f"{len(training)} BatchNorm module{'s' if len(training) > 1 else ''} in training mode "
                         f"({name_list(training)}) and {len(evaluating)} in eval mode",
            evidence={"training_layers": len(training), "eval_layers": len(evaluating)},
            fix="call model.eval() on the whole model right before saving or exporting it")


@rule("BN204", "cumulative-momentum", "info", "momentum=None: cumulative average")
def cumulative_momentum(layer: BNLayer, ctx: Context):
    """
    ## What it does
    Finds BatchNorm modules with `momentum=None`.

    ## Why is this bad?
    With `momentum=None` PyTorch keeps a cumulative moving average: each update uses
    m = 1/num_batches_tracked, so every batch since the start weighs the same. The statistics
    then mix activations from early weights with late ones (an exponential average forgets
    them), and the layer's behaviour depends on `num_batches_tracked`, which converters and
    other frameworks do not carry. It is legitimate for re-estimating statistics with fixed
    weights; elsewhere it is usually an accident.

    ## Example
    `nn.BatchNorm2d(64, momentum=None)`.

    ## Use instead
    Keep it only for statistics re-estimation with frozen weights; for training, use an
    exponential average (`momentum=0.1`, PyTorch's default).
    """
    if layer.momentum is None and layer.momentum_source == "module":
        nbt = layer.num_batches_tracked
        yield cumulative_momentum.finding(
            layer, f"{layer.name}: momentum=None: running statistics are a cumulative average over "
                   f"num_batches_tracked = {nbt if nbt is not None else 'unknown'} batches, all weighted equally",
            evidence={} if nbt is None else {"num_batches_tracked": nbt},
            fix="use momentum=None only to re-estimate statistics with fixed weights; train with momentum=0.1")


@rule("BN205", "sync-batchnorm", "warning", "SyncBatchNorm in a saved model")
def sync_batchnorm(layer: BNLayer, ctx: Context):
    """
    ## What it does
    Finds `SyncBatchNorm` modules in a saved model.

    ## Why is this bad?
    SyncBatchNorm is a training-time module: inside an initialized process group it
    exchanges batch statistics between processes (GPU/XPU inputs only). In eval mode it
    computes what BatchNorm computes, but it cannot be compiled with `torch.jit.script`,
    export and deployment tools expect the plain BatchNorm*d classes, and code that calls the
    saved module in train mode inside a distributed job synchronizes with other processes. A
    model meant for single-device inference should not carry it.

    ## Example
    A model converted with `nn.SyncBatchNorm.convert_sync_batchnorm` for DDP training and
    saved with `torch.save(model)`.

    ## Use instead
    Save the state dict and load it into the same model built with plain `BatchNorm2d` (the
    keys are identical), or replace each SyncBatchNorm by a BatchNorm*d with its tensors
    copied.
    """
    if layer.kind == "SyncBatchNorm":
        yield sync_batchnorm.finding(
            layer, f"{layer.name}: SyncBatchNorm in a saved model: a distributed-training module; convert it to BatchNorm*d for single-device inference",
            evidence={},
            fix="load the state dict into the model built with plain BatchNorm*d (same keys), or replace the module")


@rule("BN206", "missing-num-batches-tracked", "info", "num_batches_tracked missing")
def missing_count(layer: BNLayer, ctx: Context):
    """
    ## What it does
    Finds BatchNorm layers that have running statistics but no `num_batches_tracked`
    (torchvision's FrozenBatchNorm2d, which never has one, excepted when a module says so;
    ONNX and OpenVINO files, whose BatchNorm operators have no counter, excepted too).

    ## Why is this bad?
    `num_batches_tracked` exists since PyTorch 0.4.1; checkpoints saved before, and many
    converters, leave it out (a converted model's statistics are trained under another
    framework's eps and momentum conventions: see BN104). `load_state_dict` fills it in by
    itself only when the state dict carries no version metadata for the module (plain dicts,
    safetensors); a state dict saved by a current PyTorch with the key deleted fails strict
    loading with "Missing key(s) ... num_batches_tracked". Without it, `momentum=None` has no
    count to continue from.

    ## Example
    `bn1.running_mean`, `bn1.running_var`, `bn1.weight`, `bn1.bias` and nothing else.

    ## Use instead
    Load with `model.load_state_dict(sd, strict=False)` and check that only
    `num_batches_tracked` keys are missing, or add `sd[prefix + "num_batches_tracked"] =
    torch.tensor(0)` per layer first.
    """
    if (layer.possible or layer.kind == "FrozenBatchNorm2d" or layer.has("num_batches_tracked")
            or "num_batches_tracked" in layer.unusable):  # there, but not a tensor: BN003
        return
    if ctx.checkpoint is not None and ctx.checkpoint.format in FORMATS_WITHOUT_COUNT:
        return
    if not (layer.has("running_mean") and layer.has("running_var")):
        return
    yield missing_count.finding(
        layer, f"{layer.name}: running statistics without num_batches_tracked: saved before PyTorch 0.4.1, by a converter "
               "(check eps and momentum conventions) or from FrozenBatchNorm2d; strict load_state_dict can fail",
        evidence={},
        fix="load_state_dict(sd, strict=False) and check only num_batches_tracked keys are missing, or add them as torch.tensor(0)")
