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


def memory_source(values: object) -> DataSource:
    """Inputs already in memory (the Python API: a tensor or numpy array, first dimension =
    samples), handed out as copies so that the caller's array is never written."""
    import numpy as np

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
