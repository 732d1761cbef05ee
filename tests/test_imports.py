"""The mechanisms behind the performance goals, asserted without timing (issue 8).

Importing torch costs more than a second and ~200 MiB, seven times the whole job of `show`
on a safetensors file. So the commands that do no tensor math must never import it. Each
test runs bninspect in a fresh interpreter and asks ``sys.modules`` afterwards; timings live
in benchmarks/run.py, never here (machines are noisy).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import bninspect_command

# Runs the real CLI entry point in-process, then reports on stderr whether torch is loaded.
# atexit fires after main()'s sys.exit, so every module the command pulled in is counted.
_PROBE = (
    "import atexit, sys\n"
    "atexit.register(lambda: sys.stderr.write('\\nTORCH_IMPORTED=%s\\n' % ('torch' in sys.modules)))\n"
    "from bninspect.cli import main\n"
    "main(sys.argv[1:])\n"
)


def probe(*args: str) -> tuple[int, bool, str]:
    """(exit code, whether torch was imported, stderr) of `bninspect ARGS` in a fresh interpreter."""
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    marks = [ln for ln in proc.stderr.splitlines() if ln.startswith("TORCH_IMPORTED=")]
    assert marks, proc.stderr
    return proc.returncode, marks[-1] == "TORCH_IMPORTED=True", proc.stderr


def require_command(name: str) -> None:
    """Skip while a command is still being written (its --help fails)."""
    rc = subprocess.run([*bninspect_command(), name, "--help"], capture_output=True, timeout=120).returncode
    if rc != 0:
        pytest.skip(f"`bninspect {name}` does not exist yet")


def _bn_state(prefix: str = "") -> dict[str, np.ndarray]:
    """A conv → BN pair with trained-looking statistics, as numpy arrays."""
    rng = np.random.default_rng(8)
    c = 8
    return {
        f"{prefix}conv.weight": rng.normal(0, 0.1, (c, 3, 3, 3)).astype(np.float32),
        f"{prefix}bn.weight": rng.normal(1, 0.1, c).astype(np.float32),
        f"{prefix}bn.bias": rng.normal(0, 0.1, c).astype(np.float32),
        f"{prefix}bn.running_mean": rng.normal(0, 0.5, c).astype(np.float32),
        f"{prefix}bn.running_var": np.exp(rng.normal(-1, 0.5, c)).astype(np.float32),
        f"{prefix}bn.num_batches_tracked": np.array(1000, dtype=np.int64),
    }


@pytest.fixture
def safetensors_file(tmp_path: Path) -> Path:
    from safetensors.numpy import save_file

    path = tmp_path / "model.safetensors"
    save_file(_bn_state(), str(path))
    return path


@pytest.fixture
def zip_pt_file(tmp_path: Path) -> Path:
    import torch  # only this test process imports torch, to write the file

    path = tmp_path / "model.pt"
    torch.save({k: torch.from_numpy(v) for k, v in _bn_state().items()}, path)
    return path


@pytest.fixture
def lightning_file(tmp_path: Path) -> Path:
    """A Lightning-style checkpoint: state dict under 'state_dict' with 'model.' prefix, SGD state."""
    import torch

    sd = {k: torch.from_numpy(v) for k, v in _bn_state("model.").items()}
    params = [k for k in sd if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    path = tmp_path / "last.ckpt"
    torch.save({
        "epoch": 3, "global_step": 1200, "pytorch-lightning_version": "2.4.0", "state_dict": sd,
        "optimizer_states": [{"state": {i: {"momentum_buffer": torch.zeros_like(sd[k])} for i, k in enumerate(params)},
                              "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": list(range(len(params)))}]}],
        "lr_schedulers": [], "hyper_parameters": {"lr": 0.1},
    }, path)
    return path


def test_help_does_not_import_torch():
    code, torch_imported, err = probe("--help")
    assert code == 0, err
    assert not torch_imported


def test_rules_does_not_import_torch():
    require_command("rules")
    code, torch_imported, err = probe("rules")
    assert code == 0, err
    assert not torch_imported


@pytest.mark.parametrize("fixture", ["safetensors_file", "zip_pt_file", "lightning_file"])
@pytest.mark.parametrize("args", [("show",), ("show", "--json")], ids=["table", "json"])
def test_show_does_not_import_torch(request, fixture, args):
    require_command("show")
    path = request.getfixturevalue(fixture)
    code, torch_imported, err = probe(*args, str(path))
    assert code == 0, err
    assert not torch_imported


@pytest.mark.parametrize("fixture", ["safetensors_file", "zip_pt_file", "lightning_file"])
def test_check_does_not_import_torch(request, fixture):
    require_command("check")
    path = request.getfixturevalue(fixture)
    code, torch_imported, err = probe("check", str(path))
    assert code in (0, 1), err  # 1 = findings, still a completed check
    assert not torch_imported
