"""A live model's BatchNorm modules, their train/eval modes, and what goes in and comes out of it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# Every BatchNorm flavour that keeps running statistics derives from _BatchNorm (BatchNorm1d/2d/3d,
# SyncBatchNorm, the lazy variants); TorchScript keeps the class name in ``original_name``.
BN_CLASS_NAMES = frozenset({"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm"})


def bn_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The BatchNorm modules with running statistics, by module path (eager or TorchScript)."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.track_running_stats and module.running_mean is not None:
                found.append((name, module))
        elif getattr(module, "original_name", None) in BN_CLASS_NAMES and hasattr(module, "running_mean"):
            found.append((name, module))
    return found


def input_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype the model computes in (its first floating parameter or buffer)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def output_tensor(out: Any) -> torch.Tensor | None:
    """The tensor to compare from a model's output: itself, the first of a tuple, or a logits entry."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for item in out:
            if isinstance(item, torch.Tensor):
                return item
    if isinstance(out, dict):
        for name in ("logits", "out", "output"):
            if isinstance(out.get(name), torch.Tensor):
                return out[name]
        for item in out.values():
            if isinstance(item, torch.Tensor):
                return item
    return None


class ModelState:
    """Snapshot of every module's training flag and every buffer; :meth:`restore` puts them back.

    Train-mode passes update running statistics and ``num_batches_tracked``; measurements set
    modes per module. The caller restores in ``finally`` so the model is never left modified.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.flags = [(m, m.training) for m in model.modules()]
        # By owner and name, not by tensor: model.to(device) replaces buffer tensors.
        self.buffers = [(m, name, b.detach().clone()) for m in model.modules()
                        for name, b in m.named_buffers(recurse=False) if b is not None]

    def restore(self) -> None:
        """Put back the flags and buffer values captured at construction."""
        for module, flag in self.flags:
            module.training = flag
        self.restore_buffers()

    def restore_buffers(self) -> None:
        """Put back the buffer values only (after a train-mode forward moved the running statistics)."""
        with torch.no_grad():
            for module, name, saved in self.buffers:
                buf = getattr(module, name)
                buf.copy_(saved.to(buf.device))


def set_bn_mode(model: nn.Module, bn_train: bool) -> None:
    """Every module in eval mode (no dropout noise), BN layers in train mode when ``bn_train``."""
    for module in model.modules():
        module.training = False
    if bn_train:
        for _, module in bn_modules(model):
            module.training = True
