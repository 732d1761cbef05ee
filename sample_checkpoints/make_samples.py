"""Regenerate bninspect's sample checkpoints by really training tiny models on the CPU.

    python sample_checkpoints/make_samples.py                      # all samples, next to this file
    python sample_checkpoints/make_samples.py resnet_tiny.pt       # only some
    python sample_checkpoints/make_samples.py --out /tmp/s --list  # elsewhere; list the names

Every model is trained in train mode for ``STEPS`` SGD steps on ``sample_models.synthetic_images``,
so its BatchNorm running statistics are real (``num_batches_tracked == STEPS``), then switched to
eval mode and saved. Seeds, one thread and deterministic algorithms make every run give
bit-identical tensors on the same machine and torch build; training in float64, cast once to the
float32 the samples store, makes them the same on other x86-64 CPUs too (see ``train_in_float64``).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__":
    # MKL, torch's BLAS on x86, picks its kernels, and with them the order of each sum, by the
    # CPU, unless its conditional numerical reproducibility mode pins one code path for every
    # x86-64 CPU (see train_in_float64). Read when torch loads MKL; set only for the script, so a
    # test process that imports this module for its constants keeps its BLAS as it is.
    os.environ["MKL_CBWR"] = "COMPATIBLE"

import torch  # noqa: E402
from torch import nn  # noqa: E402

HERE = Path(__file__).resolve().parent
# Import the models as the top-level module ``sample_models`` (not ``sample_checkpoints.…``) so
# the pickled module in resnet_tiny_module.pt names the same module that ``--arch
# sample_models:…`` imports.
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import sample_models  # noqa: E402

SEED = 0  # weight initialisation, per architecture
DATA_SEED = 1  # the training images
# More steps than BN102's default of 200, as real trained checkpoints have (thousands), so no
# rule calls the healthy samples' statistics too briefly updated; batch 16 keeps this fast.
STEPS = 240
BATCH_SIZE = 16
LR = 0.05
SGD_MOMENTUM = 0.9
LR_STEP = 80  # StepLR: halve the learning rate every LR_STEP steps (0.05, 0.025, 0.0125)
EMA_DECAY = 0.9  # small on purpose: it follows the last ~10 steps, so it differs visibly from the weights


@dataclass
class TrainedRun:
    """A trained model (eval mode) and the training state a real trainer would checkpoint."""

    model: nn.Module
    optimizer_state: dict
    scheduler_state: dict
    ema_state: dict[str, torch.Tensor]  # same keys as model.state_dict()
    steps: int
    losses: list[float]


# Trained models of this run, by architecture: samples derived from one model train it once.
_RUNS: dict[str, TrainedRun] = {}


def trained(arch: str) -> TrainedRun:
    """Train ``sample_models.BUILDERS[arch]`` once per run; later samples reuse the cached result.

    Callers that change the model must work on ``copy.deepcopy(trained(arch).model)``.
    """
    if arch not in _RUNS:
        _RUNS[arch] = _train(arch)
    return _RUNS[arch]


def train_in_float64(model: nn.Module) -> nn.Module:
    """The model in float64 for training; :func:`stored` casts the result back to float32 once.

    float32 training gave other weights on each CPU (an AMD EPYC moved them by 8.4e-4 against
    samples made on an Intel Xeon): a different order of summation changes the last bit of a
    sum, and 240 SGD steps on a loss driven to ~0 amplify that to 1e-4 (measured: MKL's
    reproducible mode alone, on one machine, moved float64 weights by 2.7e-4). So nothing may
    depend on the CPU. float64 convs run in torch's own kernels, where float32 ones go to oneDNN,
    which picks kernels by instruction set (AVX2, AVX-512, AMX); MKL is pinned to one code path
    when the script starts (above). torch's own kernels gave the same bits with AVX2 and AVX-512
    (ATEN_CPU_CAPABILITY); a CPU without AVX2 (before 2013) would draw other random numbers.
    Measured: MobileNetV1Tiny's 240 steps give bit-identical weights on an AMD EPYC (torch 2.13)
    and an Intel Xeon (torch 2.11), with torch's kernels at AVX2 and at AVX-512 on each.
    """
    return model.double()


def stored(value):
    """Tensors trained in float64 as the float32 the samples store (dicts and lists walked)."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype == torch.float64 else value
    if isinstance(value, dict):
        return type(value)((k, stored(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(stored(v) for v in value)
    return value


def _train(arch: str) -> TrainedRun:
    # Seed per architecture so a model's weights do not depend on which samples ran before it.
    torch.manual_seed(SEED)
    model = train_in_float64(sample_models.BUILDERS[arch]())
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=SGD_MOMENTUM, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=LR_STEP, gamma=0.5)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x, y = sample_models.synthetic_images(STEPS * BATCH_SIZE, seed=DATA_SEED)
    x = x.double()
    losses = []
    for step in range(STEPS):
        batch = slice(step * BATCH_SIZE, (step + 1) * BATCH_SIZE)
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        with torch.no_grad():
            for key, value in model.state_dict().items():
                if value.is_floating_point():
                    # ema = decay·ema + (1 − decay)·value, for weights and running statistics alike
                    ema[key].mul_(EMA_DECAY).add_(value, alpha=1 - EMA_DECAY)
                else:
                    ema[key].copy_(value)  # num_batches_tracked: a count, not averaged
    model.eval().float()
    return TrainedRun(
        model=model,
        optimizer_state=stored(optimizer.state_dict()),
        scheduler_state=scheduler.state_dict(),
        ema_state=stored(ema),
        steps=STEPS,
        losses=losses,
    )


def state_dict(arch: str) -> dict[str, torch.Tensor]:
    """A detached copy of the trained model's state dict, safe to modify."""
    return {k: v.detach().clone() for k, v in trained(arch).model.state_dict().items()}


# ── The registry ────────────────────────────────────────────────────────────────────────────
# To add a sample (e.g. a faulty checkpoint for a check rule), write one function that takes
# the output path and writes the file, and decorate it with @sample("file_name.ext"):
#
#     @sample("mobilenet_v1_tiny_zero_var.pt")
#     def mobilenet_zero_var(path: Path) -> None:
#         sd = state_dict("mobilenet_v1_tiny")          # a trained copy; training is cached
#         sd["features.2.bn.running_var"][3] = 0.0
#         torch.save(sd, path)
#
# then run `python sample_checkpoints/make_samples.py mobilenet_v1_tiny_zero_var.pt`, add a
# line to sample_checkpoints/README.md, and commit the generated file.
SAMPLES: dict[str, Callable[[Path], None]] = {}


def sample(file_name: str) -> Callable[[Callable[[Path], None]], Callable[[Path], None]]:
    """Register ``fn(path)`` as the writer of the sample ``file_name``."""

    def register(fn: Callable[[Path], None]) -> Callable[[Path], None]:
        if file_name in SAMPLES:
            raise ValueError(f"sample {file_name} is registered twice")
        SAMPLES[file_name] = fn
        return fn

    return register


@sample("mobilenet_v1_tiny.pt")
def mobilenet_pt(path: Path) -> None:
    """The seed question's model as a plain state dict (torch.save zip archive)."""
    torch.save(state_dict("mobilenet_v1_tiny"), path)


@sample("mobilenet_v1_tiny.safetensors")
def mobilenet_safetensors(path: Path) -> None:
    """The same state dict as safetensors."""
    from safetensors.torch import save_file

    save_file(state_dict("mobilenet_v1_tiny"), str(path))


def _scripted(arch: str, training: bool) -> torch.jit.ScriptModule:
    scripted = torch.jit.script(copy.deepcopy(trained(arch).model))
    scripted.train(training)
    return scripted


@sample("mobilenet_v1_tiny.ts")
def mobilenet_ts(path: Path) -> None:
    """TorchScript archive in eval mode: carries eps, momentum and the training flag per module."""
    torch.jit.save(_scripted("mobilenet_v1_tiny", training=False), str(path))


@sample("mobilenet_v1_tiny_train.ts")
def mobilenet_train_ts(path: Path) -> None:
    """A deployment bug: scripted in TRAIN mode, so BN keeps using batch statistics at inference."""
    torch.jit.save(_scripted("mobilenet_v1_tiny", training=True), str(path))


@sample("mobilenet_v1_tiny_legacy.pt")
def mobilenet_legacy(path: Path) -> None:
    """The plain state dict in torch.save's legacy (pre-1.6, non-zip) format."""
    torch.save(state_dict("mobilenet_v1_tiny"), path, _use_new_zipfile_serialization=False)


@sample("resnet_tiny.pt")
def resnet_pt(path: Path) -> None:
    """ResNetTiny as a plain state dict."""
    torch.save(state_dict("resnet_tiny"), path)


@sample("resnet_tiny_lightning.ckpt")
def resnet_lightning(path: Path) -> None:
    """A PyTorch Lightning-style checkpoint: ``model.``-prefixed state dict, optimizer, EMA copy."""
    run = trained("resnet_tiny")
    # A LightningModule holding the network as self.model prefixes every key with "model.".
    checkpoint = {
        "epoch": 0,
        "global_step": run.steps,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": {f"model.{k}": v for k, v in state_dict("resnet_tiny").items()},
        "loops": {},
        "callbacks": {},
        "optimizer_states": [copy.deepcopy(run.optimizer_state)],
        "lr_schedulers": [dict(run.scheduler_state)],
        "hparams_name": "kwargs",
        "hyper_parameters": {"lr": LR, "momentum": SGD_MOMENTUM, "batch_size": BATCH_SIZE},
        "state_dict_ema": {f"model.{k}": v.clone() for k, v in run.ema_state.items()},
    }
    torch.save(checkpoint, path)


@sample("resnet_tiny_dp.pth")
def resnet_dataparallel(path: Path) -> None:
    """Saved through nn.DataParallel, so every key starts with ``module.`` (works on the CPU)."""
    torch.save(nn.DataParallel(copy.deepcopy(trained("resnet_tiny").model)).state_dict(), path)


@sample("resnet_tiny_compiled.pt")
def resnet_compiled(path: Path) -> None:
    """Saved from torch.compile's wrapper, so every key starts with ``_orig_mod.``."""
    # torch.compile only wraps here: nothing is compiled until the wrapper is called.
    compiled = torch.compile(copy.deepcopy(trained("resnet_tiny").model))
    torch.save(compiled.state_dict(), path)


@sample("resnet_tiny_module.pt")
def resnet_module(path: Path) -> None:
    """A full pickled nn.Module (class sample_models.ResNetTiny): opening it runs pickle, needs --trust."""
    torch.save(copy.deepcopy(trained("resnet_tiny").model), path)


@sample("norms_tiny.pt")
def norms_pt(path: Path) -> None:
    """GroupNorm/LayerNorm only, no BatchNorm: proves discovery reports no false positives."""
    torch.save(state_dict("norms_tiny"), path)


# ── Faulty samples for `bninspect check` (one per rule that a file can trigger) ──────────────
# Each starts from the trained MobileNetV1Tiny and tampers with one thing, so its rule fires
# on it and on no other sample (tests/rules/test_rule_samples.py). They live in faulty/.
FAULTY = "faulty/"
MOBILENET_BNS = ("features.2.bn", "features.3.bn", "features.4.bn", "features.5.bn")


def _save_faulty(sd: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path)


def _script_faulty(model: nn.Module, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(model), str(path))


def _bn_modules(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@sample(FAULTY + "nan.pt")
def faulty_nan(path: Path) -> None:
    """BN001: a diverged run: NaN in features.4.bn.running_var[3], Inf in running_mean[10]."""
    sd = state_dict("mobilenet_v1_tiny")
    sd["features.4.bn.running_var"][3] = float("nan")
    sd["features.4.bn.running_mean"][10] = float("inf")
    _save_faulty(sd, path)


# One value (or a few channels) of one tensor changed in the trained state dict:
# file, tensor, channels, new value, why.
_TAMPERED = (
    ("negvar.pt", "features.4.bn.running_var", [7], -0.25, "BN002: a negative variance (a broken conversion)"),
    ("zero_var.pt", "features.3.bn.running_var", [3, 9], 0.0, "BN105: constant channels"),
    ("extreme_scale.pt", "features.5.bn.weight", [7], 5000.0, "BN106: a scale |γ|/√(σ²+ε) in the thousands"),
    ("dead_gamma.pt", "features.3.bn.weight", [2, 11], 0.0, "BN107: pruned-looking channels"),
    ("outlier.pt", "features.3.bn.running_mean", [6], 1000.0, "BN108: a corrupted value (the others within ±3)"),
)


def _tampered(key: str, channels: list[int], value: float, why: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        sd = state_dict("mobilenet_v1_tiny")
        sd[key][channels] = value
        _save_faulty(sd, path)

    write.__doc__ = f"{why}: {key}{channels} = {value}."
    return write


for _name, _key, _channels, _value, _why in _TAMPERED:
    sample(FAULTY + _name)(_tampered(_key, _channels, _value, _why))


@sample(FAULTY + "length_mismatch.pt")
def faulty_length_mismatch(path: Path) -> None:
    """BN003: a pruning bug: features.5.bn.weight keeps 127 of 128 channels, the rest keeps 128."""
    sd = state_dict("mobilenet_v1_tiny")
    sd["features.5.bn.weight"] = sd["features.5.bn.weight"][:127].clone()
    _save_faulty(sd, path)


@sample(FAULTY + "default_stats.pt")
def faulty_default_stats(path: Path) -> None:
    """BN101: saved before training: every BN still has running_mean 0, running_var 1, count 0."""
    torch.manual_seed(SEED)
    _save_faulty(sample_models.BUILDERS["mobilenet_v1_tiny"]().state_dict(), path)


@sample(FAULTY + "few_updates.pt")
def faulty_few_updates(path: Path) -> None:
    """BN102: statistics from only 5 train-mode batches (num_batches_tracked = 5)."""
    torch.manual_seed(SEED)
    model = train_in_float64(sample_models.BUILDERS["mobilenet_v1_tiny"]())
    x, _ = sample_models.synthetic_images(5 * BATCH_SIZE, seed=DATA_SEED)
    model.train()
    with torch.no_grad():
        for step in range(5):
            model(x[step * BATCH_SIZE:(step + 1) * BATCH_SIZE].double())
    _save_faulty(stored(model.state_dict()), path)


@sample(FAULTY + "mixed_counts.pt")
def faulty_mixed_counts(path: Path) -> None:
    """BN103: a backbone from a 100× longer pre-training (count 100·STEPS) and a head with STEPS."""
    sd = state_dict("mobilenet_v1_tiny")
    for prefix in MOBILENET_BNS[:-1]:
        sd[prefix + ".num_batches_tracked"].fill_(100 * STEPS)
    _save_faulty(sd, path)


@sample(FAULTY + "converted_stats.safetensors")
def faulty_converted(path: Path) -> None:
    """BN104: trained statistics with num_batches_tracked = 0, as converters write them."""
    from safetensors.torch import save_file

    sd = state_dict("mobilenet_v1_tiny")
    for prefix in MOBILENET_BNS:
        sd[prefix + ".num_batches_tracked"].zero_()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))


@sample(FAULTY + "no_running_stats.pt")
def faulty_no_running_stats(path: Path) -> None:
    """BN201: BatchNorm(track_running_stats=False): only weight and bias in the state dict."""
    torch.manual_seed(SEED)
    model = sample_models.BUILDERS["mobilenet_v1_tiny"]()
    for bn in _bn_modules(model):
        bn.track_running_stats = False
        bn.running_mean = bn.running_var = bn.num_batches_tracked = None
    model.load_state_dict(state_dict("mobilenet_v1_tiny"), strict=False)
    _save_faulty(model.state_dict(), path)


@sample(FAULTY + "mixed_mode.ts")
def faulty_mixed_mode(path: Path) -> None:
    """BN203 (and BN202 on that layer): scripted in eval mode, except features.5.bn left in train mode."""
    model = copy.deepcopy(trained("mobilenet_v1_tiny").model).eval()
    model.features[5].bn.train()
    _script_faulty(model, path)


@sample(FAULTY + "momentum_none.ts")
def faulty_momentum_none(path: Path) -> None:
    """BN204: every BN with momentum=None (cumulative average), scripted in eval mode."""
    model = copy.deepcopy(trained("mobilenet_v1_tiny").model).eval()
    for bn in _bn_modules(model):
        bn.momentum = None
    _script_faulty(model, path)


@sample(FAULTY + "syncbn.ts")
def faulty_syncbn(path: Path) -> None:
    """BN205: SyncBatchNorm (convert_sync_batchnorm for DDP) traced and saved; it cannot be scripted."""
    model = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(trained("mobilenet_v1_tiny").model)).eval()
    x, _ = sample_models.synthetic_images(2, seed=DATA_SEED)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.trace(model, x), str(path))


