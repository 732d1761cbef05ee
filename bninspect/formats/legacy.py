"""The pre-1.6 non-zip torch.save format, read statically like the zip format. No torch import.

torch's ``_legacy_load`` reads the file as five pickles and then raw storage bytes:

1. the magic number (``MAGIC``), 2. the protocol version (1001), 3. system information (a dict
with the byte order), 4. the saved object, whose persistent ids name storages as
``('storage', storage_type, key, location, numel, view_metadata)`` (and pickled modules' classes
as ``('module', class, source_file, source)``), 5. the list of storage keys;

then, for each key in that list, an 8-byte element count and the storage's bytes. Every pickle
goes through the static unpickler (:mod:`bninspect.formats.unpickler`) with the same stand-ins
as the zip reader, so a pickled model, a training script's extras or a payload read and are
judged exactly as in a zip archive. Storage offsets follow from the counts the pickle states,
each checked against the count written before the storage's bytes when it is first read.
"""

from __future__ import annotations

import os
from typing import Any

from bninspect.checkpoint import Checkpoint
from bninspect.errors import BNInspectError, InvalidFileError
from bninspect.formats import containers, unpickler, verdict, zipdir
from bninspect.formats.paths import SharedFile, open_regular, pread_exact
from bninspect.formats.pickles import check_memo_indices
from bninspect.formats.torchzip import MAX_PICKLE_BYTES, TorchReader, _Storage, _StorageType

# torch/serialization.py: MAGIC_NUMBER = 0x1950a86a20f9469cfc6c, pickled first as a LONG1;
# PROTOCOL_VERSION = 1001.
MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
CORRUPT = "a legacy torch.save file that is corrupt or truncated"
_FIRST_READ = 64 << 10
_PICKLES = ("the magic number", "the protocol version", "the system information", "the saved object",
            "the storage keys")
_WHERE = "the legacy file's pickles"


def sniff(head: bytes) -> bool:
    """A pickle whose first value is torch's legacy magic number."""
    i = 0
    if head[:1] == b"\x80":  # PROTO n
        i = 2
    if head[i:i + 1] == b"\x95":  # FRAME (protocol 4+) with its 8-byte length
        i += 9
    return head[i:i + 12] == b"\x8a\x0a" + MAGIC


