"""Regenerate bninspect's sample checkpoints by really training tiny models on the CPU.

    python sample_checkpoints/make_samples.py                      # all samples, next to this file
    python sample_checkpoints/make_samples.py resnet_tiny.pt       # only some
    python sample_checkpoints/make_samples.py --out /tmp/s --list  # elsewhere; list the names

Every model is trained in train mode for ``STEPS`` SGD steps on ``sample_models.synthetic_images``,
so its BatchNorm running statistics are real (``num_batches_tracked == STEPS``), then switched to
eval mode and saved. Seeds, one thread and deterministic algorithms make every run give
bit-identical tensors on the same machine and torch build.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
# Import the models as the top-level module ``sample_models`` (not ``sample_checkpoints.…``) so
# the pickled module in resnet_tiny_module.pt names the same module that ``--arch
# sample_models:…`` imports.
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import sample_models  # noqa: E402

SEED = 0  # weight initialisation, per architecture
DATA_SEED = 1  # the training images
STEPS = 40
BATCH_SIZE = 32
LR = 0.05
SGD_MOMENTUM = 0.9
LR_STEP = 20  # StepLR: halve the learning rate every LR_STEP steps
EMA_DECAY = 0.9  # small on purpose: after 40 steps the EMA differs visibly from the weights


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


def _train(arch: str) -> TrainedRun:
    # Seed per architecture so a model's weights do not depend on which samples ran before it.
    torch.manual_seed(SEED)
    model = sample_models.BUILDERS[arch]()
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=SGD_MOMENTUM, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=LR_STEP, gamma=0.5)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x, y = sample_models.synthetic_images(STEPS * BATCH_SIZE, seed=DATA_SEED)
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
    model.eval()
    return TrainedRun(
        model=model,
        optimizer_state=optimizer.state_dict(),
        scheduler_state=scheduler.state_dict(),
        ema_state=ema,
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


def make_deterministic() -> None:
    """Seeded, single-threaded, deterministic kernels: identical tensors on every run."""
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
