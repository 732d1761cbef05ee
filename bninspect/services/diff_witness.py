"""Runtime witnesses for ``diff --run``: the runtime that will serve an ONNX model computes its BN layers.

Each BatchNormalization node of the ONNX side is rebuilt as a one-node model (its own
attributes, opset and initializer values in their stored dtypes) and run in ONNX Runtime on
inputs drawn from the other side's running statistics; the outputs are compared with that
side's float64 eval-mode recomputation. A training_mode=1 node, a wrong eps or a lossy float16
export then shows in the numbers ONNX Runtime itself produces.
"""

from __future__ import annotations

import numpy as np

from bninspect.layers import BNLayer, Discovery
from bninspect.services.diff import LayerDiff, Witness

BATCH = 64


def _session(layer: BNLayer, node_name: str, model):
    """An ONNX Runtime session of one BatchNormalization node with the layer's own values and attributes."""
    import onnx
    from onnx import helper, numpy_helper

    node = next(n for n in model.graph.node if n.name == node_name and n.op_type == "BatchNormalization")
    inits, names = [], []
    for tensor_name in ("weight", "bias", "running_mean", "running_var"):
        ref = layer.tensors[tensor_name]
        arr = np.asarray(ref.numpy())
        if ref.dtype == "bfloat16":
            arr = arr.astype(np.float32)  # ORT takes bfloat16 via ml_dtypes only; widened, noted by dtype
        inits.append(numpy_helper.from_array(arr, name=f"p_{tensor_name}"))
        names.append(f"p_{tensor_name}")
    x_type = inits[0].data_type
    training = any(a.name == "training_mode" and a.i for a in node.attribute)
    # training_mode=1 must produce the updated running mean and variance too (BatchNormalization-15).
    outputs = ["y", "new_mean", "new_var"] if training else ["y"]
    bn = helper.make_node("BatchNormalization", ["x"] + names, outputs, name="bn")
    bn.attribute.extend(node.attribute)
    graph = helper.make_graph([bn], "witness", [helper.make_tensor_value_info("x", x_type, None)],
                              [helper.make_tensor_value_info("y", x_type, None)], inits)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 15)
    witness = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    witness.ir_version = model.ir_version
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(witness.SerializeToString(), options, providers=["CPUExecutionProvider"]), \
        onnx.helper.tensor_dtype_to_np_dtype(x_type)


def _run_one(ref_layer: BNLayer, onnx_layer: BNLayer, node_name: str, model, version: str) -> Witness:
    from bninspect.numerics import TOLERANCES, compare, eval_magnitude, eval_reference, synthetic_input

    sess, np_dtype = _session(onnx_layer, node_name, model)
    rng = np.random.default_rng(0)
    mean, var = ref_layer.values("running_mean"), ref_layer.values("running_var")
    x = synthetic_input(mean, var, (BATCH, ref_layer.channels, 1, 1), rng).astype(np_dtype)
    x64 = x.astype(np.float64)  # the reference sees the input the runtime sees
    y = sess.run(["y"], {"x": x})[0].astype(np.float64)
    gamma, beta = ref_layer.gamma(), ref_layer.beta()
    ref = eval_reference(x64, mean, var, gamma, beta, ref_layer.eps)
    dtype = "float16" if np_dtype == np.float16 else "float64" if np_dtype == np.float64 else "float32"
    cmp = compare(y, ref, eval_magnitude(x64, mean, var, gamma, beta, ref_layer.eps), TOLERANCES[dtype])
    return Witness(f"onnxruntime {version}", cmp.max_abs_err, cmp.max_rel_err, cmp.worst_channel, cmp.passed)


def attach_witnesses(diffs: list[LayerDiff], da: Discovery, db: Discovery) -> list[str]:
    """Run every matched BN of the ONNX side in ONNX Runtime; returns notes on what could not run."""
    onnx_side = "b" if db.checkpoint.format == "onnx" else "a" if da.checkpoint.format == "onnx" else ""
    if not onnx_side:
        return ["--run: neither side is an ONNX model; runtime witnesses run ONNX BN nodes in ONNX Runtime"]
    try:
        import onnxruntime
    except ImportError:
        return ["--run: onnxruntime is not installed (pip install onnxruntime); no runtime witness"]
    from bninspect.formats.onnx import load_model

    onnx_disc = db if onnx_side == "b" else da
    model = load_model(onnx_disc.checkpoint.path)
    by_name_a = {l.name: l for l in da.layers}
    by_name_b = {l.name: l for l in db.layers}
    ran = 0
    for d in diffs:
        if d.mode != "bn":
            continue
        la, lb = by_name_a.get(d.name), by_name_b.get(d.name_b)
        if la is None or lb is None:
            continue
        ref_layer, onnx_layer = (la, lb) if onnx_side == "b" else (lb, la)
        info = onnx_disc.checkpoint.modules.get(onnx_layer.key_prefix)
        if info is None or not (ref_layer.has("running_mean") and ref_layer.has("running_var")):
            continue
        d.witness = _run_one(ref_layer, onnx_layer, str(info.attributes["onnx_node"]), model, onnxruntime.__version__)
        ran += 1
        if not d.witness.within:
            d.causes.append(f"ONNX Runtime confirms: its output differs from the recomputation by up to "
                            f"{d.witness.max_abs:.4g} at channel {d.witness.channel}")
            d.status = "different"
    notes = [f"--run: {ran} BN node(s) run in ONNX Runtime {onnxruntime.__version__} on inputs drawn from "
             f"{'A' if onnx_side == 'b' else 'B'}'s running statistics"]
    if any(d.mode == "folded" for d in diffs):
        notes.append("--run: BN folded into convs has no BN node to run; the folded comparison stands alone")
    return notes
