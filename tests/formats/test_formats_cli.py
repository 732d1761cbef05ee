"""The loading layer's failures through the installed command: exit code, one stderr line, no traceback."""

from __future__ import annotations

import os
import struct

import pytest
import torch

from tests.conftest import assert_one_line_error, run_cli
from tests.formats.craft import Payload, rewrite_zip, trained_net

# Every test here needs torch (the Python 3.10 job of .ci/run runs without it).
pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    good = d / "good.pt"
    torch.save({"state_dict": trained_net().state_dict()}, good)
    torch.save({"state_dict": trained_net().state_dict(), "hp": Payload(d / "MARKER")}, d / "evil.ckpt")
    (d / "empty.pt").write_bytes(b"")
    (d / "image.pt").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(32))
    (d / "cut.pt").write_bytes(good.read_bytes()[:300])
    rewrite_zip(good, d / "short.pt", lambda n, data: data[:-4] if n.endswith("/data/1") else data)
    (d / "huge_header.safetensors").write_bytes(struct.pack("<Q", 10**12) + b'{"a": 1}')
    os.mkfifo(d / "pipe.pt")
    return d


CASES = [
    ("no-such.pt", 5, "no such file"),
    (".", 5, "is a directory"),
    ("pipe.pt", 5, "FIFO"),
    ("empty.pt", 4, "the file is empty"),
    ("image.pt", 4, "PNG image"),
    ("cut.pt", 4, "truncated or corrupt zip"),
    ("short.pt", 4, "record data/1 holds"),
    ("huge_header.safetensors", 4, "absurd"),
    ("evil.ckpt", 3, "builtins.exec"),
]


@pytest.mark.parametrize("name,code,text", CASES, ids=[c[0] for c in CASES])
def test_show_fails_in_one_line(files, name, code, text):
    before = {p.name: p.read_bytes() for p in files.iterdir() if p.is_file()}
    run = run_cli("show", str(files / name), timeout=60)
    assert_one_line_error(run, code, text)
    assert not (files / "MARKER").exists()
    assert {p.name: p.read_bytes() for p in files.iterdir() if p.is_file()} == before  # nothing written


def test_unknown_key_is_a_usage_error(files):
    run = run_cli("show", str(files / "good.pt"), "--key", "state_dict_ema", timeout=60)
    assert_one_line_error(run, 2, "no state dict at --key 'state_dict_ema'", "'state_dict'")
