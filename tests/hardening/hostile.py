"""Hostile inputs of issue 15's second round, made at test time, one builder per class of input.

Each builder writes its files into a folder and returns the :class:`Attack` runs that use them:
the command line (run in that folder), the exit code bninspect owes, and a needle its one stderr
line (or, for exit 0 and 1, its stdout) must hold. ``test_bounds`` runs them all and checks that
each stays bounded (peak RSS, CPU time), answers in one line, and leaves every file as it was.

The files are built the way an attacker builds them: real torch.save/torch.jit.save archives
rewritten member by member, pickles written by ``pickle`` or opcode by opcode where Python's
pickler would recurse, deflate streams that inflate to gigabytes from a few kilobytes.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import pickle
import re
import shutil
import struct
import sys
import tempfile
import types
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_checkpoints"
SAMPLE = SAMPLES / "mobilenet_v1_tiny.pt"
SAMPLE_TS = SAMPLES / "mobilenet_v1_tiny.ts"

from tests.formats.craft import Storage, Tensor, dumps, safetensors_bytes  # noqa: E402

OK, FINDINGS, USAGE, UNSAFE, INVALID, PATH = 0, 1, 2, 3, 4, 5


@dataclass(frozen=True)
class Attack:
    """One bninspect run on hostile files: arguments (str, or bytes for a non-UTF-8 file name),
    the exit code owed (a tuple where findings are an answer too) and a needle."""

    name: str
    args: tuple
    code: int | tuple[int, ...]
    needle: str = ""
    drift: bool = False  # needs sample_models on PYTHONPATH (drift --arch)

    @property
    def codes(self) -> tuple[int, ...]:
        return self.code if isinstance(self.code, tuple) else (self.code,)


@dataclass
class Built:
    folder: Path
    attacks: list[Attack] = field(default_factory=list)


def remove_tree(top: Path) -> None:
    """``shutil.rmtree`` without its recursion (a folder 1,200 levels deep exceeds the limit)."""
    folders, stack = [], [str(top)]
    while stack:
        folder = stack.pop()
        folders.append(folder)
        for entry in os.scandir(folder):
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
            else:
                os.unlink(entry.path)
    for folder in reversed(folders):
        os.rmdir(folder)


# -- building blocks ----------------------------------------------------------------------------

def deflated_zeros(nbytes: int) -> bytes:
    """A raw deflate stream of ``nbytes`` zero bytes, made in microseconds per MiB: one
    full-flushed block of 1 MiB of zeros decodes the same wherever it stands, so it is repeated."""
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    rest = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    tail = rest.compress(bytes(nbytes % (1 << 20))) + rest.flush()
    return block * (nbytes >> 20) + tail


def write_members(path: Path, members: list[tuple[str, bytes, int, int | None]]) -> Path:
    """A zip of (name, stored bytes, method, size claimed) members, written byte by byte:
    ``stored bytes`` are already compressed for ``method`` and ``size claimed`` goes into both
    headers (None: the real content length, worked out for stored members only)."""
    out = io.BytesIO()
    central = []
    for name, data, method, size in members:
        raw = name.encode()
        size = len(data) if size is None else size
        crc = zlib.crc32(data) if method == zipfile.ZIP_STORED else 0
        offset = out.tell()
        out.write(struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", 20, 0, 0, method, 0, 0x21, crc, len(data), size,
                              len(raw), 0) + raw + data)
        central.append(struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 3, 20, 0, 0, method, 0, 0x21, crc,
                                   len(data), size, len(raw), 0, 0, 0, 0, 0, offset) + raw)
    start = out.tell()
    for c in central:
        out.write(c)
    out.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(central), len(central), out.tell() - start, start, 0))
    path.write_bytes(out.getvalue())
    return path


def _sample_members() -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(SAMPLE) as zf:
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


def _rezip(dst: Path, method_of) -> Path:
    """The sample checkpoint with each member compressed by ``method_of(name)`` (zipfile writes it)."""
    with zipfile.ZipFile(dst, "w") as zf:
        for name, data in _sample_members():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=method_of(name))
    return dst


def _pickled_tensors(path: Path, tensors: dict, records: dict[str, bytes], method: int = zipfile.ZIP_STORED,
                     claims: dict[str, int] | None = None) -> Path:
    """A torch.save-shaped archive from craft's Storage/Tensor stand-ins, records stored or
    already deflated (``method``), each record's size as ``claims`` says."""
    claims = claims or {}
    members = [("archive/data.pkl", dumps(tensors), zipfile.ZIP_STORED, None),
               ("archive/byteorder", b"little", zipfile.ZIP_STORED, None),
               ("archive/version", b"3\n", zipfile.ZIP_STORED, None)]
    members += [(f"archive/data/{k}", v, method, claims.get(k)) for k, v in records.items()]
    return write_members(path, members)


