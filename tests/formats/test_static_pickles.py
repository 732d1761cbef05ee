"""Checkpoints people really have, read statically: pickled models, training extras, OmegaConf.

Each file is made here with the real libraries (torch, argparse, numpy, pathlib, omegaconf) or
with classes from a throw-away module written for the test. That module stays importable while
bninspect reads (its folder is on the reading process's PYTHONPATH) and leaves a marker file when
it is imported or when its classes are built or restored: a marker after a read means a global
from the file was imported or called. Every read must leave none.
"""

from __future__ import annotations

import argparse
import collections
import copy
import enum
import functools
import json
import os
import pathlib
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bninspect.formats import open_checkpoint
from tests.conftest import run_cli

# Every test here makes or reads its files with torch (the Python 3.10 job has none).
pytestmark = pytest.mark.torch

# The throw-away package: a YOLO-style detector (Conv = conv + BN + SiLU, BN eps 1e-3 and
# momentum 0.03 as YOLO-style models set them), a torchvision-style ResNet, and a class whose
# construction, restoration and import all leave markers.
MODELS = textwrap.dedent('''
    import os, pathlib
    import torch.nn as nn

    def _mark(what):
        folder = os.environ.get("MARKER_DIR")
        if folder:
            pathlib.Path(folder, f"MARKER-{what}").write_text(what)

    _mark("imported")


    class Marked(nn.Module):
        """Leaves a marker whenever an instance is built or restored from a pickle."""

        def __init__(self):
            super().__init__()
            _mark(f"built-{type(self).__name__}")

        def __setstate__(self, state):
            _mark(f"restored-{type(self).__name__}")
            super().__setstate__(state)


    class Conv(Marked):
        def __init__(self, c_in, c_out, k=1, s=1, g=1):
            super().__init__()
            self.conv = nn.Conv2d(c_in, c_out, k, s, k // 2, groups=g, bias=False)
            self.bn = nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.03)
            self.act = nn.SiLU()

        def forward(self, x):
            return self.act(self.bn(self.conv(x)))


    class Bottleneck(Marked):
        def __init__(self, c):
            super().__init__()
            self.cv1 = Conv(c, c, 3)
            self.cv2 = Conv(c, c, 3, g=c)

        def forward(self, x):
            return x + self.cv2(self.cv1(x))


    class Detect(Marked):
        def __init__(self, c, nc=3):
            super().__init__()
            self.cv2 = nn.ModuleList([nn.Sequential(Conv(c, c, 3), Conv(c, c, 3), nn.Conv2d(c, 4, 1))])
            self.cv3 = nn.ModuleList([nn.Sequential(Conv(c, c, 3), nn.Conv2d(c, nc, 1))])

        def forward(self, x):
            return self.cv2[0](x), self.cv3[0](x)


    class DetectionModel(Marked):
        def __init__(self):
            super().__init__()
            self.model = nn.Sequential(Conv(3, 8, 3, 2), Conv(8, 16, 3, 2), Bottleneck(16), Detect(16))
            self.names = {0: "cat", 1: "dog", 2: "bird"}

        def forward(self, x):
            return self.model(x)


    class BasicBlock(Marked):
        def __init__(self, c_in, c_out, stride=1):
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.downsample = None
            if stride != 1 or c_in != c_out:
                self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

        def forward(self, x):
            out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
            return self.relu(out + (x if self.downsample is None else self.downsample(x)))


    class ResNet(Marked):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(8)
            self.relu = nn.ReLU(inplace=True)
            self.layer1 = nn.Sequential(BasicBlock(8, 8))
            self.layer2 = nn.Sequential(BasicBlock(8, 16, 2))
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            x = self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x)))))
            return self.fc(x.mean((2, 3)))
''')


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The throw-away module, imported for making files; ``read_env`` lets a reader import it too."""
    folder = tmp_path_factory.mktemp("pkg")
    (folder / "throwaway_models.py").write_text(MODELS)
    made = tmp_path_factory.mktemp("made-markers")
    os.environ["MARKER_DIR"] = str(made)
    sys.path.insert(0, str(folder))
    try:
        import throwaway_models
    finally:
        sys.path.remove(str(folder))
    yield throwaway_models, folder
    sys.modules.pop("throwaway_models", None)
    os.environ.pop("MARKER_DIR", None)


def _trained(model: nn.Module, seed: int = 0) -> nn.Module:
    """A few train-mode passes so the running statistics are real, then eval mode; the batch
    count of a longer run (a real checkpoint's thousands), so BN102 has nothing to say."""
    torch.manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, 32, 32))
        for bn in model.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.num_batches_tracked.fill_(5000)
    return model.eval()


