"""The fast central-directory reader: zipfile's members where it accepts, None where zipfile must read.

``zipdir`` is a security boundary beside zipfile: for every archive it accepts, its members
and its reads must be zipfile's; every archive outside its plain profile goes to zipfile.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zipfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bninspect.errors import InvalidFileError
from bninspect.formats import open_checkpoint, torchzip, zipdir
from bninspect.formats.paths import SharedFile
from tests.formats.craft import trained_net

# Every test here needs torch (the Python 3.10 job of .ci/run runs without it).
pytestmark = pytest.mark.torch

ZIP_ERRORS = torchzip.ZIP_ERRORS


def _torch_archive() -> bytes:
    buf = io.BytesIO()
    torch.save({"state_dict": trained_net().state_dict(), "epoch": 1}, buf)
    return buf.getvalue()


def _python_archive(**kw) -> bytes:
    """An archive written by Python's zipfile (no zip64 end record unless forced)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", **kw) as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/données/0", bytes(range(16)))
    return buf.getvalue()


TORCH = _torch_archive()


def _open(data: bytes, tmp_path) -> tuple[int, int]:
    path = tmp_path / "a.zip"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    return fd, len(data)


def _same_as_zipfile(data: bytes, tmp_path) -> dict | None:
    """zipdir's members, after checking them (and every read) against zipfile's; None where it declines."""
    fd, size = _open(data, tmp_path)
    reader = zipdir.MemberReader(SharedFile(str(tmp_path / "a.zip"), fd), size)
    members = zipdir.directory(fd, size)
    if members is None:
        return None
    with zipfile.ZipFile(io.BytesIO(data)) as zf:  # zipfile must open what zipdir accepts
        assert list(members) == zf.namelist()
        for name, member in members.items():
            info = zf.getinfo(name)
            assert member == (info.filename, info.header_offset, info.file_size, info.CRC, info.compress_type,
                              info.compress_size, info.flag_bits)
            try:
                expected = zf.read(info)
            except ZIP_ERRORS:
                expected = None
            try:
                got = reader.read(member, crc=True)
            except InvalidFileError:
                got = None
                # zipfile takes the method and the encryption flag from the central directory and
                # never looks at the local header's; bninspect refuses a member whose local header
                # says otherwise (another method, or encrypted).
                if expected is not None:
                    flags, method = struct.unpack_from("<HH", data, member.header_offset + 6)
                    if method != member.compress_type or (flags & 0b1100001) != (member.flag_bits & 0b1100001):
                        continue
            assert got == expected, name
    return members


def test_torch_archives_are_read_by_zipdir(tmp_path):
    members = _same_as_zipfile(TORCH, tmp_path)
    assert members is not None and any(n.endswith("/data.pkl") for n in members)


def test_torch_save_is_opened_without_zipfile(tmp_path, monkeypatch):
    path = tmp_path / "net.pt"
    path.write_bytes(TORCH)
    reference = open_checkpoint(path)
    monkeypatch.setattr(torchzip.zipfile, "ZipFile", None)  # any use of zipfile's reader would fail
    ckpt = open_checkpoint(path)
    assert list(ckpt.tensors) == list(reference.tensors)
    for name, ref in ckpt.tensors.items():
        assert (ref.numpy() == reference.tensors[name].numpy()).all()


def test_python_written_archives_are_read_by_zipdir(tmp_path):
    assert _same_as_zipfile(_python_archive(), tmp_path) is not None


def _comment(data: bytes) -> bytes:
    return data[:-2] + struct.pack("<H", 4) + b"note"


def _rename(data: bytes, old: bytes, new: bytes) -> bytes:
    assert len(old) == len(new)
    return data.replace(old, new)


DECLINED = {
    "comment": lambda: _comment(_python_archive()),
    "prepended data": lambda: b"#!/bin/sh\n" + _python_archive(),
    "deflated": lambda: _python_archive(compression=zipfile.ZIP_DEFLATED),
    "extra fields": lambda: _with_extra(),
    "duplicate names": lambda: _duplicate(),
    "NUL in a name": lambda: _rename(_python_archive(), b"archive/byteorder", b"archive/byte\x00rder"),
    "encrypted flag": lambda: _set_flag(_python_archive(), 0x1),
    "torch's archive cut short": lambda: TORCH[:-1],
    "torch's archive with a byte more": lambda: TORCH + b"\x00",
}


def _duplicate() -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w") as zf:
        warnings.simplefilter("ignore")  # "Duplicate name": the point here
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        zf.writestr("archive/data.pkl", b"\x80\x02]q\x00.")
    return buf.getvalue()


def _with_extra() -> bytes:
    info = zipfile.ZipInfo("archive/data.pkl")
    info.extra = b"\xfe\xca\x04\x00abcd"  # an unknown tag: zipfile skips it, zip64 sizes would live here
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(info, b"\x80\x02}q\x00.")
    return buf.getvalue()


def _set_flag(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    at = data.index(b"PK\x01\x02")  # the first central directory record
    (flags,) = struct.unpack_from("<H", data, at + 8)
    struct.pack_into("<H", out, at + 8, flags | bit)
    return bytes(out)


@pytest.mark.parametrize("case", list(DECLINED))
def test_archives_outside_the_plain_profile_go_to_zipfile(tmp_path, case):
    data = DECLINED[case]()
    fd, size = _open(data, tmp_path)
    try:
        assert zipdir.directory(fd, size) is None
    finally:
        os.close(fd)


def test_a_declined_archive_still_loads_through_zipfile(tmp_path):
    path = tmp_path / "commented.pt"
    path.write_bytes(_comment(TORCH))
    with zipfile.ZipFile(path) as zf:
        assert zf.comment == b"note"
    assert open_checkpoint(path).container == "state_dict"


# The tail holds the central directory and the end records, where zipdir does its work.
mutation = st.one_of(
    st.tuples(st.just("flip"), st.lists(st.tuples(st.integers(1, 4000), st.integers(1, 255)), min_size=1, max_size=4)),
    st.tuples(st.just("cut"), st.integers(1, 4000)),
    st.tuples(st.just("splice"), st.tuples(st.integers(1, 4000), st.binary(min_size=1, max_size=12))),
)


def _mutate_tail(data: bytes, how) -> bytes:
    kind, arg = how
    if kind == "flip":
        out = bytearray(data)
        for back, mask in arg:
            out[-min(back, len(out))] ^= mask
        return bytes(out)
    if kind == "cut":
        return data[:-min(arg, len(data) - 1)]
    back, chunk = arg
    pos = len(data) - min(back, len(data))
    return data[:pos] + chunk + data[pos + len(chunk):]


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(how=mutation, which=st.sampled_from(["torch", "python"]))
def test_damaged_directories_are_read_as_zipfile_reads_them_or_declined(tmp_path_factory, how, which):
    data = _mutate_tail(TORCH if which == "torch" else _python_archive(), how)
    _same_as_zipfile(data, tmp_path_factory.mktemp("z"))
