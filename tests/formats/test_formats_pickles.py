"""The memo-index check before the C unpickler: its rule, and its regex fast path against the plain walk.

``check_memo_indices`` lets a regular expression take runs of ordinary opcodes and steps the
rest in Python. Every verdict must be the one the Python step alone reaches, opcode by opcode.
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from collections import OrderedDict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bninspect.formats import pickles
from tests.conftest import HAVE_TORCH, SAMPLES
from tests.formats.mutations import mutate, mutation

_NOTHING = re.compile(b"")


def _verdict(data: bytes) -> str | None:
    try:
        pickles.check_memo_indices(data)
    except ValueError as exc:
        return str(exc)
    return None


def _stepped(data: bytes, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """The verdict with the regex taking nothing: every opcode goes through the Python step."""
    with monkeypatch.context() as m:
        m.setattr(pickles, "_run_matcher", lambda bits: _NOTHING.match)
        return _verdict(data)


def _data_pkl(archive) -> bytes:
    with zipfile.ZipFile(archive) as zf:
        return zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl")))


def _state_dict_pickles() -> list[bytes]:
    """torch.save's data.pkl for a small state dict, protocols 2 and 4, with short and long keys."""
    import torch

    from tests.formats.craft import trained_net

    sd = OrderedDict(trained_net().state_dict())
    sd["a" * 63 + ".weight"] = torch.ones(2)  # keys around the regex's short-string limit
    sd["b" * 70 + ".weight"] = torch.ones(2)
    sd["é" * 40] = torch.ones(2)  # 80 bytes of UTF-8
    out = []
    for protocol in (2, 4):
        buf = io.BytesIO()
        torch.save({"state_dict": sd, "hyper_parameters": {"notes": "x" * 300}}, buf, pickle_protocol=protocol)
        out.append(_data_pkl(buf))
    return out


# The samples' data.pkl (torch.save's, committed) and plain pickles of every protocol always; pickles
# torch.save makes here where torch is installed (the Python 3.10 job has the others: its regex differs).
PICKLES = ([_data_pkl(SAMPLES / n) for n in ("mobilenet_v1_tiny.pt", "resnet_tiny_lightning.ckpt")]
           + [pickle.dumps({"k": [1, 2.5, "s", None, (3,)] * 300}, protocol=p) for p in range(6)]
           + (_state_dict_pickles() if HAVE_TORCH else []))


@pytest.mark.parametrize("data", PICKLES, ids=[f"pickle{i}" for i in range(len(PICKLES))])
def test_real_pickles_pass(data):
    assert _verdict(data) is None


def _long_binput(index: int) -> bytes:
    return b"\x80\x02}q\x00X\x01\x00\x00\x00ar" + index.to_bytes(4, "little") + b"K\x01s."


def _put(index: int) -> bytes:
    return b"\x80\x02}q\x00X\x01\x00\x00\x00ap" + b"%010d\nK\x01s." % index  # fixed width: one length for all


@pytest.mark.parametrize("make", [_long_binput, _put], ids=["LONG_BINPUT", "PUT"])
def test_a_memo_index_below_the_pickle_length_passes_and_at_it_is_refused(make):
    # Each memo entry takes at least one byte of pickle: no real index reaches the length.
    size = len(make(0))
    assert _verdict(make(size - 1)) is None
    assert "memo index" in (_verdict(make(size)) or "")
    assert "memo index" in (_verdict(make(0x20000000)) or "")


@pytest.mark.parametrize("index", [0, 15, 16, 31, 32, 100])
def test_the_regex_bound_and_the_python_step_agree_around_powers_of_two(index, monkeypatch):
    data = _long_binput(index) + b"N" * 12  # 32 bytes: the regex takes indices below 16 itself
    assert _verdict(data) == _stepped(data, monkeypatch)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(which=st.integers(0, len(PICKLES) - 1), how=mutation)
def test_the_fast_path_reaches_the_python_steps_verdict(which, how, monkeypatch):
    data = mutate(PICKLES[which], how)
    assert _verdict(data) == _stepped(data, monkeypatch)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=st.binary(max_size=64))
def test_arbitrary_bytes_get_the_same_verdict(data, monkeypatch):
    assert _verdict(b"\x80\x02" + data) == _stepped(b"\x80\x02" + data, monkeypatch)
