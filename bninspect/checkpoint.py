"""What a file turns into: named tensors (read lazily) plus the module facts the file carries.

Every reader in ``bninspect.formats`` returns a :class:`Checkpoint`. Nothing downstream
knows which format a tensor came from: it asks a :class:`TensorRef` for its shape and
dtype (free) and for its values (a read of just that tensor's bytes).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

# torch dtype name -> (numpy dtype of the stored bytes, itemsize). bfloat16 has no numpy
# type: its bytes are read as uint16 and widened to float32 (the top half of a float32).
STORED_DTYPES: dict[str, tuple[str, int]] = {
    "float64": ("<f8", 8),
    "float32": ("<f4", 4),
    "float16": ("<f2", 2),
    "bfloat16": ("<u2", 2),
    "int64": ("<i8", 8),
    "int32": ("<i4", 4),
    "int16": ("<i2", 2),
    "int8": ("i1", 1),
    "uint8": ("u1", 1),
    "bool": ("?", 1),
    "complex64": ("<c8", 8),
    "complex128": ("<c16", 16),
}

FLOAT_DTYPES = frozenset({"float64", "float32", "float16", "bfloat16"})


def decode(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Turn stored elements into a numpy array of the closest numpy dtype (bfloat16 → float32)."""
    if dtype == "bfloat16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw


# A size, stride or offset read from a file is an int64 (torch, ONNX, safetensors and numpy all
# index with one); anything larger is a lie, and Python's unbounded ints would turn it into
# seconds of arithmetic or an int-to-str conversion error. Shapes have at most MAX_NDIM dims.
MAX_SIZE = 2**63 - 1
MAX_NDIM = 64


def are_sizes(values: Any) -> bool:
    """Every item an int (not a bool) in 0..MAX_SIZE: a shape, strides, byte offsets from a file.

    A plain loop: for the one to five numbers of a shape it is three times quicker than all()
    over a generator, and readers call it for each of a file's tensors (60,000 at 10,000 layers).
    """
    for v in values:
        if type(v) is not int or v < 0 or v > MAX_SIZE:
            return False
    return True


def is_shape(values: Any) -> bool:
    """A tensor shape from a file: at most MAX_NDIM sizes (``are_sizes``) whose product, the
    element count, is an int64 too."""
    return len(values) <= MAX_NDIM and are_sizes(values) and math.prod(values) <= MAX_SIZE


SHAPE_RULE = f"at most {MAX_NDIM} sizes, each an int64 of 0 or more, with an int64 product"


class TensorRef:
    """A tensor known by shape and dtype; its values are read only when :meth:`numpy` is called.

    ``loader(*args)`` returns the values. Readers pass a module function and its arguments
    rather than a closure or a partial: a 10,000-layer file has 60,000 tensors, and each
    closure is a function and a cell per variable for the allocator and the garbage collector.
    """

    __slots__ = ("shape", "dtype", "_loader", "_args", "_value")

    def __init__(self, shape: tuple[int, ...], dtype: str, loader: Callable[..., np.ndarray], *args: Any) -> None:
        self.shape = tuple(map(int, shape))
        self.dtype = dtype
        self._loader = loader
        self._args = args
        self._value: np.ndarray | None = None

    @classmethod
    def from_array(cls, array: np.ndarray, dtype: str | None = None) -> "TensorRef":
        """Wrap values already in memory (tests, converted formats, recomputed statistics)."""
        arr = np.asarray(array)
        return cls(arr.shape, dtype or arr.dtype.name, lambda: arr)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * STORED_DTYPES.get(self.dtype, ("", 0))[1]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def numpy(self) -> np.ndarray:
        """The values, shaped, in the stored precision (bfloat16 widened to float32). Cached."""
        if self._value is None:
            self._value = self._loader(*self._args)
        return self._value

    def float64(self) -> np.ndarray:
        """The values as float64 (the precision every statistic here is computed in)."""
        return np.asarray(self.numpy(), dtype=np.float64)

    def __repr__(self) -> str:
        return f"TensorRef(shape={self.shape}, dtype={self.dtype})"


@dataclass
class ModuleInfo:
    """Facts a saved module carries and a state dict does not (TorchScript, pickled modules)."""

    path: str  # module path as in the state-dict keys, without trailing dot; "" for the root
    type_name: str  # short class name: "BatchNorm2d", "Conv2d", "FrozenBatchNorm2d", ...
    attributes: dict[str, Any] = field(default_factory=dict)  # eps, momentum, training, groups, ...
    # How a pickled module is known to be a BatchNorm: "class" (its name), "state" (a subclass
    # named otherwise, with BatchNorm's attributes and running statistics); "" = not known to be.
    bn: str = ""


