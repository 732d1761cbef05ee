"""The ONNX reader on real torch.onnx exports of the sample MobileNet: keys, facts, values, dtypes, errors."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest

pytest.importorskip("onnx")

from bninspect.errors import InvalidFileError  # noqa: E402
from bninspect.formats import onnx as onnx_reader  # noqa: E402
from bninspect.formats import open_checkpoint  # noqa: E402
from bninspect.layers import discover  # noqa: E402
from tests.conftest import SAMPLES, assert_one_line_error  # noqa: E402
from tests.exports import BN_LAYERS, export_onnx  # noqa: E402

# Every test here needs torch (the Python 3.10 job of .ci/run runs without it).
pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def model(onnx_exports):
    # A copy: tests here may change the model (to make a tampered export), the exports stay as made.
    return copy.deepcopy(onnx_exports[0])


@pytest.fixture(scope="module")
def exported(onnx_exports):
    """(unfolded export, folded export) of the sample MobileNet."""
    return onnx_exports[1:]


def test_sniff_by_content(exported):
    plain, _ = exported
    assert onnx_reader.sniff(plain.read_bytes()[:4096])
    assert not onnx_reader.sniff((SAMPLES / "mobilenet_v1_tiny.pt").read_bytes()[:4096])
    assert not onnx_reader.sniff((SAMPLES / "mobilenet_v1_tiny.safetensors").read_bytes()[:4096])
    assert not onnx_reader.sniff(b'<?xml version="1.0"?>\n<net name="x" version="11">')


def test_unfolded_export_reads_as_the_state_dict(model, exported):
    """Names survive (initializers keep PyTorch's keys), values are the checkpoint's bits, eps/momentum converted."""
    ckpt = open_checkpoint(str(exported[0]))
    assert ckpt.format == "onnx"
    disc = discover(ckpt)
    assert [l.name for l in disc.layers] == BN_LAYERS
    state = model.state_dict()
    for layer in disc.layers:
        assert layer.kind == "BatchNorm2d" and layer.kind_source == "module"
        assert layer.eps == 1e-5 and layer.eps_source == "module"
        # ONNX stores 0.9 (weight of the running value): PyTorch's 0.1.
        assert layer.momentum == pytest.approx(0.1, abs=1e-12) and layer.training is False
        for t in ("weight", "bias", "running_mean", "running_var"):
            np.testing.assert_array_equal(layer.tensors[t].numpy(), state[f"{layer.name}.{t}"].numpy())
    assert disc.layers[0].producer.name == "features.2.dw_conv_k3"
    assert disc.layers[0].producer.groups == 32


def test_folded_export_has_producers_named_by_scope(exported):
    """Constant folding renames weights (onnx::Conv_N); the node's scope path gives the module back."""
    ckpt = onnx_reader.read(str(exported[1]))
    assert not discover(ckpt).layers
    convs = [k for k in ckpt.modules if ckpt.modules[k].type_name == "Conv2d"]
    assert convs == ["features.0", "features.2.dw_conv_k3", "features.3.p_conv_k1", "features.4.dw_conv_k3",
                     "features.5.p_conv_k1"]
    assert ckpt.modules["features.2.dw_conv_k3"].attributes["groups"] == 32
    assert "features.2.dw_conv_k3.bias" in ckpt.tensors  # the folded shift


def test_scope_path_handles_sequential_children():
    assert onnx_reader.scope_path("/layer1/layer1.0/conv1/Conv") == "layer1.0.conv1"
    assert onnx_reader.scope_path("/layer2/layer2.0/downsample/downsample.0/Conv") == "layer2.0.downsample.0"
    assert onnx_reader.scope_path("/bn/BatchNormalization") == "bn"


def test_float16_export(model, tmp_path):
    import copy

    import torch

    half = copy.deepcopy(model).half()
    path = export_onnx(half, tmp_path / "half.onnx", fold=False, dtype=torch.float16)
    layer = discover(onnx_reader.read(str(path))).layers[1]
    assert layer.tensors["running_var"].dtype == "float16"
    np.testing.assert_array_equal(layer.tensors["running_var"].numpy(), half.state_dict()["features.3.bn.running_var"].numpy())


def test_external_data(model, exported, tmp_path):
    """Initializers saved as external data are read lazily from the model's directory."""
    import onnx

    m = onnx.load(str(exported[0]))
    path = tmp_path / "ext.onnx"
    onnx.save(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data", size_threshold=0)
    layer = discover(onnx_reader.read(str(path))).layers[3]
    np.testing.assert_array_equal(layer.values("running_var"), model.state_dict()["features.5.bn.running_var"].double().numpy())


def test_external_data_outside_the_directory_is_refused(exported, tmp_path):
    import onnx

    m = onnx.load(str(exported[0]))
    inner = tmp_path / "inner"
    inner.mkdir()
    onnx.save(m, str(inner / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data", size_threshold=0)
    m2 = onnx.load(str(inner / "ext.onnx"), load_external_data=False)
    for t in m2.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../secret.data"
    os.replace(inner / "ext.data", tmp_path / "secret.data")
    onnx.save(m2, str(inner / "escape.onnx"))
    with pytest.raises(InvalidFileError, match="outside the model's directory"):
        onnx_reader.read(str(inner / "escape.onnx"))


def test_corrupt_onnx_is_invalid(exported, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(exported[0].read_bytes()[:300])
    with pytest.raises(InvalidFileError, match="not a valid ONNX model") as info:
        open_checkpoint(str(bad))
    assert info.value.exit_code == 4


def test_without_onnx_installed_is_exit_2(cli, exported, tmp_path):
    """The extra is optional: a shadowing package that fails to import stands in for a missing onnx."""
    fake = tmp_path / "site" / "onnx"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('onnx is not installed')\n")
    run = cli("diff", str(SAMPLES / "mobilenet_v1_tiny.pt"), str(exported[0]), env={"PYTHONPATH": str(tmp_path / "site")})
    assert_one_line_error(run, 2, "pip install 'bninspect[onnx]'")


def test_damaged_files_fail_in_one_line_or_read(exported, tmp_path):
    """Truncated or byte-flipped exports: read, or an InvalidFileError; never another exception."""
    import random

    from bninspect.errors import BNInspectError

    data = exported[0].read_bytes()
    rng = random.Random(0)
    for i in range(40):
        damaged = bytearray(data)
        if i % 2:
            damaged = damaged[: rng.randrange(len(damaged))]
        else:
            for _ in range(5):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        path = tmp_path / f"d{i}.onnx"
        path.write_bytes(bytes(damaged))
        try:
            for layer in discover(onnx_reader.read(str(path))).layers:
                for ref in layer.tensors.values():
                    ref.numpy()
        except BNInspectError:
            pass


def test_data_of_the_wrong_length_is_invalid(exported, tmp_path):
    import onnx

    model = onnx.load(str(exported[0]))
    t = next(t for t in model.graph.initializer if t.name == "features.3.bn.running_var")
    t.raw_data = t.raw_data[:-8]
    path = tmp_path / "short.onnx"
    onnx.save(model, str(path))
    layer = discover(onnx_reader.read(str(path))).layers[1]
    with pytest.raises(InvalidFileError, match="does not match its shape"):
        layer.tensors["running_var"].numpy()
