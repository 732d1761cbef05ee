"""Finding the state dict inside a nested checkpoint, and the wrapper prefix on its keys.

Training frameworks wrap the weights: Lightning saves ``{"state_dict": ..., "optimizer_states":
..., "callbacks": ...}``, timm adds ``state_dict_ema``, many scripts save ``{"model": ...,
"epoch": ...}``, YOLO-style detectors pickle whole models under ``model`` and ``ema``. A
candidate is any dict reached through string keys whose values include tensors, or a module
(TorchScript, pickled, trusted-loaded). The main one is the largest non-EMA candidate, except
among pickled models, where the EMA model is what a deployment loads; the others are listed
as alternatives the user can pick with ``--key``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from bninspect.checkpoint import Checkpoint, ModuleInfo, ModuleNode, TensorRef
from bninspect.errors import InvalidFileError, NoStateDictError, UsageError
from bninspect.formats import pymodules
from bninspect.formats.unpickler import Opaque
from bninspect.textfmt import visible

# Where frameworks put the weights (Lightning, timm, torchvision references, DeepSpeed-style scripts).
KNOWN_KEYS = ("state_dict", "model_state_dict", "model", "net", "module", "state_dict_ema", "model_ema", "ema")
EMA_KEYS = frozenset({"state_dict_ema", "model_ema", "ema", "ema_state_dict", "model_ema_state_dict"})

# Wrapper prefixes: DataParallel/DDP ("module."), torch.compile ("_orig_mod."), Lightning ("model.").
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")

# Nesting deeper than this is not a real checkpoint; stop walking rather than exhaust memory.
MAX_DEPTH = 64
MAX_NODES = 200_000


@dataclass
class _Candidate:
    path: str
    tensors: dict[str, TensorRef]
    modules: dict[str, ModuleInfo]
    depth: int
    not_tensors: dict[str, str] = field(default_factory=dict)  # Checkpoint.not_tensors
    node: ModuleNode | None = None  # where the candidate is a module
    pickled: bool = False  # a pickled nn.Module read statically

    @property
    def is_ema(self) -> bool:
        last = self.path.rsplit("/", 1)[-1].lower()
        return last in EMA_KEYS or last.endswith("_ema") or last.startswith("ema_")


def _as_candidate(node: Any, path: str, depth: int, file: str) -> _Candidate | None:
    if pymodules.is_module(node):
        found = pymodules.module_node(node, file)
        return _Candidate(path, found.tensors, found.modules, depth, node=found, pickled=True)
    if isinstance(node, ModuleNode):
        return _Candidate(path, node.tensors, node.modules, depth, node=node)
    if isinstance(node, dict):
        tensors = {k: v for k, v in node.items() if isinstance(k, str) and isinstance(v, TensorRef)}
        if tensors:
            # Kept so that discovery can say what is wrong with such a layer instead of losing it.
            odd = {k: describe_value(v) for k, v in node.items() if len(tensors) < len(node) and isinstance(k, str)
                   and not isinstance(v, TensorRef) and k.rpartition(".")[2] in _BN_TENSOR_NAMES}
            return _Candidate(path, tensors, {}, depth, odd)
    return None


_BN_TENSOR_NAMES = frozenset({"weight", "bias", "running_mean", "running_var", "num_batches_tracked"})


def describe_value(value: Any) -> str:
    """A value found where a tensor belongs, in a few words ("a list of 32 numbers")."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):  # no str() of a huge int: Python refuses over 4300 digits
        return f"the Python int {value}" if value.bit_length() <= 64 else f"a Python int of {value.bit_length()} bits"
    if isinstance(value, float):
        return f"the Python float {value:g}"
    if isinstance(value, str):
        return f"the string {visible(value[:20])!r}" + ("…" if len(value) > 20 else "")
    if isinstance(value, (list, tuple)):
        kind = type(value).__name__
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        return f"a {kind} of {len(value)} {'numbers' if numbers else 'items'}" if value else f"an empty {kind}"
    if isinstance(value, dict):
        return f"a dict of {len(value)} entries"
    if isinstance(value, Opaque):
        return f"an object of class {visible(type(value).qualname)}"
    return f"a {type(value).__name__}"


def _walk(root: Any, file: str) -> tuple[list[_Candidate], bool]:
    """Breadth-first over dicts (string keys only), iteratively, without recursion.

    Returns the candidates and whether the search was cut short (too deep or too many nodes).
    """
    candidates: list[_Candidate] = []
    cut = False
    queue: deque[tuple[str, Any, int]] = deque([("", root, 0)])
    seen: set[int] = set()
    visited = 0
    while queue:
        path, node, depth = queue.popleft()
        if id(node) in seen:
            continue
        seen.add(id(node))
        visited += 1
        if visited > MAX_NODES:
            cut = True
            break
        cand = _as_candidate(node, path, depth, file)
        if cand is not None:
            candidates.append(cand)
        # Nested dicts are among the values that are not tensors: a state dict has none to look at.
        if isinstance(node, dict) and (cand is None or len(cand.tensors) < len(node)):
            for k, v in node.items():
                if isinstance(k, str) and (isinstance(v, (dict, ModuleNode)) or pymodules.is_module(v)):
                    if depth >= MAX_DEPTH:
                        cut = True
                        break
                    queue.append((f"{path}/{k}" if path else k, v, depth + 1))
    return candidates, cut


