"""The loading layer: turn a file into a :class:`~bninspect.checkpoint.Checkpoint`, safely.

The format is sniffed from the file's first bytes, never from its extension. Each reader is
a module in this package with two functions (the plug-in contract):

- ``sniff(head: bytes) -> bool``: does this look like my format? (``head`` = first 4 KiB)
- ``read(path: str, *, key: str | None, strict: bool) -> Checkpoint``: read it statically,
  running nothing from it; pickle-based formats also give the file's safety verdict.

Readers are listed in ``READERS`` in the order they are asked and imported only when
asked, so opening a safetensors file imports neither torch nor the ONNX reader. What a
verdict means for the caller, and ``--trust``, are decided here, once, for every reader.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from bninspect.checkpoint import Checkpoint
from bninspect.errors import BNInspectError, InvalidFileError
from bninspect.formats.paths import check_path, read_head

# Order matters only where two sniffers could both say yes; the content checks are disjoint today.
READERS: tuple[str, ...] = ("torchzip", "safetensors", "legacy", "onnx", "openvino")

HEAD_SIZE = 4096


def open_checkpoint(path: str, *, trust: bool = False, key: str | None = None, strict: bool = False,
                    refuse_unsafe: bool = True) -> Checkpoint:
    """Open ``path`` with the reader its content calls for; never runs code from it unless ``trust``.

    ``key`` picks one state dict of a nested checkpoint ("/"-joined path); ``strict`` adds
    integrity checks (zip CRCs, safetensors duplicate keys). A file whose real load would run
    code or call unreviewed functions (its verdict's ``refused`` uses) is refused with
    UnsafeFileError, unless ``trust`` (then torch.load(weights_only=False) loads it, which runs
    that code) or not ``refuse_unsafe`` (``check``: the verdict is the finding). Raises
    PathProblemError, InvalidFileError, UnsafeFileError or UsageError with a one-line message;
    a read that failed after its pickles were judged carries the verdict (``exc.verdict``).
    """
    path = str(path)
    st = check_path(path)
    head = read_head(path, HEAD_SIZE)
    reader = reader_for(head)
    if reader is None:
        raise InvalidFileError(f"not a checkpoint bninspect can read: {describe(head, st.st_size)}", path=path)
    try:
        checkpoint = reader.read(path, key=key, strict=strict)
    except BNInspectError as exc:
        if exc.verdict is None or not exc.verdict.refused:  # type: ignore[attr-defined]
            raise
        return _unsafe(path, exc.verdict, trust=trust, key=key, strict=strict, refuse=refuse_unsafe, error=exc)
    if checkpoint.verdict is not None and checkpoint.verdict.refused:
        return _unsafe(path, checkpoint.verdict, trust=trust, key=key, strict=strict, refuse=refuse_unsafe,
                       checkpoint=checkpoint)
    if checkpoint.verdict is not None:
        note = checkpoint.verdict.note()
        if note:
            checkpoint.notes.append(note)
    return checkpoint


def _unsafe(path: str, verdict: object, *, trust: bool, key: str | None, strict: bool, refuse: bool,
            checkpoint: Checkpoint | None = None, error: BNInspectError | None = None) -> Checkpoint:
    """What to do with a file a real load would run code from: for ``check`` (not ``refuse``) the
    statically read checkpoint or its error as they are, never a load that runs code; else the
    trusted load where the user passed ``trust``, and the refusal where not."""
    from bninspect.formats import verdict as judging

    if not refuse:
        if error is not None:
            raise error
        assert checkpoint is not None
        return checkpoint
    if trust:
        from bninspect.formats import trusted

        return trusted.read(path, key=key, strict=strict)
    raise judging.unsafe(verdict, path)  # type: ignore[arg-type]


def reader_for(head: bytes) -> ModuleType | None:
    """The first reader in ``READERS`` whose ``sniff`` accepts ``head``, or None; imports only those asked."""
    for name in READERS:
        reader = importlib.import_module(f"bninspect.formats.{name}")
        if reader.sniff(head):
            return reader
    return None


_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "gzip-compressed data (decompress it first)"),
    (b"BZh", "bzip2-compressed data (decompress it first)"),
    (b"\xfd7zXZ\x00", "xz-compressed data (decompress it first)"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data (decompress it first)"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (a Keras .h5 model?), not a PyTorch checkpoint"),
    (b"PK\x05\x06", "an empty zip archive"),
    (b"\x7fELF", "an ELF executable"),
    (b"version https://git-lfs", "a Git LFS pointer file (run 'git lfs pull' to fetch the real file)"),
)


def describe(head: bytes, size: int) -> str:
    """What a file we cannot read seems to be, in a few words, for the error message."""
    if size == 0 or not head:
        return "the file is empty"
    for magic, text in _MAGIC:
        if head.startswith(magic):
            return f"it looks like {text}"
    if len(head) > 262 and head[257:262] == b"ustar":
        return ("it looks like a tar archive (the pre-0.4 tar-based torch.save format is not supported; "
                "re-save the checkpoint with a current PyTorch)")
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "it looks like a plain Python pickle, not a file written by torch.save"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # A multi-byte character cut at the 4 KiB boundary is still text.
        try:
            text = head[:-4].decode("utf-8") if len(head) > 4 else ""
        except UnicodeDecodeError:
            text = ""
    if text and all(ch.isprintable() or ch in "\r\n\t" for ch in text):
        stripped = text.lstrip()
        if stripped[:1] in ("{", "["):
            return "it looks like JSON text"
        if stripped.startswith("<"):
            return "it looks like XML/HTML text"
        return "it looks like a text file"
    shown = " ".join(f"{b:02x}" for b in head[:8])
    return f"unrecognised binary data (starts with {shown})"
