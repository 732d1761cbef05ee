"""The legacy non-zip format, and what only --trust opens: pickled nn.Modules, load_module."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from bninspect.errors import InvalidFileError, UnsafeFileError
from bninspect.formats import legacy, open_checkpoint
from bninspect.formats.trusted import load_module
from tests.formats.craft import TinyNet, trained_net

# Every test here needs torch (the Python 3.10 job of .ci/run runs without it).
pytestmark = pytest.mark.torch


def test_legacy_format_values(tmp_path):
    sd = trained_net().state_dict()
    sd["extra.bf16"] = torch.randn(3).bfloat16()
    path = tmp_path / "old.pt"
    torch.save({"model": sd, "epoch": 2}, path, _use_new_zipfile_serialization=False)
    assert legacy.sniff(path.read_bytes()[:64])
    ckpt = open_checkpoint(path)
    assert ckpt.format == "torch-legacy" and ckpt.container == "model"
    assert list(ckpt.tensors) == list(sd)
    for key, ref in sd.items():
        expected = ref.float().numpy() if ref.dtype == torch.bfloat16 else ref.numpy()
        got = ckpt.tensors[key]
        assert got.dtype == str(ref.dtype).replace("torch.", "")
        np.testing.assert_array_equal(got.numpy(), expected, err_msg=key)


def test_legacy_sniff_with_protocol_4(tmp_path):
    path = tmp_path / "old4.pt"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False, pickle_protocol=4)
    # torch's weights-only unpickler has no FRAME opcode: only --trust can read this file.
    with pytest.raises(UnsafeFileError, match="does not support this file's pickle opcodes.*--trust"):
        open_checkpoint(path)
    ckpt = open_checkpoint(path, trust=True)
    assert ckpt.format == "torch-legacy" and list(ckpt.tensors) == ["w"]


def test_old_torch_is_refused(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.5.1")
    with pytest.raises(UnsafeFileError, match="CVE-2025-32434"):
        legacy.require_safe_torch("x.pt")


def _pickled_module(tmp_path, legacy_format: bool):
    # The class must be importable by name for torch.load: a module file beside the checkpoint.
    (tmp_path / "my_models.py").write_text(
        "import torch.nn as nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = nn.Conv2d(3, 4, 3, groups=1)\n"
        "        self.bn = nn.BatchNorm2d(4, eps=1e-3, momentum=None)\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        import my_models

        net = my_models.Net()
        path = tmp_path / "net.pt"
        torch.save(net, path, _use_new_zipfile_serialization=not legacy_format)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("my_models", None)
    return net, path


@pytest.mark.parametrize("legacy_format", [False, True], ids=["zip", "legacy"])
def test_pickled_module_refused_without_trust_loaded_with_it(tmp_path, legacy_format):
    net, path = _pickled_module(tmp_path, legacy_format)
    with pytest.raises(UnsafeFileError) as info:
        open_checkpoint(path)
    assert "my_models.Net" in info.value.message and "torch.nn.modules.batchnorm.BatchNorm2d" in info.value.message
    ckpt = open_checkpoint(path, trust=True)
    assert ckpt.format == "pickled-module"
    assert list(ckpt.tensors) == list(net.state_dict())
    bn = ckpt.modules["bn"]
    assert bn.type_name == "BatchNorm2d"
    assert bn.attributes["eps"] == 1e-3 and bn.attributes["momentum"] is None and bn.attributes["training"] is True
    assert ckpt.modules[""].type_name == "Net" and ckpt.modules["conv"].attributes["groups"] == 1


def test_pickled_module_whose_class_is_gone(tmp_path):
    _, path = _pickled_module(tmp_path, False)
    (tmp_path / "my_models.py").write_text("import torch.nn as nn\nclass Other(nn.Module):\n    pass\n")
    with pytest.raises(InvalidFileError, match="needs class 'my_models.Net', which cannot be imported"):
        open_checkpoint(path, trust=True)
    sys.modules.pop("my_models", None)
    (tmp_path / "my_models.py").unlink()
    with pytest.raises(InvalidFileError, match="needs module 'my_models', which cannot be imported"):
        open_checkpoint(path, trust=True)


def test_load_module_needs_trust(tmp_path):
    net = trained_net()
    ts = tmp_path / "net.ts"
    torch.jit.save(torch.jit.script(net), ts)
    with pytest.raises(UnsafeFileError, match="TorchScript code .* runs code from the file; pass --trust"):
        load_module(str(ts), trust=False)
    module = load_module(str(ts), trust=True)
    x = torch.randn(1, 3, 12, 12)
    torch.testing.assert_close(module(x), net(x), rtol=0, atol=0)
    sd = tmp_path / "sd.pt"
    torch.save(net.state_dict(), sd)
    with pytest.raises(InvalidFileError, match="no model"):
        load_module(str(sd), trust=True)
    whole = tmp_path / "whole.pt"
    torch.save({"model": TinyNet()}, whole)
    assert isinstance(load_module(str(whole), trust=True), TinyNet)
