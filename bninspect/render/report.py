"""Render a ReportResult as one self-contained HTML file: no script, no network, no other file.

Every plot is inline SVG drawn by matplotlib (``render.figures``); styles are inline; a
Content-Security-Policy forbids anything else (scripts, fetches, frames), so the file shows
the same from a mail attachment, offline. Every name from a file is escaped twice over:
made safe as the terminal shows it (``textfmt.visible``, the one escaper: control characters
shown as ``\x1b``), then HTML-escaped. The overview's sparklines are the terminal's pictures (``render.pictures``).
Layer pages use CSS ``content-visibility: auto``: the browser lays out a page only when it
scrolls into view, so a report with hundreds of figures opens at once.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Iterator, Sequence, TypeVar

from bninspect import __version__
from bninspect.atomic import atomic_write
from bninspect.errors import UsageError
from bninspect.render import figures as plots
from bninspect.render.figures import MAX_MARKS, drawable_marks
from bninspect.render.pictures import LABELS, LEVELS, MARK, mark_legend, range_text, rule_titles, sparkline
from bninspect.rules import SEVERITIES
from bninspect.textfmt import num, visible

if TYPE_CHECKING:
    from bninspect.render.figures import Figures
    from bninspect.rules import Finding
    from bninspect.services.diff import DiffResult, LayerDiff
    from bninspect.services.drift import DriftResult
    from bninspect.services.report import LayerPage, LayerRow, ReportResult

T = TypeVar("T")
INSTALL = "pip install 'bninspect[report]'"
# Once the document reaches this size no more rows or pages are added (each is at most ~0.5 MB),
# so a report stays under SIZE_BOUND whatever the file holds: 10,000 layers, names of any length.
SIZE_LIMIT = 32 * 2**20
SIZE_BOUND = 34 * 2**20
SPARK_CELLS = 32  # characters per sparkline in the overview
# Text from a file longer than this is cut in the HTML: the report's size must not follow a name's.
NAME_CHARS = 200
MESSAGE_CHARS = 2000  # findings, fixes, notes: our sentences, with names inside
_SEVERITY_MARK = {"error": "✖", "warning": "▲", "info": "●"}  # the figures' marker shapes, in text

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1100px;padding:0 18px 60px;color:#1d1d1f}
h1{font-size:22px;margin:22px 0 4px}h2{font-size:18px;margin:34px 0 8px;border-bottom:1px solid #ccc}h3{font-size:15px;margin:0 0 6px}
code,.spark{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace}
.meta{color:#555;margin:0 0 8px}nav a{margin-right:14px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}th,td{border-bottom:1px solid #e3e3e3;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f6;position:sticky;top:0}td.num{text-align:right;font-variant-numeric:tabular-nums}
.spark{white-space:pre;letter-spacing:0}.spark b{color:#d62728}
.error{color:#b00020;font-weight:600}.warning{color:#a85a00;font-weight:600}.info{color:#1f5f9f}
.ok{color:#1b7f3b;font-weight:600}.different{color:#b00020;font-weight:600}.equivalent,.identical{color:#1b7f3b}
figure{margin:10px 0}figure svg{max-width:100%;height:auto}figcaption{color:#555;font-size:12px}
section.page{border:1px solid #ddd;border-radius:6px;padding:10px 14px;margin:16px 0;content-visibility:auto;contain-intrinsic-size:auto 1000px}
.note{color:#555}.facts th{background:none;width:170px}ul{margin:4px 0;padding-left:22px}
"""


