"""The hardening invariant: every corpus case, through the installed command, gets the answer it is owed.

For each (command, case) run: the expected exit code, exactly one ``bninspect: error:`` line on
stderr for a failure (naming what is wrong), the expected text on stdout for a success, no
traceback, no "unexpected failure" (our bug line), no raw terminal escape in any output, and no
hang (FIFOs, devices). After all runs: no payload created its marker, and the corpus folder
holds exactly the files it held before, with the same bytes and mtimes.

Budget (CI: 2 cores, ~60 s; a bninspect process costs ~0.5 s of CPU, ~3 s when it imports
torch): ``show`` runs on every case; ``check`` on every file case in two batched ``check --json``
calls (per-file exit codes in the document) and as a single-file command on four; ``explain``
and ``diff`` on ten representative failures; ``verify`` and ``drift`` on one hostile file each.
Runs go through a thread pool, one process per core.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import SAMPLES, Run, assert_one_line_error, bninspect_command, with_pythonpath
from tests.hardening.make_corpus import MARKER_PREFIX, OK, UNSAFE, Case, build_corpus, snapshot

# Every test here needs torch (the Python 3.10 job of .ci/run runs without it).
pytestmark = pytest.mark.torch

GOOD = SAMPLES / "mobilenet_v1_tiny.pt"
TIMEOUT = 90  # a blocked read (FIFO) must fail the run, not hang the suite; generous for a loaded CI box

# The subset that also goes through explain and diff: one case per kind of answer and format.
REPRESENTATIVE = (
    "zip_exec_p2", "legacy_exec_p4", "lightning_exec", "ts_exec", "truncated_zip", "record_bad_crc_strict",
    "st_header_past_eof", "onnx_external_data_escape", "fifo", "symlink_loop", "name_newline_escape",
)
# verify and drift import torch (~3 s each): a hostile zip for one, a hostile legacy Lightning file for the other.
HEAVY = {"verify": ("zip_exec_p4",), "drift": ("lightning_legacy_system",)}
SINGLE_CHECK = ("zip_exec_p2", "st_header_not_utf8", "symlink_loop", "name_newline_escape")


@dataclass(frozen=True)
class Job:
    command: str
    case: Case

    @property
    def id(self) -> str:
        return f"{self.command}-{self.case.name}"

    def args(self) -> list[str]:
        c = self.case
        strict = ["--strict"] if c.strict else []
        if self.command == "show":
            return ["show", c.path, *strict, *c.extra]
        if self.command == "explain":
            return ["explain", c.path, "bn", *strict]
        if self.command == "check":
            return ["check", c.path, *strict]
        if self.command == "verify":
            return ["verify", c.path, *strict]
        if self.command == "diff":
            return ["diff", c.path, str(GOOD)]
        if self.command == "drift":
            # --arch reads the state dict safely; the refusal must come before any model runs.
            return ["drift", c.path, "--arch", "sample_models:mobilenet_v1_tiny", "--synthetic", "2x3x16x16"]
        raise AssertionError(self.command)


def _jobs(cases: list[Case]) -> list[Job]:
    """Every (command, case) run: show on every case, the other commands on their subsets. A
    command missing from a build fails its runs (exit 2): a CLI broken by an upgrade is red."""
    by_name = {c.name: c for c in cases}
    jobs = [Job("show", c) for c in cases]
    plan = (("explain", REPRESENTATIVE), ("diff", REPRESENTATIVE), ("check", SINGLE_CHECK),
            ("verify", HEAVY["verify"]), ("drift", HEAVY["drift"]))
    for command, names in plan:
        # diff and drift have no --strict; their strict cases would not test the same thing.
        jobs += [Job(command, by_name[n]) for n in names
                 if not (by_name[n].strict and command in ("diff", "drift"))]
    return jobs


def _run(args: list[str], cwd: Path) -> Run | None:
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": with_pythonpath(str(SAMPLES))}
    try:
        proc = subprocess.run([*bninspect_command(), *args], capture_output=True, cwd=cwd, env=env,
                              timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None
    return Run(proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace"))


@dataclass
class Corpus:
    folder: Path
    cases: list[Case]
    before: dict[str, tuple]
    results: dict[str, Run | None]
    batches: dict[bool, dict | None]


def _check_batch(cases: list[Case], folder: Path, strict: bool) -> dict | None:
    """One `check --json` over many files: the per-file exit codes are in the document."""
    # check scans a directory as a folder of checkpoints, a different question from "is this a file".
    paths = [c.path for c in cases if c.strict == strict and c.name != "directory" and not c.skip]
    run = _run(["check", "--json", *(["--strict"] if strict else []), *paths], folder)
    if run is None:
        return None
    return {"run": run, "doc": json.loads(run.out) if run.out.strip().startswith("{") else None, "paths": paths}


_BUILT: tuple[Path, list[Case]] | None = None


def built_corpus() -> tuple[Path, list[Case]]:
    """The corpus folder and its cases, built once per process.

    The case names are needed at collection (one test id per case), the files by the runs; one
    build (a few seconds) serves both. The folder is removed when the process exits.
    """
    global _BUILT
    if _BUILT is None:
        folder = Path(tempfile.mkdtemp(prefix="bninspect-corpus-"))
        atexit.register(shutil.rmtree, folder, True)
        cases = build_corpus(folder)
        # Old mtimes on every input, so a rewrite within the same clock tick would still show.
        for c in cases:
            p = folder / c.path
            if os.path.lexists(p) and stat.S_ISREG(os.lstat(p).st_mode):
                os.utime(p, ns=(10**18, 10**18), follow_symlinks=False)
        _BUILT = folder, cases
    return _BUILT


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    """Run every planned (command, case) job once, in parallel, and keep the results."""
    folder, cases = built_corpus()
    before = snapshot(folder)
    jobs = [j for j in _jobs(cases) if not j.case.skip]
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        batch_futures = {strict: pool.submit(_check_batch, cases, folder, strict) for strict in (False, True)}
        runs = dict(zip((j.id for j in jobs), pool.map(lambda j: _run(j.args(), folder), jobs)))
        batches = {strict: f.result() for strict, f in batch_futures.items()}
    return Corpus(folder, cases, before, runs, batches)


def _param(case: Case, *prefix: str, known_bug: bool = True):
    marks = []
    if case.skip:
        marks.append(pytest.mark.skip(reason=case.skip))
    if case.xfail and known_bug:
        marks.append(pytest.mark.xfail(strict=True, reason=case.xfail))
    return pytest.param(*prefix, case, id="-".join([*prefix, case.name]), marks=marks)


ALL_JOBS = _jobs(built_corpus()[1])


def assert_answer(run: Run | None, case: Case, codes: tuple[int, ...]) -> None:
    """The invariant for one run of one case."""
    assert run is not None, f"no answer within {TIMEOUT} s: bninspect blocked or hung on {case.path!r}"
    everything = run.out + run.err
    assert "Traceback" not in everything, run.err
    assert "unexpected failure" not in run.err, f"bninspect reports a bug of its own: {run.err}"
    assert "\x1b" not in everything, "a raw terminal escape reached the output"
    assert run.code in codes, (run.code, codes, run.err[-2000:])
    if run.code != OK:
        assert len(run.err_lines) == 1, run.err
        assert run.err_lines[0].startswith("bninspect: error: "), run.err
        assert case.needle in run.err_lines[0], (case.needle, run.err)
        if run.code == UNSAFE:  # a refusal says how to opt in, and what that costs
            assert "--trust" in run.err_lines[0], run.err
    else:
        assert case.needle in run.out, (case.needle, run.out[-2000:])


@pytest.mark.parametrize("command,case", [_param(j.case, j.command) for j in ALL_JOBS])
def test_every_command_answers_every_case(corpus, command, case):
    """Exit code, one stderr line naming the problem, no traceback, no escape, no hang."""
    if command == "check" and case.code == UNSAFE:
        # check reads it statically and reports what a real load would run as a finding.
        run = corpus.results[f"{command}-{case.name}"]
        assert run is not None and run.code == 1 and not run.err_lines, run
        assert "Traceback" not in run.out and "\x1b" not in run.out
        assert case.needle in run.out and ("BN401" in run.out or "BN402" in run.out), run.out
        return
    codes = (case.code,)
    if case.code == OK and command in ("check", "verify", "diff"):
        codes = (0, 1)  # findings, failed checks or differences are answers too
    assert_answer(corpus.results[f"{command}-{case.name}"], case, codes)


# For a loadable case the batch only asserts "no error": a known bug in what show prints does not apply.
@pytest.mark.parametrize("case", [_param(c, known_bug=c.code != OK) for c in built_corpus()[1] if c.name != "directory"])
def test_check_batch_reports_every_file(corpus, case):
    """`check --json` over the whole corpus: each file's own exit code, in one process."""
    batch = corpus.batches[case.strict]
    assert batch is not None, f"check --json on the corpus did not answer within {TIMEOUT} s"
    run, doc = batch["run"], batch["doc"]
    assert "Traceback" not in run.out + run.err and "unexpected failure" not in run.err, run.err
    assert doc is not None, run.out[-2000:]
    entry = next(f for f in doc["files"] if f["path"] == case.path)
    if case.code == OK:
        assert entry["error"] is None, entry
    elif case.code == UNSAFE:
        # Not an error for check: the file is read statically, and the verdict is the finding.
        assert entry["error"] is None, entry
        refused = [x for x in entry["findings"] if x["code"] in ("BN401", "BN402")]
        assert refused and any(case.needle in x["message"] for x in refused), entry["findings"]
        assert entry["safety"]["refused"] is True
    else:
        assert entry["exit_code"] == case.code, entry
        assert case.needle in entry["error"], (case.needle, entry)


