"""Text laid out for a terminal of a given width, by rules of our own: cell widths, word wrap, tables.

Every command's output is laid out here, whether it goes to a pipe or to a terminal. A terminal
gets the very same characters with styles added (``Out.print`` hands rich text that is laid out
already and asks it neither to wrap nor to crop), so the two cannot drift apart.

Widths. A character takes two cells where Unicode's East Asian Width is Wide or Fullwidth (漢,
ｱ), none where it is a combining mark (categories Mn, Me), one otherwise, ambiguous widths
included (σ, …, as terminals outside CJK locales draw them). Controls and format characters
never get here: ``textfmt.visible`` shows them as escapes.

Word wrap. A line of text wider than the width is broken between words (runs of characters
other than spaces): each line takes as many words as fit, the spaces where it breaks are
dropped, and a word wider than a whole line is cut into pieces of the width. A newline in the
text always ends a line, and the spaces that start a line of the text (an indent) stay.

Tables. One look for every command: a heavy box around bold headers, one space between columns,
none at the outer edges. Each column is as wide as its widest line. Where the table is wider
than the terminal, columns narrow, always the widest first down to the width of the next
widest, and only as far as needed:

1. if breaking headers between their words (down to the widest cell below each) is enough, only
   headers break: they are drawn once, the cells once per layer;
2. otherwise the columns that may wrap (names, prose; never numbers) narrow, to ``WRAP_MIN``
   cells at least, their cells wrapping as text does; then, where that is not enough, headers
   break too.

A table that still does not fit is drawn whole: no character of a cell is ever cut or hidden,
and a terminal wraps the lines that are too long. Headers sit at the bottom of their row, right
above their column's values.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import unicodedata
from bisect import bisect_right
from typing import TYPE_CHECKING, Iterable, Sequence, Union

if TYPE_CHECKING:
    from rich.text import Text


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
        """The same characters and styles as a rich Text, for a terminal."""
        from rich.text import Span, Text

        return Text(self.plain, spans=[Span(*s) for s in self.spans])


def rejoin(item: str | Styled, lines: Iterable[tuple[int, int, str]]) -> str | Styled:
    """The lines ``item.plain[start:end] + added`` joined by newlines, each (start, end, added)
    of ``lines``; a Styled keeps the styles of what it keeps (``added`` is unstyled)."""
    plain = item.plain if isinstance(item, Styled) else item
    lines = list(lines)
    text = "\n".join(plain[a:b] + added for a, b, added in lines)
    if not isinstance(item, Styled):
        return text
    kept = Styled(text)
    starts, at = [], 0  # where each line starts in ``plain`` (lines are in order) and in ``text``
    offsets = []
    for a, b, added in lines:
        starts.append(a)
        offsets.append(at)
        at += b - a + len(added) + 1
    for lo, hi, style in item.spans:
        k = max(0, bisect_right(starts, lo) - 1)
        while k < len(lines) and lines[k][0] < hi:
            a, b, _ = lines[k]
            if max(lo, a) < min(hi, b):
                kept.spans.append((offsets[k] + max(lo, a) - a, offsets[k] + min(hi, b) - a, style))
            k += 1
    return kept


# -- widths -------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4096)
def _char_width(char: str) -> int:
    if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me"):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def cell_width(text: str) -> int:
    """Terminal cells ``text`` takes on one line (see the module docstring)."""
    if text.isascii():
        return len(text)
    return sum(map(_char_width, text))


def _widest_line(text: str) -> int:
    """Cells the widest line of ``text`` takes."""
    return cell_width(text) if "\n" not in text else max(map(cell_width, text.split("\n")))


# -- word wrap ----------------------------------------------------------------------------------

_WORD = re.compile(r"[^ ]+")


def wrap(text: str, width: int) -> list[tuple[int, int]]:
    """(start, end) offsets in ``text`` of the lines it takes in ``width`` cells (the rules are in
    the module docstring); lines end before the spaces where they break."""
    lines: list[tuple[int, int]] = []
    start = 0
    for part in text.split("\n"):
        end = start + len(part)
        if len(part) <= width and (part.isascii() or cell_width(part) <= width):
            lines.append((start, end))
        else:
            lines.extend(_break(text, start, end, width))
        start = end + 1
    return lines


def _break(text: str, start: int, end: int, width: int) -> list[tuple[int, int]]:
    """The lines of ``text[start:end]`` (one line of text, no newline) broken to ``width`` cells."""
    lines: list[tuple[int, int]] = []
    first, last, used = start, start, 0  # the open line: its start, the end of its last word, its cells
    for m in _WORD.finditer(text, start, end):
        a, b = m.span()
        spaces = a - last  # between words, or the indent before a line's first word
        need = cell_width(text[a:b])
        if used + spaces + need <= width:
            last, used = b, used + spaces + need
            continue
        if last > first:  # the open line holds a word: it ends there, the spaces after it go
            lines.append((first, last))
            first, last, used, spaces = a, a, 0, 0
        if spaces + need <= width:
            last, used = b, spaces + need
            continue
        pieces = _chop(text, first, b, width)  # a word wider than a line (after the indent, if any)
        lines.extend(pieces[:-1])
        first, last = pieces[-1]
        used = cell_width(text[first:last])
    lines.append((first, last))
    return lines


def _chop(text: str, start: int, end: int, width: int) -> list[tuple[int, int]]:
    """(start, end) offsets cutting ``text[start:end]`` into pieces of at most ``width`` cells (a
    character wider than ``width`` alone takes a piece)."""
    if text.isascii():
        return [(i, min(i + width, end)) for i in range(start, end, max(width, 1))]
    pieces, used = [], 0
    for i in range(start, end):
        size = _char_width(text[i])
        if used + size > width and i > start:
            pieces.append((start, i))
            start, used = i, 0
        used += size
    pieces.append((start, end))
    return pieces


def wrapped(item: str | Styled, width: int) -> str | Styled:
    """``item`` with every line wider than ``width`` cells broken into lines that fit."""
    plain = item.plain if isinstance(item, Styled) else item
    if len(plain) <= width and plain.isascii():
        return item
    lines = wrap(plain, width)
    if len(lines) == plain.count("\n") + 1 and sum(b - a for a, b in lines) + len(lines) - 1 == len(plain):
        return item  # no line was broken
    return rejoin(item, ((a, b, "") for a, b in lines))


# -- tables -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Column:
    """One table column: its header, right or left justified, and whether long cells may wrap
    onto more lines when the table is wider than the terminal (names and prose do; numbers never)."""

    header: str
    justify: str = "left"
    wrap: bool = False


Cell = Union[str, Styled]
# A wrapping column is never narrowed below this many cells: narrower, a name breaks every few characters.
WRAP_MIN = 10
_Spans = Sequence[tuple[int, int, str]]


def _frame(columns: int) -> int:
    """Cells a table's borders and padding take: a bar left, right and between columns, and a
    space on each side of an inner bar."""
    return columns + 1 + 2 * (columns - 1)


def _narrow(widths: list[int], floors: list[int], excess: int) -> list[int]:
    """Take up to ``excess`` cells from the widest columns, down to the width of the next widest
    and so on, never below a column's floor; columns of equal width give in turn, left first."""
    widths = list(widths)
    while excess > 0:
        movable = [i for i, w in enumerate(widths) if w > floors[i]]
        if not movable:
            break
        top = max(widths[i] for i in movable)
        widest = [i for i in movable if widths[i] == top]
        below = max([widths[i] for i in movable if widths[i] < top] + [floors[i] for i in widest])
        share = min(top - below, -(-excess // len(widest)))
        for i in widest:
            taken = min(share, widths[i] - floors[i], excess)
            widths[i] -= taken
            excess -= taken
    return widths


def fit(columns: Sequence[Column], header: Sequence[str], body: Sequence[Sequence[str]], width: int) -> list[int]:
    """Each column's width in cells, borders and padding not included, for a table of these
    header and cell texts on a terminal ``width`` cells wide (the steps are in the module docstring)."""
    cells = [max((_widest_line(row[i]) for row in body), default=0) for i in range(len(columns))]
    widths = [max(c, _widest_line(h)) for c, h in zip(cells, header)]
    room = width - _frame(len(columns))
    if sum(widths) <= room:
        return widths
    # Headers break between words, down to the cells below them.
    headers_only = [max(c, max(map(cell_width, h.split(" "))), 1) for c, h in zip(cells, header)]
    narrowed = _narrow(widths, headers_only, sum(widths) - room)
    if sum(narrowed) <= room:
        return narrowed
    prose = [min(w, WRAP_MIN) if c.wrap else w for w, c in zip(widths, columns)]
    narrowed = _narrow(widths, prose, sum(widths) - room)
    return _narrow(narrowed, list(map(min, prose, headers_only)), sum(narrowed) - room)


def _cell_lines(plain: str, width: int) -> list[tuple[int, int]]:
    """The (start, end) lines of a cell ``width`` cells wide."""
    if "\n" not in plain and len(plain) <= width and (plain.isascii() or cell_width(plain) <= width):
        return [(0, len(plain))]
    return wrap(plain, width)


class _Canvas:
    """A table's text as it is drawn, row by row, and the style spans of its cells."""

    def __init__(self, columns: Sequence[Column], widths: list[int]) -> None:
        self.widths = widths
        self.right = [c.justify == "right" for c in columns]
        self.pieces: list[str] = []
        self.spans: list[tuple[int, int, str]] = []
        self.at = 0  # offset of the next piece in the table's text

    def add(self, piece: str) -> None:
        """Append unstyled text."""
        self.pieces.append(piece)
        self.at += len(piece)

    def rule(self, left: str, fill: str, sep: str, end: str) -> None:
        """A horizontal line of the box, its joints under the column bars."""
        last = len(self.widths) - 1
        self.add(left + sep.join(fill * (w + (i > 0) + (i < last)) for i, w in enumerate(self.widths)) + end + "\n")

    def row(self, cells: Sequence[tuple[str, _Spans]], bar: str, bottom: bool = False) -> None:
        """One row of cells, as many lines high as its tallest cell; the others are aligned to
        the top (to the bottom with ``bottom``, for headers)."""
        lines = [_cell_lines(plain, w) for (plain, _), w in zip(cells, self.widths)]
        height = max(map(len, lines))
        if bottom:
            lines = [[(0, 0)] * (height - len(c)) + c for c in lines]
        last = len(cells) - 1
        for k in range(height):
            self.add(bar)
            for i, (plain, spans) in enumerate(cells):
                a, b = lines[i][k] if k < len(lines[i]) else (0, 0)
                piece = plain[a:b]
                gap = " " * (self.widths[i] - cell_width(piece))
                lead = (" " if i else "") + (gap if self.right[i] else "")
                start = self.at + len(lead) - a  # where plain[0] would be in the table's text
                for lo, hi, style in spans:
                    if max(lo, a) < min(hi, b):
                        self.spans.append((start + max(lo, a), start + min(hi, b), style))
                # One piece per cell: `show --channels` draws millions of them.
                self.add(lead + piece + ("" if self.right[i] else gap) + (" " if i < last else "") + bar)
            self.add("\n")


def table(columns: Sequence[Column], rows: Sequence[Sequence[Cell]], *, width: int, title: Cell | None = None) -> Styled:
    """A table laid out for a terminal ``width`` cells wide (see the module docstring), with an
    optional title above it wrapped like text; print it with ``Out.print(..., wrap=False)``.

    Built as one string plus style spans: a rich Text appended cell by cell is too slow for the
    per-channel tables (benchmarks/README.md).
    """
    header = [(c.header, [(0, len(c.header), "bold")]) for c in columns]
    body = [[(c.plain, c.spans) if isinstance(c, Styled) else (c, ()) for c in row] for row in rows]
    canvas = _Canvas(columns, fit(columns, [c.header for c in columns], [[p for p, _ in row] for row in body], width))
    if title is not None:
        titled = wrapped(title, width)
        plain, spans = (titled.plain, titled.spans) if isinstance(titled, Styled) else (titled, ())
        canvas.spans.extend(spans)
        canvas.add(plain + "\n")
    canvas.rule("┏", "━", "┳", "┓")
    canvas.row(header, "┃", bottom=True)
    canvas.rule("┡", "━", "╇", "┩")
    for row in body:
        canvas.row(row, "│")
    canvas.rule("└", "─", "┴", "┘")
    drawn = Styled("".join(canvas.pieces)[:-1])
    drawn.spans = canvas.spans
    return drawn