def _read(path: Path, folder: Path, tmp_path: Path, *args: str):
    """The CLI on ``path`` with the throw-away module importable; fails on any marker it left."""
    markers = tmp_path / "read-markers"
    markers.mkdir(exist_ok=True)
    run = run_cli(*args, str(path), env={"PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]),
                                         "MARKER_DIR": str(markers)})
    assert list(markers.iterdir()) == [], "a global from the file was imported or called"
    return run


def _bn_names(model: nn.Module, prefix: str = "") -> list[str]:
    return [prefix + n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_yolo_style_checkpoint(models, tmp_path, legacy):
    mod, folder = models
    model = _trained(mod.DetectionModel())
    ema = copy.deepcopy(model)
    with torch.no_grad():  # the EMA weights differ from the model's, as they do after training
        for bn in ema.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.running_var.mul_(1.5)
    path = tmp_path / "best.pt"
    torch.save({"date": "2026-12-01T10:00:00", "version": "8.3.0", "epoch": -1, "best_fitness": np.float64(0.61),
                "model": model.half(), "ema": ema.half(), "updates": 1234, "optimizer": None,
                "train_args": {"data": "coco8.yaml", "epochs": 3, "imgsz": 32, "device": None}},
               path, _use_new_zipfile_serialization=not legacy)
    before = set(sys.modules)
    ckpt = open_checkpoint(path)
    assert {m for m in set(sys.modules) - before if not m.startswith("bninspect.")} == set()
    # The EMA model is the one a deployment loads (ultralytics: ckpt.get("ema") or ckpt["model"]).
    assert ckpt.container == "ema" and ckpt.alternatives == ["model"] and ckpt.prefix == ""

    run = _read(path, folder, tmp_path, "show", "--json")
    assert run.code == 0, run.err
    doc = json.loads(run.out)
    layers = doc["layers"]
    assert [l["name"] for l in layers] == _bn_names(ema) == [
        "model.0.bn", "model.1.bn", "model.2.cv1.bn", "model.2.cv2.bn", "model.3.cv2.0.0.bn", "model.3.cv2.0.1.bn",
        "model.3.cv3.0.0.bn"]
    for layer in layers:
        assert (layer["eps"], layer["eps_source"], layer["momentum"], layer["momentum_source"]) == (
            pytest.approx(1e-3), "module", pytest.approx(0.03), "module")
        assert layer["training"] is False and layer["kind"] == "BatchNorm2d" and layer["kind_source"] == "module"
        assert layer["tensors"]["running_var"]["dtype"] == "float16"
        assert layer["producer"]["name"] == layer["name"][:-len("bn")] + "conv"
    assert [l["producer"]["kind"] for l in layers][3] == "depthwise conv 3×3"
    ema_var = ema.model[0].bn.running_var.float().numpy()
    assert doc["layers"][0]["stats"]["running_var_max"] == pytest.approx(float(ema_var.max()))
    safety = doc["safety"]
    assert safety["refused"] is False and safety["packages"] == ["throwaway_models"]
    kinds = {u["name"]: u["kind"] for u in safety["uses"]}
    assert kinds["throwaway_models.DetectionModel"] == "class" and kinds["torch.nn.modules.batchnorm.BatchNorm2d"] == "class"
    assert kinds["numpy.dtype"] == "class"
    assert any("read as opaque data" in n and "throwaway_models" in n for n in doc["notes"])

    model_side = _read(path, folder, tmp_path, "show", "--key", "model", "--json")
    assert model_side.code == 0 and json.loads(model_side.out)["container"] == "model"
    check = _read(path, folder, tmp_path, "check", "--json")
    assert check.code == 0, check.out
    # Facts, not problems: eps 1e-3 (BN301), a layer stored in half as a whole (BN303), the
    # package a real load imports (BN404); all info.
    found = json.loads(check.out)["findings"]
    assert {x["code"] for x in found} == {"BN301", "BN303", "BN404"} and {x["severity"] for x in found} == {"info"}


def test_pickled_torchvision_style_resnet(models, tmp_path):
    mod, folder = models
    model = _trained(mod.ResNet())
    path = tmp_path / "resnet.pth"
    torch.save(model, path)
    run = _read(path, folder, tmp_path, "show", "--json")
    assert run.code == 0, run.err
    layers = json.loads(run.out)["layers"]
    assert [l["name"] for l in layers] == _bn_names(model) == [
        "bn1", "layer1.0.bn1", "layer1.0.bn2", "layer2.0.bn1", "layer2.0.bn2", "layer2.0.downsample.1"]
    assert [l["producer"]["name"] for l in layers] == ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1",
                                                      "layer2.0.conv2", "layer2.0.downsample.0"]
    assert all(l["eps"] == 1e-5 and l["eps_source"] == "module" and l["training"] is False for l in layers)
    expected = model.layer2[0].downsample[1].running_mean.numpy()
    ck = open_checkpoint(path)
    np.testing.assert_array_equal(ck.tensors["layer2.0.downsample.1.running_mean"].numpy(), expected)
    assert list(ck.tensors) == list(model.state_dict())


