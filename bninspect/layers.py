"""The domain model: a BatchNorm layer and the discovery that finds them in a Checkpoint.

Everything downstream (services, rules, renderers) speaks :class:`BNLayer`, never raw keys.

Discovery works on state-dict keys grouped by module prefix, and takes the facts only a
saved module has (class, eps, momentum, training, conv groups) from ``Checkpoint.modules``:

- a BN layer is a prefix with 1-D ``running_mean`` and ``running_var`` of equal length C
  (plus optional weight, bias, num_batches_tracked), or a module whose class is a BatchNorm;
- LayerNorm/GroupNorm/InstanceNorm/Linear/conv biases are never BN: without running
  statistics only a module, or a BN-like name right after a conv of the same width, makes a
  prefix a *possible* BN (track_running_stats=False), and that is reported separately;
- the producer is the conv or linear layer before the BN in key order, after the previous BN,
  whose output width is C. Key order is module-definition order, which is forward order in
  the usual ``nn.Sequential``/block code; where nothing matches we say so instead of guessing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from bninspect.checkpoint import MAX_SIZE, Checkpoint, ModuleInfo, TensorRef, natural_key
from bninspect.errors import InvalidFileError
from bninspect.numerics.reference import TORCH_EPS, fold

# PyTorch's default momentum for nn.BatchNorm*d (torch/nn/modules/batchnorm.py: momentum=0.1).
DEFAULT_MOMENTUM = 0.1

TENSOR_NAMES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_FLOAT_TENSORS = TENSOR_NAMES[:4]
_TENSOR_SET = frozenset(TENSOR_NAMES)
_NO_ATTRIBUTES: Mapping[str, Any] = MappingProxyType({})  # the facts of a prefix no module describes
_NO_STRINGS: Mapping[str, str] = MappingProxyType({})
# Names only a BatchNorm's entries have (weight and bias belong to every layer).
_BN_ONLY_NAMES = frozenset({"running_mean", "running_var", "num_batches_tracked"})


@dataclass
class Producer:
    """The layer whose output a BN layer normalizes (conv or linear before it, matching width)."""

    name: str  # display name
    key_prefix: str  # original module path in the file
    kind: str  # "conv 3×3", "depthwise conv 3×3", "pointwise conv 1×1", "grouped conv 3×3 (groups=4)", "transposed conv 2×2", "linear"
    op: str  # "conv1d" | "conv2d" | "conv3d" | "conv_transpose1d" | ... | "linear"
    out_channels: int
    in_channels: int
    groups: int | None  # None where unknown (state dict: inferred only when depthwise is evident)
    weight: TensorRef
    bias: TensorRef | None
    # Where no module names the class (a state dict), the same weight read as the other kind of
    # conv (transposed), for the BN it may feed to decide; see _readings.
    transposed_reading: Producer | None = None
    evidence: str = ""  # how the kind was decided, where a state dict left it to the shapes


@dataclass
class BNLayer:
    """One BatchNorm layer: its tensors (or their absence) and the facts we know or assume."""

    name: str  # display name (wrapper prefix stripped)
    key_prefix: str  # original module path in the file, without trailing dot
    kind: str  # "BatchNorm1d" | "BatchNorm2d" | "BatchNorm3d" | "SyncBatchNorm" | "FrozenBatchNorm2d" | "BatchNorm"
    kind_source: str  # "module" | "producer" (inferred from the producer's weight rank) | "unknown"
    channels: int
    tensors: dict[str, TensorRef]  # present ones among TENSOR_NAMES
    eps: float
    eps_source: str  # "module" | "default" | "user"
    momentum: float | None  # None = cumulative average (only when a module says so)
    momentum_source: str  # "module" | "default"
    affine: bool | None = None  # None where no module says; evident from weight/bias presence
    track_running_stats: bool | None = None
    training: bool | None = None  # None: a state dict has no mode
    producer: Producer | None = None
    producer_note: str = ""  # why there is no producer, or how it was matched
    possible: bool = False  # a "possible BatchNorm with track_running_stats=False" (no running stats)
    evidence: str = ""  # for possible layers: why we think so
    # Entries named like its tensors that cannot serve as them, kept out of ``tensors`` (nothing reads
    # them): values that are not tensors, or weight/bias/statistics of another rank than 1. Name →
    # what they are, in words ("the Python int 0", "a tensor of shape [1, 64]").
    unusable: dict[str, str] = field(default_factory=dict)
    _cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def has(self, tensor: str) -> bool:
        return tensor in self.tensors

    def values(self, tensor: str) -> np.ndarray | None:
        """A tensor's values as a flat float64 array (None when the layer lacks it). Cached."""
        if tensor not in self.tensors:
            return None
        if tensor not in self._cache:
            self._cache[tensor] = self.tensors[tensor].float64().reshape(-1)
        return self._cache[tensor]

    @property
    def num_batches_tracked(self) -> int | None:
        ref = self.tensors.get("num_batches_tracked")
        if ref is None or ref.numel != 1:
            return None
        return int(np.asarray(ref.numpy()).reshape(-1)[0])

    def shape_problem(self) -> str | None:
        """Why this layer's weight, bias and statistics cannot be used together (lengths differ
        from C, or one is not a tensor at all), or None. (A num_batches_tracked that is not a
        tensor keeps nothing from being computed: BN003 reports it.)"""
        # The common answer without building anything: `show` asks it of every layer (10,000).
        expected, tensors, odd = (self.channels,), self.tensors, self.unusable
        if odd.keys() <= {"num_batches_tracked"}:
            for n in _FLOAT_TENSORS:
                ref = tensors.get(n)
                if ref is not None and ref.shape != expected:
                    break
            else:
                return None
        listed = ", ".join(f"{n} {list(tensors[n].shape)}" if n in tensors else f"{n} is {odd[n]}"
                           for n in _FLOAT_TENSORS if n in tensors or n in odd)
        what = "tensors disagree in length" if not odd else "entries are not all tensors of one length"
        return (f"{self.name}: its {what} ({listed}); BatchNorm needs 1-D weight, bias, "
                "running_mean and running_var of one length C")

    def gamma(self) -> np.ndarray:
        """γ, with the affine=False identity (ones) where the layer has no weight."""
        w = self.values("weight")
        return w if w is not None else np.ones(self.channels)

    def beta(self) -> np.ndarray:
        """β, with the affine=False identity (zeros) where the layer has no bias."""
        b = self.values("bias")
        return b if b is not None else np.zeros(self.channels)

    def folded(self, eps: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Inference as one multiply-add per channel, in float64: y = scale·x + shift.

        scale = γ / √(σ² + ε), shift = β − μ·scale (needs running statistics).
        """
        mean, var = self.values("running_mean"), self.values("running_var")
        if mean is None or var is None:
            raise ValueError(f"layer {self.name} has no running statistics")
        return fold(mean, var, self.gamma(), self.beta(), self.eps if eps is None else eps)


@dataclass
class Malformed:
    """A prefix named like a BatchNorm whose entries give no length C to list it as a layer by."""

    message: str  # one sentence for the user: the shapes or values it has
    not_tensors: bool  # some entry is not a tensor at all: no module's state dict holds that


@dataclass
class Discovery:
    """What discovery found in one checkpoint."""

    checkpoint: Checkpoint
    layers: list[BNLayer]  # BatchNorm layers with running statistics (or a module saying BN)
    possible: list[BNLayer]  # possible BN with track_running_stats=False, with evidence
    other_norms: dict[str, int]  # e.g. {"GroupNorm": 2, "LayerNorm": 1} or {"LayerNorm/GroupNorm-like": 3}
    # BN-like prefixes that make no layer (no 1-D tensor among them gives C): not a BN layer we can
    # compute with, and not "no running statistics" either. Display name → what is wrong.
    malformed: dict[str, Malformed] = field(default_factory=dict)


# Module class names that are BatchNorm (torch.nn, torchvision.ops.misc, ONNX readers).
_BN_TYPES = re.compile(r"^(Lazy)?BatchNorm([123]d)?$|^SyncBatchNorm$|^FrozenBatchNorm2d$|BatchNorm")
_OTHER_NORMS = re.compile(r"^(GroupNorm|LayerNorm|InstanceNorm[123]d|LazyInstanceNorm[123]d|LocalResponseNorm|RMSNorm|CrossMapLRN2d)$")
_CONV_TYPES = re.compile(r"^(Lazy)?(Conv|ConvTranspose)([123])d$|^Linear$|^LazyLinear$|Conv|Gemm")
# Names that say "batch norm" in the usual spellings (bn, bn1, batchnorm, batch_norm, BatchNorm2d).
_BN_NAME = re.compile(r"(^|[._])(bn\d*|batch_?norm\d*(d)?|syncbn)($|[._])", re.IGNORECASE)
_GN_NAME = re.compile(r"(^|[._])(gn\d*|group_?norm\d*)($|[._])", re.IGNORECASE)
_LN_NAME = re.compile(r"(^|[._])(ln\d*|layer_?norm\d*)($|[._])", re.IGNORECASE)
_NORM_ONLY_NAME = re.compile(r"^(ln|gn|norm|layer_?norm|group_?norm)\d*$", re.IGNORECASE)
_SCALE_SHIFT = "other per-channel scale/shift"  # 1-D weight/bias with no sign of a norm layer
# Only breaks a tie: where a square weight fits a BN as a plain and as a transposed conv alike.
_TRANSPOSED_NAME = re.compile(r"transpose|deconv|convt|upconv", re.IGNORECASE)


def _groups(tensors: dict[str, TensorRef]) -> tuple[list[str], dict[str, dict[str, TensorRef]]]:
    """Keys grouped by module prefix ("features.2.bn.running_mean" → "features.2.bn"), in key order."""
    groups: dict[str, dict[str, TensorRef]] = {}
    for key, ref in tensors.items():
        prefix, _, leaf = key.rpartition(".")
        group = groups.get(prefix)
        if group is None:
            group = groups[prefix] = {}
        group[leaf] = ref
    return list(groups), groups


def _is_bn_module(info: ModuleInfo | None) -> bool:
    """A module class named like a BatchNorm, or a pickled subclass recognised by its state."""
    return info is not None and (bool(info.bn) or bool(_BN_TYPES.search(info.type_name)))


def _real(t: dict[str, TensorRef]) -> bool:
    """No complex numbers among weight, bias, running_mean, running_var: a complex "statistic"
    has no meaning for BatchNorm (and numpy warns on stderr when it is made real)."""
    return not any(t[n].dtype.startswith("complex") for n in ("weight", "bias", "running_mean", "running_var") if n in t)


def _has_stats(t: dict[str, TensorRef]) -> bool:
    mean, var = t.get("running_mean"), t.get("running_var")
    return (mean is not None and var is not None and mean.ndim == 1 and var.ndim == 1 and mean.shape == var.shape
            and _real(t))


def _consistent(t: dict[str, TensorRef]) -> bool:
    """weight, bias, running_mean, running_var (those present) are real, 1-D of one length, as BatchNorm needs."""
    shapes = {t[n].shape for n in ("weight", "bias", "running_mean", "running_var") if n in t}
    return len(shapes) <= 1 and all(len(shape) == 1 for shape in shapes) and _real(t)


def _is_weight_layer(t: dict[str, TensorRef], info: ModuleInfo | None) -> bool:
    """A conv or linear layer: a weight of rank 2 to 5 (and no running statistics)."""
    w = t.get("weight")
    if w is None or not 2 <= w.ndim <= 5 or "running_mean" in t:
        return False
    return info is None or bool(_CONV_TYPES.search(info.type_name))


def _elementwise_affine(prefix: str, t: dict[str, TensorRef]) -> bool:
    """A weight of rank ≥ 2 that scales elementwise (LayerNorm over several dimensions, e.g.
    ``encoder.layernorm.weight [1, 264]``), not a conv's or linear's: its bias has the weight's
    own shape, where theirs is 1-D. Without a bias only the module's own name tells, and only a
    name that is nothing but a norm's (``ln``, ``layernorm``, ``norm2``; not ``norm_conv``)."""
    w, b = t.get("weight"), t.get("bias")
    if w is None or w.ndim < 2 or "running_mean" in t:
        return False
    if b is not None:
        return b.shape == w.shape
    return bool(_NORM_ONLY_NAME.match(prefix.rpartition(".")[2]))


def _norm_guess(prefix: str) -> str:
    """What a non-BN normalization layer probably is, by its name: counted, never reported as BN."""
    return ("GroupNorm" if _GN_NAME.search(prefix) else "LayerNorm" if _LN_NAME.search(prefix)
            else "LayerNorm/GroupNorm" if "norm" in prefix.lower() else _SCALE_SHIFT)


def _kernel(shape: tuple[int, ...]) -> str:
    return "×".join(map(str, shape[2:]))


def _readings(prefix: str, t: dict[str, TensorRef], info: ModuleInfo | None, prev_width: int | None,
              display: str, ordered: bool) -> Producer:
    """A conv/linear layer as the producer it is, or as a state dict leaves it: a plain conv that
    carries its transposed reading, for the BN it feeds to decide between (see _pick).

    Evidence, strongest first: the module class where the file names it; else the shapes. A conv
    weight is [out, in/groups, k...], a transposed one [in, out/groups, k...] (torch.nn docs), so
    the BN's width C tells them apart where only one reading has C outputs. The transposed
    reading is kept only where its input width fits what comes before (``prev_width``, the
    width of the previous layer in key order): DenseNet's conv2 [32, 128, 3, 3] before a
    128-channel norm1 reads as 128 outputs transposed, but takes 128 inputs, not 32. Where keys
    are not in module order (safetensors) the layer before says nothing, and the structural
    match prefers the plain reading at equal distance. A name (upconv, deconv, ...) only breaks
    a tie, where both readings have C outputs.
    """
    if info is not None or t["weight"].ndim < 3:
        transposed = info is not None and "Transpose" in info.type_name
        return _producer(prefix, t, info, prev_width, display, transposed)
    plain = _producer(prefix, t, info, prev_width, display, False)
    w = t["weight"]
    if not ordered or prev_width is None or w.shape[0] == prev_width:
        plain.transposed_reading = _producer(prefix, t, info, prev_width, display, True)
    return plain


def _pick(prod: Producer, channels: int) -> Producer | None:
    """The reading of a conv that has ``channels`` outputs (plain first, a name breaking a tie), or None."""
    alt = prod.transposed_reading
    plain_fits, alt_fits = prod.out_channels == channels, alt is not None and alt.out_channels == channels
    if alt_fits and (not plain_fits or _TRANSPOSED_NAME.search(prod.key_prefix)):
        why = ("its name says transposed, and read either way its weight has C outputs" if plain_fits else
               f"read as a plain conv its weight {list(prod.weight.shape)} has {prod.out_channels} outputs, "
               f"as a transposed one {channels}, and its {alt.in_channels} inputs fit the layer before it")
        alt.evidence = f"a transposed conv: {why} (a state dict does not name module classes)"  # type: ignore[union-attr]
        return alt
    return prod if plain_fits else None


def _producer(prefix: str, t: dict[str, TensorRef], info: ModuleInfo | None, prev_width: int | None,
              display: str, transposed: bool) -> Producer:
    """Describe a conv/linear layer: its op, output width and, where evident, its groups."""
    w = t["weight"]
    attrs = info.attributes if info else _NO_ATTRIBUTES
    if w.ndim == 2:
        return Producer(display, prefix, "linear", "linear", w.shape[0], w.shape[1], 1, w, t.get("bias"))
    dims = w.ndim - 2
    groups = attrs.get("groups")
    if transposed:
        # ConvTranspose weight is [in, out/groups, k...] (torch.nn.ConvTranspose*d docs).
        g = int(groups) if groups else 1
        out_ch, in_ch = w.shape[1] * g, w.shape[0]
        return Producer(display, prefix, f"transposed conv {_kernel(w.shape)}", f"conv_transpose{dims}d",
                        out_ch, in_ch, g if groups else None, w, t.get("bias"))
    out_ch = w.shape[0]
    if groups is None and w.shape[1] == 1 and prev_width == out_ch and prev_width > 1:
        # Conv weight is [out, in/groups, k...]. One input channel per filter, with as many
        # filters as the layer before has outputs, is a depthwise conv (groups = C). Other
        # group counts are not inferred: the layer before in key order is not always the
        # input (a shortcut conv reads the block's input), and a wrong guess is worse than none.
        groups = out_ch
    in_ch = w.shape[1] * int(groups) if groups else w.shape[1]
    k = _kernel(w.shape)
    if groups and groups > 1 and groups == out_ch == in_ch:
        kind = f"depthwise conv {k}"
    elif groups and groups > 1:
        kind = f"grouped conv {k} (groups={groups})"
    elif w.shape[2:].count(1) == dims:
        kind = "pointwise conv 1×1" if dims == 2 else f"pointwise conv {k}"
    else:
        kind = f"conv {k}"
    return Producer(display, prefix, kind, f"conv{dims}d", out_ch, in_ch, int(groups) if groups else None, w, t.get("bias"))


def _kind(info: ModuleInfo | None, producer: Producer | None) -> tuple[str, str]:
    if _is_bn_module(info):
        return info.type_name, "module"  # type: ignore[union-attr]
    if producer is not None:
        if producer.op == "linear" or producer.op.endswith("1d"):
            return "BatchNorm1d", "producer"
        return f"BatchNorm{producer.op[-2:]}", "producer"
    return "BatchNorm", "unknown"


_TRAILING_DIGITS = re.compile(r"(\d+)$")


def _digits(name: str) -> str:
    m = _TRAILING_DIGITS.search(name.rpartition(".")[2])
    return m.group(1) if m else ""


class _TreeIndex:
    """Producers bucketed by (ancestor path, width), so the structural match of one BN looks
    only at convs that share its parent path (linear time for the usual model shapes).

    Each depth of ancestor path is bucketed when first asked for: most BNs find their conv
    under their own parent, and the shallower buckets are then never built.
    """

    def __init__(self, producers: list[tuple[int, Producer]]) -> None:
        self.producers = [(tuple(prod.key_prefix.split(".")[:-1]), pos, prod) for pos, prod in producers]
        self.depths: dict[int, dict[tuple[tuple[str, ...], int], list[tuple[int, Producer]]]] = {}

    def _buckets(self, depth: int) -> dict[tuple[tuple[str, ...], int], list[tuple[int, Producer]]]:
        buckets = self.depths.get(depth)
        if buckets is None:
            buckets = self.depths[depth] = {}
            for parts, pos, prod in self.producers:
                if len(parts) >= depth:
                    alt = prod.transposed_reading
                    for width in {prod.out_channels, alt.out_channels if alt is not None else prod.out_channels}:
                        buckets.setdefault((parts[:depth], width), []).append((pos, prod))
        return buckets

    def match(self, prefix: str, channels: int, at: int) -> Producer | None:
        """The conv/linear of width C closest in the module tree: longest shared parent path,
        then the same trailing number (bn1↔conv1), then the nearest, earlier first, then a plain
        reading of a state dict's conv over a transposed one."""
        parts = tuple(prefix.split(".")[:-1])
        for k in range(len(parts), -1, -1):
            candidates = self._buckets(k).get((parts[:k], channels))
            if candidates:
                if len(candidates) == 1:
                    return _pick(candidates[0][1], channels)
                digits = _digits(prefix)
                best = max(candidates, key=lambda c: (digits != "" and _digits(c[1].key_prefix) == digits,
                                                      -abs(c[0] - at), c[0] < at, c[1].out_channels == channels))
                return _pick(best[1], channels)
        return None


# The module facts discovery uses, and what a file must give for each: a hostile file can make
# momentum a string, eps a 400-digit integer or num_features 8·10**12 (which `show --channels`
# would allocate). A channel count from a fact alone is bounded: real BatchNorm layers have
# thousands of channels, and every per-channel array of the layer has this many entries.
MAX_FACT_CHANNELS = 1 << 24
_NUMBER, _FLAG, _COUNT = "a number", "true or false", "a count"
_FACTS = {"eps": _NUMBER, "momentum": _NUMBER, "affine": _FLAG, "track_running_stats": _FLAG, "training": _FLAG,
          "num_features": _COUNT, "groups": _COUNT}


def _fact_problem(name: str, value: Any) -> str | None:
    """Why ``value`` cannot be the module fact ``name``, or None where it can."""
    kind = _FACTS[name]
    if kind == _FLAG:
        return None if value is None or isinstance(value, bool) else kind
    if kind == _NUMBER:
        if value is None and name == "momentum":  # a cumulative average
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return kind
        try:
            float(value)
        except OverflowError:
            return "a number a float can hold"
        return None
    high = MAX_FACT_CHANNELS if name == "num_features" else MAX_SIZE
    low = 1 if name == "groups" else 0
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return f"a count from {low} to {high:,}"
    return None


def _check_facts(checkpoint: Checkpoint) -> None:
    """InvalidFileError naming the first module fact of the wrong type or out of range."""
    for path, info in checkpoint.modules.items():
        for name in _FACTS.keys() & info.attributes.keys():
            problem = _fact_problem(name, info.attributes[name])
            if problem is not None:
                shown = _fact_repr(info.attributes[name])
                raise InvalidFileError(f"module {checkpoint.display(path) or '(root)'}: {name} is {shown[:80]}"
                                       f"{'…' if len(shown) > 80 else ''}, not {problem}", path=checkpoint.path)


def _fact_repr(value: object) -> str:
    """repr of a module fact, with an int too long for str() (Python refuses past 4,300 digits)
    named by its size."""
    if isinstance(value, tuple):
        return "(" + ", ".join(map(_fact_repr, value)) + ("," if len(value) == 1 else "") + ")"
    try:
        return repr(value)
    except ValueError:  # only an int past Python's digit limit gets here
        return f"an int of {value.bit_length()} bits"  # type: ignore[union-attr]


def discover(checkpoint: Checkpoint, eps: float | None = None) -> Discovery:
    """Find every BatchNorm layer of a checkpoint, with its producer and its eps/momentum facts.

    ``eps`` (the user's --eps) overrides every layer's eps, module or default. A module fact
    of the wrong type or out of range makes the file invalid (InvalidFileError).
    """
    _check_facts(checkpoint)
    order, groups, odd = _prefixes(checkpoint)
    found = _classify(checkpoint, order, groups, odd)
    layers, possible = _pair(checkpoint, found, groups, odd, eps)
    return Discovery(checkpoint, layers, possible, found.other, found.malformed)


def _prefixes(checkpoint: Checkpoint) -> tuple[list[str], dict[str, dict[str, TensorRef]], dict[str, dict[str, str]]]:
    """Every module prefix in key order, its tensors by leaf name, and per prefix the entries
    that are not tensors ({leaf: what its value is instead})."""
    order, groups = _groups(checkpoint.tensors)
    odd: dict[str, dict[str, str]] = {}
    for key, what in checkpoint.not_tensors.items():
        prefix, _, leaf = key.rpartition(".")
        odd.setdefault(prefix, {})[leaf] = what
        if prefix not in groups:
            groups[prefix] = {}
            order.append(prefix)
    # Modules a saved model declares as BN but whose tensors are all None (affine=False,
    # track_running_stats=False) have no keys: give them a place in key order too.
    for path, info in checkpoint.modules.items():
        if _is_bn_module(info) and path not in groups:
            groups[path] = {}
            order.append(path)
    if not checkpoint.ordered:
        order.sort(key=natural_key)
    return order, groups, odd


@dataclass
class _Classified:
    """Pass 1 of discovery: every module prefix put in its place."""

    entries: list[tuple[str, int, str, str, int]] = field(default_factory=list)  # (role bn | maybe, position, prefix, display, channels)
    producers: list[tuple[int, Producer]] = field(default_factory=list)  # (position in order, producer)
    other: dict[str, int] = field(default_factory=dict)  # other normalization layers by kind
    malformed: dict[str, Malformed] = field(default_factory=dict)

    def count_other(self, kind: str) -> None:
        """One more layer of another kind (LayerNorm, GroupNorm, ...)."""
        self.other[kind] = self.other.get(kind, 0) + 1


def _classify(checkpoint: Checkpoint, order: list[str], groups: dict[str, dict[str, TensorRef]],
              odd: dict[str, dict[str, str]]) -> _Classified:
    """Classify every module prefix in order: producer, BN (or possible BN), other norm, malformed."""
    found = _Classified()
    prev_width: int | None = None
    for pos, prefix in enumerate(order):
        t, info = groups[prefix], checkpoint.modules.get(prefix)
        display = checkpoint.display(prefix) or "(root)"
        if info is not None and _OTHER_NORMS.match(info.type_name):
            found.count_other(info.type_name)
            continue
        if info is None and _elementwise_affine(prefix, t):
            found.count_other(_norm_guess(prefix))
            continue
        if _is_weight_layer(t, info):
            prod = _readings(prefix, t, info, prev_width, display, checkpoint.ordered)
            found.producers.append((pos, prod))
            alt = prod.transposed_reading
            # What it outputs before a BN says: the plain reading, unless its name says transposed.
            prev_width = (alt if alt is not None and _TRANSPOSED_NAME.search(prefix) else prod).out_channels
            continue
        bad = odd.get(prefix, _NO_STRINGS)
        if not bad and (_has_stats(t) or (_is_bn_module(info) and _consistent(t) and "running_mean" not in t
                                          and "running_var" not in t)):
            # Running statistics of one length C make a BN layer even when weight or bias
            # disagree (check's BN003 reports that), and so does a module that says BatchNorm
            # and has no statistics (track_running_stats=False).
            channels = _width(t, info) or 0
            found.entries.append(("bn", pos, prefix, display, channels))
            prev_width = channels
            continue
        if ("running_mean" in t or "running_var" in t or _is_bn_module(info)
                or not _BN_ONLY_NAMES.isdisjoint(bad)):
            width = _misfit_bn(prefix, display, t, info, bad, odd, found.malformed)
            if width is not None:
                found.entries.append(("bn", pos, prefix, display, width))
                prev_width = width
            continue
        w, b = t.get("weight"), t.get("bias")
        if w is None and b is None or (w is not None and w.ndim != 1) or (b is not None and b.ndim != 1):
            continue
        if w is not None and b is not None and w.shape == b.shape and _BN_NAME.search(prefix):
            found.entries.append(("maybe", pos, prefix, display, w.shape[0]))
            prev_width = w.shape[0]
            continue
        # 1-D affine parameters without running statistics and no BN evidence: a LayerNorm,
        # GroupNorm or similar. Counted for the "no BatchNorm here" message, never reported as BN.
        found.count_other(_norm_guess(prefix))
    return found


def _misfit_bn(prefix: str, display: str, t: dict[str, TensorRef], info: ModuleInfo | None, bad: Mapping[str, str],
               odd: dict[str, dict[str, str]], malformed: dict[str, Malformed]) -> int | None:
    """Entries named like a BN's that do not fit together: statistics of other shapes (0-dim,
    2-D, two lengths) or values that are not tensors. Where one 1-D tensor gives C, a layer that
    BN003 reports (its channel count returned); else a named problem in ``malformed``. Never
    dropped, never guessed at."""
    channels = _width(t, info)
    if channels is None or not _real(t):  # complex "statistics" are no BatchNorm's, even of one length
        malformed[display] = Malformed(_malformed(display, t, bad), bool(bad))
        return None
    for name in _FLOAT_TENSORS:
        ref = t.get(name)
        if ref is not None and ref.ndim != 1:
            # Named, never read: its values would be meaningless per channel, and a
            # stride-0 view of [10^6, 10^6] would be 10^12 of them.
            del t[name]
            odd.setdefault(prefix, {})[name] = ("a 0-dim tensor" if ref.ndim == 0
                                                else f"a tensor of shape {list(ref.shape)}")
    return channels


def _pair(checkpoint: Checkpoint, found: _Classified, groups: dict[str, dict[str, TensorRef]],
          odd: dict[str, dict[str, str]], eps: float | None) -> tuple[list[BNLayer], list[BNLayer]]:
    """Pass 2: match each BN with its producer; (layers, possible layers)."""
    producers = found.producers
    tree = None if checkpoint.ordered else _TreeIndex(producers)
    layers: list[BNLayer] = []
    possible: list[BNLayer] = []
    last_bn = -1
    cursor = 0  # producers before `cursor` are behind the previous BN: each is looked at once
    for role, at, prefix, display, channels in found.entries:
        window: list[Producer] = []
        if tree is None:
            # Ordered files: conv/linear layers after the previous BN and before this one.
            while cursor < len(producers) and producers[cursor][0] <= last_bn:
                cursor += 1
            end = cursor
            while end < len(producers) and producers[end][0] < at:
                end += 1
            window = [p for _, p in producers[cursor:end]]
            producer = next((r for r in (_pick(p, channels) for p in reversed(window)) if r is not None), None)
        else:
            producer = tree.match(prefix, channels, at)
        if role == "maybe" and producer is None:
            found.count_other(_SCALE_SHIFT)
            continue
        layer = _layer(prefix, display, groups[prefix], checkpoint.modules.get(prefix),
                       channels, producer, window, eps, checkpoint.ordered)
        layer.unusable = dict(odd.get(prefix, _NO_STRINGS))
        if "running_mean" in layer.unusable or "running_var" in layer.unusable:
            layer.track_running_stats = True  # it has statistics, only not as tensors: BN003, not BN201
        if role == "bn":
            layers.append(layer)
            last_bn = at
        else:
            layer.possible = True
            layer.track_running_stats = False
            layer.evidence = (
                f"named like a BatchNorm, 1-D weight and bias of {channels} right after "
                f"{producer.kind} {producer.name} with {channels} outputs, and no running statistics "  # type: ignore[union-attr]
                "(consistent with BatchNorm(track_running_stats=False))"
            )
            possible.append(layer)
    return layers, possible


def _malformed(display: str, t: dict[str, TensorRef], bad: Mapping[str, str]) -> str:
    """Why a prefix with running statistics is not listed as a BatchNorm layer, with the shapes
    (or, where they are not tensors, the values) it has."""
    shapes = ", ".join(f"{name} {list(t[name].shape)}" + (f" {t[name].dtype}" if t[name].dtype.startswith("complex") else "")
                       if name in t else f"{name} is {bad[name]}" if name in bad
                       else f"{name} missing" for name in TENSOR_NAMES if name != "num_batches_tracked" or name in bad)
    return (f"{display} is not listed as a BatchNorm layer: {shapes}; BatchNorm needs real 1-D weight, bias, "
            "running_mean and running_var of one length C")


def _width(t: dict[str, TensorRef], info: ModuleInfo | None) -> int | None:
    """C for a BN-named prefix whose entries disagree: the length of its first 1-D tensor
    (statistics first), else the module's num_features; None where nothing gives one."""
    for name in ("running_mean", "running_var", "weight", "bias"):
        ref = t.get(name)
        if ref is not None and ref.ndim == 1:
            return ref.shape[0]
    if info is not None and isinstance(info.attributes.get("num_features"), int):
        return int(info.attributes["num_features"])
    return None


def _layer(prefix: str, display: str, t: dict[str, TensorRef], info: ModuleInfo | None, channels: int,
           producer: Producer | None, window: list[Producer], eps: float | None, ordered: bool) -> BNLayer:
    attrs = info.attributes if info is not None else _NO_ATTRIBUTES
    if eps is not None:
        eps_value, eps_source = float(eps), "user"
    elif isinstance(attrs.get("eps"), (int, float)):
        eps_value, eps_source = float(attrs["eps"]), "module"
    else:
        eps_value, eps_source = TORCH_EPS, "default"
    if "momentum" in attrs:
        momentum, momentum_source = attrs["momentum"], "module"
    else:
        momentum, momentum_source = DEFAULT_MOMENTUM, "default"
    kind, kind_source = _kind(info, producer)
    if producer is not None and ordered:
        note = f"{producer.kind} with {producer.out_channels} outputs, the layer before it in key order"
        note += f"; {producer.evidence}" if producer.evidence else ""
    elif producer is not None:
        note = (f"{producer.kind} with {producer.out_channels} outputs, the nearest in the module tree "
                "(this format does not keep module order)" + (f"; {producer.evidence}" if producer.evidence else ""))
    elif not ordered:
        note = f"no conv/linear layer with {channels} outputs in this file"
    elif window:
        widths = ", ".join(f"{p.name} ({p.out_channels})" for p in window[-3:])
        note = f"no conv/linear with {channels} outputs since the previous BN layer (nearest: {widths}); it may normalize a sum or a concatenation"
    else:
        note = "no conv/linear layer before it since the previous BN layer"
    tensors = dict(t) if _TENSOR_SET.issuperset(t) else {k: v for k, v in t.items() if k in _TENSOR_SET}
    affine = attrs.get("affine")
    if affine is None and kind_source != "module":
        affine = "weight" in tensors or "bias" in tensors
    track = attrs.get("track_running_stats")
    if track is None:
        track = "running_mean" in tensors
    training = attrs.get("training")
    return BNLayer(
        name=display, key_prefix=prefix, kind=kind, kind_source=kind_source, channels=channels,
        tensors=tensors, eps=eps_value, eps_source=eps_source,
        momentum=momentum if momentum is None else float(momentum), momentum_source=momentum_source,
        affine=affine if affine is None else bool(affine), track_running_stats=bool(track),
        training=training if training is None else bool(training), producer=producer, producer_note=note,
    )
