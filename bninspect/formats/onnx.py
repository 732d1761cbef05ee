"""ONNX models: every BatchNormalization node and every Conv/ConvTranspose/Gemm node as a state dict.

The graph becomes state-dict-like keys so the core discovery works unchanged:
``<module>.weight`` (scale), ``<module>.bias`` (B), ``<module>.running_mean``,
``<module>.running_var`` per BatchNormalization node and ``<module>.weight``/``.bias`` per
producer, in graph order. Module names keep PyTorch's where the exporter kept them: first
from initializer names (``features.2.bn.running_mean`` → ``features.2.bn``), then from the
TorchScript exporter's scope names (``/layer1/layer1.0/conv1/Conv`` → ``layer1.0.conv1``),
else the node name.

Facts from the ONNX operator spec (onnx/docs/Operators.md, BatchNormalization-15):
``epsilon`` defaults to 1e-5, ``momentum`` to 0.9 and weighs the *running* value
(running = running·momentum + batch·(1 − momentum)), the complement of PyTorch's momentum
which weighs the batch; ``training_mode`` (opset 14+) defaults to 0.

The ``onnx`` package is an optional extra (``pip install 'bninspect[onnx]'``); it is imported
only when an ONNX file is read. Tensor values are read lazily, external data included,
from the model's own directory only.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from bninspect.checkpoint import MAX_SIZE, SHAPE_RULE, STORED_DTYPES, Checkpoint, ModuleInfo, TensorRef, decode, is_shape
from bninspect.errors import InvalidFileError, UsageError
from bninspect.formats.paths import SharedFile, open_companion, open_regular, pread_exact

INSTALL_HINT = "reading ONNX models needs the onnx package: pip install 'bninspect[onnx]'"

# ONNX BatchNormalization defaults (Operators.md, BatchNormalization-15).
ONNX_DEFAULT_EPS = 1e-5
ONNX_DEFAULT_MOMENTUM = 0.9

# TensorProto.DataType -> torch dtype name (onnx/onnx.proto: FLOAT=1, UINT8=2, INT8=3,
# INT16=5, INT32=6, INT64=7, BOOL=9, FLOAT16=10, DOUBLE=11, BFLOAT16=16).
ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64",
               9: "bool", 10: "float16", 11: "float64", 16: "bfloat16"}

PRODUCER_OPS = {"Conv": "Conv", "ConvTranspose": "ConvTranspose", "Gemm": "Linear", "MatMul": "Linear"}


def sniff(head: bytes) -> bool:
    """An ONNX ModelProto: protobuf field 1 (ir_version, varint, tag 0x08) comes first.

    Serializers write fields in number order, so a small ir_version is followed by another
    length-delimited field (producer_name=2 … opset_import=8).
    """
    return (len(head) >= 3 and head[0] == 0x08 and 1 <= head[1] <= 30
            and head[2] in (0x12, 0x1A, 0x22, 0x2A, 0x32, 0x3A, 0x42))


def _import_onnx(path: str) -> Any:
    try:
        import onnx
    except ImportError:
        raise UsageError(INSTALL_HINT, path=path) from None
    return onnx


# protobuf cannot parse a message larger than 2 GiB; larger models keep their weights as external data.
MAX_MODEL_BYTES = 2**31 - 1


def load_model(path: str) -> Any:
    """The ModelProto without external data (tensors are read lazily); one-line errors.

    The bytes are read through ``paths.open_regular`` (a regular file, never blocking, recorded
    as read) and parsed from memory: onnx.load would open the path itself.
    """
    onnx = _import_onnx(path)
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        if size > MAX_MODEL_BYTES:
            raise InvalidFileError(f"an ONNX file of {size} bytes; protobuf parses at most {MAX_MODEL_BYTES} "
                                   "(models that large keep their weights as external data)", path=path)
        data = pread_exact(fd, size, 0, path, "the model")
    finally:
        os.close(fd)
    try:
        return onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise InvalidFileError(f"not a valid ONNX model ({type(exc).__name__} while parsing the protobuf)", path=path) from None


def _byte_count(info: dict[str, str], key: str, default: int, tensor: Any, model_path: str) -> int:
    """An external-data field that counts bytes (offset, length): decimal digits of an int64."""
    text = info.get(key)
    if text is None or text == "":
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= 19 and int(text) <= MAX_SIZE):
        raise InvalidFileError(f"tensor '{tensor.name}': external data {key} '{text}' is not a byte count",
                               path=model_path)
    return int(text)


class _Companions:
    """The external data files of one model, each opened once (``paths.open_companion``: inside
    the model's folder, a regular file, recorded as read)."""

    def __init__(self, model_path: str) -> None:
        self.model_path = model_path
        self.files: dict[str, SharedFile] = {}

    def open(self, location: str) -> SharedFile:
        file = self.files.get(location)
        if file is None:
            file = self.files[location] = open_companion(self.model_path, location, "external data file")
        return file


def _external_ref(tensor: Any, companions: _Companions, shape: tuple[int, ...], dtype: str) -> TensorRef:
    model_path = companions.model_path
    info = {e.key: e.value for e in tensor.external_data}
    file = companions.open(info.get("location", ""))
    offset = _byte_count(info, "offset", 0, tensor, model_path)
    itemsize = STORED_DTYPES[dtype][1]
    length = _byte_count(info, "length", math.prod(shape) * itemsize, tensor, model_path)
    if length != math.prod(shape) * itemsize:
        raise InvalidFileError(f"tensor '{tensor.name}': external data length {length} does not match its shape",
                               path=model_path)
    return TensorRef(shape, dtype, _load_external, file, offset, length, dtype, shape)


def _load_external(file: SharedFile, offset: int, length: int, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    raw = file.pread(length, offset, "external data")
    return decode(np.frombuffer(raw, dtype=STORED_DTYPES[dtype][0]), dtype).reshape(shape)


def tensor_ref(tensor: Any, model_path: str, companions: _Companions) -> TensorRef:
    """A lazy reference to an initializer (inline or external data), shape and dtype free."""
    shape = tuple(tensor.dims)
    if not is_shape(shape):
        raise InvalidFileError(f"tensor '{tensor.name}' has an invalid shape {list(shape)} ({SHAPE_RULE})",
                               path=model_path)
    dtype = ONNX_DTYPES.get(int(tensor.data_type))
    if dtype is None:
        raise InvalidFileError(f"tensor '{tensor.name}' has an element type bninspect does not read (ONNX type {tensor.data_type})", path=model_path)
    if tensor.data_location == 1:  # TensorProto.EXTERNAL
        return _external_ref(tensor, companions, shape, dtype)

    def load() -> np.ndarray:
        from onnx import numpy_helper

        try:
            arr = numpy_helper.to_array(tensor)
            if dtype == "bfloat16":  # ml_dtypes' bfloat16 → float32, as TensorRef promises
                arr = arr.astype(np.float32)
            return arr.reshape(shape)
        except ValueError:  # raw_data of another length than dims say
            raise InvalidFileError(f"tensor '{tensor.name}' is corrupt: its data does not match its shape {list(shape)}",
                                   path=model_path) from None

    return TensorRef(shape, dtype, load)


def _transposed(ref: TensorRef) -> TensorRef:
    """A 2-D weight stored [in, out] shown as PyTorch's Linear stores it, [out, in]."""
    return TensorRef(ref.shape[::-1], ref.dtype, lambda: np.ascontiguousarray(ref.numpy().T))


def scope_path(node_name: str) -> str:
    """The module path in a TorchScript-exporter node name: ``/layer1/layer1.0/conv1/Conv`` → ``layer1.0.conv1``.

    Each scope component is a child's attribute name, except that a Sequential's children
    repeat the parent's name (``layer1`` then ``layer1.0``): such a component replaces the last.
    """
    parts = [p for p in node_name.split("/") if p][:-1]
    path: list[str] = []
    for part in parts:
        if path and part.startswith(path[-1] + "."):
            path[-1] = part
        else:
            path.append(part)
    return ".".join(path)


def _module_name(node: Any, index: int, initializer_name: str, suffix: str, used: set[str]) -> str:
    if initializer_name.endswith(suffix) and len(initializer_name) > len(suffix):
        name = initializer_name[: -len(suffix)]
    elif node.name.startswith("/") and scope_path(node.name):
        name = scope_path(node.name)
    else:
        name = node.name or f"{node.op_type}_{index}"
    return unique_name(name, used)


def unique_name(name: str, used: set[str]) -> str:
    """``name``, or ``name#2``, ``name#3``… if taken; recorded in ``used``."""
    # Two nodes may claim one name (a module called twice); keys must stay unique.
    unique, n = name, 1
    while unique in used:
        n += 1
        unique = f"{name}#{n}"
    used.add(unique)
    return unique


def _ranks(model: Any) -> dict[str, int]:
    """Rank of each value the graph declares or shape inference can derive (best effort)."""
    graph = model.graph
    ranks: dict[str, int] = {}
    try:
        from onnx import shape_inference

        graph = shape_inference.infer_shapes(model).graph
    except Exception:  # inference is a nicety: a model it cannot handle still has BN nodes to read
        pass
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            ranks[vi.name] = len(t.shape.dim)
    return ranks


def _decimal(value: float) -> float:
    """A float32 attribute as the decimal its writer meant (1e-5, not 9.999999747378752e-06)."""
    return float(str(np.float32(value)))


# The attributes the reader uses and their type in the operator spec (AttributeProto.FLOAT = 1, INT = 2).
_ATTRIBUTE_TYPES = {"epsilon": 1, "momentum": 1, "training_mode": 2, "transB": 2, "group": 2}


def _attrs(node: Any, path: str) -> dict[str, Any]:
    """The node's attributes this reader uses, each of its spec's type (InvalidFileError otherwise)."""
    from onnx import AttributeProto

    found: dict[str, Any] = {}
    for a in node.attribute:
        want = _ATTRIBUTE_TYPES.get(a.name)
        if want is None:
            continue
        if a.type != want:
            kinds = AttributeProto.AttributeType
            got = kinds.Name(a.type) if a.type in kinds.values() else str(a.type)
            raise InvalidFileError(f"{node.op_type} node '{node.name}': attribute {a.name} is of type {got}; the "
                                   f"ONNX spec makes it {kinds.Name(want)}", path=path)
        found[a.name] = a.f if want == AttributeProto.FLOAT else a.i
    if found.get("group", 1) < 1:
        raise InvalidFileError(f"{node.op_type} node '{node.name}': group {found['group']} is not a positive count",
                               path=path)
    return found


def _constants(graph: Any) -> Callable[[str], Any | None]:
    """``const(name)``: the stored tensor a node input names (an initializer or a Constant
    node's value, through Identity aliases), None where the input is computed."""
    consts: dict[str, Any] = {t.name: t for t in graph.initializer}
    for node in graph.node:  # the TorchScript exporter sometimes keeps weights in Constant nodes
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value" and a.t is not None:
                    t = a.t
                    t.name = t.name or node.output[0]
                    consts[node.output[0]] = t
    alias: dict[str, str] = {}
    for node in graph.node:  # weights shared through Identity (the dynamo exporter does this)
        if node.op_type == "Identity" and node.input and node.input[0] in consts:
            alias[node.output[0]] = node.input[0]

    def const(name: str) -> Any | None:
        return consts.get(alias.get(name, name))

    return const


@dataclass
class _Reading:
    """One ONNX graph being read into tensors and modules, a node at a time."""

    path: str
    const: Callable[[str], Any | None]
    ranks: dict[str, int]
    opset: int | None
    companions: _Companions
    tensors: dict[str, TensorRef] = field(default_factory=dict)
    modules: dict[str, ModuleInfo] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    used: set[str] = field(default_factory=set)
    training_nodes: list[str] = field(default_factory=list)

    def stored(self, name: str) -> bool:
        """Whether the input ``name`` is a stored tensor of an element type bninspect reads."""
        t = self.const(name)
        return t is not None and int(t.data_type) in ONNX_DTYPES

    def batch_norm(self, node: Any, index: int) -> None:
        """A BatchNormalization node: its four tensors and attributes, or a note why it is skipped."""
        const = self.const
        if len(node.input) < 5 or any(const(n) is None for n in node.input[1:5]):
            self.notes.append(f"BatchNormalization node '{node.name}' takes its parameters from computed values; skipped")
            return
        if not all(self.stored(n) for n in node.input[1:5]):
            self.notes.append(f"BatchNormalization node '{node.name}' stores its parameters in an element type "
                              "bninspect does not read; skipped")
            return
        scale, bias, mean, var = (const(n) for n in node.input[1:5])
        name = _module_name(node, index, mean.name, ".running_mean", self.used)
        attrs = _attrs(node, self.path)
        onnx_momentum = _decimal(attrs.get("momentum", ONNX_DEFAULT_MOMENTUM))
        training = bool(attrs.get("training_mode", 0))
        if training:
            self.training_nodes.append(name)
        rank = self.ranks.get(node.input[0])
        kind = f"BatchNorm{rank - 2}d" if rank in (3, 4, 5) else ("BatchNorm1d" if rank == 2 else "BatchNorm")
        for suffix, t in (("weight", scale), ("bias", bias), ("running_mean", mean), ("running_var", var)):
            self.tensors[f"{name}.{suffix}"] = tensor_ref(t, self.path, self.companions)
        self.modules[name] = ModuleInfo(name, kind, {
            "eps": _decimal(attrs.get("epsilon", ONNX_DEFAULT_EPS)),
            # PyTorch's m weighs the batch, ONNX's weighs the running value: m = 1 − momentum.
            "momentum": _decimal(1.0 - onnx_momentum),
            "onnx_momentum": onnx_momentum,
            "training": training,
            "track_running_stats": True,
            "onnx_node": node.name,
            # What the node itself sets (else the spec's default applies) and its opset, for
            # explanations in the file's own terms.
            "onnx_attributes": tuple(sorted(attrs)),
            "onnx_opset": self.opset,
        })

    def producer(self, node: Any, index: int) -> None:
        """A Conv/ConvTranspose/Gemm/MatMul node with a stored weight: its weight (as PyTorch
        lays it out), bias and shape facts."""
        weight = self.const(node.input[1])
        attrs = _attrs(node, self.path)
        wref = tensor_ref(weight, self.path, self.companions)
        if node.op_type == "MatMul":
            if wref.ndim != 2:
                return
            wref = _transposed(wref)  # MatMul's B is [in, out]
        elif node.op_type == "Gemm" and not attrs.get("transB", 0):
            wref = _transposed(wref)
        name = _module_name(node, index, weight.name, ".weight", self.used)
        self.tensors[f"{name}.weight"] = wref
        bias_name = node.input[2] if len(node.input) > 2 and node.op_type != "MatMul" else ""
        if bias_name and self.stored(bias_name):
            self.tensors[f"{name}.bias"] = tensor_ref(self.const(bias_name), self.path, self.companions)
        type_name = PRODUCER_OPS[node.op_type]
        info: dict[str, Any] = {"onnx_node": node.name}
        if type_name != "Linear":
            spatial = max(wref.ndim - 2, 1)
            type_name = f"{type_name}{spatial}d"
            info["groups"] = int(attrs.get("group", 1))
            info["kernel_size"] = tuple(wref.shape[2:])
        self.modules[name] = ModuleInfo(name, type_name, info)


def read(path: str, *, key: str | None = None, strict: bool = False) -> Checkpoint:
    """Read an ONNX model's BN and producer nodes into a Checkpoint (no code runs)."""
    if key is not None:
        raise UsageError("--key applies to nested checkpoints, not to ONNX models", path=path)
    model = load_model(path)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    reading = _Reading(path, _constants(model.graph), _ranks(model), opset, _Companions(path))
    for index, node in enumerate(model.graph.node):
        if node.op_type == "BatchNormalization":
            reading.batch_norm(node, index)
        elif node.op_type in PRODUCER_OPS and len(node.input) >= 2 and reading.stored(node.input[1]):
            reading.producer(node, index)
    notes, modules = reading.notes, reading.modules
    if reading.training_nodes:
        notes.append(f"{len(reading.training_nodes)} BatchNormalization node(s) have training_mode=1: a runtime "
                     "normalizes with batch statistics, not the stored ones")
    if modules and not any(m.type_name.startswith("BatchNorm") for m in modules.values()):
        notes.append("no BatchNormalization nodes: an export with constant folding fuses BN into the Conv/Gemm "
                     "before it (`diff` against the checkpoint compares them in folded form)")
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    notes.append(f"ONNX opset {opsets.get('ai.onnx', '?')}, producer {model.producer_name or '?'} {model.producer_version}".strip())
    return Checkpoint(path=path, format="onnx", tensors=reading.tensors, modules=modules, notes=notes)