class _LegacyStorage(_Storage):
    """A storage in the legacy file's data area: its bytes follow an 8-byte element count,
    which must be the count the pickle states (checked on the first read)."""

    __slots__ = ("shared", "header")

    def __init__(self, file: SharedFile, key: str, dtype: str, numel: int, np_dtype: Any) -> None:
        self.shared = file
        self.info = zipdir.Member(f"storage {key}", 0, numel * np_dtype.itemsize, 0)
        self.name = self.info.filename
        self.dtype = dtype
        self.numel = numel
        self.np_dtype = np_dtype
        self.itemsize = np_dtype.itemsize
        self._data_offset: int | None = None
        self.header = -1  # offset of the element count; set once the data area is laid out

    @property
    def file(self) -> SharedFile:
        return self.shared

    def read(self, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` within the storage."""
        if start < 0 or start + length > self.info.file_size:
            raise InvalidFileError(f"a tensor reaches past the end of {self.name}", path=self.shared.path)
        if self._data_offset is None:
            if self.header < 0:
                raise InvalidFileError(f"{CORRUPT} ({self.name} is not among the stored keys)", path=self.shared.path)
            count = int.from_bytes(self.shared.pread(8, self.header, self.name), "little", signed=True)
            if count != self.numel:
                raise InvalidFileError(f"{CORRUPT} ({self.name} holds {count} elements where the pickle says "
                                       f"{self.numel})", path=self.shared.path)
            self._data_offset = self.header + 8
        return self.shared.pread(length, self._data_offset + start, self.name)


class _LegacyReader(TorchReader):
    """The storages one legacy file's object pickle names, by key; views of them where old
    files stored storage views."""

    def __init__(self, file: SharedFile, log: unpickler.Log) -> None:
        super().__init__(file.path, False, log)
        self.file = file
        self.roots: dict[str, _LegacyStorage] = {}
        self.views: list[tuple[_LegacyStorage, str, int]] = []  # (view, root key, element offset)

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise InvalidFileError(f"{CORRUPT} (an unexpected persistent id)", path=self.path)
        kind = pid[0].decode("ascii", "replace") if isinstance(pid[0], bytes) else pid[0]
        if kind == "module" and len(pid) == 4:
            return pid[1]  # a pickled module's class (read as data), with its source text
        if kind != "storage" or len(pid) != 6:
            raise InvalidFileError(f"{CORRUPT} (an unexpected persistent id)", path=self.path)
        _, stype, key, _location, numel, view = pid
        if not isinstance(stype, _StorageType) or not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise InvalidFileError(f"{CORRUPT} (a malformed storage reference)", path=self.path)
        root = self.roots.get(key)
        if root is None:
            root = self.roots[key] = _LegacyStorage(self.file, key, stype.dtype, numel, self.np_dtype(stype.dtype))
        if view is None:
            return root
        if not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[0], str)
                and all(type(v) is int and v >= 0 for v in view[1:]) and view[1] + view[2] <= root.numel):
            raise InvalidFileError(f"{CORRUPT} (a storage view outside its storage)", path=self.path)
        part = _LegacyStorage(self.file, view[0], root.dtype, view[2], root.np_dtype)
        self.views.append((part, key, view[1]))
        return part

    def lay_out(self, keys: Any, start: int, size: int) -> None:
        """Place each storage in the data area that starts at ``start``: keys in the order the
        file lists them, each an 8-byte count and its bytes."""
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise InvalidFileError(f"{CORRUPT} (the storage key list is not a list of names)", path=self.path)
        offset = start
        for key in keys:
            root = self.roots.get(key)
            if root is None:
                raise InvalidFileError(f"{CORRUPT} (storage {key!r} is stored but never used)", path=self.path)
            root.header = offset
            offset += 8 + root.info.file_size
        if offset > size:
            raise InvalidFileError(f"{CORRUPT} (its storages need {offset} bytes, the file has {size})", path=self.path)
        for part, key, element in self.views:
            root = self.roots[key]
            if root.header >= 0:
                part._data_offset = root.header + 8 + element * root.itemsize


def _next_pickle(fd: int, start: int, size: int, path: str, what: str) -> bytes:
    """The bytes of the pickle that starts at ``start``: read in growing pieces until its STOP
    (the memo check finds it), never more than MAX_PICKLE_BYTES."""
    want = _FIRST_READ
    while True:
        data = pread_exact(fd, min(want, size - start), start, path, what) if start < size else b""
        if not data:
            raise InvalidFileError(f"{CORRUPT} ({what} is missing)", path=path)
        try:
            return data[:check_memo_indices(data)]
        except ValueError as exc:
            if start + len(data) >= size or len(data) >= MAX_PICKLE_BYTES:
                if len(data) >= MAX_PICKLE_BYTES:
                    raise InvalidFileError(f"{what} is larger than {MAX_PICKLE_BYTES >> 20} MiB; bninspect reads no "
                                           "more", path=path) from None
                raise InvalidFileError(f"{CORRUPT} ({what}: {exc})", path=path) from None
        want = min(want * 4, MAX_PICKLE_BYTES)


def read(path: str, *, key: str | None, strict: bool) -> Checkpoint:
    """Read a legacy torch.save file without running anything from it (no torch import)."""
    obj, judged = _load(path, "a checkpoint file")
    with verdict.attached(judged):
        checkpoint = containers.build_checkpoint(obj, path=path, format="torch-legacy", key=key)
    checkpoint.verdict = judged
    return checkpoint


def read_object(path: str, what: str) -> Any:
    """The object a legacy file holds (``what`` it is, for messages), tensors as lazy TensorRefs,
    refused like a checkpoint where a real load would run code (UnsafeFileError)."""
    try:
        obj, judged = _load(path, what)
    except BNInspectError as exc:
        if exc.verdict is not None and exc.verdict.refused:  # type: ignore[attr-defined]
            raise verdict.unsafe(exc.verdict, path) from None  # type: ignore[arg-type]
        raise
    if judged.refused:
        raise verdict.unsafe(judged, path)
    return obj


def _load(path: str, what: str) -> tuple[Any, verdict.Verdict]:
    """The saved object (the fourth pickle) with its storages laid out, and the verdict on all five."""
    fd = open_regular(path, what)
    try:
        size = os.fstat(fd).st_size
        log = unpickler.Log(path)
        reader = _LegacyReader(SharedFile(path, os.dup(fd)), log)
        values: list[Any] = []
        position = 0
        try:
            for index, name in enumerate(_PICKLES):
                data = _next_pickle(fd, position, size, path, name)
                position += len(data)
                values.append(verdict.load_judged(data, path=path, what=name, find=reader.find, log=log,
                                                  persistent_load=reader.persistent_load if index == 3 else None))
                if index == 2:
                    _check_header(values, reader, path)
        except BNInspectError as exc:
            # A payload in an early pickle, then a file that is otherwise broken: still named.
            partial = verdict.judge(log, values[3] if len(values) > 3 else None, where=_WHERE)
            if exc.verdict is None and partial.refused:
                exc.verdict = partial
            raise
        judged = verdict.judge(log, values[3], where=_WHERE)
        with verdict.attached(judged):
            reader.lay_out(values[4], position, size)
    finally:
        os.close(fd)
    return values[3], judged


def _check_header(values: list[Any], reader: _LegacyReader, path: str) -> None:
    """The magic number, the protocol version and the byte order, as torch's loader checks them."""
    if values[0] != MAGIC_NUMBER or values[1] != PROTOCOL_VERSION or not isinstance(values[2], dict):
        raise InvalidFileError(f"{CORRUPT} (bad magic number, protocol version or system information)", path=path)
    if values[2].get("little_endian") is False:
        reader.byteorder = "big"
