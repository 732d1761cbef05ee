"""``bninspect drift``: do the running statistics still describe the data, and what do batch statistics cost?

Three measurements on a real model fed real data, seeing each BN layer's input through forward
pre-hooks (eager modules) or a copy of the TorchScript graph that also returns those inputs:

1. **Population statistics** of every BN layer's input in eval mode (what the layer really sees at
   inference), exact, accumulated in float64 with Chan et al.'s pairwise merge of batch means and
   sums of squares — the quantity precise-BN (fvcore ``nn/precise_bn.py``) and
   ``torch.optim.swa_utils.update_bn`` estimate — against the checkpoint's running statistics.
2. **Small-batch drift**: for each batch size B, the spread of batch statistics around the
   population statistics and the error of train-mode normalization against eval mode with the
   population statistics. Eval mode treats samples independently, so one eval pass split into
   chunks of B gives every layer's input exactly as a batch of B would.
3. **Eval/train mismatch at the output**: the same batches through the model with BN in eval
   mode and in train mode (everything else in eval mode, so dropout does not add noise).

The unit of 1 and 2 is the RMS error of the normalized activation (x − μ)/√(σ² + ε), in standard
deviations: with ideal statistics μ_p, σ²_p and used statistics μ_u, σ²_u (s = √(σ² + ε)),

    E[((x − μ_u)/s_u − (x − μ_p)/s_p)²] = σ²·(1/s_u − 1/s_p)² + ((μ_p − μ_u)/s_u)²

over the elements the statistics are applied to (σ² their biased variance). A drift score of 0.1
means the layer's normalized output is off by a tenth of its own spread.

Optionally (``--write-recalibrated``) the population statistics replace the running statistics,
layer by layer in call order so each layer is calibrated on inputs its recalibrated predecessors
produce, and measurement 1 is re-run on the written file.

The model is never left modified: training flags and buffers are snapshot and restored, hooks
removed in ``finally``.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from bninspect.errors import BNInspectError, UsageError
from bninspect.numerics.kernels import BatchSpread, Population, channel_view, resolve_device
from bninspect.numerics.reference import normalized_error, rms, statistics_shift
from bninspect.formats.writers import check_checkpoint_output, write_state_dict
from bninspect.running.build import live_model, load_model
from bninspect.running.data import SyntheticSource, batches, memory_source, open_data, parse_shape
from bninspect.running.interface import DataSource, LoadedModel, Probe
from bninspect.running.modules import ModelState, bn_modules, input_dtype, output_tensor, set_bn_mode
from bninspect.running.probe import GRAPH_SHAPE, NoProbe, script_probe
from bninspect.running.weights import tensor_of
from bninspect.services.common import parse_sizes

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32)
DEFAULT_MAX_DRIFT = 0.1
DEFAULT_BATCH_TOLERANCE = 0.1
DEFAULT_MIN_AGREEMENT = 0.99
SYNTHETIC_SEED = 0
WORST_CHANNELS = 3

ProgressHook = Callable[[str, int, int], None]  # (phase description, done, total)


@dataclass
class BatchSizeDrift:
    """One layer at one batch size: how far batch statistics fall from the population's."""

    batch_size: int
    batches: int  # full batches of this size in the data
    mean_spread: float | None  # RMS over batches and channels of (μ_B − μ_p)/√(σ²_p + ε)
    var_spread: float | None  # RMS of (σ²_B − σ²_p)/(σ²_p + ε)
    output_error: float | None  # RMS error of train-mode normalization vs eval with population stats
    skipped: str = ""  # why not measured (one value per channel: train mode cannot run)


