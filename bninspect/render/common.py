"""What every renderer needs: safe names, where to print, styled text, tables, numbers.

Names come from files we do not trust. ``safe`` makes control characters visible (a name
with ANSI escapes or newlines must not drive the terminal), and rich only ever receives
names inside ``Text`` objects or via ``markup_escape`` so ``[bold red]`` in a key is
printed literally.

`show`, `check`, `explain` and `rules` print through ``Out`` with ``Styled`` text and hand-laid
``table``s, which need rich only when the output is a terminal: in a pipe, a log file or CI,
where nothing shows styles, rich is never imported (~25 ms of a ~220 ms run, issue 8). The
other renderers print rich tables of prose through ``console()``; rich is imported inside the
functions that build them, so a --json run never loads it.
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

# Re-exported for renderers: numbers, and names with control characters made visible.
from bninspect.textfmt import num  # noqa: F401
from bninspect.textfmt import visible as safe

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text


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
            raise OutputClosed

    return _Console


def console(stderr: bool = False) -> Console:
    """A console that does not guess highlights in our output (numbers, paths)."""
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
    """Write a JSON document (and a newline) to stdout; a closed pipe becomes OutputClosed."""
    try:
        sys.stdout.write(text + "\n")
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
    """Where `show`, `check`, `explain` and `rules` print: rich's console on a terminal, else the stream.

    Off a terminal rich would drop every style anyway; writing the characters directly gives
    the same text (long lines wrap between words where rich wraps them) without importing rich.
    """

    def __init__(self, stderr: bool = False) -> None:
        self.file = sys.stderr if stderr else sys.stdout
        self._rich = console(stderr) if _is_terminal(self.file) else None
        columns = os.environ.get("COLUMNS", "")
        self.width = self._rich.width if self._rich else int(columns) if columns.isdigit() else _PIPE_WIDTH

    def print(self, item: str | Styled = "", *, wrap: bool = True) -> None:
        """Print ``item`` and a newline; a str is printed as it is (never parsed as markup).
        ``wrap=False`` keeps long lines whole (tables, one finding per line)."""
        if self._rich is not None:
            from rich.text import Text

            self._rich.print(item.to_rich() if isinstance(item, Styled) else Text(item), soft_wrap=not wrap)
            return
        plain = item.plain if isinstance(item, Styled) else item
        if wrap and (len(plain) > self.width or not plain.isascii()) and _width(plain) > self.width:
            plain = "\n".join(_line_text(plain, a, b, self.width) for a, b in _wrap(plain, self.width))
        try:
            self.file.write(plain + "\n")
            self.file.flush()  # a closed pipe shows here, not at exit after the CLI chose its status
        except BrokenPipeError:
            raise OutputClosed from None


# -- tables -------------------------------------------------------------------------------------
#
# rich's Table measures, wraps and renders every cell through its generic layout engine: 190 ms
# for the 155 rows of a ResNet-152 (~120 us a cell), three times what `show` spends reading the
# 2 GB file, and 15 s for the per-channel tables of `show --channels` on it (issue 8). Our
# tables are simple (cells of a few lines, some columns that may wrap), so they are laid out
# here in rich's look (heavy head box, bold header, no outer padding) as one Styled text.

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


def _wrap(plain: str, width: int) -> list[tuple[int, int]]:
    """(start, end) offsets of the lines ``plain`` takes in ``width`` cells: one per newline, and
    long lines broken between words where rich breaks them (rich._wrap.divide_line: a word
    goes to the next line when it does not fit; a word wider than ``width`` is cut)."""
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
                elif need > width:
                    pieces = _chop(plain, a, b, width)
                    cuts.extend(x for x, _ in pieces if x > start)
                    used = _width(plain[pieces[-1][0]:pieces[-1][1]])
                elif used and a > start:
                    cuts.append(a)
                    used = _width(m.group())
            lines.extend(zip(cuts, [*cuts[1:], end]))
        start = end + 1
    return lines


def _line_text(plain: str, start: int, end: int, width: int) -> str:
    """One wrapped line; spaces that end it beyond ``width`` dropped (as rich's rstrip_end)."""
    piece = plain[start:end]
    excess = len(piece) - width
    if excess > 0:
        spaces = len(piece) - len(piece.rstrip())
        piece = piece[:len(piece) - min(spaces, excess)]
    return piece


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


def table(columns: Sequence[Column], rows: Sequence[Sequence[Cell]], *, width: int, title: Cell | None = None) -> Styled:
    """A table drawn like rich's default Table(pad_edge=False, header_style="bold"); print it
    with ``Out.print(..., wrap=False)``.

    Built as one string plus style spans: appending to a rich Text cell by cell cost ~5 us a
    piece, which made `show --channels` on a ResNet-152 (170,000 rows) take 30 s.
    """

    def plain_and_spans(cell: Cell) -> tuple[str, list[tuple[int, int, str]]]:
        return (cell.plain, cell.spans) if isinstance(cell, Styled) else (cell, [])

    header = [(c.header, [(0, len(c.header), "bold")]) for c in columns]
    body = [[plain_and_spans(c) for c in row] for row in rows]
    widths = [max([_width(col.header), *(_cell_width(row[i][0]) for row in body)]) for i, col in enumerate(columns)]
    widths = _fit(columns, widths, width)
    last = len(columns) - 1
    right = [c.justify == "right" for c in columns]
    out: list[str] = []
    spans: list[tuple[int, int, str]] = []
    at = 0  # offset of the next piece in the whole table's text

    def emit(piece: str) -> None:
        nonlocal at
        out.append(piece)
        at += len(piece)

    def cut(plain: str, i: int) -> list[tuple[int, int]]:
        # A column that does not wrap is as wide as its widest line: _wrap only splits it at
        # newlines. The common cell, one line in such a column, skips _wrap (1.8 million
        # cells in `show --channels` on a ResNet-152).
        if not columns[i].wrap and "\n" not in plain:
            return [(0, len(plain))]
        return _wrap(plain, widths[i])

    def line(cells: Sequence[tuple[str, list[tuple[int, int, str]]]], left: str, sep: str, end: str) -> None:
        cuts = [cut(plain, i) for i, (plain, _) in enumerate(cells)]
        for k in range(max(len(c) for c in cuts)):
            emit(left)
            for i, (plain, cell_spans) in enumerate(cells):
                a, b = cuts[i][k] if k < len(cuts[i]) else (0, 0)
                piece = _line_text(plain, a, b, widths[i])
                pad = " " * max(0, widths[i] - _width(piece))
                emit((" " if i else "") + (pad if right[i] else ""))
                for lo, hi, style in cell_spans:
                    lo, hi = max(lo, a), min(hi, a + len(piece))
                    if lo < hi:
                        spans.append((at + lo - a, at + hi - a, style))
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
    drawn = Styled("".join(out)[:-1])
    drawn.spans = spans
    return drawn
