"""The static zip/TorchScript reader: values equal torch's own, module facts equal the real module."""

from __future__ import annotations

import struct
import zipfile

import numpy as np
import pytest
import torch

from bninspect.errors import InvalidFileError
from bninspect.formats import open_checkpoint
from bninspect.formats.torchzip import parse_class_code
from tests.formats.craft import Storage, Tensor, dumps, record_offset, rewrite_zip, trained_net, write_zip

# Every test here needs torch (the Python 3.10 job of .ci/run runs without it).
pytestmark = pytest.mark.torch


def as_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


def assert_same(checkpoint, reference: dict) -> None:
    """Same keys in the same order, same shapes, dtypes and exact values."""
    assert list(checkpoint.tensors) == list(reference)
    for key, ref in reference.items():
        got = checkpoint.tensors[key]
        assert got.shape == tuple(ref.shape), key
        assert got.dtype == str(ref.dtype).replace("torch.", ""), key
        expected = as_numpy(ref)
        values = got.numpy()
        assert values.dtype == expected.dtype, key
        np.testing.assert_array_equal(values, expected, err_msg=key)


def test_plain_state_dict_values_equal_torch_load(tmp_path):
    path = tmp_path / "net.pt"
    torch.save(trained_net().state_dict(), path)
    ckpt = open_checkpoint(path)
    assert ckpt.format == "torch-zip" and ckpt.container == "" and ckpt.prefix == "" and not ckpt.modules
    assert_same(ckpt, torch.load(path, weights_only=True))


