"""Mutated checkpoints: every outcome is a Checkpoint or one of our errors, never anything else.

A quick run is part of the default suite; ``python -m pytest tests/formats -m slow -k fuzz``
runs thousands of cases per format.
"""

from __future__ import annotations

import io
import resource
import zipfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from safetensors.torch import save_file

from bninspect.errors import BNInspectError
from bninspect.formats import open_checkpoint
from tests.formats.craft import trained_net
from tests.formats.mutations import mutate, mutation

# Every test here needs torch (the Python 3.10 job of .ci/run runs without it).
pytestmark = pytest.mark.torch


_ORIGINALS: dict[str, bytes] = {}


def original(name: str, tmp_path_factory) -> bytes:
    """The unmutated file (made once per session; kept out of hypothesis' example reprs)."""
    if not _ORIGINALS:
        d = tmp_path_factory.mktemp("fuzz")
        sd = trained_net().state_dict()
        small = {k: v for k, v in sd.items() if k.startswith(("bn.", "conv."))}
        torch.save({"state_dict": small, "epoch": 1}, d / "a.pt")
        torch.save(small, d / "legacy.pt", _use_new_zipfile_serialization=False)
        save_file(small, d / "a.safetensors")
        torch.jit.save(torch.jit.script(trained_net()), d / "a.ts")
        _ORIGINALS.update({n: (d / n).read_bytes() for n in ("a.pt", "legacy.pt", "a.safetensors", "a.ts")})
    return _ORIGINALS[name]


# Peak RSS of this process may not pass this: a file that makes a reader allocate gigabytes
# (e.g. a pickle memo-index bomb) fails the example that did it.
MAX_PEAK_KIB = 3 * 1024 * 1024


def check(tmp_path, data: bytes, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    for strict in (False, True):
        try:
            ckpt = open_checkpoint(path, strict=strict)
            for ref in ckpt.tensors.values():
                ref.numpy()
        except BNInspectError as exc:
            assert "\n" not in exc.line()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < MAX_PEAK_KIB


def with_member_mutated(archive: bytes, suffix: str, how) -> bytes:
    """The zip archive with one member's bytes mutated (CRCs recomputed, so the bytes get read)."""
    src, out = io.BytesIO(archive), io.BytesIO()
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info.filename, mutate(data, how) if info.filename.endswith(suffix) and data else data)
    return out.getvalue()


def _fuzz(name: str, examples: int, member: str | None = None):
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(how=mutation)
    def run(tmp_path_factory, tmp_path, how):
        data = original(name, tmp_path_factory)
        data = mutate(data, how) if member is None else with_member_mutated(data, member, how)
        check(tmp_path, data, name)

    return run


test_fuzz_zip = _fuzz("a.pt", 60)
test_fuzz_legacy = _fuzz("legacy.pt", 30)
test_fuzz_safetensors = _fuzz("a.safetensors", 60)
test_fuzz_torchscript = _fuzz("a.ts", 40)
test_fuzz_data_pkl = _fuzz("a.pt", 60, member="/data.pkl")
test_fuzz_torchscript_data_pkl = _fuzz("a.ts", 40, member="/data.pkl")
test_fuzz_torchscript_code = _fuzz("a.ts", 20, member="batchnorm.py")

test_fuzz_zip_long = pytest.mark.slow(_fuzz("a.pt", 3000))
test_fuzz_legacy_long = pytest.mark.slow(_fuzz("legacy.pt", 1000))
test_fuzz_safetensors_long = pytest.mark.slow(_fuzz("a.safetensors", 3000))
test_fuzz_torchscript_long = pytest.mark.slow(_fuzz("a.ts", 2000))
test_fuzz_data_pkl_long = pytest.mark.slow(_fuzz("a.pt", 3000, member="/data.pkl"))
test_fuzz_torchscript_data_pkl_long = pytest.mark.slow(_fuzz("a.ts", 2000, member="/data.pkl"))
