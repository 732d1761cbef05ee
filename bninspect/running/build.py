"""The model to run: built by the user's ``--arch`` callable, or the file's own module with ``--trust``.

- ``--arch module.path:callable``: the callable is imported from the user's environment and
  called (with ``--arch-kwargs`` as keyword arguments); the checkpoint, read by
  ``formats.open_checkpoint`` (nothing from the file runs unless ``--trust``), is loaded into it
  strictly (``running.weights``).
- The file itself (TorchScript archive or a full pickled module): only with ``--trust``, through
  :func:`bninspect.formats.trusted.load_module`, because running such a model runs its code.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
from typing import Any, Callable, Iterator

import torch
from torch import nn

from bninspect.errors import UnsafeFileError, UsageError
from bninspect.running.interface import LoadedModel
from bninspect.running.modules import bn_modules
from bninspect.running.weights import load_checkpoint_into, saved_bn_modes


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


def load_model(path: str, *, arch: str | None, arch_kwargs: str | None, trust: bool, key: str | None) -> LoadedModel:
    """The model to run: ``--arch`` plus the checkpoint as ``open_checkpoint`` reads it (``trust``
    decides there, as for every command), or the file's own module, which only ``trust`` allows."""
    from bninspect.formats import open_checkpoint

    if arch:
        checkpoint = open_checkpoint(path, trust=trust, key=key)
        model = build_arch(arch, arch_kwargs)
        key_map, notes = load_checkpoint_into(model, checkpoint)
        model.eval()
        flags = saved_bn_modes(model, checkpoint, key_map)
        if not flags:
            notes.insert(0, "a state dict has no train/eval mode: the model runs in eval mode as built by --arch")
        return LoadedModel(model=model, source="arch", description=arch, checkpoint=checkpoint,
                           key_map=key_map, training_as_loaded=flags, notes=notes, trust=trust)
    if not trust:
        raise UnsafeFileError(
            "drift runs the model: give its architecture with --arch module:callable (the state dict is then read "
            "safely), or pass --trust to run the TorchScript/pickled module in the file (this runs code from it)",
            path=path,
        )
    from bninspect.formats.trusted import load_module

    model = load_module(path)
    source = "torchscript" if isinstance(model, torch.jit.ScriptModule) else "pickled-module"
    loaded = LoadedModel(model=model, source=source, trust=True,
                         description="TorchScript archive" if source == "torchscript" else "pickled nn.Module")
    loaded.training_as_loaded = {name: bool(m.training) for name, m in bn_modules(model)}
    return loaded


def live_model(model: nn.Module, name: str) -> LoadedModel:
    """A live module to run (the Python API): a deep copy, so that running it in train mode,
    moving it to a device or recalibrating it never touches the caller's model."""
    import copy

    try:
        copied = copy.deepcopy(model)
    except Exception as exc:  # noqa: BLE001 - whatever a user's module raises when copied: our words
        raise UsageError(f"drift runs a copy of the model, and this {type(model).__name__} cannot be copied "
                         f"(copy.deepcopy: {type(exc).__name__}); save it and give drift the file with arch=") from None
    loaded = LoadedModel(model=copied, source="live-module", description=name)
    loaded.training_as_loaded = {n: bool(m.training) for n, m in bn_modules(copied)}
    return loaded
