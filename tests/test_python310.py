"""Python 3.10 support (pyproject: requires-python >= 3.10), checked from any interpreter.

The real proof is the Python 3.10 job of ``.ci/run`` (the suite's torch-free core on 3.10). These
tests are the cheap part that runs everywhere: every module parses with 3.10's grammar, no regex
written in the code uses syntax 3.10's ``re`` lacks (possessive repeats and atomic groups are
3.11+), and, where a 3.10 interpreter is installed, every module compiles there and the pickle
scanner's regex, built at run time, compiles and scans a real ``data.pkl``.
"""

from __future__ import annotations

import ast
import glob
import os
import re
import subprocess
import zipfile

import pytest

from tests.conftest import ROOT, SAMPLES

SOURCES = sorted(p for folder in ("bninspect", "tests", "benchmarks", "sample_checkpoints")
                 for p in (ROOT / folder).rglob("*.py"))
RE_FUNCTIONS = {"compile", "match", "fullmatch", "search", "sub", "subn", "split", "findall", "finditer"}
# Outside character classes and escapes: a repeat followed by "+" (possessive), or "(?>" (atomic).
_ESCAPE = re.compile(r"\\.", re.DOTALL)
_CLASS = re.compile(r"\[\^?\]?[^\]]*\]")
_NEWER_SYNTAX = re.compile(r"[*+?}]\+|\(\?>")


def newer_regex_syntax(pattern: str) -> str | None:
    """The first piece of ``pattern`` that needs Python 3.11's ``re``, or None."""
    bare = _CLASS.sub("c", _ESCAPE.sub("e", pattern))  # each an atom: r"\s*\S+" is no "*+"
    found = _NEWER_SYNTAX.search(bare)
    return found.group() if found else None


def _python310() -> str | None:
    """A Python 3.10 interpreter, as .ci/run looks for one (pyenv's on this project's machines)."""
    pyenv = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    for candidate in [os.environ.get("BNINSPECT_PYTHON310"), *sorted(glob.glob(f"{pyenv}/versions/3.10*/bin/python"))]:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def test_the_detector_knows_3_11_regex_syntax():
    assert newer_regex_syntax(r"(?:ab|c)*+") == "*+"
    assert newer_regex_syntax(r"a{2,3}+b") == "}+"
    assert newer_regex_syntax(r"(?>a|b)") == "(?>"
    assert newer_regex_syntax(r"[*+]\++(a+)+[?+]\s*\S+") is None


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(ROOT)) for p in SOURCES])
def test_every_module_parses_with_python_3_10_grammar(path):
    ast.parse(path.read_text(encoding="utf-8"), str(path), feature_version=(3, 10))


def test_no_regex_in_the_code_needs_python_3_11():
    """Every string written into a call of re.compile/match/search/... (constants and their
    concatenations), in every module."""
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "re"
                    and node.func.attr in RE_FUNCTIONS and node.args):
                continue
            for const in ast.walk(node.args[0]):
                if isinstance(const, ast.Constant) and isinstance(const.value, (str, bytes)):
                    text = const.value if isinstance(const.value, str) else const.value.decode("latin-1")
                    if newer_regex_syntax(text):
                        found.append(f"{path.relative_to(ROOT)}:{const.lineno}: {text!r}")
    assert found == []


@pytest.mark.skipif(_python310() is None, reason="no Python 3.10 interpreter here")
def test_modules_compile_and_the_pickle_scanner_runs_on_python_3_10(tmp_path):
    with zipfile.ZipFile(SAMPLES / "resnet_tiny_lightning.ckpt") as zf:
        data_pkl = zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl")))
    (tmp_path / "data.pkl").write_bytes(data_pkl)
    script = (
        "import sys\n"
        "for path in sys.argv[2:]:\n"
        "    compile(open(path, encoding='utf-8').read(), path, 'exec')\n"
        # By path: the package's __init__ imports numpy, which this bare interpreter may lack.
        "import importlib.util\n"
        "spec = importlib.util.spec_from_file_location('pickles', 'bninspect/formats/pickles.py')\n"
        "pickles = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(pickles)\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "pickles.check_memo_indices(data)\n"
        "import io\n"
        "print(*pickles.scan_globals(io.BytesIO(data))[0])\n"
    )
    proc = subprocess.run([_python310(), "-c", script, str(tmp_path / "data.pkl"), *map(str, SOURCES)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert "torch._utils._rebuild_tensor_v2" in proc.stdout.split()
