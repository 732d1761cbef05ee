"""Runtime witnesses for ``diff --run``: the runtime that will serve an ONNX model computes its BN layers.

Each BatchNormalization node of the ONNX side is rebuilt as a one-node model (its own
attributes, opset and stored values) and run in ONNX Runtime on inputs drawn from the other
side's running statistics; the output is compared with that side's float64 eval-mode
recomputation. Where the export folded the BN, its Conv/Gemm node is run the same way on a
seeded N(0, 1) input and compared with the other side's conv → BN in float64. A training_mode=1
node, a wrong eps, a lossy float16 export or a bad fold then shows in the numbers ONNX Runtime
itself produces.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bninspect.layers import BNLayer, Discovery
from bninspect.services.diff_results import Compared, LayerDiff, Target, Witness

BATCH = 64
SEED = 0


def _np_dtype(dtype: str) -> Any:
    return {"float16": np.float16, "float64": np.float64}.get(dtype, np.float32)


def _session(op_type: str, attributes: Any, params: list[np.ndarray], x_dtype: Any, opset: int, ir_version: int,
             outputs: int = 1):
    """An ONNX Runtime session of one node ``op_type(x, *params)`` with the given attributes."""
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    names = [f"p{i}" for i in range(len(params))]
    inits = [numpy_helper.from_array(np.ascontiguousarray(p), name=n) for p, n in zip(params, names)]
    x_type = helper.np_dtype_to_tensor_dtype(np.dtype(x_dtype))
    node = helper.make_node(op_type, ["x"] + names, ["y"] + [f"extra{i}" for i in range(outputs - 1)], name="witness")
    node.attribute.extend(attributes)
    graph = helper.make_graph([node], "witness", [helper.make_tensor_value_info("x", x_type, None)],
                              [helper.make_tensor_value_info("y", x_type, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _stored(layer: BNLayer, name: str) -> np.ndarray:
    arr = np.asarray(layer.tensors[name].numpy())
    # bfloat16 is held widened to float32 (TensorRef's promise); ORT gets that float32.
    return arr.astype(np.float32) if layer.tensors[name].dtype == "bfloat16" else arr


def _bn_witness(ref: BNLayer, onnx_layer: BNLayer, node: Any, model: Any, runtime: str) -> Witness:
    from bninspect.numerics.reference import TOLERANCES, eval_check, synthetic_input

    params = [_stored(onnx_layer, n) for n in ("weight", "bias", "running_mean", "running_var")]
    x_dtype = params[0].dtype
    training = any(a.name == "training_mode" and a.i for a in node.attribute)
    # training_mode=1 must also produce the updated running mean and variance (BatchNormalization-15).
    sess = _session("BatchNormalization", node.attribute, params, x_dtype, _opset(model), model.ir_version,
                    outputs=3 if training else 1)
    mean, var = ref.values("running_mean"), ref.values("running_var")
    x = synthetic_input(mean, var, (BATCH, ref.channels, 1, 1), np.random.default_rng(SEED)).astype(x_dtype)
    x64 = x.astype(np.float64)  # the reference sees the input the runtime sees
    y = sess.run(["y"], {"x": x})[0].astype(np.float64)
    cmp = eval_check(y, x64, mean, var, ref.gamma(), ref.beta(), ref.eps, TOLERANCES[_dtype_name(x_dtype)])
    return Witness(runtime, cmp.max_abs_err, cmp.max_rel_err, cmp.worst_channel, cmp.passed)


def _conv_bn_reference(ref: BNLayer, x: np.ndarray, groups: int = 1, stride: tuple[int, ...] | None = None,
                       pads: tuple[tuple[int, int], ...] | None = None,
                       dilation: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """The other side's producer → BN in float64 on ``x``: (output, magnitude of the terms summed, reduction)."""
    from bninspect.numerics.kernels import producer_reference
    from bninspect.numerics.reference import after_producer

    prod = ref.producer
    assert prod is not None
    w0 = prod.weight.float64()
    b0 = prod.bias.float64() if prod.bias is not None else None
    pre, pre_mag = producer_reference(x, w0, b0, groups, stride, pads, dilation)
    mean, var, gamma, beta = ref.values("running_mean"), ref.values("running_var"), ref.gamma(), ref.beta()
    y, magnitude = after_producer(pre, pre_mag, mean, var, gamma, beta, ref.eps)
    return y, magnitude, int(np.prod(w0.shape[1:]))


