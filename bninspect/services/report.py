"""`report`: what the other commands say about one checkpoint, as data for one HTML file.

A report is made of the other services' results, from one opening of the file: show's layer
summaries (every layer), check's findings (the rules, codes and ``[tool.bninspect]`` settings
`bninspect check` uses), and where asked drift's measurements (``--data``/``--synthetic`` with
a model) and diff's comparison with a second artifact. It adds no BN math of its own:
per-channel values come from ``BNLayer`` (scale from ``numerics.reference.fold``), drift and diff numbers
from their services. ``render.report`` turns the result into HTML.

Scale. Every layer gets an overview row (its sparklines cost microseconds), up to
``MAX_ROWS``; a page with per-channel plots costs ~0.1 s and ~60-150 kB, so at most
``pages`` layers get one (default ``DEFAULT_PAGES``, never more than ``MAX_PAGES``): first
the layers with findings (errors, then warnings, then info; a layer diff finds different or
drift finds beyond ``--max-drift`` counts as an error), then the others in model order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bninspect import atomic
from bninspect.errors import UsageError
from bninspect.rules import SEVERITIES, Finding
from bninspect.services.series import ChannelSeries, channel_marks, layer_series
from bninspect.services.show import LayerSummary, ShowResult

if TYPE_CHECKING:
    import numpy as np

    from bninspect.checkpoint import Checkpoint
    from bninspect.layers import BNLayer
    from bninspect.services.diff_results import ChannelDiff, DiffResult, LayerDiff
    from bninspect.services.drift import DriftResult, LayerDrift

DEFAULT_PAGES = 50
MAX_PAGES = 200
MAX_ROWS = 10_000  # overview rows (and layer pages are chosen among them)
MAX_FINDINGS = 2_000  # findings listed (the counts cover all of them)
PAGE_TENSORS = ("running_mean", "running_var", "weight", "bias", "scale")


@dataclass
class LayerRow:
    """One layer in the overview: its summary, its pictures' series, its findings, its page."""

    index: int  # position in model order (possible BatchNorm layers after the others)
    summary: LayerSummary
    series: ChannelSeries
    findings: list[Finding]
    page: bool = False  # whether a page with plots follows for it


@dataclass
class LayerPage:
    """One layer's page: per-channel values to plot, the channels findings name, drift and diff."""

    row: int  # its LayerRow's index
    values: dict[str, np.ndarray]  # PAGE_TENSORS the layer has, float64 by channel
    marks: dict[int, list[str]]  # channel → codes of the findings naming it
    drift: LayerDrift | None = None
    diff: LayerDiff | None = None
    diff_channels: dict[str, ChannelDiff] = field(default_factory=dict)  # per compared tensor, for the plot


@dataclass
class ReportResult:
    """Everything one report shows; ``render.report`` writes it as a self-contained HTML file."""

    file: ShowResult  # the file's facts and every layer's summary
    trusted: bool  # opened with --trust (code from the file ran)
    safety: str | None  # the file's safety verdict, where one is known (see safety_verdict)
    rows: list[LayerRow]
    rows_omitted: int  # layers beyond MAX_ROWS
    findings: list[Finding]  # at most MAX_FINDINGS, in layer order
    findings_omitted: int
    counts: dict[str, int]  # findings by severity, all of them
    rules: list[str]  # the codes that ran
    config: str | None  # the pyproject.toml whose [tool.bninspect] was applied
    pages: list[LayerPage]
    pages_limit: int
    drift: DriftResult | None = None
    diff: DiffResult | None = None
    inputs: list[str] = field(default_factory=list)  # every file read: the report is never written over one

    @property
    def pages_omitted(self) -> int:
        """Layers in the overview without a page."""
        return len(self.rows) - len(self.pages)


def safety_verdict(checkpoint: Checkpoint) -> str | None:
    """The file section's safety verdict, in words: what a real load of the file would run
    (formats.verdict), or None for formats whose load runs nothing (safetensors, ONNX, IR).
    A file whose load would run code never gets here: reading it was refused."""
    verdict = checkpoint.verdict
    if verdict is None:
        return None
    return verdict.note() or ("a real torch.load would only rebuild tensors and plain containers "
                              "(what weights_only=True allows)")


def check_output(path: str, inputs: list[str]) -> None:
    """Refuse an output path that is a directory, lies in a missing directory, or is (through
    any link) one of the files the report reads."""
    atomic.check_output(path, "-o", [(f"an input ({given})", given) for given in inputs])


def _page_values(layer: BNLayer, series: ChannelSeries) -> dict[str, np.ndarray]:
    values = {name: layer.values(name) for name in PAGE_TENSORS[:4]}
    values["scale"] = series.scale
    return {name: v for name, v in values.items() if v is not None}


def _priority(row: LayerRow, different: set[str]) -> int:
    """0 for a layer with an error (or a diff/drift problem), 1 warning, 2 info, 3 none."""
    if row.summary.name in different:
        return 0
    return min((SEVERITIES.index(f.severity) for f in row.findings), default=len(SEVERITIES))


def _choose_pages(rows: list[LayerRow], limit: int, wanted: set[str] | None, different: set[str]) -> list[LayerRow]:
    """The rows that get a page: those named in ``wanted`` (all when None), problems first,
    model order within, at most ``limit``; returned in model order."""
    candidates = [r for r in rows if wanted is None or r.summary.name in wanted]
    chosen = sorted(candidates, key=lambda r: (_priority(r, different), r.index))[:limit]
    return sorted(chosen, key=lambda r: r.index)


