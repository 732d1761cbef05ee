"""The static reader for torch.save zip archives and TorchScript archives. No torch import.

Both formats are a zip archive ``<name>/data.pkl`` + ``<name>/data/<key>`` records (torch
writes the records uncompressed); ``zipdir`` lists the members of archives as plain as torch
writes them, zipfile those of all others. ``data.pkl`` goes through the static unpickler
(:mod:`bninspect.formats.unpickler`): this module hands it inert stand-ins for the short
allow-list of tensor rebuilds, storages and containers (see ``pickles``), every other global
is read as an opaque record, and :mod:`bninspect.formats.verdict` judges what a real load
would do. Tensors become lazy :class:`TensorRef`s that ``pread`` just their bytes from the
record; each record's size is checked against the storage size the pickle claims before
anything is read. A pickled ``nn.Module`` is read from its module tree
(:mod:`bninspect.formats.pymodules`).

TorchScript archives (``<name>/code/``) pickle their modules as ``__torch__.*`` objects: we
keep them as inert objects (class name + attribute dict) and rebuild state-dict-style keys
and per-module facts. BatchNorm's eps/momentum/affine are ``__constants__``, which TorchScript
does not pickle but writes into the class source (``eps : Final[float] = 0.001``): we read
those lines as text and parse the literal with ``ast.literal_eval``; the code is never run.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import math
import operator
import os
import re
import struct
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from bninspect.checkpoint import (
    MAX_NDIM,
    MAX_SIZE,
    STORED_DTYPES,
    Checkpoint,
    ModuleInfo,
    ModuleNode,
    TensorRef,
    are_sizes,
    decode,
    is_simple_fact,
)
from bninspect.errors import BNInspectError, InvalidFileError
from bninspect.formats import containers, unpickler, verdict, zipdir
from bninspect.formats.paths import SharedFile, open_regular
from bninspect.formats.pickles import DTYPE_GLOBALS, STORAGE_DTYPES, TORCHSCRIPT_CLASS_PREFIX, allowed

# Expanded views (stride 0, overlapping strides) are materialised only up to this many bytes per
# file, counted as what a run keeps of each (its values as stored, and the float64 copy the layer
# code makes): a 16-byte record may legally claim a (10**9, 10**9) view, and a budget per tensor
# would still let memory grow with the number of layers that each claim one.
MAX_EXPANDED_BYTES = 256 * 1024 * 1024

# data.pkl holds structure, not tensor bytes: real ones are kilobytes to a few megabytes
# (a 10,000-layer state dict: 5 MB). More than this is not a checkpoint we should unpickle.
# 256 MiB, then: with the unpickler's own 512 MiB budget on top, a read stays within ~1 GiB.
MAX_PICKLE_BYTES = 256 << 20
# torch writes data.pkl stored, so its size is bytes the file really holds. A compressed one
# (re-zipped, or made to hurt) can inflate a 1 MB file into 1 GiB of opcodes, and the unpickler
# turns each byte of, say, EMPTY_LIST into ~64 bytes of objects: 64 GiB. Far fewer, then.
MAX_COMPRESSED_PICKLE_BYTES = 32 << 20

# What zipfile raises on a damaged archive: bad CRC or magic (BadZipFile), truncation
# (EOFError, OSError), bad deflate data (zlib.error), flag bits for encryption (RuntimeError)
# or an unknown compression method (NotImplementedError), nonsense sizes (ValueError, struct.error).
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, zlib.error, RuntimeError,
              NotImplementedError, ValueError, struct.error)


def sniff(head: bytes) -> bool:
    """A zip archive (torch.save since 1.6 and torch.jit.save both write one)."""
    return head[:4] == b"PK\x03\x04"


class _Storage:
    """One storage: a zip record, its element dtype and the element count the pickle claims.

    The record's data offset is found (and its local header checked) on its first read.
    """

    __slots__ = ("members", "info", "name", "dtype", "numel", "np_dtype", "itemsize", "_data_offset")

    def __init__(self, members: zipdir.MemberReader, info: zipfile.ZipInfo | zipdir.Member, dtype: str, numel: int,
                 np_dtype: np.dtype) -> None:
        self.members = members
        self.info = info
        self.name = info.filename
        self.dtype = dtype
        self.numel = numel
        self.np_dtype = np_dtype
        self.itemsize = np_dtype.itemsize
        self._data_offset: int | None = None

    @property
    def file(self) -> SharedFile:
        return self.members.file

    def read(self, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` within the record (pread where stored, inflated where deflated)."""
        if self._data_offset is None:
            self._data_offset = self.members.data_offset(self.info)
        return self.members.read(self.info, start, length, data_offset=self._data_offset)