def _folded_witness(ref: BNLayer, target: Target, node: Any, model: Any, runtime: str) -> Witness | None:
    """The folded Conv/Gemm node against the other side's producer → BN, on a seeded N(0, 1) input."""
    from onnx import helper

    from bninspect.numerics.reference import TOLERANCES, compare, dot_growth

    if ref.producer is None or target.transposed or node.op_type not in ("Conv", "Gemm"):
        return None
    w = np.asarray(target.weight.numpy())
    b = np.asarray(target.bias.numpy()).reshape(-1) if target.bias is not None else np.zeros(ref.channels, w.dtype)
    x_dtype = _np_dtype(target.weight.dtype)
    w, b = w.astype(x_dtype), b.astype(x_dtype)
    rng = np.random.default_rng(SEED)
    groups = 1
    if node.op_type == "Conv":
        groups = int(next((a.i for a in node.attribute if a.name == "group"), 1))
        # Only the fold is under test: no stride, padding or dilation, an output map 4 wide.
        attributes = [helper.make_attribute("group", groups)]
        x = rng.standard_normal((8, w.shape[1] * groups) + tuple(k + 3 for k in w.shape[2:])).astype(x_dtype)
    else:
        attributes = [helper.make_attribute("transB", 1)]  # the target's weight is [out, in], PyTorch's layout
        x = rng.standard_normal((BATCH, w.shape[1])).astype(x_dtype)
    expected, magnitude, reduction = _conv_bn_reference(ref, x, groups)
    sess = _session(node.op_type, attributes, [w, b], x_dtype, _opset(model), model.ir_version)
    y = sess.run(["y"], {"x": x})[0].astype(np.float64)
    cmp = compare(y, expected, magnitude, TOLERANCES[_dtype_name(x_dtype)], dot_growth(reduction))
    return Witness(runtime, cmp.max_abs_err, cmp.max_rel_err, cmp.worst_channel, cmp.passed,
                   f"ran the folded {node.op_type} node on a seeded N(0, 1) input")


def _dtype_name(np_dtype: Any) -> str:
    return {np.dtype(np.float16): "float16", np.dtype(np.float64): "float64"}.get(np.dtype(np_dtype), "float32")


def _opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 15)


