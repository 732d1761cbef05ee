"""The legacy non-zip format (read statically, like zip archives), and what only --trust does:
build the real model (load_module) with torch.load(weights_only=False)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from bninspect.errors import InvalidFileError
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
    torch.save({"w": torch.arange(2.0)}, path, _use_new_zipfile_serialization=False, pickle_protocol=4)
    # torch's weights-only unpickler has no FRAME opcode and refused this file; ours reads it.
    ckpt = open_checkpoint(path)
    assert ckpt.format == "torch-legacy" and list(ckpt.tensors) == ["w"]
    assert ckpt.tensors["w"].numpy().tolist() == [0.0, 1.0]


def test_legacy_reading_does_not_import_torch(tmp_path):
    path = tmp_path / "old.pt"
    torch.save(trained_net().state_dict(), path, _use_new_zipfile_serialization=False)
    code = ("import sys; from bninspect.formats import open_checkpoint; "
            f"c = open_checkpoint({str(path)!r}); c.tensors['bn.running_var'].numpy(); "
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


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
def test_pickled_module_is_read_statically(tmp_path, legacy_format):
    net, path = _pickled_module(tmp_path, legacy_format)
    (tmp_path / "my_models.py").unlink()  # nothing to import even if the reader tried
    ckpt = open_checkpoint(path)
    assert "my_models" not in sys.modules
    assert ckpt.format == ("torch-legacy" if legacy_format else "torch-zip")
    assert list(ckpt.tensors) == list(net.state_dict())
    for key, value in net.state_dict().items():
        np.testing.assert_array_equal(ckpt.tensors[key].numpy(), value.numpy(), err_msg=key)
    bn = ckpt.modules["bn"]
    assert bn.type_name == "BatchNorm2d" and bn.bn == "class"
    assert bn.attributes["eps"] == 1e-3 and bn.attributes["momentum"] is None and bn.attributes["training"] is True
    assert ckpt.modules[""].type_name == "Net" and ckpt.modules["conv"].attributes["groups"] == 1
    assert {u.name: u.kind for u in ckpt.verdict.uses}["my_models.Net"] == "class"


def test_trusted_model_whose_class_is_gone(tmp_path):
    # Building the real model (drift without --arch) needs the class; the static read does not.
    _, path = _pickled_module(tmp_path, False)
    (tmp_path / "my_models.py").write_text("import torch.nn as nn\nclass Other(nn.Module):\n    pass\n")
    with pytest.raises(InvalidFileError, match="needs class 'my_models.Net', which cannot be imported"):
        load_module(str(path))
    sys.modules.pop("my_models", None)
    (tmp_path / "my_models.py").unlink()
    with pytest.raises(InvalidFileError, match="needs module 'my_models', which cannot be imported"):
        load_module(str(path))
    assert list(open_checkpoint(path).tensors)[:2] == ["conv.weight", "conv.bias"]


def test_load_module_builds_the_real_model(tmp_path):
    """TorchScript with torch.jit.load, a pickled module with torch.load; a state dict has no model.
    (Only --trust reaches it: tests/services/test_drift.py::test_file_model_needs_trust.)"""
    net = trained_net()
    ts = tmp_path / "net.ts"
    torch.jit.save(torch.jit.script(net), ts)
    module = load_module(str(ts))
    x = torch.randn(1, 3, 12, 12)
    torch.testing.assert_close(module(x), net(x), rtol=0, atol=0)
    sd = tmp_path / "sd.pt"
    torch.save(net.state_dict(), sd)
    with pytest.raises(InvalidFileError, match="no model"):
        load_module(str(sd))
    whole = tmp_path / "whole.pt"
    torch.save({"model": TinyNet()}, whole)
    assert isinstance(load_module(str(whole)), TinyNet)
