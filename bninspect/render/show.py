"""Render a ShowResult: a rich table (header, one row per layer, footer) or a JSON document."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from bninspect.render.common import console, markup, num, text
from bninspect.render.jsondoc import dumps
from bninspect.services.show import LayerSummary, ShowResult

SCHEMA = "bninspect.show/1"
_SHORT = {"weight": "γ", "bias": "β", "running_mean": "μ", "running_var": "σ²", "num_batches_tracked": "n"}


def to_json(result: ShowResult) -> str:
    """The documented JSON document (schema bninspect.show/1); keys keep the file's original names."""
    body = {
        "file": result.file, "format": result.format, "container": result.container,
        "alternatives": result.alternatives, "prefix": result.prefix, "eps_note": result.eps_note,
        "layers": result.layers, "possible_batchnorm": result.possible, "other_norms": result.other_norms,
        "summary": {"layers": result.total_layers, "omitted": result.omitted, "channels": result.total_channels,
                    "parameters": result.total_parameters, "buffer_values": result.total_buffer_values},
        "notes": result.notes,
    }
    return dumps(SCHEMA, body)


def _tensors_cell(layer: LayerSummary) -> str:
    """Present tensors in a short form: names sharing one shape and dtype are grouped."""
    groups: dict[tuple, list[str]] = {}
    for name, info in layer.tensors.items():
        groups.setdefault((tuple(info.shape), info.dtype), []).append(_SHORT[name])
    parts = [f"{' '.join(names)} [{','.join(map(str, shape))}] {dtype}" for (shape, dtype), names in groups.items()]
    return "; ".join(parts) if parts else "none"


def _header(result: ShowResult) -> list[str]:
    lines = [f"[bold]{markup(result.file)}[/]  {markup(result.format_name)}"]
    if result.container:
        alt = f" (also: {', '.join(markup(a) for a in result.alternatives)}; pick one with --key)" if result.alternatives else ""
        lines.append(f"state dict: {markup(result.container)}{alt}")
    elif result.alternatives:
        lines.append(f"other state dicts: {', '.join(markup(a) for a in result.alternatives)} (pick one with --key)")
    if result.prefix:
        lines.append(f"wrapper prefix '{markup(result.prefix)}' stripped from names (JSON keeps the original keys)")
    if result.eps_note:
        lines.append(markup(result.eps_note))
    lines.extend(markup(n) for n in result.notes)
    return lines


def _table(result: ShowResult) -> Table:
    table = Table(show_lines=False, header_style="bold", pad_edge=False)
    for col, kw in (("layer", {}), ("kind", {}), ("C", {"justify": "right"}), ("tensors", {}),
                    ("batches", {"justify": "right"}), ("running_mean", {}), ("running_var", {}),
                    ("|γ| min", {"justify": "right"}), ("producer", {})):
        table.add_column(col, **kw)
    for layer in result.layers:
        s = layer.stats
        mean = f"{num(s.running_mean_min)} … {num(s.running_mean_max)}" if s.running_mean_min is not None else "—"
        var = f"{num(s.running_var_min)} … {num(s.running_var_max)}" if s.running_var_min is not None else "—"
        prod = Text(f"{layer.producer.name} ({layer.producer.kind})") if layer.producer else Text("none matched", style="dim")
        kind = layer.kind + ("*" if layer.kind_source == "producer" else "") + (" [train]" if layer.training else "")
        table.add_row(text(layer.name, "cyan"), text(kind), str(layer.channels), _tensors_cell(layer),
                      "—" if layer.num_batches_tracked is None else str(layer.num_batches_tracked),
                      mean, var, num(s.weight_abs_min), prod)
    return table


def _channel_table(layer: LayerSummary) -> Table:
    table = Table(title=Text(f"{layer.name}: entry i of each tensor belongs to channel i"), header_style="bold",
                  title_justify="left")
    for col in ("i", "γ weight", "β bias", "μ running_mean", "σ² running_var", "scale γ/√(σ²+ε)", "shift β−μ·scale", "fed by"):
        table.add_column(col, justify="right" if col != "fed by" else "left")
    for r in layer.per_channel or []:
        table.add_row(str(r.index), num(r.weight), num(r.bias), num(r.running_mean), num(r.running_var),
                      num(r.scale), num(r.shift), text(r.producer_channel or "—"))
    return table


def render(result: ShowResult) -> None:
    """Print the header, the layer table (or the no-BatchNorm answer), per-channel tables and a footer."""
    out = console()
    for line in _header(result):
        out.print(line)
    if not result.layers and not result.possible:
        others = ", ".join(f"{n} {k}" for k, n in sorted(result.other_norms.items()))
        out.print(f"No BatchNorm layers in this file ({others or 'no normalization layers'}; 0 BatchNorm).")
        return
    if result.layers:
        out.print(_table(result))
    if any(l.kind_source == "producer" for l in result.layers):
        out.print("[dim]* kind inferred from the producer's weight rank (a state dict does not name module classes)[/]")
    for layer in result.layers:
        if layer.per_channel is not None:
            out.print(_channel_table(layer))
    if result.possible:
        out.print(f"[bold]Possible BatchNorm with track_running_stats=False[/] ({len(result.possible)}):")
        for p in result.possible:
            out.print(f"  {markup(p.name)}: {markup(p.evidence)}")
    footer = (f"{result.total_layers} BatchNorm layers, {result.total_channels} channels, "
              f"{result.total_parameters} parameters (γ, β), {result.total_buffer_values} buffer values")
    if result.omitted:
        footer += f"; showing the first {len(result.layers)}, {result.omitted} more left out by --limit (--limit 0 shows all)"
    out.print(footer)
