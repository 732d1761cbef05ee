"""`bninspect explain`: the prose uses the file's numbers, and the numbers are torch's."""

from __future__ import annotations

import json

import pytest
import torch

from bninspect.services.explain import explain
from tests.conftest import SAMPLES, assert_one_line_error

# Every test here needs torch (the Python 3.10 job of .ci/run runs without it).
pytestmark = pytest.mark.torch


def _torch_bn(layer: str, eps: float = 1e-5) -> torch.nn.BatchNorm2d:
    sd = torch.load(SAMPLES / "mobilenet_v1_tiny.pt", weights_only=True)
    bn = torch.nn.BatchNorm2d(sd[f"{layer}.running_mean"].numel(), eps=eps)
    bn.load_state_dict({k[len(layer) + 1:]: v for k, v in sd.items() if k.startswith(layer + ".")})
    return bn.eval()


@pytest.mark.parametrize("eps", [None, 1e-3])
def test_worked_channel_matches_torch_batchnorm2d_in_eval_mode(eps):
    result = explain(str(SAMPLES / "mobilenet_v1_tiny.pt"), "features.2.bn", channel=5, eps=eps)
    bn = _torch_bn("features.2.bn", eps or 1e-5).double()
    walk = result.channel
    assert walk.index == 5 and walk.eps == (eps or 1e-5)
    assert walk.running_mean == float(bn.running_mean[5]) and walk.running_var == float(bn.running_var[5])
    for example in walk.examples:
        x = torch.zeros(1, 32, 1, 1, dtype=torch.float64)
        x[0, 5] = example["x"]
        with torch.no_grad():
            assert example["y"] == pytest.approx(float(bn(x)[0, 5]), rel=1e-12, abs=1e-12)
    assert walk.examples[0]["y"] == pytest.approx(float(bn.bias.detach()[5]), rel=1e-12)  # x = μ gives y = β


def test_text_tells_the_per_channel_story_with_real_numbers(cli):
    run = cli("explain", str(SAMPLES / "mobilenet_v1_tiny.pt"), "features.2.bn", "--channel", "5")
    assert run.code == 0, run.err
    text = " ".join(run.out.split())
    assert "holds 32 numbers: one per channel" in text
    assert "Entry i of every tensor belongs to input channel i" in text
    assert "32 output channels of features.2.dw_conv_k3 (depthwise conv 3×3" in text
    assert "new = (1 − m)·old + m·batch" in text and "unbiased" in text
    assert "decay 0.99 there is momentum 0.01 here" in text
    assert "num_batches_tracked = 240" in text and "converted from another framework" in text
    assert "Channel 5 worked through" in text
    mean5 = float(torch.load(SAMPLES / "mobilenet_v1_tiny.pt", weights_only=True)["features.2.bn.running_mean"][5])
    assert f"μ = {mean5:.6g}" in text


def test_momentum_none_from_a_module_is_explained(tmp_path, cli):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4, momentum=None, eps=1e-3))
    model.train()
    model(torch.randn(8, 3, 4, 4))
    model.eval()
    path = tmp_path / "m.ts"
    torch.jit.save(torch.jit.script(model), str(path))
    doc = json.loads(cli("explain", str(path), "1", "--json").out)
    assert doc["schema"] == "bninspect.explain/1"
    assert doc["numbers"]["momentum"] is None and doc["numbers"]["eps"] == 1e-3
    text = " ".join(p for s in doc["sections"] for p in s["paragraphs"])
    assert "momentum=None" in text and "cumulative average" in text and "ε = 0.001 (stored in the TorchScript module)" in text


