"""Discovery on every sample: exact layer names, channel counts, producers, and no false positives."""

from __future__ import annotations

import numpy as np
import pytest
from bninspect.checkpoint import Checkpoint, ModuleInfo, TensorRef, natural_key
from bninspect.formats import open_checkpoint
from bninspect.layers import discover
from tests.conftest import SAMPLES, needs_torch

MOBILENET = [("features.2.bn", 32, "features.2.dw_conv_k3", "depthwise conv 3×3"),
             ("features.3.bn", 64, "features.3.p_conv_k1", "pointwise conv 1×1"),
             ("features.4.bn", 64, "features.4.dw_conv_k3", "depthwise conv 3×3"),
             ("features.5.bn", 128, "features.5.p_conv_k1", "pointwise conv 1×1")]
RESNET = [("bn1", 16, "conv1", "conv 3×3"),
          ("layer1.0.bn1", 16, "layer1.0.conv1", "conv 3×3"),
          ("layer1.0.bn2", 16, "layer1.0.conv2", "conv 3×3"),
          ("layer2.0.bn1", 32, "layer2.0.conv1", "conv 3×3"),
          ("layer2.0.bn2", 32, "layer2.0.conv2", "conv 3×3"),
          ("layer2.0.downsample.1", 32, "layer2.0.downsample.0", "pointwise conv 1×1")]


def layer_table(path, **kw):
    d = discover(open_checkpoint(str(path), **kw))
    return [(l.name, l.channels, l.producer.name if l.producer else None, l.producer.kind if l.producer else None)
            for l in d.layers]


@pytest.mark.parametrize("name", ["mobilenet_v1_tiny.pt", "mobilenet_v1_tiny.safetensors",
                                  needs_torch("mobilenet_v1_tiny_legacy.pt")])
def test_mobilenet_layers_in_every_state_dict_format(name):
    assert layer_table(SAMPLES / name) == MOBILENET


def test_mobilenet_torchscript_has_module_facts():
    d = discover(open_checkpoint(str(SAMPLES / "mobilenet_v1_tiny.ts")))
    assert [(l.name, l.channels) for l in d.layers] == [(n, c) for n, c, _, _ in MOBILENET]
    for layer in d.layers:
        assert (layer.kind, layer.kind_source) == ("BatchNorm2d", "module")
        assert (layer.eps, layer.eps_source) == (1e-5, "module")
        assert (layer.momentum, layer.momentum_source) == (0.1, "module")
        assert layer.training is False
    assert all(l.training is True for l in discover(open_checkpoint(str(SAMPLES / "mobilenet_v1_tiny_train.ts"))).layers)


@pytest.mark.parametrize("name,prefix", [("resnet_tiny.pt", ""), ("resnet_tiny_dp.pth", "module."),
                                          ("resnet_tiny_compiled.pt", "_orig_mod."),
                                          ("resnet_tiny_lightning.ckpt", "model.")])
def test_resnet_layers_with_wrapper_prefix_stripped(name, prefix):
    ck = open_checkpoint(str(SAMPLES / name))
    assert ck.prefix == prefix
    d = discover(ck)
    assert [(l.name, l.channels, l.producer.name, l.producer.kind) for l in d.layers] == RESNET
    assert all(l.key_prefix == prefix + l.name for l in d.layers)


def test_lightning_main_state_dict_and_ema_alternative():
    ck = open_checkpoint(str(SAMPLES / "resnet_tiny_lightning.ckpt"))
    assert ck.container == "state_dict"
    assert "state_dict_ema" in ck.alternatives
    ema = open_checkpoint(str(SAMPLES / "resnet_tiny_lightning.ckpt"), key="state_dict_ema")
    main_var = discover(ck).layers[0].values("running_var")
    ema_var = discover(ema).layers[0].values("running_var")
    assert not np.array_equal(main_var, ema_var)


def test_norms_sample_has_no_batchnorm():
    d = discover(open_checkpoint(str(SAMPLES / "norms_tiny.pt")))
    assert d.layers == [] and d.possible == []
    assert sum(d.other_norms.values()) == 3


def test_eps_default_assumed_and_user_override():
    d = discover(open_checkpoint(str(SAMPLES / "mobilenet_v1_tiny.pt")))
    assert {(l.eps, l.eps_source) for l in d.layers} == {(1e-5, "default")}
    d = discover(open_checkpoint(str(SAMPLES / "mobilenet_v1_tiny.ts")), eps=1e-3)
    assert {(l.eps, l.eps_source) for l in d.layers} == {(1e-3, "user")}


def _ck(model, with_modules: bool = False) -> Checkpoint:
    """A torch model's state dict (and, ``with_modules``, its module facts) as a Checkpoint."""
    tensors = {k: TensorRef.from_array(v.detach().numpy(), str(v.dtype)[6:]) for k, v in model.state_dict().items()}
    modules = {}
    if with_modules:
        for path, m in model.named_modules():
            attrs = {a: getattr(m, a) for a in ("eps", "momentum", "affine", "track_running_stats", "groups",
                                                 "num_features", "training") if hasattr(m, a)}
            modules[path] = ModuleInfo(path, type(m).__name__, attrs)
    return Checkpoint("mem", "torch-zip", tensors, modules=modules)


