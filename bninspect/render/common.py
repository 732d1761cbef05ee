"""What every renderer needs: safe names, a console, number formatting.

Names come from files we do not trust. ``safe`` makes control characters visible (a name
with ANSI escapes or newlines must not drive the terminal), and rich only ever receives
names inside ``Text`` objects or via ``markup_escape`` so ``[bold red]`` in a key is
printed literally.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from typing import TYPE_CHECKING, Sequence, Union

# Re-exported for renderers: numbers, and names with control characters made visible.
from bninspect.textfmt import num  # noqa: F401
from bninspect.textfmt import visible as safe

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

# rich is imported inside the functions that build terminal output: a --json run never needs it
# (~40 ms of start-up).

def markup(name: str) -> str:
    """A name ready to embed in a rich markup string: control chars visible, brackets escaped."""
    from rich.markup import escape as markup_escape

    return markup_escape(safe(name))


def text(name: str, style: str = "") -> Text:
    """A rich Text of a name from a file; Text is never parsed for markup."""
    from rich.text import Text

    return Text(safe(name), style=style)


@functools.cache
def _console_class() -> type[Console]:
    """rich's Console with broken-pipe handling of ours; built on first use so rich loads late."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            # rich exits with status 1 here; the CLI maps a closed pipe to its own exit status.
            raise BrokenPipeError

    return _Console


def console(stderr: bool = False) -> Console:
    """A console that does not guess highlights in our output (numbers, paths)."""
    width = None
    if not (sys.stderr if stderr else sys.stdout).isatty() and "COLUMNS" not in os.environ:
        width = 160
    return _console_class()(stderr=stderr, highlight=False, width=width, emoji=False)


# -- tables -------------------------------------------------------------------------------------
#
# rich's Table measures, wraps and renders every cell through its generic layout engine: 190 ms
# for the 155 rows of a ResNet-152 (~120 us a cell), three times what `show` spends reading the
# 2 GB file, and 15 s for the per-channel tables of `show --channels` on it (issue 8). Our
# tables are simple (one line per cell, two columns that may fold), so they are laid out here
# in rich's look (heavy head box, bold header, no outer padding) and printed as one Text.

@dataclasses.dataclass(frozen=True)
class Column:
    """One table column: its header, right or left justified, and whether long cells may fold
    onto more lines when the table is wider than the terminal (names do; numbers never)."""

    header: str
    justify: str = "left"
    fold: bool = False


Cell = Union[str, "Text"]
_FOLD_MIN = 10


def _width(text: str) -> int:
    """Terminal cells a string takes (wide characters count twice)."""
    if text.isascii():
        return len(text)
    from rich.cells import cell_len

    return cell_len(text)


def _fold(plain: str, width: int) -> list[tuple[int, int]]:
    """(start, end) offsets cutting a cell's text into pieces at most ``width`` cells wide."""
    if _width(plain) <= width:
        return [(0, len(plain))]
    from rich.cells import get_character_cell_size

    pieces, start, used = [], 0, 0
    for i, ch in enumerate(plain):
        size = get_character_cell_size(ch)
        if used + size > width:
            pieces.append((start, i))
            start, used = i, 0
        used += size
    pieces.append((start, len(plain)))
    return pieces


def _fit(columns: Sequence[Column], widths: list[int], limit: int) -> list[int]:
    """Narrow the widest foldable columns until the table fits ``limit`` cells (or cannot)."""
    widths = list(widths)
    frame = 3 * len(columns) - 1  # borders and the one-space padding between columns
    while sum(widths) + frame > limit:
        foldable = [i for i, c in enumerate(columns) if c.fold and widths[i] > _FOLD_MIN]
        if not foldable:
            break
        widest = max(foldable, key=lambda i: widths[i])
        widths[widest] = max(_FOLD_MIN, widths[widest] - (sum(widths) + frame - limit))
    return widths


def print_table(out: Console, drawn: Text) -> None:
    """Print a table from ``table``: through rich where styles reach a terminal, else its
    characters as they are (rich would drop the styles, after splitting the text into one
    Text per line: 10 us a line, seconds for a per-channel table)."""
    if out.color_system is None:
        out.file.write(drawn.plain + "\n")
    else:
        out.print(drawn, soft_wrap=True)


def table(columns: Sequence[Column], rows: Sequence[Sequence[Cell]], *, width: int, title: Cell | None = None) -> Text:
    """A table as one rich Text, drawn like rich's default Table(pad_edge=False, header_style="bold").

    Built as one string plus style spans: appending to a Text cell by cell costs ~5 us a piece,
    which made `show --channels` on a ResNet-152 (170,000 rows) take 30 s.
    """
    from rich.text import Span, Text

    def plain_and_spans(cell: Cell) -> tuple[str, list[Span]]:
        if not isinstance(cell, Text):
            return cell, []
        base = [Span(0, len(cell.plain), cell.style)] if cell.style else []
        return cell.plain, base + cell.spans

    header = [(c.header, [Span(0, len(c.header), "bold")]) for c in columns]
    body = [[plain_and_spans(c) for c in row] for row in rows]
    widths = [max([_width(col.header), *(_width(row[i][0]) for row in body)]) for i, col in enumerate(columns)]
    widths = _fit(columns, widths, width)
    last = len(columns) - 1
    right = [c.justify == "right" for c in columns]
    out: list[str] = []
    spans: list[Span] = []
    at = 0  # offset of the next piece in the whole table's text

    def emit(piece: str) -> None:
        nonlocal at
        out.append(piece)
        at += len(piece)

    def line(cells: Sequence[tuple[str, list[Span]]], left: str, sep: str, end: str) -> None:
        cuts = [_fold(plain, widths[i]) if columns[i].fold else [(0, len(plain))] for i, (plain, _) in enumerate(cells)]
        for k in range(max(len(c) for c in cuts)):
            emit(left)
            for i, (plain, cell_spans) in enumerate(cells):
                a, b = cuts[i][k] if k < len(cuts[i]) else (0, 0)
                piece = plain[a:b]
                pad = " " * (widths[i] - _width(piece))
                emit((" " if i else "") + (pad if right[i] else ""))
                for sp in cell_spans:
                    lo, hi = max(sp.start, a), min(sp.end, b)
                    if lo < hi:
                        spans.append(Span(at + lo - a, at + hi - a, sp.style))
                emit(piece)
                emit(("" if right[i] else pad) + (" " if i < last else "") + (sep if i < last else end))
            emit("\n")

    def rule(left: str, fill: str, sep: str, end: str) -> None:
        emit(left + sep.join(fill * (w + (i > 0) + (i < last)) for i, w in enumerate(widths)) + end + "\n")

    if title is not None:
        t_plain, t_spans = plain_and_spans(title)
        spans.extend(t_spans)
        emit(t_plain + "\n")
    rule("┏", "━", "┳", "┓")
    line(header, "┃", "┃", "┃")
    rule("┡", "━", "╇", "┩")
    for row in body:
        line(row, "│", "│", "│")
    rule("└", "─", "┴", "┘")
    return Text("".join(out)[:-1], spans=spans)