class Doc:
    """The HTML being written, and its size: sections stop adding rows and pages at ``limit``."""

    def __init__(self, limit: int = SIZE_LIMIT) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.limit = limit

    def add(self, *pieces: str) -> None:
        """Append ``pieces`` (each a line of the document)."""
        for piece in pieces:
            self.parts.append(piece)
            self.size += len(piece.encode("utf-8")) + 1

    @property
    def full(self) -> bool:
        """Whether the document has reached its size limit."""
        return self.size >= self.limit

    def cut(self, left: int, what: str, command: str) -> None:
        """Say that ``left`` more ``what`` were not written to keep the file small, and where to find them."""
        self.add(f'<p class="note">{left} more {what} are left out to keep this file under {SIZE_BOUND // 2**20} MiB; '
                 f"<code>{command}</code> lists them all.</p>")

    def each(self, items: Sequence[T], what: str, command: str, close: str = "</table>") -> Iterator[T]:
        """``items`` while the document has room; then ``close`` and a note of how many ``what``
        were left out and which ``command`` lists them."""
        for i, item in enumerate(items):
            if self.full:
                self.add(close)
                self.cut(len(items) - i, what, command)
                return
            yield item
        self.add(close)

    def text(self) -> str:
        """The document so far."""
        return "\n".join(self.parts) + "\n"


def require() -> None:
    """A usage error naming the install command where matplotlib (the `report` extra) is missing."""
    try:
        plots.require()
    except ImportError:
        raise UsageError(f"report draws its plots with matplotlib, which is not installed: {INSTALL}") from None


def esc(text: object, cut: int = NAME_CHARS) -> str:
    """A name (or with ``cut=MESSAGE_CHARS`` a message) as HTML text: made safe as the terminal
    shows it, cut at ``cut`` characters, then HTML-escaped."""
    shown = visible(str(text))
    if len(shown) > cut:
        shown = shown[:cut] + f"… ({len(shown) - cut} more characters)"
    return html.escape(shown, quote=True)


def _msg(text: object) -> str:
    return esc(text, MESSAGE_CHARS)


def _row_id(index: int) -> str:
    return f"row-{index}"


def _page_id(index: int) -> str:
    return f"layer-{index}"


def _layer_link(row: LayerRow) -> str:
    target = _page_id(row.index) if row.page else _row_id(row.index)
    return f'<a href="#{target}"><code>{esc(row.summary.name)}</code></a>'


def _name(name: str, rows_by_name: dict[str, LayerRow]) -> str:
    """A layer name from another section: a link where the overview has the layer."""
    row = rows_by_name.get(name)
    return _layer_link(row) if row is not None else f"<code>{esc(name)}</code>"


def _spark(values, marks: dict[int, list[str]]) -> str:  # type: ignore[no-untyped-def]
    """A sparkline cell: the terminal's picture (marked channels in <b>) over the range it spans."""
    if values is None:
        return '<td class="note">—</td>'
    line = sparkline(values, marks, SPARK_CELLS)
    text = "".join(f"<b>{MARK}</b>" if ch == MARK else ch for ch in line.text)
    return f'<td><span class="spark">{text}</span><br><span class="note">{html.escape(range_text(line))}</span></td>'


def _findings_cell(findings: list[Finding]) -> str:
    codes: dict[str, str] = {}
    for f in findings:
        codes.setdefault(f.code, f.severity)
    return " ".join(f'<span class="{s}">{_SEVERITY_MARK[s]} {c}</span>' for c, s in codes.items())


def _head(result: ReportResult) -> list[str]:
    title = f"bninspect report: {esc(result.file.file)}"
    return ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
            # Nothing but this file: no script, no fetch, no frame; inline styles and SVG only.
            '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; style-src \'unsafe-inline\'; '
            'img-src data:; base-uri \'none\'; form-action \'none\'">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{title}</title><style>{_CSS}</style></head><body>"]


def _header(result: ReportResult) -> list[str]:
    s = result.file
    counts = result.counts
    parts = [f'<h1>BatchNorm report: <code>{esc(s.file)}</code></h1>',
             f'<p class="meta">{esc(s.format_name)} · {s.total_layers} BatchNorm layers'
             + (f" (+{len(s.possible)} possible)" if s.possible else "")
             + f" · {s.total_channels} channels · findings: "
             + ", ".join(f'<span class="{k}">{counts[k]} {k}</span>' for k in SEVERITIES)
             + f" · bninspect {html.escape(__version__)}</p>"]
    links = [("file", "The file"), ("findings", "Findings"), ("layers", "Layers")]
    if result.drift is not None:
        links.append(("drift", "Drift on data"))
    if result.diff is not None:
        links.append(("diff", "Diff with B"))
    links.append(("pages", "Layer pages"))
    parts.append("<nav>" + "".join(f'<a href="#{a}">{t}</a>' for a, t in links) + "</nav>")
    return parts


