"""Build the hardening corpus: hostile, broken and strange inputs, each with the answer bninspect owes.

Deterministic (fixed seeds, no clock): ``build_corpus(folder)`` writes every case into
``folder`` and returns the list of :class:`Case`; nothing large is committed, the 10,000-layer
file and friends are generated here at test time. Run it by hand to look at the files:

    python tests/hardening/make_corpus.py /tmp/corpus      # writes the files, prints the table

Every hostile payload is live: loaded the way an attacker hopes (``torch.load(weights_only=False)``,
``torch.jit.load``) it creates a file ``PWNED-<case>`` in the working directory of the load. ``test_corpus`` proves
that for each payload and then that no bninspect command ever creates one.
"""

from __future__ import annotations

import _osx_support
import builtins
import functools
import hashlib
import io
import json
import math
import os
import pickle
import random
import runpy
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: make `tests.formats.craft` importable
    sys.path.insert(0, str(ROOT))

from tests.formats.craft import (  # noqa: E402  (after the sys.path fix above)
    Storage,
    Tensor,
    dumps,
    record_offset,
    rewrite_zip,
    safetensors_bytes,
    trained_net,
    write_zip,
)

MARKER_PREFIX = "PWNED-"

# Exit codes (bninspect/errors.py); repeated here so a changed code fails the corpus loudly.
OK, UNSAFE, INVALID, PATH = 0, 3, 4, 5


@dataclass(frozen=True)
class Case:
    """One corpus input and what every command must answer for it.

    ``code`` is the exit code; ``needle`` must appear in the one stderr line (failures) or on
    stdout (code 0). ``payload`` marks files whose trusted load creates ``PWNED-<name>``.
    ``xfail`` names a known bug (file:function) that keeps this case from passing today.
    """

    name: str
    path: str
    code: int
    needle: str = ""
    group: str = ""
    strict: bool = False
    payload: str = ""  # "" | "pickle" (torch.load weights_only=False) | "torchscript" (torch.jit.load)
    skip: str = ""
    xfail: str = ""
    extra: tuple[str, ...] = field(default_factory=tuple)

    @property
    def marker(self) -> str:
        """The file this case's payload creates, relative to the working directory of the load."""
        return marker_name(self.name)


def marker_name(case: str) -> str:
    """Payload markers are relative paths, so a load run from another folder leaves its marker there."""
    return f"{MARKER_PREFIX}{case}"


# -- payloads: each unpickles as a call of a real callable, so a real unpickler would make it ---

class Call:
    """Pickles as ``func(*args)`` (``__reduce__``): the way an attacker builds a payload."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def _touch_code(marker: str) -> str:
    return f"open({marker!r}, 'w').write('ran')"


def exec_payload(marker: str) -> Call:
    """builtins.exec of a line that writes the marker."""
    return Call(builtins.exec, _touch_code(marker))


def eval_payload(marker: str) -> Call:
    """builtins.eval: deny-lists often name exec and forget eval."""
    return Call(builtins.eval, f"__import__('pathlib').Path({marker!r}).write_text('ran')")


def run_code_payload(marker: str) -> Call:
    """runpy._run_code: exec by another name."""
    return Call(runpy._run_code, _touch_code(marker), {})


def popen_payload(marker: str) -> Call:
    """subprocess.Popen: starts a process."""
    return Call(subprocess.Popen, ["touch", marker])


def system_payload(marker: str) -> Call:
    """os.system (pickled as posix.system)."""
    return Call(os.system, f"touch {marker!r}")


def partial_payload(marker: str) -> Call:
    """The callable is a functools.partial object: the dangerous function hides in its state."""
    return Call(functools.partial(os.system, f"touch {marker!r}"))


def torch_load_payload(other: Path) -> Call:
    """torch.load(other, weights_only=False) of a second hostile file: the loader as a gadget."""
    return Call(functools.partial(torch.load, weights_only=False), str(other))


def _getattr_pickle(marker: str) -> bytes:
    """getattr(__import__('os'), 'system')('touch MARKER'), hand-written (protocol 2 header)."""
    cmd = f"touch {marker}".encode()
    return (b"\x80\x02cbuiltins\ngetattr\n(cbuiltins\n__import__\n(S'os'\ntRS'system'\ntR(S'" + cmd
            + b"'\ntR.")


def _attrgetter_pickle(marker: str) -> bytes:
    """operator.attrgetter('system')(__import__('os'))('touch MARKER'), hand-written."""
    cmd = f"touch {marker}".encode()
    return (b"\x80\x02coperator\nattrgetter\n(S'system'\ntR(cbuiltins\n__import__\n(S'os'\ntRtR(S'" + cmd
            + b"'\ntR.")


def _object_array(payload) -> np.ndarray:
    """A numpy object array holding the payload: pickles through numpy's _reconstruct."""
    arr = np.empty(1, dtype=object)
    arr[0] = payload
    return arr


