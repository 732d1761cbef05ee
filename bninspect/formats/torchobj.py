"""Objects torch has already loaded or built (trusted loads, live modules) turned into our terms.

Only the trusted reader and ``formats.live`` import this module, and torch is imported by then.
Tensors become TensorRefs (values converted on first use), ``nn.Module``s become a
:class:`~bninspect.checkpoint.ModuleNode` with the module facts a state dict lacks.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from bninspect.checkpoint import MODULE_ATTRIBUTES, ModuleInfo, ModuleNode, TensorRef, is_simple_fact
from bninspect.errors import InvalidFileError
from bninspect.formats.containers import MAX_DEPTH
from bninspect.formats.paths import Budget



def tensor_ref(tensor: Any, path: str, budget: Budget) -> TensorRef:
    """A TensorRef over a loaded torch tensor; numpy values are made only when asked for. A
    view that claims more elements than its storage holds (stride 0) is charged to ``budget``,
    the file's, as the static reader charges it (torchzip.MAX_EXPANDED_BYTES)."""
    import torch

    from bninspect.formats.torchzip import MAX_EXPANDED_BYTES

    dtype = str(tensor.dtype).replace("torch.", "")

    def load() -> np.ndarray:
        t = tensor.detach()
        if t.is_quantized or t.layout != torch.strided or t.device.type == "meta":
            raise InvalidFileError(f"a {dtype} tensor here is quantized, sparse or has no data; bninspect cannot read it", path=path)
        size = t.numel() * t.element_size()
        if size > t.untyped_storage().nbytes() and not budget.charge(
                "expanded", t.numel() * (t.element_size() + 8), MAX_EXPANDED_BYTES):
            raise InvalidFileError(f"a tensor of shape {list(t.shape)} expands its storage; with the file's other "
                                   f"expanded tensors that is more than {MAX_EXPANDED_BYTES >> 20} MiB, which bninspect "
                                   "does not materialise", path=path)
        t = t.cpu()
        if t.dtype == torch.bfloat16:
            return t.float().numpy()
        try:
            return t.numpy().copy()
        except TypeError:
            raise InvalidFileError(f"{dtype} tensors cannot be read by bninspect", path=path) from None

    return TensorRef(tuple(tensor.shape), dtype, load)


def module_node(module: Any, path: str, budget: Budget | None = None) -> ModuleNode:
    """A ModuleNode from an ``nn.Module`` (or TorchScript module): state dict and per-module facts."""
    budget = budget or Budget()
    tensors = {k: tensor_ref(v, path, budget) for k, v in module.state_dict().items()}
    modules: dict[str, ModuleInfo] = {}
    for name, sub in module.named_modules():
        attributes = {}
        for attr in MODULE_ATTRIBUTES:
            if hasattr(sub, attr):
                value = getattr(sub, attr)
                if is_simple_fact(value):
                    attributes[attr] = value
        type_name = getattr(sub, "original_name", None) or type(sub).__name__
        modules[name] = ModuleInfo(path=name, type_name=str(type_name), attributes=attributes)
    return ModuleNode(tensors=tensors, modules=modules)


def to_tree(obj: Any, path: str) -> Any:
    """Copy the dict structure of a loaded object, with tensors and modules converted. Iterative."""
    import torch

    budget = Budget()  # one per file

    def convert(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return tensor_ref(value, path, budget)
        if isinstance(value, torch.nn.Module):
            return module_node(value, path, budget)
        return value

    root = convert(obj)
    if not isinstance(obj, dict):
        return root
    root = {}
    queue: deque[tuple[dict, dict, int]] = deque([(obj, root, 0)])
    seen: set[int] = set()
    while queue:
        src, dst, depth = queue.popleft()
        if id(src) in seen:
            continue
        seen.add(id(src))
        for k, v in src.items():
            if isinstance(v, dict):
                if depth < MAX_DEPTH:
                    dst[k] = {}
                    queue.append((v, dst[k], depth + 1))
            else:
                dst[k] = convert(v)
    return root
