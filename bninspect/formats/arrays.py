"""Array files, read: the activations of `verify --input/--expected` and the inputs of `drift --data`.

They are inputs like any checkpoint, so they go through the same readers and limits: each is
opened by ``paths.open_regular`` (a regular file, never blocking, recorded as read so that no
output replaces it), and its format is told by content, never by name:

- ``.npy``: numpy's own header parser on our descriptor (no pickle: an object array is
  refused), then ``pread`` of the rows asked for;
- torch.save zip archives: the static reader (``torchzip.read_object``): no code runs, and
  decompression and expanded views are capped as for checkpoints (``torch.load`` inflated a
  1 MB deflated record into more than 6 GB);
- safetensors: the header reader, then ``pread``;
- the legacy (pre-1.6) torch.save format: the same static reader (``legacy.read_object``).

A pickle-based file whose real load would run code is refused (exit 3), as a checkpoint is.

Values are read a block of rows (first axis) at a time, where the format stores the tensor
contiguously: a calibration set for `drift` may be larger than memory. A single read is at
most MAX_READ_BYTES.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from bninspect.checkpoint import SHAPE_RULE, STORED_DTYPES, TensorRef, is_shape
from bninspect.errors import InvalidFileError, UnsafeFileError, UsageError
from bninspect.formats import legacy, safetensors, torchzip
from bninspect.formats.paths import SharedFile, open_regular, pread_exact

# Bytes of one read from an array file (a batch of drift's data, a whole activation file):
# far more than a batch of real inputs, and it keeps one read within the memory bninspect allows.
MAX_READ_BYTES = 1 << 30

NOT_AN_ARRAY = "not a tensor file bninspect can read (.npy, .pt from torch.save, or .safetensors)"

# numpy's type codes for the torch-style dtype names bninspect speaks.
_NUMPY_NAMES = {np.dtype(code).newbyteorder("=").str: name for name, (code, _) in STORED_DTYPES.items()
                if name != "bfloat16"}


@dataclass
class ArrayRef:
    """One tensor of an array file: shape and dtype known, values read a block of rows at a time."""

    shape: tuple[int, ...]
    dtype: str  # torch-style name: "float32", "bfloat16", "int64", ...
    read: Callable[[int, int], np.ndarray]  # rows start:stop, in the stored precision (bfloat16 → float32)
    path: str

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Entries ``start:stop`` of the first axis (all of a 0-d array), at most MAX_READ_BYTES."""
        if not self.shape:
            return self.read(0, 1)
        count = max(stop - start, 0) * math.prod(self.shape[1:])
        nbytes = count * STORED_DTYPES.get(self.dtype, ("", 8))[1]
        if nbytes > MAX_READ_BYTES:
            raise InvalidFileError(f"reading {nbytes:,} bytes of a tensor of shape {list(self.shape)} at once is more "
                                   f"than bninspect reads ({MAX_READ_BYTES:,})", path=self.path)
        return self.read(start, stop)

    def values(self) -> np.ndarray:
        """The whole tensor (at most MAX_READ_BYTES)."""
        return self.rows(0, self.shape[0] if self.shape else 1)


@dataclass
class ArrayFile:
    """What an array file holds: one tensor, or the tensors of a dict or a sequence (by key)."""

    path: str
    format: str  # "npy" | "pt" | "safetensors"
    layout: str  # "tensor" | "dict" | "sequence"
    arrays: dict[str, ArrayRef]  # a bare tensor under "", a sequence's tensors under "0", "1", ...
    holds: str = ""  # for a file holding no tensor: what it holds instead ("a list", "an int")


