"""Real exports for the diff and ONNX/OpenVINO reader tests, made at test time with the real exporters.

The model is the sample MobileNet V1 (seed naming, trained statistics) loaded from the sample
checkpoint, so the exports are of a checkpoint users would diff. torch.onnx uses the
TorchScript-based exporter (``dynamo=False``): it is fast (0.3 s here against ~4 s for the
dynamo exporter) and with ``do_constant_folding=True`` in eval mode it folds BN into the conv.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

SAMPLES = Path(__file__).resolve().parent.parent / "sample_checkpoints"
CKPT = SAMPLES / "mobilenet_v1_tiny.pt"
BN_LAYERS = ["features.2.bn", "features.3.bn", "features.4.bn", "features.5.bn"]


def sample_model():
    """MobileNetV1Tiny in eval mode with the sample checkpoint's weights and statistics."""
    import torch

    if str(SAMPLES) not in sys.path:
        sys.path.insert(0, str(SAMPLES))
    import sample_models

    model = sample_models.mobilenet_v1_tiny()
    model.load_state_dict(torch.load(CKPT, weights_only=True))
    return model.eval()


def export_onnx(model, path: Path, *, fold: bool, dtype=None, dynamo: bool = False) -> Path:
    """torch.onnx.export in eval mode; ``fold`` = constant folding (BN fused into the conv)."""
    import torch

    example = torch.randn(1, 3, 16, 16, dtype=dtype or torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, (example,), str(path), dynamo=True, optimize=fold, verbose=False)
        else:
            torch.onnx.export(model, (example,), str(path), dynamo=False, do_constant_folding=fold)
    return path


def export_ir(onnx_path: Path, xml_path: Path, *, fp16: bool) -> Path:
    """OpenVINO IR converted from an ONNX file (ov.convert_model fuses BN into the convs)."""
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=fp16)
    return xml_path


def edit_initializer(src: Path, dst: Path, name: str, edit) -> Path:
    """A copy of an ONNX model whose initializer ``name`` is replaced by ``edit(values)``."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    for i, t in enumerate(model.graph.initializer):
        if t.name == name:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(edit(numpy_helper.to_array(t).copy()), name))
            break
    else:
        raise KeyError(name)
    onnx.save(model, str(dst))
    return dst


def edit_bn_attribute(src: Path, dst: Path, layer: str, attribute: str, value) -> Path:
    """A copy of an ONNX model with one BatchNormalization node's attribute set (the node of ``layer``)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(src))
    for node in model.graph.node:
        if node.op_type == "BatchNormalization" and node.input[3] == f"{layer}.running_mean":
            kept = [a for a in node.attribute if a.name != attribute]
            del node.attribute[:]
            node.attribute.extend(kept + [helper.make_attribute(attribute, value)])
            break
    else:
        raise KeyError(layer)
    onnx.save(model, str(dst))
    return dst
