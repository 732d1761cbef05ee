"""Running a real model on real data: build the model, load the checkpoint into it, feed it batches.

The model comes from one of two places:

- ``--arch module.path:callable``: the callable is imported from the user's environment and
  called (with ``--arch-kwargs`` as keyword arguments); the checkpoint's state dict, read by the
  safe loader (nothing from the file runs), is loaded into it strictly.
- The file itself (TorchScript archive or a full pickled module): only with ``--trust``, through
  :func:`bninspect.formats.trusted.load_module`, because running such a model runs its code.

Data comes from a tensor file (.pt read with ``weights_only=True``, .npy without pickle,
.safetensors) or from seeded synthetic input; both hand out one batch at a time, so memory is
bounded by the batch size, not the data size.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from bninspect.checkpoint import Checkpoint
from bninspect.errors import InvalidFileError, UnsafeFileError, UsageError

# Wrappers that prefix every key of a saved state dict: nn.DataParallel / DistributedDataParallel
# ("module."), torch.compile's OptimizedModule ("_orig_mod."), a LightningModule holding the
# network as self.model ("model.").
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")

# How many keys an error message lists before it says how many there are in all.
_SHOWN_KEYS = 4

# Every BatchNorm flavour that keeps running statistics derives from _BatchNorm (BatchNorm1d/2d/3d,
# SyncBatchNorm, the lazy variants); TorchScript keeps the class name in ``original_name``.
BN_CLASS_NAMES = frozenset({"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm"})


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


# ── building the model ──────────────────────────────────────────────────────────────────────


@contextlib.contextmanager
def _cwd_on_path() -> Iterator[None]:
    # Like `python -m`, the current directory comes first on sys.path while the user's module is
    # imported, so `--arch mynets:build` finds ./mynets.py; the installed console script would not.
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def import_callable(spec: str) -> Callable[..., Any]:
    """The callable named by ``module.path:attr.path``; usage errors for every way that fails."""
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise UsageError(f"--arch must look like module.path:callable (e.g. torchvision.models:resnet18), not '{spec}'")
    with _cwd_on_path():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            missing = exc.name or module_name
            where = "" if missing == module_name else f" (it needs '{missing}', which is not installed)"
            raise UsageError(
                f"--arch: cannot import module '{module_name}'{where}; looked in the current directory and the Python path"
            ) from None
        except Exception as exc:  # the user's module failed while importing: their code, our words
            raise UsageError(f"--arch: importing module '{module_name}' failed ({type(exc).__name__})") from exc
    obj: Any = module
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"--arch: module '{module_name}' has no attribute '{attr_path}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(f"--arch: '{spec}' is not callable")
    return obj


def parse_kwargs(text: str | None) -> dict[str, Any]:
    """``--arch-kwargs`` as a dict: a JSON object, or a usage error."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--arch-kwargs is not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(value, dict):
        raise UsageError("--arch-kwargs must be a JSON object, e.g. '{\"num_classes\": 10}'")
    return value