def open_arrays(path: str, what: str = "an array file") -> ArrayFile:
    """The tensors of an array file, nothing read yet but its structure; InvalidFileError,
    UnsafeFileError or PathProblemError in one line where it is not one."""
    fd = open_regular(path, what)
    file = SharedFile(path, fd)
    head = os.pread(fd, 4096, 0)
    if head.startswith(np.lib.format.MAGIC_PREFIX):
        return _npy(file)
    if torchzip.sniff(head):
        return _from_object(path, torchzip.read_object(path, what), torchzip.read_rows)
    if legacy.sniff(head):
        return _from_object(path, legacy.read_object(path, what), None)
    if safetensors.sniff(head):
        tensors = safetensors.read(path, key=None, strict=False).tensors
        arrays = {name: _array(ref, safetensors.read_rows, path) for name, ref in tensors.items()}
        return ArrayFile(path, "safetensors", "dict", arrays, holds="no tensors")
    raise InvalidFileError(NOT_AN_ARRAY, path=path)


# Values of one activation file. verify keeps a few float64 arrays of this size at once (the
# input, the expected output, one candidate explanation and its magnitudes): 8 Mi values keep
# `verify --expected` near 1.1 GB; real activations of one layer are a few million values.
MAX_VALUES = 1 << 23


@dataclass
class Activations:
    """One array from a file, as float64, with what is needed to write a sibling file in the same format."""

    path: str
    format: str  # "npy" | "pt" | "safetensors"
    values: np.ndarray  # float64, in the file's layout
    dtype: str  # torch-style name of the stored dtype ("float32", "bfloat16", ...)
    key: str | None = None  # safetensors tensor name, or the dict key a .pt held it under


def read_activations(path: str) -> Activations:
    """One floating-point array from a .npy, .pt or .safetensors file, as float64 (`verify
    --input/--expected`)."""
    found = open_arrays(path)
    if found.layout == "sequence":
        raise InvalidFileError("holds a list or tuple, expected a tensor", path=path)
    if len(found.arrays) != 1:
        names = ", ".join(sorted(found.arrays)[:5]) or "none"
        raise InvalidFileError(f"expected exactly one tensor, found {len(found.arrays)} ({names})", path=path)
    key, array = next(iter(found.arrays.items()))
    if not (array.dtype.startswith("float") or array.dtype == "bfloat16"):
        raise InvalidFileError(f"holds a {array.dtype} tensor, expected floating point", path=path)
    if math.prod(array.shape) > MAX_VALUES:
        raise InvalidFileError(f"holds {math.prod(array.shape):,} values (shape {list(array.shape)}); bninspect verifies "
                               f"at most {MAX_VALUES:,} at once (save fewer samples)", path=path)
    return Activations(path, found.format, array.values().astype(np.float64), array.dtype,
                       key if found.layout == "dict" else None)


# Names a tensor file's inputs commonly go by when it holds more than one tensor.
INPUT_NAMES = ("x", "inputs", "input", "images", "data", "calib", "samples")


def open_inputs(path: str) -> tuple[ArrayRef, str]:
    """The tensor of model inputs in a data file (`drift --data`; first dimension = samples) and
    a description of it. A sequence (``(inputs, labels)``, the usual dataset dump) gives its
    first tensor; a dict or safetensors file its only tensor, or the one named like inputs
    (``INPUT_NAMES``)."""
    found = open_arrays(path, "a data file")
    if not found.arrays:
        raise InvalidFileError(f"--data: the file holds {found.holds}, not a tensor of inputs", path=path)
    if found.layout == "sequence":
        array = next(iter(found.arrays.values()))
    else:
        array = _pick(found.arrays, path)
    _check_inputs(array.shape, array.dtype, path)
    kind = {"npy": ".npy", "pt": "torch", "safetensors": "safetensors"}[found.format]
    name = next(k for k, v in found.arrays.items() if v is array)
    label = f" '{name}'" if found.layout == "dict" else ""
    return array, f"{os.path.basename(path)} ({kind}{label} {array.dtype} {list(array.shape)})"


def _pick(found: dict[str, ArrayRef], path: str) -> ArrayRef:
    if len(found) == 1:
        return next(iter(found.values()))
    for name in INPUT_NAMES:
        if name in found:
            return found[name]
    raise UsageError(
        f"--data holds {len(found)} tensors ({', '.join(list(found)[:5])}); "
        f"save one tensor of inputs or name it one of {', '.join(INPUT_NAMES)}",
        path=path,
    )