def onnx_bn(path: Path, *, external: dict | None = None, eps=None, momentum=None, dims=None) -> Path:
    """A one-node ONNX model: BatchNormalization over 4 channels; running_var optionally as
    external data with the given fields, attributes and dims as given."""
    from onnx import TensorProto, helper, numpy_helper

    inits = []
    for name, value in (("bn.weight", 1.0), ("bn.bias", 0.0), ("bn.running_mean", 0.0), ("bn.running_var", 1.0)):
        t = numpy_helper.from_array(np.full(4, value, np.float32), name)
        if name == "bn.running_var":
            if dims is not None:
                del t.dims[:]
                t.dims.extend(dims)
            if external is not None:
                t.ClearField("raw_data")
                t.data_location = TensorProto.EXTERNAL
                for k, v in external.items():
                    e = t.external_data.add()
                    e.key, e.value = k, v
        inits.append(t)
    node = helper.make_node("BatchNormalization", ["x", *(t.name for t in inits)], ["y"], name="bn")
    for attr in (eps, momentum):
        if attr is not None:
            node.attribute.append(attr)
    value = helper.make_tensor_value_info
    graph = helper.make_graph([node], "g", [value("x", TensorProto.FLOAT, [1, 4, 2, 2])],
                              [value("y", TensorProto.FLOAT, [1, 4, 2, 2])], inits)
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)]).SerializeToString())
    return path


def ir_bn(path: Path) -> Path:
    """An OpenVINO IR (written by openvino) of one BatchNormInference over 4 channels."""
    import openvino as ov
    import openvino.opset5 as ops

    x = ops.parameter([1, 4, 2, 2], np.float32, name="x")
    gamma = np.arange(1, 5, dtype=np.float32)
    bn = ops.batch_norm_inference(x, gamma, gamma + 10, gamma + 20, gamma + 30, 1e-3)
    ov.save_model(ov.Model([bn], [x]), str(path), compress_to_fp16=False)
    return path


def ir_layer_name(xml: Path) -> str:
    """The layer name bninspect shows for the BatchNormInference of ``ir_bn``."""
    from bninspect.formats import open_checkpoint
    from bninspect.layers import discover

    (layer,) = discover(open_checkpoint(str(xml))).layers
    return layer.name


def _activations(path: Path, shape: tuple[int, ...], seed: int = 0) -> Path:
    np.save(path, np.random.default_rng(seed).standard_normal(shape).astype(np.float32))
    return path


# -- TorchScript archives written opcode by opcode ---------------------------------------------

def _fake_module(name: str) -> types.ModuleType:
    """A module in sys.modules (parents too), so that pickle can name classes defined "in" it."""
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    return sys.modules[name]


def script_class(qualname: str) -> type:
    """A class pickled as the TorchScript class ``qualname`` (``__torch__.…``): its instances
    pickle as that global called with no arguments, then their ``state`` set by BUILD."""
    module, _, name = qualname.rpartition(".")

    def init(self, state=None):
        self.state = state

    def reduce(self):
        return type(self), (), self.state

    cls = type(name, (), {"__module__": module, "__qualname__": name, "__init__": init, "__reduce__": reduce})
    setattr(_fake_module(module), name, cls)
    return cls


def torchscript_archive(path: Path, data_pkl: bytes, records: dict[str, bytes]) -> Path:
    """A TorchScript-shaped archive: data.pkl, records, constants.pkl (which marks it TorchScript)."""
    members = [("m/data.pkl", data_pkl, zipfile.ZIP_STORED, None),
               ("m/constants.pkl", pickle.dumps((), protocol=2), zipfile.ZIP_STORED, None),
               ("m/byteorder", b"little", zipfile.ZIP_STORED, None)]
    members += [(f"m/data/{k}", v, zipfile.ZIP_STORED, None) for k, v in records.items()]
    return write_members(path, members)


