"""Pickled ``nn.Module``s read as data: ``torch.save(model)``, YOLO-style ``{"model": <Model>}`` files.

A pickled module is an object whose state (what ``BUILD`` gave it, the module's ``__dict__``)
has ``_parameters``, ``_buffers`` and ``_modules`` dicts and a ``training`` flag: that is how
it is recognised, whatever its class is called and without importing it. From there the
module tree gives what a state dict lacks:

- the tensors under their state-dict keys, in ``_modules`` order (definition order, as
  ``state_dict()`` lists them), parameters then persistent buffers of each module;
- per module its class name and plain attributes (eps, momentum, affine,
  track_running_stats, training, a conv's groups and transposed flag ...);
- which modules are BatchNorm: by class name (``BatchNorm2d``, ``SyncBatchNorm``,
  ``FrozenBatchNorm2d`` ...) or, for a subclass named otherwise, by its state: the attributes
  of torch's ``_NormBase`` (num_features, eps, momentum, affine, track_running_stats) with
  running statistics, in a class not named like another norm.
"""

from __future__ import annotations

import re
from typing import Any

from bninspect.checkpoint import MODULE_ATTRIBUTES, ModuleInfo, ModuleNode, TensorRef, is_simple_fact
from bninspect.errors import InvalidFileError
from bninspect.formats.unpickler import Opaque

MODULE_STATE = ("_parameters", "_buffers", "_modules")
_NORM_BASE = ("num_features", "eps", "momentum", "affine", "track_running_stats")
BN_CLASS = re.compile(r"^(Lazy)?BatchNorm([123]d)?$|^SyncBatchNorm$|^FrozenBatchNorm2d$")
_OTHER_NORM_CLASS = re.compile(r"InstanceNorm|GroupNorm|LayerNorm|RMSNorm|LocalResponseNorm")
# Wrappers whose only child holds the model, by class: their attribute names are prefixes to strip.
WRAPPERS = {
    "torch.nn.parallel.data_parallel.DataParallel": "module",
    "torch.nn.parallel.distributed.DistributedDataParallel": "module",
    "torch._dynamo.eval_frame.OptimizedModule": "_orig_mod",
}

# A real model nests modules a few dozen levels at most; a deeper chain (or a path this long)
# is built to cost quadratic time and memory in the paths.
MAX_DEPTH = 256
MAX_PATH = 4096
MAX_MODULES = 1_000_000


def is_module(obj: Any) -> bool:
    """Whether ``obj`` is a pickled nn.Module: its state has the module dicts and a training flag."""
    if not isinstance(obj, Opaque):
        return False
    state = obj.state
    return (isinstance(state, dict) and isinstance(state.get("training"), bool)
            and all(isinstance(state.get(k), dict) for k in MODULE_STATE))


def class_name(obj: Opaque) -> str:
    """The module's class name without its module path ("BatchNorm2d", "Conv")."""
    return type(obj).attr.rpartition(".")[2] or type(obj).qualname


def bn_evidence(obj: Opaque, state: dict[str, Any]) -> str:
    """How a module is known to be a BatchNorm: "class" (its name), "state" (its attributes), or ""."""
    name = class_name(obj)
    if BN_CLASS.match(name):
        return "class"
    buffers = state.get("_buffers", {})
    if (all(k in state for k in _NORM_BASE) and isinstance(buffers.get("running_mean"), TensorRef)
            and isinstance(buffers.get("running_var"), TensorRef) and not _OTHER_NORM_CLASS.search(name)):
        return "state"
    return ""


def module_node(root: Opaque, path: str) -> ModuleNode:
    """The state-dict tensors and module facts of a pickled module tree. Iterative, each module
    once (a module reachable twice is listed under its first path), bounded in depth and size."""
    tensors: dict[str, TensorRef] = {}
    modules: dict[str, ModuleInfo] = {}
    by_state: list[str] = []
    seen: set[int] = set()
    stack: list[tuple[str, Opaque, int]] = [("", root, 0)]
    while stack:
        prefix, mod, depth = stack.pop()
        if id(mod) in seen:
            continue
        seen.add(id(mod))
        if len(seen) > MAX_MODULES:
            raise InvalidFileError(f"the pickled model has more than {MAX_MODULES} modules; bninspect stops there", path=path)
        state: dict[str, Any] = mod.state  # type: ignore[assignment]
        dot = f"{prefix}." if prefix else ""
        skip = state.get("_non_persistent_buffers_set")
        hidden = skip if isinstance(skip, (set, frozenset)) else ()
        for group, kept in (("_parameters", ()), ("_buffers", hidden)):
            for name, value in state[group].items():
                if isinstance(name, str) and isinstance(value, TensorRef) and name not in kept:
                    tensors[dot + name] = value
        attributes = {a: state[a] for a in MODULE_ATTRIBUTES if a in state and is_simple_fact(state[a])}
        evidence = bn_evidence(mod, state)
        if evidence == "state":
            by_state.append(f"{prefix or '(root)'} ({type(mod).qualname})")
        modules[prefix] = ModuleInfo(path=prefix, type_name=class_name(mod), attributes=attributes, bn=evidence)
        children = []
        for name, child in state["_modules"].items():
            if not (isinstance(name, str) and is_module(child)):
                continue
            child_path = dot + name
            if depth + 1 > MAX_DEPTH or len(child_path) > MAX_PATH:
                raise InvalidFileError(f"the pickled model nests modules more than {MAX_DEPTH} deep or names them with "
                                       f"paths over {MAX_PATH} characters; bninspect does not read it", path=path)
            children.append((child_path, child, depth + 1))
        stack.extend(reversed(children))
    return ModuleNode(tensors=tensors, modules=modules, prefix=_wrapper_prefix(root), class_name=type(root).qualname,
                      bn_by_state=by_state)


def _wrapper_prefix(root: Opaque) -> str:
    """"module." for a DataParallel-wrapped model and so on, stacked; "" for a plain model."""
    prefix = ""
    node: Any = root
    while is_module(node) and type(node).qualname in WRAPPERS and len(prefix) < MAX_PATH:
        attr = WRAPPERS[type(node).qualname]
        child = node.state["_modules"].get(attr)
        if not is_module(child):
            break
        prefix += attr + "."
        node = child
    return prefix
