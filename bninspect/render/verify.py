"""Render a VerifyResult: the conformance table or the per-layer table, a diagnosis, a summary; or JSON."""

from __future__ import annotations

from bninspect.render.common import Column, Out, Styled, num, table, visible
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


def _verdict(passed: bool, skipped: str = "") -> Styled:
    if skipped:
        return Styled("skipped", "yellow")
    return Styled("pass", "green") if passed else Styled("FAIL", "bold red")


_CASE_COLUMNS = (Column("case", wrap=True), Column("device"), Column("max abs err", "right"), Column("max rel err", "right"),
                 Column("rtol", "right"), Column("used", "right"), Column("result", wrap=True))


def _cases_table(result: VerifyResult, width: int) -> Styled:
    rows = []
    for c in result.cases:
        used = "—" if c.skipped else f"{c.used:.0%}"
        verdict = _verdict(c.passed, c.skipped)
        if c.skipped:
            verdict.append(f" ({visible(c.skipped)})")
        rows.append((c.name, c.device, num(c.max_abs_err, 3), num(c.max_rel_err, 3), num(c.tolerance, 2), used, verdict))
    return table(_CASE_COLUMNS, rows, width=width)


def _paths_cell(layer: LayerVerify) -> Styled:
    seen: dict[str, bool] = {}
    for check in layer.checks:
        name = _PATH_SHORT.get(check.path, check.path)
        seen[name] = seen.get(name, True) and check.passed
    cell = Styled()
    for i, (name, ok) in enumerate(seen.items()):
        cell.append((" " if i else "") + name).append("✓" if ok else "✗", "" if ok else "bold red")
    return cell


def _layer_columns(result: VerifyResult) -> tuple[Column, ...]:
    return (Column("layer", wrap=True), Column("dtype"), Column("eps", wrap=True),
            *(Column(h, "right") for h in ("max abs err", "max rel err", "used")), Column("paths", wrap=True),
            Column("Δ if eps were", "right", wrap=True),
            Column("train−eval gap B=" + "/".join(map(str, result.train_batches)), "right", wrap=True),
            Column("result", wrap=True))


def _layers_table(result: VerifyResult, width: int) -> Styled:
    rows: list[tuple[str | Styled, ...]] = []
    for layer in result.layers:
        eps = f"{layer.eps:g}" + ("" if layer.eps_source == "module" else f" ({layer.eps_source})")
        if layer.skipped:
            verdict = _verdict(True, layer.skipped) if layer.passed else _verdict(False)
            rows.append((visible(layer.name), layer.dtype, eps, "", "", "", "", "", "",
                         verdict.append(f" ({visible(layer.skipped)})")))
            continue
        s = layer.eps_sensitivity
        # A change above a tenth of the output scale: a runtime with another default eps shows it.
        sens = Styled(f"{s.eps_to:g}: {num(s.max_abs_change, 2)}", "bold yellow" if s.relative_change > 0.1 else "") if s else "—"
        gap = " ".join(num(g.max_abs_diff, 2) for g in layer.train_eval_gap)
        rows.append((visible(layer.name), layer.dtype, eps, num(layer.max_abs_err, 2), num(layer.max_rel_err, 2),
                     f"{layer.used:.0%}", _paths_cell(layer), sens, gap, _verdict(layer.passed)))
    return table(_layer_columns(result), rows, width=width)


def _diagnosis_lines(d: Diagnosis) -> list[Styled | str]:
    lines: list[Styled | str] = [Styled("expected output", "bold").append(f" {visible(d.expected)} for layer {visible(d.layer)}:")]
    if d.cause == "match":
        lines.append(Styled("  ").append("match", "green")
                     .append(f": within tolerance of our output (max abs diff {num(d.residual, 3)})"))
        return lines
    if d.fits:
        lines.append(Styled("  ").append("mismatch", "bold red").append("; best explanation: ")
                     .append(visible(d.cause), "bold")
                     .append(f" (residual {num(d.residual, 3)}, relative {num(d.relative_residual, 3)})"))
    else:
        correct = d.candidates[0]
        lines.append(Styled("  ").append("mismatch", "bold red")
                     .append(f" that no usual explanation fits (max abs diff {num(correct.residual, 3)}); "
                             f"closest: {visible(d.closest)}"))
        shown = ", ".join(map(str, d.channels_off))
        more = f" … ({d.channels_off_count} in all)" if d.channels_off_count > len(d.channels_off) else ""
        lines.append(f"  channels off: {shown}{more}" if d.channels_off_count else "  channels off: none singled out")
    tried = sorted(d.candidates[1:], key=lambda c: c.relative_residual)[:4]
    lines.append("  closest tried: " + "; ".join(f"{visible(c.cause)} {num(c.relative_residual, 2)}" for c in tried))
    return lines


def render(result: VerifyResult) -> None:
    """Print the result as tables and lines (names from the file printed literally)."""
    out = Out()
    if result.mode == "conformance":
        out.print(Styled("BatchNorm kernel conformance", "bold")
                  .append(f"  torch {result.torch_version} on {', '.join(result.devices)}; "
                          "each case against a float64 reference; used = largest share of the per-element allowance"))
        out.print(_cases_table(result, out.width), wrap=False)
    else:
        source = f"input {visible(result.input)}" if result.input else (
            f"synthetic inputs x_c ~ N(μ_c, σ²_c), batch {result.synthetic['batch']}, "
            f"spatial {result.synthetic['spatial']}, seed {result.synthetic['seed']}")
        out.print(Styled(visible(result.path or ""), "bold")
                  .append(f"  torch {result.torch_version} on {', '.join(result.devices)}; {source}"))
        out.print(_layers_table(result, out.width), wrap=False)
        for layer in result.layers:
            for note in layer.notes:
                out.print(f"{visible(layer.name)}: {visible(note)}")
        if result.output:
            out.print(f"wrote the recomputed output to {visible(result.output)}")
        if result.diagnosis is not None:
            for line in _diagnosis_lines(result.diagnosis):
                out.print(line)
    out.print(Styled(visible(result.summary), "green" if result.exit_code == 0 else "bold red"))
