"""Writing the formats bninspect reads: activations (`verify --output`) and checkpoints (`drift
--write-recalibrated`).

Every file goes through ``atomic.atomic_write``, the one writer: a temporary file beside the
target, then a rename, never over a file this run read (the checkpoint, a file it names,
--data, --input, --expected). Encoding needs torch or safetensors; both are imported only here,
when a file is written.
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from bninspect.atomic import atomic_write, check_output
from bninspect.errors import InvalidFileError, UsageError
from bninspect.formats.arrays import Activations

if TYPE_CHECKING:
    import torch

    from bninspect.checkpoint import Checkpoint

# Activation files by name: --output must be in the format of --input.
ACTIVATION_SUFFIXES = {".npy": "npy", ".pt": "pt", ".pth": "pt", ".safetensors": "safetensors"}

# Checkpoint names written as torch.save archives (anything else: .safetensors).
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar")


def write_activations(path: str, values: np.ndarray, like: Activations) -> None:
    """Write ``values`` in ``like``'s format and dtype (same key), atomically; never over a file
    this run read (the checkpoint, a file it names, --input, --expected)."""
    check_output(path, "--output", [])
    suffix = os.path.splitext(path)[1].lower()
    if suffix in ACTIVATION_SUFFIXES and ACTIVATION_SUFFIXES[suffix] != like.format:
        raise UsageError(f"--output must be in the input's format ({like.format}), not {suffix}", path=path)
    data = _encode(values, like)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)


def _encode(values: np.ndarray, like: Activations) -> bytes:
    if like.format == "npy":
        buf = io.BytesIO()
        np.save(buf, values.astype(like.dtype), allow_pickle=False)
        return buf.getvalue()
    import torch

    from bninspect.numerics.kernels import TORCH_DTYPES

    tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64)).to(TORCH_DTYPES.get(like.dtype, torch.float32))
    if like.format == "pt":
        buf = io.BytesIO()
        torch.save(tensor if like.key is None else {like.key: tensor}, buf)
        return buf.getvalue()
    from safetensors.torch import save as save_safetensors

    return save_safetensors({like.key or "output": tensor.contiguous()})


def check_checkpoint_output(path: str, option: str, inputs: list[tuple[str, str]]) -> str:
    """``path`` made absolute for a checkpoint to write, or a one-line error before any work: see
    ``atomic.check_output``; and a name that says the format (.safetensors, or a torch.save one)."""
    out = check_output(path, option, inputs)
    lower = out.lower()
    if not (lower.endswith(".safetensors") or lower.endswith(TORCH_SUFFIXES)):
        raise UsageError(f"{option}: name the file .safetensors, or .pt/.pth/.ckpt/.bin for torch.save", path=path)
    return out


def write_state_dict(path: str, state: dict[str, torch.Tensor], *, changed: Iterable[str],
                     like: Checkpoint | None, trust: bool) -> str:
    """Write ``state`` (every tensor, by its key in the file) to ``path`` and return the format
    written: safetensors where the name says so, else torch.save. Where ``like`` (the checkpoint
    ``state`` came from) is a torch.save file, the whole of it is written again with the
    ``changed`` entries replaced, so that what it holds besides (optimizer state, other state
    dicts, tensors sharing storage) is kept; it is reloaded for that with torch.load, running
    code from it only where ``trust`` (the user passed --trust)."""
    import torch

    out = os.path.abspath(path)
    if out.lower().endswith(".safetensors"):
        from safetensors.torch import save_file

        atomic_write(out, lambda tmp: save_file({k: v.contiguous() for k, v in state.items()}, tmp,
                                                metadata={"format": "pt"}))
        return "safetensors"
    if like is not None and like.format in ("torch-zip", "torch-legacy"):
        whole, target = _reload_container(like.path, like.container, trust)
        for key in changed:
            target[key] = state[key]
        atomic_write(out, lambda tmp: torch.save(whole, tmp))
    else:
        atomic_write(out, lambda tmp: torch.save(state, tmp))
    return "torch-zip"


def _reload_container(path: str, container: str, trust: bool) -> tuple[Any, dict]:
    """The whole input checkpoint as torch.load gives it (``weights_only=True``; as it stands with
    ``trust``) and the dict at ``container`` ("/"-joined) that holds its state dict."""
    import pickle

    import torch

    from bninspect.formats import trusted
    from bninspect.formats.paths import open_regular

    if trust:
        whole = trusted.load_object(path)
    else:
        try:
            # Through our descriptor, like every read: a regular file, never blocking, recorded as read.
            with os.fdopen(open_regular(path), "rb") as fh:
                whole = torch.load(fh, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise InvalidFileError(
                "the checkpoint holds objects that need code to load, so it cannot be re-saved as a whole; "
                "write the recalibrated state dict as .safetensors instead", path=path) from None
    target = whole
    for part in [p for p in container.split("/") if p]:
        if isinstance(target, dict) and part in target:
            target = target[part]
        elif isinstance(target, (list, tuple)) and part.isdigit() and int(part) < len(target):
            target = target[int(part)]
        else:
            raise InvalidFileError(f"cannot find the state dict at '{container}' again to re-save it; "
                                   "write .safetensors instead", path=path)
    if not isinstance(target, dict):
        raise InvalidFileError("the state dict is not a dict; write .safetensors instead", path=path)
    return whole, target
