"""Reading and writing activation arrays (``verify --input/--output/--expected``): .npy, .pt, .safetensors.

Safe like the checkpoint readers: .npy with ``allow_pickle=False``, .pt with
``torch.load(weights_only=True, map_location="cpu")``, safetensors by its header. Writing goes
to a temporary file in the target directory, then ``os.replace``: a reader never sees half a
file, and an interrupted write leaves the old file as it was.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass

import numpy as np

from bninspect.atomic import atomic_write, same_file
from bninspect.errors import InvalidFileError, PathProblemError, UnsafeFileError, UsageError
from bninspect.formats.paths import check_path

FORMATS = {".npy": "npy", ".pt": "pt", ".pth": "pt", ".safetensors": "safetensors"}


@dataclass
class Activations:
    """One array from a file, as float64, with what is needed to write a sibling file in the same format."""

    path: str
    format: str  # "npy" | "pt" | "safetensors"
    values: np.ndarray  # float64, in the file's layout
    dtype: str  # torch-style name of the stored dtype ("float32", "bfloat16", ...)
    key: str | None = None  # safetensors tensor name, or the dict key a .pt held it under


def sniff(path: str) -> str:
    """The array format by content (magic bytes), falling back to the file name's suffix."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"PK\x03\x04") or head[:2] == b"\x80\x02":
        return "pt"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    suffix = os.path.splitext(path)[1].lower()
    if suffix in FORMATS:
        return FORMATS[suffix]
    raise InvalidFileError("not a .npy, .pt or .safetensors array file", path=path)


def _from_torch(tensor, path: str, key: str | None, fmt: str) -> Activations:
    import torch

    if not tensor.is_floating_point():
        raise InvalidFileError(f"holds a {str(tensor.dtype).replace('torch.', '')} tensor, expected floating point", path=path)
    dtype = str(tensor.dtype).replace("torch.", "")
    return Activations(path, fmt, tensor.detach().to(torch.float64).numpy(), dtype, key)


def _single(items: dict, path: str):
    tensors = {k: v for k, v in items.items() if hasattr(v, "is_floating_point")}
    if len(tensors) != 1:
        names = ", ".join(sorted(map(str, tensors))[:5]) or "none"
        raise InvalidFileError(f"expected exactly one tensor, found {len(tensors)} ({names})", path=path)
    return next(iter(tensors.items()))


def read_activations(path: str) -> Activations:
    """One floating-point array from a .npy, .pt or .safetensors file, as float64."""
    check_path(path, "an array file")
    fmt = sniff(path)
    if fmt == "npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as exc:
            if "allow_pickle" in str(exc):
                raise UnsafeFileError("holds pickled Python objects; refused (allow_pickle=False)", path=path) from None
            raise InvalidFileError("not a readable .npy array", path=path) from None
        except (OSError, EOFError):
            raise InvalidFileError("not a readable .npy array (truncated?)", path=path) from None
        if arr.dtype.kind != "f":
            raise InvalidFileError(f"holds a {arr.dtype.name} array, expected floating point", path=path)
        return Activations(path, "npy", arr.astype(np.float64), arr.dtype.name)
    import torch

    if fmt == "pt":
        try:
            obj = torch.load(path, weights_only=True, map_location="cpu")
        except pickle.UnpicklingError:
            raise UnsafeFileError("needs objects that weights_only loading refuses; not loaded", path=path) from None
        except Exception:
            raise InvalidFileError("not a readable torch.save file", path=path) from None
        if isinstance(obj, torch.Tensor):
            return _from_torch(obj, path, None, "pt")
        if isinstance(obj, dict):
            key, tensor = _single(obj, path)
            return _from_torch(tensor, path, str(key), "pt")
        raise InvalidFileError(f"holds a {type(obj).__name__}, expected a tensor", path=path)
    from safetensors.torch import load as load_safetensors

    try:
        with open(path, "rb") as f:
            items = load_safetensors(f.read())
    except Exception:
        raise InvalidFileError("not a readable safetensors file", path=path) from None
    key, tensor = _single(items, path)
    return _from_torch(tensor, path, key, "safetensors")


def write_activations(path: str, values: np.ndarray, like: Activations, protected: list[str]) -> None:
    """Write ``values`` in ``like``'s format and dtype (same key), atomically; never over a ``protected`` file."""
    for other in protected:
        if other and same_file(path, other):
            raise UsageError("--output would overwrite an input file; choose another name", path=path)
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

    from bninspect.numerics import TORCH_DTYPES

    tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64)).to(TORCH_DTYPES.get(like.dtype, torch.float32))
    if like.format == "pt":
        buf = io.BytesIO()
        torch.save(tensor if like.key is None else {like.key: tensor}, buf)
        return buf.getvalue()
    from safetensors.torch import save as save_safetensors

    return save_safetensors({like.key or "output": tensor.contiguous()})
