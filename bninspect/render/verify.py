"""Render a VerifyResult: the conformance table or the per-layer table, a diagnosis, a summary; or JSON."""

from __future__ import annotations

from rich.table import Table

from bninspect.render.common import console, markup, num, text
from bninspect.render.jsondoc import dumps
from bninspect.services.verify import SCHEMA, Diagnosis, LayerVerify, VerifyResult

_PATH_SHORT = {"batch_norm": "F.bn", "folded": "folded", "fused_conv": "fused", "fused_linear": "fused",
               "cpu_vs_cuda": "cpu↔cuda"}


def to_json(result: VerifyResult) -> str:
    """The documented JSON document (schema bninspect.verify/1)."""
    body = {
        "mode": result.mode, "file": result.path, "device": result.device, "devices": result.devices,
        "torch": result.torch_version, "passed": result.passed, "summary": result.summary,
        "tolerances": result.tolerances, "layers": result.layers, "cases": result.cases,
        "input": result.input, "output": result.output, "synthetic": result.synthetic,
        "train_batches": result.train_batches,
    }
    if result.diagnosis is not None:
        body["diagnosis"] = result.diagnosis
    return dumps(SCHEMA, body)


def _verdict(passed: bool, skipped: str = "") -> str:
    if skipped:
        return "[yellow]skipped[/]"
    return "[green]pass[/]" if passed else "[bold red]FAIL[/]"


def _cases_table(result: VerifyResult) -> Table:
    table = Table(header_style="bold", pad_edge=False)
    for col, kw in (("case", {}), ("device", {}), ("max abs err", {"justify": "right"}),
                    ("max rel err", {"justify": "right"}), ("rtol", {"justify": "right"}),
                    ("used", {"justify": "right"}), ("result", {})):
        table.add_column(col, **kw)
    for c in result.cases:
        used = "—" if c.skipped else f"{c.used:.0%}"
        verdict = _verdict(c.passed, c.skipped)
        if c.skipped:
            verdict += f" ({markup(c.skipped)})"
        table.add_row(c.name, c.device, num(c.max_abs_err, 3), num(c.max_rel_err, 3), num(c.tolerance, 2), used, verdict)
    return table


def _paths_cell(layer: LayerVerify) -> str:
    seen: dict[str, bool] = {}
    for check in layer.checks:
        name = _PATH_SHORT.get(check.path, check.path)
        seen[name] = seen.get(name, True) and check.passed
    return " ".join(f"{name}{'✓' if ok else '[bold red]✗[/]'}" for name, ok in seen.items())


def _layers_table(result: VerifyResult) -> Table:
    table = Table(header_style="bold", pad_edge=False)
    table.add_column("layer", no_wrap=True)
    for col in ("dtype", "eps"):
        table.add_column(col)
    for col in ("max abs err", "max rel err", "used"):
        table.add_column(col, justify="right")
    table.add_column("paths")
    table.add_column("Δ if eps were", justify="right")
    table.add_column("train−eval gap B=" + "/".join(map(str, result.train_batches)), justify="right")
    table.add_column("result")
    for layer in result.layers:
        eps = f"{layer.eps:g}" + ("" if layer.eps_source == "module" else f" ({layer.eps_source})")
        if layer.skipped:
            verdict = _verdict(True, layer.skipped) if layer.passed else _verdict(False)
            table.add_row(text(layer.name), layer.dtype, eps, "", "", "", "", "", "", f"{verdict} ({markup(layer.skipped)})")
            continue
        s = layer.eps_sensitivity
        sens = f"{s.eps_to:g}: {num(s.max_abs_change, 2)}" if s else "—"
        if s and s.relative_change > 0.1:  # a tenth of the output scale: a different runtime default shows
            sens = f"[bold yellow]{sens}[/]"
        gap = " ".join(num(g.max_abs_diff, 2) for g in layer.train_eval_gap)
        table.add_row(text(layer.name), layer.dtype, eps, num(layer.max_abs_err, 2), num(layer.max_rel_err, 2),
                      f"{layer.used:.0%}", _paths_cell(layer), sens, gap, _verdict(layer.passed))
    return table


def _diagnosis_lines(d: Diagnosis) -> list[str]:
    lines = [f"[bold]expected output[/] {markup(d.expected)} for layer {markup(d.layer)}:"]
    if d.cause == "match":
        lines.append(f"  [green]match[/]: within tolerance of our output (max abs diff {num(d.residual, 3)})")
        return lines
    if d.fits:
        lines.append(f"  [bold red]mismatch[/]; best explanation: [bold]{markup(d.cause)}[/] "
                     f"(residual {num(d.residual, 3)}, relative {num(d.relative_residual, 3)})")
    else:
        correct = d.candidates[0]
        lines.append(f"  [bold red]mismatch[/] that no usual explanation fits (max abs diff {num(correct.residual, 3)}); "
                     f"closest: {markup(d.closest)}")
        shown = ", ".join(map(str, d.channels_off))
        more = f" … ({d.channels_off_count} in all)" if d.channels_off_count > len(d.channels_off) else ""
        lines.append(f"  channels off: {shown}{more}" if d.channels_off_count else "  channels off: none singled out")
    tried = sorted(d.candidates[1:], key=lambda c: c.relative_residual)[:4]
    lines.append("  closest tried: " + "; ".join(f"{markup(c.cause)} {num(c.relative_residual, 2)}" for c in tried))
    return lines


def render(result: VerifyResult) -> None:
    """Print the result as tables and lines (names from the file escaped)."""
    out = console()
    if result.mode == "conformance":
        out.print(f"[bold]BatchNorm kernel conformance[/]  torch {result.torch_version} on {', '.join(result.devices)}; "
                  "each case against a float64 reference; used = largest share of the per-element allowance")
        out.print(_cases_table(result))
    else:
        source = f"input {markup(result.input)}" if result.input else (
            f"synthetic inputs x_c ~ N(μ_c, σ²_c), batch {result.synthetic['batch']}, "
            f"spatial {result.synthetic['spatial']}, seed {result.synthetic['seed']}")
        out.print(f"[bold]{markup(result.path or '')}[/]  torch {result.torch_version} on {', '.join(result.devices)}; {source}")
        out.print(_layers_table(result))
        notes = [(layer.name, n) for layer in result.layers for n in layer.notes]
        for name, note in notes:
            out.print(f"{markup(name)}: {markup(note)}")
        if result.output:
            out.print(f"wrote the recomputed output to {markup(result.output)}")
        if result.diagnosis is not None:
            for line in _diagnosis_lines(result.diagnosis):
                out.print(line)
    style = "green" if result.exit_code == 0 else "bold red"
    out.print(f"[{style}]{markup(result.summary)}[/]")
