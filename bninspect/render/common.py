"""What every renderer needs: safe names, where to print, styled text laid out, tables, numbers.

Names come from files we do not trust. ``visible`` (textfmt) escapes every character that could
act on the terminal or disguise a name, and cuts overlong text; rich only ever receives
names inside ``Text`` objects (``Styled.to_rich``) or via ``markup_escape`` so ``[bold red]``
in a key is printed literally.

Every command prints through ``Out``: text and tables laid out by ``render.layout``, our own
rules, for the output's width. Into a pipe, a log file or CI, where nothing shows styles, the
characters are written as they are and rich is never imported (its console is a tenth of a
`show`'s run: benchmarks/README.md); on a terminal rich adds the styles to the same characters.
A --json run loads no rich at all. Only drift's progress bar, drawn where stderr is a terminal,
is rich's own.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import io
import os
import sys
from typing import TYPE_CHECKING, Iterator

from bninspect.errors import OutputClosed

# Re-exported for renderers: numbers, names made safe to print, styled text and tables.
from bninspect.render.layout import Column, Styled, rejoin, table, wrapped  # noqa: F401
from bninspect.textfmt import cut_note, json_visible, num, visible  # noqa: F401

if TYPE_CHECKING:
    from rich.console import Console


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


def console(stderr: bool = False, terminal: bool | None = None) -> Console:
    """The rich console behind ``Out`` on a terminal (and drift's progress bar); it does not
    guess highlights in our output (numbers, paths). ``terminal``: whether to style the output,
    where we decided it (None: rich decides)."""
    width = None
    if not (sys.stderr if stderr else sys.stdout).isatty() and "COLUMNS" not in os.environ:
        width = _PIPE_WIDTH
    return _console_class()(stderr=stderr, highlight=False, width=width, emoji=False, force_terminal=terminal)


# Lines are laid out for this width where the output is not a terminal and COLUMNS is unset.
_PIPE_WIDTH = 160


def _is_terminal(stream: object) -> bool | None:
    """Whether output to ``stream`` is styled: where it is a terminal, or where the environment
    says it acts as one (TTY_COMPATIBLE=1, or FORCE_COLOR set and not empty) or not
    (TTY_COMPATIBLE=0), the conventions rich documents. None in a notebook, where rich draws
    the output its own way."""
    if "get_ipython" in vars(builtins):
        return None
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


class Out:
    """Where every command prints: rich's console on a terminal, else the stream itself.

    Both get the same characters, laid out here for ``width``; rich only adds the styles, so
    nothing is left for it to wrap or crop.
    """

    def __init__(self, stderr: bool = False) -> None:
        self.file = sys.stderr if stderr else sys.stdout
        if _CAPTURED and not stderr:  # the Python API asks for the text (``captured``)
            self.file, self.width, self._rich = _CAPTURED[-1][0], _CAPTURED[-1][1], None
            return
        styled = _is_terminal(self.file)
        self._rich = None if styled is False else console(stderr, terminal=styled)
        columns = os.environ.get("COLUMNS", "")
        self.width = self._rich.width if self._rich else int(columns) if columns.isdigit() else _PIPE_WIDTH

    @property
    def terminal(self) -> bool:
        """Whether this output is a terminal (or forced to act as one): where pictures are drawn."""
        return self._rich is not None

    def print(self, item: str | Styled = "", *, wrap: bool = True) -> None:
        """Print ``item`` and a newline; a str is printed as it is (never parsed as markup).
        Lines wider than the output wrap between words (render.layout); ``wrap=False`` keeps
        them whole (tables, one finding per line). Every line is cut at ``MAX_LINE``
        characters, saying how many were left out."""
        item = _bounded(item)
        if wrap:
            item = wrapped(item, self.width)
        if self._rich is not None:
            from rich.text import Text

            self._rich.print(item.to_rich() if isinstance(item, Styled) else Text(item), soft_wrap=True)
            return
        try:
            self.file.write((item.plain if isinstance(item, Styled) else item) + "\n")
            self.file.flush()  # a closed pipe shows here, not at exit after the CLI chose its status
        except BrokenPipeError:
            raise OutputClosed from None


# Where ``captured`` collects what commands print, innermost last: (buffer, width).
_CAPTURED: list[tuple[io.StringIO, int]] = []


@contextlib.contextmanager
def captured(width: int = 100) -> Iterator[io.StringIO]:
    """Collect what renderers print to stdout, laid out for ``width`` cells and without styles,
    in a buffer instead of writing it (the Python API's ``text()`` and notebook display)."""
    buffer = io.StringIO()
    _CAPTURED.append((buffer, width))
    try:
        yield buffer
    finally:
        _CAPTURED.pop()


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
    lines, at = [], 0  # at: where the current line starts in ``plain``
    for line in plain.split("\n"):
        shown = len(line) if len(line) <= MAX_LINE else MAX_LINE - len(cut_note(len(line)))
        lines.append((at, at + shown, cut_note(len(line) - shown) if shown < len(line) else ""))
        at += len(line) + 1
    return rejoin(item, lines)
