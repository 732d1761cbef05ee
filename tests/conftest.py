"""Shared fixtures: the sample checkpoints and a runner for the installed `bninspect` command."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_checkpoints"
# The Python 3.10 job of .ci/run installs everything but torch (a multi-GB download there) and
# deselects the tests marked `torch`; where torch is missing they are skipped, not failed.
HAVE_TORCH = importlib.util.find_spec("torch") is not None


# How a module says that every test in it needs torch; without torch such a module is not even
# imported (its imports need torch).
WHOLE_MODULE_TORCH = "pytestmark = pytest.mark.torch"


def pytest_ignore_collect(collection_path, config):
    """Without torch, leave out the modules marked ``torch`` as a whole."""
    if HAVE_TORCH or collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    return True if WHOLE_MODULE_TORCH in collection_path.read_text(encoding="utf-8") else None


def needs_torch(value):
    """A parametrize value whose run needs torch (a command doing tensor math, a file torch writes)."""
    return pytest.param(value, marks=pytest.mark.torch)


def pytest_collection_modifyitems(config, items):
    """Skip the tests marked ``torch`` when torch is not installed."""
    if HAVE_TORCH:
        return
    skip = pytest.mark.skip(reason="needs torch, which is not installed")
    for item in items:
        if "torch" in item.keywords:
            item.add_marker(skip)


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [l for l in self.err.splitlines() if l.strip()]


def bninspect_command() -> list[str]:
    """The console script installed for this interpreter (what users run), else the one on PATH,
    else `python -m bninspect`: a Python 3.10 run must not start another Python's script."""
    own = Path(sys.executable).parent / "bninspect"
    exe = str(own) if own.is_file() else shutil.which("bninspect")
    return [exe] if exe else [sys.executable, "-m", "bninspect"]


def with_pythonpath(extra: str, env: dict | None = None) -> str:
    """PYTHONPATH with ``extra`` first and the current one kept: replacing it would run another
    checkout's bninspect where this one is on PYTHONPATH (a worktree beside an editable install)."""
    current = (env if env is not None else os.environ).get("PYTHONPATH")
    return os.pathsep.join(filter(None, [extra, current]))


def run_cli(*args: str, cwd: str | os.PathLike | None = None, timeout: float = 120, env: dict | None = None) -> Run:
    """Run the installed command; never hang (a FIFO or a bug must fail the test, not the suite).

    ``env`` adds to the environment; its PYTHONPATH goes before the current one."""
    env = dict(env or {})
    if "PYTHONPATH" in env:
        env["PYTHONPATH"] = with_pythonpath(env["PYTHONPATH"])
    full_env = {**os.environ, "COLUMNS": "200", **env}
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
