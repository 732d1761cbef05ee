"""Generate the benchmark checkpoints into benchmarks/data/ (git-ignored, never committed).

Only sizes and layout matter for speed, so the big conv and optimizer tensors are zeros
(cheap to make, written as real bytes); the BatchNorm tensors hold realistic statistics,
because `show` and `check` read and judge exactly those.

    python benchmarks/make_files.py            # everything (~12.5 GB on disk)
    python benchmarks/make_files.py --small    # everything except the 1-4 GB ResNet-152 files
"""

from __future__ import annotations

import argparse
import enum
import json
import math
import os
import shutil
import struct
import sys
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data"

# ResNet-152 is Bottleneck blocks in stages of (3, 8, 36, 3) (He et al. 2015, torchvision
# resnet.py). Width ×3 (stem 192 instead of 64) makes it the 2.1 GB file with
# 3.6 MB of BN tensors; the layer count (155 BN layers) and key names stay torchvision's.
RESNET152_STAGES = (3, 8, 36, 3)
RESNET50_STAGES = (3, 4, 6, 3)
EXPANSION = 4

_SAFETENSORS_DTYPES = {np.dtype("<f4"): "F32", np.dtype("<i8"): "I64"}


class Spec:
    """One tensor to write: a name, a shape, a dtype and either values or zeros."""

    def __init__(self, name: str, shape: tuple[int, ...], dtype: str = "<f4", values: np.ndarray | None = None):
        self.name = name
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.values = values

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def array(self) -> np.ndarray:
        """The values (zeros where only the size matters)."""
        if self.values is not None:
            return self.values.astype(self.dtype).reshape(self.shape)
        return np.zeros(self.shape, dtype=self.dtype)


def _bn_specs(prefix: str, channels: int, rng: np.random.Generator, last_in_block: bool = False) -> list[Spec]:
    """The five tensors of a trained BatchNorm2d, with values of the kind a trained ResNet has."""
    # A trained ResNet: γ near 1 (near 0 for the last BN of a residual branch when
    # zero_init_residual was used, here mildly small), β small, running means of either
    # sign, running variances positive and spread over orders of magnitude.
    gamma = rng.normal(0.3 if last_in_block else 1.0, 0.2, channels)
    beta = rng.normal(0.0, 0.1, channels)
    mean = rng.normal(0.0, 0.5, channels)
    var = np.exp(rng.normal(-1.0, 1.0, channels))
    return [
        Spec(f"{prefix}.weight", (channels,), values=gamma),
        Spec(f"{prefix}.bias", (channels,), values=beta),
        Spec(f"{prefix}.running_mean", (channels,), values=mean),
        Spec(f"{prefix}.running_var", (channels,), values=var),
        # 90 epochs of ImageNet at batch 256: 90 × 5005 steps.
        Spec(f"{prefix}.num_batches_tracked", (), "<i8", values=np.array(450450)),
    ]


def resnet_specs(stages: tuple[int, ...], width: float, seed: int = 0) -> list[Spec]:
    """A torchvision-style Bottleneck ResNet state dict (key names and order as torchvision's)."""
    rng = np.random.default_rng(seed)
    specs: list[Spec] = []
    stem = int(64 * width)
    specs.append(Spec("conv1.weight", (stem, 3, 7, 7)))
    specs += _bn_specs("bn1", stem, rng)
    inplanes = stem
    for i, blocks in enumerate(stages):
        planes = int(64 * width) * 2**i
        for j in range(blocks):
            p = f"layer{i + 1}.{j}"
            specs.append(Spec(f"{p}.conv1.weight", (planes, inplanes, 1, 1)))
            specs += _bn_specs(f"{p}.bn1", planes, rng)
            specs.append(Spec(f"{p}.conv2.weight", (planes, planes, 3, 3)))
            specs += _bn_specs(f"{p}.bn2", planes, rng)
            specs.append(Spec(f"{p}.conv3.weight", (planes * EXPANSION, planes, 1, 1)))
            specs += _bn_specs(f"{p}.bn3", planes * EXPANSION, rng, last_in_block=True)
            if j == 0:
                specs.append(Spec(f"{p}.downsample.0.weight", (planes * EXPANSION, inplanes, 1, 1)))
                specs += _bn_specs(f"{p}.downsample.1", planes * EXPANSION, rng)
            inplanes = planes * EXPANSION
    specs.append(Spec("fc.weight", (1000, inplanes)))
    specs.append(Spec("fc.bias", (1000,)))
    return specs


