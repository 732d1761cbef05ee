"""Shared fixtures: the sample checkpoints and a runner for the installed `bninspect` command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_checkpoints"


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [l for l in self.err.splitlines() if l.strip()]


def bninspect_command() -> list[str]:
    """The installed console script (what users run); `python -m bninspect` where it is not on PATH."""
    exe = shutil.which("bninspect")
    return [exe] if exe else [sys.executable, "-m", "bninspect"]


def run_cli(*args: str, cwd: str | os.PathLike | None = None, timeout: float = 120, env: dict | None = None) -> Run:
    """Run the installed command; never hang (a FIFO or a bug must fail the test, not the suite)."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    proc = subprocess.run([*bninspect_command(), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=full_env, stdin=subprocess.DEVNULL)
    return Run(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli():
    """Call as cli("show", path, ...) → Run(code, out, err)."""
    return run_cli


@pytest.fixture
def samples() -> Path:
    return SAMPLES


def assert_one_line_error(run: Run, code: int, *needles: str) -> None:
    """A failure: the expected exit code, exactly one stderr line in our words, no traceback."""
    assert run.code == code, (run.code, run.out, run.err)
    assert "Traceback" not in run.err + run.out
    assert len(run.err_lines) == 1, run.err
    assert run.err_lines[0].startswith("bninspect: error: "), run.err
    for n in needles:
        assert n in run.err_lines[0], (n, run.err)


@pytest.fixture(scope="session")
def onnx_exports(tmp_path_factory):
    """The sample MobileNet and its two ONNX exports, made once per test run: (model, unfolded
    path, folded path). Modules using it call pytest.importorskip("onnx") first."""
    from tests.exports import export_onnx, sample_model

    model = sample_model()
    d = tmp_path_factory.mktemp("onnx")
    return model, export_onnx(model, d / "plain.onnx", fold=False), export_onnx(model, d / "folded.onnx", fold=True)
