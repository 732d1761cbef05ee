"""Hostile pickles are read statically and refused by name, never run; --trust alone runs them (proving they are live)."""

from __future__ import annotations

import pickle

import pytest
import torch

from bninspect.errors import InvalidFileError, UnsafeFileError
from bninspect.formats import open_checkpoint
from bninspect.formats.pickles import scan_globals
from tests.formats.craft import Getter, Payload, TorchLoad, dumps, trained_net, write_zip

# Every test here needs torch (the Python 3.10 job of .ci/run runs without it).
pytestmark = pytest.mark.torch


def _lightning(marker, extra):
    """A Lightning-style dict with a real state dict, and a payload in hyper_parameters."""
    return {
        "epoch": 3,
        "state_dict": {f"model.{k}": v for k, v in trained_net().state_dict().items()},
        "hyper_parameters": {"lr": 0.1, "payload": Payload(marker), **extra},
    }


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_payload_next_to_a_real_state_dict_is_refused_and_never_runs(tmp_path, protocol, legacy):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.ckpt"
    other = tmp_path / "other.pt"
    torch.save(torch.zeros(2), other)
    torch.save(_lightning(marker, {"getter": Getter(), "loader": TorchLoad(other)}), path,
               pickle_protocol=protocol, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UnsafeFileError) as info:
        open_checkpoint(path)
    message = info.value.message
    for name in ("builtins.exec", "operator.attrgetter", "torch.serialization.load"):
        assert name in message, message
    assert "--trust" in message and "weights_only=False" in message
    assert not marker.exists()
    # The same file with --trust really runs the payload: the refusal above is what stopped it.
    ckpt = open_checkpoint(path, trust=True)
    assert marker.exists()
    assert ckpt.container == "state_dict" and ckpt.prefix == "model."


def test_hand_made_zip_with_exec_is_refused(tmp_path):
    marker = tmp_path / "MARKER"
    path = write_zip(tmp_path / "evil.pt", dumps({"x": Payload(marker)}, protocol=4), {})
    with pytest.raises(UnsafeFileError, match="builtins.exec"):
        open_checkpoint(path)
    assert not marker.exists()


def test_torchscript_classes_are_only_modules_in_torchscript_archives(tmp_path):
    # In a plain torch.save archive a __torch__ class is just another class, read as data.
    pkl = b"\x80\x02c__torch__\nM\nq\x00)\x81q\x01}q\x02b."
    path = write_zip(tmp_path / "ts_like.pt", pkl, {})
    with pytest.raises(InvalidFileError, match="holds no state dict: an object of class __torch__.M .read as data."):
        open_checkpoint(path)


def test_scan_names_stack_global_and_computed_names():
    class Evil:
        def __reduce__(self):
            return (pickle.loads, (b"",))

    names, _ = scan_globals(__import__("io").BytesIO(pickle.dumps(Evil(), protocol=4)))
    assert names == ["_pickle.loads"]
    # STACK_GLOBAL fed by something other than two pushed strings: refused as computed.
    crafted = b"\x80\x04K\x01K\x02\x93."
    names, _ = scan_globals(__import__("io").BytesIO(crafted))
    assert names == ["<computed global>"]


@pytest.mark.parametrize("put", [b"r" + (1 << 20).to_bytes(4, "little"), b"p1048576\n"], ids=["LONG_BINPUT", "PUT"])
def test_memo_index_bomb_is_refused_before_unpickling(tmp_path, put):
    # CPython's C unpickler sizes its memo array by the largest PUT index and zero-fills it:
    # LONG_BINPUT 0x20000000 alone costs 8 GiB. A modest index shows the check without the cost.
    pkl = b"\x80\x02}q\x00X\x01\x00\x00\x00a" + put + b"K\x01s."
    path = write_zip(tmp_path / "memo.pt", pkl, {})
    with pytest.raises(InvalidFileError, match="memo index"):
        open_checkpoint(path)


def test_legacy_payload_in_the_storage_keys_pickle(tmp_path):
    # The legacy format ends with a pickled list of storage keys; torch unpickles it too.
    marker = tmp_path / "MARKER"
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    raw = path.read_bytes()
    keys_at = raw.rfind(b"\x80\x02]")
    end = raw.index(b".", keys_at) + 1
    path.write_bytes(raw[:keys_at] + pickle.dumps([Payload(marker)], protocol=2) + raw[end:])
    with pytest.raises(UnsafeFileError, match="builtins.exec"):
        open_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("state", [b"}X\x04\x00\x00\x00evilK\x01s", b"N}X\x05\x00\x00\x00_nameX\x04\x00\x00\x00evils\x86"],
                         ids=["dict", "slots"])
def test_a_pickle_cannot_change_a_stand_in(tmp_path, state):
    # BUILD on the OrderedDict stand-in, then a state dict made with it.
    pkl = b"\x80\x02ccollections\nOrderedDict\nq\x00" + state + b"b0h\x00)Rq\x01."
    path = write_zip(tmp_path / "build.pt", pkl, {})
    with pytest.raises(InvalidFileError, match="data.pkl is corrupt"):
        open_checkpoint(path)
