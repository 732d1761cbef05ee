"""Finding the state dict in nested checkpoints, --key, and wrapper prefixes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bninspect.checkpoint import TensorRef
from bninspect.errors import InvalidFileError, UsageError
from bninspect.formats import open_checkpoint
from bninspect.formats.containers import build_checkpoint, common_prefix
from tests.formats.craft import trained_net

# Every test here needs torch (the Python 3.10 job of .ci/run runs without it).
pytestmark = pytest.mark.torch


def _prefixed(sd: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in sd.items()}


def test_lightning_with_ema_and_optimizer_state(tmp_path):
    net = trained_net()
    ema = trained_net(seed=1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net.train()
    net(torch.randn(2, 3, 12, 12)).sum().backward()
    optimizer.step()
    net.eval()
    ckpt_obj = {
        "epoch": 7,
        "global_step": 140,
        "state_dict": _prefixed(net.state_dict(), "model."),
        "state_dict_ema": _prefixed(ema.state_dict(), "model."),
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [],
        "callbacks": {"ModelCheckpoint": {"best_model_score": torch.tensor(0.5)}},
        "hyper_parameters": {"lr": 0.1, "name": "tiny"},
    }
    path = tmp_path / "run.ckpt"
    torch.save(ckpt_obj, path)

    main = open_checkpoint(path)
    assert main.container == "state_dict"
    assert main.prefix == "model."
    assert main.alternatives == ["state_dict_ema"]  # not the callback's score tensor
    assert list(main.tensors) == list(ckpt_obj["state_dict"])  # original keys kept
    assert main.display("model.bn.running_mean") == "bn.running_mean"
    np.testing.assert_array_equal(main.tensors["model.bn.running_var"].numpy(), net.bn.running_var.numpy())

    picked = open_checkpoint(path, key="state_dict_ema")
    assert picked.container == "state_dict_ema" and "state_dict" in picked.alternatives
    np.testing.assert_array_equal(picked.tensors["model.bn.running_var"].numpy(), ema.bn.running_var.numpy())

    with pytest.raises(UsageError, match=r"no state dict at --key 'ema'; available: 'state_dict', 'state_dict_ema'"):
        open_checkpoint(path, key="ema")


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "model.", "module._orig_mod.", "_orig_mod.module."])
def test_wrapper_prefixes_are_stripped_for_display_only(tmp_path, prefix):
    sd = _prefixed(trained_net().state_dict(), prefix)
    path = tmp_path / "wrapped.pth"
    torch.save(sd, path)
    ckpt = open_checkpoint(path)
    assert ckpt.prefix == prefix
    assert list(ckpt.tensors) == list(sd)
    assert ckpt.display(f"{prefix}bn.weight") == "bn.weight"


def test_prefix_needs_every_key():
    assert common_prefix(["module.a.weight", "head.weight"]) == ""
    assert common_prefix(["module.weight"]) == "module."
    assert common_prefix(["module.", "module.x"]) == ""


@pytest.mark.parametrize("wrapper", ["model", "model_state_dict", "net", "module"])
def test_known_wrapper_keys(tmp_path, wrapper):
    sd = trained_net().state_dict()
    path = tmp_path / "wrapped.pt"
    torch.save({wrapper: sd, "epoch": 1, "best_acc": 0.9}, path)
    ckpt = open_checkpoint(path)
    assert ckpt.container == wrapper and ckpt.alternatives == [] and list(ckpt.tensors) == list(sd)


def test_unknown_wrappers_pick_the_largest(tmp_path):
    big, small = trained_net().state_dict(), {"w": torch.ones(1)}
    path = tmp_path / "gan.pt"
    torch.save({"discriminator": small, "generator": big}, path)
    ckpt = open_checkpoint(path)
    assert ckpt.container == "generator" and ckpt.alternatives == ["discriminator"]


def test_nested_known_keys_and_ema_only(tmp_path):
    sd = trained_net().state_dict()
    path = tmp_path / "nested.pt"
    torch.save({"model": {"ema": sd}, "meta": {"note": "x"}}, path)
    ckpt = open_checkpoint(path)
    assert ckpt.container == "model/ema" and ckpt.alternatives == []


def test_deeply_nested_container_does_not_recurse(tmp_path):
    leaf = {"w": TensorRef.from_array(np.zeros(2, dtype=np.float32))}
    root: dict = leaf
    for _ in range(5000):
        root = {"state_dict": root}
    # Deeper than any real checkpoint: the walk stops without RecursionError and says why it
    # found nothing (not "no state dict", which would be a guess).
    with pytest.raises(InvalidFileError, match="nested more than 64 levels deep"):
        build_checkpoint(root, path="deep.pt", format="torch-zip", key=None)
    # A real file of such depth still loads (torch's pickler recurses; keep it within its reach).
    nested = {"w": torch.zeros(2)}
    for _ in range(40):
        nested = {"model": nested}
    path = tmp_path / "deep.pt"
    torch.save(nested, path)
    assert open_checkpoint(path).container.count("/") == 39


def test_non_tensor_values_ignored_and_no_tensors_invalid(tmp_path):
    path = tmp_path / "mixed.pt"
    torch.save({"bn.weight": torch.ones(2), "bn.note": "hello", "bn.count": 3, "bn.list": [torch.ones(1)]}, path)
    assert list(open_checkpoint(path).tensors) == ["bn.weight"]
    empty = tmp_path / "hp.pt"
    torch.save({"lr": 0.1, "epochs": 3}, empty)
    with pytest.raises(InvalidFileError, match="holds no state dict: a dict with keys 'lr', 'epochs'"):
        open_checkpoint(empty)
    single = tmp_path / "tensor.pt"
    torch.save(torch.ones(3), single)
    with pytest.raises(InvalidFileError, match=r"a single tensor of shape \[3\]"):
        open_checkpoint(single)
