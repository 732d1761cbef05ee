"""What every renderer needs: safe names, where to print, styled text, tables, numbers.

Names come from files we do not trust. ``visible`` (textfmt) escapes every character that could
act on the terminal or disguise a name, and cuts overlong text; rich only ever receives
names inside ``Text`` objects (``Styled.to_rich``) or via ``markup_escape`` so ``[bold red]``
in a key is printed literally.

Every command prints through ``Out`` with ``Styled`` text and hand-laid ``table``s, which need
rich only when the output is a terminal: in a pipe, a log file or CI, where nothing shows
styles, rich's console is never imported (~25 ms of a ~220 ms run, issue 8), and a --json run
loads no rich at all. Only drift's progress bar, drawn where stderr is a terminal, is rich's own.
"""

from __future__ import annotations

import builtins
import dataclasses
import functools
import os
import re
import sys
from typing import TYPE_CHECKING, Sequence, Union

from bninspect.errors import OutputClosed

# Re-exported for renderers: numbers, and names made safe to print.
from bninspect.textfmt import cut_note, json_visible, num, visible  # noqa: F401

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text


def markup(name: str) -> str:
    """A name ready to embed in a rich markup string (drift's progress bar): control chars
    visible, brackets escaped."""
    from rich.markup import escape as markup_escape

    return markup_escape(visible(name))


@functools.cache
def _console_class() -> type[Console]:
    """rich's Console with broken-pipe handling of ours; built on first use so rich loads late."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            # rich exits with status 1 here; the CLI maps a closed pipe to its own exit status.
            raise OutputClosed

    return _Console


def console(stderr: bool = False) -> Console:
    """The rich console behind ``Out`` on a terminal (and drift's progress bar); it does not
    guess highlights in our output (numbers, paths)."""
    width = None
    if not (sys.stderr if stderr else sys.stdout).isatty() and "COLUMNS" not in os.environ:
        width = _PIPE_WIDTH
    return _console_class()(stderr=stderr, highlight=False, width=width, emoji=False)


# Lines are laid out for this width where the output is not a terminal and COLUMNS is unset.
_PIPE_WIDTH = 160


def _is_terminal(stream: object) -> bool:
    """Whether rich would treat ``stream`` as a terminal (and so may style or size the output),
    decided the way rich's Console.is_terminal decides, without importing rich."""
    if "get_ipython" in vars(builtins):  # a notebook: rich renders there, let it decide
        return True
    compatible = os.environ.get("TTY_COMPATIBLE", "")
    if compatible in ("0", "1"):
        return compatible == "1"
    force = os.environ.get("FORCE_COLOR")
    if force is not None:
        return force != ""
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):
        return False


