"""`bninspect check`: run the rules over every BN layer of one or more checkpoints.

Folders are scanned recursively for checkpoint files, told by content
(:mod:`bninspect.formats.folders`); a file named on the command line is always attempted. A
file that fails to load is reported with its error and exit class, and the others are still
checked. ``--jobs N`` checks files in N processes (:mod:`bninspect.services.pool`). The
options come from :mod:`bninspect.services.check_config`; the exit code a CI job gates on is
decided here, from every file's result.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

from bninspect.errors import (EXIT_FINDINGS, EXIT_OK, EXIT_PATH, BNInspectError, InvalidFileError, NoStateDictError,
                              UsageError)
from bninspect.rules import SEVERITIES, Context, Finding, run_rules
from bninspect.services.check_config import CheckOptions, resolve_options

if TYPE_CHECKING:
    from bninspect.layers import Discovery
    from bninspect.services.pool import Stopped

SCHEMA = "bninspect.check/2"

# The service's face: the CLI resolves the options and runs the check through this module.
__all__ = ["SCHEMA", "CheckOptions", "CheckReport", "FileResult", "check_file", "collect_files", "count", "exit_code",
           "findings_for", "file_result", "check_discovered", "resolve_options", "check"]


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


# ── files ───────────────────────────────────────────────────────────────────────────────────

def collect_files(paths: list[str]) -> tuple[list[str], list[FileResult]]:
    """The files to check, in order: named files as given, folders walked for checkpoint files
    (:func:`bninspect.formats.folders.checkpoint_files`). Also a FileResult error for each
    folder without any checkpoint file."""
    from bninspect.formats.folders import checkpoint_files

    files: list[str] = []
    problems: list[FileResult] = []
    for p in paths:
        if not os.path.isdir(p):
            files.append(p)
            continue
        found = checkpoint_files(p)
        if not found:
            problems.append(FileResult(path=p, error=f"{p}: no checkpoint file in this folder", exit_code=EXIT_PATH))
        files.extend(found)
    return files, problems


def findings_for(found: Discovery, opts: CheckOptions) -> list[Finding]:
    """The selected rules' findings on layers already discovered (possible BatchNorm included),
    and on the file's safety verdict."""
    ctx = Context(layers=[*found.layers, *found.possible], thresholds=opts.thresholds, checkpoint=found.checkpoint,
                  malformed=found.malformed, verdict=found.checkpoint.verdict)
    return run_rules(ctx, opts.rules())


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
        return file_result(found, path, opts)
    except BNInspectError as exc:
        if opts.debug:
            raise
        findings = (run_rules(Context(layers=[], thresholds=opts.thresholds, verdict=exc.verdict),
                              opts.rules()) if exc.verdict else [])
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
    return result


def file_result(found: Discovery, path: str, opts: CheckOptions) -> FileResult:
    """The FileResult of layers already discovered in ``path`` (a file's, a live module's)."""
    return FileResult(path=path, format=found.checkpoint.format, layers=len(found.layers), possible=len(found.possible),
                      findings=findings_for(found, opts), safety=found.checkpoint.verdict)


def check_discovered(found: Discovery, path: str, opts: CheckOptions) -> CheckReport:
    """check's report on layers already discovered (the Python API: a live module, a loaded file)."""
    return CheckReport(files=[file_result(found, path, opts)], rules=[r.code for r in opts.rules()],
                       fail_on=opts.fail_on, config=opts.config)


def _check_one(path: str, opts: CheckOptions) -> FileResult:
    # check_file is looked up when this runs (in a forked child, or a worker that got this by
    # name without fork), so a replaced one (the tests' dying child) is what runs.
    return check_file(path, opts)


def _stopped(path: str, stopped: Stopped) -> FileResult:
    """The result for a file whose worker process died while checking it."""
    return FileResult(path=path, error=f"{path}: the process checking this file stopped ({stopped.why}); "
                                       "rerun with --jobs 1", exit_code=InvalidFileError.exit_code)


def check(paths: list[str], opts: CheckOptions) -> CheckReport:
    """Check every file under ``paths`` (in ``opts.jobs`` processes) and decide the exit code."""
    if not paths:
        raise UsageError("give one or more checkpoint files or folders")
    rules = opts.rules()
    files, problems = collect_files(paths)
    jobs = opts.jobs or os.cpu_count() or 1
    jobs = min(jobs, len(files))
    if jobs > 1:
        from bninspect.services.pool import Stopped, map_in_processes

        results = [_stopped(path, r) if isinstance(r, Stopped) else r
                   for path, r in zip(files, map_in_processes(functools.partial(_check_one, opts=opts), files, jobs))]
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
    return count_findings(f for r in results for f in r.findings)


def count_findings(findings: Iterable[Finding]) -> dict[str, int]:
    """Findings by severity (every severity present, zeros included)."""
    out = {s: 0 for s in SEVERITIES}
    for f in findings:
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