def chain_specs(n_layers: int, channels: int = 32, seed: int = 0) -> list[Spec]:
    """A plain stack of n conv 1×1 → BN blocks: the scale curve's files (n BN layers)."""
    rng = np.random.default_rng(seed)
    specs: list[Spec] = []
    for i in range(n_layers):
        specs.append(Spec(f"blocks.{i}.conv.weight", (channels, channels, 1, 1), values=rng.normal(0, 0.1, (channels, channels, 1, 1))))
        specs += _bn_specs(f"blocks.{i}.bn", channels, rng)
    return specs


def bn_bytes(specs: list[Spec]) -> int:
    """Bytes of the BatchNorm tensors: what an inspector needs to read."""
    prefixes = {s.name.rsplit(".", 1)[0] for s in specs if s.name.endswith(".running_var")}
    return sum(s.nbytes for s in specs if s.name.rsplit(".", 1)[0] in prefixes)


_ZEROS = bytes(1 << 20)


def _write_array(f, spec: Spec) -> None:
    if spec.values is not None:
        f.write(spec.array().tobytes())
        return
    left = spec.nbytes
    while left:  # zeros in 1 MiB writes: no 2 GB buffer in memory
        n = min(left, len(_ZEROS))
        f.write(_ZEROS[:n])
        left -= n


def write_safetensors(path: Path, specs: list[Spec]) -> None:
    """Stream a safetensors file (8-byte header length, JSON header, raw little-endian data).

    Written by hand so the 2 GB file never sits in memory; read back with safe_open in
    :func:`_sanity`. Tensors are laid out in state-dict order, so the BN byte ranges are
    scattered through the file as in a real one.
    """
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for s in specs:
        header[s.name] = {"dtype": _SAFETENSORS_DTYPES[s.dtype], "shape": list(s.shape), "data_offsets": [offset, offset + s.nbytes]}
        offset += s.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8-byte alignment
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for s in specs:
            _write_array(f, s)
    tmp.replace(path)


def _torch_state_dict(specs: list[Spec]):
    import torch

    # torch.zeros is calloc'd: the untouched zero pages cost no memory until torch.save reads them.
    return {s.name: (torch.from_numpy(s.array().copy()) if s.values is not None else torch.zeros(s.shape, dtype=torch.float32)) for s in specs}


def write_pt(path: Path, specs: list[Spec]) -> None:
    """torch.save of the plain state dict (zip archive, one record per tensor)."""
    import torch

    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(_torch_state_dict(specs), tmp)
    tmp.replace(path)


def write_lightning_pt(path: Path, specs: list[Spec]) -> None:
    """A Lightning checkpoint: the state dict under 'state_dict' with a 'model.' prefix, plus
    SGD momentum buffers for every parameter (the optimizer state that doubles the file)."""
    import torch

    sd = _torch_state_dict(specs)
    params = [k for k in sd if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    state = {i: {"momentum_buffer": torch.zeros_like(sd[k])} for i, k in enumerate(params)}
    ckpt = {
        "epoch": 89,
        "global_step": 450450,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": {f"model.{k}": v for k, v in sd.items()},
        "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 89}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_acc', 'mode': 'max'}": {"best_model_score": 0.781}},
        "optimizer_states": [{
            "state": state,
            "param_groups": [{"lr": 0.0001, "momentum": 0.9, "dampening": 0, "weight_decay": 0.0001,
                              "nesterov": False, "maximize": False, "foreach": None, "differentiable": False,
                              "fused": None, "initial_lr": 0.1, "params": list(range(len(params)))}],
        }],
        "lr_schedulers": [{"T_max": 90, "eta_min": 0, "base_lrs": [0.1], "last_epoch": 90, "_step_count": 91}],
        "hparams_name": "kwargs",
        "hyper_parameters": {"arch": "resnet152", "width": 3, "lr": 0.1, "batch_size": 256},
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)


