"""Data safety: no command changes its input; the files bninspect writes appear by rename, never over an input.

"By rename" is observable: a second hard link to the old output keeps the old bytes when the new
file is renamed into place, and would show the new bytes had the old file been rewritten.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SAMPLES, assert_one_line_error, run_cli
from tests.hardening.make_corpus import snapshot

# Every test here needs torch (the Python 3.10 job of .ci/run runs without it).
pytestmark = pytest.mark.torch

OLD = 10**18  # an mtime long past, so any rewrite shows even within one clock tick
PYTHONPATH = {"PYTHONPATH": str(SAMPLES)}  # drift --arch sample_models:...


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A checkpoint, its safetensors twin and activations for features.2.bn, all with an old mtime."""
    shutil.copy(SAMPLES / "mobilenet_v1_tiny.pt", tmp_path / "model.pt")
    shutil.copy(SAMPLES / "mobilenet_v1_tiny.safetensors", tmp_path / "model.safetensors")
    np.save(tmp_path / "act.npy", np.random.default_rng(0).standard_normal((2, 32, 4, 4)).astype("float32"))
    for p in tmp_path.iterdir():
        os.utime(p, ns=(OLD, OLD))
    return tmp_path


def test_every_command_leaves_its_inputs_alone(workdir):
    """show, explain, check, diff, verify (reading activations) succeed and change nothing in the folder."""
    before = snapshot(workdir)
    runs = {
        "show": ("show", "model.pt", "--channels", "--json"),
        "explain": ("explain", "model.safetensors", "features.2.bn", "--channel", "1"),
        "check": ("check", "model.pt", "model.safetensors", "--strict"),
        "diff": ("diff", "model.pt", "model.safetensors"),
        "verify": ("verify", "model.pt", "--layer", "features.2.bn", "--input", "act.npy"),
    }
    for args in runs.values():
        run = run_cli(*args, cwd=workdir)
        assert run.code in (0, 1), (args, run.err)
    assert snapshot(workdir) == before


def _hardlinked_old_output(folder: Path, name: str) -> Path:
    (folder / name).write_bytes(b"old output")
    os.link(folder / name, folder / f"{name}.keep")
    return folder / f"{name}.keep"


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".")]


@pytest.fixture(scope="module")
def verify_output(tmp_path_factory):
    """One verify --output run over an existing output that has a second hard link: (folder, run, inputs before)."""
    folder = tmp_path_factory.mktemp("verify-output")
    shutil.copy(SAMPLES / "mobilenet_v1_tiny.pt", folder / "model.pt")
    np.save(folder / "act.npy", np.random.default_rng(0).standard_normal((2, 32, 4, 4)).astype("float32"))
    _hardlinked_old_output(folder, "out.npy")
    inputs = {n: snapshot(folder)[n] for n in ("model.pt", "act.npy")}
    run = run_cli("verify", "model.pt", "--layer", "features.2.bn", "--input", "act.npy", "--output", "out.npy",
                  cwd=folder)
    return folder, run, inputs


def test_verify_output_replaces_the_old_file_by_rename(verify_output):
    folder, run, inputs = verify_output
    assert run.code == 0, run.err
    assert (folder / "out.npy.keep").read_bytes() == b"old output", "the old output was rewritten in place"
    assert np.load(folder / "out.npy").shape == (2, 32, 4, 4)
    assert not _leftovers(folder)
    assert {n: snapshot(folder)[n] for n in inputs} == inputs


def test_verify_output_gets_ordinary_permissions(verify_output):
    folder, run, _ = verify_output
    assert run.code == 0, run.err
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(folder / "out.npy").st_mode) == 0o666 & ~umask


def test_verify_never_writes_over_an_input(workdir):
    # The activations under another name (a hard link): the check must be samefile, not name equality.
    os.link(workdir / "act.npy", workdir / "hard-link-to-act.npy")
    before = snapshot(workdir)
    run = run_cli("verify", "model.pt", "--layer", "features.2.bn", "--input", "act.npy", "--output",
                  "hard-link-to-act.npy", cwd=workdir)
    assert_one_line_error(run, 2, "overwrite an input")
    assert snapshot(workdir) == before


def _drift(workdir: Path, out: str):
    return run_cli("drift", "model.pt", "--arch", "sample_models:mobilenet_v1_tiny", "--synthetic", "8x3x16x16",
                   "--batch-sizes", "2,8", "--write-recalibrated", out, cwd=workdir, env=PYTHONPATH)


def test_drift_recalibrated_copy_replaces_the_old_file_by_rename(workdir):
    keep = _hardlinked_old_output(workdir, "recalibrated.pt")
    model = snapshot(workdir)["model.pt"]
    run = _drift(workdir, "recalibrated.pt")
    assert run.code in (0, 1), run.err
    assert keep.read_bytes() == b"old output", "the old file was rewritten in place, not replaced"
    assert (workdir / "recalibrated.pt").read_bytes()[:4] == b"PK\x03\x04"
    assert not _leftovers(workdir)
    assert snapshot(workdir)["model.pt"] == model


def test_drift_never_writes_over_its_checkpoint(workdir):
    # A hard link: the same file under another name must be recognised as the input.
    os.link(workdir / "model.pt", workdir / "hard-link-to-model.pt")
    before = snapshot(workdir)
    run = _drift(workdir, "hard-link-to-model.pt")
    assert_one_line_error(run, 2, "overwrite the input")
    assert snapshot(workdir) == before
