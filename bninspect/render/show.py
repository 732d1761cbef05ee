"""Render a ShowResult: a rich table (header, one row per layer, footer) or a JSON document."""

from __future__ import annotations

from bninspect.render.common import Column, Out, Styled, num, table, visible
from bninspect.render.jsondoc import dumps, safety
from bninspect.render.pictures import picture_lines, rule_titles
from bninspect.services.show import LayerSummary, ShowResult

# rich is imported only where the output is a terminal (render.common.Out): `show --json` and
# `show` into a pipe never load it.

SCHEMA = "bninspect.show/2"
_SHORT = {"weight": "γ", "bias": "β", "running_mean": "μ", "running_var": "σ²", "num_batches_tracked": "n"}


def to_json(result: ShowResult) -> str:
    """The documented JSON document (schema bninspect.show/2: /1 plus ``safety``); keys keep the
    file's original names."""
    body = {
        "file": result.file, "format": result.format, "container": result.container,
        "alternatives": result.alternatives, "prefix": result.prefix, "eps_note": result.eps_note,
        "layers": result.layers, "possible_batchnorm": result.possible, "other_norms": result.other_norms,
        "summary": {"layers": result.total_layers, "omitted": result.omitted, "channels": result.total_channels,
                    "parameters": result.total_parameters, "buffer_values": result.total_buffer_values},
        "notes": result.notes, "safety": safety(result.safety),
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


def _header(result: ShowResult) -> list[Styled | str]:
    lines: list[Styled | str] = [Styled(visible(result.file), "bold").append(f"  {visible(result.format_name)}")]
    if result.container:
        alt = f" (also: {', '.join(visible(a) for a in result.alternatives)}; pick one with --key)" if result.alternatives else ""
        lines.append(f"state dict: {visible(result.container)}{alt}")
    elif result.alternatives:
        lines.append(f"other state dicts: {', '.join(visible(a) for a in result.alternatives)} (pick one with --key)")
    if result.prefix:
        lines.append(f"wrapper prefix '{visible(result.prefix)}' stripped from names (JSON keeps the original keys)")
    if result.eps_note:
        lines.append(visible(result.eps_note))
    lines.extend(visible(n) for n in result.notes)
    return lines


_COLUMNS = (Column("layer", wrap=True), Column("kind"), Column("C", "right"), Column("tensors"), Column("dtype"),
            Column("batches", "right"), Column("running_mean", "right"), Column("running_var", "right"),
            Column("|γ| min", "right"), Column("producer", wrap=True))
_CHANNEL_COLUMNS = (*(Column(h, "right") for h in ("i", "γ weight", "β bias", "μ running_mean", "σ² running_var",
                                                  "scale γ/√(σ²+ε)", "shift β−μ·scale")), Column("fed by", wrap=True))


def _table(result: ShowResult, width: int) -> Styled:
    rows = []
    for layer in result.layers:
        s = layer.stats
        mean = f"{num(s.running_mean_min, 3)}…{num(s.running_mean_max, 3)}" if s.running_mean_min is not None else "—"
        var = f"{num(s.running_var_min, 3)}…{num(s.running_var_max, 3)}" if s.running_var_min is not None else "—"
        prod = (Styled(visible(layer.producer.name)).append(f" ({layer.producer.kind})", "dim")
                if layer.producer else Styled("none matched", "dim"))
        kind = layer.kind + ("*" if layer.kind_source == "producer" else "") + (" train" if layer.training else "")
        names, dtypes = _tensors_cell(layer)
        rows.append((Styled(visible(layer.name), "cyan"), visible(kind), str(layer.channels), names, dtypes,
                     "—" if layer.num_batches_tracked is None else str(layer.num_batches_tracked),
                     mean, var, num(s.weight_abs_min, 3), prod))
    return table(_COLUMNS, rows, width=width)


def _channel_title(layer: LayerSummary) -> Styled:
    return Styled(visible(f"{layer.name}: entry i of each tensor belongs to channel i"))


def _channel_table(layer: LayerSummary, width: int, titled: bool = True) -> Styled:
    rows = [(str(r.index), num(r.weight), num(r.bias), num(r.running_mean), num(r.running_var),
             num(r.scale), num(r.shift), visible(r.producer_channel or "—")) for r in layer.per_channel or []]
    return table(_CHANNEL_COLUMNS, rows, width=width, title=_channel_title(layer) if titled else None)


def render(result: ShowResult) -> None:
    """Print the header, the layer table (or the no-BatchNorm answer), per-channel tables and a footer."""
    out = Out()
    for line in _header(result):
        out.print(line)
    if not result.layers and not result.possible:
        others = ", ".join(f"{n} {k}" for k, n in sorted(result.other_norms.items()))
        out.print(f"No BatchNorm layers in this file ({others or 'no normalization layers'}; 0 BatchNorm).")
        return
    if result.layers:
        out.print(_table(result, out.width), wrap=False)
    if any(l.kind_source == "producer" for l in result.layers):
        out.print(Styled("* kind inferred from the producer's weight rank (a state dict does not name module classes)", "dim"))
    if result.layers:
        out.print(Styled("tensors: γ weight, β bias, μ running_mean, σ² running_var, n num_batches_tracked (shape [C] unless shown)",
                         "dim"))
    for layer in result.layers:
        if layer.per_channel is not None:
            pictures = picture_lines(layer._series, out.width, rule_titles()) if out.terminal and layer._series else []
            if pictures:  # on a terminal: the title, a picture per quantity, then the numbers
                out.print(_channel_title(layer))
                for line in pictures:
                    out.print(line, wrap=False)
            out.print(_channel_table(layer, out.width, titled=not pictures), wrap=False)
    if result.possible:
        out.print(Styled("Possible BatchNorm with track_running_stats=False", "bold").append(f" ({len(result.possible)}):"))
        for p in result.possible:
            out.print(f"  {visible(p.name)}: {visible(p.evidence)}")
    footer = (f"{result.total_layers} BatchNorm layers, {result.total_channels} channels, "
              f"{result.total_parameters} parameters (γ, β), {result.total_buffer_values} buffer values")
    if result.omitted:
        footer += f"; showing the first {len(result.layers)}, {result.omitted} more left out by --limit (--limit 0 shows all)"
    out.print(footer)
