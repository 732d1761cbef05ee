"""The contract every check rule follows: what a rule sees (:class:`Context`), what it returns
(:class:`Finding`), and how it declares itself (:func:`rule`).

A rule is a small function with its code, default severity and title in the decorator and its
documentation in its docstring, written in ruff's shape ("What it does / Why is this bad? /
Example / Use instead"). ``bninspect rules CODE`` prints that docstring, so the code and its
documentation cannot drift apart. Rules use numpy only: ``check`` on a safetensors file and
``bninspect rules`` never import torch.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

# numpy and the layer types only in annotations here, and numpy inside the functions that
# compute in the rule modules: `bninspect rules` lists the registry without importing numpy.
if TYPE_CHECKING:
    import numpy as np

    from bninspect.checkpoint import Checkpoint
    from bninspect.formats.verdict import Verdict
    from bninspect.layers import BNLayer, Malformed

SEVERITIES = ("error", "warning", "info")  # most severe first
FAMILIES = {"BN0": "integrity", "BN1": "statistics", "BN2": "mode", "BN3": "deployment", "BN4": "safety"}


@dataclass
class Thresholds:
    """Tunable limits of the rules; every one is a ``check`` option and a ``[tool.bninspect]`` key."""

    min_updates: int = 200  # BN102: fewer updates than this is "few"
    count_ratio: float = 10.0  # BN103: counts that differ by this factor or more
    max_scale: float = 1e3  # BN106: |γ|/√(σ²+ε) above this
    dead_gamma: float = 1e-6  # BN107: |γ| at or below this
    outlier_z: float = 20.0  # BN108: robust z-score above this
    eps_tolerance: float = 0.05  # BN302: relative output change above this
    expect_eps: float | None = None  # BN301: eps every layer must have (error when it differs)


@dataclass
class Finding:
    """One problem in one layer (or, for model-wide rules, in the first layer of a group)."""

    code: str
    severity: str  # "error" | "warning" | "info"
    layer: str  # display name
    channels: list[int]  # offending channels, all of them (empty when the finding is not per channel)
    message: str  # names the layer and the first few channels with a count
    evidence: dict[str, Any]  # the numbers behind the finding
    fix: str  # one line


@dataclass
class Context:
    """What a rule may look at besides its layer: the whole model, the options, the file."""

    layers: list[BNLayer]  # every BN layer of the checkpoint, possible ones included
    thresholds: Thresholds = field(default_factory=Thresholds)
    checkpoint: Checkpoint | None = None
    malformed: dict[str, Malformed] = field(default_factory=dict)  # BN-named prefixes that make no layer
    # What a real load of the file would run (formats.verdict.Verdict); None where loading
    # runs nothing (safetensors, ONNX, IR). Set even when no state dict could be read.
    verdict: Verdict | None = None


LayerCheck = Callable[["BNLayer", Context], Iterable[Finding]]
ModelCheck = Callable[[Context], Iterable[Finding]]


@dataclass(frozen=True)
class Rule:
    """A registered rule: identity, default severity, title, documentation and its check."""

    code: str
    name: str  # kebab-case slug, e.g. "default-statistics"
    severity: str
    title: str
    scope: str  # "layer": called once per layer; "model": once per checkpoint
    check: Callable[..., Iterable[Finding]]

    @property
    def family(self) -> str:
        return FAMILIES.get(self.code[:3], "other")

    @property
    def doc(self) -> str:
        """The rule's documentation: its check function's docstring, dedented."""
        return inspect.cleandoc(self.check.__doc__ or "")

    def finding(self, layer: BNLayer | str, message: str, fix: str, *, channels: Iterable[int] = (),
                evidence: dict[str, Any] | None = None, severity: str | None = None) -> Finding:
        """A finding of this rule (default severity unless the rule decides otherwise)."""
        name = layer if isinstance(layer, str) else layer.name
        return Finding(code=self.code, severity=severity or self.severity, layer=name,
                       channels=[int(c) for c in channels], message=message,
                       evidence=dict(evidence or {}), fix=fix)


REGISTRY: dict[str, Rule] = {}


def rule(code: str, name: str, severity: str, title: str, scope: str = "layer") -> Callable[[Callable], Rule]:
    """Register the decorated function as rule ``code``; its docstring is the rule's documentation."""
    if severity not in SEVERITIES:
        raise ValueError(f"{code}: unknown severity {severity}")

    def register(fn: Callable[..., Iterable[Finding]]) -> Rule:
        if code in REGISTRY:
            raise ValueError(f"rule {code} is registered twice")
        if not (fn.__doc__ or "").strip():
            raise ValueError(f"rule {code} has no documentation")
        r = Rule(code=code, name=name, severity=severity, title=title, scope=scope, check=fn)
        REGISTRY[code] = r
        return r

    return register


# ── helpers shared by the rule families ─────────────────────────────────────────────────────

SHOWN_CHANNELS = 5


def channel_list(idx: Iterable[int], total: int | None = None) -> str:
    """"channels 3, 7, 12 (3 of 64)" / "channels 0, 1, 2, 3, 4, … (12 of 64)": first few and a count."""
    idx = [int(i) for i in idx]
    shown = ", ".join(str(i) for i in idx[:SHOWN_CHANNELS]) + (", …" if len(idx) > SHOWN_CHANNELS else "")
    word = "channel" if len(idx) == 1 else "channels"
    count = f"{len(idx)} of {total}" if total is not None else f"{len(idx)}"
    return f"{word} {shown} ({count})"


def name_list(names: list[str], shown: int = SHOWN_CHANNELS) -> str:
    """A few names and how many more: "a, b, c and 4 more"."""
    head = ", ".join(names[:shown])
    return head + (f" and {len(names) - shown} more" if len(names) > shown else "")


def aligned(layer: BNLayer, *tensors: str) -> list[np.ndarray] | None:
    """The named tensors as flat float64 arrays of length C, or None if any is missing or of
    another length (BN003 reports that; other rules must not combine misaligned tensors)."""
    out = []
    for t in tensors:
        v = layer.values(t)
        if v is None or v.shape[0] != layer.channels:
            return None
        out.append(v)
    return out


def sig(x: float) -> float:
    """A number rounded to 6 significant digits for evidence (exact enough, stable in JSON)."""
    x = float(x)
    if not math.isfinite(x) or x == 0:
        return x
    return float(f"{x:.6g}")
