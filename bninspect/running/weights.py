"""Loading a checkpoint's weights into a model built by ``--arch``: keys matched, shapes checked, strictly."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from bninspect.checkpoint import Checkpoint
from bninspect.errors import UsageError
from bninspect.formats.containers import WRAPPER_PREFIXES
from bninspect.running.modules import bn_modules

# How many keys an error message lists before it says how many there are in all.
_SHOWN_KEYS = 4


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > _SHOWN_KEYS else ''})"


def _strip(key: str, prefix: str) -> str:
    return key[len(prefix):] if prefix and key.startswith(prefix) else key


def match_keys(model_keys: list[str], checkpoint_keys: list[str], hint: str = "") -> tuple[dict[str, str], str]:
    """Map model keys to checkpoint keys, stripping the wrapper prefix that fits best.

    Tries no prefix, the loader's ``hint`` and every chain of
    :data:`~bninspect.formats.containers.WRAPPER_PREFIXES` (``module._orig_mod.`` too) and keeps
    the one that matches the most model keys. Returns ``(model key -> checkpoint key, prefix used)``.
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


def saved_bn_modes(model: nn.Module, checkpoint: Checkpoint, key_map: dict[str, str]) -> dict[str, bool]:
    """BN name -> training flag, where the file records its modules' modes (TorchScript read statically)."""
    flags = {}
    for name, _ in bn_modules(model):
        key = key_map.get(f"{name}.running_mean" if name else "running_mean", "")
        info = checkpoint.modules.get(key.rsplit(".", 1)[0] if "." in key else "")
        if info is not None and isinstance(info.attributes.get("training"), bool):
            flags[name] = info.attributes["training"]
    return flags