def module_chain(depth: int) -> bytes:
    """data.pkl of ``depth`` TorchScript modules, each the only child ('m') of the one before:
    written opcode by opcode (Python's pickler would recurse ``depth`` times)."""
    g = b"c__torch__\nChain\n"
    opening = g + b")\x81}(X\x08\x00\x00\x00trainingI00\nX\x01\x00\x00\x00m"  # obj, {training: False, 'm':
    closing = b"ub"  # SETITEMS (the child), BUILD
    leaf = g + b")\x81}X\x08\x00\x00\x00trainingI00\nsb"
    return b"\x80\x02" + opening * (depth - 1) + leaf + closing * (depth - 1) + b"."


# -- the classes of input ----------------------------------------------------------------------

def companions(d: Path) -> Built:
    """Items 2 and 14: every file a model names (and every data file) is a regular file inside
    the model's directory, checked before it is opened: a FIFO never blocks a read."""
    b = Built(d)
    (d / "fifo").mkdir()
    os.mkfifo(d / "fifo" / "w.bin")
    onnx_bn(d / "fifo" / "model.onnx", external={"location": "w.bin"})
    (d / "zero").mkdir()
    os.symlink("/dev/zero", d / "zero" / "w.bin")
    onnx_bn(d / "zero" / "model.onnx", external={"location": "w.bin"})
    (d / "irfifo").mkdir()
    ir_bn(d / "irfifo" / "model.xml")
    os.unlink(d / "irfifo" / "model.bin")
    os.mkfifo(d / "irfifo" / "model.bin")
    (d / "irout").mkdir()
    (d / "secret").mkdir()
    ir_bn(d / "irout" / "model.xml")
    os.replace(d / "irout" / "model.bin", d / "secret" / "model.bin")
    os.symlink("../secret/model.bin", d / "irout" / "model.bin")
    shutil.copy(SAMPLE, d / "model.pt")
    _activations(d / "act.npy", (2, 32, 4, 4))
    os.mkfifo(d / "pipe.npy")
    layer = ("--layer", "features.2.bn")
    b.attacks += [
        Attack("onnx-external-data-fifo-show", ("show", "fifo/model.onnx"), PATH, "is a FIFO"),
        Attack("onnx-external-data-fifo-diff", ("diff", "fifo/model.onnx", "fifo/model.onnx"), PATH, "is a FIFO"),
        Attack("onnx-external-data-device", ("show", "zero/model.onnx"), INVALID, "outside the model's directory"),
        Attack("ir-bin-fifo", ("show", "irfifo/model.xml"), PATH, "is a FIFO"),
        Attack("ir-bin-symlink-out-of-folder", ("show", "irout/model.xml"), INVALID, "outside the model's directory"),
        Attack("verify-input-fifo", ("verify", "model.pt", *layer, "--input", "pipe.npy"), PATH, "is a FIFO"),
        Attack("verify-expected-fifo", ("verify", "model.pt", *layer, "--input", "act.npy", "--expected", "pipe.npy"),
               PATH, "is a FIFO"),
        Attack("drift-data-fifo", ("drift", "model.pt", "--arch", "sample_models:mobilenet_v1_tiny", "--data",
                                   "pipe.npy"), PATH, "is a FIFO", drift=True),
    ]
    return b