def write_legacy_pt(path: Path, specs: list[Spec]) -> None:
    """torch.save of the plain state dict in the pre-1.6 format (a run of pickles, then raw storages)."""
    import torch

    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(_torch_state_dict(specs), tmp, _use_new_zipfile_serialization=False)
    tmp.replace(path)


def _resnet_module(stages: tuple[int, ...], width: float, specs: list[Spec]):
    """bench_models.ResNet holding ``specs``' values, in eval mode: built without random init
    (meta device, then uninitialised memory) and then loaded, so a 1 GB model takes seconds."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_models

    with torch.device("meta"):
        model = bench_models.ResNet(stages, width)
    model = model.to_empty(device="cpu")
    model.load_state_dict(_torch_state_dict(specs))
    return model.eval()


def write_pickled_model(stages: tuple[int, ...], width: float):
    """A writer of ``torch.save(model)``: the whole module tree pickled, as YOLO-style files are."""

    def write(path: Path, specs: list[Spec]) -> None:
        import torch

        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(_resnet_module(stages, width, specs), tmp)
        tmp.replace(path)

    return write


# The peer folder: 500 small checkpoints of the kinds people download, 100 of each. The payloads
# are real gadgets with harmless arguments (a shell that runs `true`, exec of `pass`): loaded
# for real they do nothing, and every scanner must still flag them.
MIXED_KINDS = ("state_dict", "legacy", "pickled_model", "training_extras", "payload")


class Phase(enum.Enum):
    """A training script's own enum, as scripts keep in their args."""

    TRAIN = "train"