@pytest.mark.torch
def test_layernorm_groupnorm_linear_bias_after_matching_conv_are_not_batchnorm():
    import torch.nn as nn

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8, track_running_stats=False),
                          nn.Flatten(), nn.Linear(8, 4), nn.LayerNorm(4))
    d = discover(_ck(model))
    # Unnamed ("1", "3") 1-D affine layers after convs: no evidence they are BatchNorm.
    assert d.layers == [] and d.possible == []
    d = discover(_ck(model, with_modules=True))
    assert [(l.name, l.track_running_stats) for l in d.layers] == [("3", False)]
    assert d.other_norms == {"GroupNorm": 1, "LayerNorm": 1}


@pytest.mark.torch
def test_possible_batchnorm_without_running_stats_needs_name_and_matching_conv():
    import torch.nn as nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.bn = nn.BatchNorm2d(8, track_running_stats=False)
            self.head = nn.Linear(8, 2)
    d = discover(_ck(Net()))
    assert d.layers == []
    assert [(p.name, p.channels) for p in d.possible] == [("bn", 8)]
    assert "conv 3×3 conv with 8 outputs" in d.possible[0].evidence


@pytest.mark.torch
def test_producer_kinds_and_kind_inference():
    import torch.nn as nn

    model = nn.Sequential(nn.Conv1d(2, 4, 5), nn.BatchNorm1d(4), nn.Conv3d(4, 6, 1), nn.BatchNorm3d(6),
                          nn.ConvTranspose2d(6, 5, 2), nn.BatchNorm2d(5))
    d = discover(_ck(model, with_modules=True))
    assert [(l.kind, l.producer.kind) for l in d.layers] == [
        ("BatchNorm1d", "conv 5"), ("BatchNorm3d", "pointwise conv 1×1×1"), ("BatchNorm2d", "transposed conv 2×2")]
    d = discover(_ck(model))  # state dict only: kinds from the producer's weight rank
    assert [(l.kind, l.kind_source) for l in d.layers][:2] == [("BatchNorm1d", "producer"), ("BatchNorm3d", "producer")]


@pytest.mark.torch
def test_no_producer_is_said_not_guessed():
    import torch.nn as nn

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1), nn.BatchNorm2d(6))
    d = discover(_ck(model))
    assert [l.producer.name if l.producer else None for l in d.layers] == ["0", None, None]
    assert "no conv/linear with 6 outputs" in d.layers[2].producer_note


@pytest.mark.torch
def test_folded_form_matches_torch_eval():
    import torch
    import torch.nn as nn

    bn = nn.BatchNorm2d(5).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1); bn.running_var.uniform_(0.1, 2); bn.weight.uniform_(-2, 2); bn.bias.uniform_(-1, 1)
    layer = discover(_ck(nn.Sequential(nn.Conv2d(1, 5, 1), bn))).layers[0]
    x = torch.randn(3, 5, 4, 4, dtype=torch.float64)
    scale, shift = layer.folded()
    ours = x * torch.from_numpy(scale)[None, :, None, None] + torch.from_numpy(shift)[None, :, None, None]
    torch.testing.assert_close(ours, bn.double()(x), rtol=1e-12, atol=1e-12)


def test_unusual_numeric_names_sort_without_crashing(tmp_path):
    """Unicode digits pass str.isdigit() but not int(); 5000-digit names pass int() only under
    Python's conversion limit. Neither may crash discovery of a file whose keys are sorted."""
    from safetensors.numpy import save_file

    names = ["a.²", "a." + "9" * 5000, "a.10", "a.9"]
    save_file({f"{n}.{k}": np.ones(2, np.float32) for n in names for k in ("running_mean", "running_var")},
              str(tmp_path / "odd.safetensors"))
    d = discover(open_checkpoint(str(tmp_path / "odd.safetensors")))
    assert [l.name for l in d.layers] == ["a.9", "a.10", names[1], "a.²"]


def test_names_are_listed_in_natural_order():
    """Numbers sort by value ("2" before "10", "007" as 7), numbers before names, a module
    before its children, component by component (a safetensors file keeps no module order)."""
    names = ["features.10.bn", "features.2.bn.weight", "features.2", "features.2.bn", "features.2a", "layer1.10",
             "layer1.007", "layer1.8", "bn10", "bn2", "bn", "b", "features", "features.2.bn.bias", "x.²"]
    assert sorted(names, key=natural_key) == [
        "b", "bn", "bn10", "bn2", "features", "features.2", "features.2.bn", "features.2.bn.bias",
        "features.2.bn.weight", "features.10.bn", "features.2a", "layer1.007", "layer1.8", "layer1.10", "x.²"]
