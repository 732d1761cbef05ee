"""Render a DiffResult: a header naming both sides, one row per matched layer, the verdict; or JSON."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from bninspect.render.common import console, markup, num, text
from bninspect.render.jsondoc import dumps
from bninspect.services.diff import SCHEMA, DiffResult, LayerDiff

_STYLE = {"identical": "green", "equivalent": "green", "different": "bold red"}
_SHORT = {"weight": "γ", "bias": "β", "running_mean": "μ", "running_var": "σ²",
          "folded weight": "W'", "folded bias": "b'"}


def to_json(result: DiffResult) -> str:
    """The documented JSON document (schema bninspect.diff/1)."""
    body = {
        "a": result.a, "b": result.b, "verdict": result.verdict, "causes": result.causes,
        "layers": result.layers, "only_a": result.only_a, "only_b": result.only_b, "notes": result.notes,
        "exit_code": result.exit_code,
    }
    return dumps(SCHEMA, body)


def _tensor_cell(d: LayerDiff) -> Text:
    out = Text()
    for i, t in enumerate(d.tensors):
        if i:
            out.append("  ")
        label = _SHORT.get(t.tensor, t.tensor)
        if t.identical:
            out.append(f"{label} =", style="dim")
            continue
        dtype = f" {t.dtype_a}→{t.dtype_b}" if t.dtype_a != t.dtype_b else ""
        style = "" if t.within else "red"
        where = f"@{t.channel}" if t.channel is not None and not t.within else ""
        out.append(f"{label} {num(t.max_rel, 2)}{where}{dtype}", style=style)
    return out


def _output_cell(d: LayerDiff) -> Text:
    if d.output is None:
        return Text("—")
    o = d.output
    where = f" @{o.channel}" if o.channel is not None and o.max_abs > 0 else ""
    return Text(f"{num(o.max_abs, 3)}{where}", style="" if o.within else "red")


def _witness_cell(d: LayerDiff) -> Text:
    w = d.witness
    if w is None:
        return Text("—")
    return Text(f"{num(w.max_abs, 3)} {'ok' if w.within else 'DIFFERS'}", style="" if w.within else "red")


def render(result: DiffResult) -> None:
    """Print both sides, the per-layer table, causes of each differing layer and the verdict."""
    out = console()
    out.print(f"[bold]A[/] {markup(result.a.path)}  {markup(result.a.format_name)}, {result.a.layers} BN layer(s)")
    out.print(f"[bold]B[/] {markup(result.b.path)}  {markup(result.b.format_name)}, {result.b.layers} BN layer(s)")
    for n in result.a.notes:
        out.print(f"  A: {markup(n)}", style="dim")
    for n in result.b.notes:
        out.print(f"  B: {markup(n)}", style="dim")
    if result.layers:
        has_witness = any(d.witness is not None for d in result.layers)
        table = Table(header_style="bold", pad_edge=False)
        for col, kw in (("layer", {}), ("matched", {}), ("C", {"justify": "right"}), ("status", {}),
                        ("max rel. difference per tensor", {}), ("output Δ", {"justify": "right"})):
            table.add_column(col, **kw)
        if has_witness:
            table.add_column("runtime Δ", justify="right")
        for d in result.layers:
            name = text(d.name)
            if d.name_b != d.name:
                name.append(" ↔ ")
                name.append_text(text(d.name_b))
            row = [name, text(d.matched_by), str(d.channels), Text(d.status, style=_STYLE[d.status]),
                   _tensor_cell(d), _output_cell(d)]
            if has_witness:
                row.append(_witness_cell(d))
            table.add_row(*row)
        out.print(table)
    for d in result.layers:
        if d.status == "different" and d.causes:
            out.print(f"[bold]{markup(d.name)}[/]:")
            for line in d.causes:
                out.print(f"  - {markup(line)}")
    shown = set()
    for d in result.layers:  # notes said once, not once per layer
        for s in d.settings:
            if s.severity == "note" and s.setting not in shown:
                shown.add(s.setting)
                out.print(f"note: {markup(s.message)}", style="dim")
    if result.only_a:
        out.print(f"only in A: {', '.join(markup(n) for n in result.only_a)}")
    if result.only_b:
        out.print(f"only in B: {', '.join(markup(n) for n in result.only_b)}")
    for n in result.notes:
        out.print(f"note: {markup(n)}", style="dim")
    verdict = {"identical": "identical", "equivalent": "equivalent within tolerance", "different": "different"}[result.verdict]
    out.print(f"[{_STYLE[result.verdict]}]{verdict}[/]" + (":" if result.causes else ""))
    for c in result.causes:
        out.print(f"  - {markup(c)}")