@sample(FAULTY + "no_count.pt")
def faulty_no_count(path: Path) -> None:
    """BN206: running statistics without num_batches_tracked (pre-0.4.1 or converter style)."""
    sd = {k: v for k, v in state_dict("mobilenet_v1_tiny").items() if not k.endswith("num_batches_tracked")}
    _save_faulty(sd, path)


@sample(FAULTY + "eps_keras.ts")
def faulty_eps_keras(path: Path) -> None:
    """BN301: ported with Keras' eps = 1e-3 on every BN, scripted in eval mode."""
    model = copy.deepcopy(trained("mobilenet_v1_tiny").model).eval()
    for bn in _bn_modules(model):
        bn.eps = 1e-3
    _script_faulty(model, path)


@sample(FAULTY + "eps_sensitive.pt")
def faulty_eps_sensitive(path: Path) -> None:
    """BN302: features.3.bn.running_var scaled by 1e-4 (about 1e-5, like eps itself)."""
    sd = state_dict("mobilenet_v1_tiny")
    sd["features.3.bn.running_var"].mul_(1e-4)
    _save_faulty(sd, path)


@sample(FAULTY + "half_stats.pt")
def faulty_half_stats(path: Path) -> None:
    """BN303: running statistics stored in float16 (model.half() before saving)."""
    sd = state_dict("mobilenet_v1_tiny")
    for prefix in MOBILENET_BNS:
        for name in ("running_mean", "running_var"):
            sd[f"{prefix}.{name}"] = sd[f"{prefix}.{name}"].half()
    _save_faulty(sd, path)


