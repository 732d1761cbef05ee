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

from bninspect.checkpoint import STORED_DTYPES, Checkpoint, ModuleInfo, ModuleNode, TensorRef, are_sizes, decode, is_simple_fact
from bninspect.errors import InvalidFileError
from bninspect.formats import containers, unpickler, verdict, zipdir
from bninspect.formats.paths import SharedFile, open_regular
from bninspect.formats.pickles import DTYPE_GLOBALS, STORAGE_DTYPES, TORCHSCRIPT_CLASS_PREFIX, allowed

# An expanded view (stride 0, overlapping strides) is materialised only up to this size: a
# 16-byte record may legally claim a (10**9, 10**9) shape, and we must not allocate it.
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

    The record's data offset is found on its first read.
    """

    __slots__ = ("file", "info", "name", "dtype", "numel", "np_dtype", "itemsize", "_data_offset")

    def __init__(self, file: SharedFile, info: zipfile.ZipInfo | zipdir.Member, dtype: str, numel: int,
                 np_dtype: np.dtype) -> None:
        self.file = file
        self.info = info
        self.name = info.filename
        self.dtype = dtype
        self.numel = numel
        self.np_dtype = np_dtype
        self.itemsize = np_dtype.itemsize
        self._data_offset: int | None = None

    def data_offset(self) -> int:
        if self._data_offset is None:
            path = self.file.path
            raw = self.file.pread(zipdir.LOCAL_HEADER_SIZE, self.info.header_offset, f"zip record {self.name}")
            fields = zipdir.local_header(raw)
            if fields is None:
                raise InvalidFileError(f"corrupt zip archive: bad local header for {self.name}", path=path)
            _flags, name_len, extra_len = fields
            self._data_offset = self.info.header_offset + zipdir.LOCAL_HEADER_SIZE + name_len + extra_len
        return self._data_offset

    def read(self, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` within the record (pread for stored records)."""
        if start < 0 or start + length > self.info.file_size:
            raise InvalidFileError(f"a tensor reaches past the end of record {self.name}", path=self.file.path)
        if self.info.compress_type == zipfile.ZIP_STORED:
            return self.file.pread(length, self.data_offset() + start, f"record {self.name}")
        # torch never compresses records, but a re-zipped archive may: read through zipfile.
        try:
            with os.fdopen(os.dup(self.file.fd), "rb") as fh, zipfile.ZipFile(fh) as zf, zf.open(self.info) as f:
                f.seek(start)
                data = f.read(length)
        except ZIP_ERRORS:
            raise InvalidFileError(f"record {self.name} cannot be read (corrupt or truncated)", path=self.file.path) from None
        if len(data) != length:
            raise InvalidFileError(f"truncated record {self.name}", path=self.file.path)
        return data


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
        raise InvalidFileError(f"corrupt data.pkl: a tensor's {what} is not a tuple of non-negative integers", path=path)
    return tuple(value)


