"""Which files in a folder are checkpoints: decided by content, as ``open_checkpoint`` decides formats.

A file is a checkpoint when one of the readers' ``sniff`` claims its first 4 KiB; a zip must
also hold a ``data.pkl`` record, as torch.save and torch.jit.save archives do, so ordinary zip
files are passed over. Everything else in a folder (code, logs, images, OpenVINO ``.bin``
weights) is passed over quietly. FIFOs, sockets and devices are never opened (reading a FIFO
blocks); a file that cannot be read is kept, so that the caller reports it rather than hides it.
"""

from __future__ import annotations

import os
import stat
from typing import Iterator

from bninspect.errors import BNInspectError
from bninspect.formats import HEAD_SIZE, reader_for, torchzip
from bninspect.formats.paths import read_head


def is_checkpoint_file(path: str) -> bool:
    """Does a file found in a folder look like something a reader can open? (content, not name)"""
    try:
        head = read_head(path, HEAD_SIZE)
    except BNInspectError:
        return True  # unreadable: report it rather than skip it silently
    if reader_for(head) is None:
        return False
    if not torchzip.sniff(head):
        return True
    try:
        return torchzip.is_torch_archive(path, head)
    except BNInspectError:  # a zip whose directory cannot be read: maybe a truncated checkpoint to report
        return True


def walk(top: str) -> Iterator[tuple[str, list[str]]]:
    """(folder, sorted names of what is not a folder in it) for ``top`` and every folder below it,
    top-down in sorted order, skipping hidden folders and not following symlinked ones, as
    ``os.walk`` would; with a stack, not recursion (``os.walk`` recurses before Python 3.12,
    and a folder nested a thousand levels deep would exceed the recursion limit)."""
    stack = [top]
    while stack:
        root = stack.pop()
        try:
            with os.scandir(root) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:  # unreadable, or vanished: os.walk skips it too
            continue
        dirs, names = [], []
        for entry in entries:
            try:
                folder = entry.is_dir(follow_symlinks=False)
            except OSError:
                folder = False
            if not folder:
                names.append(entry.name)
            elif not entry.name.startswith("."):
                dirs.append(os.path.join(root, entry.name))
        yield root, names
        stack.extend(reversed(dirs))


def checkpoint_files(top: str) -> list[str]:
    """The checkpoint files under the folder ``top``, in walk order (sorted, hidden folders
    skipped, symlinked folders not followed, FIFOs/sockets/devices skipped); an entry that
    cannot be examined (a dangling link, no permission) is kept, to be reported."""
    found = []
    for root, names in walk(top):
        for name in names:
            full = os.path.join(root, name)
            try:
                regular = stat.S_ISREG(os.stat(full).st_mode)
            except OSError:
                found.append(full)
                continue
            if regular and is_checkpoint_file(full):
                found.append(full)
    return found
