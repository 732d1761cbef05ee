"""A ``torch.nn.Module`` in memory, read as a checkpoint: the Python API's ``bninspect.load(model)``.

A live module is the ground truth a file only approximates: its classes, eps, momentum, affine,
track_running_stats and training flags are the module's own, and ``named_modules`` gives the
definition order that producers are matched by. Reading it changes nothing on the model: only
``state_dict()`` (detached references) and plain attributes are read, and tensor values are
copied to numpy when a layer's numbers are asked for.
"""

from __future__ import annotations

from typing import Any

from bninspect.checkpoint import Checkpoint


def is_module(obj: Any) -> bool:
    """Whether ``obj`` is a ``torch.nn.Module`` (or a TorchScript module); never imports torch
    (a module object exists only where torch is imported already)."""
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def name_of(model: Any) -> str:
    """How results name a live module where they name a file: ``<ResNet in memory>``."""
    cls = getattr(model, "original_name", None) or type(model).__name__
    return f"<{cls} in memory>"


def read(model: Any) -> Checkpoint:
    """The Checkpoint of a live module: its state dict (module paths as keys) and module facts."""
    from bninspect.formats.containers import build_checkpoint
    from bninspect.formats.torchobj import module_node

    name = name_of(model)
    node = module_node(model, name)
    node.class_name = f"{type(model).__module__}.{type(model).__qualname__}"
    return build_checkpoint(node, path=name, format="live-module", key=None,
                            notes=[f"a live {node.class_name} in memory: eps, momentum and mode are the modules' own"])