# -- helpers -------------------------------------------------------------------------------------

def _state_dict() -> "OrderedDict[str, torch.Tensor]":
    """A real state dict with trained BN statistics (conv → BN ×3, as tests/formats/craft builds)."""
    return trained_net().state_dict()


def _lightning(payload, sd=None) -> dict:
    """A Lightning-style checkpoint with a real state dict; the payload sits deep in callbacks."""
    sd = _state_dict() if sd is None else sd
    return {
        "epoch": 7,
        "global_step": 700,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": OrderedDict((f"model.{k}", v) for k, v in sd.items()),
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}],
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": payload}},
        "hyper_parameters": {"lr": 0.1},
    }


def _save(obj, path: Path, protocol: int = 2, legacy: bool = False) -> Path:
    torch.save(obj, path, pickle_protocol=protocol, _use_new_zipfile_serialization=not legacy)
    return path


def _replace_data_pkl(src: Path, dst: Path, data_pkl: bytes | None) -> Path:
    """A copy of a real archive with data.pkl replaced (None: removed); records stay intact."""
    return rewrite_zip(src, dst, lambda name, data: (data_pkl if name.endswith("/data.pkl") else data))


def _st_entry(dtype: str, shape: list, begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def _bn_header(c: int = 4) -> tuple[dict, bytes]:
    """A valid safetensors header for conv + BN of width c, and its data area."""
    header, data, off = {}, b"", 0
    for name, shape in (("conv.weight", [c, 3, 1, 1]), ("bn.weight", [c]), ("bn.bias", [c]),
                        ("bn.running_mean", [c]), ("bn.running_var", [c])):
        n = int(np.prod(shape)) * 4
        header[name] = _st_entry("F32", shape, off, off + n)
        data += np.full(int(np.prod(shape)), 0.5, dtype="<f4").tobytes()
        off += n
    return header, data


def _scripted_with_payload(marker: str, path: Path) -> Path:
    """A TorchScript archive whose Hook.__setstate__ creates the marker when torch.jit.load runs it.

    ``torch.from_file(path, shared=True)`` creates the file; the result is stored so TorchScript
    does not drop the call as dead code.
    """
    from typing import Tuple

    class Hook(nn.Module):
        def __init__(self, target: str) -> None:
            super().__init__()
            self.target = target
            self.touched = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

        @torch.jit.export
        def __getstate__(self) -> Tuple[str, bool]:
            return (self.target, self.training)

        @torch.jit.export
        def __setstate__(self, state: Tuple[str, bool]) -> None:
            self.target = state[0]
            self.training = state[1]
            self.touched = torch.from_file(self.target, True, 1).numel()

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.bn = nn.BatchNorm2d(4)
            self.hook = Hook(marker)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.hook(self.bn(self.conv(x)))

    torch.jit.save(torch.jit.script(Net().eval()), str(path))
    return path


# -- the corpus ----------------------------------------------------------------------------------

def _hostile(d: Path) -> list[Case]:
    cases: list[Case] = []

    def add(name: str, filename: str, needle: str, payload: str = "pickle", **kw) -> None:
        cases.append(Case(name, filename, UNSAFE, needle, group="unsafe", payload=payload, **kw))

    m = marker_name
    sd = _state_dict()
    for proto in (2, 4):
        _save({**sd, "extra": exec_payload(m(f"zip_exec_p{proto}"))}, d / f"zip_exec_p{proto}.pt", proto)
        add(f"zip_exec_p{proto}", f"zip_exec_p{proto}.pt", "builtins.exec")
        _save({**sd, "extra": exec_payload(m(f"legacy_exec_p{proto}"))}, d / f"legacy_exec_p{proto}.pt", proto, legacy=True)
        add(f"legacy_exec_p{proto}", f"legacy_exec_p{proto}.pt", "builtins.exec")
    _save(_lightning(exec_payload(m("lightning_exec"))), d / "lightning_exec.ckpt")
    add("lightning_exec", "lightning_exec.ckpt", "builtins.exec")
    _save(_lightning(system_payload(m("lightning_legacy_system"))), d / "lightning_legacy_system.ckpt", 4, legacy=True)
    add("lightning_legacy_system", "lightning_legacy_system.ckpt", "posix.system")
    _save({**sd, "x": eval_payload(m("zip_eval"))}, d / "zip_eval.pt")
    add("zip_eval", "zip_eval.pt", "builtins.eval")
    _save({**sd, "x": run_code_payload(m("zip_runpy"))}, d / "zip_runpy.pt", 4)
    add("zip_runpy", "zip_runpy.pt", "runpy._run_code")
    _save({**sd, "x": popen_payload(m("zip_popen"))}, d / "zip_popen.pt")
    add("zip_popen", "zip_popen.pt", "subprocess.Popen")
    _save({**sd, "x": system_payload(m("zip_os_system"))}, d / "zip_os_system.pt", 4)
    add("zip_os_system", "zip_os_system.pt", "posix.system")
    _save({**sd, "x": partial_payload(m("zip_partial"))}, d / "zip_partial.pt", 4)
    add("zip_partial", "zip_partial.pt", "functools.partial")
    _save({**sd, "x": _object_array(exec_payload(m("zip_numpy_reconstruct")))}, d / "zip_numpy_reconstruct.pt", 2)
    add("zip_numpy_reconstruct", "zip_numpy_reconstruct.pt", "builtins.exec")
    # torch.load as the gadget: the outer file loads an inner hostile file with weights_only=False.
    inner = _save(exec_payload(m("zip_torch_load")), d / "inner_payload.bin")
    _save({**sd, "x": torch_load_payload(inner)}, d / "zip_torch_load.pt", 4)
    add("zip_torch_load", "zip_torch_load.pt", "torch.serialization.load")
    # Hand-written data.pkl inside a real torch.save layout (records, version, byteorder intact).
    real = _save(sd, d / "_real.pt")
    _replace_data_pkl(real, d / "crafted_getattr.pt", _getattr_pickle(m("crafted_getattr")))
    add("crafted_getattr", "crafted_getattr.pt", "builtins.getattr")
    _replace_data_pkl(real, d / "crafted_attrgetter.pt", _attrgetter_pickle(m("crafted_attrgetter")))
    add("crafted_attrgetter", "crafted_attrgetter.pt", "operator.attrgetter")
    real.unlink()
    # TorchScript: code that would run on torch.jit.load is never run; the weights are still read.
    _scripted_with_payload(m("ts_setstate"), d / "ts_setstate.ts")
    cases.append(Case("ts_setstate", "ts_setstate.ts", OK, "TorchScript archive", group="unsafe", payload="torchscript"))
    # A TorchScript archive whose data.pkl imports builtins.exec: the __torch__ allowance is no loophole.
    real_ts = _scripted_with_payload("unused", d / "_real.ts")
    _replace_data_pkl(real_ts, d / "ts_exec.ts", dumps({"x": exec_payload(m("ts_exec"))}, protocol=2))
    real_ts.unlink()
    add("ts_exec", "ts_exec.ts", "builtins.exec", payload="")
    # One case per family of calls the verdict refuses (issue 14), live wherever a payload can be
    # made harmless to prove (a marker file); the rest are hand-written pickles, read never run.
    live = {
        "zip_compile": (Call(builtins.exec, Call(builtins.compile, _touch_code(m("zip_compile")), "<x>", "exec")),
                        "builtins.compile"),
        "zip_open": (Call(builtins.open, m("zip_open"), "w"), "io.open"),  # builtins.open is io.open
        "zip_pickle_loads": (Call(pickle.loads, pickle.dumps(exec_payload(m("zip_pickle_loads")), protocol=2)),
                             "_pickle.loads"),
        "zip_shutil": (Call(shutil.copyfile, os.devnull, m("zip_shutil")), "shutil.copyfile"),
        "zip_osx_support": (Call(_osx_support._read_output, f"touch {m('zip_osx_support')}"), "_osx_support._read_output"),
        "zip_check_output": (Call(subprocess.check_output, ["touch", m("zip_check_output")]), "subprocess.check_output"),
    }
    for name, (payload, needle) in live.items():
        _save({**sd, "x": payload}, d / f"{name}.pt", 4)
        add(name, f"{name}.pt", needle)
    inner_ts = _scripted_with_payload(m("zip_jit_load"), d / "inner_payload.ts")
    _save({**sd, "x": Call(torch.jit.load, str(inner_ts))}, d / "zip_jit_load.pt", 4)
    add("zip_jit_load", "zip_jit_load.pt", "torch.jit._serialization.load")
    real = _save(sd, d / "_real.pt")
    cmd = f"touch {m('crafted_importlib')}".encode()
    importlib_pickle = (b"\x80\x02cbuiltins\ngetattr\n(cimportlib\nimport_module\n(S'os'\ntRS'system'\ntR(S'" + cmd
                        + b"'\ntR.")
    _replace_data_pkl(real, d / "crafted_importlib.pt", importlib_pickle)
    add("crafted_importlib", "crafted_importlib.pt", "importlib.import_module")
    for module, name in (("pty", "spawn"), ("socket", "create_connection"), ("webbrowser", "open"), ("nt", "system")):
        crafted = b"\x80\x02c" + f"{module}\n{name}\n(S'x'\ntR.".encode()
        _replace_data_pkl(real, d / f"crafted_{module}.pt", crafted)
        add(f"crafted_{module}", f"crafted_{module}.pt", f"{module}.{name}", payload="")
    real.unlink()
    # A function nobody reviewed: not known to be harmful, still refused by the reading commands.
    _save({**sd, "x": Call(math.sqrt, 2.0)}, d / "zip_unreviewed.pt")
    add("zip_unreviewed", "zip_unreviewed.pt", "math.sqrt", payload="")
    # TorchScript code that calls an operator from a library outside torch: read as text, named.
    real_ts = _scripted_with_payload("unused", d / "_real.ts")
    _replace_code = (lambda name, data: data.replace(b"torch.from_file(", b"ops.myops.evil(")
                     if name.endswith(".py") and b"torch.from_file(" in data else data)
    rewrite_zip(real_ts, d / "ts_custom_op.ts", _replace_code)
    real_ts.unlink()
    cases.append(Case("ts_custom_op", "ts_custom_op.ts", OK, "myops::evil", group="unsafe"))
    # Legacy format with the payload in the trailing storage-keys pickle (after the object).
    legacy = _save(sd, d / "_legacy.pt", 2, legacy=True).read_bytes()
    keys_at = legacy.rfind(b"\x80\x02]")  # the storage-key list is the last pickle before raw bytes
    evil_keys = pickle.dumps([exec_payload(m("legacy_tail_exec"))], protocol=2)
    end = legacy.index(b".", keys_at) + 1
    (d / "legacy_tail_exec.pt").write_bytes(legacy[:keys_at] + evil_keys + legacy[end:])
    (d / "_legacy.pt").unlink()
    # (A bug found here, fixed in formats/legacy.py: the static scan stopped after the 4th pickle.)
    cases.append(Case("legacy_tail_exec", "legacy_tail_exec.pt", UNSAFE, "builtins.exec", group="unsafe",
                      payload="pickle"))
    return cases


def _invalid(d: Path) -> list[Case]:
    cases: list[Case] = []
    rng = random.Random(20261123)

    def add(name: str, filename: str, data: bytes | None, needle: str, code: int = INVALID, **kw) -> None:
        if data is not None:
            (d / filename).write_bytes(data)
        cases.append(Case(name, filename, code, needle, group="invalid", **kw))

    add("empty", "empty.pt", b"", "the file is empty")
    add("random_bytes", "random.pt", bytes(rng.getrandbits(8) for _ in range(4096)), "unrecognised binary data")
    add("text", "notes.pt", b"this is not a checkpoint\n" * 20, "text file")
    add("json", "config.pt", json.dumps({"model": "resnet", "layers": [1, 2]}).encode(), "JSON")
    add("png", "image.pt", b"\x89PNG\r\n\x1a\n" + bytes(64), "PNG")
    add("plain_pickle", "plain.pkl", pickle.dumps({"a": [1, 2, 3]}, protocol=4), "plain Python pickle")
    add("lfs_pointer", "lfs.pt", b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n", "git lfs pull")
    real = _save(_state_dict(), d / "_real.pt")
    raw = real.read_bytes()
    add("truncated_zip", "truncated.pt", raw[: len(raw) // 2], "truncated or corrupt zip")
    add("zip_head_only", "zip_head.pt", raw[:40], "truncated or corrupt zip")
    _replace_data_pkl(real, d / "corrupt_data_pkl.pt", b"\x80\x02}q\x00(X\x01\x00\x00\x00a\xff\xfe garbage")
    cases.append(Case("corrupt_data_pkl", "corrupt_data_pkl.pt", INVALID, "data.pkl", group="invalid"))
    # A pickle bomb: 40 MiB of EMPTY_LIST (each ~64 bytes of objects once unpickled) deflated
    # to ~40 KB. torch never compresses data.pkl; a compressed one is held to 32 MiB.
    with zipfile.ZipFile(real) as zin, zipfile.ZipFile(d / "deflated_pickle_bomb.pt", "w") as zout:
        for info in zin.infolist():
            if info.filename.endswith("/data.pkl"):
                zout.writestr(info.filename, b"\x80\x02" + b"]" * (40 << 20) + b".", compress_type=zipfile.ZIP_DEFLATED)
            else:
                zout.writestr(info.filename, zin.read(info))
    cases.append(Case("deflated_pickle_bomb", "deflated_pickle_bomb.pt", INVALID, "compressed data.pkl claims",
                      group="invalid"))
    _replace_data_pkl(real, d / "no_data_pkl.pt", None)
    cases.append(Case("missing_data_pkl", "no_data_pkl.pt", INVALID, "without data.pkl", group="invalid"))
    # A record four bytes shorter than the storage the pickle describes.
    rewrite_zip(real, d / "short_record.pt", lambda n, data: data[:-4] if n.endswith("/data/1") else data)
    cases.append(Case("record_smaller_than_pickle", "short_record.pt", INVALID, "truncated or corrupt", group="invalid"))
    rewrite_zip(real, d / "missing_record.pt", lambda n, data: None if n.endswith("/data/1") else data)
    cases.append(Case("missing_record", "missing_record.pt", INVALID, "missing from the archive", group="invalid"))
    # data.pkl's CRC broken: unreadable with or without --strict.
    off, _ = record_offset(real, "data.pkl")
    bad = bytearray(raw)
    bad[off + 5] ^= 0x01
    add("data_pkl_bad_crc", "data_pkl_crc.pt", bytes(bad), "data.pkl")
    # A BN record's bytes altered, CRC left stale: accepted without --strict, refused with it.
    off, size = record_offset(real, "/data/2")
    bad = bytearray(raw)
    bad[off + size - 1] ^= 0x40
    (d / "record_bad_crc.pt").write_bytes(bytes(bad))
    cases.append(Case("record_bad_crc", "record_bad_crc.pt", OK, "BatchNorm", group="invalid"))
    cases.append(Case("record_bad_crc_strict", "record_bad_crc.pt", INVALID, "CRC", group="invalid", strict=True))
    # A view that reaches past its storage (a record of 4 floats viewed as 8).
    pkl = dumps({"bn.running_mean": Tensor(Storage("0", 4), 0, (8,), (1,)),
                 "bn.running_var": Tensor(Storage("1", 4), 0, (4,), (1,))})
    write_zip(d / "view_past_storage.pt", pkl, {"0": bytes(16), "1": bytes(16)})
    cases.append(Case("view_past_storage", "view_past_storage.pt", INVALID, "reaches element", group="invalid"))
    # The pre-0.4 tar-based torch.save format.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for member in ("sys_info", "pickle", "tensors", "storages"):
            info = tarfile.TarInfo(member)
            info.size = 4
            tf.addfile(info, io.BytesIO(b"\x80\x02N."))
    add("old_tar_format", "old_tar.pt", buf.getvalue(), "tar archive")
    # Legacy format cut in the middle of its pickles.
    legacy = _save(_state_dict(), d / "_legacy.pt", 2, legacy=True).read_bytes()
    (d / "_legacy.pt").unlink()
    add("legacy_truncated", "legacy_truncated.pt", legacy[:300], "legacy torch.save file")
    real.unlink()

    # safetensors
    header, data = _bn_header()
    ok = safetensors_bytes(header, data)
    add("st_absurd_header_length", "absurd.safetensors", struct.pack("<Q", 1 << 60) + b'{"a":1}' + bytes(32),
        "not a checkpoint")
    add("st_header_past_eof", "past_eof.safetensors", safetensors_bytes(header, b"", length=50_000), "past the end")
    add("st_header_not_json", "not_json.safetensors", safetensors_bytes(b'{"bn.weight": {dtype: F32}', data), "not valid JSON")
    add("st_header_not_utf8", "not_utf8.safetensors", safetensors_bytes(b'{"bn\xff\xfe": 1}', data), "UTF-8")
    add("st_header_not_object", "list.safetensors", safetensors_bytes(b'{"a": [1, 2]}', data), "not an object")
    over = {**header, "bn.running_var": _st_entry("F32", [4], 8, 24)}
    add("st_overlapping_offsets", "overlap.safetensors", safetensors_bytes(over, data), "overlaps")
    out = {**header, "bn.running_var": _st_entry("F32", [4], len(data), len(data) + 16)}
    add("st_offsets_out_of_range", "out_of_range.safetensors", safetensors_bytes(out, data), "ends at byte")
    neg = {**header, "bn.running_var": _st_entry("F32", [4], -16, 0)}
    add("st_negative_offsets", "negative.safetensors", safetensors_bytes(neg, data), "invalid data_offsets")
    mis = {**header, "bn.running_var": _st_entry("F64", [4], header["bn.running_var"]["data_offsets"][0],
                                                 header["bn.running_var"]["data_offsets"][1])}
    add("st_dtype_length_mismatch", "dtype_mismatch.safetensors", safetensors_bytes(mis, data), "needs 32 bytes")
    shp = {**header, "bn.running_var": {**header["bn.running_var"], "shape": [5]}}
    add("st_shape_length_mismatch", "shape_mismatch.safetensors", safetensors_bytes(shp, data), "needs 20 bytes")
    add("st_truncated_data", "truncated.safetensors", safetensors_bytes(header, data[:-8]), "truncated")
    huge = {**header, "bn.running_var": {**header["bn.running_var"], "shape": [2**62, 2**62, 2**62]}}
    add("st_shape_overflow", "overflow.safetensors", safetensors_bytes(huge, data), "invalid shape")
    add("st_unknown_dtype", "dtype.safetensors",
        safetensors_bytes({**header, "bn.running_var": {**header["bn.running_var"], "dtype": "F128"}}, data),
        "unknown dtype")
    # (Found by test_fuzz, fixed in formats/safetensors.py: an unhashable dtype raised TypeError.)
    add("st_dtype_unhashable", "dtype_list.safetensors",
        safetensors_bytes({**header, "bn.running_var": {**header["bn.running_var"], "dtype": []}}, data),
        "unknown dtype")
    add("st_no_tensors", "no_tensors.safetensors", safetensors_bytes({"__metadata__": {"format": "pt"}}),
        "No BatchNorm layers", code=OK)
    dup_text = json.dumps(header)[:-1] + ', "bn.weight": ' + json.dumps(header["bn.weight"]) + "}"
    add("st_duplicate_keys", "duplicate.safetensors", safetensors_bytes(dup_text.encode(), data), "BatchNorm", code=OK)
    add("st_duplicate_keys_strict", "duplicate.safetensors", None, "twice", strict=True)
    (d / "ok.safetensors").write_bytes(ok)
    return cases


def _paths(d: Path) -> list[Case]:
    cases: list[Case] = []

    def add(name: str, filename: str, needle: str, **kw) -> None:
        cases.append(Case(name, filename, PATH, needle, group="path", **kw))

    add("missing", "does_not_exist.pt", "no such file")
    (d / "a_directory.pt").mkdir()
    add("directory", "a_directory.pt", "is a directory")
    os.mkfifo(d / "fifo.pt")
    add("fifo", "fifo.pt", "FIFO")
    add("char_device", "/dev/zero", "character device")
    os.symlink("loop_b.pt", d / "loop_a.pt")
    os.symlink("loop_a.pt", d / "loop_b.pt")
    add("symlink_loop", "loop_a.pt", "symlink loop")
    os.symlink("nowhere.pt", d / "dangling.pt")
    add("dangling_symlink", "dangling.pt", "dangling symlink")
    (d / "not_a_dir").write_bytes(b"x")
    add("parent_not_a_directory", "not_a_dir/model.pt", "not a directory")
    unreadable = d / "unreadable.pt"
    unreadable.write_bytes(b"PK\x03\x04")
    unreadable.chmod(0)
    # Root reads any file whatever its mode (CAP_DAC_OVERRIDE), and so would a payload: nothing to test.
    add("unreadable", "unreadable.pt", "permission denied",
        skip="running as root, which reads files whatever their permission bits" if os.geteuid() == 0 else "")
    # Names a terminal would act on: a newline must not split the error line, escapes must not reach the tty.
    (d / "evil\nname\x1b[31m.pt").write_bytes(b"not a checkpoint")
    cases.append(Case("name_newline_escape", "evil\nname\x1b[31m.pt", INVALID, "evil", group="path"))
    # ("/" cannot be in a file name, so no "[/]" here; the layer-name case has it.)
    (d / "[bold red]x[blink].pt").write_bytes(b"not a checkpoint")
    cases.append(Case("name_rich_markup", "[bold red]x[blink].pt", INVALID, "[bold red]x[blink].pt", group="path"))
    return cases


def _strange(d: Path) -> list[Case]:
    cases: list[Case] = []

    def add(name: str, filename: str, code: int, needle: str, **kw) -> None:
        cases.append(Case(name, filename, code, needle, group="strange", **kw))

    sd = _state_dict()
    zero = OrderedDict(sd)
    zero["bn.running_mean"] = torch.tensor(0.5)
    zero["bn.running_var"] = torch.tensor(1.5)
    _save(zero, d / "zero_dim.pt")
    # The user must learn that bn's statistics are malformed, not that bn has none (a bug fixed in
    # layers.py:discover, which called these "possible BatchNorm ... no running statistics").
    add("zero_dim_bn", "zero_dim.pt", OK, "running_mean is a 0-dim tensor, running_var is a 0-dim tensor")
    mism = OrderedDict(sd)
    mism["bn.running_mean"] = torch.zeros(7)
    _save(mism, d / "mismatched.pt")
    add("mismatched_bn", "mismatched.pt", OK, "running_mean [7], running_var [8]")
    # Statistics of one length, weight of another: downstream math would broadcast 8 against 7.
    wmis = OrderedDict(sd)
    wmis["bn.running_mean"], wmis["bn.running_var"] = torch.zeros(7), torch.ones(7)
    _save(wmis, d / "weight_mismatch.pt")
    add("weight_mismatch_bn", "weight_mismatch.pt", OK, "weight [8], bias [8], running_mean [7]")
    # Stride-0 views claiming 10^12 elements over one stored float: never materialised. As a whole
    # BN layer (all four tensors [10^12]) the file is refused in one line; as a 2-D running_mean it is
    # a malformed BN, named; on a tensor show does not need, it is never read.
    ones = np.ones(24, dtype="<f4").tobytes()
    huge = Tensor(Storage("3", 1), 0, (10**12,), (0,))
    huge_2d = Tensor(Storage("3", 1), 0, (10**6, 10**6), (0, 0))
    variants = {
        "stride0_huge_bn": {f"bn.{n}": huge for n in ("weight", "bias", "running_mean", "running_var")},
        "stride0_huge_2d": {"bn.running_mean": huge_2d},
        "stride0_huge_other": {"head.weight": huge_2d},
    }
    for name, overrides in variants.items():
        tensors = {
            "conv.weight": Tensor(Storage("0", 8 * 3), 0, (8, 3, 1, 1), (3, 1, 1, 1)),
            "bn.weight": Tensor(Storage("1", 8), 0, (8,), (1,)),
            "bn.bias": Tensor(Storage("1", 8), 0, (8,), (1,)),
            "bn.running_mean": Tensor(Storage("1", 8), 0, (8,), (1,)),
            "bn.running_var": Tensor(Storage("3", 1), 0, (8,), (0,)),
            **overrides,
        }
        write_zip(d / f"{name}.pt", dumps(tensors), {"0": ones, "1": ones[:32], "3": ones[:4]})
    add("stride0_huge_bn", "stride0_huge_bn.pt", INVALID, "does not materialise")
    add("stride0_huge_2d", "stride0_huge_2d.pt", OK, "running_mean is a tensor of shape [1000000, 1000000]")
    add("stride0_huge_other", "stride0_huge_other.pt", OK, "1 BatchNorm layers")
    # (pickle itself recurses while writing, so the nesting is written as opcodes around a real data.pkl)
    real = _save(sd, d / "_real.pt")
    with zipfile.ZipFile(real) as zf:
        body = zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl")))
    assert body[:2] == b"\x80\x02" and body[-1:] == b"."
    body = body[2:-1]
    key = b"X\x05\x00\x00\x00model"
    _replace_data_pkl(real, d / "deep.pt", b"\x80\x02" + (b"}" + key) * 5000 + body + b"s" * 5000 + b".")
    add("deeply_nested", "deep.pt", INVALID, "nested more than 64 levels deep")
    _replace_data_pkl(real, d / "deep_list.pt", b"\x80\x02" + b"]" * 5000 + body + b"a" * 5000 + b".")
    add("deeply_nested_list", "deep_list.pt", INVALID, "")
    real.unlink()
    mixed = OrderedDict(sd)
    mixed.update({"bn.note": "a string", "bn.flag": True, "meta": {"epoch": 3, "names": ["a", None]}, "n": None,
                  "bn2.running_var_list": [1.0, 2.0]})
    _save(mixed, d / "non_tensor_values.pt")
    add("non_tensor_values", "non_tensor_values.pt", OK, "bn2")
    _save({"epoch": 3, "lr": 0.1, "names": ["a", "b"]}, d / "no_tensors.pt")
    add("no_tensors_at_all", "no_tensors.pt", INVALID, "tensor")
    norms = nn.Sequential(nn.Conv2d(3, 4, 1), nn.GroupNorm(2, 4), nn.LayerNorm(4))
    _save(norms.state_dict(), d / "no_bn.pt")
    add("no_batchnorm", "no_bn.pt", OK, "No BatchNorm")
    # Names that are rich markup or terminal escapes must be printed literally, never interpreted.
    evil = OrderedDict()
    for name in ("[bold red]alarm[/]", "[/]", "esc\x1b[2J\x1b[31mred", "new\nline"):
        evil[f"{name}.conv.weight"] = torch.ones(4, 3, 1, 1)
        for t in ("weight", "bias", "running_mean", "running_var"):
            evil[f"{name}.bn.{t}"] = torch.full((4,), 0.5)
        evil[f"{name}.bn.num_batches_tracked"] = torch.tensor(3)
    _save(evil, d / "markup_names.pt")
    add("markup_names", "markup_names.pt", OK, "[bold red]alarm[/]")
    many = _many_layers(10_000)
    (d / "many_layers.safetensors").write_bytes(many)
    add("ten_thousand_layers", "many_layers.safetensors", OK, "10000 BatchNorm layers", extra=("--limit", "5"))
    return cases


def _many_layers(n: int) -> bytes:
    """A safetensors file with n BN layers of 2 channels (written by hand: fast, fixed bytes)."""
    header: dict = {}
    off = 0
    for i in range(n):
        for t in ("weight", "bias", "running_mean", "running_var"):
            header[f"layers.{i}.bn.{t}"] = _st_entry("F32", [2], off, off + 8)
            off += 8
    values = np.tile(np.array([0.5, 1.5], dtype="<f4"), 4 * n).tobytes()
    return safetensors_bytes(header, values)


def _exported(d: Path) -> list[Case]:
    """ONNX and OpenVINO IR files (diff's other side): external data that escapes, truncation, entities."""
    cases: list[Case] = []
    try:
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:  # the onnx extra is not installed: nothing to read these with
        return cases
    inits = [numpy_helper.from_array(np.full(4, 0.5, dtype=np.float32), f"bn.{n}")
             for n in ("weight", "bias", "running_mean", "running_var")]
    # running_var's bytes "live" in /etc/passwd: reading it would leak a file as weights.
    var = inits[3]
    var.ClearField("raw_data")
    var.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "../../../../etc/passwd"), ("offset", "0"), ("length", "16")):
        entry = var.external_data.add()
        entry.key, entry.value = k, v
    node = helper.make_node("BatchNormalization", ["x", *[t.name for t in inits]], ["y"], name="bn")
    io_info = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4, 2, 2]) for n in ("x", "y")]
    graph = helper.make_graph([node], "g", io_info[:1], io_info[1:], inits)
    raw = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)]).SerializeToString()
    (d / "escape.onnx").write_bytes(raw)
    cases.append(Case("onnx_external_data_escape", "escape.onnx", INVALID, "outside the model's directory",
                      group="invalid"))
    (d / "truncated.onnx").write_bytes(raw[: len(raw) // 2])
    cases.append(Case("onnx_truncated", "truncated.onnx", INVALID, "not a valid ONNX model", group="invalid"))
    # Entity expansion ("billion laughs") in an IR: refused before any parser expands it.
    (d / "laughs.xml").write_text(
        '<?xml version="1.0"?>\n<!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>\n'
        '<net name="x" version="11"><layers><layer id="0" name="&b;" type="Parameter" version="opset1"/>'
        "</layers></net>\n")
    cases.append(Case("openvino_entities", "laughs.xml", INVALID, "laughs.xml", group="invalid"))
    return cases


def build_corpus(folder: Path) -> list[Case]:
    """Write every case into ``folder`` (which must exist and be empty) and return them."""
    folder = Path(folder)
    torch.manual_seed(0)
    return _hostile(folder) + _invalid(folder) + _exported(folder) + _paths(folder) + _strange(folder)


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder`` (links not followed): kind, and for files size, mtime_ns and sha256."""
    entries: dict[str, tuple] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                try:
                    digest = hashlib.sha256(path.read_bytes()).hexdigest()
                except PermissionError:  # the unreadable case when not root
                    digest = "unreadable"
                entries[str(path.relative_to(folder))] = ("file", st.st_size, st.st_mtime_ns, digest)
            else:
                entries[str(path.relative_to(folder))] = (stat.S_IFMT(st.st_mode), st.st_mtime_ns)
    return entries


def main() -> None:
    """Write the corpus to the folder given as the only argument and print one line per case."""
    folder = Path(sys.argv[1])
    folder.mkdir(parents=True, exist_ok=False)
    for case in build_corpus(folder):
        flags = " --strict" if case.strict else ""
        print(f"{case.group:8} {case.name:28} exit {case.code}  {case.path!r}{flags}  needle={case.needle!r}")


if __name__ == "__main__":
    main()
