"""Render a CheckReport: a table per file, one line per finding (concise), or JSON.

Messages embed layer names from the file, so every message goes to rich as a ``Text`` (never
parsed for markup) with control characters made visible.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from bninspect.render.common import console, safe, text
from bninspect.render.jsondoc import dumps, plain
from bninspect.render.rules import STYLE
from bninspect.services.check import SCHEMA, CheckReport, FileResult

if TYPE_CHECKING:
    from rich.text import Text

# rich is imported only by the functions that draw: `check --json` never loads it.


def to_json(report: CheckReport) -> str:
    """The documented JSON document (schema bninspect.check/1)."""
    body = {
        "files": [{"path": f.path, "format": f.format, "layers": f.layers, "possible_batchnorm": f.possible,
                   "error": f.error, "exit_code": f.exit_code if f.error else None, "findings": f.findings}
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
            sys.stderr.write(f"bninspect: error: {safe(f.error)}\n")
    sys.stderr.flush()


def _summary(report: CheckReport) -> Text:
    from rich.text import Text

    c = report.counts
    total = sum(c.values())
    loaded = sum(1 for f in report.files if not f.error)
    failed = len(report.files) - loaded
    line = Text(f"{total} finding{'s' if total != 1 else ''} ")
    line.append(f"({c['error']} error{'s' if c['error'] != 1 else ''}, {c['warning']} warning{'s' if c['warning'] != 1 else ''}, "
                f"{c['info']} info) in {loaded} file{'s' if loaded != 1 else ''}")
    if failed:
        line.append(f"; {failed} could not be checked", style="bold red")
    if report.skipped:
        n = len(report.skipped)
        line.append(f"; skipped {n} file{'s that hold' if n != 1 else ' that holds'} no state dict "
                    f"({', '.join(safe(s) for s in report.skipped[:3])}{', …' if len(report.skipped) > 3 else ''})")
    line.append(f"; failing on: {report.fail_on}" + (f" (settings from {report.config})" if report.config else ""))
    return line


def _file_header(f: FileResult) -> Text:
    head = text(f.path, "bold")
    if f.error:
        head.append(f"  could not be checked (exit class {f.exit_code}; the error is on stderr)", style="bold red")
        return head
    head.append(f"  {f.format}, {f.layers} BN layer{'s' if f.layers != 1 else ''}")
    if f.possible:
        head.append(f" (+{f.possible} possible)")
    n = len(f.findings)
    head.append(f", {n} finding{'s' if n != 1 else ''}" if n else ", no findings", style="" if n else "green")
    return head


def render_table(report: CheckReport) -> None:
    """Per file: a header line, then a table of findings (code, severity, layer, message, fix)."""
    from rich.table import Table
    from rich.text import Text

    out = console()
    for f in report.files:
        out.print(_file_header(f))
        if f.error or not f.findings:
            continue
        table = Table(header_style="bold", pad_edge=False, show_lines=False)
        table.add_column("code", no_wrap=True)
        table.add_column("severity", no_wrap=True)
        table.add_column("layer", overflow="fold")
        table.add_column("finding / fix", overflow="fold", ratio=1)
        for item in f.findings:
            cell = text(item.message)
            cell.append("\nfix: ", style="dim")
            cell.append(safe(item.fix), style="dim")
            table.add_row(item.code, Text(item.severity, style=STYLE[item.severity]), text(item.layer), cell)
        out.print(table)
    out.print(_summary(report))


def render_concise(report: CheckReport) -> None:
    """One line per finding, ruff-style: ``path:layer: CODE [severity] message`` (load errors
    are on stderr only, and counted in the summary)."""
    out = console()
    for f in report.files:
        for item in f.findings:
            line = text(f"{f.path}:{item.layer}: ")
            line.append(item.code, style="bold")
            line.append(" ")
            line.append(f"[{item.severity}]", style=STYLE[item.severity])
            line.append(" ")
            line.append(safe(item.message))
            out.print(line, soft_wrap=True)
    out.print(_summary(report), soft_wrap=True)


def render(report: CheckReport, fmt: str, as_json: bool) -> None:
    """Print the report in the chosen form; load failures also go to stderr, one line each."""
    errors(report)
    if as_json:
        sys.stdout.write(to_json(report) + "\n")
    elif fmt == "concise":
        render_concise(report)
    else:
        render_table(report)
