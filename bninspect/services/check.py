"""`bninspect check`: run the rules over every BN layer of one or more checkpoints.

Folders are scanned recursively. Which files are checkpoints is decided by content, as
``open_checkpoint`` decides formats: a file is checked when one of the format readers' ``sniff``
claims its first 4 KiB (a zip additionally needs a ``data.pkl`` record, as torch.save and
torch.jit.save archives have, so ordinary zip files are skipped). Everything else in a
folder (code, logs, images, OpenVINO ``.bin`` weights) is skipped quietly; a file named on the
command line is always attempted. A file that fails to load is reported with its error and
exit class, and the others are still checked. ``--jobs N`` checks files in N processes.
"""

from __future__ import annotations

import math
import os
import signal
import stat
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, NoReturn

from bninspect.errors import (EXIT_FINDINGS, EXIT_OK, EXIT_PATH, BNInspectError, InvalidFileError, NoStateDictError,
                              UsageError)
from bninspect.rules import SEVERITIES, Context, Finding, Thresholds, run_rules, select_rules
from bninspect.services.common import validate_eps

if TYPE_CHECKING:
    from bninspect.layers import Discovery

FAIL_ON = ("error", "warning", "info", "never")
FORMATS = ("table", "concise")
SCHEMA = "bninspect.check/2"

# [tool.bninspect] keys (dashes or underscores) → CheckOptions/Thresholds fields and their types.
_CONFIG_KEYS: dict[str, type] = {
    "select": list, "ignore": list, "fail_on": str, "format": str,
    **{f.name: (float if f.name != "min_updates" else int) for f in fields(Thresholds)},
}


@dataclass
class CheckOptions:
    """Everything that decides what `check` reports (after merging pyproject and flags)."""

    select: list[str] = field(default_factory=list)
    ignore: list[str] = field(default_factory=list)
    fail_on: str = "error"
    format: str = "table"
    thresholds: Thresholds = field(default_factory=Thresholds)
    eps: float | None = None
    key: str | None = None
    strict: bool = False
    jobs: int = 1
    config: str | None = None  # the pyproject.toml whose [tool.bninspect] was applied
    debug: bool = False  # let a file's error propagate (with its traceback) instead of reporting it


@dataclass
class FileResult:
    """One checked file: its findings, or the error that kept it from loading."""

    path: str
    format: str | None = None
    layers: int = 0
    possible: int = 0
    findings: list[Finding] = field(default_factory=list)
    error: str | None = None  # one line, our words
    exit_code: int = EXIT_OK  # the error's exit class (3 unsafe, 4 invalid, 5 path, 2 usage)
    no_state_dict: bool = False  # a valid file that holds no state dict (data, not a checkpoint)
    safety: Any = None  # the file's safety verdict (formats.verdict.Verdict), where it has one


@dataclass
class CheckReport:
    """What `check` found in every file, the rules it ran and the exit code a CI job gates on."""

    files: list[FileResult]
    rules: list[str]
    fail_on: str
    config: str | None = None
    skipped: list[str] = field(default_factory=list)  # files in folders that hold no state dict

    @property
    def exit_code(self) -> int:
        """The exit code for ``fail_on`` (see :func:`exit_code`)."""
        return exit_code(self.files, self.fail_on)

    @property
    def counts(self) -> dict[str, int]:
        """Findings by severity over all files."""
        return count(self.files)


# ── configuration ───────────────────────────────────────────────────────────────────────────