def report(path: str, other: str | None = None, *, data: str | None = None, synthetic: str | None = None,
           arch: str | None = None, arch_kwargs: str | None = None, batch_sizes: str | None = None,
           layers: list[str] | None = None, pages: int | None = None, key: str | None = None,
           key_b: str | None = None, eps: float | None = None, trust: bool = False, strict: bool = False,
           output: str | None = None) -> ReportResult:
    """The report on ``path``: every layer, its findings, pages with per-channel values for
    the most telling ``pages`` layers; drift with ``data``/``synthetic`` (and ``arch`` or
    ``trust``); the diff with ``other``. ``output`` is checked before any work (never an input)."""
    from bninspect.services.check import count_findings, findings_for, resolve_options
    from bninspect.services.common import open_layers, select, source_name
    from bninspect.services.show import describe

    limit = _validate(pages, data, synthetic, arch, arch_kwargs, batch_sizes)
    inputs = [p for p in (path, other, data) if isinstance(p, str) and p]  # a live module (Python API) is no file
    if output is not None:
        check_output(output, inputs)

    opts = resolve_options({"eps": eps, "key": key, "trust": trust or None, "strict": strict or None})
    found = open_layers(path, trust=trust, key=key, strict=strict, eps=eps)
    discovered = [*found.layers, *found.possible]
    wanted = {l.name for l in select(discovered, layers)} if layers else None  # a bad glob fails now
    shown = describe(found, source_name(path))
    findings = findings_for(found, opts)
    rows = _rows(discovered, [*shown.layers, *shown.possible], findings)

    drift_result = diff_result = None
    compared: list = []
    if other:  # before drift: a bad B should fail in a second, not after the model ran on the data
        from bninspect.services.diff import diff_with_details

        diff_result, compared = diff_with_details(path, other, trust=trust, key=key, key_b=key_b, eps=eps)
    if data is not None or synthetic:
        from bninspect.services.drift import (DEFAULT_BATCH_TOLERANCE, DEFAULT_MAX_DRIFT, DEFAULT_MIN_AGREEMENT,
                                              drift)

        drift_result = drift(path, arch=arch, arch_kwargs=arch_kwargs, trust=trust, key=key, data=data,
                             synthetic=synthetic, batch_sizes=batch_sizes, device="cpu", max_drift=DEFAULT_MAX_DRIFT,
                             batch_tolerance=DEFAULT_BATCH_TOLERANCE, min_agreement=DEFAULT_MIN_AGREEMENT,
                             write_recalibrated=None)

    return ReportResult(
        file=shown, trusted=trust, safety=safety_verdict(found.checkpoint), rows=rows,
        rows_omitted=len(discovered) - len(rows), findings=findings[:MAX_FINDINGS],
        findings_omitted=max(0, len(findings) - MAX_FINDINGS), counts=count_findings(findings),
        rules=[r.code for r in opts.rules()], config=opts.config,
        pages=_pages(rows, discovered, limit, wanted, drift_result, compared), pages_limit=limit,
        drift=drift_result, diff=diff_result, inputs=inputs,
    )


def _validate(pages: int | None, data: object, synthetic: str | None, arch: str | None, arch_kwargs: str | None,
              batch_sizes: str | None) -> int:
    """The number of pages asked for, after the option combinations a report refuses."""
    limit = DEFAULT_PAGES if pages is None else pages
    if not 0 < limit <= MAX_PAGES:
        raise UsageError(f"--pages must be between 1 and {MAX_PAGES} (each page is a figure of ~0.1 s and ~100 kB), not {limit}")
    if (arch or arch_kwargs or batch_sizes) and data is None and not synthetic:
        raise UsageError("--arch, --arch-kwargs and --batch-sizes measure drift: give --data FILE (or --synthetic SHAPE) too")
    if data is not None and synthetic:
        raise UsageError("give one of --data FILE or --synthetic SHAPE, not both")
    return limit


def _rows(discovered: list[BNLayer], summaries: list[LayerSummary], findings: list[Finding]) -> list[LayerRow]:
    """The overview's rows (at most MAX_ROWS): each layer's summary, series and findings."""
    marks = channel_marks(findings)
    by_layer: dict[str, list[Finding]] = {}
    for f in findings:
        by_layer.setdefault(f.layer, []).append(f)
    return [LayerRow(index=i, summary=summary, series=layer_series(layer, marks.get(layer.name)),
                     findings=by_layer.get(layer.name, []))
            for i, (layer, summary) in enumerate(zip(discovered[:MAX_ROWS], summaries))]


def _pages(rows: list[LayerRow], discovered: list[BNLayer], limit: int, wanted: set[str] | None,
           drift_result: DriftResult | None, compared: list) -> list[LayerPage]:
    """The layers that get a page (problems first, see _choose_pages) with what each page plots."""
    drifts = {l.name: l for l in drift_result.layers} if drift_result else {}
    diffs = {c.diff.name: c for c in compared if c.diff.folded_side != "a"}
    different = {name for name, c in diffs.items() if c.diff.status == "different"}
    different |= {name for name, l in drifts.items() if l.exceeds}
    pages_out = []
    for row in _choose_pages(rows, limit, wanted, different):
        row.page = True
        layer = discovered[row.index]
        page = LayerPage(row=row.index, values=_page_values(layer, row.series), marks=row.series.marks,
                         drift=drifts.get(layer.name))
        if layer.name in diffs:
            page.diff, page.diff_channels = diffs[layer.name].diff, diffs[layer.name].channels
        pages_out.append(page)
    return pages_out
