"""Reading and writing activation arrays (``verify --input/--output/--expected``): .npy, .pt, .safetensors.

Read through ``formats.arrays``, the bounded readers checkpoints use (no pickle, no code, capped
decompression; the file recorded as read). Writing goes to a temporary file in the target
directory, then ``os.replace`` (``atomic_write``): a reader never sees half a file, an
interrupted write leaves the old file as it was, and no file this run read is replaced.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from bninspect.atomic import atomic_write
from bninspect.errors import InvalidFileError, PathProblemError, UsageError

FORMATS = {".npy": "npy", ".pt": "pt", ".pth": "pt", ".safetensors": "safetensors"}

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
    """One floating-point array from a .npy, .pt or .safetensors file, as float64."""
    from bninspect.formats.arrays import open_arrays

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


def write_activations(path: str, values: np.ndarray, like: Activations) -> None:
    """Write ``values`` in ``like``'s format and dtype (same key), atomically; never over a file
    this run read (the checkpoint, a file it names, --input, --expected)."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise PathProblemError("the output directory does not exist", path=path)
    if os.path.isdir(path):
        raise PathProblemError("is a directory", path=path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix in FORMATS and FORMATS[suffix] != like.format:
        raise UsageError(f"--output must be in the input's format ({like.format}), not {suffix}", path=path)
    data = _encode(values, like)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)


def _encode(values: np.ndarray, like: Activations) -> bytes:
    import io

    if like.format == "npy":
        buf = io.BytesIO()
        np.save(buf, values.astype(like.dtype), allow_pickle=False)
        return buf.getvalue()
    import torch

    from bninspect.numerics.kernels import TORCH_DTYPES

    tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64)).to(TORCH_DTYPES.get(like.dtype, torch.float32))
    if like.format == "pt":
        buf = io.BytesIO()
        torch.save(tensor if like.key is None else {like.key: tensor}, buf)
        return buf.getvalue()
    from safetensors.torch import save as save_safetensors

    return save_safetensors({like.key or "output": tensor.contiguous()})
