"""One exception hierarchy; each class carries the exit code the CLI returns for it.

Raise where the fact is known, with a message in our own words (never torch's text):
the CLI prints ``bninspect: error: FILE: message`` as one line and exits with ``exit_code``.
"""

from __future__ import annotations

import re

from bninspect.textfmt import visible

_WHITESPACE = re.compile(r"\s+")

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_UNSAFE = 3
EXIT_INVALID = 4
EXIT_PATH = 5


class OutputClosed(Exception):
    """The reader of our output went away (`bninspect show x | head`). Not an OSError on
    purpose: typer turns an EPIPE OSError into a silent exit 1 before the CLI sees it."""


class BNInspectError(Exception):
    """Base class: a failure the user caused or must act on, reported in one line."""

    exit_code = EXIT_INVALID
    # The file's safety verdict (formats.verdict.Verdict) where the file was read before the
    # failure: a pickle with no state dict may still hold a payload that `check` must report.
    verdict: object | None = None

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def line(self) -> str:
        """The one stderr line for this error, without the ``bninspect: error:`` lead.

        Whitespace is folded to single spaces (one line, always), every other character that
        could act on the terminal is shown as an escape (a file name may carry ANSI sequences),
        and the line is cut at ``textfmt.MAX_SHOWN`` characters, saying how many were left out
        (a message may quote a key of megabytes).
        """
        text = f"{self.path}: {self.message}" if self.path else self.message
        return visible(_WHITESPACE.sub(" ", text).strip())


class UsageError(BNInspectError):
    """Bad options or arguments: a layer that does not exist, a missing extra, no CUDA."""

    exit_code = EXIT_USAGE


class UnsafeFileError(BNInspectError):
    """Loading would run code from the file; refused unless the user passes --trust."""

    exit_code = EXIT_UNSAFE


class InvalidFileError(BNInspectError):
    """Not a checkpoint we can read: corrupt, truncated, inconsistent or of unknown format."""

    exit_code = EXIT_INVALID


class NoStateDictError(InvalidFileError):
    """A readable file of a known format that holds no state dict (a data tensor, a list, an
    empty dict): not a checkpoint. Folder scans skip such files instead of failing on them."""


class PathProblemError(BNInspectError):
    """The path is missing, a directory, not a regular file, or unreadable."""

    exit_code = EXIT_PATH