def find_config(start: str | os.PathLike | None = None) -> tuple[str, dict[str, Any]] | None:
    """The nearest pyproject.toml with a [tool.bninspect] table, walking up from ``start`` (the
    current directory); files without the table are passed over, as ruff does with [tool.ruff]."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if not candidate.is_file():
            continue
        try:
            with open(candidate, "rb") as fh:
                doc = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UsageError(f"cannot read its [tool.bninspect] settings: {' '.join(str(exc).split())}", path=str(candidate)) from None
        table = doc.get("tool", {}).get("bninspect")
        if table is not None:
            if not isinstance(table, dict):
                raise UsageError("[tool.bninspect] must be a table", path=str(candidate))
            return str(candidate), table
    return None


def _config_value(path: str, key: str, value: Any) -> Any:
    name = key.replace("-", "_")
    kind = _CONFIG_KEYS.get(name)
    if kind is None:
        known = ", ".join(sorted(k.replace("_", "-") for k in _CONFIG_KEYS))
        raise UsageError(f"unknown key '{key}' in [tool.bninspect]; known keys: {known}", path=path)
    if kind is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UsageError(f"[tool.bninspect] {key} must be a list of rule codes or prefixes", path=path)
        return value
    if kind is str:
        if not isinstance(value, str):
            raise UsageError(f"[tool.bninspect] {key} must be a string", path=path)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
        raise UsageError(f"[tool.bninspect] {key} must be a{'n integer' if kind is int else ' number'}", path=path)
    return kind(value)


def resolve_options(flags: dict[str, Any], cwd: str | None = None) -> CheckOptions:
    """Defaults, then the nearest [tool.bninspect], then the flags given (None = not given)."""
    merged: dict[str, Any] = {}
    found = find_config(cwd)
    if found:
        path, table = found
        for key, value in table.items():
            merged[key.replace("-", "_")] = _config_value(path, key, value)
    merged.update({k: v for k, v in flags.items() if v is not None and v != []})
    thresholds = Thresholds(**{f.name: merged.pop(f.name) for f in fields(Thresholds) if f.name in merged})
    opts = CheckOptions(thresholds=thresholds, config=found[0] if found else None,
                        **{k: v for k, v in merged.items() if k in {f.name for f in fields(CheckOptions)}})
    _validate(opts)
    return opts


def _validate(opts: CheckOptions) -> None:
    if opts.fail_on not in FAIL_ON:
        raise UsageError(f"--fail-on must be one of {', '.join(FAIL_ON)}, not '{opts.fail_on}'")
    if opts.format not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not '{opts.format}'")
    if opts.jobs < 0:
        raise UsageError("--jobs must be 0 (one per CPU) or more")
    t = opts.thresholds
    for name in ("min_updates", "count_ratio", "max_scale", "outlier_z"):
        value = getattr(t, name)
        if not (math.isfinite(value) and value > 0):
            raise UsageError(f"--{name.replace('_', '-')} must be a positive number, not {value}")
    for name in ("dead_gamma", "eps_tolerance"):
        value = getattr(t, name)
        if not (math.isfinite(value) and value >= 0):
            raise UsageError(f"--{name.replace('_', '-')} must be zero or a positive number, not {value}")
    validate_eps(t.expect_eps, "--expect-eps")
    validate_eps(opts.eps)
    select_rules(opts.select, opts.ignore)  # unknown codes are usage errors before any file is read


# ── files ───────────────────────────────────────────────────────────────────────────────────

def _is_checkpoint(path: str) -> bool:
    """Does a file found in a folder look like something a reader can open? (content, not name)"""
    from bninspect.formats import HEAD_SIZE, reader_for
    from bninspect.formats.paths import read_head

    try:
        head = read_head(path, HEAD_SIZE)
    except BNInspectError:
        return True  # unreadable: report it rather than skip it silently
    if reader_for(head) is None:
        return False
    return _torch_zip(path, head) if head[:4] == b"PK\x03\x04" else True


def _torch_zip(path: str, head: bytes) -> bool:
    """torch.save and torch.jit.save archives hold ``<name>/data.pkl``; other zips are not ours.
    A zip whose directory cannot be read is kept: it may be a truncated checkpoint to report."""
    # torch.save writes data.pkl first: its name in the first local header settles it without
    # reading the directory (the folder walk runs before --jobs splits the work).
    first = head[30:30 + int.from_bytes(head[26:28], "little")]
    if first == b"data.pkl" or first.endswith(b"/data.pkl"):
        return True
    from bninspect.formats.paths import open_regular

    try:
        with os.fdopen(open_regular(path), "rb") as fh, zipfile.ZipFile(fh) as zf:
            return any(n == "data.pkl" or n.endswith("/data.pkl") for n in zf.namelist())
    except (zipfile.BadZipFile, OSError, ValueError, BNInspectError):
        return True


def _walk(top: str) -> Iterator[tuple[str, list[str]]]:
    """(folder, sorted names of what is not a folder in it) for ``top`` and every folder below it,
    top-down in sorted order, skipping hidden folders and not following symlinked ones, as
    ``os.walk`` would; with a stack, not recursion (``os.walk`` recurses before Python 3.12,
    and a folder nested a thousand levels deep would exceed the recursion limit)."""
    stack = [top]
    while stack:
        root = stack.pop()
        try:
            with os.scandir(root) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:  # unreadable, or vanished: os.walk skips it too
            continue
        dirs, names = [], []
        for entry in entries:
            try:
                folder = entry.is_dir(follow_symlinks=False)
            except OSError:
                folder = False
            if not folder:
                names.append(entry.name)
            elif not entry.name.startswith("."):
                dirs.append(os.path.join(root, entry.name))
        yield root, names
        stack.extend(reversed(dirs))


def collect_files(paths: list[str]) -> tuple[list[str], list[FileResult]]:
    """The files to check, in order: named files as given, folders walked recursively (sorted,
    hidden folders skipped, symlinked folders not followed, FIFOs/sockets/devices skipped). Also
    a FileResult error for each folder without any checkpoint file."""
    files: list[str] = []
    problems: list[FileResult] = []
    for p in paths:
        if not os.path.isdir(p):
            files.append(p)
            continue
        found = []
        for root, names in _walk(p):
            for n in names:
                full = os.path.join(root, n)
                try:
                    regular = stat.S_ISREG(os.stat(full).st_mode)
                except OSError:  # a dangling link or an unreadable entry: report it, do not hide it
                    found.append(full)
                    continue
                # FIFOs, sockets and devices are never checkpoints (and reading a FIFO blocks)
                if regular and _is_checkpoint(full):
                    found.append(full)
        if not found:
            problems.append(FileResult(path=p, error=f"{p}: no checkpoint file in this folder", exit_code=EXIT_PATH))
        files.extend(found)
    return files, problems


def findings_for(found: Discovery, opts: CheckOptions) -> list[Finding]:
    """The selected rules' findings on layers already discovered (possible BatchNorm included),
    and on the file's safety verdict."""
    ctx = Context(layers=[*found.layers, *found.possible], thresholds=opts.thresholds, checkpoint=found.checkpoint,
                  malformed=found.malformed, verdict=found.checkpoint.verdict)
    return run_rules(ctx, select_rules(opts.select, opts.ignore))