def write_document(text: str) -> None:
    """Write a JSON document (and a newline) to stdout, every character that could act on a
    terminal as a JSON escape (``json_visible``); a closed pipe becomes OutputClosed."""
    try:
        sys.stdout.write(json_visible(text) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        raise OutputClosed from None


class Styled:
    """Text with style spans, built without rich: printed as its characters where output is not
    a terminal, as a rich Text where it is. Spans are (start, end, rich style) of ``plain``."""

    __slots__ = ("plain", "spans")

    def __init__(self, plain: str = "", style: str = "") -> None:
        self.plain = plain
        self.spans: list[tuple[int, int, str]] = [(0, len(plain), style)] if style and plain else []

    def append(self, piece: str, style: str = "") -> Styled:
        """Add ``piece`` (in ``style``) at the end; returns self, so appends chain."""
        if style and piece:
            self.spans.append((len(self.plain), len(self.plain) + len(piece), style))
        self.plain += piece
        return self

    def to_rich(self) -> Text:
        from rich.text import Span, Text

        return Text(self.plain, spans=[Span(*s) for s in self.spans])


class Out:
    """Where every command prints: rich's console on a terminal, else the stream itself.

    Off a terminal rich would drop every style anyway; writing the characters directly gives
    the same text (long lines wrap between words where rich wraps them) without importing rich.
    """

    def __init__(self, stderr: bool = False) -> None:
        self.file = sys.stderr if stderr else sys.stdout
        self._rich = console(stderr) if _is_terminal(self.file) else None
        columns = os.environ.get("COLUMNS", "")
        self.width = self._rich.width if self._rich else int(columns) if columns.isdigit() else _PIPE_WIDTH

    @property
    def terminal(self) -> bool:
        """Whether this output is a terminal (or forced to act as one): where pictures are drawn."""
        return self._rich is not None

    def print(self, item: str | Styled = "", *, wrap: bool = True) -> None:
        """Print ``item`` and a newline; a str is printed as it is (never parsed as markup).
        ``wrap=False`` keeps long lines whole (tables, one finding per line). Every line is cut
        at ``MAX_LINE`` characters, saying how many were left out."""
        item = _bounded(item)
        if self._rich is not None:
            from rich.text import Text

            self._rich.print(item.to_rich() if isinstance(item, Styled) else Text(item), soft_wrap=not wrap)
            return
        plain = item.plain if isinstance(item, Styled) else item
        if wrap and (len(plain) > self.width or not plain.isascii()) and _width(plain) > self.width:
            plain = "\n".join(plain[a:_line_end(plain, a, b, self.width)] for a, b in _wrap(plain, self.width))
        try:
            self.file.write(plain + "\n")
            self.file.flush()  # a closed pipe shows here, not at exit after the CLI chose its status
        except BrokenPipeError:
            raise OutputClosed from None


# A line of output holds at most this many characters. Each name in it is bounded already
# (textfmt.MAX_SHOWN); this bounds lines that list names (diff's "only in A: ..."), whose count
# a hostile file chooses.
MAX_LINE = 65536


def _bounded(item: str | Styled) -> str | Styled:
    """``item`` with every line longer than MAX_LINE cut to that length, a note at its end saying
    how much was left out."""
    plain = item.plain if isinstance(item, Styled) else item
    if len(plain) <= MAX_LINE or max(map(len, plain.split("\n"))) <= MAX_LINE:
        return item
    kept = Styled()
    at = 0  # offset in ``plain`` of the current line
    for line in plain.split("\n"):
        start = len(kept.plain)
        shown = line if len(line) <= MAX_LINE else line[:MAX_LINE - len(cut_note(len(line)))]
        kept.plain += shown + (cut_note(len(line) - len(shown)) if len(shown) < len(line) else "") + "\n"
        if isinstance(item, Styled):
            kept.spans += [(start + max(lo, at) - at, start + min(hi, at + len(shown)) - at, style)
                           for lo, hi, style in item.spans if max(lo, at) < min(hi, at + len(shown))]
        at += len(line) + 1
    kept.plain = kept.plain[:-1]
    return kept if isinstance(item, Styled) else kept.plain


# -- tables -------------------------------------------------------------------------------------
#
# rich's Table measures, wraps and renders every cell through its generic layout engine: 190 ms
# for the 155 rows of a ResNet-152 (~120 us a cell), three times what `show` spends reading the
# 2 GB file, and 15 s for the per-channel tables of `show --channels` on it (issue 8). Our
# tables are simple (cells of a few lines, some columns that may wrap), so they are laid out
# here in rich's look (heavy head box, bold header, no outer padding) as one Styled text.
#
# Two ways to fit a table wider than the terminal. `show`, `check` and `rules` keep every
# wrapping column at least _WRAP_MIN cells wide, cut words too long for it, and never narrow
# the others. `verify`, `diff` and `drift` (rich_fit=True) narrow the way rich's Table does,
# so their output is the same as when rich drew them: see _rich_widths and _rich_lines.

@dataclasses.dataclass(frozen=True)
class Column:
    """One table column: its header, right or left justified, and whether long cells may wrap
    onto more lines when the table is wider than the terminal (names and prose do; numbers never)."""

    header: str
    justify: str = "left"
    wrap: bool = False


Cell = Union[str, Styled]
_WRAP_MIN = 10
_WORD = re.compile(r"\s*\S+\s*")  # a word with the spaces around it, as rich splits lines
_ELLIPSIS = "…"


def _width(text: str) -> int:
    """Terminal cells a string takes (wide characters count twice)."""
    if text.isascii():
        return len(text)
    from rich.cells import cell_len

    return cell_len(text)


def _cell_width(plain: str) -> int:
    """Cells the widest line of a table cell takes."""
    return _width(plain) if "\n" not in plain else max(map(_width, plain.split("\n")))


def _chop(plain: str, start: int, end: int, width: int) -> list[tuple[int, int]]:
    """(start, end) offsets cutting ``plain[start:end]`` into pieces at most ``width`` cells wide."""
    if plain.isascii():
        return [(i, min(i + width, end)) for i in range(start, end, width)] or [(start, end)]
    from rich.cells import get_character_cell_size

    pieces, used = [], 0
    for i in range(start, end):
        size = get_character_cell_size(plain[i])
        if used + size > width and i > start:
            pieces.append((start, i))
            start, used = i, 0
        used += size
    pieces.append((start, end))
    return pieces


def _wrap(plain: str, width: int, *, fold: bool = True) -> list[tuple[int, int]]:
    """(start, end) offsets of the lines ``plain`` takes in ``width`` cells: one per newline, and
    long lines broken between words where rich breaks them (rich._wrap.divide_line: a word
    goes to the next line when it does not fit; a word wider than ``width`` is cut, or with
    ``fold=False`` keeps a line of its own)."""
    lines: list[tuple[int, int]] = []
    start = 0
    for part in plain.split("\n"):
        end = start + len(part)
        if _width(part) <= width:
            lines.append((start, end))
        else:
            cuts, used = [start], 0
            for m in _WORD.finditer(plain, start, end):
                a, b = m.span()
                need = _width(m.group().rstrip())
                if need <= width - used:
                    used += _width(m.group())
                elif need > width and fold:
                    pieces = _chop(plain, a, b, width)
                    cuts.extend(x for x, _ in pieces if x > start)
                    used = _width(plain[pieces[-1][0]:pieces[-1][1]])
                elif need > width:  # kept whole on a line of its own; cut when the line is drawn
                    cuts.extend([a] if a > start else [])
                    used = _width(m.group())
                elif used and a > start:
                    cuts.append(a)
                    used = _width(m.group())
            lines.extend(zip(cuts, [*cuts[1:], end]))
        start = end + 1
    return lines


def _line_end(plain: str, start: int, end: int, width: int) -> int:
    """Where one wrapped line ends once spaces that end it beyond ``width`` are dropped (as
    rich's rstrip_end)."""
    excess = end - start - width
    if excess > 0:
        spaces = end - start - len(plain[start:end].rstrip())
        end -= min(spaces, excess)
    return end


def _fit(columns: Sequence[Column], widths: list[int], limit: int) -> list[int]:
    """Narrow the widest wrapping columns until the table fits ``limit`` cells (or cannot)."""
    widths = list(widths)
    frame = 3 * len(columns) - 1  # borders and the one-space padding between columns
    while sum(widths) + frame > limit:
        narrowable = [i for i, c in enumerate(columns) if c.wrap and widths[i] > _WRAP_MIN]
        if not narrowable:
            break
        widest = max(narrowable, key=lambda i: widths[i])
        widths[widest] = max(_WRAP_MIN, widths[widest] - (sum(widths) + frame - limit))
    return widths


def _rich_measure(longest: int, padding: int, budget: int) -> int:
    """A column's width, padding included, in ``budget`` cells as rich measures a padded cell
    (Table._measure_column, Padding.__rich_measure__): its longest line and padding, at most
    the budget, and the whole budget where the padding alone fills it."""
    if budget < 1:
        return 0
    if budget - padding < 1:
        return budget
    return min(longest + padding, budget)


def _ratio_reduce(total: int, ratios: list[int], maximums: list[int], values: list[int]) -> list[int]:
    """Take ``total`` cells from ``values`` in proportion to ``ratios``, at most ``maximums``
    each (rich._ratio.ratio_reduce, rounding included)."""
    ratios = [r if m else 0 for r, m in zip(ratios, maximums)]
    remaining_ratio = sum(ratios)
    out = []
    for ratio, maximum, value in zip(ratios, maximums, values):
        if ratio and remaining_ratio > 0:
            taken = min(maximum, round(ratio * total / remaining_ratio))
            out.append(value - taken)
            total -= taken
            remaining_ratio -= ratio
        else:
            out.append(value)
    return out


def _rich_widths(longest: list[int], paddings: list[int], wrap: list[bool], budget: int) -> list[int]:
    """Column widths, padding included, as rich's Table gives them ``budget`` cells
    (_calculate_column_widths, _collapse_widths): where the table is too wide, the widest
    wrapping columns give up cells until they are as narrow as the next widest, and so on;
    if that is not enough, every column gives up the same share (a narrow terminal can leave
    columns no cells at all)."""
    widths = [_rich_measure(l, p, budget) or 1 for l, p in zip(longest, paddings)]
    excess = sum(widths) - budget
    if excess <= 0:
        return widths
    while any(wrap) and sum(widths) and excess > 0:
        widest = max(w for w, ok in zip(widths, wrap) if ok)
        step = widest - max((w for w, ok in zip(widths, wrap) if ok and w != widest), default=0)
        if not step:
            break
        ratios = [int(ok and w == widest) for w, ok in zip(widths, wrap)]
        widths = _ratio_reduce(excess, ratios, [min(excess, step)] * len(widths), widths)
        excess = sum(widths) - budget
    if excess > 0:
        widths = _ratio_reduce(excess, [1] * len(widths), widths, widths)
    return [_rich_measure(l, p, w) for l, p, w in zip(longest, paddings, widths)]


def _rich_lines(plain: str, width: int, wrap: bool, right: bool) -> list[tuple[int, int, str]]:
    """(start, end, tail) of each line of a cell ``width`` cells wide, as rich's Text.wrap lays
    it out with overflow="ellipsis": a word too long for a line keeps a line of its own, and a
    line still too long is cut to ``width - 1`` cells with "…" as its tail. A cell with no
    room at all has no lines (rich renders nothing below one cell)."""
    if width < 1:
        return []
    lines = []
    for a, b in _wrap(plain, width if wrap else sys.maxsize, fold=False):
        if wrap:  # rich drops the spaces that end a line beyond the width only where it wraps
            b = _line_end(plain, a, b, width)
        if right:  # right-justified lines lose every trailing space (rich's Lines.justify)
            b = a + len(plain[a:b].rstrip())
        tail = ""
        if _width(plain[a:b]) > width:
            if plain.isascii():
                b, tail = a + width - 1, _ELLIPSIS
            else:
                from rich.cells import set_cell_size

                kept = set_cell_size(plain[a:b], width - 1)
                # A wide character cut in half becomes a space (rich.cells._split_text).
                keep = len(kept) if plain.startswith(kept, a) else len(kept) - 1
                b, tail = a + keep, kept[keep:] + _ELLIPSIS
        lines.append((a, b, tail))
    return lines


def table(columns: Sequence[Column], rows: Sequence[Sequence[Cell]], *, width: int, title: Cell | None = None,
          rich_fit: bool = False) -> Styled:
    """A table drawn like rich's default Table(pad_edge=False, header_style="bold"); print it
    with ``Out.print(..., wrap=False)``. ``rich_fit``: fit ``width`` the way rich's Table does
    (columns narrowed as rich narrows them, overlong lines cut with "…", headers aligned to the
    bottom, the title wrapped and padded to the table's width).

    Built as one string plus style spans: appending to a rich Text cell by cell cost ~5 us a
    piece, which made `show --channels` on a ResNet-152 (170,000 rows) take 30 s.
    """

    def plain_and_spans(cell: Cell) -> tuple[str, list[tuple[int, int, str]]]:
        return (cell.plain, cell.spans) if isinstance(cell, Styled) else (cell, [])

    header = [(c.header, [(0, len(c.header), "bold")]) for c in columns]
    body = [[plain_and_spans(c) for c in row] for row in rows]
    longest = [max([_width(col.header), *(_cell_width(row[i][0]) for row in body)]) for i, col in enumerate(columns)]
    last = len(columns) - 1
    right = [c.justify == "right" for c in columns]
    if rich_fit:
        edges = [(i > 0, i < last) for i in range(len(columns))]
        full = _rich_widths(longest, [l + r for l, r in edges], [c.wrap for c in columns], width - len(columns) - 1)
        # A column narrower than its padding shows as much of the padding as fits.
        lpad = [" " * min(l, w) for (l, _), w in zip(edges, full)]
        rpad = [" " * max(0, min(r, w - l)) for (l, r), w in zip(edges, full)]
        widths = [max(0, w - l - r) for (l, r), w in zip(edges, full)]
        drawn_width = sum(full) + len(columns) + 1
    else:
        widths = _fit(columns, longest, width)
        lpad = ["" if i == 0 else " " for i in range(len(columns))]
        rpad = [" " if i < last else "" for i in range(len(columns))]
    out: list[str] = []
    spans: list[tuple[int, int, str]] = []
    at = 0  # offset of the next piece in the whole table's text

    def emit(piece: str) -> None:
        nonlocal at
        out.append(piece)
        at += len(piece)

    def cut(plain: str, i: int) -> list[tuple[int, int, str]]:
        if rich_fit:
            return _rich_lines(plain, widths[i], columns[i].wrap, right[i])
        # A column that does not wrap is as wide as its widest line: _wrap only splits it at
        # newlines. The common cell, one line in such a column, skips _wrap (1.8 million
        # cells in `show --channels` on a ResNet-152).
        if not columns[i].wrap and "\n" not in plain:
            return [(0, len(plain), "")]
        return [(a, _line_end(plain, a, b, widths[i]), "") for a, b in _wrap(plain, widths[i])]

    def line(cells: Sequence[tuple[str, list[tuple[int, int, str]]]], left: str, sep: str, end: str,
             bottom: bool = False) -> None:
        cuts = [cut(plain, i) for i, (plain, _) in enumerate(cells)]
        height = max(1, *map(len, cuts))
        if bottom:  # rich aligns header cells to the bottom of their row
            cuts = [[(0, 0, "")] * (height - len(c)) + c for c in cuts]
        for k in range(height):
            emit(left)
            for i, (plain, cell_spans) in enumerate(cells):
                a, b, tail = cuts[i][k] if k < len(cuts[i]) else (0, 0, "")
                piece = plain[a:b]
                pad = " " * (widths[i] - _width(piece) - len(tail))
                lead = lpad[i] + pad if right[i] else lpad[i]
                start = at + len(lead) - a  # where plain[0] would be in the table's text
                for lo, hi, style in cell_spans:
                    if max(lo, a) < min(hi, b):
                        spans.append((start + max(lo, a), start + min(hi, b), style))
                    if tail and lo <= b < hi:  # "…" keeps the style of what it stands for
                        spans.append((start + b, start + b + len(tail), style))
                # One piece per cell: the 1.8 million cells of `show --channels` on a ResNet-152.
                emit(lead + piece + tail + (rpad[i] if right[i] else pad + rpad[i]) + (sep if i < last else end))
            emit("\n")

    def rule(left: str, fill: str, sep: str, end: str) -> None:
        emit(left + sep.join(fill * (len(lpad[i]) + w + len(rpad[i])) for i, w in enumerate(widths)) + end + "\n")

    if title is not None:
        t_plain, t_spans = plain_and_spans(title)
        if rich_fit:  # as rich's table.title: italic, wrapped and padded to the table's width
            for a, b in _wrap(t_plain, drawn_width):
                b = _line_end(t_plain, a, b, drawn_width)
                spans.append((at, at + b - a, "italic"))
                spans.extend((at + max(lo, a) - a, at + min(hi, b) - a, s) for lo, hi, s in t_spans if max(lo, a) < min(hi, b))
                emit(t_plain[a:b] + " " * max(0, drawn_width - _width(t_plain[a:b])) + "\n")
        else:
            spans.extend(t_spans)
            emit(t_plain + "\n")
    rule("┏", "━", "┳", "┓")
    line(header, "┃", "┃", "┃", bottom=rich_fit)
    rule("┡", "━", "╇", "┩")
    for row in body:
        line(row, "│", "│", "│")
    rule("└", "─", "┴", "┘")
    drawn = Styled("".join(out)[:-1])
    drawn.spans = spans
    # rich's narrowing can leave a table wider than the terminal (its borders alone, or columns
    # already at no cells); rich's console then cuts every line at the terminal's width.
    if rich_fit and drawn_width > width:
        return _crop(drawn, width)
    return drawn


def _crop(text: Styled, width: int) -> Styled:
    """``text`` with every line cut to ``width`` cells, as rich's console crops what it prints
    (Segment.split_and_crop_lines); a wide character cut in half becomes a space."""
    from bisect import bisect_right

    lines, starts, kept, at = [], [], [], 0
    for line in text.plain.split("\n"):
        starts.append(at)
        at += len(line) + 1
        if _width(line) > width:
            if line.isascii():
                line = line[:width]
            else:
                from rich.cells import set_cell_size

                cut = set_cell_size(line, width)
                kept.append(len(cut) if line.startswith(cut) else len(cut) - 1)
                lines.append(cut)
                continue
        kept.append(len(line))
        lines.append(line)
    cropped = Styled("\n".join(lines))
    new_starts = [0]
    for line in lines[:-1]:
        new_starts.append(new_starts[-1] + len(line) + 1)
    for lo, hi, style in text.spans:
        i = bisect_right(starts, lo) - 1
        lo, hi = lo - starts[i], min(hi - starts[i], kept[i])
        if lo < hi:
            cropped.spans.append((new_starts[i] + lo, new_starts[i] + hi, style))
    return cropped