def _file_section(result: ReportResult) -> list[str]:
    s = result.file
    rows = [("file", f"<code>{esc(s.file)}</code>"), ("format", f"{esc(s.format_name)} (<code>{esc(s.format)}</code>)")]
    state = esc(s.container) if s.container else "the top level of the file"
    if s.alternatives:
        state += f"; also in the file: {', '.join(esc(a) for a in s.alternatives)} (pick one with --key)"
    rows.append(("state dict", state))
    if s.prefix:
        rows.append(("wrapper prefix", f"<code>{esc(s.prefix)}</code> stripped from names"))
    rows.append(("eps", _msg(s.eps_note) if s.eps_note else "no BatchNorm layers"))
    rows.append(("how it was opened", "with --trust: loaders that run code from the file were allowed" if result.trusted
                 else "read by bninspect's static readers: no code from the file ran"))
    if result.safety is not None:
        rows.append(("safety verdict", _msg(result.safety)))
    if s.other_norms:
        rows.append(("other normalization", ", ".join(f"{n} {esc(k)}" for k, n in sorted(s.other_norms.items()))))
    rows.append(("totals", f"{s.total_layers} BatchNorm layers, {s.total_channels} channels, {s.total_parameters} "
                           f"parameters (γ, β), {s.total_buffer_values} buffer values"))
    out = ['<section id="file"><h2>The file</h2><table class="facts">']
    out += [f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows]
    out.append("</table>")
    if s.notes:
        out.append("<ul>" + "".join(f'<li class="note">{_msg(n)}</li>' for n in s.notes) + "</ul>")
    out.append("</section>")
    return out


def _findings_section(doc: Doc, result: ReportResult, rows_by_name: dict[str, LayerRow]) -> None:
    c = result.counts
    total = sum(c.values())
    config = f"; settings from <code>{esc(result.config)}</code>" if result.config else ""
    doc.add('<section id="findings"><h2>Findings</h2>',
            f'<p>{total} finding{"s" if total != 1 else ""} ({c["error"]} errors, {c["warning"]} warnings, {c["info"]} info) '
            f'from the rules of <code>bninspect check</code> ({len(result.rules)} rules: {", ".join(result.rules)}{config}). '
            f'On the plots, the channels a finding names are marked {_SEVERITY_MARK["error"]} error, '
            f'{_SEVERITY_MARK["warning"]} warning, {_SEVERITY_MARK["info"]} info.</p>')
    if result.findings:
        doc.add("<table><tr><th>severity</th><th>code</th><th>layer</th><th>finding</th><th>fix</th></tr>")
        for f in doc.each(result.findings, "findings", "bninspect check"):
            doc.add(f'<tr><td class="{f.severity}">{_SEVERITY_MARK[f.severity]} {f.severity}</td><td>{f.code}</td>'
                    f"<td>{_name(f.layer, rows_by_name)}</td><td>{_msg(f.message)}</td><td>{_msg(f.fix)}</td></tr>")
    if result.findings_omitted:
        doc.add(f'<p class="note">{result.findings_omitted} more findings are not listed here '
                f"(<code>bninspect check</code> lists them all); the counts above include them.</p>")
    doc.add("</section>")