class _CallOnLoad:
    """Pickles as ``func(*args)``: the shape of every pickle payload."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def _payload(i: int):
    import builtins
    import os
    import runpy
    import subprocess

    return [_CallOnLoad(os.system, "true"), _CallOnLoad(builtins.exec, "pass"), _CallOnLoad(builtins.eval, "0"),
            _CallOnLoad(subprocess.call, ["true"]), _CallOnLoad(runpy._run_code, "pass", {})][i % 5]


def write_mixed(folder: Path, force: bool) -> None:
    """The 500 files of the `check` vs picklescan peer benchmark (see MIXED_KINDS)."""
    import argparse as argparse_module
    import pathlib

    import torch

    folder.mkdir(exist_ok=True)
    for i in range(100):
        specs = chain_specs(16, channels=32, seed=5000 + i)
        sd = _torch_state_dict(specs)
        files = {f"state_dict_{i:03d}.pt": lambda p: torch.save(sd, p),
                 f"legacy_{i:03d}.pt": lambda p: torch.save(sd, p, _use_new_zipfile_serialization=False),
                 f"pickled_model_{i:03d}.pt": lambda p: torch.save(
                     _resnet_module(RESNET50_STAGES, 0.125, resnet_specs(RESNET50_STAGES, 0.125, seed=6000 + i)), p),
                 f"training_extras_{i:03d}.pth": lambda p: torch.save(
                     {"epoch": 90, "state_dict": sd, "best_acc1": np.float64(76.1), "dtype": np.dtype("float32"),
                      "args": argparse_module.Namespace(arch="chain", lr=0.1, out=pathlib.PosixPath("/tmp/run"),
                                                        phase=Phase.TRAIN)}, p),
                 f"payload_{i:03d}.pt": lambda p: torch.save({**sd, "extra": _payload(i)}, p)}
        for name, save in files.items():
            path = folder / name
            if force or not path.exists():
                save(path)
    print(f"  made {folder.relative_to(DATA.parent)}/ (500 files: 100 each of {', '.join(MIXED_KINDS)})", flush=True)


def _sanity(st_path: Path, specs: list[Spec]) -> None:
    """Read the hand-written safetensors back with the reference reader: one BN tensor must match."""
    from safetensors import safe_open

    spec = next(s for s in specs if s.name.endswith("running_var"))
    with safe_open(str(st_path), framework="numpy") as f:
        got = f.get_tensor(spec.name)
    if not np.array_equal(got, spec.array()):
        sys.exit(f"{st_path}: safetensors round trip failed for {spec.name}")


def _make(path: Path, specs: list[Spec], writer, force: bool) -> None:
    if path.exists() and not force:
        print(f"  keep {path.relative_to(DATA.parent)} ({path.stat().st_size / 1e6:,.0f} MB)")
        return
    writer(path, specs)
    print(f"  made {path.relative_to(DATA.parent)} ({path.stat().st_size / 1e6:,.0f} MB)", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Make every benchmark file that is missing (or all of them with --force)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="skip the ~2 GB ResNet-152-shaped files")
    ap.add_argument("--force", action="store_true", help="rewrite files that exist")
    args = ap.parse_args(argv)

    DATA.mkdir(parents=True, exist_ok=True)
    need = 0 if args.small else 12_500_000_000
    free = shutil.disk_usage(DATA).free
    if free < need + 2_000_000_000:
        sys.exit(f"only {free / 1e9:.1f} GB free under {DATA}; the big files need about {need / 1e9:.0f} GB")

    facts_path = DATA / "facts.json"
    facts: dict[str, object] = json.loads(facts_path.read_text()) if facts_path.exists() else {}
    if not args.small:
        big = resnet_specs(RESNET152_STAGES, width=3)
        print(f"ResNet-152 ×3: {sum(1 for s in big if s.name.endswith('running_var'))} BN layers, "
              f"{sum(s.nbytes for s in big) / 1e9:.2f} GB of tensors, {bn_bytes(big) / 1e6:.2f} MB of them BN")
        _make(DATA / "resnet152.safetensors", big, write_safetensors, args.force)
        _sanity(DATA / "resnet152.safetensors", big)
        _make(DATA / "resnet152.pt", big, write_pt, args.force)
        _make(DATA / "resnet152_lightning.ckpt", big, write_lightning_pt, args.force)
        _make(DATA / "resnet152_legacy.pt", big, write_legacy_pt, args.force)
        facts["resnet152_bn_bytes"] = bn_bytes(big)
        # torch.save(model) of ResNet-152 at width ×2: a 1 GB pickled model (issue 14).
        pickled = resnet_specs(RESNET152_STAGES, width=2, seed=152)
        _make(DATA / "resnet152_model.pt", pickled, write_pickled_model(RESNET152_STAGES, 2), args.force)

    # ResNet-50 (width 1) for verify: 53 BN layers, as the verify goal asks.
    r50 = resnet_specs(RESNET50_STAGES, width=1, seed=50)
    _make(DATA / "resnet50.safetensors", r50, write_safetensors, args.force)
    _make(DATA / "resnet50.pt", r50, write_pt, args.force)

    for n in (100, 1000, 10000):
        specs = chain_specs(n, seed=n)
        _make(DATA / f"layers_{n}.safetensors", specs, write_safetensors, args.force)
        _make(DATA / f"layers_{n}.pt", specs, write_pt, args.force)
        facts[f"layers_{n}_bn_bytes"] = bn_bytes(specs)

    # 50 small checkpoints for `check DIR --jobs N`: ResNet-50-shaped at half width,
    # half of them safetensors and half torch.save, each with its own statistics.
    folder = DATA / "many"
    folder.mkdir(exist_ok=True)
    for i in range(50):
        specs = resnet_specs(RESNET50_STAGES, width=0.5, seed=1000 + i)
        if i % 2:
            _make(folder / f"model_{i:02d}.pt", specs, write_pt, args.force)
        else:
            _make(folder / f"model_{i:02d}.safetensors", specs, write_safetensors, args.force)

    write_mixed(DATA / "mixed", args.force)

    facts_path.write_text(json.dumps(facts, indent=1) + "\n")


if __name__ == "__main__":
    main()
