"""The mechanisms behind the performance goals, asserted without timing (issue 8).

Importing torch costs more than a second and ~200 MiB, seven times the whole job of `show`
on a safetensors file. So the commands that do no tensor math must never import it. Each
test runs bninspect in a fresh interpreter and asks ``sys.modules`` afterwards. And a tool
that needs only the BN tensors must read only those bytes, not the file: the kernel's count
of bytes read by the process tells. Timings live in benchmarks/run.py, never here (machines
are noisy).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import needs_torch

# Runs the real CLI entry point in-process, then reports on stderr whether torch is loaded,
# which of numpy, rich, rich.console, pydantic and matplotlib, and how many threads the process has (Linux). atexit fires
# after main()'s sys.exit, so every module the command pulled in is counted.
_PROBE = (
    "import atexit, os, sys\n"
    "atexit.register(lambda: sys.stderr.write('\\nTORCH_IMPORTED=%s\\nLOADED=%s\\nTHREADS=%s\\n' % ('torch' in sys.modules,\n"
    "    ','.join(m for m in ('numpy', 'rich', 'rich.console', 'pydantic', 'matplotlib') if m in sys.modules),\n"
    "    len(os.listdir('/proc/self/task')) if os.path.isdir('/proc/self/task') else -1)))\n"
    "from bninspect.cli import main\n"
    "main(sys.argv[1:])\n"
)


# Imports everything `show` and `check` need first, so the count covers reading the file (plus
# the few modules the commands import lazily), then reports the bytes read through read/pread.
_READ_PROBE = (
    "import atexit, sys\n"
    "def rchar():\n"
    "    with open('/proc/self/io') as f:\n"
    "        return int(next(l for l in f if l.startswith('rchar:')).split()[1])\n"
    "import numpy, bninspect.cli, bninspect.formats.safetensors, bninspect.formats.torchzip\n"
    "import bninspect.services.show, bninspect.render.show\n"
    "before = rchar()\n"
    "atexit.register(lambda: sys.stderr.write('\\nREAD_BYTES=%d\\n' % (rchar() - before)))\n"
    "bninspect.cli.main(sys.argv[1:])\n"
)


def probe(*args: str) -> tuple[int, bool, str]:
    """(exit code, whether torch was imported, stderr) of `bninspect ARGS` in a fresh interpreter."""
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    marks = [ln for ln in proc.stderr.splitlines() if ln.startswith("TORCH_IMPORTED=")]
    assert marks, proc.stderr
    return proc.returncode, marks[-1] == "TORCH_IMPORTED=True", proc.stderr


def loaded(stderr: str) -> set[str]:
    """Which of numpy, rich, pydantic and matplotlib the probed command imported, from probe()'s stderr."""
    line = [ln for ln in stderr.splitlines() if ln.startswith("LOADED=")][-1]
    return set(filter(None, line.removeprefix("LOADED=").split(",")))


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
    code, torch_imported, err = probe("rules")
    assert code == 0, err
    assert not torch_imported


@pytest.mark.parametrize("args", [("rules",), ("rules", "BN101"), ("rules", "--json")], ids=["table", "one", "json"])
def test_rules_does_not_import_numpy(args):
    """Listing the registry does no arithmetic: numpy (~80 ms of start-up) loads only when a
    rule computes, so `rules` can stay within 2x of importing typer and rich (issue 8)."""
    code, _, err = probe(*args)
    assert code == 0, err
    assert "numpy" not in loaded(err)


# The sample TorchScript model: `drift` runs it without an --arch module to import.
_TS = str(Path(__file__).resolve().parent.parent / "sample_checkpoints" / "mobilenet_v1_tiny.ts")
_DRIFT = ("drift", _TS, "--trust", "--synthetic", "4x3x16x16", "--batch-sizes", "2,4")


@pytest.mark.parametrize("args", [("show", "FILE"), ("check", "FILE"), needs_torch(("verify", "FILE")),
                                  needs_torch(("diff", "FILE", "FILE")), needs_torch(_DRIFT)],
                         ids=["show", "check", "verify", "diff", "drift"])
def test_json_does_not_import_rich(safetensors_file, args):
    """A JSON document needs no terminal rendering: rich loads only where tables are drawn."""
    code, _, err = probe(*(str(safetensors_file) if a == "FILE" else a for a in args), "--json")
    assert code in (0, 1), err
    assert "rich" not in loaded(err)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads through Linux /proc")
