"""OpenVINO IR (``model.xml`` + ``model.bin``), parsed directly: no runtime, nothing from the file runs.

What the converters leave of a BatchNorm, each turned into state-dict-like keys:

- ``BatchNormInference`` layers: ``<bn>.weight/.bias/.running_mean/.running_var`` and the
  ``epsilon`` attribute. Input order differs by version (OpenVINO source, op::v0 vs op::v5
  BatchNormInference): opset1 nodes take (gamma, beta, data, mean, variance), opset5 nodes
  take (data, gamma, beta, mean, variance); the spec of -5 in ../shared/seeds lists the latter.
  The data input is the one that is not a constant, so both orders are read by position of
  the four constants.
- BN fused away (``ov.convert_model`` does this): a Convolution/GroupConvolution/MatMul with
  constant weights followed by a per-channel ``Multiply`` and/or ``Add``. The producer is
  emitted as ``<conv>.weight``/``.bias`` with the Multiply folded into the weight, so it reads
  like a PyTorch conv after ``fuse_conv_bn``; its ModuleInfo says ``folded_bn`` = the BN's
  name where the layer names keep it (``__module.features.0.bn/aten::batch_norm/...``).

Constants are read lazily from the .bin (offset, size, element_type checked against the
file); a ``Const`` → ``Convert`` pair (``compress_to_fp16``) keeps the stored dtype, so a
float16 IR reports float16 tensors.
"""

from __future__ import annotations

import math
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import defusedxml.ElementTree as DefusedET
import numpy as np
from defusedxml import DefusedXmlException

from bninspect.checkpoint import MAX_SIZE, SHAPE_RULE, STORED_DTYPES, Checkpoint, ModuleInfo, TensorRef, decode, is_shape
from bninspect.errors import InvalidFileError, UsageError
from bninspect.formats.onnx import scope_path, unique_name
from bninspect.formats.paths import SharedFile, open_companion, open_regular, pread_exact

# An IR's XML describes the graph, not the weights: megabytes for the largest models. ElementTree
# needs about ten times the text in memory, so more than this is not an IR we parse.
MAX_XML_BYTES = 128 << 20

# IR element_type -> torch dtype name.
IR_DTYPES = {"f32": "float32", "f16": "float16", "f64": "float64", "bf16": "bfloat16", "i64": "int64",
             "i32": "int32", "i16": "int16", "i8": "int8", "u8": "uint8", "boolean": "bool"}

# ov.convert_model names layers after the TorchScript module scope: "__module.layer1.0.bn1/aten::...".
_MODULE_SCOPE = re.compile(r"__module\.([^/]+)/")
_SELF_WEIGHT = re.compile(r"^(?:self\.)?(.+)\.weight$")


