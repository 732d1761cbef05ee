"""Path checks done before any reader touches a file, and the one way readers open it.

``torch.load`` blocks forever on a FIFO and happily reads a device, so nothing here opens a
path until ``lstat``/``stat`` say it is a regular file; the open itself uses ``O_NONBLOCK``
and re-checks with ``fstat`` so a file swapped for a FIFO in between cannot block us either.

Every file a command reads is opened here: the input, the files a model names (ONNX external
data, an OpenVINO IR's ``.bin``: ``open_companion``, which also keeps them inside the model's
folder), ``--data``, ``--input``, ``--expected``. Each is recorded by identity (device and
inode), and the one writer (``bninspect.atomic``) refuses to replace any of them, whatever
name, hard link or symlink leads there.
"""

from __future__ import annotations

import errno
import os
import stat
import weakref

from bninspect.errors import InvalidFileError, PathProblemError

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


# (st_dev, st_ino) of every file this process has opened for reading. Per process: the CLI
# runs one command per process, so these are exactly the command's inputs.
_READ: set[tuple[int, int]] = set()


def open_regular(path: str, what: str = "a checkpoint file") -> int:
    """A read-only descriptor for ``path``, which must be a regular file (never blocks); the
    file is recorded as read (see ``was_read``)."""
    check_path(path, what)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except PermissionError:
        raise PathProblemError("cannot be read (permission denied)", path=path) from None
    except OSError as exc:
        raise PathProblemError(f"cannot be opened ({os.strerror(exc.errno or 0)})", path=path) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise PathProblemError(_not_regular(st.st_mode, what), path=path)
    _READ.add((st.st_dev, st.st_ino))
    return fd


def was_read(path: str) -> bool:
    """Whether ``path`` (symlinks followed; a hard link is the same inode) is a file this process
    has opened for reading."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # missing (a new file), or a name the OS cannot take
        return False
    return (st.st_dev, st.st_ino) in _READ


def companion_path(model_path: str, name: str, what: str) -> str:
    """The path of a file that ``model_path`` names (``name``, relative to the model's folder),
    refused unless it stays inside that folder once symlinks are resolved.

    One rule for every companion file (ONNX external data, an OpenVINO IR's weights): reading
    /etc/passwd or a device as weights because a model file says so is a leak, and a symlink
    that leaves the folder is as much a way out as ``../``. InvalidFileError (the model file is
    at fault) names ``what`` and the name as written.
    """
    base = os.path.realpath(os.path.dirname(os.path.abspath(model_path)))
    if not name or "\0" in name or os.path.isabs(name):
        raise InvalidFileError(f"{what} '{name}' is not a file name relative to the model's directory", path=model_path)
    target = os.path.realpath(os.path.join(base, name))
    if os.path.commonpath([base, target]) != base or target == base:
        raise InvalidFileError(f"{what} '{name}' is outside the model's directory (bninspect reads the files a "
                               "model names only from the directory the model is in)", path=model_path)
    return target


def open_companion(model_path: str, name: str, what: str) -> SharedFile:
    """A file ``model_path`` names, contained (``companion_path``), regular, opened without
    blocking and recorded as read; a missing or special file is named together with the model."""
    target = companion_path(model_path, name, what)
    try:
        fd = open_regular(target, what)
    except PathProblemError as exc:
        problem = exc.message.replace("no such file", "is missing", 1)
        raise PathProblemError(f"{what} '{name}' {problem}", path=model_path) from None
    return SharedFile(target, fd)


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


class Budget:
    """Bytes made from one file beyond the bytes it holds, by kind ("inflated", "expanded"):
    budgets per file, not per tensor, so that their sum cannot grow with the number of layers."""

    def __init__(self) -> None:
        self.spent: dict[str, int] = {}

    def charge(self, kind: str, nbytes: int, limit: int) -> bool:
        """Count ``nbytes`` more of ``kind`` against ``limit``; False (nothing counted) where
        that would exceed it."""
        total = self.spent.get(kind, 0) + nbytes
        if total > limit:
            return False
        self.spent[kind] = total
        return True


class SharedFile:
    """The descriptor a checkpoint's lazy tensors read from: the file as it was when opened.

    Reading through the descriptor the reader validated (not by reopening the path) means a
    file replaced after opening cannot feed us other bytes; it is closed with its last user.
    """

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.budget = Budget()
        weakref.finalize(self, os.close, fd)

    def pread(self, length: int, offset: int, what: str) -> bytes:
        """Exactly ``length`` bytes at ``offset`` (InvalidFileError when the file ends first)."""
        return pread_exact(self.fd, length, offset, self.path, what)

