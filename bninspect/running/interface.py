"""What the running modules hand each other and `drift`: a loaded model, a source of inputs, a probe."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from bninspect.checkpoint import Checkpoint

# A TorchScript model's BN inputs for one batch, by BN module path (see ``running.probe``).
Probe = Callable[[torch.Tensor], dict[str, torch.Tensor]]


@dataclass
class LoadedModel:
    """A model ready to run, and how it was obtained."""

    model: nn.Module
    source: str  # "arch" | "torchscript" | "pickled-module"
    description: str  # "sample_models:mobilenet_v1_tiny" or the file's format, for the report
    checkpoint: Checkpoint | None = None  # the safe loader's view (None for a trusted module)
    key_map: dict[str, str] = field(default_factory=dict)  # model state-dict key -> checkpoint key
    training_as_loaded: dict[str, bool] = field(default_factory=dict)  # BN name -> its flag
    notes: list[str] = field(default_factory=list)
    trust: bool = False  # the user passed --trust: a re-save of the file may load it as torch.load does


class DataSource:
    """Inputs as a sequence of samples, read one batch at a time."""

    description: str = ""
    synthetic: bool = False
    _shape: tuple[int, ...] = ()  # (samples, *sample_shape)

    def __len__(self) -> int:
        return self._shape[0]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample (the data's shape without its first dimension)."""
        return self._shape[1:]

    def batch(self, start: int, stop: int) -> torch.Tensor:
        """Samples ``start:stop`` as a tensor (a copy; the source is never written)."""
        raise NotImplementedError