def test_numpy_starts_no_blas_threads(safetensors_file):
    """numpy's wheels start one OpenBLAS thread per core at import, and they spin: on a 2-core
    machine ~110 ms of CPU taken from the core `check --jobs 2` needs. A BN layer's arrays need
    no BLAS pool, so the command runs single-threaded (a user's OPENBLAS_NUM_THREADS is kept)."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    proc = subprocess.run([sys.executable, "-c", _PROBE, "check", str(safetensors_file)], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL, env=env)
    assert proc.returncode in (0, 1), proc.stderr
    assert "numpy" in loaded(proc.stderr)
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("THREADS=")][-1] == "THREADS=1"


@pytest.mark.parametrize("args", [("show", "FILE"), ("show", "--channels", "FILE"), ("check", "FILE"),
                                  ("check", "--format", "concise", "FILE"), ("explain", "FILE", "bn", "--channel", "1"),
                                  ("rules", "BN101"), needs_torch(("verify", "FILE")), needs_torch(("diff", "FILE", "FILE")),
                                  needs_torch(_DRIFT)],
                         ids=["show", "channels", "check", "concise", "explain", "rules", "verify", "diff", "drift"])
def test_output_into_a_pipe_does_not_load_rich_console(safetensors_file, args):
    """Where nothing shows styles (a pipe, a CI log) tables and lines are written without rich's
    console (~40 ms of a ~230 ms `show`); its width tables (rich.cells) may still load."""
    args = tuple(str(safetensors_file) if a == "FILE" else a for a in args)
    code, _, err = probe(*args)
    assert code in (0, 1), err
    assert "rich.console" not in loaded(err)


@pytest.mark.parametrize("args", [("rules",), ("rules", "--json"), ("show", "--limit", "1", "--layer", "*"),
                                  ("check", "--eps", "1e-3", "--select", "BN1,BN2", "--jobs", "1")],
                         ids=["rules", "rules-json", "show", "check"])
def test_option_values_arrive_converted_through_typers_public_api(safetensors_file, args):
    """Option values are converted by typer itself (pydantic in typer >= 0.29: its cost is the
    framework's floor, measured in benchmarks/), never by patching it: the command succeeds."""
    if args[0] in ("show", "check"):
        args = (*args, str(safetensors_file))
    code, _, err = probe(*args)
    assert code == 0, err


@pytest.mark.parametrize("fixture", ["safetensors_file", needs_torch("zip_pt_file"), needs_torch("lightning_file")])
@pytest.mark.parametrize("args", [("show",), ("show", "--json")], ids=["table", "json"])
def test_show_does_not_import_torch(request, fixture, args):
    path = request.getfixturevalue(fixture)
    code, torch_imported, err = probe(*args, str(path))
    assert code == 0, err
    assert not torch_imported


@pytest.mark.parametrize("fixture", ["safetensors_file", needs_torch("zip_pt_file"), needs_torch("lightning_file")])
def test_check_does_not_import_torch(request, fixture):
    path = request.getfixturevalue(fixture)
    code, torch_imported, err = probe("check", str(path))
    assert code in (0, 1), err  # 1 = findings, still a completed check
    assert not torch_imported


def _write(state: dict[str, np.ndarray], path: Path) -> Path:
    """A state dict saved as .safetensors or with torch.save, by the path's suffix."""
    if path.suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file(state, str(path))
    else:
        import torch  # only this test process imports torch, to write the file

        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    return path


@pytest.fixture(params=["safetensors", needs_torch("pt")])
def big_conv_file(request, tmp_path: Path) -> Path:
    """32 MiB of conv weight next to 32 KiB of BN tensors."""
    state = _bn_state()
    state["conv.weight"] = np.zeros((2048, 1024, 4, 1), dtype=np.float32)
    c = 2048
    state.update({"bn.weight": np.ones(c, np.float32), "bn.bias": np.zeros(c, np.float32),
                  "bn.running_mean": np.zeros(c, np.float32), "bn.running_var": np.ones(c, np.float32)})
    return _write(state, tmp_path / f"big.{request.param}")


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
@pytest.mark.parametrize("args", [("show",), ("show", "--json"), ("check",)], ids=["show", "json", "check"])
def test_reads_the_bn_bytes_not_the_file(big_conv_file, args):
    """The cold-cache goal's mechanism: header plus BN byte ranges, never the 32 MiB of conv weight.

    Counts read/pread bytes (``rchar``), so a reader that touched the weight through mmap
    would slip past this test; the benchmark's cold-cache disk reads cover that case.
    """
    proc = subprocess.run([sys.executable, "-c", _READ_PROBE, *args, str(big_conv_file)], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode in (0, 1), proc.stderr
    marks = [ln for ln in proc.stderr.splitlines() if ln.startswith("READ_BYTES=")]
    assert marks, proc.stderr
    read = int(marks[-1].split("=")[1])
    # ~3 MB of lazily imported modules are read too; the conv weight alone would be 32 MiB.
    assert read < big_conv_file.stat().st_size // 4, (read, big_conv_file.stat().st_size)


@pytest.fixture(params=["safetensors", needs_torch("pt")])
def many_wide_layers(request, tmp_path: Path) -> Path:
    """20 BN layers of 65,536 channels: 1 MiB of statistics each, 20 MiB in all."""
    c, state = 65536, {}
    for i in range(20):
        state[f"block{i}.conv.weight"] = np.zeros((c, 1, 1, 1), np.float32)
        state.update({f"block{i}.bn.weight": np.ones(c, np.float32), f"block{i}.bn.bias": np.zeros(c, np.float32),
                      f"block{i}.bn.running_mean": np.zeros(c, np.float32),
                      f"block{i}.bn.running_var": np.ones(c, np.float32)})
    return _write(state, tmp_path / f"wide.{request.param}")


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
def test_show_limit_reads_only_the_layers_it_shows(many_wide_layers):
    """`show --limit N` summarizes N layers, so it reads their bytes and no others: what keeps
    `show --limit 20` on a 10,000-layer file fast (issue 8). Totals come from shapes alone."""
    proc = subprocess.run([sys.executable, "-c", _READ_PROBE, "show", "--limit", "1", str(many_wide_layers)],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert "20 BatchNorm layers, 1310720 channels" in proc.stdout
    read = int([ln for ln in proc.stderr.splitlines() if ln.startswith("READ_BYTES=")][-1].split("=")[1])
    # One layer's statistics are 1 MiB and lazily imported modules ~3 MB; all twenty would be 20 MiB.
    assert read < 8 * 2**20, read


@pytest.mark.parametrize("args", [("show", "--channels", "FILE"), ("check", "FILE"), ("explain", "FILE", "bn"),
                                  needs_torch(("verify", "FILE")), needs_torch(("diff", "FILE", "FILE")), ("rules",),
                                  ("--help",), needs_torch(_DRIFT)],
                         ids=["show", "check", "explain", "verify", "diff", "rules", "help", "drift"])
def test_only_report_imports_matplotlib(safetensors_file, args):
    """matplotlib is the `report` extra: every other command runs without it (and without its
    ~0.4 s import)."""
    code, _, err = probe(*(str(safetensors_file) if a == "FILE" else a for a in args))
    assert code in (0, 1), err
    assert "matplotlib" not in loaded(err)


def test_report_draws_without_torch(safetensors_file, tmp_path):
    """A report on one file is show + check + plots: numpy and matplotlib, no torch."""
    pytest.importorskip("matplotlib")
    code, torch_imported, err = probe("report", str(safetensors_file), "-o", str(tmp_path / "r.html"))
    assert code == 0, err
    assert not torch_imported and "matplotlib" in loaded(err)


def test_numerics_reference_half_does_not_import_torch():
    # the BN formulas show, check, explain and report use must come without torch; the eps
    # defaults (read by `bninspect rules`) without numpy either
    code = ("import sys\nfrom bninspect.numerics import TORCH_EPS\nassert 'numpy' not in sys.modules\n"
            "import bninspect.numerics.reference, bninspect.layers\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def _module_imports() -> dict[str, set[str]]:
    """Every bninspect module and the bninspect modules it imports, lazy imports inside functions included."""
    import ast

    root = Path(__file__).resolve().parent.parent / "bninspect"
    files = {".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in root.rglob("*.py")}

    def module_of(name: str) -> str:
        while name not in files:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for name, path in files.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {module_of(a.name) for a in node.names if a.name.startswith("bninspect.")}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("bninspect"):
                found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else module_of(node.module)
                          for a in node.names}
        # a submodule's package runs first anyway: that is containment, not an arrow back
        graph[name] = {m for m in found if m != name and not name.startswith(m + ".")}
    return graph


def test_import_graph_has_no_cycle():
    graph = _module_imports()
    assert "bninspect.services.diff" not in graph["bninspect.services.diff_witness"]
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError("import cycle: " + " → ".join(path[path.index(name):] + [name]))
        if name not in done:
            for dep in sorted(graph[name]):
                visit(dep, path + [name])
            done.add(name)

    for name in sorted(graph):
        visit(name, [])