def outputs(d: Path) -> Built:
    """Item 3: no output over a file the command reads, whatever name leads there (the file
    itself, a hard link, a symlink), for each kind of input: checkpoint, --data, --input,
    --expected, an IR's .bin, an ONNX model's external data."""
    b = Built(d)
    shutil.copy(SAMPLE, d / "model.pt")
    os.symlink("model.pt", d / "model_link")
    _activations(d / "act.npy", (2, 32, 4, 4))
    _activations(d / "exp.npy", (2, 32, 4, 4), seed=1)
    # torch.save'd inputs: a .pt name is one --write-recalibrated accepts, so only the input rule protects it.
    torch.save(torch.from_numpy(np.random.default_rng(2).standard_normal((8, 3, 16, 16)).astype(np.float32)),
               d / "data.pt")
    for name, suffix in (("act", ".npy"), ("exp", ".npy"), ("data", ".pt")):
        os.link(d / f"{name}{suffix}", d / f"{name}_hard{suffix}")
        os.symlink(f"{name}{suffix}", d / f"{name}_sym{suffix}")
    ir_bn(d / "ir.xml")
    _activations(d / "act4.npy", (1, 4, 2, 2))
    np.full(4, 1.0, np.float32).tofile(d / "ext.data")
    onnx_bn(d / "ext.onnx", external={"location": "ext.data"})
    verify = ("verify", "model.pt", "--layer", "features.2.bn", "--input", "act.npy")
    drift = ("drift", "model.pt", "--arch", "sample_models:mobilenet_v1_tiny", "--data", "data.pt",
             "--batch-sizes", "2,8", "--write-recalibrated")
    over = "overwrite"
    for kind in ("", "_hard", "_sym"):
        b.attacks += [
            Attack(f"verify-output-onto-input{kind}", (*verify, "--output", f"act{kind}.npy"), USAGE, over),
            Attack(f"verify-output-onto-expected{kind}", (*verify, "--expected", "exp.npy", "--output", f"exp{kind}.npy"),
                   USAGE, over),
            Attack(f"drift-recalibrated-onto-data{kind}", (*drift, f"data{kind}.pt"), USAGE, over, drift=True),
        ]
    b.attacks += [
        Attack("verify-output-onto-checkpoint-symlink", (*verify, "--output", "model_link"), USAGE, over),
        Attack("drift-recalibrated-onto-checkpoint-symlink", (*drift, "model_link.pt"), USAGE, over, drift=True),
        Attack("verify-output-onto-ir-bin", ("verify", "ir.xml", "--input", "act4.npy", "--output", "ir.bin"), USAGE, over),
        Attack("verify-output-onto-onnx-external-data", ("verify", "ext.onnx", "--input", "act4.npy", "--output",
                                                          "ext.data"), USAGE, over),
    ]
    os.symlink("model.pt", d / "model_link.pt")
    return b