@dataclass
class LayerDrift:
    """Measurement 1 and 2 for one BN layer."""

    name: str  # module path in the model (wrapper prefixes already gone)
    kind: str
    channels: int
    eps: float
    reached: bool  # the forward pass called this layer
    elements_per_channel: int = 0  # n over all the data
    drift_score: float | None = None  # RMS over channels of the normalized-output error
    worst_channel: int | None = None
    worst_error: float | None = None
    worst_mean_shift: float | None = None  # (μ_running − μ_p)/√(σ²_p + ε) at the worst channel
    worst_var_ratio: float | None = None  # (σ²_running + ε)/(σ²_p + ε) at the worst channel
    max_abs_mean_shift: float | None = None
    var_ratio_range: tuple[float, float] | None = None
    worst_channels: list[int] = field(default_factory=list)
    mean_shift: list[float] = field(default_factory=list)  # per channel, σ units
    var_ratio: list[float] = field(default_factory=list)  # per channel
    channel_error: list[float] = field(default_factory=list)  # per channel
    by_batch_size: list[BatchSizeDrift] = field(default_factory=list)
    min_batch_size: int | None = None  # smallest B from which train-mode error stays ≤ tolerance
    exceeds: bool = False  # drift_score over --max-drift (never for synthetic input, where it does not apply)
    drift_after: float | None = None  # drift score of the recalibrated file on the same data


@dataclass
class ModeMismatch:
    """Measurement 3 at one batch size: BN in eval mode vs BN in train mode, at the model's output."""

    batch_size: int
    batches: int
    max_abs_diff: float | None = None
    output_scale: float | None = None  # max |eval output|, for reading max_abs_diff
    top1_agreement: float | None = None  # None when the output does not look like class scores
    skipped: str = ""


@dataclass
class Recalibration:
    """What --write-recalibrated wrote."""

    path: str
    format: str  # "safetensors" | "torch-zip"
    layers: int  # layers whose running statistics were replaced
    tensors_written: int
    drift_before: float | None  # worst layer drift score before
    drift_after: float | None  # worst layer drift score of the written file


@dataclass
class DriftResult:
    """Everything ``drift`` measured, plain data for the renderers and the JSON document."""

    path: str
    model: str  # --arch spec or the file's kind
    model_source: str  # "arch" | "torchscript" | "pickled-module"
    data: str
    samples: int
    sample_shape: list[int]
    synthetic: bool
    device: str
    batch_sizes: list[int]
    pass_batch_size: int
    threads: int  # torch's intra-op threads for the model's forward passes (see drift_threads)
    max_drift: float
    batch_tolerance: float
    min_agreement: float
    loaded_in_train_mode: bool | None  # None: a state dict has no mode
    train_mode_layers: list[str]
    output_kind: str  # "class scores [N, K]" | "tensor [...]" | "none"
    layers: list[LayerDrift]
    mismatch: list[ModeMismatch]
    layers_measured: bool  # False where hooks cannot run (TorchScript)
    recalibration: Recalibration | None = None
    min_batch_size: int | None = None  # largest per-layer min B: every layer within tolerance from here
    min_batch_size_layer: str = ""  # the layer that sets it ("" when every measured size is enough)
    problems: list[str] = field(default_factory=list)  # why the exit code is 1
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.problems else 0


# ── small-batch drift from the accumulated batch terms ──────────────────────────────────────


def _spread_result(spread: BatchSpread, batch_size: int, mu_p: np.ndarray, var_p: np.ndarray) -> BatchSizeDrift:
    if spread.one_value:
        return BatchSizeDrift(batch_size, 0, None, None, None,
                              skipped="one value per channel: train-mode BN cannot run at this batch size")
    if spread.k == 0:
        return BatchSizeDrift(batch_size, 0, None, None, None, skipped="fewer samples than the batch size")
    mean_spread, var_spread, output_error = spread.spread(mu_p, var_p)
    return BatchSizeDrift(batch_size, spread.k, mean_spread=mean_spread, var_spread=var_spread, output_error=output_error)


# ── one eval pass with hooks ────────────────────────────────────────────────────────────────


class _Stop(Exception):
    """Raised by a hook to end a forward pass early (recalibration needs only one layer's input)."""


