"""Writing a file the safe way: a temporary file in the target directory, then a rename.

A reader of the target sees the old file or the new one, never half of one; a failed run
leaves no partial file; and the rename replaces the directory entry, so a hard link to the
old file keeps the old bytes.

It never writes over an input: a target that is (by device and inode, after symlinks) a file
this process has read — the checkpoint, a file it names, --data, --input, --expected — is
refused, however the name given leads there.
"""

from __future__ import annotations

import os
import tempfile
from typing import Callable

from bninspect.errors import PathProblemError, UsageError
from bninspect.formats.paths import was_read

OVERWRITE = "would overwrite an input file (one this command reads); choose another name"


def same_file(a: str, b: str) -> bool:
    """Do ``a`` and ``b`` name one file: the same path after symlinks, or a hard link to it.

    Outputs are refused when this is true for an input, whatever the names look like.
    """
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): not the same file
        return False


def check_output(path: str, option: str, inputs: list[tuple[str, str]]) -> str:
    """``path`` made absolute, or a one-line error before any work is done: a directory, a folder
    that does not exist, or (through any link) one of ``inputs``, given as (what it is, path):
    ``option`` must not overwrite *what*. :func:`atomic_write` refuses every file the process
    read in any case; this says so in the option's words, before the command runs."""
    out = os.path.abspath(path)
    if os.path.isdir(out):
        raise PathProblemError(f"is a directory; {option} needs a file name", path=path)
    if not os.path.isdir(os.path.dirname(out)):
        raise PathProblemError("its directory does not exist", path=path)
    for what, given in inputs:
        if same_file(out, given):
            raise UsageError(f"{option} must not overwrite {what}; choose another file", path=path)
    return out


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` to fill a temporary file beside ``path``, then rename it over ``path``;
    UsageError (nothing written) where ``path`` is a file this process has read."""
    if was_read(path):
        raise UsageError(OVERWRITE, path=path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except OSError as exc:
        raise PathProblemError(f"cannot write here ({exc.strerror or 'error'})", path=path) from None
    os.close(fd)
    # mkstemp creates the file 0600; the result gets the permissions any new file would get.
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