def zips(d: Path) -> Built:
    """Items 4, 9 and 15: compressed members are inflated incrementally within the size their
    directory states and a budget per file; methods torch never writes are refused; central and
    local headers that disagree are refused by default; array files get the same readers."""
    b = Built(d)
    stored = zipfile.ZIP_STORED
    _rezip(d / "bzip2.pt", lambda n: zipfile.ZIP_BZIP2 if n.endswith("data.pkl") else stored)
    _rezip(d / "lzma.pt", lambda n: zipfile.ZIP_LZMA if "/data/" in n else stored)
    _rezip(d / "rezipped.pt", lambda n: zipfile.ZIP_DEFLATED)
    # A 384 MB BatchNorm of 96 million channels in ~1.5 MB: every record deflated zeros.
    c = 96_000_000
    bomb = {f"bn.{n}": Tensor(Storage(str(i), c), 0, (c,), (1,))
            for i, n in enumerate(("weight", "bias", "running_mean", "running_var"))}
    _pickled_tensors(d / "bomb96m.pt", bomb, {str(i): deflated_zeros(4 * c) for i in range(4)}, zipfile.ZIP_DEFLATED,
                     {str(i): 4 * c for i in range(4)})
    # A record that states 16 bytes (what its tensor needs) and inflates to 64 MiB.
    liar = {f"bn.{n}": Tensor(Storage(str(i), 4), 0, (4,), (1,))
            for i, n in enumerate(("weight", "bias", "running_mean", "running_var"))}
    records = {str(i): zlib.compress(np.ones(4, np.float32).tobytes())[2:-4] for i in range(3)}
    records["3"] = deflated_zeros(64 << 20)
    _pickled_tensors(d / "liar.pt", liar, records, zipfile.ZIP_DEFLATED, {str(i): 16 for i in range(4)})
    # Central directory and local header name different files.
    members = _sample_members()
    pkl = next(n for n, _ in members if n.endswith("/data.pkl"))
    data = SAMPLE.read_bytes()
    at = data.index(pkl.encode())  # its first occurrence: data.pkl is the first member, so its local header
    (d / "conflict.pt").write_bytes(data[:at] + pkl[:-1].encode() + b"X" + data[at + len(pkl):])
    # The same for every tensor record (data.pkl agrees): show reads the BatchNorm records.
    out = bytearray(data)
    with zipfile.ZipFile(SAMPLE) as zf:
        for info in zf.infolist():
            if "/data/" in info.filename:
                out[info.header_offset + 30 + len(info.filename) - 1] = ord("x")
    (d / "conflict_records.pt").write_bytes(bytes(out))
    # A zip64 end record whose directory offset lies: zipfile shifts every local header offset
    # by the difference, to before the start of the file.
    shifted = bytearray(data)
    end64 = shifted.rfind(b"PK\x06\x06")
    struct.pack_into("<Q", shifted, end64 + 48, struct.unpack_from("<Q", shifted, end64 + 48)[0] + 100_000)
    (d / "negative_offsets.pt").write_bytes(bytes(shifted))
    # Activations and data of a billion values, deflated into ~1 MB: torch.load inflated them whole.
    shape = (2, 32, 2048, 2048)
    n = int(np.prod(shape))
    _pickled_tensors(d / "act_bomb.pt", Tensor(Storage("0", n), 0, shape, (n // 2, n // 64, 2048, 1)),
                     {"0": deflated_zeros(4 * n)}, zipfile.ZIP_DEFLATED, {"0": 4 * n})
    rows = 1 << 20
    _pickled_tensors(d / "data_bomb.pt", Tensor(Storage("0", rows * 768), 0, (rows, 3, 16, 16), (768, 256, 16, 1)),
                     {"0": deflated_zeros(4 * rows * 768)}, zipfile.ZIP_DEFLATED, {"0": 4 * rows * 768})
    shutil.copy(SAMPLE, d / "model.pt")
    b.attacks += [
        Attack("bzip2-data-pkl", ("show", "bzip2.pt"), INVALID, "bzip2, which torch never writes"),
        Attack("lzma-records", ("show", "lzma.pt"), INVALID, "LZMA, which torch never writes"),
        Attack("rezipped-deflate-still-reads", ("show", "rezipped.pt"), OK, "4 BatchNorm layers"),
        Attack("deflated-96m-channels", ("show", "bomb96m.pt"), INVALID, "256 MiB"),
        Attack("deflated-96m-channels-check", ("check", "bomb96m.pt"), INVALID, "256 MiB"),
        Attack("record-inflates-past-its-size", ("show", "liar.pt"), INVALID, "inflates to more than the 16 bytes"),
        Attack("central-and-local-names-disagree", ("show", "conflict.pt"), INVALID, "disagree"),
        Attack("central-and-local-record-names-disagree", ("show", "conflict_records.pt"), INVALID, "disagree"),
        Attack("end-record-shifts-offsets-before-the-file", ("show", "negative_offsets.pt"), INVALID, "outside the file"),
        Attack("end-record-shifts-offsets-check", ("check", "negative_offsets.pt"), INVALID, "outside the file"),
        Attack("verify-input-deflate-bomb", ("verify", "model.pt", "--layer", "features.2.bn", "--input", "act_bomb.pt"),
               INVALID, "values"),
        Attack("drift-data-deflate-bomb", ("drift", "model.pt", "--arch", "sample_models:mobilenet_v1_tiny", "--data",
                                           "data_bomb.pt", "--batch-sizes", "2"), INVALID, "256 MiB", drift=True),
    ]
    return b


def expansion(d: Path) -> Built:
    """Item 6: views that expand one stored value to millions are budgeted per file, not per
    tensor: 40 layers of 16 Mi-channel stride-0 views, in the zip and the legacy format."""
    b = Built(d)
    sd = {f"l{i}.bn.{n}": torch.ones(1).expand(1 << 24)
          for i in range(40) for n in ("weight", "bias", "running_mean", "running_var")}
    torch.save(sd, d / "stride0.pt")
    torch.save(sd, d / "stride0_legacy.pt", _use_new_zipfile_serialization=False)
    for name in ("stride0.pt", "stride0_legacy.pt"):
        for command in ("show", "check"):
            b.attacks.append(Attack(f"{command}-{name}", (command, name), INVALID, "expand"))
    b.attacks.append(Attack("explain-stride0.pt", ("explain", "stride0.pt", "l0.bn", "--channel", "3"), INVALID, "expand"))
    return b


def torchscript(d: Path) -> Built:
    """Item 7 and part of 11: TorchScript code and module trees that cost time or memory to read,
    and module facts of the wrong type (read as text from the code, or pickled in the state)."""
    b = Built(d)
    # Every code file grown to 16 MiB of constants that are costly to evaluate.
    junk = ("  x : Final[Tuple[int]] = (" + "1, " * 650 + ")\n").encode()  # under the 2000 characters once evaluated

    def grow(name: str, data: bytes) -> bytes:
        if "/code/" in name and name.endswith(".py"):
            return data + junk * ((16 << 20) // len(junk) - 1)
        return data

    with zipfile.ZipFile(SAMPLE_TS) as zin, zipfile.ZipFile(d / "codebomb.ts", "w") as zout:
        for info in zin.infolist():
            zout.writestr(zipfile.ZipInfo(info.filename), grow(info.filename, zin.read(info)),
                          compress_type=zipfile.ZIP_DEFLATED)
    torchscript_archive(d / "chain.ts", module_chain(50_000), {})

    def constant(name: str, pattern: str, text: str, which: str = "torch/nn/modules/batchnorm.py") -> None:
        with zipfile.ZipFile(SAMPLE_TS) as zin, zipfile.ZipFile(d / name, "w") as zout:
            for info in zin.infolist():
                data = zin.read(info)
                if info.filename.endswith(which):
                    data = re.sub(pattern.encode(), text.encode(), data)
                zout.writestr(info, data)

    constant("momentum_str.ts", r"momentum : Final\[float\] = [^\n]*", 'momentum : Final[str] = "fast"')
    constant("momentum_tuple.ts", r"momentum : Final\[float\] = [^\n]*", "momentum : Final[Tuple[float, float]] = (0.1, 0.2)")
    constant("groups_str.ts", r"groups : Final\[int\] = [^\n]*", 'groups : Final[str] = "one"', "torch/nn/modules/conv.py")
    constant("num_features.ts", r"num_features : Final\[int\] = [^\n]*", "num_features : Final[int] = 8000000000000")
    # eps pickled in a module's state as a 400-digit integer (too big for a float).
    bn = script_class("__torch__.torch.nn.modules.batchnorm.BatchNorm2d")
    root = script_class("__torch__.Net")
    state = {"training": False, "eps": 10**400}
    for i, n in enumerate(("weight", "bias", "running_mean", "running_var")):
        state[n] = Tensor(Storage(str(i), 4), 0, (4,), (1,))
    net = root({"training": False, "bn": bn(state)})
    torchscript_archive(d / "eps_bigint.ts", dumps(net), {str(i): np.ones(4, np.float32).tobytes() for i in range(4)})
    b.attacks += [
        Attack("code-bomb", ("show", "codebomb.ts"), OK, "larger than the 16 MiB"),
        Attack("module-chain-50000", ("show", "chain.ts"), INVALID, "nested so deeply"),
        Attack("momentum-a-string", ("show", "momentum_str.ts"), INVALID, "momentum is 'fast', not a number"),
        Attack("momentum-a-tuple", ("check", "momentum_tuple.ts"), INVALID, "momentum is (0.1, 0.2), not a number"),
        Attack("groups-a-string", ("verify", "groups_str.ts"), INVALID, "groups is 'one'"),
        Attack("num-features-huge", ("show", "--channels", "num_features.ts"), INVALID, "num_features is 8000000000000"),
        Attack("eps-a-400-digit-int", ("explain", "eps_bigint.ts", "bn"), INVALID, "eps is 1000"),
    ]
    return b


def bigints(d: Path) -> Built:
    """Item 8: sizes that are not int64s are refused where they are read, before any arithmetic
    or int-to-str conversion on them (pickle shapes, safetensors headers, ONNX dims, IR shapes)."""
    b = Built(d)
    huge = 2 ** (64 * 1024 * 8) - 1  # a 64 KiB integer
    t = {f"bn.{n}": Tensor(Storage(str(i), 4), 0, (4,), (1,))
         for i, n in enumerate(("weight", "bias", "running_mean", "running_var"))}
    t["bn.weight"] = Tensor(Storage("0", 4), 0, (huge,) * 200, (1,) * 200)
    _pickled_tensors(d / "bigshape.pt", t, {str(i): bytes(16) for i in range(4)})
    digits = int("9" * 4299)  # just under Python's int-to-str limit
    header = {"bn.running_var": {"dtype": "F32", "shape": [digits] * 3000, "data_offsets": [0, 16]}}
    (d / "bigdims.safetensors").write_bytes(safetensors_bytes(header, bytes(16)))
    onnx_bn(d / "negdim.onnx", dims=[-4])
    onnx_bn(d / "overflow.onnx", dims=[2**62, 2**62])
    ir_bn(d / "ir.xml")
    text = (d / "ir.xml").read_text()
    for name, shape in (("ir_negdim", "-4"), ("ir_hugedim", "9" * 40)):
        (d / f"{name}.xml").write_text(text.replace('shape="4"', f'shape="{shape}"', 1))
        shutil.copy(d / "ir.bin", d / f"{name}.bin")
    b.attacks += [
        Attack("pickle-shape-of-64KiB-ints", ("show", "bigshape.pt"), INVALID, "int64"),
        Attack("safetensors-dims-of-4299-digits", ("show", "bigdims.safetensors"), INVALID, "invalid shape"),
        Attack("onnx-negative-dim", ("show", "negdim.onnx"), INVALID, "invalid shape [-4]"),
        Attack("onnx-overflowing-dims", ("show", "overflow.onnx"), INVALID, "invalid shape"),
        Attack("ir-negative-dim", ("show", "ir_negdim.xml"), INVALID, "no valid shape"),
        Attack("ir-huge-dim", ("show", "ir_hugedim.xml"), INVALID, "no valid shape"),
    ]
    return b


def errors(d: Path) -> Built:
    """Items 10 and 11: a 24 MiB dict key in the one error line, ONNX attributes and external
    data fields of the wrong type, a folder nested past the recursion limit."""
    b = Built(d)
    torch.save({"k" * (24 << 20): 1}, d / "bigkey.pt")
    from onnx import helper

    onnx_bn(d / "eps_string.onnx", eps=helper.make_attribute("epsilon", "abc"))
    onnx_bn(d / "eps_tensor.onnx", eps=helper.make_attribute("epsilon", helper.make_tensor("t", 1, [1], [1.0])))
    onnx_bn(d / "momentum_floats.onnx", momentum=helper.make_attribute("momentum", [0.1, 0.2]))
    np.full(4, 1.0, np.float32).tofile(d / "w.bin")
    onnx_bn(d / "location_nul.onnx", external={"location": "w\0.bin"})
    onnx_bn(d / "offset_abc.onnx", external={"location": "w.bin", "offset": "abc"})
    onnx_bn(d / "length_hex.onnx", external={"location": "w.bin", "length": "0x10"})
    # Outside pytest's temporary folders: shutil.rmtree, which pytest uses to clean them up,
    # recurses too, and would fail on this folder in every later session.
    deep = Path(tempfile.mkdtemp(prefix="bninspect-deep-"))
    atexit.register(remove_tree, deep)
    here = os.getcwd()
    try:
        os.chdir(deep)
        for _ in range(1200):  # os.makedirs recurses too
            os.mkdir("d")
            os.chdir("d")
        shutil.copy(SAMPLE, "model.pt")
    finally:
        os.chdir(here)
    b.attacks += [
        Attack("error-line-of-a-24MiB-key", ("show", "bigkey.pt"), INVALID, "more characters]"),
        Attack("onnx-eps-a-string", ("show", "eps_string.onnx"), INVALID, "epsilon is of type STRING"),
        Attack("onnx-eps-a-tensor", ("show", "eps_tensor.onnx"), INVALID, "epsilon is of type TENSOR"),
        Attack("onnx-momentum-floats", ("check", "momentum_floats.onnx"), INVALID, "momentum is of type FLOATS"),
        Attack("onnx-location-with-nul", ("show", "location_nul.onnx"), INVALID, "not a file name"),
        Attack("onnx-offset-abc", ("show", "offset_abc.onnx"), INVALID, "offset 'abc' is not a byte count"),
        Attack("onnx-length-hex", ("show", "length_hex.onnx"), INVALID, "length '0x10' is not a byte count"),
        Attack("check-folder-deeper-than-the-recursion-limit", ("check", str(deep)), OK, "1 file"),
    ]
    return b


# Characters that act on a terminal or disguise a name: C1 CSI, bidi override and isolate,
# zero-width space and no-break space, line separator, a lone surrogate, ESC.
UNSAFE_NAMES = ["features.\x9b2J", "evil\u202eredli", "iso\u2066late", "zero\u200bwidth", "bom\ufeff",
                "line\u2028sep", "lone\ud800", "esc\x1b[31m"]


def terminal(d: Path) -> Built:
    """Item 12: names that could drive the terminal or read as other names are escaped in
    tables, concise lines, JSON and error lines; a non-UTF-8 file name too."""
    b = Built(d)
    header, data, offset = {}, b"", 0
    for name in UNSAFE_NAMES:
        for t in ("weight", "bias", "running_mean", "running_var"):
            header[f"{name}.{t}"] = {"dtype": "F32", "shape": [4], "data_offsets": [offset, offset + 16]}
            data += np.full(4, 1.0, np.float32).tobytes()
            offset += 16
    raw = json.dumps(header).encode()  # ensure_ascii: the header spells the lone surrogate \ud800
    (d / "names.safetensors").write_bytes(safetensors_bytes(raw, data))
    os.symlink(os.fsencode(SAMPLE), os.path.join(os.fsencode(d), b"raw\x9b2J\xe2\x80\xae.pt"))
    b.attacks += [
        Attack("names-in-the-table", ("show", "names.safetensors"), OK, "\\x9b2J"),
        Attack("names-in-json", ("show", "--json", "names.safetensors"), OK, "\\u009b"),
        Attack("names-in-concise-findings", ("check", "--format", "concise", "names.safetensors"), (OK, FINDINGS), ""),
        Attack("names-in-explain", ("explain", "names.safetensors", "evil\u202eredli"), OK, "evil\\u202eredli"),
        Attack("non-utf8-file-name", ("show", b"raw\x9b2J\xe2\x80\xae.pt"), OK, "raw\\udc9b2J\\u202e.pt"),
        Attack("non-utf8-file-name-in-an-error", ("show", b"raw\x9b2J\xe2\x80\xae.missing"), PATH,
               "raw\\udc9b2J\\u202e.missing"),
    ]
    return b


def warnings_(d: Path) -> Built:
    """Item 13 and issue 16 item 11: no library warning on stderr (complex statistics, read-only
    buffers of an ONNX model's weights reaching torch)."""
    from tests.exports import export_onnx, sample_model

    b = Built(d)
    sd = {"bn.weight": torch.ones(4), "bn.bias": torch.zeros(4), "bn.running_mean": torch.zeros(4),
          "bn.running_var": torch.ones(4, dtype=torch.complex64), "bn.num_batches_tracked": torch.tensor(3)}
    torch.save(sd, d / "complex.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(sample_model(), d / "model.onnx", fold=False)
        import onnx

        model = onnx.load(str(d / "model.onnx"))
        onnx.save_model(model, str(d / "external.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="external.data", size_threshold=0)
    b.attacks += [
        Attack("complex-statistics-show", ("show", "complex.pt"), OK, "not listed as a BatchNorm layer"),
        Attack("complex-statistics-check", ("check", "complex.pt"), OK, "BN003"),  # named as no BatchNorm (info)
        Attack("verify-onnx", ("verify", "model.onnx"), (OK, FINDINGS), "layers passed"),
        Attack("verify-onnx-external-data", ("verify", "external.onnx"), (OK, FINDINGS), "layers passed"),
    ]
    return b


BUILDERS = {"companions": companions, "outputs": outputs, "zips": zips, "expansion": expansion,
            "torchscript": torchscript, "bigints": bigints, "errors": errors, "terminal": terminal,
            "warnings": warnings_}