def check_file(path: str, opts: CheckOptions) -> FileResult:
    """Open one file, discover its layers and run the selected rules; load errors become the result.

    Files are read statically and never refused for what a real load would run: that is the
    safety rules' finding (BN4xx). A file whose pickles were judged but that holds no state
    dict (a bare payload) or broke afterwards gets those findings instead of its error, when
    there are any; a clean one keeps its error.
    """
    from bninspect.services.common import open_layers

    result = FileResult(path=path)
    try:
        found = open_layers(path, key=opts.key, strict=opts.strict, eps=opts.eps, refuse_unsafe=False)
        result.format = found.checkpoint.format
        result.layers, result.possible = len(found.layers), len(found.possible)
        result.findings = findings_for(found, opts)
        result.safety = found.checkpoint.verdict
    except BNInspectError as exc:
        if opts.debug:
            raise
        findings = (run_rules(Context(layers=[], thresholds=opts.thresholds, verdict=exc.verdict),
                              select_rules(opts.select, opts.ignore)) if exc.verdict else [])
        if any(f.severity != "info" for f in findings):
            result.findings, result.safety = findings, exc.verdict  # type: ignore[assignment]
            return result
        result.error, result.exit_code = exc.line() if exc.path else f"{path}: {exc.line()}", exc.exit_code
        result.no_state_dict = isinstance(exc, NoStateDictError)
    except Exception as exc:  # a bug in a reader or a rule must not stop the other files
        if opts.debug:
            raise
        detail = " ".join(str(exc)[:400].split())[:200]
        result.error = (f"{path}: unexpected failure ({type(exc).__name__}: {detail}); this is a bug in bninspect, "
                        "rerun with --debug and report it")
        result.exit_code = InvalidFileError.exit_code
    if result.error:
        result.format, result.layers, result.possible, result.findings, result.safety = None, 0, 0, [], None
    return result