def test_no_payload_ran_and_inputs_are_untouched(corpus):
    """No marker anywhere; same entries, bytes and mtimes in the corpus folder; nothing new beside an input."""
    after = snapshot(corpus.folder)
    markers = [name for name in after if MARKER_PREFIX in name]
    markers += [p.name for p in Path.cwd().glob(f"{MARKER_PREFIX}*")]
    assert not markers, f"payload ran: {markers}"
    changed = {k: (corpus.before.get(k), after.get(k)) for k in set(corpus.before) | set(after)
               if corpus.before.get(k) != after.get(k)}
    assert not changed, changed
    # Guard against a vacuous pass: the runs above really happened.
    assert sum(r is not None for r in corpus.results.values()) >= len(corpus.cases)


def test_every_payload_is_live(tmp_path):
    """Each hostile file does run its payload under torch.load(weights_only=False) / torch.jit.load.

    Without this, "no marker appeared" could mean the payload was broken, not that bninspect held.
    """
    folder, cases = built_corpus()
    hostile = [c for c in cases if c.payload]
    script = ("import sys, torch\n"
              "for kind, path in zip(sys.argv[1::2], sys.argv[2::2]):\n"
              "    try:\n"
              "        torch.jit.load(path) if kind == 'torchscript' else torch.load(path, weights_only=False)\n"
              "    except Exception:\n"
              "        pass\n")
    args = [a for c in hostile for a in (c.payload, str(folder / c.path))]
    subprocess.run([sys.executable, "-c", script, *args], cwd=tmp_path, timeout=TIMEOUT, capture_output=True)
    deadline = time.monotonic() + 10  # subprocess.Popen's touch runs asynchronously
    while time.monotonic() < deadline and not all((tmp_path / c.marker).exists() for c in hostile):
        time.sleep(0.1)
    dead = [c.name for c in hostile if not (tmp_path / c.marker).exists()]
    assert not dead, f"payloads that did not run under a trusting loader: {dead}"
    assert len(hostile) >= 15