def test_pickled_model_under_dataparallel(models, tmp_path):
    mod, folder = models
    model = nn.DataParallel(_trained(mod.ResNet()))
    path = tmp_path / "dp.pth"
    torch.save(model, path)
    run = _read(path, folder, tmp_path, "show", "--json")
    assert run.code == 0, run.err
    doc = json.loads(run.out)
    assert doc["prefix"] == "module." and doc["layers"][0]["name"] == "bn1"
    assert doc["layers"][0]["key_prefix"] == "module.bn1"


class Phase(enum.Enum):
    TRAIN = "train"


def test_timm_train_style_checkpoint_with_args(models, tmp_path):
    mod, folder = models
    model = _trained(mod.ResNet())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    args = argparse.Namespace(model="resnet", lr=0.1, output=pathlib.PosixPath("/tmp/out"), amp=True,
                              sched=functools.partial(max, 0), phase=Phase.TRAIN)
    path = tmp_path / "checkpoint-7.pth.tar"
    torch.save({"epoch": 7, "arch": "resnet", "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                "args": args, "version": 2, "metric": np.float64(71.5), "best_acc1": np.float32(71.5),
                "dtype": np.dtype("float16"), "counts": collections.defaultdict(int, {"a": 1})}, path)
    run = _read(path, folder, tmp_path, "show", "--json")
    assert run.code == 0, run.err
    doc = json.loads(run.out)
    assert doc["container"] == "state_dict" and [l["name"] for l in doc["layers"]] == _bn_names(model)
    kinds = {u["name"]: u["kind"] for u in doc["safety"]["uses"]}
    assert {k: kinds[k] for k in ("argparse.Namespace", "pathlib.PosixPath", "functools.partial",
                                  "collections.defaultdict", "numpy.dtype")} == dict.fromkeys(
        ("argparse.Namespace", "pathlib.PosixPath", "functools.partial", "collections.defaultdict", "numpy.dtype"), "class")
    assert kinds[f"{__name__}.Phase"] == "class" and kinds["builtins.max"] == "reference"
    assert kinds["numpy._core.multiarray.scalar" if np.__version__ >= "2" else "numpy.core.multiarray.scalar"] == "reconstructor"
    check = _read(path, folder, tmp_path, "check", "--json")
    # This test module's own Phase enum is the one package a real load needs beyond Python's.
    (finding,) = json.loads(check.out)["findings"]
    assert finding["code"] == "BN404" and finding["evidence"]["packages"] == [__name__.split(".")[0]]


def test_lightning_checkpoint_with_omegaconf_hyper_parameters(models, tmp_path):
    omegaconf = pytest.importorskip("omegaconf")
    mod, folder = models
    model = _trained(mod.ResNet())
    hparams = omegaconf.OmegaConf.create({"model": {"name": "resnet", "widths": [8, 16], "lr": 0.1},
                                         "data": {"root": "/data", "batch_size": 32}, "seed": None})
    path = tmp_path / "epoch=3.ckpt"
    torch.save({"epoch": 3, "global_step": 300, "pytorch-lightning_version": "2.4.0",
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": hparams, "hparams_name": "cfg", "loops": {}, "callbacks": {}}, path)
    run = _read(path, folder, tmp_path, "show", "--json")
    assert run.code == 0, run.err
    doc = json.loads(run.out)
    assert doc["container"] == "state_dict" and doc["prefix"] == "model."
    assert [l["name"] for l in doc["layers"]] == _bn_names(model)
    names = {u["name"] for u in doc["safety"]["uses"] if u["kind"] == "class"}
    assert {"omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig"} <= names
    assert doc["safety"]["packages"] == ["omegaconf"]
    check = _read(path, folder, tmp_path, "check", "--json")
    assert check.code == 0 and [(x["code"], x["evidence"]["packages"]) for x in json.loads(check.out)["findings"]] == [
        ("BN404", ["omegaconf"])]


class Norm(nn.BatchNorm2d):
    """A BatchNorm subclass whose name does not say so."""


def test_a_bn_subclass_named_otherwise_is_recognised_by_its_state(models, tmp_path):
    mod, folder = models
    model = nn.Sequential(nn.Conv2d(3, 4, 3), Norm(4, eps=2e-5))
    _trained(model)
    path = tmp_path / "sub.pt"
    torch.save(model, path)
    ckpt = open_checkpoint(path)
    assert ckpt.modules["1"].bn == "state" and ckpt.modules["1"].type_name == "Norm"
    run = _read(path, folder, tmp_path, "show", "--json")
    doc = json.loads(run.out)
    assert [(l["name"], l["kind"], l["eps"]) for l in doc["layers"]] == [("1", "Norm", 2e-5)]
    assert any("recognised by its state" in n for n in doc["notes"])
