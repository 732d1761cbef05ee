"""Render a DriftResult: a progress bar while measuring, then tables and a verdict, or a JSON document."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from bninspect.render.common import Column, Out, Styled, console, markup, num, table, visible
from bninspect.render.jsondoc import dumps
from bninspect.services.drift import DriftResult, ProgressHook

SCHEMA = "bninspect.drift/1"


@contextlib.contextmanager
def progress_bar(enabled: bool) -> Iterator[ProgressHook | None]:
    """A rich progress bar over batches on stderr, one task per phase; None when off (not a TTY, --json)."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=console(stderr=True), transient=True)
    tasks: dict[str, int] = {}

    def update(phase: str, done: int, total: int) -> None:
        if phase not in tasks:
            tasks[phase] = bar.add_task(markup(phase), total=total)
        bar.update(tasks[phase], completed=done)

    with bar:
        yield update


def to_json(result: DriftResult) -> str:
    """The documented JSON document (schema bninspect.drift/1)."""
    body = {
        "file": result.path,
        "model": {"source": result.model_source, "description": result.model,
                  "loaded_in_train_mode": result.loaded_in_train_mode, "train_mode_layers": result.train_mode_layers},
        "data": {"description": result.data, "samples": result.samples, "sample_shape": result.sample_shape,
                 "synthetic": result.synthetic},
        "device": result.device,
        "batch_sizes": result.batch_sizes,
        "pass_batch_size": result.pass_batch_size,
        "threads": result.threads,
        "thresholds": {"max_drift": result.max_drift, "batch_tolerance": result.batch_tolerance,
                       "min_agreement": result.min_agreement},
        "layers_measured": result.layers_measured,
        "min_batch_size": {"batch_size": result.min_batch_size, "layer": result.min_batch_size_layer},
        "layers": result.layers,
        "output": {"kind": result.output_kind, "eval_vs_train": result.mismatch},
        "recalibration": result.recalibration,
        "verdict": {"ok": not result.problems, "problems": result.problems},
        "notes": result.notes,
    }
    return dumps(SCHEMA, body)


def _layer_table(result: DriftResult, width: int) -> Styled:
    recal = result.recalibration is not None
    columns = (Column("layer", wrap=True),
               *(Column(h, "right") for h in ("C", "drift", "worst ch", "mean shift σ", "var ratio")),
               *(Column(f"B={b}", "right") for b in result.batch_sizes), Column("min B", "right"),
               *([Column("after", "right")] if recal else []))
    rows: list[list[str | Styled]] = []
    for layer in result.layers:
        name = Styled(visible(layer.name), "cyan")
        if not layer.reached:
            rows.append([name, str(layer.channels), "not called", "", "", "",
                         *[""] * len(result.batch_sizes), "", *([""] if recal else [])])
            continue
        style = "bold red" if layer.exceeds else ""
        row: list[str | Styled] = [name, str(layer.channels), Styled(num(layer.drift_score), style),
                                   str(layer.worst_channel), num(layer.worst_mean_shift), num(layer.worst_var_ratio)]
        row += [num(b.output_error) if not b.skipped else "—" for b in layer.by_batch_size]
        row.append(str(layer.min_batch_size) if layer.min_batch_size is not None else f">{max(result.batch_sizes)}")
        if recal:
            row.append(num(layer.drift_after))
        rows.append(row)
    return table(columns, rows, width=width,
                 title=Styled("Running statistics vs the data (drift = RMS error of the normalized output, in σ)"))


# "max |Δ|" holds why a batch size was not measured where it was not: that column may wrap.
_MISMATCH_COLUMNS = (Column("batch size", "right"), Column("batches", "right"), Column("max |Δ|", "right", wrap=True),
                     Column("max |eval|", "right"), Column("top-1 agreement", "right"))


def _mismatch_table(result: DriftResult, width: int) -> Styled:
    rows: list[tuple[str | Styled, ...]] = []
    for row in result.mismatch:
        if row.skipped:
            rows.append((str(row.batch_size), str(row.batches), Styled(visible(row.skipped), "dim"), "", ""))
            continue
        agree = f"{row.top1_agreement:.1%}" if row.top1_agreement is not None else "—"
        rows.append((str(row.batch_size), str(row.batches), num(row.max_abs_diff), num(row.output_scale), agree))
    return table(_MISMATCH_COLUMNS, rows, width=width,
                 title=Styled(f"Output with BN in eval vs train mode ({visible(result.output_kind)})"))


def render(result: DriftResult) -> None:
    """Print the header, the per-layer and eval/train tables, recalibration and the verdict."""
    out = Out()
    out.print(Styled(visible(result.path), "bold")
              .append(f"  model: {visible(result.model)} ({result.model_source}), device {result.device}"))
    out.print(f"data: {visible(result.data)}, {result.samples} samples; batch sizes {', '.join(map(str, result.batch_sizes))}")
    if result.synthetic:
        out.print(Styled("synthetic input: this measures the mechanics of BN, not whether the statistics fit your data",
                         "yellow"))
    if result.loaded_in_train_mode is not None:
        line = Styled("as loaded, the model is in ")
        if result.loaded_in_train_mode:
            line.append("train mode", "bold red").append(f" ({len(result.train_mode_layers)} BN layers)")
        else:
            line.append("eval mode")
        out.print(line)
    if result.layers:
        out.print(_layer_table(result, out.width), wrap=False)
        out.print(Styled(f"B=…: RMS error of train-mode normalization at that batch size vs eval mode with the data's "
                         f"statistics; min B: smallest batch size from which it stays ≤ {result.batch_tolerance:g}", "dim"))
        if result.min_batch_size is not None:
            out.print(f"train-mode BN stays within {result.batch_tolerance:g} from batch size {result.min_batch_size} "
                      f"(set by {visible(result.min_batch_size_layer)})")
        elif result.min_batch_size_layer:
            out.print(f"train-mode BN exceeds {result.batch_tolerance:g} at every measured batch size in "
                      f"{visible(result.min_batch_size_layer)} (largest measured: {max(result.batch_sizes)})")
    out.print(_mismatch_table(result, out.width), wrap=False)
    if result.recalibration:
        r = result.recalibration
        out.print(f"wrote {visible(r.path)} ({r.format}): running statistics of {r.layers} layers replaced by the "
                  f"data's, {r.tensors_written} tensors; worst drift {num(r.drift_before)} → {num(r.drift_after)}")
    for note in result.notes:
        out.print(Styled(f"note: {visible(note)}", "dim"))
    if result.problems:
        out.print(Styled("DRIFT", "bold red").append(f" ({len(result.problems)}):"))
        for problem in result.problems:
            out.print(f"  {visible(problem)}")
    else:
        worst = max((l.drift_score for l in result.layers if l.drift_score is not None), default=None)
        detail = f"worst layer drift {num(worst)} ≤ {result.max_drift:g}" if worst is not None else "no layer statistics"
        out.print(Styled("OK", "bold green").append(f": {detail}"))