def _in_processes(files: list[str], opts: CheckOptions, jobs: int) -> list[FileResult]:
    """Check ``files`` in ``jobs`` processes: this one and ``jobs - 1`` forked children.

    Every process takes the next file's index from a shared pipe (4 bytes each, so each read
    takes one whole index) until the pipe is empty; a child then sends its results back
    pickled through a pipe of its own. Forked children start in about a millisecond with every
    module imported, and only one message per child travels back. A process pool (its
    import, a feeder thread, a message per file and per result) got 1.54x on the benchmark
    folder's work from 1 to 2 jobs on 2 cores; a fixed split of the files was worse where a
    folder alternates .safetensors and .pt (one process got all the slower .pt files).
    Without ``os.fork`` (Windows) a process pool does the work.
    """
    if not hasattr(os, "fork"):
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs) as pool:
            return list(pool.map(check_file, files, [opts] * len(files)))
    queue_read, queue_write = os.pipe()
    children: dict[int, int] = {}  # pid → the read end of the pipe its results come back through
    try:
        for _ in range(jobs - 1):
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(queue_write)  # else the queue never ends for this child
                _child(files, opts, queue_read, read_end, write_end)
            os.close(write_end)
            children[pid] = read_end
        with os.fdopen(queue_write, "wb") as queue:  # blocks while the children take indices
            queue_write = -1
            queue.write(b"".join(i.to_bytes(4, "little") for i in range(len(files))))
        results = _take(files, opts, queue_read)
        stopped = None
        for pid, read_end in list(children.items()):
            del children[pid]
            theirs, why = _collect(pid, read_end)
            results.update(theirs)
            stopped = stopped or why
        return [results[i] if i in results else
                FileResult(path=f, error=f"{f}: the process checking this file stopped ({stopped}); rerun with --jobs 1",
                           exit_code=InvalidFileError.exit_code) for i, f in enumerate(files)]
    finally:  # an error or Ctrl-C in this process: leave no child behind
        os.close(queue_read)
        if queue_write >= 0:
            os.close(queue_write)
        for pid, read_end in children.items():
            os.close(read_end)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def _take(files: list[str], opts: CheckOptions, queue: int) -> dict[int, FileResult]:
    """Check the files whose indices this process reads from the queue, until it is empty."""
    done: dict[int, FileResult] = {}
    while index := os.read(queue, 4):
        if len(index) != 4:  # never seen: every write and read of the queue is a multiple of 4 bytes
            raise RuntimeError("the --jobs queue handed out part of a file index")
        i = int.from_bytes(index, "little")
        done[i] = check_file(files[i], opts)
    return done


def _child(files: list[str], opts: CheckOptions, queue: int, read_end: int, write_end: int) -> NoReturn:
    """A forked child: check files from the queue, write the results (or --debug's error) to
    its pipe, exit."""
    import pickle

    code = 1
    try:
        os.close(read_end)
        try:
            payload: object = _take(files, opts, queue)
        except Exception as exc:  # only with --debug does a file's error get out of check_file
            payload = exc
        with os.fdopen(write_end, "wb") as pipe:
            pickle.dump(payload, pipe, protocol=pickle.HIGHEST_PROTOCOL)
        code = 0
    finally:
        os._exit(code)  # no atexit handlers, no flush of output buffers inherited from the parent


def _collect(pid: int, read_end: int) -> tuple[dict[int, FileResult], str | None]:
    """A child's results by file index, and why it stopped if it died before sending them."""
    import pickle

    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    try:
        payload = pickle.loads(data) if status == 0 else None
    except Exception:
        payload = None
    if isinstance(payload, Exception):
        raise payload
    if payload is None:  # killed (out of memory, a signal) or failed to send
        code = os.waitstatus_to_exitcode(status)
        return {}, f"signal {-code}" if code < 0 else f"exit status {code}"
    return payload, None


def run_check(paths: list[str], opts: CheckOptions) -> CheckReport:
    """Check every file under ``paths`` (in ``opts.jobs`` processes) and decide the exit code."""
    if not paths:
        raise UsageError("give one or more checkpoint files or folders")
    rules = select_rules(opts.select, opts.ignore)
    files, problems = collect_files(paths)
    jobs = opts.jobs or os.cpu_count() or 1
    jobs = min(jobs, len(files))
    if jobs > 1:
        results = _in_processes(files, opts, jobs)
    else:
        results = [check_file(f, opts) for f in files]
    # A folder of checkpoints often holds data too (a calibration tensor saved with torch.save):
    # found by a folder walk, such a file is skipped and named, not an error. Named on the
    # command line it stays an error: the user asked for that file.
    named = set(paths)
    skipped = [r.path for r in results if r.no_state_dict and r.path not in named]
    results = [r for r in results if not (r.no_state_dict and r.path not in named)]
    results.extend(problems)
    return CheckReport(files=results, rules=[r.code for r in rules], fail_on=opts.fail_on, config=opts.config,
                       skipped=skipped)


def count(results: list[FileResult]) -> dict[str, int]:
    """Findings by severity over all files (every severity present, zeros included)."""
    out = {s: 0 for s in SEVERITIES}
    for r in results:
        for f in r.findings:
            out[f.severity] += 1
    return out


def exit_code(results: list[FileResult], fail_on: str) -> int:
    """0: nothing at or above ``fail_on``; 1: findings (or a file that failed among others);
    the first failure's class (3–5) when no file could be loaded at all."""
    loaded = [r for r in results if r.error is None]
    failed = [r for r in results if r.error is not None]
    if not loaded and failed:
        return failed[0].exit_code
    if fail_on == "never":
        return EXIT_OK
    gate = SEVERITIES[: SEVERITIES.index(fail_on) + 1]
    if failed or any(f.severity in gate for r in loaded for f in r.findings):
        return EXIT_FINDINGS
    return EXIT_OK