def _layers_section(doc: Doc, result: ReportResult, figures: Figures) -> None:
    if not result.rows:  # an answer, as `show` gives it, not an empty figure
        others = ", ".join(f"{n} {esc(k)}" for k, n in sorted(result.file.other_norms.items()))
        doc.add('<section id="layers"><h2>Layers</h2>',
                f"<p>No BatchNorm layers in this file ({others or 'no normalization layers'}; 0 BatchNorm).</p></section>")
        return
    doc.add('<section id="layers"><h2>Layers</h2>',
            f'<figure class="plot" id="fig-overview">{figures.overview_svg(result.rows)}<figcaption>Each layer in model '
            "order: the range of its channels' running_mean, running_var and |scale|, and the severities of its "
            "findings.</figcaption></figure>",
            f'<p class="note">Per channel, low {LEVELS[0]} to high {LEVELS[-1]} on the layer\'s own range '
            f"({SPARK_CELLS} characters at most: a character then stands for a run of channels, drawn by the one farthest "
            f"from the median); <b>{MARK}</b>: a channel a finding names, left out of the range. A layer name links to its "
            "page where it has one.</p>",
            "<table><tr><th>#</th><th>layer</th><th>kind</th><th>C</th>"
            + "".join(f"<th>{label}</th>" for _, label in LABELS)
            + "<th>batches</th><th>producer</th><th>findings</th></tr>")
    for row in doc.each(result.rows, "layers", "bninspect show"):
        s, series = row.summary, row.series
        kind = esc(s.kind) + ("*" if s.kind_source == "producer" else "") + (" (possible)" if s.possible else "")
        kind += " train" if s.training else ""
        batches = "—" if s.num_batches_tracked is None else str(s.num_batches_tracked)
        producer = (f"<code>{esc(s.producer.name)}</code> ({esc(s.producer.kind)})" if s.producer
                    else f'<span class="note">{_msg(s.producer_note) or "none matched"}</span>')
        doc.add(f'<tr id="{_row_id(row.index)}"><td class="num">{row.index}</td><td>{_layer_link(row)}</td>'
                f'<td>{kind}</td><td class="num">{s.channels}</td>'
                + "".join(_spark(getattr(series, attr), series.marks) for attr, _ in LABELS)
                + f'<td class="num">{batches}</td><td>{producer}</td><td>{_findings_cell(row.findings)}</td></tr>')
    if any(r.summary.kind_source == "producer" for r in result.rows):
        doc.add('<p class="note">* kind inferred from the producer\'s weight rank (a state dict does not name '
                "module classes)</p>")
    if result.rows_omitted:
        doc.add(f'<p class="note">{result.rows_omitted} more layers are not listed: the overview stops at '
                f"{len(result.rows)} rows; <code>bninspect show</code> lists them all.</p>")
    doc.add("</section>")


