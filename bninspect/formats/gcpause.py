"""Pause the cyclic garbage collector while a reader builds many small objects.

Unpickling a 10,000-layer state dict creates some 300,000 objects that all stay alive; each
generation-0 threshold crossing then walks them again for nothing. Pausing collection while
they are built halves the time to open such a file (measured: 6.3 s -> 2.8 s on a loaded
2-core machine). Reference counting still frees everything that is not in a cycle.
"""

from __future__ import annotations

import contextlib
import gc
from typing import Iterator


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Disable the cyclic collector inside the block; restore the previous state after it."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