def _check_inputs(shape: tuple[int, ...], dtype: str, path: str) -> None:
    if len(shape) < 1 or shape[0] == 0:
        raise InvalidFileError("--data holds no samples (the first dimension counts samples)", path=path)
    if len(shape) < 2:
        raise InvalidFileError(f"--data is a 1-d tensor {list(shape)}; the first dimension counts samples, "
                               "so each sample needs at least one more", path=path)
    if dtype.startswith("complex") or dtype == "bool":
        raise InvalidFileError(f"--data has dtype {dtype}; models take real numbers", path=path)


def _npy(file: SharedFile) -> ArrayFile:
    """A .npy file: numpy's header parser, refusing object arrays, then rows by pread."""
    path = file.path
    with os.fdopen(os.dup(file.fd), "rb") as fh:
        try:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"format version {version}")
        except (ValueError, OSError, EOFError, SyntaxError, TypeError):
            raise InvalidFileError("not a readable .npy array (its header is damaged)", path=path) from None
        start = fh.tell()
    if dtype.hasobject:
        raise UnsafeFileError("it holds Python objects (needs pickle, refused: loading them can run code)", path=path)
    name = _NUMPY_NAMES.get(dtype.newbyteorder("=").str)
    if name is None:
        raise InvalidFileError(f"holds {dtype} values, which bninspect does not read", path=path)
    if not is_shape(shape):
        raise InvalidFileError(f"a .npy array of shape {list(shape)} ({SHAPE_RULE})", path=path)
    row = math.prod(shape[1:]) * dtype.itemsize

    def read(a: int, b: int) -> np.ndarray:
        if fortran and len(shape) > 1:  # column-major: rows are not contiguous, read it whole
            raw = pread_exact(file.fd, math.prod(shape) * dtype.itemsize, start, path, "the array")
            whole = np.frombuffer(raw, dtype=dtype).reshape(shape, order="F")
            return whole[a:b].astype(dtype.newbyteorder("="))
        raw = pread_exact(file.fd, (b - a) * row, start + a * row, path, "the array")
        return np.frombuffer(raw, dtype=dtype).reshape((b - a,) + tuple(shape[1:])).astype(dtype.newbyteorder("="))

    if not shape:
        raw = pread_exact(file.fd, dtype.itemsize, start, path, "the array")
        scalar = np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("=")).reshape(())
        return ArrayFile(path, "npy", "tensor", {"": ArrayRef((), name, lambda a, b: scalar, path)})
    return ArrayFile(path, "npy", "tensor", {"": ArrayRef(tuple(shape), name, read, path)})


def _array(ref: TensorRef, rows: Callable[[TensorRef, int, int], np.ndarray] | None, path: str) -> ArrayRef:
    """An ArrayRef over a reader's TensorRef, reading rows through ``rows`` where the reader has it."""
    if rows is None:
        return ArrayRef(ref.shape, ref.dtype, lambda a, b: ref.numpy()[a:b] if ref.shape else ref.numpy(), path)
    return ArrayRef(ref.shape, ref.dtype, lambda a, b: rows(ref, a, b) if ref.shape else ref.numpy(), path)


def _from_object(path: str, obj: Any, rows: Callable[[TensorRef, int, int], np.ndarray] | None) -> ArrayFile:
    """A torch.save'd object as an ArrayFile: a tensor, a dict of tensors, or a list/tuple of them."""
    if isinstance(obj, TensorRef):
        return ArrayFile(path, "pt", "tensor", {"": _array(obj, rows, path)})
    if isinstance(obj, dict):
        arrays = {str(k): _array(v, rows, path) for k, v in obj.items() if isinstance(v, TensorRef)}
        return ArrayFile(path, "pt", "dict", arrays, holds="no tensor")
    if isinstance(obj, (list, tuple)):
        arrays = {str(i): _array(v, rows, path) for i, v in enumerate(obj) if isinstance(v, TensorRef)}
        return ArrayFile(path, "pt", "sequence", arrays, holds=f"a {type(obj).__name__} without tensors")
    return ArrayFile(path, "pt", "tensor", {}, holds=f"a {type(obj).__name__}")
