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
from bninspect.services.diff import LayerDiff, Target, Witness

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
    from bninspect.numerics import TOLERANCES, compare, eval_magnitude, eval_reference, synthetic_input

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
    gamma, beta = ref.gamma(), ref.beta()
    cmp = compare(y, eval_reference(x64, mean, var, gamma, beta, ref.eps),
                  eval_magnitude(x64, mean, var, gamma, beta, ref.eps), TOLERANCES[_dtype_name(x_dtype)])
    return Witness(runtime, cmp.max_abs_err, cmp.max_rel_err, cmp.worst_channel, cmp.passed)


def _folded_witness(ref: BNLayer, target: Target, node: Any, model: Any, runtime: str) -> Witness | None:
    """The folded Conv/Gemm node against the other side's producer → BN, on a seeded N(0, 1) input."""
    import torch
    import torch.nn.functional as F
    from onnx import helper

    from bninspect.numerics import TOLERANCES, compare, dot_growth, eval_reference, fold, per_channel

    prod = ref.producer
    if prod is None or target.transposed or node.op_type not in ("Conv", "Gemm"):
        return None
    w = np.asarray(target.weight.numpy())
    b = np.asarray(target.bias.numpy()).reshape(-1) if target.bias is not None else np.zeros(ref.channels, w.dtype)
    x_dtype = np.float32 if w.dtype == np.float64 and target.weight.dtype != "float64" else w.dtype
    w, b = w.astype(x_dtype), b.astype(x_dtype)
    rng = np.random.default_rng(SEED)
    if node.op_type == "Conv":
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        # Only the fold is under test: no stride, padding or dilation, an output map 4 wide.
        attributes = [helper.make_attribute("group", int(groups))]
        x = rng.standard_normal((8, w.shape[1] * groups) + tuple(k + 3 for k in w.shape[2:])).astype(x_dtype)
        conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[w.ndim]
        w0 = torch.from_numpy(prod.weight.float64())
        b0 = torch.from_numpy(prod.bias.float64()) if prod.bias is not None else None
        xt = torch.from_numpy(x.astype(np.float64))
        with torch.no_grad():
            pre = conv(xt, w0, b0, groups=groups).numpy()
            pre_mag = conv(xt.abs(), w0.abs(), None if b0 is None else b0.abs(), groups=groups).numpy()
        reduction = int(np.prod(w.shape[1:]))
    else:
        attributes = [helper.make_attribute("transB", 1)]  # the target's weight is [out, in], PyTorch's layout
        x = rng.standard_normal((BATCH, w.shape[1])).astype(x_dtype)
        w0, x64 = prod.weight.float64(), x.astype(np.float64)
        b0 = prod.bias.float64() if prod.bias is not None else np.zeros(ref.channels)
        pre = x64 @ w0.T + b0
        pre_mag = np.abs(x64) @ np.abs(w0).T + np.abs(b0)
        reduction = w.shape[1]
    sess = _session(node.op_type, attributes, [w, b], x_dtype, _opset(model), model.ir_version)
    y = sess.run(["y"], {"x": x})[0].astype(np.float64)
    mean, var, gamma, beta = ref.values("running_mean"), ref.values("running_var"), ref.gamma(), ref.beta()
    scale, _ = fold(mean, var, gamma, beta, ref.eps)
    n = pre.ndim
    # terms of y = scale·(Σ w·x + b − μ) + β
    magnitude = np.abs(per_channel(scale, n)) * (pre_mag + np.abs(per_channel(mean, n))) + np.abs(per_channel(beta, n))
    cmp = compare(y, eval_reference(pre, mean, var, gamma, beta, ref.eps), magnitude,
                  TOLERANCES[_dtype_name(x_dtype)], dot_growth(reduction))
    return Witness(runtime, cmp.max_abs_err, cmp.max_rel_err, cmp.worst_channel, cmp.passed,
                   f"ran the folded {node.op_type} node on a seeded N(0, 1) input")


def _dtype_name(np_dtype: Any) -> str:
    return {np.dtype(np.float16): "float16", np.dtype(np.float64): "float64"}.get(np.dtype(np_dtype), "float32")


def _opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 15)


def attach_witnesses(diffs: list[LayerDiff], da: Discovery, db: Discovery) -> list[str]:
    """Run the ONNX side's BN (or folded conv) nodes in ONNX Runtime; returns notes for the user."""
    onnx_side = "b" if db.checkpoint.format == "onnx" else "a" if da.checkpoint.format == "onnx" else ""
    if not onnx_side:
        return ["--run: neither side is an ONNX model; runtime witnesses run ONNX nodes in ONNX Runtime"]
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
    for d in diffs:
        if d._pair is None:
            continue
        if d.mode == "bn":
            la, lb = d._pair
            ref, onnx_layer = (la, lb) if onnx_side == "b" else (lb, la)
            info = onnx_disc.checkpoint.modules.get(onnx_layer.key_prefix)
            node = nodes.get(str(info.attributes.get("onnx_node"))) if info is not None else None
            if node is None or not (ref.has("running_mean") and ref.has("running_var")):
                continue
            d.witness = _bn_witness(ref, onnx_layer, node, model, runtime)
        elif d.folded_side == onnx_side:
            ref, target = d._pair
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
        if not d.witness.within:
            d.causes.append(f"ONNX Runtime confirms: its output differs from the recomputation by up to "
                            f"{d.witness.max_abs:.4g} (rel. {d.witness.max_rel:.4g}) at channel {d.witness.channel}")
            d.status = "different"
    other = "A" if onnx_side == "b" else "B"
    return [f"--run: {ran} node(s) run in {runtime}: BN nodes on inputs drawn from {other}'s running statistics, "
            f"folded convs on seeded N(0, 1) inputs against {other}'s conv → BN"]
