"""safetensors: exact values from header + pread, and every malformed header refused."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from bninspect.errors import InvalidFileError
from bninspect.formats import open_checkpoint
from tests.formats.craft import safetensors_bytes, trained_net

# Every test here needs torch (the Python 3.10 job of .ci/run runs without it).
pytestmark = pytest.mark.torch


def test_values_equal_safetensors_own_reader(tmp_path):
    tensors = {k: v.contiguous() for k, v in trained_net().state_dict().items()}
    tensors["extra.bf16"] = torch.randn(5).bfloat16()
    tensors["extra.f16"] = torch.randn(2, 3).half()
    tensors["extra.f64"] = torch.randn(3).double()
    tensors["extra.i32"] = torch.arange(4, dtype=torch.int32)
    tensors["extra.bool"] = torch.tensor([True, False])
    tensors["extra.empty"] = torch.zeros(0)
    path = tmp_path / "net.safetensors"
    save_file(tensors, path)
    ckpt = open_checkpoint(path)
    assert ckpt.format == "safetensors"
    reference = load_file(path)
    assert set(ckpt.tensors) == set(reference)
    for key, ref in reference.items():
        got = ckpt.tensors[key]
        assert got.shape == tuple(ref.shape) and got.dtype == str(ref.dtype).replace("torch.", "")
        expected = ref.float().numpy() if ref.dtype == torch.bfloat16 else ref.numpy()
        np.testing.assert_array_equal(got.numpy(), expected, err_msg=key)
    # Natural order: safetensors' layout keeps no module order, "2" before "10" is the best guess.
    keys = list(ckpt.tensors)
    assert keys[:3] == ["bn.bias", "bn.num_batches_tracked", "bn.running_mean"]
    assert keys.index("bn2.bias") < keys.index("bn3.running_var") < keys.index("head.0.weight") < keys.index("head.1.bias")


def test_natural_order_of_numbered_layers(tmp_path):
    path = tmp_path / "seq.safetensors"
    save_file({f"features.{i}.bn.running_mean": torch.zeros(2) for i in range(12)}, path)
    keys = list(open_checkpoint(path).tensors)
    assert keys == [f"features.{i}.bn.running_mean" for i in range(12)]


def _entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


BAD = {
    "absurd header length": (safetensors_bytes({"a": _entry()}, bytes(8), length=10**12), "absurd"),
    "header past EOF": (safetensors_bytes({"a": _entry()}, b"", length=5000), "runs past the end"),
    "not UTF-8": (safetensors_bytes(b'{"\xff\xfe": 1}'), "not valid UTF-8"),
    "not JSON": (safetensors_bytes(b"{not json at all}"), "not valid JSON"),
    "entry not an object": (safetensors_bytes(b'{"a": [1, 2]}'), "is not an object"),
    "unknown dtype": (safetensors_bytes({"a": _entry(dtype="F33")}, bytes(8)), "unknown dtype 'F33'"),
    "unhashable dtype": (safetensors_bytes({"a": _entry(dtype=[])}, bytes(8)), r"unknown dtype \[\]"),
    "negative shape": (safetensors_bytes({"a": _entry(shape=(-2,))}, bytes(8)), "invalid shape"),
    "float shape": (safetensors_bytes({"a": _entry(shape=(2.0,))}, bytes(8)), "invalid shape"),
    "reversed offsets": (safetensors_bytes({"a": _entry(offsets=(8, 0))}, bytes(8)), "invalid data_offsets"),
    "length mismatch": (safetensors_bytes({"a": _entry(shape=(3,))}, bytes(8)), "needs 12 bytes but data_offsets give 8"),
    "shape overflow": (safetensors_bytes({"a": _entry(shape=(2**62, 2**62))}, bytes(8)), "int64 product"),
    "out of range": (safetensors_bytes({"a": _entry(offsets=(8, 16))}, bytes(8)), "ends at byte 16"),
    "truncated data": (safetensors_bytes({"a": _entry(shape=(4,), offsets=(0, 16))}, bytes(9)), "ends at byte 16"),
    "overlap": (safetensors_bytes({"a": _entry(), "b": _entry(offsets=(4, 12))}, bytes(12)), "overlaps"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_malformed_files_are_invalid(tmp_path, case):
    data, message = BAD[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(InvalidFileError, match=message):
        open_checkpoint(path)


def test_duplicate_keys_refused_under_strict(tmp_path):
    header = b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    path = tmp_path / "dup.safetensors"
    path.write_bytes(safetensors_bytes(header, bytes(4)))
    assert list(open_checkpoint(path).tensors) == ["a"]
    with pytest.raises(InvalidFileError, match="names 'a' twice"):
        open_checkpoint(path, strict=True)


def test_file_truncated_after_open_is_reported_on_read(tmp_path):
    path = tmp_path / "net.safetensors"
    save_file({"w": torch.ones(4)}, path)
    ckpt = open_checkpoint(path)
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(InvalidFileError, match="truncated"):
        ckpt.tensors["w"].numpy()


def test_lazy_reads_come_from_the_file_that_was_opened(tmp_path):
    path, other = tmp_path / "net.safetensors", tmp_path / "other.safetensors"
    save_file({"w": torch.ones(4)}, path)
    save_file({"w": torch.full((4,), 7.0)}, other)
    ckpt = open_checkpoint(path)
    os.replace(other, path)  # swapped after opening: the tensors still come from the original
    np.testing.assert_array_equal(ckpt.tensors["w"].numpy(), np.ones(4, dtype=np.float32))