def _known(c: _Candidate) -> bool:
    return all(part in KNOWN_KEYS for part in c.path.split("/")) if c.path else True


def _main_first(candidates: list[_Candidate]) -> list[_Candidate]:
    """Candidates with the main one first: non-EMA before EMA, then the larger.

    Where some sit under known keys (``state_dict``, ``model``, ...) only those count: a
    Lightning callback's ``best_model_score`` tensor is not a state dict. Otherwise (unknown
    wrappers such as ``generator``/``discriminator``) every tensor dict is a candidate.
    Pickled models are the exception to EMA last: YOLO-style checkpoints hold ``model`` and
    ``ema``, and their loaders deploy the EMA one (ultralytics' ``attempt_load_one_weight``
    takes ``ckpt.get("ema") or ckpt["model"]``), so that is the one shown.
    """
    known = [c for c in candidates if _known(c)]

    def rank(c: _Candidate) -> tuple[int, int, int]:
        ema_last = (0 if c.is_ema else 1) if c.pickled else (1 if c.is_ema else 0)
        return ema_last, -len(c.tensors), c.depth

    return sorted(known or candidates, key=rank)


def common_prefix(keys: list[str]) -> str:
    """The stacked wrapper prefix every key shares (``module._orig_mod.``), or ""."""
    prefix = ""
    if not keys:
        return prefix
    changed = True
    while changed:
        changed = False
        for p in WRAPPER_PREFIXES:
            full = prefix + p
            # A key equal to the prefix alone would leave nothing: only strip when all keep a name.
            if all(k.startswith(full) and len(k) > len(full) for k in keys):
                prefix = full
                changed = True
                break
    return prefix


def build_checkpoint(root: Any, *, path: str, format: str, key: str | None,
                     notes: list[str] | None = None) -> Checkpoint:
    """Pick the state dict inside ``root`` (``key`` chooses one) and make the Checkpoint.

    Non-tensor values are ignored. An unknown ``key`` is a usage error listing the candidates;
    a file with no tensors at all is not a checkpoint (NoStateDictError, an InvalidFileError).
    """
    found, cut = _walk(root, path)
    ordered = _main_first(found)
    if key is not None:
        wanted = key.strip("/")
        chosen = next((c for c in ordered if c.path == wanted), None)
        if chosen is None:
            available = ", ".join(repr(c.path or "/") for c in ordered) or "none"
            raise UsageError(f"no state dict at --key {key!r}; available: {available}", path=path)
    else:
        if not ordered and cut:
            # Saying "no state dict" would be a guess: one may sit below where the search stopped.
            raise InvalidFileError(f"its containers are nested more than {MAX_DEPTH} levels deep (or hold more than "
                                   f"{MAX_NODES} dicts); bninspect does not search that far for a state dict", path=path)
        if not ordered:
            raise NoStateDictError(f"holds no state dict: {_shape_of(root)}", path=path)
        chosen = ordered[0]
    tensors = chosen.tensors
    node = chosen.node
    notes = list(notes or [])
    if chosen.pickled and node is not None:
        notes.append(f"read statically from a pickled model of class {node.class_name}: eps, momentum and mode "
                     "come from its modules")
        if node.bn_by_state:
            shown = ", ".join(node.bn_by_state[:3]) + (f" and {len(node.bn_by_state) - 3} more" if len(node.bn_by_state) > 3 else "")
            notes.append(f"BatchNorm recognised by its state (BatchNorm's attributes and running statistics in a "
                         f"class named otherwise): {shown}")
    return Checkpoint(
        path=path,
        format=format,
        tensors=tensors,
        container=chosen.path,
        alternatives=[c.path for c in ordered if c is not chosen],
        prefix=node.prefix if node is not None and node.prefix is not None else common_prefix(list(tensors)),
        modules=chosen.modules,
        notes=notes,
        not_tensors=chosen.not_tensors,
    )


def _shape_of(root: Any) -> str:
    if isinstance(root, dict):
        # Keys come from the file: only strings are shown, shortened with a note of how much (a
        # string key may be megabytes long; a tuple key nested a million deep is not even repr'd).
        names = [repr(visible(k, 80)) if isinstance(k, str) else f"<a {type(k).__name__}>" for k in list(root)[:6]]
        more = f", ... ({len(root)} in all)" if len(root) > 6 else ""
        return f"a dict with keys {', '.join(names)}{more}" if names else "an empty dict"
    if isinstance(root, TensorRef):
        return f"a single tensor of shape {list(root.shape)}, not a state dict"
    if isinstance(root, (list, tuple)):
        return f"a {type(root).__name__} of {len(root)} items, not a dict of tensors"
    if isinstance(root, Opaque):
        return f"an object of class {visible(type(root).qualname)} (read as data), not a dict of tensors or a model"
    return f"a {type(root).__name__}, not a dict of tensors"