def _drift_section(doc: Doc, drift: DriftResult, figures: Figures, rows_by_name: dict[str, LayerRow]) -> None:
    doc.add('<section id="drift"><h2>Drift on data</h2>',
            f"<p>model: {esc(drift.model)} ({esc(drift.model_source)}) on {esc(drift.device)}; data: {esc(drift.data)}, "
            f"{drift.samples} samples of shape {list(drift.sample_shape)}; batch sizes "
            f"{', '.join(map(str, drift.batch_sizes))}.</p>")
    if drift.synthetic:
        doc.add('<p class="warning">Synthetic input: this measures the mechanics of BN (batch-size noise, the '
                "eval/train gap), not whether the statistics fit your data; drift thresholds are not applied.</p>")
    if drift.loaded_in_train_mode:
        doc.add(f'<p class="error">As loaded, the model is in train mode ({len(drift.train_mode_layers)} BN layers).</p>')
    if drift.problems:
        doc.add('<p class="error">Problems:</p><ul>' + "".join(f"<li>{_msg(p)}</li>" for p in drift.problems[:20]) + "</ul>")
    else:
        worst = max((l.drift_score for l in drift.layers if l.drift_score is not None), default=None)
        detail = f"worst layer drift {num(worst)} ≤ {drift.max_drift:g}" if worst is not None else "no layer statistics"
        doc.add(f'<p><span class="ok">OK</span>: {detail}</p>')
    if drift.layers:
        doc.add(f'<figure class="plot" id="fig-drift">{figures.drift_svg(drift)}<figcaption>Left: each layer\'s drift '
                "score, the RMS error of its normalized output when its running statistics are used instead of the "
                f"data's (dashed: --max-drift {drift.max_drift:g}). Right: the RMS error of train-mode normalization "
                f"(batch statistics) at each batch size (dashed: tolerance {drift.batch_tolerance:g}).</figcaption></figure>")
        heads = ["layer", "C", "drift", "worst ch", "mean shift σ", "var ratio"] + [f"B={b}" for b in drift.batch_sizes] + ["min B"]
        doc.add("<table><tr>" + "".join(f"<th>{h}</th>" for h in heads) + "</tr>")
        for l in doc.each(drift.layers, "measured layers", "bninspect drift --json"):
            name = _name(l.name, rows_by_name)
            if not l.reached:
                doc.add(f'<tr><td>{name}</td><td class="num">{l.channels}</td><td colspan="{len(heads) - 2}" '
                        'class="note">not called by the forward pass</td></tr>')
                continue
            score = f'<span class="error">{num(l.drift_score)}</span>' if l.exceeds else num(l.drift_score)
            cells = [str(l.channels), score, "—" if l.worst_channel is None else str(l.worst_channel),
                     num(l.worst_mean_shift), num(l.worst_var_ratio)]
            cells += [num(b.output_error) if not b.skipped else "—" for b in l.by_batch_size]
            cells.append(str(l.min_batch_size) if l.min_batch_size is not None else f">{max(drift.batch_sizes)}")
            doc.add(f"<tr><td>{name}</td>" + "".join(f'<td class="num">{c}</td>' for c in cells) + "</tr>")
    doc.add(f"<h3>Output with BN in eval vs train mode ({esc(drift.output_kind)})</h3>"
            "<table><tr><th>batch size</th><th>batches</th><th>max |Δ|</th><th>max |eval|</th><th>top-1 agreement</th></tr>")
    for m in drift.mismatch:
        if m.skipped:
            doc.add(f'<tr><td class="num">{m.batch_size}</td><td class="num">{m.batches}</td>'
                    f'<td colspan="3" class="note">{_msg(m.skipped)}</td></tr>')
            continue
        agree = f"{m.top1_agreement:.1%}" if m.top1_agreement is not None else "—"
        doc.add(f'<tr><td class="num">{m.batch_size}</td><td class="num">{m.batches}</td><td class="num">'
                f'{num(m.max_abs_diff)}</td><td class="num">{num(m.output_scale)}</td><td class="num">{agree}</td></tr>')
    doc.add("</table>", *(f'<p class="note">note: {_msg(n)}</p>' for n in drift.notes[:20]), "</section>")


def _tensor_summary(d: LayerDiff) -> str:
    parts = []
    for t in d.tensors:
        if t.identical:
            parts.append(f"{esc(t.tensor)} identical")
            continue
        where = f" at channel {t.channel}" if t.channel is not None else ""
        dtype = f" ({esc(t.dtype_a)} → {esc(t.dtype_b)})" if t.dtype_a != t.dtype_b else ""
        text = f"{esc(t.tensor)} {num(t.max_rel, 3)}{where}{dtype}"
        parts.append(text if t.within else f'<span class="different">{text}, {t.channels_beyond} beyond</span>')
    return "; ".join(parts) or "—"


