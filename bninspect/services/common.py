"""Opening a file and picking layers: the first step of every service."""

from __future__ import annotations

import difflib
import fnmatch
import math
import os
from typing import Any

from bninspect.errors import UsageError
from bninspect.layers import BNLayer, Discovery, discover


def validate_eps(eps: float | None, option: str = "--eps") -> None:
    """The one rule every command applies to an eps it is given: a finite number ≥ 0.

    0 is allowed (nn.BatchNorm2d accepts it, and some runtimes fold with it); where a channel's
    running_var is 0 too it divides by zero, which :func:`zero_eps_warnings` says.
    """
    if eps is not None and not (math.isfinite(eps) and eps >= 0):
        raise UsageError(f"{option} must be a finite number ≥ 0, not {eps:g}")


def zero_eps_warnings(layers: list[BNLayer]) -> list[str]:
    """One line per layer whose eps is 0 and whose running_var is 0 somewhere (see zero_eps_note)."""
    return [f"{layer.name}: {note}" for layer in layers if (note := zero_eps_note(layer)) is not None]


def zero_eps_note(layer: BNLayer) -> str | None:
    """Where ``layer``'s eps is 0 and its running_var is 0 somewhere, what inference
    y = γ·(x − μ)/√(σ² + ε) does there; None otherwise."""
    import numpy as np

    from bninspect.rules.base import channel_list

    var = layer.values("running_var") if layer.eps == 0 else None
    if var is None or not (var == 0).any():
        return None
    return (f"eps 0 and running_var 0 in {channel_list(np.flatnonzero(var == 0), var.size)}: "
            "y = γ·(x − μ)/√(σ² + ε) divides by zero there (±inf, NaN where x = μ)")


def source_name(source: Any) -> str:
    """How results and messages name a source: its path, or ``<ResNet in memory>`` for a live module."""
    from bninspect.formats import live

    return live.name_of(source) if live.is_module(source) else os.fspath(source)


def open_layers(path: Any, *, trust: bool = False, key: str | None = None, strict: bool = False,
                eps: float | None = None, refuse_unsafe: bool = True) -> Discovery:
    """Open a checkpoint safely and discover its BN layers (``eps`` overrides every layer's eps;
    ``refuse_unsafe``: see :func:`bninspect.formats.open_checkpoint`). ``path`` may also be a
    live ``torch.nn.Module`` (the Python API): its own modules are read, nothing on it changes.

    A load makes a few objects per tensor (300,000 for a 10,000-layer .pt) that live as long
    as the command and form no reference cycles. Under the CLI (``settings.freeze_loaded_objects``)
    the cyclic collector is paused while they are made and then told to leave them be
    (gc.freeze): it would otherwise walk them again and again for nothing (measured:
    benchmarks/README.md, "Measured design choices"). A load that fails is left to the
    collector as usual.
    """
    import gc

    from bninspect import settings
    from bninspect.formats import open_checkpoint

    validate_eps(eps)
    from bninspect.formats import live

    if live.is_module(path):
        if key is not None:
            raise UsageError("key= picks a state dict inside a file; a live module is one model")
        return discover(live.read(path), eps=eps)
    path = os.fspath(path)
    if not settings.freeze_loaded_objects:
        return discover(open_checkpoint(path, trust=trust, key=key, strict=strict, refuse_unsafe=refuse_unsafe), eps=eps)
    enabled = gc.isenabled()
    gc.disable()
    try:
        found = discover(open_checkpoint(path, trust=trust, key=key, strict=strict, refuse_unsafe=refuse_unsafe), eps=eps)
        gc.freeze()
        return found
    finally:
        if enabled:
            gc.enable()


def _suggest(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    if close:
        return "did you mean " + ", ".join(close) + "?"
    if names:
        shown = ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")
        return f"BN layers here: {shown}"
    return "this file has no BatchNorm layers"


def select(layers: list[BNLayer], globs: list[str] | None) -> list[BNLayer]:
    """Layers whose display name (or original key prefix) matches any glob; all when none given.

    A glob that matches nothing is a usage error that suggests the closest names.
    """
    if not globs:
        return list(layers)
    names = [l.name for l in layers]
    chosen: list[BNLayer] = []
    # By identity, in a set: `l not in chosen` compared dataclasses field by field, once per
    # layer chosen so far (quadratic: minutes for `show -l '*bn*'` at 10,000 layers).
    seen: set[int] = set()
    for pattern in globs:
        hits = [l for l in layers if fnmatch.fnmatchcase(l.name, pattern) or fnmatch.fnmatchcase(l.key_prefix, pattern)]
        if not hits:
            raise UsageError(f"no BatchNorm layer matches '{pattern}'; {_suggest(pattern, names)}")
        for l in hits:
            if id(l) not in seen:
                seen.add(id(l))
                chosen.append(l)
    return chosen


def find_layer(layers: list[BNLayer], name: str) -> BNLayer:
    """The layer with this display name or original key prefix; a usage error naming close ones."""
    for layer in layers:
        if name in (layer.name, layer.key_prefix):
            return layer
    raise UsageError(f"no BatchNorm layer named '{name}'; {_suggest(name, [l.name for l in layers])}")


def parse_sizes(text: str, option: str) -> list[int]:
    """``"1,2,8,32"`` → [1, 2, 8, 32] (sorted, duplicates dropped); a usage error naming
    ``option`` for anything but positive integers separated by commas."""
    try:
        sizes = sorted({int(p) for p in text.split(",") if p.strip()})
    except ValueError:
        sizes = []
    if not sizes or sizes[0] < 1:
        raise UsageError(f"{option} must be positive integers separated by commas (e.g. 1,2,8,32), not '{text}'")
    return sizes
