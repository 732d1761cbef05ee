"""Render a ShowResult: a rich table (header, one row per layer, footer) or a JSON document."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bninspect.render.common import Column, console, markup, num, print_table, safe, table, text
from bninspect.render.jsondoc import dumps
from bninspect.services.show import LayerSummary, ShowResult

if TYPE_CHECKING:
    from rich.text import Text

# rich is imported only by the functions that draw: `show --json` never loads it.

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


def _tensors_cell(layer: LayerSummary) -> tuple[str, str]:
    """Present tensors as short names, and their dtypes; a shape is shown only where it is not [C]."""
    names, dtypes = [], []
    for name, info in layer.tensors.items():
        expected = [] if name == "num_batches_tracked" else [layer.channels]
        shape = "" if info.shape == expected else f"[{','.join(map(str, info.shape))}]"
        names.append(_SHORT[name] + shape)
        if name != "num_batches_tracked" and info.dtype not in dtypes:
            dtypes.append(info.dtype)
    return (" ".join(names) if names else "none"), "/".join(dtypes) or "—"


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


_COLUMNS = (Column("layer", fold=True), Column("kind"), Column("C", "right"), Column("tensors"), Column("dtype"),
            Column("batches", "right"), Column("running_mean", "right"), Column("running_var", "right"),
            Column("|γ| min", "right"), Column("producer", fold=True))
_CHANNEL_COLUMNS = (*(Column(h, "right") for h in ("i", "γ weight", "β bias", "μ running_mean", "σ² running_var",
                                                  "scale γ/√(σ²+ε)", "shift β−μ·scale")), Column("fed by", fold=True))


def _table(result: ShowResult, width: int) -> Text:
    from rich.text import Text

    rows = []
    for layer in result.layers:
        s = layer.stats
        mean = f"{num(s.running_mean_min, 3)}…{num(s.running_mean_max, 3)}" if s.running_mean_min is not None else "—"
        var = f"{num(s.running_var_min, 3)}…{num(s.running_var_max, 3)}" if s.running_var_min is not None else "—"
        prod = (Text(safe(layer.producer.name)) + Text(f" ({layer.producer.kind})", style="dim")
                if layer.producer else Text("none matched", style="dim"))
        kind = layer.kind + ("*" if layer.kind_source == "producer" else "") + (" train" if layer.training else "")
        names, dtypes = _tensors_cell(layer)
        rows.append((text(layer.name, "cyan"), safe(kind), str(layer.channels), names, dtypes,
                     "—" if layer.num_batches_tracked is None else str(layer.num_batches_tracked),
                     mean, var, num(s.weight_abs_min, 3), prod))
    return table(_COLUMNS, rows, width=width)


def _channel_table(layer: LayerSummary, width: int) -> Text:
    rows = [(str(r.index), num(r.weight), num(r.bias), num(r.running_mean), num(r.running_var),
             num(r.scale), num(r.shift), safe(r.producer_channel or "—")) for r in layer.per_channel or []]
    return table(_CHANNEL_COLUMNS, rows, width=width,
                 title=text(f"{layer.name}: entry i of each tensor belongs to channel i"))


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
        print_table(out, _table(result, out.width))
    if any(l.kind_source == "producer" for l in result.layers):
        out.print("[dim]* kind inferred from the producer's weight rank (a state dict does not name module classes)[/]")
    if result.layers:
        out.print("[dim]tensors: γ weight, β bias, μ running_mean, σ² running_var, n num_batches_tracked (shape [C] unless shown)[/]")
    for layer in result.layers:
        if layer.per_channel is not None:
            print_table(out, _channel_table(layer, out.width))
    if result.possible:
        out.print(f"[bold]Possible BatchNorm with track_running_stats=False[/] ({len(result.possible)}):")
        for p in result.possible:
            out.print(f"  {markup(p.name)}: {markup(p.evidence)}")
    footer = (f"{result.total_layers} BatchNorm layers, {result.total_channels} channels, "
              f"{result.total_parameters} parameters (γ, β), {result.total_buffer_values} buffer values")
    if result.omitted:
        footer += f"; showing the first {len(result.layers)}, {result.omitted} more left out by --limit (--limit 0 shows all)"
    out.print(footer)