def test_dtypes_views_offsets_and_shared_storages(tmp_path):
    torch.manual_seed(1)
    base = torch.randn(6, 8)
    tensors = {
        "f64": base.double(),
        "f16": base.half(),
        "bf16": base.bfloat16(),
        "i64": torch.arange(-5, 7),
        "i32": torch.arange(10, dtype=torch.int32),
        "u8": torch.arange(200, 210, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(7),
        "transposed": base.t(),  # non-contiguous, shares base's storage
        "rows": base[2:5],  # storage offset
        "strided": base[:, 1::3],  # offset and step
        "base": base,
        "empty": torch.zeros(0, 4),
        "param": torch.nn.Parameter(torch.ones(3)),
    }
    path = tmp_path / "mixed.pt"
    torch.save(tensors, path)
    ckpt = open_checkpoint(path)
    assert_same(ckpt, torch.load(path, weights_only=True))
    with zipfile.ZipFile(path) as zf:  # the views really share one record
        assert sum(1 for n in zf.namelist() if "/data/" in n and not n.endswith("serialization_id")) == 11


def test_stride_zero_expansion_is_not_materialised(tmp_path):
    one = Storage("0", 1)
    pkl = dumps({"running_mean": Tensor(one, 0, (4,), (0,)), "huge": Tensor(one, 0, (10**6, 10**6), (0, 0))})
    path = write_zip(tmp_path / "expand.pt", pkl, {"0": struct.pack("<f", 2.5)})
    ckpt = open_checkpoint(path)
    np.testing.assert_array_equal(ckpt.tensors["running_mean"].numpy(), [2.5] * 4)
    assert ckpt.tensors["huge"].shape == (10**6, 10**6)  # known without reading anything
    with pytest.raises(InvalidFileError, match="does not materialise"):
        ckpt.tensors["huge"].numpy()


def test_view_reaching_past_its_storage_is_invalid(tmp_path):
    pkl = dumps({"w": Tensor(Storage("0", 4), 2, (4,), (1,))})
    path = write_zip(tmp_path / "past.pt", pkl, {"0": bytes(16)})
    with pytest.raises(InvalidFileError, match="reaches element 5"):
        open_checkpoint(path)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A real torch.save file of the test net, made once for the damage tests."""
    path = tmp_path_factory.mktemp("saved") / "net.pt"
    torch.save(trained_net().state_dict(), path)
    return path


DAMAGE = {
    "record smaller than the pickle claims": (
        lambda n, d: d[:-4] if n.endswith("/data/1") else d, r"record data/1 holds 28 bytes but data.pkl says 8 float32"),
    "missing record": (lambda n, d: None if n.endswith("/data/2") else d, "record data/2 .* missing"),
    "missing data.pkl": (lambda n, d: None if n.endswith("data.pkl") else d, "without data.pkl"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_archive(tmp_path, saved, case):
    change, message = DAMAGE[case]
    bad = rewrite_zip(saved, tmp_path / "bad.pt", change)
    with pytest.raises(InvalidFileError, match=message):
        open_checkpoint(bad)


@pytest.mark.parametrize("garbage", [b"\x80\x02}q\x00(X", b"\x00\x01\x02 not a pickle", b"\x80\x02]q\x00(K\x01e"])
def test_corrupt_data_pkl(tmp_path, garbage):
    path = write_zip(tmp_path / "corrupt.pt", garbage, {})
    with pytest.raises(InvalidFileError, match="data.pkl"):
        open_checkpoint(path)


def test_pickle_of_wrong_shapes_is_invalid(tmp_path):
    pkl = dumps({"w": Tensor(Storage("0", 4), 0, ("4",), (1,))})
    path = write_zip(tmp_path / "badshape.pt", pkl, {"0": bytes(16)})
    with pytest.raises(InvalidFileError, match="size is not a tuple"):
        open_checkpoint(path)


@pytest.mark.parametrize("size, stride, message", [
    ((4,), (-1,), "stride is not a tuple"),
    ((True,), (1,), "size is not a tuple"),  # a bool is an int to Python, but no size
    ((4,), (1.0,), "stride is not a tuple"),
    ((4,), (1, 1), "differ in length"),
    ([4, 1], [1], "differ in length"),
])
def test_each_malformed_size_or_stride_is_named(tmp_path, size, stride, message):
    pkl = dumps({"w": Tensor(Storage("0", 4), 0, size, stride)})
    path = write_zip(tmp_path / "badview.pt", pkl, {"0": bytes(16)})
    with pytest.raises(InvalidFileError, match=message):
        open_checkpoint(path)


def test_size_and_stride_may_be_lists(tmp_path):
    pkl = dumps({"w": Tensor(Storage("0", 4), 0, [2, 2], [2, 1])})
    path = write_zip(tmp_path / "lists.pt", pkl, {"0": struct.pack("<4f", 1, 2, 3, 4)})
    np.testing.assert_array_equal(open_checkpoint(path).tensors["w"].numpy(), [[1, 2], [3, 4]])


def test_truncated_zip(tmp_path):
    src = tmp_path / "net.pt"
    torch.save(trained_net().state_dict(), src)
    data = src.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 100):
        bad = tmp_path / f"cut{cut}.pt"
        bad.write_bytes(data[:cut])
        with pytest.raises(InvalidFileError, match="truncated or corrupt zip"):
            open_checkpoint(bad)


def test_strict_checks_record_crcs(tmp_path):
    path = tmp_path / "net.pt"
    torch.save(trained_net().state_dict(), path)
    offset, size = record_offset(path, "/data/1")
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))
    # torch.load accepts the altered record silently; so does the default (fast) read.
    torch.load(path, weights_only=True)
    open_checkpoint(path)
    with pytest.raises(InvalidFileError, match="fails its CRC check"):
        open_checkpoint(path, strict=True)


# -- TorchScript ------------------------------------------------------------------------------

BN_FACTS = ("eps", "momentum", "affine", "track_running_stats", "num_features", "training")
CONV_FACTS = ("in_channels", "out_channels", "kernel_size", "groups", "stride", "training")


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    """The same net scripted in eval mode and in train mode (one BN left in eval)."""
    out = tmp_path_factory.mktemp("ts")
    net = trained_net()
    torch.jit.save(torch.jit.script(net), out / "eval.ts")
    net.train()
    net.bn.eval()
    torch.jit.save(torch.jit.script(net), out / "train.ts")
    return net, out


@pytest.mark.parametrize("name", ["eval.ts", "train.ts"])
def test_torchscript_tensors_and_module_facts_match_the_module(scripted, name):
    net, out = scripted
    path = out / name
    ckpt = open_checkpoint(path)
    assert ckpt.format == "torchscript"
    assert_same(ckpt, torch.jit.load(path).state_dict())
    net_copy = torch.jit.load(path)
    for mpath, module in net_copy.named_modules():
        info = ckpt.modules[mpath]
        assert info.type_name == module.original_name
        facts = BN_FACTS if "BatchNorm" in info.type_name else CONV_FACTS if "Conv" in info.type_name else ("training",)
        for fact in facts:
            expected = getattr(module, fact)
            assert info.attributes[fact] == expected, (mpath, fact)
    # The facts the test model was built with, spelled out.
    assert ckpt.modules["bn"].attributes["eps"] == 1e-3 and ckpt.modules["bn"].attributes["momentum"] == 0.01
    assert ckpt.modules["bn2"].attributes["momentum"] is None
    assert ckpt.modules["bn3"].attributes["affine"] is False
    assert ckpt.modules["head.1"].attributes["track_running_stats"] is False
    assert ckpt.modules["dw"].attributes["groups"] == 8
    assert ckpt.modules["bn"].attributes["training"] is False
    assert ckpt.modules["bn2"].attributes["training"] is (name == "train.ts")


def test_parse_class_code_reads_final_constants_without_running_them():
    source = (
        "class BatchNorm2d(Module):\n"
        '  __parameters__ = ["weight", "bias", ]\n'
        '  __buffers__ = ["running_mean", "running_var", ]\n'
        "  eps : Final[float] = 1.0000000000000001e-05\n"
        "  momentum : Final[NoneType] = None\n"
        "  kernel_size : Final[Tuple[int, int]] = (3, 3)\n"
        "  evil : Final[int] = __import__('os').system('false')\n"
        "class Other(Module):\n"
        "  eps : Final[float] = 0.001\n"
    )
    classes = parse_class_code(source)
    bn = classes["BatchNorm2d"]
    assert bn["constants"] == {"eps": 1e-05, "momentum": None, "kernel_size": (3, 3)}
    assert bn["__parameters__"] == ["weight", "bias"]
    assert classes["Other"]["constants"] == {"eps": 0.001}


def test_torchscript_code_is_read_as_text_never_run(tmp_path, scripted):
    net, out = scripted
    marker = tmp_path / "MARKER"
    payload = f"import os\nopen({str(marker)!r}, 'w').write('ran')\n".encode()
    # Where the class's code sits depends on TorchScript's name mangling: a BatchNorm2d scripted
    # earlier in the same process makes this one ___torch_mangle_N, in a file of its own.
    bad = rewrite_zip(out / "eval.ts", tmp_path / "code.ts",
                      lambda n, d: payload if "code/__torch__/torch/nn/modules/batchnorm" in n and n.endswith(".py")
                      else d)
    ckpt = open_checkpoint(bad)
    assert not marker.exists()
    assert_same(ckpt, torch.jit.load(out / "eval.ts").state_dict())
    # That file held BatchNorm2d's constants; without them eps is simply not known, and we say so.
    assert "eps" not in ckpt.modules["bn"].attributes
    assert len(ckpt.notes) == 1
    assert ckpt.notes[0].startswith("module constants (eps, momentum, ...) not found in the archive's code for "
                                    "__torch__.torch.nn.modules.batchnorm.")
    assert "BatchNorm2d" in ckpt.notes[0]
    assert open_checkpoint(out / "eval.ts").notes == []


def test_big_endian_archive(tmp_path):
    values = np.array([1.5, -2.0, 3.25], dtype=">f4")
    pkl = dumps({"running_var": Tensor(Storage("0", 3), 0, (3,), (1,))})
    path = write_zip(tmp_path / "be.pt", pkl, {"0": values.tobytes()})
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("archive/byteorder", "big")  # the later entry wins in zipfile's index
    got = open_checkpoint(path).tensors["running_var"].numpy()
    np.testing.assert_array_equal(got, [1.5, -2.0, 3.25])
    assert got.dtype == np.float32 and got.dtype.isnative


def test_recompressed_archive_reads_the_same(tmp_path, saved):
    # torch writes records uncompressed; an archive re-zipped with deflate still reads right.
    packed = tmp_path / "deflated.pt"
    with zipfile.ZipFile(saved) as zin, zipfile.ZipFile(packed, "w", compression=zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
    assert_same(open_checkpoint(packed), torch.load(saved, weights_only=True))