def _diff_section(doc: Doc, diff: DiffResult, rows_by_name: dict[str, LayerRow]) -> None:
    verdict = {"identical": "identical", "equivalent": "equivalent within tolerance", "different": "different"}[diff.verdict]
    doc.add('<section id="diff"><h2>Diff with B</h2><table class="facts">',
            f"<tr><th>A</th><td><code>{esc(diff.a.path)}</code>: {esc(diff.a.format_name)}, {diff.a.layers} BN layers</td></tr>",
            f"<tr><th>B</th><td><code>{esc(diff.b.path)}</code>: {esc(diff.b.format_name)}, {diff.b.layers} BN layers</td></tr>",
            f'<tr><th>verdict</th><td class="{diff.verdict}">{verdict}</td></tr></table>')
    if diff.causes:
        doc.add("<ul>" + "".join(f"<li>{_msg(c)}</li>" for c in diff.causes) + "</ul>")
    if diff.layers:
        doc.add("<table><tr><th>layer</th><th>in B</th><th>matched by</th><th>C</th><th>status</th>"
                "<th>largest relative difference per tensor</th><th>output Δ</th></tr>")
        for d in doc.each(diff.layers, "compared pairs", "bninspect diff --json"):
            name = _name(d.name, rows_by_name if d.folded_side != "a" else {})  # a folded A side has no BN row
            output = "—" if d.output is None else num(d.output.max_abs, 3) + ("" if d.output.within else " (beyond)")
            doc.add(f"<tr><td>{name}</td><td><code>{esc(d.name_b)}</code></td><td>{esc(d.matched_by)}</td>"
                    f'<td class="num">{d.channels}</td><td class="{d.status}">{d.status}</td><td>{_tensor_summary(d)}</td>'
                    f'<td class="num">{output}</td></tr>')
    for label, names in (("only in A", diff.only_a), ("only in B", diff.only_b)):
        if names:
            shown = ", ".join(f"<code>{esc(n)}</code>" for n in names[:50])
            doc.add(f"<p>{label} ({len(names)}): {shown}{' …' if len(names) > 50 else ''}</p>")
    doc.add(*(f'<p class="note">note: {_msg(n)}</p>' for n in diff.notes[:20]), "</section>")


def _facts(row: LayerRow) -> str:
    s = row.summary
    momentum = "None (cumulative average)" if s.momentum is None else f"{s.momentum:g}"
    parts = [f"{esc(s.kind)}, {s.channels} channels", f"eps {s.eps:g} ({esc(s.eps_source)})",
             f"momentum {momentum} ({esc(s.momentum_source)})",
             f"num_batches_tracked {'—' if s.num_batches_tracked is None else s.num_batches_tracked}"]
    if s.training is not None:
        parts.append("train mode" if s.training else "eval mode")
    parts.append(f"fed by <code>{esc(s.producer.name)}</code> ({esc(s.producer.kind)})" if s.producer
                 else f"producer: {_msg(s.producer_note) or 'none matched'}")
    return " · ".join(parts)


def _page(page: LayerPage, row: LayerRow, figures: Figures, titles: dict[str, str]) -> list[str]:
    severities = {f.code: f.severity for f in row.findings}
    out = [f'<section class="page" id="{_page_id(row.index)}"><h3>{row.index} · <code>{esc(row.summary.name)}</code> '
           f'<a href="#{_row_id(row.index)}" class="note">(overview row)</a></h3><p>{_facts(row)}</p>']
    if row.summary.possible:
        out.append(f'<p class="note">possible BatchNorm with track_running_stats=False: {_msg(row.summary.evidence)}</p>')
    if row.findings:
        out.append("<ul>" + "".join(f'<li><span class="{f.severity}">{_SEVERITY_MARK[f.severity]} {f.code}</span> '
                                    f"{_msg(f.message)}<br><span class=\"note\">fix: {_msg(f.fix)}</span></li>"
                                    for f in row.findings) + "</ul>")
    drawn, many = drawable_marks(page.marks)
    legend = ""
    if page.marks:
        legend = f"<br>Named by findings: {_msg(mark_legend(page.marks, titles))}."
    if many:
        legend += (f" Not marked one by one: {', '.join(many)} (each names more than {MAX_MARKS} channels).")
    out.append(f'<figure class="plot">{figures.layer_svg(page.values, drawn, severities)}<figcaption>Entry i of '
               f"each tensor belongs to channel i (the producer's output channel i). Left: by channel index; right: the "
               f"same values sorted, each channel at its rank.{legend}</figcaption></figure>")
    if page.drift is not None and page.drift.reached and page.drift.mean_shift:
        d = page.drift
        out.append(f'<figure class="plot">{figures.layer_drift_svg(d)}<figcaption>Drift on the data: drift score '
                   f"{num(d.drift_score)}, worst channel {d.worst_channel}; per channel the mean shift "
                   "(μ_running − μ_data)/σ_data, the variance ratio (σ²_running + ε)/(σ²_data + ε) and the error of the "
                   f"normalized output (▲: the worst channels).</figcaption></figure>")
    if page.diff is not None:
        d = page.diff
        svg = figures.layer_diff_svg(d, page.diff_channels)
        causes = "".join(f"<li>{_msg(c)}</li>" for c in d.causes)
        text = (f'Diff with B (<code>{esc(d.name_b)}</code>, matched by {esc(d.matched_by)}): '
                f'<span class="{d.status}">{d.status}</span>' + (f"<ul>{causes}</ul>" if causes else ""))
        if svg is None:
            out.append(f"<p>{text} No channel differs.</p>")
        else:
            beyond = max((t.channels_beyond for t in d.tensors), default=0)
            marked = ("✖: channels beyond the tolerance of the less precise dtype." if 0 < beyond <= MAX_MARKS else
                      f"{beyond} channels are beyond the tolerance of the less precise dtype (too many to mark)."
                      if beyond else "Every channel is within the tolerance of the less precise dtype.")
            out.append(f'<figure class="plot">{svg}<figcaption>{text} {marked}</figcaption></figure>')
    out.append("</section>")
    return out


