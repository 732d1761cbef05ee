"""safetensors: the 8-byte header length, the JSON header, then a ``pread`` per tensor asked for.

Layout (https://github.com/huggingface/safetensors, "Format"): u64 little-endian N, N bytes
of UTF-8 JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``,
then the data area; offsets are relative to the data area, which must be fully indexed with no
overlaps. We validate the header completely and read no tensor bytes until asked: no torch,
no mmap (mmap read-ahead pulls in far more than the BN ranges on a cold cache).
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Any

import numpy as np

from bninspect.checkpoint import SHAPE_RULE, Checkpoint, ModuleNode, TensorRef, are_sizes, decode, is_shape, natural_key
from bninspect.errors import InvalidFileError
from bninspect.formats import containers
from bninspect.formats.paths import SharedFile, open_regular, pread_exact

# safetensors dtype code -> (torch dtype name, numpy code of the stored bytes, itemsize).
DTYPES: dict[str, tuple[str, str, int]] = {
    "F64": ("float64", "<f8", 8),
    "F32": ("float32", "<f4", 4),
    "F16": ("float16", "<f2", 2),
    "BF16": ("bfloat16", "<u2", 2),
    "I64": ("int64", "<i8", 8),
    "I32": ("int32", "<i4", 4),
    "I16": ("int16", "<i2", 2),
    "I8": ("int8", "i1", 1),
    "U64": ("uint64", "<u8", 8),
    "U32": ("uint32", "<u4", 4),
    "U16": ("uint16", "<u2", 2),
    "U8": ("uint8", "u1", 1),
    "BOOL": ("bool", "?", 1),
    "C64": ("complex64", "<c8", 8),
    "F8_E4M3": ("float8_e4m3fn", "", 1),
    "F8_E5M2": ("float8_e5m2", "", 1),
}

# The reference implementation refuses headers over 100 MB (safetensors' MAX_HEADER_SIZE).
MAX_HEADER = 100_000_000


def sniff(head: bytes) -> bool:
    """An 8-byte little-endian length below 2**40, then ``{``.

    The length and the JSON are checked by ``read``, so a broken header gets its own message.
    """
    if len(head) < 10:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return n >= 2 and head[5:8] == b"\x00\x00\x00" and head[8:9] == b"{"


def _duplicates_refused(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for k, v in pairs:
        if k in seen:
            raise _Duplicate(k)
        seen[k] = v
    return seen


class _Duplicate(Exception):
    pass


def _header(fd: int, path: str, size: int, strict: bool) -> tuple[dict[str, Any], int]:
    (n,) = struct.unpack("<Q", pread_exact(fd, 8, 0, path, "the header length"))
    if n > MAX_HEADER:
        raise InvalidFileError(f"safetensors header length {n} is absurd (over {MAX_HEADER} bytes)", path=path)
    if 8 + n > size:
        raise InvalidFileError(f"safetensors header length {n} runs past the end of the file ({size} bytes)", path=path)
    raw = pread_exact(fd, n, 8, path, "the safetensors header")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidFileError("safetensors header is not valid UTF-8", path=path) from None
    try:
        header = json.loads(text, object_pairs_hook=_duplicates_refused if strict else None)
    except _Duplicate as exc:
        raise InvalidFileError(f"safetensors header names {exc.args[0]!r} twice (--strict)", path=path) from None
    except (ValueError, RecursionError):
        raise InvalidFileError("safetensors header is not valid JSON", path=path) from None
    if not isinstance(header, dict):
        raise InvalidFileError("safetensors header is not a JSON object", path=path)
    return header, 8 + n


def _entry(name: str, entry: Any, data_len: int, path: str) -> tuple[str, tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one header entry, validated; InvalidFileError saying what is wrong."""
    # Plain loops, no generators: a 10,000-layer header has 60,000 entries of one to four numbers.
    if not isinstance(entry, dict):
        raise InvalidFileError(f"safetensors entry {name!r} is not an object", path=path)
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise InvalidFileError(f"safetensors entry {name!r} has unknown dtype {dtype!r}", path=path)
    if not isinstance(shape, list) or not is_shape(shape):
        raise InvalidFileError(f"safetensors entry {name!r} has an invalid shape ({SHAPE_RULE})", path=path)
    if not isinstance(offsets, list) or len(offsets) != 2 or not are_sizes(offsets) or offsets[0] > offsets[1]:
        raise InvalidFileError(f"safetensors entry {name!r} has invalid data_offsets", path=path)
    begin, end = offsets
    # The element count is an int64 (is_shape): an absurd shape simply fails to match its byte range.
    needed = math.prod(shape) * DTYPES[dtype][2]
    if needed != end - begin:
        raise InvalidFileError(
            f"safetensors entry {name!r}: shape {shape} of {dtype} needs {needed} bytes "
            f"but data_offsets give {end - begin}",
            path=path,
        )
    if end > data_len:
        raise InvalidFileError(
            f"safetensors entry {name!r} ends at byte {end} of the data area, which has {data_len} (truncated file?)",
            path=path,
        )
    return dtype, tuple(shape), begin, end


def read(path: str, *, key: str | None, strict: bool) -> Checkpoint:
    """Validate the header and return lazy tensors; nothing but the header is read here."""
    # The lazy tensors read through this descriptor (closed with the last of them).
    file = SharedFile(path, open_regular(path))
    size = os.fstat(file.fd).st_size
    header, data_start = _header(file.fd, path, size, strict)
    return _checkpoint(file, header, data_start, size - data_start, key)


def _checkpoint(file: SharedFile, header: dict[str, Any], data_start: int, data_len: int, key: str | None) -> Checkpoint:
    path = file.path
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidFileError("safetensors __metadata__ is not an object", path=path)
    refs: dict[str, TensorRef] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        dtype, shape, begin, end = _entry(name, entry, data_len, path)
        refs[name] = TensorRef(shape, DTYPES[dtype][0], _load, file, data_start + begin, end - begin, dtype, shape)
        if end > begin:
            spans.append((begin, end, name))
    spans.sort()
    covered = 0
    for begin, end, name in spans:
        if begin < covered:
            raise InvalidFileError(f"safetensors entry {name!r} overlaps another tensor's bytes", path=path)
        covered = end
    notes = []
    if covered < data_len and spans:
        notes.append(f"the data area has {data_len - covered} bytes after the last tensor")
    if not refs:
        # A valid file (the safetensors library reads it as {}): an answer about BN, not an error.
        notes.append("the file holds no tensors")
    # safetensors keeps no module order (the writer sorts by dtype alignment, then name), so
    # keys come in natural order: "features.2" before "features.10", as nn.Sequential numbers them.
    tensors = {name: refs[name] for name in sorted(refs, key=natural_key)}
    # Every value is a tensor already: as a ModuleNode (with no module facts) the state dict is
    # taken as it is, not copied key by key through the search for tensors among other values.
    node = ModuleNode(tensors=tensors)
    checkpoint = containers.build_checkpoint(node, path=path, format="safetensors", key=key, notes=notes)
    checkpoint.ordered = False  # safetensors stores keys sorted, not in module order
    return checkpoint


def read_rows(ref: TensorRef, start: int, stop: int) -> np.ndarray:
    """Entries ``start:stop`` of the first axis of a tensor ``read`` made, reading only their bytes."""
    file, offset, _length, dtype, shape = ref._args  # our own TensorRef: its arguments are _load's
    name, code, itemsize = DTYPES[dtype]
    if not code:
        raise InvalidFileError(f"{name} tensors cannot be read by bninspect", path=file.path)
    row = math.prod(shape[1:]) * itemsize
    raw = file.pread((stop - start) * row, offset + start * row, "a tensor")
    return decode(np.frombuffer(bytearray(raw), dtype=code).reshape((stop - start,) + shape[1:]), name)


def _load(file: SharedFile, start: int, length: int, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    name, code, _ = DTYPES[dtype]
    if not code:
        raise InvalidFileError(f"{name} tensors cannot be read by bninspect", path=file.path)
    raw = file.pread(length, start, "a tensor")
    return decode(np.frombuffer(bytearray(raw), dtype=code).reshape(shape), name)
