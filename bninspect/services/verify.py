"""``verify``: recompute BatchNorm inference and prove it right, per layer or for the device's kernels.

Without a checkpoint: a built-in matrix of cases run through real ``nn.BatchNorm*d`` modules on the
device, each against the float64 reference of ``bninspect.numerics``. With one: every layer
recomputed four ways (reference, ``F.batch_norm``, folded, fused conv), plus its eps sensitivity and
train/eval gap, and optionally a diagnosis of outputs captured from another runtime.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from bninspect.errors import UsageError
from bninspect.layers import BNLayer
from bninspect.numerics import KERAS_EPS, TORCH_EPS
from bninspect.numerics.reference import DTYPES
from bninspect.services.common import validate_eps, zero_eps_note

SCHEMA = "bninspect.verify/1"
DEFAULT_TRAIN_BATCHES = (1, 2, 8, 32)


# ---------------------------------------------------------------- results

@dataclass
class PathCheck:
    """One recomputation path of one layer on one device, against the float64 reference."""

    path: str  # "batch_norm" | "folded" | "fused_conv" | "fused_linear" | "cpu_vs_cuda"
    device: str
    dtype: str
    max_abs_err: float
    max_rel_err: float
    tolerance: float  # rtol of the dtype, times the growth for sums of products
    used: float  # largest fraction of the per-element allowance used; ≤ 1 passes
    passed: bool
    worst_channel: int | None = None


@dataclass
class EpsChange:
    """The largest output change on the layer's input if a runtime used ``eps_to`` instead of ``eps_from``
    (measured on that input; check's BN302 estimates it from the statistics alone, ``reference.eps_sensitivity``)."""

    eps_from: float
    eps_to: float
    max_abs_change: float
    worst_channel: int | None
    min_running_var: float
    relative_change: float = 0.0  # max_abs_change / max |γ|: outputs are ~N(β, γ²), so γ is their scale


@dataclass
class TrainGap:
    """max |train-mode − eval-mode output| on a seeded batch of this size (None where train mode is impossible)."""

    batch: int
    max_abs_diff: float | None
    note: str = ""


@dataclass
class LayerVerify:
    """Everything verify found for one layer."""

    name: str
    kind: str
    channels: int
    dtype: str
    eps: float
    eps_source: str
    input_shape: list[int]
    max_abs_err: float
    max_rel_err: float
    tolerance: float
    used: float
    passed: bool
    checks: list[PathCheck] = field(default_factory=list)
    eps_sensitivity: EpsChange | None = None
    train_eval_gap: list[TrainGap] = field(default_factory=list)
    skipped: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass
class CaseResult:
    """One conformance case on one device."""

    name: str
    device: str
    kind: str
    shape: list[int]
    dtype: str
    eps: float
    affine: bool
    mode: str  # "eval" | "train"
    momentum: float | None
    channels_last: bool
    max_abs_err: float
    max_rel_err: float
    tolerance: float
    used: float
    passed: bool
    skipped: str = ""


@dataclass
class Candidate:
    """One explanation tried against the expected output."""

    cause: str
    residual: float  # max |candidate − expected|
    relative_residual: float  # rms(candidate − expected) / rms(expected)
    fits: bool


@dataclass
class Diagnosis:
    """Why an output captured elsewhere differs from ours (``cause`` = "match" when it does not)."""

    layer: str
    expected: str
    cause: str  # "match", the explanation that fits best, or "unexplained"
    residual: float
    relative_residual: float
    fits: bool
    closest: str  # the best candidate even when none fits
    candidates: list[Candidate] = field(default_factory=list)
    channels_off: list[int] = field(default_factory=list)  # channels out of tolerance under the correct formula
    channels_off_count: int = 0


@dataclass
class VerifyResult:
    """What ``verify`` returns to the renderer."""

    mode: str  # "conformance" | "checkpoint"
    path: str | None
    device: str  # as asked: cpu, cuda, cuda:N, all
    devices: list[str]
    torch_version: str
    passed: bool
    layers: list[LayerVerify] = field(default_factory=list)
    cases: list[CaseResult] = field(default_factory=list)
    diagnosis: Diagnosis | None = None
    input: str | None = None
    output: str | None = None
    synthetic: dict = field(default_factory=dict)  # batch, spatial, seed of the generated inputs
    train_batches: list[int] = field(default_factory=list)
    tolerances: dict = field(default_factory=dict)  # dtype -> {rtol, atol}
    summary: str = ""

    @property
    def exit_code(self) -> int:
        """0 when everything passed (and an expected output matched), else 1."""
        ok = self.passed and (self.diagnosis is None or self.diagnosis.cause == "match")
        return 0 if ok else 1


# ---------------------------------------------------------------- conformance matrix

@dataclass(frozen=True)
class Case:
    """One kernel conformance case: a real nn.BatchNorm*d module on one input."""

    kind: str
    shape: tuple[int, ...]
    dtype: str
    eps: float = TORCH_EPS
    affine: bool = True
    training: bool = False
    momentum: float | None = 0.1
    channels_last: bool = False
    num_batches_tracked: int = 0

    @property
    def name(self) -> str:
        """The case in one line, as the table shows it."""
        parts = [self.kind, "×".join(map(str, self.shape)), self.dtype, "train" if self.training else "eval",
                 f"eps={self.eps:g}"]
        if self.training:
            parts.append(f"momentum={self.momentum}")
        if not self.affine:
            parts.append("affine=False")
        if self.channels_last:
            parts.append("channels_last")
        return " ".join(parts)


def _matrix() -> list[Case]:
    """A representative matrix, not the cartesian product: every dtype sees every module kind, both modes,
    each eps and affine setting; float32 alone carries the size extremes (C = 1 and 2048, N = 1)."""
    cases: list[Case] = []
    for dt in DTYPES:
        cases += [
            Case("BatchNorm2d", (8, 16, 6, 6), dt),
            Case("BatchNorm2d", (4, 32, 5, 5), dt, training=True, momentum=0.1),
            Case("BatchNorm2d", (4, 24, 5, 5), dt, eps=KERAS_EPS, channels_last=True),
            Case("BatchNorm1d", (16, 64), dt, affine=False, training=True, momentum=None, num_batches_tracked=4),
            Case("BatchNorm1d", (4, 8, 10), dt, eps=0.1, affine=False),
            Case("BatchNorm3d", (2, 6, 3, 4, 5), dt, eps=KERAS_EPS, training=True),
        ]
    cases += [
        Case("BatchNorm2d", (4, 1, 4, 4), "float32"),
        Case("BatchNorm2d", (4, 1, 4, 4), "float32", training=True),
        Case("BatchNorm2d", (2, 2048, 3, 3), "float32"),
        Case("BatchNorm2d", (2, 2048, 3, 3), "float32", training=True, channels_last=True),
        Case("BatchNorm3d", (2, 8, 3, 3, 3), "float32", training=True, momentum=None, channels_last=True),
        Case("BatchNorm1d", (1, 32), "float32"),
        Case("BatchNorm1d", (1, 32, 6), "float32", training=True),
        Case("BatchNorm1d", (1, 32), "float32", training=True),  # torch refuses: one value per channel
    ]
    return cases


def _case_params(case: Case, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    c = case.shape[1]
    mean = rng.normal(0.0, 2.0, c)
    var = np.exp(rng.normal(0.0, 1.0, c))
    # a few channels with σ² near ε, where ε decides the output (and where eps bugs show)
    var[:: max(1, c // 4)] = rng.uniform(0.0, 3.0, len(var[:: max(1, c // 4)])) * case.eps
    gamma = rng.normal(1.0, 0.5, c) if case.affine else None
    beta = rng.normal(0.0, 0.5, c) if case.affine else None
    return mean, var, gamma, beta


def run_case(case: Case, device: str, seed: int) -> CaseResult:
    """Run one case through a real module on ``device`` and compare with the float64 reference."""
    from bninspect.numerics import kernels, reference

    rng = np.random.default_rng(seed)
    dt = case.dtype
    mean, var, gamma, beta = (None if a is None else kernels.round_to(a, dt) for a in _case_params(case, rng))
    x = kernels.round_to(reference.synthetic_input(mean, var, case.shape, rng), dt)
    tol = reference.TOLERANCES[dt]
    base = dict(name=case.name, device=device, kind=case.kind, shape=list(case.shape), dtype=dt, eps=case.eps,
                affine=case.affine, mode="train" if case.training else "eval",
                momentum=case.momentum if case.training else None, channels_last=case.channels_last,
                tolerance=tol.rtol)
    per_channel_values = x.size // x.shape[1]
    if case.training and per_channel_values == 1:
        return CaseResult(max_abs_err=0.0, max_rel_err=0.0, used=0.0, passed=True,
                          skipped="train mode with one value per channel: torch raises ValueError "
                                  "(batch variance undefined)", **base)
    g = np.ones(x.shape[1]) if gamma is None else gamma
    b = np.zeros(x.shape[1]) if beta is None else beta
    y, new_mean, new_var, count = kernels.device_module_step(case.kind, x, mean, var, gamma, beta, case.eps, case.momentum,
                                                             case.num_batches_tracked, case.training, dt, device,
                                                             case.channels_last)
    if not case.training:
        cmp = reference.eval_check(y, x, mean, var, g, b, case.eps, tol)
        return CaseResult(max_abs_err=cmp.max_abs_err, max_rel_err=cmp.max_rel_err, used=cmp.worst_fraction,
                          passed=cmp.passed, **base)
    ref, stats = reference.train_reference(x, g, b, case.eps)
    mag = reference.eval_magnitude(x, stats.mean, stats.var_biased, g, b, case.eps)
    ref_mean, ref_var, ref_count = reference.running_update(mean, var, stats, case.momentum, case.num_batches_tracked)
    factor = reference.momentum_factor(case.momentum, ref_count)
    # running = (1 − m)·old + m·batch: its terms' magnitudes bound the rounding
    mean_mag, var_mag = reference.running_update_magnitude(x, mean, var, stats, factor)
    comps = [
        reference.compare(y, ref, mag, tol),
        reference.compare(new_mean, ref_mean, mean_mag, tol),
        reference.compare(new_var, ref_var, var_mag, tol),
    ]
    counted = count == ref_count
    return CaseResult(max_abs_err=max(c.max_abs_err for c in comps), max_rel_err=max(c.max_rel_err for c in comps),
                      used=max(c.worst_fraction for c in comps) if counted else math.inf,
                      passed=all(c.passed for c in comps) and counted, **base)


def conformance(devices: list[str], seed: int = 0) -> list[CaseResult]:
    """Every case of the built-in matrix on every device."""
    from bninspect.numerics.kernels import one_thread

    with one_thread():
        return [run_case(case, dev, seed + i) for dev in devices for i, case in enumerate(_matrix())]


# ---------------------------------------------------------------- per layer

def _input_shape(layer: BNLayer, batch: int, spatial: int) -> tuple[int, ...]:
    op = layer.producer.op if layer.producer else ""
    dims = {"BatchNorm1d": 1, "BatchNorm3d": 3}.get(layer.kind)
    if dims is None:
        dims = {"linear": 0, "conv1d": 1, "conv3d": 3, "conv_transpose1d": 1, "conv_transpose3d": 3}.get(op, 2)
    if layer.kind == "BatchNorm1d" and op == "linear":
        dims = 0
    return (batch, layer.channels) + (spatial,) * dims


def _dtype(layer: BNLayer) -> str:
    from bninspect.numerics.reference import compute_dtype

    ref = layer.tensors.get("running_var") or layer.tensors.get("weight")
    return compute_dtype(ref.dtype if ref is not None else "float32")


def verify_layer(layer: BNLayer, devices: list[str], *, x: np.ndarray | None = None, channels_last: bool = False,
                 batch: int = 2, spatial: int = 4, train_batches: tuple[int, ...] = DEFAULT_TRAIN_BATCHES,
                 seed: int = 0, index: int = 0) -> tuple[LayerVerify, np.ndarray | None]:
    """Recompute one layer on every device; also return its float64 reference output (None when skipped)."""
    from bninspect.numerics import kernels, reference

    dt = _dtype(layer)
    tol = reference.TOLERANCES[dt]
    mean_raw, var_raw = layer.values("running_mean"), layer.values("running_var")
    shape = tuple(x.shape) if x is not None else _input_shape(layer, batch, spatial)
    result = LayerVerify(layer.name, layer.kind, layer.channels, dt, layer.eps, layer.eps_source, list(shape),
                         0.0, 0.0, tol.rtol, 0.0, True)
    skip = _skip_reason(layer)
    if skip is not None:
        result.skipped, result.passed = skip
        return result, None
    if layer.training:
        result.notes.append("saved in train mode: run as saved, it normalizes with batch statistics, not these "
                            "eval outputs (see the train−eval gap)")
    zero_eps = zero_eps_note(layer)
    if zero_eps is not None:
        result.notes.append(zero_eps)
    mean, var = kernels.round_to(mean_raw, dt), kernels.round_to(var_raw, dt)
    gamma, beta = kernels.round_to(layer.gamma(), dt), kernels.round_to(layer.beta(), dt)
    eps = layer.eps
    rng = np.random.default_rng([seed, index])
    x = kernels.round_to(x if x is not None else reference.synthetic_input(mean, var, shape, rng), dt)

    ref = reference.eval_reference(x, mean, var, gamma, beta, eps)
    _device_checks(result, layer, x, ref, (mean, var, gamma, beta), devices, channels_last, seed + index)
    worst = max(result.checks, key=lambda c: c.used)
    result.max_abs_err = max(c.max_abs_err for c in result.checks)
    result.max_rel_err = max(c.max_rel_err for c in result.checks)
    result.used = worst.used
    result.passed = all(c.passed for c in result.checks)
    if not np.all(np.isfinite(ref)):
        result.passed = False
        result.notes.append("output is not finite: running_var below −eps, or NaN/Inf in the tensors")
    result.eps_sensitivity = _eps_change(x, mean, var, gamma, beta, eps)
    result.train_eval_gap = _train_gaps(layer, (mean, var, gamma, beta), spatial, train_batches, seed, index)
    return result, ref


def _skip_reason(layer: BNLayer) -> tuple[str, bool] | None:
    """Why a layer cannot be recomputed, and whether that still passes (no running statistics: nothing to check)."""
    odd = [k for k in layer.unusable if k != "num_batches_tracked"]
    if odd:
        return f"{', '.join(f'{k} is {layer.unusable[k]}' for k in odd)}: nothing consistent to recompute", False
    if layer.values("running_mean") is None or layer.values("running_var") is None:
        return "no running statistics: eval mode normalizes with batch statistics", True
    wrong = [k for k in ("running_mean", "running_var", "weight", "bias") if layer.has(k) and layer.tensors[k].numel != layer.channels]
    if wrong:
        return f"{', '.join(wrong)} do not hold {layer.channels} values: nothing consistent to recompute", False
    return None


def _device_checks(result: LayerVerify, layer: BNLayer, x: np.ndarray, ref: np.ndarray,
                   params: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], devices: list[str],
                   channels_last: bool, seed: int) -> None:
    """Each device's kernels against the reference ``ref`` on ``x``: F.batch_norm, folded, fused conv, and CPU vs CUDA."""
    from bninspect.numerics import kernels, reference

    mean, var, gamma, beta = params
    dt, eps = result.dtype, layer.eps
    tol = reference.TOLERANCES[dt]
    affine = layer.has("weight") and layer.has("bias")
    mag = reference.eval_magnitude(x, mean, var, gamma, beta, eps)
    per_device: dict[str, np.ndarray] = {}
    for dev in devices:
        got = kernels.device_eval(x, mean, var, gamma if affine else None, beta if affine else None, eps, dt, dev, channels_last)
        per_device[dev] = got
        result.checks.append(_check("batch_norm", dev, dt, reference.compare(got, ref, mag, tol), tol.rtol))
        folded = kernels.device_folded(x, mean, var, gamma, beta, eps, dt, dev)
        result.checks.append(_check("folded", dev, dt, reference.compare(folded, ref, mag, tol), tol.rtol))
        fused = _fused(layer, mean, var, gamma if affine else None, beta if affine else None, eps, dt, dev, seed)
        if isinstance(fused, str):
            if fused and dev == devices[0]:
                result.notes.append(fused)
        else:
            path, check = fused
            growth = reference.dot_growth(check.reduction)
            result.checks.append(_check(path, dev, dt, reference.compare(check.got, check.ref, check.magnitude, tol, growth),
                                        tol.rtol * growth))
    if len(devices) > 1:
        # two kernels, each within tolerance of the reference, may differ by twice the allowance
        cmp = reference.compare(per_device[devices[1]], per_device[devices[0]], mag, tol, 2.0)
        result.checks.append(_check("cpu_vs_cuda", devices[1], dt, cmp, 2 * tol.rtol))


def _eps_change(x: np.ndarray, mean: np.ndarray, var: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                eps: float) -> EpsChange:
    """The output change on ``x`` if a runtime used the other common eps default."""
    from bninspect.numerics import reference

    alt = reference.other_common_eps(eps)
    change, channel = reference.eps_change(x, mean, var, gamma, beta, eps, alt)
    finite_var = var[np.isfinite(var)]
    finite_gamma = np.abs(gamma[np.isfinite(gamma)])
    spread = float(finite_gamma.max()) if finite_gamma.size and finite_gamma.max() > 0 else 1.0
    return EpsChange(eps, alt, change, channel, float(finite_var.min()) if finite_var.size else float("nan"),
                     change / spread)


def _train_gaps(layer: BNLayer, params: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], spatial: int,
                train_batches: tuple[int, ...], seed: int, index: int) -> list[TrainGap]:
    """The train−eval gap at each batch size, on seeded batches of the default per-sample shape
    (--spatial) whatever the input: a 224×224 input at batch 32 would cost more than the whole verify."""
    from bninspect.numerics import kernels

    mean, var, gamma, beta = params
    tail = _input_shape(layer, 1, spatial)[2:]
    gaps = []
    for b in train_batches:
        if b * int(np.prod(tail, dtype=np.int64)) <= 1:
            gaps.append(TrainGap(b, None, "train mode needs more than one value per channel"))
            continue
        draw_seed = int(np.random.SeedSequence([seed, index, b]).generate_state(1)[0])
        gaps.append(TrainGap(b, kernels.train_eval_gap(mean, var, gamma, beta, layer.eps, (b, layer.channels) + tail,
                                                       draw_seed)))
    return gaps


def verify_layers(layers: list[BNLayer], devices: list[str], **options) -> tuple[list[LayerVerify], dict[str, np.ndarray]]:
    """:func:`verify_layer` for each layer (seeded by position); the reference outputs by layer name."""
    from bninspect.numerics.kernels import one_thread

    results: list[LayerVerify] = []
    refs: dict[str, np.ndarray] = {}
    with one_thread():
        for i, layer in enumerate(layers):
            res, ref = verify_layer(layer, devices, index=i, **options)
            results.append(res)
            if ref is not None:
                refs[layer.name] = ref
    return results, refs


def _check(path: str, device: str, dtype: str, cmp, tolerance: float) -> PathCheck:
    return PathCheck(path, device, dtype, cmp.max_abs_err, cmp.max_rel_err, tolerance, cmp.worst_fraction, cmp.passed,
                     cmp.worst_channel)


def _fused(layer: BNLayer, mean, var, gamma, beta, eps: float, dt: str, device: str, seed: int):
    """("fused_conv", FusedCheck), or a note saying why there is no fused check ("" when there is no producer)."""
    from bninspect.numerics import kernels, reference

    producer = layer.producer
    if producer is None:
        return ""
    if producer.weight.shape[0] != layer.channels:
        return f"producer {producer.name} has {producer.weight.shape[0]} outputs for {layer.channels} channels: no fused check"
    if producer.op == "linear":
        w = producer.weight.numpy()
        b = producer.bias.numpy() if producer.bias is not None else None
        # a linear layer is a 1-D conv with kernel 1 over a length-1 input
        check = kernels.fused_conv_check("conv1d", w.reshape(w.shape + (1,)), b, 1, mean, var, gamma, beta, eps, dt, device, seed)
        return "fused_linear", check
    if producer.op not in kernels.CONV_OPS:
        return f"no fused check for a {producer.op} producer"
    w = producer.weight.numpy()
    if w.ndim != kernels.CONV_OPS[producer.op][1] + 2:
        return f"producer {producer.name} weight has shape {tuple(w.shape)}: no fused check"
    b = producer.bias.numpy() if producer.bias is not None else None
    groups = reference.infer_groups(tuple(w.shape), layer.channels, producer.groups)
    return "fused_conv", kernels.fused_conv_check(producer.op, w, b, groups, mean, var, gamma, beta, eps, dt, device, seed)


# ---------------------------------------------------------------- --expected

def _score(expected: np.ndarray, cause: str, y: np.ndarray, m: np.ndarray, tol) -> Candidate:
    """How well one candidate computation ``y`` explains ``expected``: within the allowance (from
    the magnitudes ``m`` of the terms that computation adds: its own μ, σ², channel mapping), and
    its RMS residual relative to the expected output's RMS."""
    from bninspect.numerics import reference

    cmp = reference.compare(expected, y, m, tol)
    with np.errstate(invalid="ignore", over="ignore"):
        # NaN where both have NaN is agreement (a broken channel reproduced); anywhere else it is a miss
        both = np.isnan(y) & np.isnan(expected)
        diff = np.where(both, 0.0, np.nan_to_num(y - expected, nan=np.inf, posinf=np.inf, neginf=np.inf))
        rms_e = reference.rms(np.where(np.isfinite(expected), expected, 0.0)) or 1.0
        rel = reference.rms(diff) / rms_e
    return Candidate(cause, cmp.max_abs_err, rel if math.isfinite(rel) else math.inf, cmp.passed)


def diagnose(layer: BNLayer, x: np.ndarray, expected: np.ndarray, expected_dtype: str, channels_last: bool,
             expected_path: str = "", output_channels_last: bool | None = None,
             expected_shape: tuple[int, ...] | None = None) -> Diagnosis:
    """Compare an output captured elsewhere with ours; on a mismatch, try each usual mistake and keep the best fit.

    ``x`` and ``expected`` are float64 in the logical (N, C, …) layout, as read from the files:
    ``channels_last`` is the input file's layout, ``output_channels_last`` (default: the same)
    the expected file's, whose own shape is ``expected_shape`` (default: the logical one), for
    the output-layout mistakes.
    """
    from bninspect.numerics import kernels, reference

    tol = reference.TOLERANCES[reference.compute_dtype(expected_dtype)]
    mean, var = layer.values("running_mean"), layer.values("running_var")
    gamma, beta, eps = layer.gamma(), layer.beta(), layer.eps
    affine = layer.has("weight") and layer.has("bias")
    mag = reference.eval_magnitude(x, mean, var, gamma, beta, eps)
    ref = reference.eval_reference(x, mean, var, gamma, beta, eps)

    correct = _score(expected, "match", ref, mag, tol)
    cands = []
    for cause, y, m, judged_in in kernels.explanations(x, mean, var, gamma, beta, eps, affine, channels_last):
        cands.append(_score(expected, cause, y, m, tol if judged_in is None else reference.TOLERANCES[judged_in]))
    out_cl = channels_last if output_channels_last is None else output_channels_last
    file_shape = expected_shape or (tuple(np.moveaxis(expected, 1, -1).shape) if out_cl and x.ndim >= 3 else expected.shape)
    for cause, y, m in reference.output_layout_mistakes(ref, mag, file_shape, out_cl):
        cands.append(_score(expected, cause, y, m, tol))
    cands.sort(key=lambda c: (not c.fits, c.relative_residual))
    best = cands[0]
    diag = Diagnosis(layer.name, expected_path, "match", correct.residual, correct.relative_residual, True, best.cause,
                     [correct] + cands)
    # a mistake that explains the data ten times better than the correct formula wins even when the correct
    # formula is within kernel tolerance: where σ² ≈ ε the tolerance is wide (see numerics.reference.Tolerance)
    clearly_better = best.fits and best.relative_residual < 0.1 * correct.relative_residual
    if correct.fits and not clearly_better:
        return diag
    if best.fits:
        diag.cause, diag.residual, diag.relative_residual = best.cause, best.residual, best.relative_residual
        return diag
    diag.cause, diag.fits = "unexplained", False
    # a mistake that does not halve the residual explains nothing: the difference lies elsewhere
    if best.relative_residual >= 0.5 * correct.relative_residual:
        diag.closest = "the checkpoint's own formula (no usual mistake comes closer)"
    with np.errstate(invalid="ignore"):
        err = np.nan_to_num(np.abs(expected - ref), nan=np.inf)
        off = err > tol.allowed(np.nan_to_num(mag))
    axes = (0,) + tuple(range(2, x.ndim))
    bad = np.flatnonzero(off.any(axis=axes))
    diag.channels_off, diag.channels_off_count = [int(c) for c in bad[:32]], int(len(bad))
    return diag


# ---------------------------------------------------------------- the command

def _logical(values: np.ndarray, channels_last: bool) -> np.ndarray:
    # N, …, C (channels-last file) → N, C, … (what every formula here uses)
    return np.moveaxis(values, -1, 1) if channels_last and values.ndim >= 3 else values


def _file_layout(values: np.ndarray, channels_last: bool) -> np.ndarray:
    return np.moveaxis(values, 1, -1) if channels_last and values.ndim >= 3 else values


def _expected_layout(values: np.ndarray, shape: tuple[int, ...], channels_last: bool, path: str,
                     input_shape: tuple[int, ...]) -> tuple[np.ndarray, bool, bool]:
    """The expected output in the logical layout, the layout it was read with, and whether that
    is the other one than declared: an output whose shape is the input's in the other layout
    (N,H,W,C from TFLite, CoreML, OpenVINO for an N,C,H,W input) is read that way, not refused."""
    y = _logical(values, channels_last)
    if y.shape == shape:
        return y, channels_last, False
    other = _logical(values, not channels_last)
    if values.ndim >= 3 and other.shape == shape:
        return other, not channels_last, True
    hint = (" (a permutation of the input's shape other than channels-first/last)"
            if sorted(values.shape) == sorted(input_shape) else "")
    raise UsageError(f"expected output has shape {tuple(values.shape)}, input {tuple(input_shape)}{hint}", path=path)


def _layout_swapped(d: Diagnosis, ndim: int, declared: bool, shape: tuple[int, ...]) -> None:
    """Say in the diagnosis that the expected output had to be read in the other layout."""
    from bninspect.numerics.reference import layout_name

    hint = ("--output-channels-last reads it so" if not declared
            else "the options said channels-last for it; --input-channels-last alone says so of the input only")
    layout = (f"output in {layout_name(ndim, not declared)} layout, shape {shape}, where {layout_name(ndim, declared)} "
              f"was expected ({hint})")
    d.cause = layout if d.cause == "match" else f"{layout}; {d.cause}"


def verify(path: str | None, *, device: str = "cpu", layers: list[str] | None = None,
           eps: float | None = None, trust: bool = False, key: str | None = None, strict: bool = False,
           input_path: str | None = None, channels_last: bool = False, output_path: str | None = None,
           expected_path: str | None = None, batch: int = 2, spatial: int = 4,
           train_batches: tuple[int, ...] = DEFAULT_TRAIN_BATCHES, seed: int = 0,
           input_channels_last: bool = False, output_channels_last: bool = False) -> VerifyResult:
    """``bninspect verify``: the conformance matrix without ``path``, every selected layer with it.

    ``channels_last`` says both --input and --output/--expected hold N,…,C data;
    ``input_channels_last`` and ``output_channels_last`` say it of one side only.
    """
    if batch < 1 or spatial < 1 or any(b < 1 for b in train_batches):
        raise UsageError("--batch, --spatial and --train-batch need positive integers")
    validate_eps(eps)
    if path is None and (input_path or output_path or expected_path or layers or eps is not None):
        raise UsageError("--layer, --input, --output, --expected and --eps need a checkpoint")
    if (output_path or expected_path) and not input_path:
        raise UsageError("--output and --expected need --input (the activations the other runtime saw)")
    from bninspect.numerics import kernels

    devices = kernels.resolve_devices(device)
    if path is None:
        return _run_conformance(device, devices, seed)
    return _run_checkpoint(path, device, devices, layers=layers, eps=eps, trust=trust, key=key,
                           strict=strict, input_path=input_path, output_path=output_path, expected_path=expected_path,
                           batch=batch, spatial=spatial, train_batches=train_batches, seed=seed,
                           in_cl=channels_last or input_channels_last, out_cl=channels_last or output_channels_last)


def _tolerances() -> dict[str, dict[str, float]]:
    from bninspect.numerics import reference

    return {k: {"rtol": t.rtol, "atol": t.atol} for k, t in reference.TOLERANCES.items()}


def _run_conformance(device: str, devices: list[str], seed: int) -> VerifyResult:
    """verify without a checkpoint: the built-in conformance matrix on every device."""
    import torch

    cases = conformance(devices, seed)
    failed = [c for c in cases if not c.passed]
    skipped = sum(1 for c in cases if c.skipped)
    summary = (f"{len(cases) - len(failed) - skipped} of {len(cases)} cases passed on {', '.join(devices)}"
               + (f", {len(failed)} failed" if failed else "") + (f", {skipped} skipped" if skipped else ""))
    return VerifyResult("conformance", None, device, devices, torch.__version__, not failed, cases=cases,
                        tolerances=_tolerances(), summary=summary)


def _run_checkpoint(path: str, device: str, devices: list[str], *, layers: list[str] | None, eps: float | None,
                    trust: bool, key: str | None, strict: bool, input_path: str | None, output_path: str | None,
                    expected_path: str | None, batch: int, spatial: int, train_batches: tuple[int, ...], seed: int,
                    in_cl: bool, out_cl: bool) -> VerifyResult:
    """verify with a checkpoint: every selected layer recomputed; with --input, --expected and --output, one layer's."""
    import torch

    from bninspect.formats.arrays import read_activations
    from bninspect.services.common import open_layers, select, source_name

    discovery = open_layers(path, trust=trust, key=key, strict=strict, eps=eps)
    path = source_name(path)  # a live module (Python API) is named, not printed
    layers = select(discovery.layers, layers)
    if not layers:
        extra = (f" ({len(discovery.possible)} possible BatchNorm layers without running statistics: they normalize "
                 "with batch statistics, so there is no inference to recompute)" if discovery.possible else "")
        raise UsageError("this file has no BatchNorm layers to verify" + extra, path=path)
    if (output_path or expected_path) and len(layers) != 1:
        raise UsageError(f"--output and --expected need exactly one layer; {len(layers)} selected (pick one with --layer)")
    acts = read_activations(input_path) if input_path else None
    x = _layer_input(acts.values, layers, in_cl, input_path) if acts is not None else None

    results, refs = verify_layers(layers, devices, x=x, channels_last=in_cl, batch=batch, spatial=spatial,
                                  train_batches=train_batches, seed=seed)

    diagnosis = None
    if expected_path:
        diagnosis = _diagnose_expected(layers[0], layers[0].name in refs, x, acts, expected_path, in_cl, out_cl)
    if output_path:
        if layers[0].name not in refs:
            raise UsageError(f"layer {layers[0].name} has no running statistics: nothing to write")
        _write_output(layers[0], x, acts, output_path, out_cl)

    failed = [r for r in results if not r.passed]
    skipped = sum(1 for r in results if r.skipped and r.passed)
    checked = [r for r in results if not (r.skipped and r.passed)]
    summary = (f"{len(checked) - len(failed)} of {len(checked)} layers passed on {', '.join(devices)}"
               + (f", {len(failed)} failed" if failed else "") + (f", {skipped} skipped" if skipped else ""))
    if diagnosis is not None:
        summary += "; expected output: " + ("matches" if diagnosis.cause == "match" else diagnosis.cause)
    return VerifyResult("checkpoint", path, device, devices, torch.__version__, not failed, results,
                        diagnosis=diagnosis, input=input_path, output=output_path,
                        synthetic={} if x is not None else {"batch": batch, "spatial": spatial, "seed": seed},
                        train_batches=list(train_batches), tolerances=_tolerances(), summary=summary)


def _layer_input(values: np.ndarray, layers: list[BNLayer], in_cl: bool, input_path: str) -> np.ndarray:
    """--input in the logical N, C, … layout, or a usage error where its channels are not the layers'."""
    x = _logical(values, in_cl)
    bad = [l.name for l in layers if x.ndim < 2 or x.shape[1] != l.channels]
    if bad:
        axis = "last axis" if in_cl else "axis 1"
        got = x.shape[1] if x.ndim >= 2 else "no"
        raise UsageError(f"input has {got} channels on {axis}; layer {bad[0]} has "
                         f"{next(l.channels for l in layers if l.name == bad[0])}"
                         + ("" if in_cl else " (NHWC data? add --input-channels-last, or --channels-last for input "
                                             "and output)"), path=input_path)
    return x


def _diagnose_expected(layer: BNLayer, recomputed: bool, x: np.ndarray, acts, expected_path: str, in_cl: bool,
                       out_cl: bool) -> Diagnosis:
    """--expected: the other runtime's output for --input, against the layer's and the usual mistakes'
    (``recomputed``: verify had running statistics to recompute the layer with)."""
    from bninspect.formats.arrays import read_activations
    from bninspect.numerics import kernels, reference

    exp = read_activations(expected_path)
    if not recomputed:
        raise UsageError(f"layer {layer.name} has no running statistics to compare against")
    y_exp, read_cl, swapped = _expected_layout(exp.values, x.shape, out_cl, expected_path, acts.values.shape)
    diagnosis = diagnose(layer, kernels.round_to(x, reference.compute_dtype(acts.dtype)), y_exp, exp.dtype, in_cl,
                         expected_path, output_channels_last=read_cl, expected_shape=tuple(exp.values.shape))
    if swapped:
        _layout_swapped(diagnosis, x.ndim, out_cl, tuple(exp.values.shape))
    return diagnosis


def _write_output(layer: BNLayer, x: np.ndarray, acts, output_path: str, out_cl: bool) -> None:
    """--output: the layer's float64 reference on --input, written in the input's format."""
    from bninspect.formats.writers import write_activations
    from bninspect.numerics import reference

    # the reference on the input as given (not rounded to the checkpoint's dtype): what the layer should output
    y = reference.eval_reference(x, layer.values("running_mean"), layer.values("running_var"), layer.gamma(),
                                 layer.beta(), layer.eps)
    write_activations(output_path, _file_layout(y, out_cl), acts)