def _pages_section(doc: Doc, result: ReportResult, figures: Figures) -> None:
    rows = {r.index: r for r in result.rows}
    titles = rule_titles()
    total = len(result.rows)
    intro = (f"{len(result.pages)} of {total} layers have a page" + (
        f": the {result.pages_limit} most telling (layers with findings first, then in model order; "
        "--pages and --layer choose others)" if result.pages_omitted else "") + ".")
    doc.add('<section id="pages"><h2>Layer pages</h2>', f"<p>{intro}</p>")
    for page in doc.each(result.pages, "layer pages", "bninspect report --layer GLOB", close=""):
        doc.add(*_page(page, rows[page.row], figures, titles))
    doc.add("</section>")


def to_html(result: ReportResult, limit: int = SIZE_LIMIT) -> str:
    """The whole report as one HTML document; rows and pages stop once it reaches ``limit`` bytes."""
    rows_by_name = {r.summary.name: r for r in result.rows}
    doc = Doc(limit)
    with plots.figures() as figs:
        doc.add(*_head(result), *_header(result), *_file_section(result))
        _findings_section(doc, result, rows_by_name)
        _layers_section(doc, result, figs)
        if result.drift is not None:
            _drift_section(doc, result.drift, figs, rows_by_name)
        if result.diff is not None:
            _diff_section(doc, result.diff, rows_by_name)
        _pages_section(doc, result, figs)
    doc.add(f'<footer class="note"><p>Made by bninspect {html.escape(__version__)}: <code>bninspect report</code>. '
            "Nothing in this file loads anything from elsewhere.</p></footer></body></html>")
    return doc.text()


def save(result: ReportResult, path: str) -> int:
    """Write the report to ``path`` (a temporary file beside it, then a rename; never over an
    input of the report). Returns the bytes written."""
    from bninspect.services.report import check_output

    check_output(path, result.inputs)
    data = to_html(result).encode("utf-8")

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)
    return len(data)


def summary_line(result: ReportResult, path: str, size: int) -> str:
    """What the command prints once the file is written."""
    total = sum(result.counts.values())
    extra = "".join(part for part, on in ((", drift on data", result.drift is not None),
                                          (", diff with B", result.diff is not None)) if on)
    return (f"wrote {visible(path)} ({_size(size)}): {len(result.rows)} layers, {total} finding"
            f"{'s' if total != 1 else ''}, {len(result.pages)} layer pages{extra}")


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"
