"""Render a CheckReport: a table per file, one line per finding (concise), or JSON.

Messages embed layer names from the file, so every message goes to rich as a ``Text`` (never
parsed for markup) with control characters made visible.
"""

from __future__ import annotations

import sys

from bninspect.render.common import Column, Out, Styled, table, visible, write_document
from bninspect.render.jsondoc import dumps, plain, safety
from bninspect.render.rules import STYLE
from bninspect.services.check import SCHEMA, CheckReport, FileResult

# rich is imported only where the output is a terminal (render.common.Out): `check --json`, and
# `check` in CI logs and pipes, never load it.


def to_json(report: CheckReport) -> str:
    """The documented JSON document (schema bninspect.check/2: /1 plus each file's ``safety``)."""
    body = {
        "files": [{"path": f.path, "format": f.format, "layers": f.layers, "possible_batchnorm": f.possible,
                   "error": f.error, "exit_code": f.exit_code if f.error else None, "findings": f.findings,
                   "safety": safety(f.safety)}
                  for f in report.files],
        # Every finding once more, flat and with its file, so `jq '.findings[]'` works across files.
        "findings": [{"path": f.path, **plain(x)} for f in report.files for x in f.findings],
        "summary": {**report.counts, "files": len(report.files),
                    "failed_files": sum(1 for f in report.files if f.error)},
        "rules": report.rules, "fail_on": report.fail_on, "config": report.config, "exit_code": report.exit_code,
        "skipped": report.skipped,
    }
    return dumps(SCHEMA, body)


def errors(report: CheckReport) -> None:
    """One stderr line per file that could not be loaded, in the CLI's error format."""
    for f in report.files:
        if f.error:
            sys.stderr.write(f"bninspect: error: {visible(f.error)}\n")
    sys.stderr.flush()


def _summary(report: CheckReport) -> Styled:
    c = report.counts
    total = sum(c.values())
    loaded = sum(1 for f in report.files if not f.error)
    failed = len(report.files) - loaded
    line = Styled(f"{total} finding{'s' if total != 1 else ''} ")
    line.append(f"({c['error']} error{'s' if c['error'] != 1 else ''}, {c['warning']} warning{'s' if c['warning'] != 1 else ''}, "
                f"{c['info']} info) in {loaded} file{'s' if loaded != 1 else ''}")
    if failed:
        line.append(f"; {failed} could not be checked", style="bold red")
    if report.skipped:
        n = len(report.skipped)
        line.append(f"; skipped {n} file{'s that hold' if n != 1 else ' that holds'} no state dict "
                    f"({', '.join(visible(s) for s in report.skipped[:3])}{', …' if len(report.skipped) > 3 else ''})")
    line.append(f"; failing on: {report.fail_on}" + (f" (settings from {report.config})" if report.config else ""))
    return line


def _file_header(f: FileResult) -> Styled:
    head = Styled(visible(f.path), "bold")
    if f.error:
        head.append(f"  could not be checked (exit class {f.exit_code}; the error is on stderr)", style="bold red")
        return head
    head.append(f"  {f.format}, {f.layers} BN layer{'s' if f.layers != 1 else ''}")
    if f.possible:
        head.append(f" (+{f.possible} possible)")
    n = len(f.findings)
    head.append(f", {n} finding{'s' if n != 1 else ''}" if n else ", no findings", "" if n else "green")
    return head


_COLUMNS = (Column("code"), Column("severity"), Column("layer", wrap=True), Column("finding / fix", wrap=True))


def render_table(report: CheckReport) -> None:
    """Per file: a header line, then a table of findings (code, severity, layer, message, fix)."""
    out = Out()
    for f in report.files:
        out.print(_file_header(f))
        if f.error or not f.findings:
            continue
        rows = [(item.code, Styled(item.severity, STYLE[item.severity]), visible(item.layer),
                 Styled(visible(item.message)).append("\nfix: " + visible(item.fix), "dim")) for item in f.findings]
        out.print(table(_COLUMNS, rows, width=out.width), wrap=False)
    out.print(_summary(report))


def render_concise(report: CheckReport) -> None:
    """One line per finding, ruff-style: ``path:layer: CODE [severity] message`` (load errors
    are on stderr only, and counted in the summary)."""
    out = Out()
    for f in report.files:
        for item in f.findings:
            line = Styled(visible(f"{f.path}:{item.layer}: ")).append(item.code, "bold").append(" ")
            line.append(f"[{item.severity}]", STYLE[item.severity]).append(" " + visible(item.message))
            out.print(line, wrap=False)
    out.print(_summary(report), wrap=False)


def render(report: CheckReport, fmt: str, as_json: bool) -> None:
    """Print the report in the chosen form; load failures also go to stderr, one line each."""
    errors(report)
    if as_json:
        write_document(to_json(report))
    elif fmt == "concise":
        render_concise(report)
    else:
        render_table(report)