def test_default_statistics_are_called_out(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    path = tmp_path / "fresh.pt"
    torch.save(model.state_dict(), path)
    result = explain(str(path), "1")
    text = " ".join(p for s in result.sections for p in s.paragraphs)
    assert "never saw data in train mode" in text


def test_unknown_layer_and_bad_channel_are_usage_errors(cli):
    assert_one_line_error(cli("explain", str(SAMPLES / "resnet_tiny.pt"), "layer1.0.bn3"), 2, "layer1.0.bn1")
    assert_one_line_error(cli("explain", str(SAMPLES / "resnet_tiny.pt"), "bn1", "--channel", "16"), 2, "0 to 15")


# Sentences that only fit a PyTorch module or state dict: advice and conventions an exported
# file has no use for.
PYTORCH_ONLY = ("strict=False", "load_state_dict", "model.eval()", "model.train()", "stored in the module",
                "num_batches_tracked =", "num_batches_tracked is absent", "m = momentum")


def _text(doc: dict) -> str:
    return " ".join(" ".join(p.split()) for s in doc["sections"] for p in s["paragraphs"])


@pytest.mark.parametrize("onnx_momentum", [None, 0.99])
def test_onnx_batchnormalization_is_explained_in_onnx_terms(tmp_path, cli, onnx_exports, onnx_momentum):
    """What the node stores, in ONNX's convention (momentum weighs the running value), with
    PyTorch's equivalent beside it; no PyTorch-only advice (there is no num_batches_tracked)."""
    pytest.importorskip("onnx")
    from tests.exports import edit_bn_attribute

    path = onnx_exports[1]
    if onnx_momentum is not None:
        path = edit_bn_attribute(path, tmp_path / "m.onnx", "features.2.bn", "momentum", onnx_momentum)
    run = cli("explain", str(path), "features.2.bn", "--channel", "1", "--json")
    assert run.code == 0, run.err
    doc = json.loads(run.out)
    text = _text(doc)
    stored, pytorch = (0.9, 0.1) if onnx_momentum is None else (0.99, 0.01)
    assert doc["format"] == "onnx" and doc["numbers"]["onnx_momentum"] == stored
    assert doc["numbers"]["momentum"] == pytest.approx(pytorch)
    assert f"This file stores ONNX momentum = {stored:g} (the node's momentum attribute)" in text
    assert f"this is PyTorch's momentum m = {pytorch:g}" in text
    assert "an ONNX BatchNormalization node ('/features/features.2/bn/BatchNormalization', PyTorch: BatchNorm2d)" in text
    assert "Y_i = scale_i·(X_i − input_mean_i)/√(input_var_i + epsilon) + B_i, with epsilon = 1e-05 (the node's epsilon attribute)" in text
    assert "ONNX's BatchNormalization keeps no count of updates" in text
    assert [phrase for phrase in PYTORCH_ONLY if phrase in text] == []


def test_openvino_batchnorminference_is_explained_as_inference_only(tmp_path, cli):
    ov = pytest.importorskip("openvino")
    import numpy as np
    import openvino.opset1 as ops1
    import openvino.opset5 as ops5

    gamma = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    x = ops1.parameter([1, 4, 2, 2], np.float32, name="x")
    ov.save_model(ov.Model([ops5.batch_norm_inference(x, gamma, gamma + 10, gamma + 20, gamma + 30, 1e-3)], [x]),
                  str(tmp_path / "bn.xml"), compress_to_fp16=False)
    shown = json.loads(cli("show", str(tmp_path / "bn.xml"), "--json").out)
    assert shown["eps_note"] == "eps: 0.001 (from the BatchNormInference layers' epsilon attributes)"
    name = shown["layers"][0]["name"]
    doc = json.loads(cli("explain", str(tmp_path / "bn.xml"), name, "--json").out)
    text = _text(doc)
    assert doc["format"] == "openvino-ir" and doc["numbers"]["onnx_momentum"] is None
    assert "gamma γ = [1, 2, 3, 4], beta β = [11, 12, 13, 14], mean μ = [21, 22, 23, 24], variance σ² = [31, 32, 33, 34]" in text
    assert "with epsilon = 0.001 (the layer's epsilon attribute)" in text
    assert "BatchNormInference is inference only: the IR keeps no momentum, no training mode" in text
    assert [phrase for phrase in PYTORCH_ONLY if phrase in text] == []


@pytest.mark.parametrize(("name", "eps_from"), [
    ("mobilenet_v1_tiny.pt", "PyTorch's default; a state dict does not store eps"),
    ("mobilenet_v1_tiny.safetensors", "PyTorch's default; a safetensors file does not store eps"),
    ("mobilenet_v1_tiny.ts", "stored in the TorchScript module"),
])
def test_pytorch_formats_say_where_eps_and_momentum_come_from(cli, name, eps_from):
    text = _text(json.loads(cli("explain", str(SAMPLES / name), "features.2.bn", "--json").out))
    assert f"ε = 1e-05 ({eps_from}" in text
    holder = eps_from.split("; ")[-1].replace(" does not store eps", "")
    momentum_from = "stored in the TorchScript module" if name.endswith(".ts") else f"PyTorch's default; not stored in {holder}"
    assert f"m = momentum = 0.1 ({momentum_from})" in text
