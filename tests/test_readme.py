"""Every example in the README runs as written, and every output it shows is what the command prints.

The README's runnable examples are its ```sh blocks (one command a line, ``cd`` applies to the
lines after it) and its ```console blocks (``$ command`` and the output it prints); ```text
blocks are synopses and results, not commands. They run through the shell, as a user would, on a
copy of ``sample_checkpoints/`` (an example may write a file), with ``bninspect`` this checkout's
command for this interpreter. An example may exit 1 (findings, differences: its answer), never
with another code or a line on stderr. Shown outputs must match exactly, except verify's: its
float32 kernel errors differ in the last digits between CPUs, so its numbers are masked.

After a change to what a command prints, regenerate the shown outputs:

    BNINSPECT_REGEN_README=1 python -m pytest -p no:cacheprovider tests/test_readme.py
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import HAVE_TORCH, ROOT, SAMPLES, with_pythonpath

README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
# Not run here: installing (pip), the test suite itself (.ci/run runs both) and rewriting the
# committed samples in place (tests/test_samples.py regenerates them into a temporary folder).
NOT_RUN = ("pip install", "python -m pytest", "python sample_checkpoints/make_samples.py")
NEEDS_TORCH = ("verify", "drift", "diff")  # commands that do tensor math (torch, and the exporters' files)
_NUMBER = re.compile(r"\d+(\.\d+)?(e[-+]?\d+)?")


@dataclass(frozen=True)
class Example:
    line: int  # where the command is in README.md
    cwd: str  # relative to the repository root
    command: str
    output: str | None  # what the README shows it print (console blocks), None for sh blocks

    @property
    def id(self) -> str:
        return f"README.md:{self.line}"

    @property
    def needs_torch(self) -> bool:
        words = self.command.split()
        if "--data" in words or "--arch" in words:  # a model runs (report's drift section)
            return True
        if words[words.index("bninspect") + 1:][:1] == ["report"] and sum(w.startswith("sample_checkpoints/")
                                                                           for w in words) > 1:
            return True  # report's diff section (a second artifact) compares on torch
        return any(w in NEEDS_TORCH for w in words[words.index("bninspect") + 1:][:1]) if "bninspect" in words else False


def examples(text: str | None = None) -> list[Example]:
    """The README's runnable examples, in order."""
    text = README.read_text(encoding="utf-8") if text is None else text
    found: list[Example] = []
    for match in FENCE.finditer(text):
        lang, body = match.group(1), match.group(2)
        first = text.count("\n", 0, match.start(2)) + 1
        lines = body.splitlines()
        if lang == "sh":
            cwd = "."
            for n, line in enumerate(lines):
                command = line.split("  #")[0].strip()
                if command.startswith("cd "):
                    cwd = os.path.normpath(os.path.join(cwd, command[3:].strip()))
                elif command and not command.startswith(NOT_RUN):
                    found.append(Example(first + n, cwd, command, None))
        elif lang == "console":
            starts = [n for n, line in enumerate(lines) if line.startswith("$ ")]
            for k, n in enumerate(starts):
                end = starts[k + 1] if k + 1 < len(starts) else len(lines)
                found.append(Example(first + n, ".", lines[n][2:], "\n".join(lines[n + 1:end])))
    return found


EXAMPLES = examples()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A copy of the samples, and a ``bninspect`` on PATH that runs this checkout with this Python."""
    root = tmp_path_factory.mktemp("readme")
    shutil.copytree(SAMPLES, root / "sample_checkpoints", ignore=shutil.ignore_patterns("__pycache__"))
    bin_dir = root / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "bninspect"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m bninspect "$@"\n')
    wrapper.chmod(0o755)
    return root


def run(example: Example, root: Path) -> subprocess.CompletedProcess:
    """The example through bash (pipes, quoting and VAR=value prefixes as a user's shell has them)."""
    env = {**os.environ, "COLUMNS": "100", "PATH": f"{root / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": with_pythonpath(str(ROOT))}
    return subprocess.run(["bash", "-o", "pipefail", "-c", example.command], cwd=root / example.cwd, env=env,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def shown(output: str, command: str) -> str:
    """An output as compared: trailing spaces dropped, and verify's numbers masked (see the docstring)."""
    text = "\n".join(line.rstrip() for line in output.rstrip("\n").splitlines())
    return _NUMBER.sub("#", text) if " verify " in f" {command} " else text


@pytest.mark.parametrize("example", [pytest.param(e, id=e.id, marks=[pytest.mark.torch] if e.needs_torch else [])
                                     for e in EXAMPLES])
def test_readme_example_runs_as_written(example, workdir):
    proc = run(example, workdir)
    assert proc.returncode in (0, 1), (example.command, proc.returncode, proc.stderr)
    assert proc.stderr == "", (example.command, proc.stderr)
    if example.output is not None and not os.environ.get("BNINSPECT_REGEN_README"):
        assert shown(proc.stdout, example.command) == shown(example.output, example.command), example.command


def python_examples(text: str | None = None) -> list[tuple[int, str]]:
    """The README's ```python blocks (the Python API), with the line each starts on."""
    text = README.read_text(encoding="utf-8") if text is None else text
    return [(text.count("\n", 0, m.start(2)) + 1, m.group(2)) for m in FENCE.finditer(text) if m.group(1) == "python"]


@pytest.mark.parametrize("line, code", [pytest.param(n, c, id=f"README.md:{n}",
                                                     marks=[pytest.mark.torch] if "sample_models" in c else [])
                                        for n, c in python_examples()])
def test_readme_python_example_runs_as_written(line, code, workdir):
    """Each Python API example runs from the repository root as a user would, silently on stderr,
    and prints what its ``# →`` comments say."""
    env = {**os.environ, "PYTHONPATH": with_pythonpath(str(ROOT))}
    proc = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0 and proc.stderr == "", (line, proc.stderr)
    for shown in re.findall(r"# → (.+?)(?:   |$)", code, re.M):  # what a line prints, before any remark
        assert shown in proc.stdout, (line, shown, proc.stdout)


def test_every_command_of_the_readme_is_an_example():
    """Outside the blocks this test runs, a bninspect command line is only a synopsis ([OPTIONS])."""
    text = README.read_text(encoding="utf-8")
    others = [line for match in FENCE.finditer(text) if match.group(1) not in ("sh", "console")
              for line in match.group(2).splitlines() if line.startswith(("bninspect ", "$ "))]
    assert others and all("[" in line for line in others), others
    assert len(EXAMPLES) >= 20


@pytest.mark.skipif(not os.environ.get("BNINSPECT_REGEN_README") or not HAVE_TORCH,
                    reason="BNINSPECT_REGEN_README=1 rewrites the outputs the README shows")
def test_regenerate_the_outputs_the_readme_shows(workdir):
    text = README.read_text(encoding="utf-8")
    for example in reversed([e for e in EXAMPLES if e.output is not None]):
        out = "\n".join(line.rstrip() for line in run(example, workdir).stdout.rstrip("\n").splitlines())
        lines = text.split("\n")
        start = example.line  # the line after the command (README lines count from 1)
        end = start + (len(example.output.split("\n")) if example.output else 0)
        lines[start:end] = out.split("\n")
        text = "\n".join(lines)
    README.write_text(text, encoding="utf-8")
