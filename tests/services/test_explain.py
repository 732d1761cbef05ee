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
    assert "momentum=None" in text and "cumulative average" in text and "ε = 0.001 (stored in the saved module)" in text


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