def sniff(head: bytes) -> bool:
    """XML whose root element is ``<net``: an OpenVINO IR model description."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not text.startswith(b"<"):
        return False
    body = re.sub(rb"<\?.*?\?>|<!--.*?-->", b"", text, flags=re.S).lstrip()
    return body.startswith(b"<net") and body[4:5] in (b" ", b">", b"\t", b"\n", b"\r")


@dataclass
class _Layer:
    id: str
    name: str
    type: str
    version: str
    data: dict[str, str]
    in_ports: list[str]  # input port ids in document order
    in_ranks: dict[str, int]  # input port id -> rank (number of <dim>)
    out_names: list[str] = field(default_factory=list)
    inputs: dict[str, tuple[str, str]] = field(default_factory=dict)  # to-port -> (from-layer, from-port)
    consumers: list[str] = field(default_factory=list)


def _count(text: str) -> int | None:
    """A size or offset written in the XML: decimal digits of an int64, else None."""
    text = text.strip()
    if text.isascii() and text.isdigit() and len(text) <= 19 and int(text) <= MAX_SIZE:
        return int(text)
    return None


class _Bin:
    """The weights file (``paths.open_companion``: beside the XML, a regular file, recorded as
    read), read lazily with every range checked against its size."""

    def __init__(self, xml_path: str) -> None:
        self.xml_path = xml_path
        name = os.path.basename(os.path.splitext(xml_path)[0]) + ".bin"
        self.file = open_companion(xml_path, name, "weights file")
        self.size = os.fstat(self.file.fd).st_size

    def ref(self, layer: _Layer) -> TensorRef:
        et = layer.data.get("element_type", "")
        dtype = IR_DTYPES.get(et)
        if dtype is None:
            raise InvalidFileError(f"constant '{layer.name}' has an element type bninspect does not read ({et or 'none'})", path=self.xml_path)
        dims = [_count(s) for s in layer.data.get("shape", "").split(",") if s.strip()]
        offset, size = _count(layer.data.get("offset", "")), _count(layer.data.get("size", ""))
        shape = tuple(d for d in dims if d is not None)
        if len(shape) != len(dims) or offset is None or size is None or not is_shape(shape):
            raise InvalidFileError(f"constant '{layer.name}' has no valid shape/offset/size ({SHAPE_RULE}; offset "
                                   "and size in bytes)", path=self.xml_path)
        if size != math.prod(shape) * STORED_DTYPES[dtype][1] or offset + size > self.size:
            raise InvalidFileError(f"constant '{layer.name}': bytes {offset}..{offset + size} do not fit its shape or the .bin ({self.size} bytes)", path=self.xml_path)
        return TensorRef(shape, dtype, _load, self.file, offset, size, dtype, shape, layer.name)


def _load(file: SharedFile, offset: int, size: int, dtype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    raw = file.pread(size, offset, f"constant '{name}'")
    return decode(np.frombuffer(raw, dtype=STORED_DTYPES[dtype][0]), dtype).reshape(shape)


def _parse(path: str) -> dict[str, _Layer]:
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        if size > MAX_XML_BYTES:
            raise InvalidFileError(f"an IR description of {size} bytes; bninspect parses at most {MAX_XML_BYTES}",
                                   path=path)
        raw = pread_exact(fd, size, 0, path, "the XML")
    finally:
        os.close(fd)
    # An IR never declares a DOCTYPE: defusedxml refuses one in any encoding (a UTF-16 file hides
    # "<!DOCTYPE" from a byte search), which rules out entity expansion and external references.
    try:
        root = DefusedET.fromstring(raw, forbid_dtd=True)
    except DefusedXmlException:
        raise InvalidFileError("OpenVINO IR with a DOCTYPE/ENTITY declaration refused", path=path) from None
    except ET.ParseError as exc:
        raise InvalidFileError(f"not well-formed XML ({exc})", path=path) from None
    if root.tag != "net" or root.find("layers") is None:
        raise InvalidFileError("XML without the <net><layers> of an OpenVINO IR", path=path)
    layers: dict[str, _Layer] = {}
    for el in root.find("layers"):
        if el.tag != "layer":
            continue
        data = el.find("data")
        inp = el.find("input")
        out = el.find("output")
        layer = _Layer(
            id=el.get("id", ""), name=el.get("name", ""), type=el.get("type", ""), version=el.get("version", ""),
            data=dict(data.attrib) if data is not None else {},
            in_ports=[p.get("id", "") for p in inp.findall("port")] if inp is not None else [],
            in_ranks={p.get("id", ""): len(p.findall("dim")) for p in inp.findall("port")} if inp is not None else {},
            out_names=[p.get("names", "") for p in out.findall("port")] if out is not None else [],
        )
        layers[layer.id] = layer
    edges = root.find("edges")
    for e in edges if edges is not None else []:
        src, dst = layers.get(e.get("from-layer", "")), layers.get(e.get("to-layer", ""))
        if src is None or dst is None:
            raise InvalidFileError(f"edge {e.get('from-layer')}→{e.get('to-layer')} names a layer that does not exist", path=path)
        dst.inputs[e.get("to-port", "")] = (src.id, e.get("from-port", ""))
        src.consumers.append(dst.id)
    return layers


def _module(name: str, fallback: str = "") -> str:
    """The PyTorch module path a converter kept in a layer or constant name, else ``fallback``."""
    scopes = _MODULE_SCOPE.findall(name)
    if scopes:
        return scopes[-1]
    m = _SELF_WEIGHT.match(name)
    if m:
        return m.group(1)
    if name.startswith("/"):  # converted from an ONNX file of the TorchScript exporter
        return scope_path(name) or fallback
    return fallback


class _Reader:
    def __init__(self, path: str, layers: dict[str, _Layer], weights: _Bin) -> None:
        self.path, self.layers, self.bin = path, layers, weights
        self.used: set[str] = set()

    def const(self, layer: _Layer, port: str) -> tuple[_Layer, TensorRef] | None:
        """The constant feeding ``port`` of ``layer`` (through a decompressing Convert), if any."""
        src = layer.inputs.get(port)
        node = self.layers.get(src[0]) if src else None
        if node is not None and node.type == "Convert" and node.inputs:
            node = self.layers.get(next(iter(node.inputs.values()))[0])
        if node is None or node.type != "Const" or node.data.get("element_type") not in IR_DTYPES:
            return None  # computed, or a packed type (u4, nf4, f8 weight compression) we do not decode
        return node, self.bin.ref(node)

    def unique(self, name: str) -> str:
        return unique_name(name, self.used)

    def per_channel(self, layer: _Layer, channels: int) -> TensorRef | None:
        """The constant operand of an elementwise Multiply/Add if it holds one value per channel."""
        for port in layer.in_ports:
            found = self.const(layer, port)
            if found is None:
                continue
            ref = found[1]
            dims = [d for d in ref.shape if d != 1]
            # [1, C, 1, 1] after a conv, [1, C] after a MatMul: the channel is the only non-1 dim.
            if dims == [channels] and (len(ref.shape) < 2 or ref.shape[1] == channels or ref.ndim == 1):
                return TensorRef((channels,), ref.dtype, lambda r=ref: r.numpy().reshape(-1))
        return None

    def follower(self, layer: _Layer, op: str) -> _Layer | None:
        if len(layer.consumers) != 1:
            return None
        nxt = self.layers[layer.consumers[0]]
        return nxt if nxt.type == op else None


def read(path: str, *, key: str | None = None, strict: bool = False) -> Checkpoint:
    """Read BatchNormInference layers and (folded) producers of an OpenVINO IR into a Checkpoint."""
    if key is not None:
        raise UsageError("--key applies to nested checkpoints, not to OpenVINO IR", path=path)
    layers = _parse(path)
    r = _Reader(path, layers, _Bin(path))
    tensors: dict[str, TensorRef] = {}
    modules: dict[str, ModuleInfo] = {}
    notes: list[str] = []
    folded = compressed = 0
    for layer in layers.values():
        if layer.type == "BatchNormInference":
            found = [(p, r.const(layer, p)) for p in layer.in_ports]
            consts = [c for _, c in found if c is not None]
            data_ports = [p for p, c in found if c is None]
            if len(consts) != 4 or len(data_ports) != 1:
                notes.append(f"BatchNormInference '{layer.name}' takes parameters from computed values; skipped")
                continue
            # Both versions list gamma, beta, mean, variance in this relative order; only data moves.
            gamma, beta, mean, var = (c[1] for c in consts)
            name = r.unique(_module(layer.name, layer.name))
            for suffix, ref in (("weight", gamma), ("bias", beta), ("running_mean", mean), ("running_var", var)):
                tensors[f"{name}.{suffix}"] = ref
            rank = layer.in_ranks.get(data_ports[0])
            kind = f"BatchNorm{rank - 2}d" if rank in (3, 4, 5) else ("BatchNorm1d" if rank == 2 else "BatchNorm")
            try:
                eps = float(layer.data.get("epsilon", ""))
            except ValueError:
                raise InvalidFileError(f"BatchNormInference '{layer.name}' has no valid epsilon", path=path) from None
            modules[name] = ModuleInfo(name, kind, {"eps": eps, "training": False, "track_running_stats": True,
                                                    "ir_layer": layer.name, "ir_version": layer.version})
        elif layer.type in ("Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData"):
            emitted = _producer(r, layer, tensors, modules)
            folded += bool(emitted and modules[emitted].attributes.get("folded_bn") is not None)
            src = layer.inputs.get(layer.in_ports[1]) if len(layer.in_ports) > 1 else None
            if emitted is None and layer.type != "MatMul" and src is not None and layers[src[0]].type in ("Multiply", "Subtract"):
                compressed += 1
    if compressed:
        # NNCF weight compression: Const(u8/i8/u4) → Convert → Subtract → Multiply → Convolution.
        notes.append(f"{compressed} convolution(s) take decompressed (quantized) weights; not read, so BN fused "
                     "into them cannot be compared")
    if folded:
        notes.append(f"{folded} BatchNorm layer(s) were fused into the preceding Convolution/MatMul by the converter "
                     "(their names survive on the Add layers; `diff` compares them in folded form)")
    return Checkpoint(path=path, format="openvino-ir", tensors=tensors, modules=modules, notes=notes)


def _producer(r: _Reader, layer: _Layer, tensors: dict[str, TensorRef], modules: dict[str, ModuleInfo]) -> str | None:
    weight_port = layer.in_ports[1] if len(layer.in_ports) > 1 else None
    found = r.const(layer, weight_port) if weight_port else None
    if found is None:
        return None
    wconst, wref = found
    groups = 1
    if layer.type == "GroupConvolution":
        # [G, out/G, in/G, k...] → PyTorch's [out, in/G, k...]
        groups = wref.shape[0]
        shape = (wref.shape[0] * wref.shape[1],) + wref.shape[2:]
        wref = TensorRef(shape, wref.dtype, lambda w=wref, s=shape: w.numpy().reshape(s))
    elif layer.type == "MatMul":
        if wref.ndim != 2:
            return None
        if layer.data.get("transpose_b", "false") != "true":  # weights stored [in, out]
            w0 = wref
            wref = TensorRef(w0.shape[::-1], w0.dtype, lambda w=w0: np.ascontiguousarray(w.numpy().T))
    out_channels = wref.shape[0]
    if layer.type == "ConvolutionBackpropData":
        out_channels = wref.shape[1]
    node = layer
    mul = r.follower(node, "Multiply")
    scale = r.per_channel(mul, out_channels) if mul is not None else None
    if scale is not None:
        node = mul
    add = r.follower(node, "Add")
    shift = r.per_channel(add, out_channels) if add is not None else None
    bn_name = None
    for candidate in (add if shift is not None else None, mul if scale is not None else None):
        if candidate is not None and ("batch_norm" in candidate.name or "BatchNorm" in candidate.name):
            bn_name = _module(candidate.name, candidate.name)
    if scale is not None and layer.type == "ConvolutionBackpropData":
        return None  # a per-channel scale on a transposed conv's [in, out, k] weight: not handled
    name = _module(wconst.name) or _module(layer.name) or (f"{bn_name}:producer" if bn_name else layer.name)
    name = r.unique(name)
    if scale is not None:
        w0, s0 = wref, scale
        bshape = (out_channels,) + (1,) * (w0.ndim - 1)
        # The Multiply after the producer is BN's γ/√(σ²+ε) per output channel: fold it into W.
        wref = TensorRef(w0.shape, w0.dtype, lambda: (w0.float64() * s0.float64().reshape(bshape)).astype(np.float64))
    tensors[f"{name}.weight"] = wref
    if shift is not None:
        tensors[f"{name}.bias"] = shift
    type_name = "Linear"
    attrs: dict[str, object] = {"ir_layer": layer.name, "folded_bn": bn_name, "folded_scale": scale is not None}
    if layer.type != "MatMul":
        spatial = max(wref.ndim - 2, 1)
        type_name = ("ConvTranspose" if layer.type == "ConvolutionBackpropData" else "Conv") + f"{spatial}d"
        attrs["groups"] = groups
        attrs["kernel_size"] = tuple(wref.shape[2:])
    modules[name] = ModuleInfo(name, type_name, attrs)
    return name