# Module attributes worth keeping, whatever read the module (pickled, trusted, live): BN's
# (constructor arguments and mode), and what producer matching needs from convs and linears.
MODULE_ATTRIBUTES = (
    "training", "eps", "momentum", "affine", "track_running_stats", "num_features",
    "in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
    "transposed", "in_features", "out_features",
)

_SCALARS = (bool, int, float, str, type(None))


def is_simple_fact(value: Any, sequences: tuple[type, ...] = (tuple,)) -> bool:
    """A module attribute worth keeping as a fact: a plain scalar, or a short sequence of them."""
    if isinstance(value, _SCALARS):
        return True
    return isinstance(value, sequences) and len(value) <= 16 and all(isinstance(v, _SCALARS) for v in value)


@dataclass
class ModuleNode:
    """A module found in a file (TorchScript, pickled or trusted-loaded): its state-dict tensors
    and module facts, before a state dict is chosen."""

    tensors: dict[str, TensorRef]
    modules: dict[str, ModuleInfo] = field(default_factory=dict)
    # The wrapper prefix its keys carry, known from the wrappers' classes ("module." under
    # DataParallel); None where only the key names can tell (TorchScript, trusted loads).
    prefix: str | None = None
    class_name: str = ""  # the root module's class, for notes ("ultralytics.nn.tasks.DetectionModel")
    bn_by_state: list[str] = field(default_factory=list)  # BatchNorm modules recognised by their state


@dataclass
class Checkpoint:
    """One opened file: the selected state dict (original keys) and what else we learned."""

    path: str
    format: str  # one of FORMAT_NAMES' keys
    tensors: dict[str, TensorRef]
    container: str = ""  # where the state dict sat, "/"-joined keys ("" = top level)
    alternatives: list[str] = field(default_factory=list)  # other candidate state dicts
    prefix: str = ""  # wrapper prefix stripped for display ("module.", "_orig_mod.", "model.")
    modules: dict[str, ModuleInfo] = field(default_factory=dict)  # by original module path
    notes: list[str] = field(default_factory=list)  # facts worth telling the user
    # True where key order is module-definition order (torch.save, TorchScript keep it);
    # safetensors sorts its keys, so discovery must match producers by structure instead.
    ordered: bool = True
    # What a real load of this file would do (formats.verdict.Verdict), for pickle-based
    # formats; None where loading runs nothing (safetensors, ONNX, OpenVINO IR).
    verdict: Any = None
    # Entries named like a BatchNorm tensor whose values are not tensors (a list, a string, a
    # Python int: what weights_only pickles allow): original key → what the value is, in words.
    not_tensors: dict[str, str] = field(default_factory=dict)

    def display(self, key: str) -> str:
        """A key (or module path) as shown to the user: the wrapper prefix removed."""
        if self.prefix and key.startswith(self.prefix):
            return key[len(self.prefix):]
        return key


FORMAT_NAMES: dict[str, str] = {
    "torch-zip": "torch.save zip archive",
    "torch-legacy": "legacy torch.save (pre-1.6, non-zip)",
    "safetensors": "safetensors",
    "torchscript": "TorchScript archive",
    "pickled-module": "pickled nn.Module (loaded with --trust)",
    "live-module": "torch.nn.Module in memory (Python API)",
    "onnx": "ONNX model",
    "openvino-ir": "OpenVINO IR",
}


def natural_key(name: str) -> str:
    """Sort key per dotted component, numeric components as numbers: "features.2" < "features.10".

    The components' keys joined by NUL, which sorts below the first character of every
    component key, so string order is component-by-component order; one string compares in
    C where a tuple compares item by item (faster: benchmarks/README.md, "Measured design
    choices"). Only a name holding NUL itself can sort out of that order, and order is only
    how names are listed.
    """
    return "\x00".join(map(_component_key, name.split(".")))


@functools.lru_cache(maxsize=1 << 16)
def _component_key(part: str) -> str:
    """One component as a string that sorts naturally: numbers by value, before names.

    "\\x00" + chr(number of digits) + digits puts numbers in numeric order. Flat strings compare
    in half the time of (kind, int, str) tuples, and components repeat across keys (weight,
    bn, block numbers), hence the cache, bounded so that a hostile header cannot grow it.
    """
    # isascii: "²" and other Unicode digits pass isdigit() but are no numbers to int(); and
    # no int() at all, so a 5000-digit component cannot hit Python's conversion limit.
    if part.isascii() and part.isdigit():
        digits = part.lstrip("0") or "0"  # "007" sorts as 7
        return "\x00" + chr(len(digits)) + digits
    return "\x01" + part
