"""Render a DiffResult: a header naming both sides, one row per matched layer, the verdict; or JSON."""

from __future__ import annotations

from bninspect.render.common import Column, Out, Styled, num, table, visible
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


def _tensor_cell(d: LayerDiff) -> Styled:
    out = Styled()
    for i, t in enumerate(d.tensors):
        if i:
            out.append("  ")
        label = _SHORT.get(t.tensor, t.tensor)
        if t.identical:
            out.append(f"{label} =", style="dim")
            continue
        dtype = f" {t.dtype_a}→{t.dtype_b}" if t.dtype_a != t.dtype_b else ""
        where = f"@{t.channel}" if t.channel is not None and not t.within else ""
        out.append(f"{label} {num(t.max_rel, 2)}{where}{dtype}", style="" if t.within else "red")
    return out


def _output_cell(d: LayerDiff) -> Styled:
    if d.output is None:
        return Styled("—")
    o = d.output
    where = f" @{o.channel}" if o.channel is not None and o.max_abs > 0 else ""
    return Styled(f"{num(o.max_abs, 3)}{where}", "" if o.within else "red")


def _witness_cell(d: LayerDiff) -> Styled:
    w = d.witness
    if w is None:
        return Styled("—")
    return Styled(f"{num(w.max_abs, 3)} {'ok' if w.within else 'DIFFERS'}", "" if w.within else "red")


def _table(result: DiffResult, width: int) -> Styled:
    """One row per matched pair; a runtime column where the other side's runtime was run (--run)."""
    has_witness = any(d.witness is not None for d in result.layers)
    columns = (Column("layer", wrap=True), Column("matched", wrap=True), Column("C", "right"), Column("status"),
               Column("max rel. difference per tensor", wrap=True), Column("output Δ", "right"),
               *([Column("runtime Δ", "right")] if has_witness else []))
    rows = []
    for d in result.layers:
        name = visible(d.name) + (f" ↔ {visible(d.name_b)}" if d.name_b != d.name else "")
        row = [name, visible(d.matched_by), str(d.channels), Styled(d.status, _STYLE[d.status]), _tensor_cell(d),
               _output_cell(d)]
        if has_witness:
            row.append(_witness_cell(d))
        rows.append(row)
    return table(columns, rows, width=width)


def render(result: DiffResult) -> None:
    """Print both sides, the per-layer table, causes of each differing layer and the verdict."""
    out = Out()
    for label, side in (("A", result.a), ("B", result.b)):
        out.print(Styled(label, "bold").append(f" {visible(side.path)}  {visible(side.format_name)}, {side.layers} BN layer(s)"))
    for label, side in (("A", result.a), ("B", result.b)):
        for n in side.notes:
            out.print(Styled(f"  {label}: {visible(n)}", "dim"))
    if result.layers:
        out.print(_table(result, out.width), wrap=False)
    for d in result.layers:
        if d.status == "different" and d.causes:
            out.print(Styled(visible(d.name), "bold").append(":"))
            for line in d.causes:
                out.print(f"  - {visible(line)}")
    shown = set()
    for d in result.layers:  # a note is said once, not once per layer that has it
        for s in d.settings:
            if s.severity == "note" and s.message not in shown:
                shown.add(s.message)
                out.print(Styled(f"note: {visible(s.message)}", "dim"))
    if result.only_a:
        out.print(f"only in A: {', '.join(visible(n) for n in result.only_a)}")
    if result.only_b:
        out.print(f"only in B: {', '.join(visible(n) for n in result.only_b)}")
    for n in result.notes:
        out.print(Styled(f"note: {visible(n)}", "dim"))
    verdict = {"identical": "identical", "equivalent": "equivalent within tolerance", "different": "different"}[result.verdict]
    out.print(Styled(verdict, _STYLE[result.verdict]).append(":" if result.causes else ""))
    for c in result.causes:
        out.print(f"  - {visible(c)}")