def _view(size: Any, stride: Any, path: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A tensor's size and stride: tuples of non-negative integers of one length, or InvalidFileError."""
    if type(size) is tuple and type(stride) is tuple and len(size) == len(stride) and are_sizes(size + stride):
        return size, stride
    # Lists, or something wrong: looked at one by one, to say what.
    shape, strides = _ints(size, "size", path), _ints(stride, "stride", path)
    if len(shape) != len(strides):
        raise InvalidFileError("corrupt data.pkl: a tensor's size and stride differ in length", path=path)
    return shape, strides


@dataclass
class _Archive:
    """An open archive: its members by name, and how to read one whole.

    Plain archives (all torch writes) are listed by ``zipdir``, others by zipfile; either way
    ``read`` raises zipfile's exceptions (ZIP_ERRORS) on a damaged member.
    """

    infos: dict[str, zipfile.ZipInfo | zipdir.Member]
    read: Callable[[Any], bytes]
    strict: zipfile.ZipFile | None = None  # with --strict: zipfile's view, to check every member's CRC


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
        self.storages: dict[tuple[str, str], _Storage] = {}
        order = self.infos.get(f"{prefix}byteorder")
        if order is not None and order.file_size <= 16:
            try:
                text = archive.read(order).decode("ascii", "replace").strip()
            except ZIP_ERRORS:
                raise InvalidFileError("the archive's byteorder record cannot be read", path=path) from None
            if text not in ("little", "big"):
                raise InvalidFileError(f"unknown byte order {text!r} in the archive", path=path)
            self.byteorder = text

    def storage(self, pid: Any) -> _Storage:
        """The storage named by a persistent id ('storage', type, key, location, numel)."""
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise InvalidFileError("corrupt data.pkl: unexpected persistent id", path=self.path)
        _, stype, key, _location, numel = pid[:5]
        if not isinstance(stype, _StorageType) or not isinstance(key, str) or type(numel) is not int or numel < 0:
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
        return _Storage(self.file, info, dtype, numel, np_dtype)


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
    if not isinstance(storage, _Storage) or type(offset) is not int or offset < 0:
        raise InvalidFileError("corrupt data.pkl: malformed tensor", path=path)
    shape, strides = _view(size, stride, path)
    numel = math.prod(shape)
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
    if numel > span and numel * storage.itemsize > MAX_EXPANDED_BYTES:
        raise InvalidFileError(
            f"a tensor of shape {list(shape)} expands {span} stored elements to {numel}; "
            "bninspect does not materialise it",
            path=path,
        )
    raw = storage.read(offset * storage.itemsize, span * storage.itemsize)
    flat = np.frombuffer(raw, dtype=storage.np_dtype)
    view = np.lib.stride_tricks.as_strided(flat, shape=shape, strides=[s * storage.itemsize for s in strides])
    values = np.array(view, dtype=storage.np_dtype.newbyteorder("=") if storage.np_dtype.byteorder == ">" else storage.np_dtype)
    return decode(values, storage.dtype)


def _archive_prefix(names: dict[str, Any], path: str) -> str:
    for name in names:
        head, sep, tail = name.partition("/")
        if tail == "data.pkl" and sep:
            return head + "/"
    if "data.pkl" in names:
        return ""
    raise InvalidFileError(
        "a zip archive without data.pkl: not a torch.save or TorchScript archive", path=path
    )


def _check_crcs(zf: zipfile.ZipFile, path: str) -> None:
    for info in zf.infolist():
        try:
            with zf.open(info) as f:
                while f.read(1 << 20):
                    pass
        except zipfile.BadZipFile as exc:
            if "CRC" not in str(exc):
                raise InvalidFileError(f"record {info.filename} cannot be read (corrupt zip entry)", path=path) from None
            raise InvalidFileError(f"record {info.filename} fails its CRC check (the bytes were altered)", path=path) from None
        except ZIP_ERRORS:
            raise InvalidFileError(f"record {info.filename} cannot be read (truncated or corrupt)", path=path) from None


def read(path: str, *, key: str | None, strict: bool) -> Checkpoint:
    """Read a torch.save or TorchScript zip archive without running anything from it."""
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as fh:
        # The lazy tensors read through their own copy of this descriptor.
        shared = SharedFile(path, os.dup(fd))
        members = None
        if not strict:  # --strict reads every member through zipfile
            size = os.fstat(fd).st_size
            with contextlib.suppress(OSError):
                members = zipdir.directory(fd, size)
        if members is not None:
            return _read_archive(shared, _Archive(members, functools.partial(zipdir.read, fd, size)), key=key)
        try:
            zf = zipfile.ZipFile(fh)
        except ZIP_ERRORS:
            raise InvalidFileError("a truncated or corrupt zip archive (its central directory is unreadable)", path=path) from None
        with zf:
            archive = _Archive({i.filename: i for i in zf.infolist()}, zf.read, zf if strict else None)
            return _read_archive(shared, archive, key=key)


def _read_archive(file: SharedFile, archive: _Archive, *, key: str | None) -> Checkpoint:
    path = file.path
    members = archive.infos
    prefix = _archive_prefix(members, path)
    code = f"{prefix}code/"  # once, not per member: a 10,000-layer archive has 60,006
    torchscript = f"{prefix}constants.pkl" in members or any(n.startswith(code) for n in members)
    if archive.strict is not None:
        _check_crcs(archive.strict, path)
    info = members[f"{prefix}data.pkl"]
    limit = MAX_PICKLE_BYTES if info.compress_type == zipfile.ZIP_STORED else MAX_COMPRESSED_PICKLE_BYTES
    if info.file_size > limit:
        # The size comes from the zip directory; a compressed entry could claim anything.
        kind = "" if info.compress_type == zipfile.ZIP_STORED else "compressed "
        raise InvalidFileError(f"{kind}data.pkl claims {info.file_size} bytes; bninspect reads at most {limit}", path=path)
    try:
        data = archive.read(info)
    except ZIP_ERRORS:
        raise InvalidFileError("data.pkl cannot be read (truncated, corrupt, or a bad CRC)", path=path) from None
    log = unpickler.Log(path)
    reader = _Reader(file, archive, prefix, torchscript, log)
    root = verdict.load_judged(data, path=path, what="data.pkl", find=reader.find, log=log,
                               persistent_load=reader.storage)
    judged = verdict.judge(log, root, where="data.pkl")
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

_CLASS_LINE = re.compile(r"^class (\w+)\(")
_CONST_LINE = re.compile(r"^  (\w+) : Final\[.*\] = (.+)$")
_LIST_LINE = re.compile(r"^  (__parameters__|__buffers__) = (\[.*\])$")
_MAX_LITERAL = 2000


def _literal(text: str) -> Any:
    text = text.strip()
    if len(text) > _MAX_LITERAL:
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def parse_class_code(source: str) -> dict[str, dict[str, Any]]:
    """Per class in one TorchScript code file: its ``Final`` constants and parameter/buffer names.

    Pure text parsing (a regex per line, ``ast.literal_eval`` for the value): nothing runs.
    """
    classes: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for line in source.splitlines():
        m = _CLASS_LINE.match(line)
        if m:
            current = classes.setdefault(m.group(1), {"constants": {}, "__parameters__": None, "__buffers__": None})
            continue
        if current is None:
            continue
        m = _CONST_LINE.match(line)
        if m:
            value = _literal(m.group(2))
            if value is not None or m.group(2).strip() == "None":
                current["constants"][m.group(1)] = value
            continue
        m = _LIST_LINE.match(line)
        if m:
            value = _literal(m.group(2))
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                current[m.group(1)] = value
    return classes


class _CodeIndex:
    """Class facts from the archive's ``code/`` files, parsed on demand, once per file."""

    MAX_CODE_BYTES = 16 * 1024 * 1024

    def __init__(self, archive: _Archive, prefix: str) -> None:
        self.archive = archive
        self.prefix = prefix
        self.files: dict[str, dict[str, dict[str, Any]]] = {}
        self.unreadable: list[str] = []

    def lookup(self, qualname: str) -> dict[str, Any] | None:
        module, _, cls = qualname.rpartition(".")
        name = f"{self.prefix}code/{module.replace('.', '/')}.py"
        if name not in self.files:
            parsed: dict[str, dict[str, Any]] = {}
            try:
                info = self.archive.infos[name]
                if info.file_size <= self.MAX_CODE_BYTES:
                    parsed = parse_class_code(self.archive.read(info).decode("utf-8", "replace"))
            except (KeyError, *ZIP_ERRORS):
                pass
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
            with contextlib.suppress(*ZIP_ERRORS):
                data = archive.read(info)
        yield name[len(code):], data if data is not None and len(data) == info.file_size else None


def _torchscript_checkpoint(path: str, archive: _Archive, prefix: str, root: Any, key: str | None) -> Checkpoint:
    if not isinstance(root, ScriptObject):
        raise InvalidFileError("TorchScript archive whose data.pkl does not hold a module", path=path)
    code = _CodeIndex(archive, prefix)
    tensors: dict[str, TensorRef] = {}
    modules: dict[str, ModuleInfo] = {}
    seen: set[int] = set()
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
        for name in names:
            tensors[f"{mpath}.{name}" if mpath else name] = state[name]
        children = [(f"{mpath}.{n}" if mpath else n, v) for n, v in state.items()
                    if isinstance(n, str) and isinstance(v, ScriptObject)]
        stack.extend(reversed(children))
    notes = []
    if code.unreadable:
        more = f" and {len(code.unreadable) - 3} more" if len(code.unreadable) > 3 else ""
        notes.append("module constants (eps, momentum, ...) not found in the archive's code for "
                     + ", ".join(code.unreadable[:3]) + more)
    node = ModuleNode(tensors=tensors, modules=modules)
    return containers.build_checkpoint(node, path=path, format="torchscript", key=key, notes=notes)