def _ov_run(core: Any, ov: Any, first: Any, port: int, last: Any, x: np.ndarray) -> np.ndarray:
    """Run the IR's own nodes from ``first`` (its input ``port`` fed ``x``) to ``last`` on OpenVINO's CPU plugin."""
    param = ov.opset1.parameter(list(x.shape), ov.Type.f32 if x.dtype == np.float32 else ov.Type(x.dtype), name="x")
    first.input(port).replace_source_output(param.output(0))
    compiled = core.compile_model(ov.Model([last.output(0)], [param]), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.asarray(compiled(x)[0], dtype=np.float64)


def _is_const(output: Any) -> bool:
    node = output.get_node()
    if node.get_type_name() == "Convert":
        node = node.input(0).get_source_output().get_node()
    return node.get_type_name() == "Constant"


def _ov_witness(c: Compared, ir_side: str, disc: Discovery, core: Any, ov: Any, ops: dict[str, Any],
                runtime: str) -> Witness | None:
    from bninspect.numerics.reference import TOLERANCES, compare, dot_growth, eval_check, synthetic_input

    d = c.diff
    rng = np.random.default_rng(SEED)
    if d.mode == "bn":
        la, lb = c.pair
        ref, ir_layer = (la, lb) if ir_side == "b" else (lb, la)
        info = disc.checkpoint.modules.get(ir_layer.key_prefix)
        node = ops.get(str(info.attributes.get("ir_layer"))) if info is not None else None
        if node is None or node.get_type_name() != "BatchNormInference":
            return None
        port = next(i for i, inp in enumerate(node.inputs()) if not _is_const(inp.get_source_output()))
        rank = node.input(port).get_partial_shape().rank.get_length()
        mean, var = ref.values("running_mean"), ref.values("running_var")
        x = synthetic_input(mean, var, (BATCH, ref.channels) + (1,) * (rank - 2), rng).astype(np.float32)
        y = _ov_run(core, ov, node, port, node, x)
        cmp = eval_check(y, x.astype(np.float64), mean, var, ref.gamma(), ref.beta(), ref.eps, TOLERANCES[_lowest(ir_layer)])
        return Witness(runtime, cmp.max_abs_err, cmp.max_rel_err, cmp.worst_channel, cmp.passed)
    if d.folded_side != ir_side:
        return None
    ref, target = c.pair
    info = disc.checkpoint.modules.get(target.key_prefix)
    node = ops.get(str(info.attributes.get("ir_layer"))) if info is not None else None
    if node is None or ref.producer is None or target.transposed:
        return None
    last = node
    for op in ("Multiply", "Add"):  # the chain the reader folded: producer → [Multiply] → [Add]
        consumers = list(last.output(0).get_target_inputs())
        if len(consumers) == 1 and consumers[0].get_node().get_type_name() == op:
            last = consumers[0].get_node()
    w = ref.producer.weight
    attrs = node.get_attributes()
    if w.ndim == 2:
        x = rng.standard_normal((BATCH, w.shape[1])).astype(np.float32)
        expected, magnitude, reduction = _conv_bn_reference(ref, x)
    else:
        groups = int(info.attributes.get("groups", 1))
        dilation = tuple(int(v) for v in attrs.get("dilations", [1] * (w.ndim - 2)))
        spatial = tuple(dl * (k - 1) + 4 for k, dl in zip(w.shape[2:], dilation))
        x = rng.standard_normal((8, w.shape[1] * groups) + spatial).astype(np.float32)
        # The IR's own geometry (strides, explicit pads) on both sides.
        pads = tuple(zip((int(v) for v in attrs.get("pads_begin", [])), (int(v) for v in attrs.get("pads_end", []))))
        expected, magnitude, reduction = _conv_bn_reference(ref, x, groups, tuple(int(v) for v in attrs.get("strides", [])) or None,
                                                            pads or None, dilation)
    y = _ov_run(core, ov, node, 0, last, x)
    lower = "float16" if target.weight.dtype == "float16" else "float32"
    cmp = compare(y, expected, magnitude, TOLERANCES[lower], dot_growth(reduction))
    return Witness(runtime, cmp.max_abs_err, cmp.max_rel_err, cmp.worst_channel, cmp.passed,
                   f"ran the IR's folded {node.get_type_name()} on a seeded N(0, 1) input")


def _lowest(layer: BNLayer) -> str:
    dtypes = {t.dtype for t in layer.tensors.values()}
    return "float16" if "float16" in dtypes else "bfloat16" if "bfloat16" in dtypes else "float32"


def _attach_openvino(compared: list[Compared], da: Discovery, db: Discovery, ir_side: str) -> list[str]:
    try:
        import openvino as ov
    except ImportError:
        return ["--run: openvino is not installed (pip install openvino); no runtime witness"]
    disc = db if ir_side == "b" else da
    core = ov.Core()
    model = core.read_model(disc.checkpoint.path)
    ops = {op.get_friendly_name(): op for op in model.get_ops()}
    runtime = f"openvino {ov.__version__.split('-')[0]}"
    ran = 0
    for c in compared:
        c.diff.witness = _ov_witness(c, ir_side, disc, core, ov, ops, runtime)
        ran += c.diff.witness is not None
        _confirm(c.diff)
    other = "A" if ir_side == "b" else "B"
    return [f"--run: {ran} layer(s) of the IR run in {runtime} (CPU, f32 inference precision) against {other}'s "
            "float64 recomputation"]


def _confirm(d: LayerDiff) -> None:
    if d.witness is not None and not d.witness.within:
        d.causes.append(f"{d.witness.runtime.split()[0]} confirms: its output differs from the recomputation by up to "
                        f"{d.witness.max_abs:.4g} (rel. {d.witness.max_rel:.4g}) at channel {d.witness.channel}")
        d.status = "different"


def attach_witnesses(compared: list[Compared], da: Discovery, db: Discovery) -> list[str]:
    """Run the ONNX (ONNX Runtime) or OpenVINO IR (OpenVINO) side's BN or folded layers; returns notes for the user."""
    formats = (da.checkpoint.format, db.checkpoint.format)
    onnx_side = "b" if formats[1] == "onnx" else "a" if formats[0] == "onnx" else ""
    ir_side = "b" if formats[1] == "openvino-ir" else "a" if formats[0] == "openvino-ir" else ""
    if not onnx_side and ir_side:
        return _attach_openvino(compared, da, db, ir_side)
    if not onnx_side:
        return ["--run: neither side is an ONNX model or OpenVINO IR; nothing for a runtime to run"]
    try:
        import onnxruntime
    except ImportError:
        return ["--run: onnxruntime is not installed (pip install onnxruntime); no runtime witness"]
    from bninspect.formats.onnx import load_model

    onnx_disc = db if onnx_side == "b" else da
    model = load_model(onnx_disc.checkpoint.path)
    nodes = {n.name: n for n in model.graph.node}
    runtime = f"onnxruntime {onnxruntime.__version__}"
    ran = 0
    for c in compared:
        d = c.diff
        if d.mode == "bn":
            la, lb = c.pair
            ref, onnx_layer = (la, lb) if onnx_side == "b" else (lb, la)
            info = onnx_disc.checkpoint.modules.get(onnx_layer.key_prefix)
            node = nodes.get(str(info.attributes.get("onnx_node"))) if info is not None else None
            if node is None or not (ref.has("running_mean") and ref.has("running_var")):
                continue
            d.witness = _bn_witness(ref, onnx_layer, node, model, runtime)
        elif d.folded_side == onnx_side:
            ref, target = c.pair
            info = onnx_disc.checkpoint.modules.get(target.key_prefix)
            node = nodes.get(str(info.attributes.get("onnx_node"))) if info is not None else None
            if node is None:
                continue
            d.witness = _folded_witness(ref, target, node, model, runtime)
            if d.witness is None:
                continue
        else:
            continue
        ran += 1
        _confirm(d)
    other = "A" if onnx_side == "b" else "B"
    return [f"--run: {ran} node(s) run in {runtime}: BN nodes on inputs drawn from {other}'s running statistics, "
            f"folded convs on seeded N(0, 1) inputs against {other}'s conv → BN"]
