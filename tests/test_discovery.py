"""Discovery on every sample: exact layer names, channel counts, producers, and no false positives."""

from __future__ import annotations

import json

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


def _text_detector():
    """CRAFT's upsampling head (clovaai/CRAFT-pytorch, craft.py: double_conv), real widths: each
    upconvN is a plain 1×1 Conv2d (with bias) → BN → ReLU → 3×3 Conv2d → BN → ReLU, after a small
    VGG-style base; trained a step on random input so the statistics are real."""
    import torch
    import torch.nn as nn

    def block(cin, cout, k):
        return [nn.Conv2d(cin, cout, k, padding=k // 2), nn.BatchNorm2d(cout), nn.ReLU()]

    class DoubleConv(nn.Module):
        def __init__(self, in_ch, mid_ch, out_ch):
            super().__init__()
            self.conv = nn.Sequential(*block(in_ch + mid_ch, mid_ch, 1), *block(mid_ch, out_ch, 3))

    class TextDetector(nn.Module):
        def __init__(self):
            super().__init__()
            self.basenet = nn.Sequential(*block(3, 32, 3), *block(32, 64, 3))
            self.upconv1 = DoubleConv(1024, 512, 256)
            self.upconv2 = DoubleConv(512, 256, 128)
            self.upconv3 = DoubleConv(256, 128, 64)
            self.upconv4 = DoubleConv(128, 64, 32)

    torch.manual_seed(0)
    model = TextDetector().train()
    with torch.no_grad():
        model.basenet(torch.randn(4, 3, 6, 6))
        for i, width in enumerate((1536, 768, 384, 192), 1):
            getattr(model, f"upconv{i}").conv(torch.randn(4, width, 6, 6))
    return model.eval()


UPCONV_BNS = [f"upconv{i}.conv.{j}" for i in range(1, 5) for j in (1, 4)]


@pytest.mark.torch
def test_plain_convs_named_upconv_are_producers_by_their_shapes(tmp_path, cli):
    """A plain Conv2d named upconv… ([512, 1536, 1, 1] before a 512-channel BN) is the BN's producer:
    the name never overrules the shape. So check finds BN304 (the conv's bias) and verify fuses."""
    import torch

    path = tmp_path / "craft.pth"
    torch.save(_text_detector().state_dict(), path)
    layers = {l.name: l for l in discover(open_checkpoint(str(path))).layers}
    assert [n for n in layers if n.startswith("upconv")] == UPCONV_BNS
    for name in UPCONV_BNS:
        prod = layers[name].producer
        assert prod is not None and prod.key_prefix == name[:-1] + str(int(name[-1]) - 1), name
        assert prod.op == "conv2d" and prod.out_channels == layers[name].channels and prod.bias is not None
    assert layers["upconv1.conv.1"].producer.kind == "pointwise conv 1×1"
    assert list(layers["upconv1.conv.1"].producer.weight.shape) == [512, 1536, 1, 1]
    assert layers["upconv1.conv.4"].producer.kind == "conv 3×3"
    report = json.loads(cli("check", str(path), "--select", "BN304", "--json").out)
    assert sorted(f["layer"] for f in report["findings"]) == sorted(["basenet.1", "basenet.4", *UPCONV_BNS])
    run = cli("verify", str(path), "--layer", "upconv1.*", "--json")
    assert run.code == 0, run.err
    doc = json.loads(run.out)
    assert [sorted({c["path"] for c in l["checks"]}) for l in doc["layers"]] == [["batch_norm", "folded", "fused_conv"]] * 2


@pytest.mark.torch
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_transposed_convs_are_recognised_by_their_shapes(tmp_path, suffix):
    """A DCGAN-style generator: ConvTranspose2d weights are [in, out, k, k]; the BN after each has
    `out` channels, which only the transposed reading gives. Square weights (in = out) fit both
    readings: there a name that says transposed breaks the tie, and without one it stays plain."""
    import torch
    import torch.nn as nn

    class Generator(nn.Module):
        def __init__(self):
            super().__init__()
            self.main = nn.Sequential(nn.ConvTranspose2d(16, 64, 4, 1, 0, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                      nn.ConvTranspose2d(64, 32, 4, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
            self.deconv = nn.ConvTranspose2d(32, 32, 2, 2)
            self.deconv_bn = nn.BatchNorm2d(32)
            self.up = nn.ConvTranspose2d(32, 32, 2, 2)
            self.up_bn = nn.BatchNorm2d(32)

    path = tmp_path / f"g{suffix}"
    if suffix == ".pt":
        torch.save(Generator().state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file(Generator().state_dict(), str(path))
    layers = sorted(discover(open_checkpoint(str(path))).layers, key=lambda l: list(Generator().state_dict()).index(l.name + ".weight"))
    assert [(l.name, l.producer.name, l.producer.kind, l.producer.out_channels) for l in layers] == [
        ("main.1", "main.0", "transposed conv 4×4", 64), ("main.4", "main.3", "transposed conv 4×4", 32),
        ("deconv_bn", "deconv", "transposed conv 2×2", 32), ("up_bn", "up", "conv 2×2", 32)]
    assert "as a transposed one 64" in layers[0].producer_note
    assert "its name says transposed" in layers[2].producer_note


@pytest.mark.torch
def test_a_dense_block_concatenation_gets_no_transposed_producer(tmp_path):
    """DenseNet's norm1 normalizes a concatenation: conv2 [8, 32, 3, 3] before a 32-channel norm1
    would read as 32 outputs transposed, but it takes norm2's 32 channels as input, so it is a
    plain conv with 8 outputs and norm1 has no producer (as before: said, not guessed)."""
    import torch
    import torch.nn as nn

    class DenseLayer(nn.Module):
        def __init__(self, cin):
            super().__init__()
            self.norm1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, 32, 1, bias=False)
            self.norm2, self.conv2 = nn.BatchNorm2d(32), nn.Conv2d(32, 8, 3, padding=1, bias=False)

    block = nn.Sequential(nn.Conv2d(3, 16, 3), *(DenseLayer(16 + 8 * i) for i in range(3)))
    torch.save(block.state_dict(), tmp_path / "dense.pt")
    layers = discover(open_checkpoint(str(tmp_path / "dense.pt"))).layers
    assert [(l.name, l.producer.name if l.producer else None) for l in layers] == [
        ("1.norm1", "0"), ("1.norm2", "1.conv1"), ("2.norm1", None), ("2.norm2", "2.conv1"),
        ("3.norm1", None), ("3.norm2", "3.conv1")]


@pytest.mark.torch
def test_layernorm_over_several_dimensions_is_counted_among_other_norms(tmp_path, cli):
    """LayerNorm((1, 264)) stores weight and bias [1, 264]: an elementwise affine (its bias has the
    weight's shape), not a Linear. A bias-less one counts by a name that is only a norm's; a conv
    named norm_conv stays the producer of the BN after it."""
    import torch
    import torch.nn as nn

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj, self.layernorm = nn.Linear(80, 264), nn.LayerNorm((1, 264))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.ln2 = Encoder(), nn.LayerNorm((2, 8), bias=False)
            self.norm_conv, self.bn = nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8)

    path = tmp_path / "enc.pt"
    torch.save(Net().state_dict(), path)
    d = discover(open_checkpoint(str(path)))
    assert d.other_norms == {"LayerNorm": 2}
    assert [(l.name, l.producer.name) for l in d.layers] == [("bn", "norm_conv")]
    sd = Net().state_dict()
    torch.save({k: v for k, v in sd.items() if not k.startswith(("bn.", "norm_conv."))}, path)
    run = cli("show", str(path))
    assert run.code == 0 and "No BatchNorm layers in this file (2 LayerNorm; 0 BatchNorm)." in run.out


def _two_bns():
    """conv → bn → conv2 → bn2, trained a step: a healthy state dict to break bn2 of."""
    import collections

    import torch
    import torch.nn as nn

    torch.manual_seed(0)
    model = nn.Sequential(collections.OrderedDict(
        conv=nn.Conv2d(3, 4, 3, bias=False), bn=nn.BatchNorm2d(4), conv2=nn.Conv2d(4, 4, 1, bias=False),
        bn2=nn.BatchNorm2d(4))).train()
    with torch.no_grad():
        model(torch.randn(8, 3, 6, 6))
    return collections.OrderedDict(model.eval().state_dict())


# What weights_only pickles let a broken conversion store in a BN's place, and what BN003 says.
MALFORMED = {
    "0-dim running_mean": ({"bn2.running_mean": "tensor(0.5)"},
                           "C = 4 but running_mean is a 0-dim tensor, not a 1-D tensor of 4 values"),
    "list running_mean": ({"bn2.running_mean": [0.1, 0.2, 0.3, 0.4]},
                          "running_mean is a list of 4 numbers, not a 1-D tensor of 4 values"),
    "string running_var": ({"bn2.running_var": "oops"}, "running_var is the string 'oops', not a 1-D tensor of 4 values"),
    "int num_batches_tracked": ({"bn2.num_batches_tracked": 10}, "num_batches_tracked is the Python int 10, not a tensor"),
    "int statistics": ({"bn2.running_mean": 0, "bn2.running_var": 1},
                       "running_mean is the Python int 0, not a 1-D tensor of 4 values, running_var is the Python int 1, "
                       "not a 1-D tensor of 4 values"),
}


@pytest.mark.torch
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_batchnorm_entries_are_reported_not_dropped(tmp_path, cli, case, legacy):
    """A BN whose statistics are 0-dim, a list, a string or a Python number is listed (C from its
    1-D tensors) and check's BN003 says what is wrong; never silently dropped, never taken for a
    BN without running statistics (BN201) or without a counter (BN206)."""
    import torch

    sd = _two_bns()
    for key, value in MALFORMED[case][0].items():
        sd[key] = torch.tensor(0.5) if value == "tensor(0.5)" else value
    path = tmp_path / "broken.pt"
    torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
    shown = json.loads(cli("show", str(path), "--json").out)
    assert [l["name"] for l in shown["layers"]] == ["bn", "bn2"] and shown["possible_batchnorm"] == []
    assert any(n.startswith("bn2: ") for n in shown["notes"]), shown["notes"]
    run = cli("check", str(path), "--json")
    assert run.code == 1, run.err
    findings = [(f["code"], f["severity"], f["layer"]) for f in json.loads(run.out)["findings"] if f["code"] != "BN102"]
    assert findings == [("BN003", "error", "bn2")]
    (bn003,) = [f for f in json.loads(run.out)["findings"] if f["code"] == "BN003"]
    assert MALFORMED[case][1] in bn003["message"]


@pytest.mark.torch
def test_batchnorm_entries_without_a_length_are_named_in_show_and_check(tmp_path, cli):
    """No 1-D tensor gives C: not a layer, but a note in show and BN003 in check, an error where a
    value is not a tensor at all, info where the statistics are tensors of another shape (a custom
    module may keep them as [1, C])."""
    import torch

    sd = _two_bns()
    for name in ("weight", "bias", "running_mean", "running_var"):
        sd[f"bn2.{name}"] = [0.0] * 4
    sd["rms.running_mean"], sd["rms.running_var"] = torch.zeros(1, 17), torch.ones(1, 17)
    torch.save(sd, tmp_path / "odd.pt")
    shown = json.loads(cli("show", str(tmp_path / "odd.pt"), "--json").out)
    assert [l["name"] for l in shown["layers"]] == ["bn"]
    assert ("bn2 is not listed as a BatchNorm layer: weight is a list of 4 numbers, bias is a list of 4 numbers, "
            "running_mean is a list of 4 numbers, running_var is a list of 4 numbers") in " ".join(shown["notes"])
    assert "rms is not listed as a BatchNorm layer: weight missing, bias missing, running_mean [1, 17]" in " ".join(shown["notes"])
    report = json.loads(cli("check", str(tmp_path / "odd.pt"), "--json", "--select", "BN003").out)
    assert [(f["layer"], f["severity"]) for f in report["findings"]] == [("bn2", "error"), ("rms", "info")]


def test_a_module_fact_too_long_to_print_is_named_by_its_size():
    """A pickled module may hold an eps of 5,000 digits; str() of it raises, the error must not."""
    import numpy as np
    import pytest

    from bninspect.checkpoint import Checkpoint, ModuleInfo, TensorRef
    from bninspect.errors import InvalidFileError
    from bninspect.layers import discover

    tensors = {f"bn.{n}": TensorRef.from_array(np.ones(4, np.float32)) for n in ("weight", "bias", "running_mean", "running_var")}
    for value in (10**5000, (0.1, 10**5000)):
        ck = Checkpoint(path="m.pt", format="torch-zip", tensors=tensors,
                        modules={"bn": ModuleInfo("bn", "BatchNorm2d", {"eps": value})})
        with pytest.raises(InvalidFileError, match="eps is .*an int of 16610 bits"):
            discover(ck)
