"""What every renderer needs: safe names, a console, number formatting.

Names come from files we do not trust. ``safe`` makes control characters visible (a name
with ANSI escapes or newlines must not drive the terminal), and rich only ever receives
names inside ``Text`` objects or via ``markup_escape`` so ``[bold red]`` in a key is
printed literally.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import TYPE_CHECKING

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
