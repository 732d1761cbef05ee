"""`bninspect show`: what a user sees, through the installed command and in-process."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bninspect.services.show import show
from tests.conftest import SAMPLES, assert_one_line_error

SHOW_KEYS = {"schema", "file", "format", "container", "alternatives", "prefix", "eps_note", "layers",
             "possible_batchnorm", "other_norms", "summary", "notes", "safety"}
LAYER_KEYS = {"name", "key_prefix", "kind", "kind_source", "channels", "tensors", "num_batches_tracked", "eps",
              "eps_source", "momentum", "momentum_source", "affine", "track_running_stats", "training", "producer",
              "producer_note", "stats", "possible", "evidence", "per_channel"}


def test_table_lists_every_layer_with_producer_and_eps_assumption(cli):
    run = cli("show", str(SAMPLES / "mobilenet_v1_tiny.pt"))
    assert run.code == 0, run.err
    for name in ("features.2.bn", "features.3.bn", "features.4.bn", "features.5.bn"):
        assert name in run.out
    assert "features.2.dw_conv_k3 (depthwise conv 3×3)" in run.out
    assert "features.3.p_conv_k1 (pointwise conv 1×1)" in run.out
    assert "eps: 1e-05 (PyTorch default; not stored in this file" in run.out
    assert "4 BatchNorm layers, 288 channels, 576 parameters" in run.out


def test_json_schema_and_original_keys(cli):
    run = cli("show", str(SAMPLES / "resnet_tiny_dp.pth"), "--json")
    assert run.code == 0, run.err
    doc = json.loads(run.out)
    assert set(doc) == SHOW_KEYS
    assert doc["schema"] == "bninspect.show/2" and doc["format"] == "torch-zip" and doc["prefix"] == "module."
    layer = doc["layers"][0]
    assert set(layer) == LAYER_KEYS
    assert layer["name"] == "bn1" and layer["key_prefix"] == "module.bn1"
    assert layer["tensors"]["running_mean"] == {"key": "module.bn1.running_mean", "shape": [16], "dtype": "float32"}
    assert layer["eps"] == 1e-5 and layer["eps_source"] == "default" and layer["training"] is None
    assert layer["producer"]["name"] == "conv1" and layer["num_batches_tracked"] == 240
    assert [l["name"] for l in doc["layers"]] == ["bn1", "layer1.0.bn1", "layer1.0.bn2", "layer2.0.bn1",
                                                  "layer2.0.bn2", "layer2.0.downsample.1"]


@pytest.mark.torch
def test_channels_table_matches_the_file_numbers():
    import torch

    result = show(str(SAMPLES / "mobilenet_v1_tiny.safetensors"), layers=["features.2.*"], channels=True)
    assert [l.name for l in result.layers] == ["features.2.bn"]
    rows = result.layers[0].per_channel
    sd = torch.load(SAMPLES / "mobilenet_v1_tiny.pt", weights_only=True)
    assert len(rows) == 32
    for r in rows:
        i = r.index
        assert r.running_mean == pytest.approx(float(sd["features.2.bn.running_mean"][i]), rel=0, abs=0)
        assert r.running_var == float(sd["features.2.bn.running_var"][i])
        scale = float(sd["features.2.bn.weight"][i]) / np.sqrt(float(sd["features.2.bn.running_var"][i]) + 1e-5)
        assert r.scale == pytest.approx(scale, rel=1e-12)
        assert r.shift == pytest.approx(float(sd["features.2.bn.bias"][i]) - r.running_mean * scale, rel=1e-12, abs=1e-15)
        assert r.producer_channel == f"features.2.dw_conv_k3 output {i}"


def test_channels_json_has_per_channel(cli):
    run = cli("show", str(SAMPLES / "mobilenet_v1_tiny.ts"), "--layer", "features.3.bn", "--channels", "--json")
    doc = json.loads(run.out)
    assert len(doc["layers"][0]["per_channel"]) == 64
    assert doc["layers"][0]["eps_source"] == "module" and doc["layers"][0]["training"] is False


def test_lightning_container_and_key(cli):
    run = cli("show", str(SAMPLES / "resnet_tiny_lightning.ckpt"))
    assert run.code == 0
    assert "state dict: state_dict (also: state_dict_ema; pick one with --key)" in run.out
    assert "wrapper prefix 'model.' stripped" in run.out
    ema = json.loads(cli("show", str(SAMPLES / "resnet_tiny_lightning.ckpt"), "--key", "state_dict_ema", "--json").out)
    main = json.loads(cli("show", str(SAMPLES / "resnet_tiny_lightning.ckpt"), "--json").out)
    assert ema["container"] == "state_dict_ema" and main["container"] == "state_dict"
    assert ema["layers"][0]["stats"] != main["layers"][0]["stats"]


def test_no_batchnorm_is_an_answer_not_an_error(cli):
    run = cli("show", str(SAMPLES / "norms_tiny.pt"))
    assert run.code == 0
    assert "No BatchNorm layers in this file" in run.out and "GroupNorm" in run.out and "0 BatchNorm" in run.out


def test_eps_override_is_reported(cli):
    doc = json.loads(cli("show", str(SAMPLES / "mobilenet_v1_tiny.pt"), "--eps", "1e-3", "--json").out)
    assert {(l["eps"], l["eps_source"]) for l in doc["layers"]} == {(1e-3, "user")}
    assert doc["eps_note"] == "eps: 0.001 (from --eps)"


def test_limit_says_what_was_left_out(cli):
    run = cli("show", str(SAMPLES / "resnet_tiny.pt"), "--limit", "2")
    assert "layer1.0.bn2" not in run.out
    assert "showing the first 2, 4 more left out by --limit" in run.out
    doc = json.loads(cli("show", str(SAMPLES / "resnet_tiny.pt"), "--limit", "2", "--json").out)
    assert len(doc["layers"]) == 2 and doc["summary"]["omitted"] == 4


def test_layer_globs_take_each_layer_once_by_identity(monkeypatch):
    """Overlapping globs keep file order without duplicates, and never compare layers field by field
    (that was quadratic in the layers chosen)."""
    from bninspect.layers import BNLayer
    from bninspect.services.common import open_layers, select

    layers = open_layers(str(SAMPLES / "mobilenet_v1_tiny.pt")).layers

    def refuse(self, other):
        raise AssertionError("layers compared with ==")

    monkeypatch.setattr(BNLayer, "__eq__", refuse)
    chosen = select(layers, ["features.[23].bn", "features.3.*", "features.5.bn"])
    assert [l.name for l in chosen] == ["features.2.bn", "features.3.bn", "features.5.bn"]


def test_limit_reads_no_values_of_the_layers_it_leaves_out(monkeypatch):
    """Totals and notes for the layers --limit leaves out come from shapes: their values are never read."""
    from bninspect.checkpoint import TensorRef

    read: list[tuple[int, ...]] = []
    numpy = TensorRef.numpy
    monkeypatch.setattr(TensorRef, "numpy", lambda self: read.append(self.shape) or numpy(self))
    result = show(str(SAMPLES / "mobilenet_v1_tiny.pt"), limit=1)
    assert result.total_layers == 4 and result.omitted == 3 and result.total_channels == 288
    # Only features.2.bn (32 channels; the others are wider): its statistics, |γ| and batch count.
    assert sorted(read) == [(), (32,), (32,), (32,)]


def test_layer_glob_matching_nothing_is_a_usage_error_with_suggestions(cli):
    run = cli("show", str(SAMPLES / "mobilenet_v1_tiny.pt"), "--layer", "features.2.bm")
    assert_one_line_error(run, 2, "no BatchNorm layer matches 'features.2.bm'", "features.2.bn")


@pytest.mark.parametrize("args,code,needle", [
    (["show", "/nonexistent/ckpt.pt"], 5, "no such file"),
    (["show", str(SAMPLES)], 5, "directory"),
    (["show", str(SAMPLES / "README.md")], 4, "not a checkpoint"),
    (["show", str(SAMPLES / "resnet_tiny_lightning.ckpt"), "--key", "nope"], 2, "state_dict_ema"),
    (["show"], 2, "Missing argument"),
    (["show", str(SAMPLES / "resnet_tiny.pt"), "--limit", "x"], 2, "--limit"),
])
def test_errors_are_one_line_with_documented_exit_codes(cli, args, code, needle):
    assert_one_line_error(cli(*args), code, needle)


def test_pickled_model_is_read_statically_with_its_module_facts(cli):
    # torch.save(model) of a class from sample_models.py, which is not importable here.
    run = cli("show", str(SAMPLES / "resnet_tiny_module.pt"), "--json")
    assert run.code == 0, run.err
    doc = json.loads(run.out)
    assert doc["format"] == "torch-zip" and doc["safety"]["refused"] is False
    assert [l["kind_source"] for l in doc["layers"]] == ["module"] * 6
    assert any("pickled model of class sample_models.ResNetTiny" in n for n in doc["notes"])
    assert {u["name"]: u["kind"] for u in doc["safety"]["uses"]}["sample_models.ResNetTiny"] == "class"
    assert doc["safety"]["packages"] == ["sample_models"]


def test_fifo_does_not_block(cli, tmp_path):
    import os
    fifo = tmp_path / "ckpt.pt"
    os.mkfifo(fifo)
    assert_one_line_error(cli("show", str(fifo), timeout=30), 5, "not a regular file")


@pytest.mark.torch
def test_names_with_markup_and_escapes_are_printed_literally(cli, tmp_path):
    import torch

    sd = {f"[bold red]evil\x1b[31m.{n}": torch.ones(3) for n in ("weight", "bias", "running_var")}
    sd["[bold red]evil\x1b[31m.running_mean"] = torch.zeros(3)
    path = tmp_path / "evil.pt"
    torch.save(sd, path)
    run = cli("show", str(path))
    assert run.code == 0, run.err
    assert "[bold red]evil\\x1b[31m" in run.out
    assert "\x1b" not in run.out


def test_loading_leaves_the_collector_on_and_the_loaded_objects_out_of_its_walks(tmp_path, monkeypatch):
    """Under the CLI, open_layers pauses the cyclic collector while a load makes its objects and
    freezes them after (a 10,000-layer .pt: 1.15 -> 1.01 s); the collector must be on again
    either way, and a failed load must not freeze its leftovers (they may be cycles a hostile
    file built). A library caller's process is not frozen at all."""
    import gc

    from bninspect import settings
    from bninspect.errors import InvalidFileError
    from bninspect.services.common import open_layers

    gc.unfreeze()
    monkeypatch.setattr(settings, "freeze_loaded_objects", False)
    assert open_layers(str(SAMPLES / "resnet_tiny.pt")).layers
    assert gc.isenabled() and gc.get_freeze_count() == 0
    monkeypatch.setattr(settings, "freeze_loaded_objects", True)
    try:
        before = gc.get_freeze_count()
        assert open_layers(str(SAMPLES / "resnet_tiny.pt")).layers
        assert gc.isenabled() and gc.get_freeze_count() > before
        gc.unfreeze()
        bad = tmp_path / "bad.pt"
        bad.write_bytes(b"PK\x03\x04" + b"\0" * 40)
        with pytest.raises(InvalidFileError):
            open_layers(str(bad))
        assert gc.isenabled() and gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("header", [b"{}", b'{"__metadata__": {"format": "pt"}}'], ids=["empty", "metadata only"])
def test_an_empty_safetensors_file_is_a_file_without_batchnorm(cli, tmp_path, header):
    """The safetensors library reads a header without tensors as {}: a valid file with no BatchNorm."""
    import struct

    path = tmp_path / "empty.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    run = cli("show", str(path))
    assert (run.code, run.err) == (0, ""), run.err
    assert "the file holds no tensors" in run.out and "No BatchNorm layers in this file" in run.out
    checked = cli("check", str(path), "--json")
    assert checked.code == 0, checked.err
    (result,) = json.loads(checked.out)["files"]
    assert result["error"] is None and result["layers"] == 0 and result["findings"] == []