def build_arch(spec: str, kwargs_json: str | None = None) -> nn.Module:
    """Import and call the ``--arch`` builder; it must return an ``nn.Module``."""
    builder = import_callable(spec)
    kwargs = parse_kwargs(kwargs_json)
    try:
        model = builder(**kwargs)
    except Exception as exc:
        raise UsageError(
            f"--arch: calling {spec}({', '.join(f'{k}=...' for k in kwargs)}) failed ({type(exc).__name__}); "
            "check --arch-kwargs (rerun with --debug for its own error)"
        ) from exc
    if not isinstance(model, nn.Module):
        raise UsageError(f"--arch: {spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > _SHOWN_KEYS else ''})"


def _strip(key: str, prefix: str) -> str:
    return key[len(prefix):] if prefix and key.startswith(prefix) else key


def match_keys(model_keys: list[str], checkpoint_keys: list[str], hint: str = "") -> tuple[dict[str, str], str]:
    """Map model keys to checkpoint keys, stripping the wrapper prefix that fits best.

    Tries no prefix, the loader's ``hint`` and every chain of :data:`WRAPPER_PREFIXES`
    (``module._orig_mod.`` too) and keeps the one that matches the most model keys.
    Returns ``(model key -> checkpoint key, prefix used)``.
    """
    candidates = [""]
    if hint:
        candidates.append(hint)
    frontier = [""]
    for _ in range(3):  # wrappers nest rarely deeper than two (DDP around torch.compile)
        frontier = [p + w for p in frontier for w in WRAPPER_PREFIXES]
        candidates.extend(frontier)
    wanted = set(model_keys)
    best: tuple[int, str] = (-1, "")
    for prefix in dict.fromkeys(candidates):
        hits = sum(1 for k in checkpoint_keys if k.startswith(prefix) and k[len(prefix):] in wanted)
        if hits > best[0]:
            best = (hits, prefix)
    prefix = best[1]
    mapping = {}
    for key in checkpoint_keys:
        if key.startswith(prefix) and key[len(prefix):] in wanted:
            mapping[key[len(prefix):]] = key
    return mapping, prefix


def load_checkpoint_into(model: nn.Module, checkpoint: Checkpoint) -> tuple[dict[str, str], list[str]]:
    """Load the checkpoint's state dict into ``model`` strictly; returns (key map, notes).

    A missing ``num_batches_tracked`` is tolerated (older PyTorch did not save it; BN's own
    loader fills it the same way); every other missing or unexpected key, and every shape
    mismatch, is a usage error naming the first few keys and the count.
    """
    target = model.state_dict()
    mapping, prefix = match_keys(list(target), list(checkpoint.tensors), checkpoint.prefix)
    notes = []
    if prefix:
        notes.append(f"checkpoint keys carry the wrapper prefix '{prefix}'; matched to the model without it")
    used = set(mapping.values())
    unexpected = [k for k in checkpoint.tensors if k not in used]
    missing = [k for k in target if k not in mapping]
    tolerated = [k for k in missing if k.endswith("num_batches_tracked")]
    missing = [k for k in missing if k not in tolerated]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing from the checkpoint: {_listing(missing)}")
        if unexpected:
            parts.append(f"not in the model: {_listing([_strip(k, prefix) for k in unexpected])}")
        raise UsageError(
            "the checkpoint's state dict does not fit --arch: " + "; ".join(parts), path=checkpoint.path
        )
    wrong = []
    for mkey, ckey in mapping.items():
        ref = checkpoint.tensors[ckey]
        if tuple(ref.shape) != tuple(target[mkey].shape):
            wrong.append(f"{mkey} {list(ref.shape)} vs model {list(target[mkey].shape)}")
    if wrong:
        raise UsageError(f"the checkpoint's state dict does not fit --arch: shapes differ for {_listing(wrong)}",
                         path=checkpoint.path)
    state = {mkey: tensor_of(checkpoint.tensors[ckey].numpy()) for mkey, ckey in mapping.items()}
    if tolerated:
        notes.append(f"{len(tolerated)} num_batches_tracked missing from the checkpoint; the model's own kept")
        for key in tolerated:
            state[key] = target[key]
    # strict: every key is accounted for above, so torch's own message can never be the one shown
    model.load_state_dict(state, strict=True)
    return mapping, notes


def tensor_of(array: np.ndarray) -> torch.Tensor:
    """A torch tensor owning a copy of ``array`` (stored arrays may be read-only memory maps)."""
    return torch.from_numpy(np.array(array, copy=True))


Probe = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def script_probe(model: torch.jit.ScriptModule) -> tuple[Probe, list[str]] | None:
    """A function returning each BN layer's input for a TorchScript model (which takes no hooks).

    TorchScript modules refuse Python forward hooks, so the module's inlined graph is copied and
    every ``aten::batch_norm`` input is added to its outputs; the copy runs against the same
    module object, so it reads the current training flags and buffers. Returns (probe, BN names
    in graph order), or None when the graph does not have the plain shape this relies on.
    """
    try:
        graph = model.inlined_graph
        self_value = next(iter(graph.inputs()))

        def module_path(value) -> str | None:
            parts = []
            while value is not self_value:
                node = value.node()
                if node.kind() != "prim::GetAttr":
                    return None
                parts.append(node.s("name"))
                value = next(iter(node.inputs()))
            return ".".join(reversed(parts[1:]))  # parts[0] is the buffer's own name

        known = {name for name, _ in bn_modules(model)}
        names, values = [], []
        for node in graph.findAllNodes("aten::batch_norm"):
            inputs = list(node.inputs())
            name = module_path(inputs[3])  # running_mean, read from the module that owns it
            top_level = inputs[0].node().owningBlock() == graph.return_node().owningBlock()
            if name in known and name not in names and top_level:
                names.append(name)
                values.append(inputs[0])
        if not names:
            return None
        ret = graph.return_node()
        outputs = list(ret.inputs())
        # A method returns one value: pack the original output(s) and the BN inputs in a tuple.
        pack = graph.create("prim::TupleConstruct", outputs + values)
        pack.output().setType(torch._C.TupleType([v.type() for v in outputs + values]))
        pack.insertBefore(ret)
        while list(graph.outputs()):
            graph.eraseOutput(0)
        graph.registerOutput(pack.output())
        function = torch._C._create_function_from_graph("bninspect_drift_probe", graph)
    except Exception:  # a graph shape we do not know: the caller measures the output only
        return None
    count = len(outputs)

    def probe(x: torch.Tensor) -> dict[str, torch.Tensor]:
        result = function(model._c, x)
        return dict(zip(names, result[count:]))

    return probe, names


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


def _saved_bn_modes(model: nn.Module, checkpoint: Checkpoint, key_map: dict[str, str]) -> dict[str, bool]:
    """BN name -> training flag, where the file records its modules' modes (TorchScript read statically)."""
    flags = {}
    for name, _ in bn_modules(model):
        key = key_map.get(f"{name}.running_mean" if name else "running_mean", "")
        info = checkpoint.modules.get(key.rsplit(".", 1)[0] if "." in key else "")
        if info is not None and isinstance(info.attributes.get("training"), bool):
            flags[name] = info.attributes["training"]
    return flags


def load_model(path: str, *, arch: str | None, arch_kwargs: str | None, trust: bool, key: str | None) -> LoadedModel:
    """The model to run: ``--arch`` plus the safely read state dict, or the file's own module with ``--trust``."""
    from bninspect.formats import open_checkpoint

    if arch:
        checkpoint = open_checkpoint(path, key=key)
        model = build_arch(arch, arch_kwargs)
        key_map, notes = load_checkpoint_into(model, checkpoint)
        model.eval()
        flags = _saved_bn_modes(model, checkpoint, key_map)
        if not flags:
            notes.insert(0, "a state dict has no train/eval mode: the model runs in eval mode as built by --arch")
        return LoadedModel(model=model, source="arch", description=arch, checkpoint=checkpoint,
                           key_map=key_map, training_as_loaded=flags, notes=notes)
    if not trust:
        raise UnsafeFileError(
            "drift runs the model: give its architecture with --arch module:callable (the state dict is then read "
            "safely), or pass --trust to run the TorchScript/pickled module in the file (this runs code from it)",
            path=path,
        )
    from bninspect.formats.trusted import load_module

    model = load_module(path, trust=True)
    source = "torchscript" if isinstance(model, torch.jit.ScriptModule) else "pickled-module"
    loaded = LoadedModel(model=model, source=source,
                         description="TorchScript archive" if source == "torchscript" else "pickled nn.Module")
    loaded.training_as_loaded = {name: bool(m.training) for name, m in bn_modules(model)}
    return loaded


# ── data ────────────────────────────────────────────────────────────────────────────────────

# Names a tensor file's inputs commonly go by when it holds more than one tensor.
_INPUT_NAMES = ("x", "inputs", "input", "images", "data", "calib", "samples")


class DataSource:
    """Inputs as a sequence of samples, read one batch at a time."""

    description: str = ""
    synthetic: bool = False
    _shape: tuple[int, ...] = ()  # (samples, *sample_shape)

    def __len__(self) -> int:
        return self._shape[0]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self._shape[1:]

    def batch(self, start: int, stop: int) -> torch.Tensor:
        """Samples ``start:stop`` as a tensor (a copy; the source is never written)."""
        raise NotImplementedError


class _ArraySource(DataSource):
    # A torch tensor (mmap-backed for .pt zips), a numpy memmap (.npy) or a safetensors slice.
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


def _pick(found: dict[str, Any], path: str) -> Any:
    if len(found) == 1:
        return next(iter(found.values()))
    for name in _INPUT_NAMES:
        if name in found:
            return found[name]
    raise UsageError(
        f"--data holds {len(found)} tensors ({', '.join(list(found)[:5])}); "
        f"save one tensor of inputs or name it one of {', '.join(_INPUT_NAMES)}",
        path=path,
    )


def _check_inputs(shape: tuple[int, ...], dtype: str, path: str) -> None:
    if len(shape) < 1 or shape[0] == 0:
        raise InvalidFileError("--data holds no samples (the first dimension counts samples)", path=path)
    if len(shape) < 2:
        raise InvalidFileError(f"--data is a 1-d tensor {list(shape)}; the first dimension counts samples, "
                               "so each sample needs at least one more", path=path)
    if dtype.startswith("complex") or dtype == "bool":
        raise InvalidFileError(f"--data has dtype {dtype}; models take real numbers", path=path)


def open_data(path: str) -> DataSource:
    """A tensor file of inputs (first dimension = samples), opened without running code from it.

    Read through ``formats.arrays`` (the bounded readers checkpoints use), a batch of rows at a
    time. A sequence (``(inputs, labels)``, the usual dataset dump) gives its first tensor; a
    dict or safetensors file its only tensor, or the one named like inputs (``_INPUT_NAMES``).
    """
    from bninspect.formats.arrays import open_arrays

    found = open_arrays(path, "a data file")
    if not found.arrays:
        raise InvalidFileError(f"--data: the file holds {found.holds}, not a tensor of inputs", path=path)
    if found.layout == "sequence":
        array = next(iter(found.arrays.values()))
    else:
        array = _pick(found.arrays, path)
    _check_inputs(array.shape, array.dtype, path)
    kind = {"npy": ".npy", "pt": "torch", "safetensors": "safetensors"}[found.format]
    name = next(k for k, v in found.arrays.items() if v is array)
    label = f" '{name}'" if found.layout == "dict" else ""
    return _ArraySource(lambda a, b: tensor_of(array.rows(a, b)), array.shape,
                        f"{os.path.basename(path)} ({kind}{label} {array.dtype} {list(array.shape)})")


def batches(source: DataSource, size: int) -> Iterator[torch.Tensor]:
    """The source's samples in consecutive batches of ``size`` (the last one may be smaller)."""
    for start in range(0, len(source), size):
        yield source.batch(start, min(start + size, len(source)))


# ── running ─────────────────────────────────────────────────────────────────────────────────


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