def _forward(model: nn.Module, x: torch.Tensor, call: Callable[[torch.Tensor], object] | None = None):
    try:
        with torch.no_grad():
            return (call or model)(x)
    except (_Stop, KeyboardInterrupt, BNInspectError):
        raise
    except Exception as exc:
        # F.batch_norm in train mode: "Expected more than 1 value per channel when training"
        if "more than 1 value per channel" in str(exc):
            raise _OneValue() from exc
        raise UsageError(
            f"the model failed on an input batch of shape {list(x.shape)} ({str(x.dtype).replace('torch.', '')}); "
            "check that the data fits the model (rerun with --debug for the model's own error)"
        ) from exc


class _OneValue(Exception):
    """Train-mode BN refused a batch with one value per channel."""


def _to_model(x: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if x.is_floating_point():  # integer inputs (token ids, raw pixels) are the model's business
        x = x.to(dtype)
    return x.to(device)


@dataclass
class _PassResult:
    population: dict[str, Population]
    spreads: dict[str, dict[int, BatchSpread]]
    order: list[str]  # BN names in the order the forward pass first called them


@contextlib.contextmanager
def _watch(model: nn.Module, modules: dict[str, nn.Module], probe: Probe | None,
           on_input: Callable[[str, torch.Tensor], None]) -> Iterator[Callable[[torch.Tensor], None]]:
    """Yield ``run(x)``: one forward pass that hands each watched BN layer's input to ``on_input``.

    Eager modules: forward pre-hooks, removed on exit. TorchScript: the probe from
    :func:`bninspect.running.probe.script_probe` returns the inputs, in the graph's (call) order.
    """
    if probe is not None:
        def run_probe(x: torch.Tensor) -> None:
            for name, value in _forward(model, x, probe).items():
                if name in modules:
                    on_input(name, value)

        yield run_probe
        return
    handles = [m.register_forward_pre_hook(lambda mod, inputs, n=name: on_input(n, inputs[0]))
               for name, m in modules.items()]
    try:
        yield lambda x: _forward(model, x)
    finally:
        for handle in handles:
            handle.remove()


def _eval_pass(model: nn.Module, bns: list[tuple[str, nn.Module]], source: DataSource, pass_batch: int,
               batch_sizes: list[int], device: torch.device, dtype: torch.dtype,
               progress: ProgressHook | None, phase: str, probe: Probe | None = None) -> _PassResult:
    """One eval-mode pass over the data: population statistics and per-B batch terms of each BN input."""
    population = {name: Population() for name, _ in bns}
    spreads = {name: {b: BatchSpread(float(m.eps)) for b in batch_sizes} for name, m in bns}
    order: list[str] = []

    def on_input(name: str, x: torch.Tensor) -> None:
        if name not in order:
            order.append(name)
        population[name].add(channel_view(x))
        for b in batch_sizes:
            for start in range(0, x.shape[0] - b + 1, b):  # full chunks only: a batch of exactly B
                spreads[name][b].add(channel_view(x[start:start + b]))

    set_bn_mode(model, bn_train=False)
    total = math.ceil(len(source) / pass_batch)
    with _watch(model, dict(bns), probe, on_input) as run:
        for i, batch in enumerate(batches(source, pass_batch)):
            run(_to_model(batch, dtype, device))
            if progress:
                progress(phase, i + 1, total)
    return _PassResult(population, spreads, order)


def _layer_drift(name: str, module: nn.Module, pass_result: _PassResult, batch_sizes: list[int],
                 max_drift: float, tolerance: float) -> LayerDrift:
    eps = float(module.eps)
    channels = int(module.running_mean.numel())
    layer = LayerDrift(name=name, kind=getattr(module, "original_name", type(module).__name__),
                       channels=channels, eps=eps, reached=name in pass_result.order)
    pop = pass_result.population[name]
    if not layer.reached or pop.mean is None:
        return layer
    mu_p, var_b, var_p = pop.stats()
    mu_r = module.running_mean.detach().cpu().to(torch.float64).numpy()
    var_r = module.running_var.detach().cpu().to(torch.float64).numpy()
    error = normalized_error(mu_p, var_b, var_p, mu_r, var_r, eps)
    error = np.where(np.isfinite(error), error, np.inf)
    shift, ratio = statistics_shift(mu_p, var_p, mu_r, var_r, eps)
    worst = int(np.argmax(error))
    layer.elements_per_channel = pop.n
    layer.drift_score = rms(error)
    layer.worst_channel = worst
    layer.worst_error = float(error[worst])
    layer.worst_mean_shift = float(shift[worst])
    layer.worst_var_ratio = float(ratio[worst])
    layer.max_abs_mean_shift = float(np.max(np.abs(shift)))
    layer.var_ratio_range = (float(np.min(ratio)), float(np.max(ratio)))
    layer.worst_channels = [int(i) for i in np.argsort(-error, kind="stable")[:WORST_CHANNELS]]
    layer.mean_shift = shift.tolist()
    layer.var_ratio = ratio.tolist()
    layer.channel_error = error.tolist()
    layer.by_batch_size = [_spread_result(pass_result.spreads[name][b], b, mu_p, var_p) for b in batch_sizes]
    layer.min_batch_size = _min_batch_size(layer.by_batch_size, tolerance)
    layer.exceeds = not (layer.drift_score <= max_drift)
    return layer


def _min_batch_size(rows: list[BatchSizeDrift], tolerance: float) -> int | None:
    """The smallest measured B from which every larger measured B stays within the tolerance."""
    best = None
    for row in sorted(rows, key=lambda r: r.batch_size, reverse=True):
        if row.output_error is None:
            if row.skipped.startswith("fewer"):
                continue
            break
        if row.output_error > tolerance:
            break
        best = row.batch_size
    return best


# ── eval vs train at the output ─────────────────────────────────────────────────────────────


def _mode_mismatch(model: nn.Module, source: DataSource, batch_sizes: list[int], device: torch.device,
                   dtype: torch.dtype, progress: ProgressHook | None) -> tuple[list[ModeMismatch], str]:
    rows = []
    kind = "none"
    state = ModelState(model)
    for b in batch_sizes:
        full = len(source) // b
        row = ModeMismatch(batch_size=b, batches=full)
        if full == 0:
            row.skipped = "fewer samples than the batch size"
            rows.append(row)
            continue
        max_diff, scale, agree, count = 0.0, 0.0, 0, 0
        classes = True
        try:
            for i in range(full):
                x = _to_model(source.batch(i * b, (i + 1) * b), dtype, device)
                set_bn_mode(model, bn_train=False)
                y_eval = output_tensor(_forward(model, x))
                set_bn_mode(model, bn_train=True)
                try:
                    y_train = output_tensor(_forward(model, x))
                finally:
                    state.restore_buffers()  # train mode moved the running statistics (even when it failed midway)
                if y_eval is None or y_train is None:
                    row.skipped = "the model's output holds no tensor"
                    break
                y_eval, y_train = y_eval.detach().double(), y_train.detach().double()
                kind = f"tensor {list(y_eval.shape[1:])} per sample"
                max_diff = max(max_diff, float((y_eval - y_train).abs().max()))
                scale = max(scale, float(y_eval.abs().max()))
                classes = classes and y_eval.ndim == 2 and y_eval.shape[1] >= 2
                if classes:
                    kind = f"class scores [N, {y_eval.shape[1]}]"
                    agree += int((y_eval.argmax(dim=1) == y_train.argmax(dim=1)).sum())
                    count += y_eval.shape[0]
                if progress:
                    progress(f"eval vs train mode, batch size {b}", i + 1, full)
        except _OneValue:
            row.skipped = "one value per channel: train-mode BN cannot run at this batch size"
        finally:
            set_bn_mode(model, bn_train=False)
        if not row.skipped:
            row.max_abs_diff, row.output_scale = max_diff, scale
            row.top1_agreement = agree / count if classes and count else None
        rows.append(row)
    return rows, kind


# ── recalibration ───────────────────────────────────────────────────────────────────────────


def _recalibrate(model: nn.Module, bns: list[tuple[str, nn.Module]], order: list[str], source: DataSource,
                 pass_batch: int, device: torch.device, dtype: torch.dtype, progress: ProgressHook | None,
                 probe: Probe | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Population (mean, unbiased variance) per BN layer, each measured after its predecessors got theirs.

    Layers are taken in the order the forward pass calls them; once a layer's input statistics
    are known they are set on the module (the caller restores the model), so the next layer
    sees what the recalibrated model will feed it. Eager passes end at the layer measured.
    """
    modules = dict(bns)
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    set_bn_mode(model, bn_train=False)
    total = math.ceil(len(source) / pass_batch)
    for i, name in enumerate(order):
        module = modules[name]
        pop = Population()

        def on_input(_: str, x: torch.Tensor, pop: Population = pop) -> None:
            pop.add(channel_view(x))
            raise _Stop()  # the rest of the model does not matter for this layer

        with _watch(model, {name: module}, probe, on_input) as run:
            for j, batch in enumerate(batches(source, pass_batch)):
                try:
                    run(_to_model(batch, dtype, device))
                except _Stop:
                    pass
                if progress:
                    progress(f"recalibrating {i + 1}/{len(order)}: {name}", j + 1, total)
        mean, _, unbiased = pop.stats()
        with torch.no_grad():
            # PyTorch stores the unbiased variance in running_var (torch/nn/modules/batchnorm.py)
            module.running_mean.copy_(torch.from_numpy(mean))
            module.running_var.copy_(torch.from_numpy(unbiased))
        found[name] = (mean, unbiased)
    return found


def _check_output_path(out: str, input_path: str, data: str | None = None) -> str:
    """``out`` made absolute, or a one-line error before anything runs: a directory, a missing
    directory, another suffix, or one of the inputs (the atomic writer refuses every file the
    run read; this says so before the model runs)."""
    inputs = [("the input checkpoint", input_path)] + ([("the input --data file", data)] if data is not None else [])
    return check_checkpoint_output(out, "--write-recalibrated", inputs)


def _original_state(loaded: LoadedModel) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint by its original key, with its stored dtype and exact values."""
    if loaded.checkpoint is None:
        return {k: v.detach().cpu().clone() for k, v in loaded.model.state_dict().items()}
    state = {}
    for key, ref in loaded.checkpoint.tensors.items():
        tensor = tensor_of(ref.numpy())
        if ref.dtype == "bfloat16":
            tensor = tensor.to(torch.bfloat16)  # numpy widened it to float32 exactly; narrowing is exact
        state[key] = tensor
    return state


def write_checkpoint(loaded: LoadedModel, input_path: str, out: str,
                     stats: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[str, int, dict[str, str]]:
    """Write the checkpoint with ``stats`` as running statistics; returns (format, tensors, model key → file key)."""
    out_abs = _check_output_path(out, input_path)
    key_map = dict(loaded.key_map) if loaded.checkpoint is not None else {
        k: k for k in loaded.model.state_dict()}
    replaced: dict[str, np.ndarray] = {}
    for name, (mean, var) in stats.items():
        prefix = f"{name}." if name else ""
        replaced[key_map[prefix + "running_mean"]] = mean
        replaced[key_map[prefix + "running_var"]] = var
    state = _original_state(loaded)
    for key, values in replaced.items():
        state[key] = torch.from_numpy(values.copy()).to(state[key].dtype).reshape(state[key].shape)
    fmt = write_state_dict(out_abs, state, changed=replaced, like=loaded.checkpoint, trust=loaded.trust)
    return fmt, len(state), key_map


def _stats_from_file(out: str, key_map: dict[str, str], names: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read back the running statistics just written, through the safe loader."""
    from bninspect.formats import open_checkpoint

    written = open_checkpoint(out)
    found = {}
    for name in names:
        prefix = f"{name}." if name else ""
        mean = written.tensors[key_map[prefix + "running_mean"]].float64().reshape(-1)
        var = written.tensors[key_map[prefix + "running_var"]].float64().reshape(-1)
        found[name] = (mean, var)
    return found


# ── the service ─────────────────────────────────────────────────────────────────────────────


def parse_batch_sizes(text: str | None) -> list[int]:
    """``1,2,8,32`` → [1, 2, 8, 32] (sorted, unique); the defaults when not given."""
    return parse_sizes(text, "--batch-sizes") if text else list(DEFAULT_BATCH_SIZES)


# Input values per batch below which a forward pass's ops take microseconds: waiting for a second
# intra-op thread then costs more than it saves (measured: benchmarks/README.md, "Measured design
# choices"). 2^18 is a batch of 21 RGB images of 64×64.
SMALL_BATCH_VALUES = 1 << 18


def drift_threads(batch_values: int, device: torch.device) -> int:
    """How many intra-op threads drift's forward passes get: one for small batches; else the
    cores no other process keeps busy (1-minute load average), at most torch's default.

    Bigger batches gain from threads on idle cores and lose on busy ones: ResNetTiny on
    64×3×128×128 synthetic input took 5.7 s with 2 threads and 9.2 s with one on an idle 2-core
    machine, 11.1 s and 9.7 s with the other core busy. On a GPU the setting changes nothing
    that matters, and torch's default is kept.
    """
    default = torch.get_num_threads()
    if device.type != "cpu":
        return default
    if batch_values < SMALL_BATCH_VALUES:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(default, round(cores - busy)))


def _pass_batch_size(batch_sizes: list[int]) -> int:
    # A pass batch that every B divides wastes no samples; bounded so memory stays near max(B).
    lcm = math.lcm(*batch_sizes)
    return lcm if lcm <= 4 * max(batch_sizes) else max(batch_sizes)


# Longer than 60 lines on purpose: one try/finally holds every step that changes the model (its
# device, threads, BN modes and buffers), so that one place restores it whatever fails.
def measure(loaded: LoadedModel, source: DataSource, *, path: str, batch_sizes: list[int],
            device: torch.device, max_drift: float = DEFAULT_MAX_DRIFT,
            batch_tolerance: float = DEFAULT_BATCH_TOLERANCE, min_agreement: float = DEFAULT_MIN_AGREEMENT,
            write_recalibrated: str | None = None, progress: ProgressHook | None = None) -> DriftResult:
    """Run the three measurements (and the optional recalibration) on a loaded model; see the module docstring.

    The model is restored to its exact state (flags, buffers, device) before this returns.
    """
    model = loaded.model
    usable = [b for b in batch_sizes if b <= len(source)]
    notes = list(loaded.notes)
    if len(usable) < len(batch_sizes):
        notes.append(f"batch sizes {', '.join(str(b) for b in batch_sizes if b > len(source))} exceed the "
                     f"{len(source)} samples and were skipped")
    if not usable:
        raise UsageError(f"every --batch-sizes value exceeds the {len(source)} samples of the data")
    pass_batch = _pass_batch_size(usable)
    bns = bn_modules(model)
    scripted = isinstance(model, torch.jit.ScriptModule)
    if source.synthetic:
        notes.append("synthetic input measures the mechanics of BN (batch-size noise, eval/train gap), not whether "
                     "the statistics fit your data; drift thresholds are not applied")

    params = list(model.parameters()) + list(model.buffers())
    original_device = params[0].device if params else torch.device("cpu")
    state = ModelState(model)
    threads, threads_before = drift_threads(pass_batch * math.prod(source.sample_shape), device), torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if device != original_device:
            model.to(device)
        dtype = input_dtype(model)
        layers: list[LayerDrift] = []
        order: list[str] = []
        probe = None
        no_probe = GRAPH_SHAPE
        if bns and scripted:
            try:
                probe, watched = script_probe(model)
            except NoProbe as why:
                no_probe = str(why)
            else:
                missed = [name for name, _ in bns if name not in watched]
                if missed:
                    notes.append(f"{len(missed)} BN layers of the TorchScript graph could not be watched and are left "
                                 f"out: {', '.join(missed[:4])}")
                bns = [(name, module) for name, module in bns if name in watched]
        result = None
        if bns and (probe is not None or not scripted):
            try:
                result = _eval_pass(model, bns, source, pass_batch, usable, device, dtype, progress,
                                    "population statistics", probe)
            except UsageError:
                if probe is None:
                    raise
                # The graph copy failed to run; if the model itself cannot run on the data, the
                # output measurement below says so with the same error.
                probe = None
        if result is not None:
            order = result.order
            # --max-drift does not apply to synthetic input: no layer exceeds it there.
            limit = math.inf if source.synthetic else max_drift
            layers = [_layer_drift(name, module, result, usable, limit, batch_tolerance) for name, module in bns]
        elif not bns:
            notes.append("the model has no BatchNorm layer with running statistics: nothing can drift, "
                         "and eval and train mode differ only if other modules make them")
        else:
            notes.append(f"{no_probe}; measured at the output only (give --arch to measure every layer)")
        mismatch, output_kind = _mode_mismatch(model, source, usable, device, dtype, progress)
        state.restore()
        recal = None
        if write_recalibrated:
            if not layers:
                raise UsageError("--write-recalibrated needs per-layer statistics: give the architecture with --arch"
                                 if bns else "--write-recalibrated: the model has no BatchNorm layer")
            stats = _recalibrate(model, bns, order, source, pass_batch, device, dtype, progress, probe)
            state.restore()
            recal = _write_and_remeasure(loaded, path, write_recalibrated, stats, bns, layers,
                                         lambda: _eval_pass(model, bns, source, pass_batch, [], device, dtype, progress,
                                                            "drift after recalibration", probe),
                                         max_drift, batch_tolerance)
    finally:
        state.restore()
        if device != original_device:
            model.to(original_device)
        torch.set_num_threads(threads_before)

    train_layers = [n for n, flag in loaded.training_as_loaded.items() if flag]
    loaded_train = bool(train_layers) if loaded.training_as_loaded else None  # None: the file records no mode
    result = DriftResult(
        path=path, model=loaded.description, model_source=loaded.source, data=source.description,
        samples=len(source), sample_shape=list(source.sample_shape), synthetic=source.synthetic,
        device=str(device), batch_sizes=usable, pass_batch_size=pass_batch, threads=threads, max_drift=max_drift,
        batch_tolerance=batch_tolerance, min_agreement=min_agreement, loaded_in_train_mode=loaded_train,
        train_mode_layers=train_layers, output_kind=output_kind, layers=layers, mismatch=mismatch,
        layers_measured=bool(layers), recalibration=recal, notes=notes,
    )
    _overall_min_batch_size(result)
    result.problems = _problems(result)
    return result


def _write_and_remeasure(loaded: LoadedModel, path: str, out: str, stats: dict[str, tuple[np.ndarray, np.ndarray]],
                         bns: list[tuple[str, nn.Module]], layers: list[LayerDrift], eval_pass: Callable[[], _PassResult],
                         max_drift: float, batch_tolerance: float) -> Recalibration:
    """Write the recalibrated checkpoint, load its statistics back into the model and measure the drift
    again with ``eval_pass``: what the written file holds, not what was meant to be written."""
    source_path = loaded.checkpoint.path if loaded.checkpoint is not None else path
    fmt, count, key_map = write_checkpoint(loaded, source_path, out, stats)
    written = _stats_from_file(os.path.abspath(out), key_map, list(stats))
    with torch.no_grad():
        modules = dict(bns)
        for name, (mean, var) in written.items():
            modules[name].running_mean.copy_(torch.from_numpy(mean))
            modules[name].running_var.copy_(torch.from_numpy(var))
    after = eval_pass()
    by_name = {l.name: l for l in layers}
    for name, module in bns:
        if name in written:
            by_name[name].drift_after = _layer_drift(name, module, after, [], max_drift, batch_tolerance).drift_score
    scores = [l.drift_score for l in layers if l.drift_score is not None]
    after_scores = [l.drift_after for l in layers if l.drift_after is not None]
    return Recalibration(path=out, format=fmt, layers=len(stats), tensors_written=count,
                         drift_before=max(scores) if scores else None,
                         drift_after=max(after_scores) if after_scores else None)


def _overall_min_batch_size(result: DriftResult) -> None:
    """The batch size from which train-mode BN stays within tolerance in every layer, and the layer that needs it."""
    measured = [l for l in result.layers if l.by_batch_size]
    if not measured:
        return
    short = [l for l in measured if l.min_batch_size is None]
    if short:
        result.min_batch_size_layer = short[0].name  # no measured size is enough for this layer
        return
    worst = max(measured, key=lambda l: l.min_batch_size)
    result.min_batch_size, result.min_batch_size_layer = worst.min_batch_size, worst.name


def _problems(result: DriftResult) -> list[str]:
    """The threshold breaches that make the exit code 1, each as one sentence with its numbers."""
    problems = []
    for layer in result.layers:
        if layer.exceeds and layer.drift_score is not None:
            problems.append(f"{layer.name}: drift score {layer.drift_score:.4g} > --max-drift {result.max_drift:g}")
    if result.loaded_in_train_mode:
        problems.append(f"the model was saved in train mode ({len(result.train_mode_layers)} BN layers): at inference "
                        "it normalizes with batch statistics")
    measured = [m for m in result.mismatch if m.top1_agreement is not None]
    if measured:
        largest = max(measured, key=lambda m: m.batch_size)
        if largest.top1_agreement < result.min_agreement:
            problems.append(f"eval vs train mode at batch size {largest.batch_size}: top-1 agreement "
                            f"{largest.top1_agreement:.4g} < --min-agreement {result.min_agreement:g}")
    return problems


def drift(path: str, *, arch: str | None, arch_kwargs: str | None, trust: bool, key: str | None,
          data: str | None, synthetic: str | None, batch_sizes: str | None, device: str,
          max_drift: float, batch_tolerance: float, min_agreement: float,
          write_recalibrated: str | None, progress: ProgressHook | None = None) -> DriftResult:
    """The ``drift`` command: validate options, build the model, open the data, measure. ``path``
    may be a live ``nn.Module`` and ``data`` a tensor or numpy array (the Python API)."""
    if (data is None) == (synthetic is None):
        raise UsageError("give exactly one of --data FILE or --synthetic SHAPE")
    if arch_kwargs and not arch:
        raise UsageError("--arch-kwargs needs --arch")
    for name, value in (("--max-drift", max_drift), ("--batch-tolerance", batch_tolerance)):
        if not value > 0:
            raise UsageError(f"{name} must be positive")
    if not 0 <= min_agreement <= 1:
        raise UsageError("--min-agreement must be between 0 and 1")
    sizes = parse_batch_sizes(batch_sizes)
    dev = resolve_device(device)
    shape = parse_shape(synthetic) if synthetic else None
    from bninspect.formats import live

    if live.is_module(path):  # the Python API: a copy of the caller's model runs, never the model
        if arch or write_recalibrated:
            raise UsageError("a live module runs as it is: arch= builds a model from a file, and write_recalibrated= "
                             "re-saves a file; give drift the checkpoint's path for those")
        loaded = live_model(path, live.name_of(path))
        path = live.name_of(path)
    else:
        if write_recalibrated:
            _check_output_path(write_recalibrated, path, data)
        loaded = load_model(path, arch=arch, arch_kwargs=arch_kwargs, trust=trust, key=key)
    source = (SyntheticSource(shape, SYNTHETIC_SEED) if shape else
              open_data(data) if isinstance(data, str) else memory_source(data))
    return measure(loaded, source, path=path, batch_sizes=sizes, device=dev, max_drift=max_drift,
                   batch_tolerance=batch_tolerance, min_agreement=min_agreement,
                   write_recalibrated=write_recalibrated, progress=progress)
