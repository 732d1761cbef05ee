"""Path checks done before any reader touches a file, and the one way readers open it.

``torch.load`` blocks forever on a FIFO and happily reads a device, so nothing here opens a
path until ``lstat``/``stat`` say it is a regular file; the open itself uses ``O_NONBLOCK``
and re-checks with ``fstat`` so a file swapped for a FIFO in between cannot block us either.
"""

from __future__ import annotations

import errno
import os
import stat
import weakref

from bninspect.errors import PathProblemError

_KINDS = (
    (stat.S_ISDIR, "is a directory, not {what}"),
    (stat.S_ISFIFO, "is a FIFO (named pipe), not a regular file; bninspect does not read from it"),
    (stat.S_ISCHR, "is a character device, not a regular file"),
    (stat.S_ISBLK, "is a block device, not a regular file"),
    (stat.S_ISSOCK, "is a socket, not a regular file"),
)


def _not_regular(mode: int, what: str = "a checkpoint file") -> str:
    for test, text in _KINDS:
        if test(mode):
            return text.format(what=what)
    return "is not a regular file"


def check_path(path: str, what: str = "a checkpoint file") -> os.stat_result:
    """The stat of ``path`` if it is a readable regular file; PathProblemError saying why not
    (``what`` names the kind of file expected, for the directory case)."""
    try:
        link = os.lstat(path)
    except FileNotFoundError:
        raise PathProblemError("no such file", path=path) from None
    except NotADirectoryError:
        raise PathProblemError("no such file (a parent in the path is not a directory)", path=path) from None
    except PermissionError:
        raise PathProblemError("cannot be accessed (permission denied on a parent directory)", path=path) from None
    except OSError as exc:
        raise PathProblemError(f"cannot be accessed ({os.strerror(exc.errno or 0)})", path=path) from None
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PathProblemError("is a symlink loop", path=path) from None
        if stat.S_ISLNK(link.st_mode) and exc.errno == errno.ENOENT:
            raise PathProblemError("is a dangling symlink (its target does not exist)", path=path) from None
        raise PathProblemError(f"cannot be accessed ({os.strerror(exc.errno or 0)})", path=path) from None
    if not stat.S_ISREG(st.st_mode):
        raise PathProblemError(_not_regular(st.st_mode, what), path=path)
    if not os.access(path, os.R_OK):
        raise PathProblemError("cannot be read (permission denied)", path=path)
    return st


def open_regular(path: str) -> int:
    """A read-only descriptor for ``path``, which must be a regular file (never blocks)."""
    check_path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except PermissionError:
        raise PathProblemError("cannot be read (permission denied)", path=path) from None
    except OSError as exc:
        raise PathProblemError(f"cannot be opened ({os.strerror(exc.errno or 0)})", path=path) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise PathProblemError(_not_regular(st.st_mode), path=path)
    return fd


def read_head(path: str, size: int = 4096) -> bytes:
    """The first ``size`` bytes of a regular file (fewer when the file is shorter)."""
    fd = open_regular(path)
    try:
        return os.pread(fd, size, 0)
    except OSError as exc:
        raise PathProblemError(f"cannot be read ({os.strerror(exc.errno or 0)})", path=path) from None
    finally:
        os.close(fd)


def pread_exact(fd: int, length: int, offset: int, path: str, what: str) -> bytes:
    """Exactly ``length`` bytes at ``offset``; InvalidFileError (truncated) when the file is shorter."""
    from bninspect.errors import InvalidFileError

    chunks = []
    got = 0
    while got < length:
        try:
            chunk = os.pread(fd, min(length - got, 1 << 30), offset + got)
        except OSError as exc:
            raise PathProblemError(f"cannot be read ({os.strerror(exc.errno or 0)})", path=path) from None
        if not chunk:
            raise InvalidFileError(f"truncated: {what} needs {length} bytes at offset {offset}, the file ends first", path=path)
        chunks.append(chunk)
        got += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class SharedFile:
    """The descriptor a checkpoint's lazy tensors read from: the file as it was when opened.

    Reading through the descriptor the reader validated (not by reopening the path) means a
    file replaced after opening cannot feed us other bytes; it is closed with its last user.
    """

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd
        weakref.finalize(self, os.close, fd)

    def pread(self, length: int, offset: int, what: str) -> bytes:
        """Exactly ``length`` bytes at ``offset`` (InvalidFileError when the file ends first)."""
        return pread_exact(self.fd, length, offset, self.path, what)