def _np_dtype(dtype: str, byteorder: str) -> np.dtype:
    code = STORED_DTYPES[dtype][0]
    return np.dtype(code.replace("<", ">") if byteorder == "big" else code)


class _Inert:
    """A stand-in for an allowed global: calls our function; cannot be modified by the pickle.

    Each one is the only instance of its own subclass, whose ``__call__`` is the function
    itself: a call runs no Python frame of ours (a 10,000-layer file makes 120,000 calls).
    No ``__dict__`` and a refusing ``__setattr__`` leave a pickle's BUILD nothing to change.
    """

    __slots__ = ()
    _name = ""

    def __setattr__(self, key: str, value: Any) -> None:
        raise TypeError("stand-ins are read-only")

    def __repr__(self) -> str:
        return f"<stand-in for {self._name}>"


def _stand_in(name: str, fn: Callable[..., Any]) -> _Inert:
    return type("_Inert", (_Inert,), {"__slots__": (), "__call__": staticmethod(fn), "_name": name})()


class _StorageType:
    __slots__ = ("dtype",)

    def __init__(self, dtype: str) -> None:
        object.__setattr__(self, "dtype", dtype)

    def __setattr__(self, key: str, value: Any) -> None:
        raise TypeError("stand-ins are read-only")


class ScriptObject:
    """An inert TorchScript object: its qualified class name and the attribute state it pickled."""

    qualname = ""

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _ints(value: Any, what: str, path: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not are_sizes(value):
        raise InvalidFileError(f"corrupt data.pkl: a tensor's {what} is not a tuple of non-negative int64 integers",
                               path=path)
    return tuple(value)


def _view(size: Any, stride: Any, path: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A tensor's size and stride: tuples of int64-range non-negative integers of one length (at
    most MAX_NDIM), or InvalidFileError."""
    if (type(size) is tuple and type(stride) is tuple and len(size) == len(stride) <= MAX_NDIM
            and are_sizes(size + stride)):
        return size, stride
    # Lists, or something wrong: looked at one by one, to say what.
    shape, strides = _ints(size, "size", path), _ints(stride, "stride", path)
    if len(shape) != len(strides):
        raise InvalidFileError("corrupt data.pkl: a tensor's size and stride differ in length", path=path)
    if len(shape) > MAX_NDIM:
        raise InvalidFileError(f"corrupt data.pkl: a tensor with {len(shape)} dimensions (at most {MAX_NDIM})", path=path)
    return shape, strides


@dataclass
class _Archive:
    """An open archive: its members by name (listed by ``zipdir`` where it is as plain as torch
    writes it, else by zipfile), read through one bounded ``zipdir.MemberReader``."""

    infos: dict[str, zipfile.ZipInfo | zipdir.Member]
    members: zipdir.MemberReader
    strict: bool = False  # --strict: check every member's CRC

    def read(self, info: zipfile.ZipInfo | zipdir.Member) -> bytes:
        """A whole member, its CRC-32 checked (as ``ZipFile.read`` does)."""
        return self.members.read(info, crc=True)


class TorchReader:
    """What a torch pickle's allowed globals unpickle to, for one load: storage types, dtype
    names, TorchScript classes, and the stand-ins of :func:`_stand_ins`. Every other global
    is left to the static unpickler (``find`` returns None)."""

    def __init__(self, path: str, torchscript: bool, log: unpickler.Log) -> None:
        self.path = path
        self.torchscript = torchscript
        self.log = log
        self.np_dtypes: dict[str, np.dtype] = {}
        self.classes: dict[str, type] = {}
        self.byteorder = "little"
        self.stand_ins = _stand_ins(path, log)
        self.found: dict[str, _Inert] = {}

    def find(self, name: str) -> Any:
        """What the allowed global ``name`` unpickles to: a dtype name, a storage type, a class,
        a stand-in; None for a global outside the allow-list."""
        if not allowed(name, torchscript=self.torchscript):
            return None
        if name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        if name in DTYPE_GLOBALS:
            return DTYPE_GLOBALS[name]
        if name.startswith(TORCHSCRIPT_CLASS_PREFIX):
            cls = self.classes.get(name)
            if cls is None:
                cls = type("ScriptObject", (ScriptObject,), {"qualname": name})
                self.classes[name] = cls
            return cls
        # One per name: a class is made for each, and a pickle may name a global again and again.
        stand_in = self.found.get(name)
        if stand_in is None:
            stand_in = self.found[name] = _stand_in(name, self.stand_ins[name])
        return stand_in

    def np_dtype(self, dtype: str) -> np.dtype:
        found = self.np_dtypes.get(dtype)
        if found is None:
            found = self.np_dtypes[dtype] = _np_dtype(dtype, self.byteorder)
        return found


class _Reader(TorchReader):
    """One archive read: its records and storages, on top of the allowed globals' stand-ins."""

    def __init__(self, file: SharedFile, archive: _Archive, prefix: str, torchscript: bool, log: unpickler.Log) -> None:
        super().__init__(file.path, torchscript, log)
        path = file.path
        self.file = file
        self.prefix = prefix
        self.infos = archive.infos
        self.members = archive.members
        self.storages: dict[tuple[str, str], _Storage] = {}
        order = self.infos.get(f"{prefix}byteorder")
        if order is not None and order.file_size <= 16:
            text = archive.read(order).decode("ascii", "replace").strip()
            if text not in ("little", "big"):
                raise InvalidFileError(f"unknown byte order {text!r} in the archive", path=path)
            self.byteorder = text

    def storage(self, pid: Any) -> _Storage:
        """The storage named by a persistent id ('storage', type, key, location, numel)."""
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise InvalidFileError("corrupt data.pkl: unexpected persistent id", path=self.path)
        _, stype, key, _location, numel = pid[:5]
        if not isinstance(stype, _StorageType) or not isinstance(key, str) or not are_sizes((numel,)):
            raise InvalidFileError("corrupt data.pkl: malformed storage reference", path=self.path)
        storage = self.storages.get((key, stype.dtype))
        if storage is None:
            storage = self.storages[(key, stype.dtype)] = self._new_storage(key, stype.dtype, numel)
        return storage

    def _new_storage(self, key: str, dtype: str, numel: int) -> _Storage:
        """A storage over record ``data/<key>``, whose size must be what the pickle says."""
        info = self.infos.get(f"{self.prefix}data/{key}")
        if info is None:
            raise InvalidFileError(f"record data/{key} that data.pkl refers to is missing from the archive", path=self.path)
        np_dtype = self.np_dtype(dtype)
        claimed = numel * np_dtype.itemsize
        if info.file_size != claimed:
            raise InvalidFileError(
                f"record data/{key} holds {info.file_size} bytes but data.pkl says {numel} {dtype} elements "
                f"({claimed} bytes): truncated or corrupt",
                path=self.path,
            )
        return _Storage(self.members, info, dtype, numel, np_dtype)


def _stand_ins(path: str, log: unpickler.Log) -> dict[str, Callable[..., Any]]:
    """What each allowed global a pickle calls does instead (``path`` is for error messages).

    Those that build from their arguments charge what they build to ``log``: a memo'd
    argument can be passed again and again at a few bytes of pickle each time.
    """
    def sized(build: Callable[[Any], Any], per_item: int) -> Callable[..., Any]:
        def stand_in(items: Any = ()) -> Any:
            log.charge(per_item * len(items) if hasattr(items, "__len__") else per_item)
            return build(items)
        return stand_in

    return {
        "torch._utils._rebuild_tensor_v2": functools.partial(_rebuild_tensor, path),
        "torch._utils._rebuild_tensor": functools.partial(_rebuild_tensor, path),  # pre-1.0 legacy files
        "torch._utils._rebuild_parameter": lambda data, *rest: data,
        "torch._utils._rebuild_parameter_with_state": lambda data, *rest: data,
        "torch._tensor._rebuild_from_type_v2": functools.partial(_rebuild_from_type, path),
        "torch.nn.parameter.Parameter": lambda data=None, *rest: data,
        "torch.Tensor": functools.partial(_not_a_constructor, path),
        "torch.Size": sized(tuple, 8),
        "torch.device": lambda *args: "device(" + ", ".join(map(str, args)) + ")",
        "collections.OrderedDict": OrderedDict,
        "_codecs.encode": functools.partial(_encode, path, log),
        "builtins.set": sized(set, 64),
        "builtins.frozenset": sized(frozenset, 64),
        "builtins.complex": complex,
        "torch.jit._pickle.build_intlist": sized(list, 8),
        "torch.jit._pickle.build_doublelist": sized(list, 8),
        "torch.jit._pickle.build_boollist": sized(list, 8),
        "torch.jit._pickle.build_tensorlist": sized(list, 8),
        "torch.jit._pickle.restore_type_tag": lambda value, *rest: value,
    }


def _encode(path: str, log: unpickler.Log, text: Any, encoding: str = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise InvalidFileError("corrupt data.pkl: unexpected _codecs.encode arguments", path=path)
    log.charge(len(text))
    return text.encode(encoding)


def _not_a_constructor(path: str, *args: Any) -> Any:
    raise InvalidFileError("corrupt data.pkl: torch.Tensor called directly", path=path)


def _rebuild_from_type(path: str, func: Any, new_type: Any, args: Any, state: Any = None) -> Any:
    # Tensor subclasses (e.g. Parameter) pickle as rebuild_from_type_v2(rebuild_fn, cls, args, state):
    # the values are the plain tensor; the subclass does not matter to us.
    if not isinstance(func, _Inert) or not isinstance(args, tuple):
        raise InvalidFileError("corrupt data.pkl: unexpected tensor subclass rebuild", path=path)
    return func(*args)


def _rebuild_tensor(path: str, storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> TensorRef:
    """For _rebuild_tensor_v2: a TensorRef over ``storage`` viewed as torch's as_strided(size, stride,
    offset); checked now, read later."""
    if not isinstance(storage, _Storage) or not are_sizes((offset,)):
        raise InvalidFileError("corrupt data.pkl: malformed tensor", path=path)
    shape, strides = _view(size, stride, path)
    numel = math.prod(shape)
    if numel > MAX_SIZE:
        raise InvalidFileError(f"corrupt data.pkl: a tensor of shape {list(shape)} has more elements than an int64 "
                               "can count", path=path)
    span = 0
    if numel:
        # The last element read: offset + sum((n - 1) * stride), summed in C.
        last = offset + sum(map(operator.mul, shape, strides)) - sum(strides)
        if last >= storage.numel:
            raise InvalidFileError(
                f"a tensor of shape {list(shape)} (offset {offset}, stride {list(strides)}) reaches element {last} "
                f"of record {storage.name}, which holds {storage.numel}",
                path=path,
            )
        span = last - offset + 1
    return TensorRef(shape, storage.dtype, _load, storage, offset, shape, strides, numel, span, path)


def _load(storage: _Storage, offset: int, shape: tuple[int, ...], strides: tuple[int, ...], numel: int, span: int,
          path: str) -> np.ndarray:
    """The values of a tensor ``_rebuild_tensor`` checked: its span of the record, read and laid out."""
    if numel == 0:
        return decode(np.empty(shape, dtype=storage.np_dtype), storage.dtype)
    if numel > span and not storage.file.budget.charge("expanded", numel * (storage.itemsize + 8), MAX_EXPANDED_BYTES):
        raise InvalidFileError(
            f"a tensor of shape {list(shape)} expands {span} stored elements to {numel}; with the file's other "
            f"expanded tensors that is more than {MAX_EXPANDED_BYTES >> 20} MiB, which bninspect does not materialise",
            path=path,
        )
    raw = storage.read(offset * storage.itemsize, span * storage.itemsize)
    flat = np.frombuffer(raw, dtype=storage.np_dtype)
    view = np.lib.stride_tricks.as_strided(flat, shape=shape, strides=[s * storage.itemsize for s in strides])
    values = np.array(view, dtype=storage.np_dtype.newbyteorder("=") if storage.np_dtype.byteorder == ">" else storage.np_dtype)
    return decode(values, storage.dtype)


def _data_prefix(names: dict[str, Any]) -> str | None:
    """The folder holding ``data.pkl`` (``"name/"``, or "" at the top), None where there is none."""
    for name in names:
        head, sep, tail = name.partition("/")
        if tail == "data.pkl" and sep:
            return head + "/"
    return "" if "data.pkl" in names else None


def _archive_prefix(names: dict[str, Any], path: str) -> str:
    prefix = _data_prefix(names)
    if prefix is None:
        raise InvalidFileError("a zip archive without data.pkl: not a torch.save or TorchScript archive", path=path)
    return prefix


def _scripted(names: dict[str, Any], prefix: str) -> bool:
    """The one test for TorchScript: torch.jit.save writes ``constants.pkl`` and ``code/`` beside ``data.pkl``."""
    code = f"{prefix}code/"  # once, not per member: a 10,000-layer archive has 60,006
    return f"{prefix}constants.pkl" in names or any(n.startswith(code) for n in names)


def is_torch_archive(path: str, head: bytes) -> bool:
    """Whether the zip archive at ``path`` (``head``: its first bytes) holds a ``data.pkl``, as
    torch.save and torch.jit.save archives do; other zips are not checkpoints. InvalidFileError
    where its directory cannot be read."""
    # torch.save writes data.pkl first: its name in the first local header settles it without
    # reading the directory (a folder walk asks this of every zip it meets).
    first = head[30:30 + int.from_bytes(head[26:28], "little")]
    if first == b"data.pkl" or first.endswith(b"/data.pkl"):
        return True
    return _data_prefix(_open_archive(path, False).infos) is not None


def is_torchscript(path: str) -> bool:
    """Whether the zip archive at ``path`` is a TorchScript archive (torch.jit.save), by its members;
    InvalidFileError where its directory cannot be read."""
    names = _open_archive(path, False).infos
    prefix = _data_prefix(names)
    return prefix is not None and _scripted(names, prefix)


def _open_archive(path: str, strict: bool, what: str = "a checkpoint file") -> _Archive:
    """The archive at ``path``, listed by zipdir where it is plain (by zipfile under --strict, or
    where zipdir declines), every member then read through one bounded MemberReader."""
    fd = open_regular(path, what)
    file = SharedFile(path, fd)  # the lazy tensors read through it; it closes with the last of them
    size = os.fstat(fd).st_size
    infos: dict[str, Any] | None = None
    if not strict:  # --strict lists the archive as zipfile does
        with contextlib.suppress(OSError):
            infos = zipdir.directory(fd, size)
    if infos is None:
        try:
            with os.fdopen(os.dup(fd), "rb") as fh, zipfile.ZipFile(fh) as zf:
                infos = {i.filename: i for i in zf.infolist()}
        except ZIP_ERRORS:
            raise InvalidFileError("a truncated or corrupt zip archive (its central directory is unreadable)",
                                   path=path) from None
    return _Archive(infos, zipdir.MemberReader(file, size), strict)


def read(path: str, *, key: str | None, strict: bool) -> Checkpoint:
    """Read a torch.save or TorchScript zip archive without running anything from it."""
    archive = _open_archive(path, strict)
    return _read_archive(archive.members.file, archive, key=key)


def read_object(path: str, what: str) -> Any:
    """The object a torch.save zip archive holds (``what`` it is, for messages), its tensors as
    lazy TensorRefs: the reader checkpoints use, so nothing runs and every limit applies; a
    file whose real load would run code (its verdict) is an UnsafeFileError."""
    archive = _open_archive(path, False, what)
    try:
        return _read_archive(archive.members.file, archive, key=None, objects=True)
    except BNInspectError as exc:  # malformed, and naming a payload on the way: unsafe first
        if exc.verdict is not None and exc.verdict.refused:  # type: ignore[attr-defined]
            raise verdict.unsafe(exc.verdict, path) from None  # type: ignore[arg-type]
        raise


def read_rows(ref: TensorRef, start: int, stop: int) -> np.ndarray:
    """Entries ``start:stop`` of the first axis of a tensor ``read_object`` made: only their bytes
    are read where the tensor lies contiguously in a stored record, else the whole tensor is
    (once: a deflated record is inflated from its start on every read)."""
    if ref._loader is _load and ref.shape:  # our own TensorRef: its arguments are _load's
        storage, offset, shape, strides, numel, _span, path = ref._args
        row = math.prod(shape[1:])
        contiguous = [math.prod(shape[i + 1:]) for i in range(len(shape))]
        if (numel and storage.info.compress_type == zipfile.ZIP_STORED
                and all(st == c for st, c, n in zip(strides, contiguous, shape) if n > 1)):
            count = (stop - start) * row
            raw = storage.read((offset + start * row) * storage.itemsize, count * storage.itemsize)
            values = np.frombuffer(raw, dtype=storage.np_dtype).reshape((stop - start,) + shape[1:])
            return decode(values.astype(values.dtype.newbyteorder("=")), storage.dtype)
    return ref.numpy()[start:stop]


def _read_archive(file: SharedFile, archive: _Archive, *, key: str | None, objects: bool = False) -> Any:
    path = file.path
    members = archive.infos
    prefix = _archive_prefix(members, path)
    torchscript = _scripted(members, prefix)
    if archive.strict:
        for member in members.values():
            archive.members.check(member)
    info = members[f"{prefix}data.pkl"]
    limit = MAX_PICKLE_BYTES if info.compress_type == zipfile.ZIP_STORED else MAX_COMPRESSED_PICKLE_BYTES
    if info.file_size > limit:
        # The size comes from the zip directory; a compressed entry could claim anything.
        kind = "" if info.compress_type == zipfile.ZIP_STORED else "compressed "
        raise InvalidFileError(f"{kind}data.pkl claims {info.file_size} bytes; bninspect reads at most {limit}", path=path)
    data = archive.read(info)
    log = unpickler.Log(path)
    reader = _Reader(file, archive, prefix, torchscript, log)
    root = verdict.load_judged(data, path=path, what="data.pkl", find=reader.find, log=log,
                               persistent_load=reader.storage)
    judged = verdict.judge(log, root, where="data.pkl")
    if objects:
        # A data file (--data, --input): its object as it is, refused like a checkpoint where
        # a real load would run code.
        if judged.refused:
            raise verdict.unsafe(judged, path)
        return root
    if torchscript:
        judged.merge(verdict.script_code(_code_files(archive, prefix), where=f"{prefix}code/"))
    with verdict.attached(judged):
        if torchscript:
            checkpoint = _torchscript_checkpoint(path, archive, prefix, root, key)
        else:
            checkpoint = containers.build_checkpoint(root, path=path, format="torch-zip", key=key)
    checkpoint.verdict = judged
    return checkpoint


# -- TorchScript -------------------------------------------------------------------------------

# The lines of a TorchScript class's source that carry facts, found in one pass over the text:
# ``class Name(``, ``  eps : Final[float] = 0.001``, ``  __parameters__ = ["weight", "bias", ]``.
_FACT_LINE = re.compile(r"^(?:class (\w+)\(.*|  (\w+) : Final\[.*\] = (.+)|  (__parameters__|__buffers__) = (\[.*\]))$",
                        re.MULTILINE)
# A constant worth reading is a scalar (eps, momentum, affine, num_features...): a few characters.
# A parameter list names a module's own parameters or buffers, a few dozen characters a name.
# Bounding the text bounds ast.literal_eval's work per line.
_MAX_CONSTANT = 64
_MAX_NAME_LIST = 2000


def _literal(text: str, limit: int) -> Any:
    text = text.strip()
    if len(text) > limit:
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def parse_class_code(source: str) -> dict[str, dict[str, Any]]:
    """Per class in one TorchScript code file: its ``Final`` constants and parameter/buffer names.

    Pure text parsing (one regular expression finds the lines that matter, ``ast.literal_eval``
    reads a short value): nothing runs.
    """
    classes: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for m in _FACT_LINE.finditer(source):
        cls, const, value, slot, names = m.groups()
        if cls is not None:
            current = classes.setdefault(cls, {"constants": {}, "__parameters__": None, "__buffers__": None})
        elif current is None:
            continue
        elif const is not None:
            parsed = _literal(value, _MAX_CONSTANT)
            if parsed is not None or value.strip() == "None":
                current["constants"][const] = parsed
        else:
            parsed = _literal(names, _MAX_NAME_LIST)
            if isinstance(parsed, list) and all(isinstance(v, str) for v in parsed):
                current[slot] = parsed
    return classes


class _CodeIndex:
    """Class facts from the archive's ``code/`` files, parsed on demand, once per file.

    At most MAX_CODE_BYTES of code are read from one archive, all files together: a real model's
    code is kilobytes to a few megabytes, and a hostile archive can hold many large (deflated) files.
    """

    MAX_CODE_BYTES = 16 * 1024 * 1024

    def __init__(self, archive: _Archive, prefix: str) -> None:
        self.archive = archive
        self.prefix = prefix
        self.files: dict[str, dict[str, dict[str, Any]]] = {}
        self.unreadable: list[str] = []
        self.read_bytes = 0
        self.over_budget = False

    def lookup(self, qualname: str) -> dict[str, Any] | None:
        module, _, cls = qualname.rpartition(".")
        name = f"{self.prefix}code/{module.replace('.', '/')}.py"
        if name not in self.files:
            parsed: dict[str, dict[str, Any]] = {}
            info = self.archive.infos.get(name)
            if info is not None and self.read_bytes + info.file_size > self.MAX_CODE_BYTES:
                self.over_budget = True
            elif info is not None:
                self.read_bytes += info.file_size
                parsed = parse_class_code(self.archive.read(info).decode("utf-8", "replace"))
            self.files[name] = parsed
        facts = self.files[name].get(cls)
        if facts is None and qualname not in self.unreadable:
            self.unreadable.append(qualname)
        return facts


# The code the verdict reads as text: TorchScript code of real models is kilobytes to a few
# megabytes; past this much, what is left is named in the verdict as not examined.
MAX_SCRIPT_CODE = 64 << 20


def _code_files(archive: _Archive, prefix: str) -> Iterator[tuple[str, bytes | None]]:
    """The archive's TorchScript code files (path under ``code/``, bytes) for the verdict;
    None for a file it cannot examine (unreadable, or past the size limits)."""
    code = f"{prefix}code/"
    total = 0
    for name, info in archive.infos.items():
        if not (name.startswith(code) and name.endswith(".py")):
            continue
        total += info.file_size
        data = None
        if info.file_size <= _CodeIndex.MAX_CODE_BYTES and total <= MAX_SCRIPT_CODE:
            with contextlib.suppress(BNInspectError, *ZIP_ERRORS):
                data = archive.read(info)
        yield name[len(code):], data if data is not None and len(data) == info.file_size else None


# Characters of module paths and tensor keys built from one TorchScript archive, all together.
# A 10,000-layer model needs about 3 million; a chain of 50,000 nested modules would need 2.5
# billion (each path repeats its parent's), so the budget stops it instead of the memory.
MAX_PATH_CHARACTERS = 32 << 20


def _torchscript_checkpoint(path: str, archive: _Archive, prefix: str, root: Any, key: str | None) -> Checkpoint:
    if not isinstance(root, ScriptObject):
        raise InvalidFileError("TorchScript archive whose data.pkl does not hold a module", path=path)
    code = _CodeIndex(archive, prefix)
    tensors: dict[str, TensorRef] = {}
    modules: dict[str, ModuleInfo] = {}
    seen: set[int] = set()
    spent = 0  # characters of module paths and keys built so far
    stack: list[tuple[str, ScriptObject]] = [("", root)]
    # Pre-order walk with an explicit stack: own parameters and buffers, then children, the
    # order of nn.Module.state_dict(); no recursion, so a deep or cyclic pickle cannot blow up.
    while stack:
        mpath, obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        state = getattr(obj, "state", None)
        if not isinstance(state, dict):
            state = {}
        facts = code.lookup(obj.qualname) or {"constants": {}, "__parameters__": None, "__buffers__": None}
        declared = facts["__parameters__"], facts["__buffers__"]
        slots = set((declared[0] or []) + (declared[1] or []))
        attributes: dict[str, Any] = {}
        for name, value in state.items():
            # Parameter/buffer slots that hold None (affine=False, no running stats) are not facts.
            if isinstance(name, str) and not name.startswith("_") and name not in slots and is_simple_fact(value, (tuple, list)):
                attributes[name] = tuple(value) if isinstance(value, list) else value
        attributes.update(facts["constants"])
        modules[mpath] = ModuleInfo(path=mpath, type_name=obj.qualname.rsplit(".", 1)[-1], attributes=attributes)
        if declared[0] is not None and declared[1] is not None:
            names = [n for n in declared[0] + declared[1] if isinstance(state.get(n), TensorRef)]
        else:
            names = [n for n, v in state.items() if isinstance(n, str) and isinstance(v, TensorRef)]
        kids = [(n, v) for n, v in state.items() if isinstance(n, str) and isinstance(v, ScriptObject)]
        # Counted before the strings are made: each key and child path repeats this module's path.
        spent += sum(len(mpath) + 1 + len(n) for n in names) + sum(len(mpath) + 1 + len(n) for n, _ in kids)
        if spent > MAX_PATH_CHARACTERS:
            raise InvalidFileError(f"its modules are nested so deeply that their paths take more than "
                                   f"{MAX_PATH_CHARACTERS:,} characters; not a model bninspect reads", path=path)
        for name in names:
            tensors[f"{mpath}.{name}" if mpath else name] = state[name]
        stack.extend((f"{mpath}.{n}" if mpath else n, v) for n, v in reversed(kids))
    notes = []
    if code.unreadable:
        more = f" and {len(code.unreadable) - 3} more" if len(code.unreadable) > 3 else ""
        why = (f" (its code is larger than the {code.MAX_CODE_BYTES >> 20} MiB bninspect reads)"
               if code.over_budget else "")
        notes.append("module constants (eps, momentum, ...) not found in the archive's code for "
                     + ", ".join(code.unreadable[:3]) + more + why)
    node = ModuleNode(tensors=tensors, modules=modules)
    return containers.build_checkpoint(node, path=path, format="torchscript", key=key, notes=notes)
