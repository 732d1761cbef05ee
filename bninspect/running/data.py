"""The inputs a model runs on: a data file, or seeded synthetic values, handed out a batch at a time.

A data file is read through ``formats.arrays`` (the bounded readers checkpoints use; nothing
from it runs), a block of rows at a time, so memory is bounded by the batch size, not the
data size.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import torch

from bninspect.errors import UsageError
from bninspect.running.interface import DataSource
from bninspect.running.weights import tensor_of


class _ArraySource(DataSource):
    # Rows of a data file's tensor (formats.arrays.ArrayRef), as torch tensors.
    def __init__(self, get: Callable[[int, int], torch.Tensor], shape: tuple[int, ...], description: str) -> None:
        self._get = get
        self._shape = tuple(int(s) for s in shape)
        self.description = description

    def batch(self, start: int, stop: int) -> torch.Tensor:
        return self._get(start, stop)


class SyntheticSource(DataSource):
    """Seeded standard-normal inputs: exercises the mechanics of BN, says nothing about fitness."""

    synthetic = True
    BLOCK = 64  # samples per seeded block: the same sample has the same values at every batch size

    def __init__(self, shape: tuple[int, ...], seed: int = 0) -> None:
        self._shape = shape
        self.seed = seed
        self.description = f"synthetic N(0, 1) input {'x'.join(map(str, shape))}, seed {seed}"

    def _block(self, b: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + b)
        n = min(self.BLOCK, len(self) - b * self.BLOCK)
        return torch.randn((n, *self.sample_shape), generator=g)

    def batch(self, start: int, stop: int) -> torch.Tensor:
        blocks = range(start // self.BLOCK, (stop - 1) // self.BLOCK + 1)
        data = torch.cat([self._block(b) for b in blocks])
        offset = blocks[0] * self.BLOCK
        return data[start - offset: stop - offset]


def parse_shape(text: str) -> tuple[int, ...]:
    """``16x3x64x64`` → (16, 3, 64, 64); a usage error unless every part is a positive integer."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) < 2 or any(s <= 0 for s in shape):
        raise UsageError(f"--synthetic must look like SAMPLESxCxHxW with positive sizes (e.g. 16x3x64x64), not '{text}'")
    if math.prod(shape) > 2**31:
        raise UsageError(f"--synthetic {text} is too large ({math.prod(shape):,} values)")
    return shape


def open_data(path: str) -> DataSource:
    """A tensor file of inputs (first dimension = samples), opened without running code from it
    (:func:`bninspect.formats.arrays.open_inputs` chooses the tensor)."""
    from bninspect.formats.arrays import open_inputs

    array, description = open_inputs(path)
    return _ArraySource(lambda a, b: tensor_of(array.rows(a, b)), array.shape, description)


# A DataLoader (or any iterable of batches) is read until this many input values: the samples
# drift measures are held in memory at once (1 GiB of float32), and a loader may be endless.
MAX_LOADER_VALUES = 1 << 28


def _from_loader(loader: object) -> torch.Tensor:
    """The samples of an iterable of batches (a DataLoader's: a tensor, or (inputs, labels, ...)
    or {"input"/first tensor: ...}), concatenated up to MAX_LOADER_VALUES values."""
    taken, total = [], 0
    for batch in loader:  # type: ignore[attr-defined]
        if isinstance(batch, dict):
            batch = next((v for v in batch.values() if isinstance(v, torch.Tensor)), None)
        elif isinstance(batch, (tuple, list)):
            batch = batch[0] if batch else None
        if not isinstance(batch, torch.Tensor):
            raise UsageError("data= as an iterable must give tensors of inputs (a DataLoader's batches, or "
                             f"(inputs, labels) pairs), not {type(batch).__name__}")
        if total + batch.numel() > MAX_LOADER_VALUES and taken:
            break
        taken.append(batch.detach().to("cpu"))
        total += batch.numel()
    if not taken:
        raise UsageError("data= gave no batches")
    try:
        return torch.cat(taken)
    except RuntimeError:
        raise UsageError("data='s batches differ in their sample shape "
                         f"({', '.join(str(list(t.shape[1:])) for t in taken[:3])})") from None


def memory_source(values: object) -> DataSource:
    """Inputs already in memory (the Python API: a tensor or numpy array, first dimension =
    samples, or an iterable of batches such as a DataLoader), handed out as copies so that the
    caller's data is never written."""
    import numpy as np

    if not isinstance(values, (torch.Tensor, np.ndarray, list, tuple)) and hasattr(values, "__iter__"):
        values = _from_loader(values)
    try:
        tensor = values if isinstance(values, torch.Tensor) else torch.from_numpy(np.asarray(values))
    except TypeError:
        raise UsageError(f"data must be a file path, a tensor or a numpy array of numbers, not {type(values).__name__}") from None
    if tensor.ndim < 2 or tensor.is_complex() or tensor.dtype == torch.bool:
        raise UsageError(f"data must be real-valued samples (N, ...) with two or more dimensions, not a "
                         f"{str(tensor.dtype).replace('torch.', '')} array of shape {list(tensor.shape)}")
    shape = "x".join(map(str, tensor.shape))
    return _ArraySource(lambda a, b: tensor[a:b].detach().to("cpu", copy=True), tuple(tensor.shape),
                        f"a {str(tensor.dtype).replace('torch.', '')} array in memory, {shape}")


def batches(source: DataSource, size: int) -> Iterator[torch.Tensor]:
    """The source's samples in consecutive batches of ``size`` (the last one may be smaller)."""
    for start in range(0, len(source), size):
        yield source.batch(start, min(start + size, len(source)))