def test_trust_really_runs_the_file(tmp_path):
    """--trust is the documented opt-in to running code: the same refused file then runs its payload."""
    folder, cases = built_corpus()
    case = next(c for c in cases if c.name == "zip_exec_p2")
    shutil.copy(folder / case.path, tmp_path / case.path)
    run = _run(["show", "--trust", case.path], tmp_path)
    assert run is not None and (tmp_path / case.marker).exists(), run


def test_malformed_bn_is_named_by_every_command(corpus):
    """A BN whose weight and statistics differ in length: named in one line, never an "unexpected failure"."""
    case = next(c for c in corpus.cases if c.name == "weight_mismatch_bn")
    explain = _run(["explain", case.path, "bn", "--channel", "2"], corpus.folder)
    assert explain is not None
    assert_one_line_error(explain, 4, "bn: its tensors disagree in length", "running_mean [7]")
    check = _run(["check", case.path, "--json"], corpus.folder)
    assert check is not None and check.code == 1 and not check.err.strip(), check.err
    assert "BN003" in [f["code"] for f in json.loads(check.out)["findings"]]


def test_check_scans_a_folder_of_special_files_without_blocking(tmp_path):
    """A folder scan meets a FIFO, a link to /dev/zero and a symlink loop: skipped or named, never read."""
    os.mkfifo(tmp_path / "pipe.pt")
    os.symlink("/dev/zero", tmp_path / "zero.pt")
    os.symlink("loop.pt", tmp_path / "loop.pt")
    shutil.copy(GOOD, tmp_path / "good.pt")
    run = _run(["check", "--json", "."], tmp_path)
    assert run is not None, "check blocked on a special file in the folder"
    assert "Traceback" not in run.out + run.err and "unexpected failure" not in run.err, run.err
    assert all(line.startswith("bninspect: error: ") for line in run.err_lines), run.err
    files = {Path(f["path"]).name: f for f in json.loads(run.out)["files"]}
    assert files["good.pt"]["error"] is None
    assert "pipe.pt" not in files or files["pipe.pt"]["exit_code"] == 5
    assert "zero.pt" not in files or files["zero.pt"]["exit_code"] == 5