@sample(FAULTY + "conv_bias.pt")
def faulty_conv_bias(path: Path) -> None:
    """BN304: the pointwise conv features.3.p_conv_k1 carries a bias (Conv2d's default bias=True)."""
    sd = state_dict("mobilenet_v1_tiny")
    g = torch.Generator().manual_seed(SEED)
    keys = list(sd)
    at = keys.index("features.3.p_conv_k1.weight") + 1
    bias = ("features.3.p_conv_k1.bias", 0.05 * torch.randn(64, generator=g))
    _save_faulty(dict([*((k, sd[k]) for k in keys[:at]), bias, *((k, sd[k]) for k in keys[at:])]), path)


# ── Safety samples (BN4xx): what a real load would run, each harmless if loaded for real ──────
# Every call in them is inert (the process id, a square root, attributes restored): they show
# the rules firing without being payloads. The hostile ones are made at test time only
# (tests/hardening/make_corpus.py).


class _CallOnLoad:
    """Pickles as ``func(*args)``: what a real ``torch.load(weights_only=False)`` calls."""

    def __init__(self, func: Callable[..., object], *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (self.func, self.args)


@sample(FAULTY + "getpid_on_load.pt")
def faulty_getpid_on_load(path: Path) -> None:
    """BN401: a healthy state dict plus ``os.getpid()`` (pickled as posix.getpid), a call from a
    module whose functions run processes and touch the system."""
    import os

    _save_faulty({**state_dict("mobilenet_v1_tiny"), "pid": _CallOnLoad(os.getpid)}, path)  # type: ignore[dict-item]


@sample(FAULTY + "unreviewed_call.pt")
def faulty_unreviewed_call(path: Path) -> None:
    """BN402: a healthy state dict plus ``math.sqrt(2.0)``, a function outside the reviewed list."""
    import math

    _save_faulty({**state_dict("mobilenet_v1_tiny"), "norm": _CallOnLoad(math.sqrt, 2.0)}, path)  # type: ignore[dict-item]


class _Restored(nn.Module):
    """A module with scripted __getstate__/__setstate__, which torch.jit.load runs."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    @torch.jit.export
    def __getstate__(self) -> tuple[float, bool]:
        return (self.scale, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[float, bool]) -> None:
        self.scale = state[0]
        self.training = state[1]


@sample(FAULTY + "setstate.ts")
def faulty_setstate(path: Path) -> None:
    """BN403: the MobileNet scripted after a module whose ``__setstate__`` runs on torch.jit.load."""
    model = nn.Sequential(sample_models.mobilenet_v1_tiny(), _Restored())
    model[0].load_state_dict(state_dict("mobilenet_v1_tiny"))
    _script_faulty(model.eval(), path)


# ── Drift samples for `bninspect drift` (drift/) ─────────────────────────────────────────────
# Two MobileNetV1Tiny trained for 120 steps with a decaying learning rate (so the weights settle
# and the running statistics, momentum 0.1, catch up), at batch size 64 and at batch size 2.
# Measured on drift/calib.pt (held-out images): batch 64 gives drift scores 0.009-0.015 (the
# statistics fit the data); batch 2 gives 0.14-0.23, worst in the deepest BN, because every
# update averages 2-image estimates. The same images + CALIB_SHIFT (a shift after training, made
# in the tests) move the batch-64 model's first BN (features.2.bn) to 0.72, later ones 0.20-0.37.
DRIFT = "drift/"
DRIFT_STEPS = 120
CALIB_SAMPLES = 64
CALIB_SEED = 5  # not DATA_SEED: calibration images the models never trained on
CALIB_SHIFT = 1.0  # tests/services/test_drift.py shifts calib.pt by this


def _train_mobilenet_at(batch_size: int) -> nn.Module:
    torch.manual_seed(SEED)
    model = train_in_float64(sample_models.mobilenet_v1_tiny())
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=SGD_MOMENTUM, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=DRIFT_STEPS // 3, gamma=0.3)
    x, y = sample_models.synthetic_images(DRIFT_STEPS * batch_size, seed=DATA_SEED)
    x = x.double()
    for step in range(DRIFT_STEPS):
        batch = slice(step * batch_size, (step + 1) * batch_size)
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return model.eval().float()


@sample(DRIFT + "mobilenet_v1_tiny_bs64.pt")
def drift_bs64(path: Path) -> None:
    """Trained at batch size 64: running statistics that describe the data (small drift)."""
    _save_faulty(_train_mobilenet_at(64).state_dict(), path)


@sample(DRIFT + "mobilenet_v1_tiny_bs2.pt")
def drift_bs2(path: Path) -> None:
    """Trained at batch size 2: running statistics averaged from 2-image batches (large drift)."""
    _save_faulty(_train_mobilenet_at(2).state_dict(), path)


@sample(DRIFT + "calib.pt")
def drift_calib(path: Path) -> None:
    """64 held-out images of the training distribution, a plain tensor [64, 3, 16, 16] for --data."""
    _save_faulty(sample_models.synthetic_images(CALIB_SAMPLES, seed=CALIB_SEED)[0], path)


# ── Deployed artifacts (deployed/), what the README's verify and diff examples read ───────────
# A deployment of the trained models: ONNX and OpenVINO IR exports of MobileNetV1Tiny (for
# `diff`), and an input for ResNetTiny's bn1 with the output a runtime using Keras' eps 1e-3
# gave for it (for `verify --expected`). Made with the exporters and runtimes of the test extra.
DEPLOYED = "deployed/"
DEPLOYED_INPUT_SEED = 7


def _bn1_input() -> torch.Tensor:
    """ResNetTiny bn1's input x [2, 16, 8, 8] (float32): x_c ~ N(μ_c, σ²_c), its running statistics."""
    sd = state_dict("resnet_tiny")
    g = torch.Generator().manual_seed(DEPLOYED_INPUT_SEED)
    z = torch.randn(2, 16, 8, 8, generator=g)
    return sd["bn1.running_mean"][None, :, None, None] + sd["bn1.running_var"].sqrt()[None, :, None, None] * z


@sample(DEPLOYED + "x.npy")
def deployed_input(path: Path) -> None:
    """The activations fed to ResNetTiny's bn1 in a deployment, as .npy (N,C,H,W float32)."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, _bn1_input().numpy())


@sample(DEPLOYED + "y_deployed.npy")
def deployed_output(path: Path) -> None:
    """bn1's output on x.npy from a runtime that used Keras' eps 1e-3 where the model has 1e-5."""
    import numpy as np

    bn = nn.BatchNorm2d(16, eps=1e-3)
    bn.load_state_dict({k[len("bn1."):]: v for k, v in state_dict("resnet_tiny").items() if k.startswith("bn1.")})
    with torch.no_grad():
        y = bn.eval()(_bn1_input())
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, y.numpy())


@sample(DEPLOYED + "mobilenet_v1_tiny.onnx")
def deployed_onnx(path: Path) -> None:
    """torch.onnx.export of the trained MobileNetV1Tiny in eval mode, BN folded into the convs
    (the TorchScript-based exporter with constant folding, as tests/exports.py makes them)."""
    import warnings

    path.parent.mkdir(parents=True, exist_ok=True)
    example = sample_models.synthetic_images(1, seed=DATA_SEED)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notices
        torch.onnx.export(copy.deepcopy(trained("mobilenet_v1_tiny").model).eval(), (example,), str(path),
                          dynamo=False, do_constant_folding=True)


@sample(DEPLOYED + "mobilenet_v1_tiny.xml")
def deployed_ir(path: Path) -> None:
    """OpenVINO IR (float32, .xml with its .bin) converted from the ONNX export: BN fused by the converter."""
    import tempfile

    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp:
        deployed_onnx(Path(tmp) / "model.onnx")
        ov.save_model(ov.convert_model(str(Path(tmp) / "model.onnx")), str(path), compress_to_fp16=False)


def make_deterministic() -> None:
    """Seeded, single-threaded, deterministic kernels: identical tensors on every run (and, with
    float64 training, on every x86-64 CPU)."""
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def main(argv: list[str] | None = None) -> int:
    """Write the named samples (all by default) to ``--out`` (default: this directory)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="sample file names (default: all)")
    parser.add_argument("--out", type=Path, default=HERE, help="output directory")
    parser.add_argument("--list", action="store_true", help="list the sample names and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(SAMPLES))
        return 0
    unknown = [n for n in args.names if n not in SAMPLES]
    if unknown:
        parser.error(f"unknown sample(s) {', '.join(unknown)}; known: {', '.join(SAMPLES)}")
    make_deterministic()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.names or list(SAMPLES):
        path = args.out / name
        SAMPLES[name](path)
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    for arch, run in _RUNS.items():
        print(f"trained {arch}: {run.steps} steps, loss {run.losses[0]:.3f} -> {run.losses[-1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
