"""``--device`` for the commands that run a model (`drift`): the one job left here.

Building the model, loading weights, the TorchScript probe and the data sources live in
:mod:`bninspect.running`; device parsing stays here while wave A of issue 17 merges the two
device grammars (this one and ``numerics.resolve_devices``) into numerics.
"""

from __future__ import annotations

import torch

from bninspect.errors import UsageError


# ── devices ─────────────────────────────────────────────────────────────────────────────────


def resolve_device(name: str) -> torch.device:
    """``cpu`` or ``cuda`` (``cuda:N`` too); a usage error when CUDA is asked for and absent."""
    name = name.strip().lower()
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is available to this PyTorch build; use --device cpu")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
        return dev
    raise UsageError(f"--device must be cpu or cuda, not '{name}'")
