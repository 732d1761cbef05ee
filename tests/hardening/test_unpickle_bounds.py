"""The static unpickler's bounds hold by construction (issue 15, items 1 and 5).

Each input is a few kilobytes to a few megabytes that a plain unpickler turns into a crash
(a tuple nested 200,000 deep hashed as a dict key: SIGSEGV on an 8 MiB stack) or gigabytes
(opcode floods). Through the installed command every one must end with the right exit code,
one stderr line, no traceback, under 2 GiB of peak memory and 30 s.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from tests.conftest import Run, bninspect_command
from tests.formats.craft import trained_net

# Every test here makes or reads its files with torch (the Python 3.10 job has none).
pytestmark = pytest.mark.torch

MAX_PEAK = 2 << 30
MAX_SECONDS = 30


def run_bounded(*args: str) -> tuple[Run, int, float]:
    """The command, its own peak resident memory (bytes, the kernel's accounting via wait4) and wall time."""
    start = time.monotonic()
    proc = subprocess.Popen([*bninspect_command(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "200"})
    with ThreadPoolExecutor(2) as pool:
        out, err = pool.submit(proc.stdout.read), pool.submit(proc.stderr.read)  # type: ignore[union-attr]
        _, status, usage = os.wait4(proc.pid, 0)
        stdout, stderr = out.result(), err.result()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    seconds = time.monotonic() - start
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    peak = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return Run(proc.returncode, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace")), peak, seconds


def _archive(path: Path, data_pkl: bytes, *, deflate: bool = False) -> Path:
    """A real torch.save archive whose data.pkl is replaced (deflated where a flood needs it)."""
    real = path.with_suffix(".real")
    torch.save(trained_net().state_dict(), real)
    with zipfile.ZipFile(real) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            if info.filename.endswith("/data.pkl"):
                zout.writestr(info.filename, data_pkl,
                              compress_type=zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED)
            else:
                zout.writestr(info, zin.read(info))
    real.unlink()
    return path


def _deep(depth: int) -> bytes:
    """Opcodes for a tuple nested ``depth`` deep: EMPTY_TUPLE, then TUPLE1 again and again."""
    return b")" + b"\x85" * depth


def _one_error(run: Run, code: int, needle: str) -> None:
    assert run.code == code, (run.code, run.err)
    assert "Traceback" not in run.out + run.err and "unexpected failure" not in run.err
    assert len(run.err.strip().splitlines()) == 1 and needle in run.err, run.err


@pytest.mark.parametrize("where", ["dict key", "set element", "frozenset element"])
def test_a_deeply_nested_key_is_read_without_a_crash(tmp_path, where):
    # {"x": {deep: 1}} beside nothing else: a valid pickle, no state dict in it.
    body = {"dict key": b"}" + _deep(200_000) + b"K\x01s",
            "set element": b"\x8f(" + _deep(200_000) + b"\x90",
            "frozenset element": b"(" + _deep(200_000) + b"\x91"}[where]
    pkl = b"\x80\x04}X\x01\x00\x00\x00x" + body + b"s."
    run, peak, seconds = run_bounded("show", str(_archive(tmp_path / "deep.pt", pkl)))
    _one_error(run, 4, "holds no state dict")
    assert peak < MAX_PEAK and seconds < MAX_SECONDS, (peak, seconds)


def test_a_small_pickle_nested_as_deep_as_its_size_loads_on_the_main_thread(tmp_path):
    # Pickles up to 32 KiB load without the big-stack thread: 32,000 levels are its worst case.
    from bninspect.formats.unpickler import INLINE_BYTES

    pkl = b"\x80\x04}" + _deep(INLINE_BYTES - 64) + b"K\x01s."
    assert len(pkl) <= INLINE_BYTES
    run, peak, seconds = run_bounded("show", str(_archive(tmp_path / "small_deep.pt", pkl)))
    _one_error(run, 4, "holds no state dict")


def test_a_deeply_nested_key_in_a_legacy_file(tmp_path):
    # The legacy format's third pickle (system information) replaced by a dict whose key is a
    # tuple 200,000 deep: the same unpickler reads every pickle of every format.
    path = tmp_path / "deep_legacy.pt"
    torch.save(trained_net().state_dict(), path, _use_new_zipfile_serialization=False)
    raw = path.read_bytes()
    ends, stream = [], io.BytesIO(raw)
    for _ in range(3):
        for _op, _arg, _pos in pickletools.genops(stream):
            pass
        ends.append(stream.tell())
    sys_info = b"\x80\x02}" + _deep(200_000) + b"K\x01sX\x0d\x00\x00\x00little_endian\x88s."
    path.write_bytes(raw[:ends[1]] + sys_info + raw[ends[2]:])
    run, peak, seconds = run_bounded("show", str(path))
    assert run.code == 0 and run.err == "" and "bn" in run.out, run.err
    assert peak < MAX_PEAK and seconds < MAX_SECONDS, (peak, seconds)


def test_nesting_deeper_than_the_memory_budget_stops_cleanly(tmp_path):
    # 12 million levels are 768 MB of tuples: past the unpickler's memory budget before any hash.
    pkl = b"\x80\x04}" + _deep(12_000_000) + b"K\x01s."
    run, peak, seconds = run_bounded("show", str(_archive(tmp_path / "deeper.pt", pkl, deflate=True)))
    _one_error(run, 4, "MiB of memory")
    assert peak < MAX_PEAK and seconds < MAX_SECONDS, (peak, seconds)


def test_nesting_just_inside_the_budget_is_hashed_on_a_big_enough_stack(tmp_path):
    # 3 million levels (144 MB of tuples) hashed as a dict key: a recursion of 192 MB in C.
    pkl = b"\x80\x04}" + _deep(3_000_000) + b"K\x01sX\x01\x00\x00\x00w" + b"K\x02s."
    run, peak, seconds = run_bounded("show", str(_archive(tmp_path / "deep3m.pt", pkl, deflate=True)))
    _one_error(run, 4, "holds no state dict")
    assert peak < MAX_PEAK and seconds < MAX_SECONDS, (peak, seconds)


@pytest.mark.parametrize("flood", ["EMPTY_SET", "EMPTY_DICT in the memo", "lists appended"])
def test_opcode_floods_stop_at_the_memory_budget(tmp_path, flood):
    unit = {"EMPTY_SET": b"\x8f", "EMPTY_DICT in the memo": b"}\x940", "lists appended": b"]a"}[flood]
    head = b"\x80\x04" + (b"]" if flood == "lists appended" else b"")
    pkl = head + unit * ((24 << 20) // len(unit)) + b"."
    run, peak, seconds = run_bounded("show", str(_archive(tmp_path / "flood.pt", pkl, deflate=True)))
    _one_error(run, 4, "MiB of memory")
    assert peak < MAX_PEAK and seconds < MAX_SECONDS, (peak, seconds)


def test_repeated_references_cannot_multiply_what_stand_ins_build(tmp_path):
    # A 1 MiB string in the memo, encoded to bytes by _codecs.encode 2,000 times: 2 GiB of bytes
    # from 20 KB of opcodes.
    text = pickle.dumps("a" * (1 << 20), protocol=2)[2:-1]  # the string's opcodes, without PROTO/STOP
    # encode → memo 1; (text, "latin1") → memo 2; then 2,000 × (BINGET 1, BINGET 2, REDUCE, POP).
    pkl = (b"\x80\x02c_codecs\nencode\nq\x01" + text + b"X\x06\x00\x00\x00latin1\x86q\x02"
           + b"h\x01h\x02R0" * 2000 + b"N.")
    run, peak, seconds = run_bounded("show", str(_archive(tmp_path / "encode.pt", pkl)))
    _one_error(run, 4, "builds more than")
    assert peak < MAX_PEAK and seconds < MAX_SECONDS, (peak, seconds)
