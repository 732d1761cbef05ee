"""The OpenVINO IR reader on IR written by openvino itself: BatchNormInference (opset1 and opset5 orders),
BN fused into convolutions by ov.convert_model, float16 compression, and broken IR files."""

from __future__ import annotations

import numpy as np
import pytest

# Every test here needs torch (the Python 3.10 job of .ci/run runs without it).
pytestmark = pytest.mark.torch

ov = pytest.importorskip("openvino")
pytest.importorskip("onnx")

from bninspect.errors import InvalidFileError  # noqa: E402
from bninspect.formats import open_checkpoint  # noqa: E402
from bninspect.formats import openvino as ir_reader  # noqa: E402
from bninspect.layers import discover  # noqa: E402
from tests.conftest import SAMPLES, assert_one_line_error  # noqa: E402
from tests.exports import BN_LAYERS, export_ir, export_onnx, sample_model  # noqa: E402

GAMMA = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
# Distinct values per input, so a reader that swaps two inputs fails.
BETA, MEAN, VAR = GAMMA + 10, GAMMA + 20, GAMMA + 30


def _bn_ir(path, opset: str):
    import openvino.opset1 as ops1
    import openvino.opset5 as ops5

    x = ops1.parameter([1, 4, 2, 2], np.float32, name="x")
    ops = ops5 if opset == "5" else ops1
    bn = ops.batch_norm_inference(x, GAMMA, BETA, MEAN, VAR, 1e-3)
    ov.save_model(ov.Model([bn], [x]), str(path), compress_to_fp16=False)
    return path


@pytest.mark.parametrize("opset", ["1", "5"])
def test_batchnorminference_both_input_orders(tmp_path, opset):
    """opset1 takes (gamma, beta, data, mean, variance), opset5 (data, gamma, beta, mean, variance)."""
    path = _bn_ir(tmp_path / f"bn{opset}.xml", opset)
    text = path.read_text()
    assert f'type="BatchNormInference" version="opset{opset}"' in text
    ckpt = open_checkpoint(str(path))
    assert ckpt.format == "openvino-ir"
    (layer,) = discover(ckpt).layers
    assert layer.kind == "BatchNorm2d" and layer.eps == pytest.approx(1e-3)
    for name, want in (("weight", GAMMA), ("bias", BETA), ("running_mean", MEAN), ("running_var", VAR)):
        np.testing.assert_array_equal(layer.tensors[name].numpy(), want)


def test_both_versions_diff_identical_and_openvino_agrees(tmp_path):
    """The same BN written as opset1 and opset5: names differ (matched by order), values and runtime agree."""
    from bninspect.services.diff import diff

    r = diff(str(_bn_ir(tmp_path / "bn1.xml", "1")), str(_bn_ir(tmp_path / "bn5.xml", "5")), run=True)
    assert r.verdict == "identical"
    (d,) = r.layers
    assert d.matched_by == "order" and d.witness is not None and d.witness.within


@pytest.fixture(scope="module")
def fused_ir(tmp_path_factory):
    """The sample MobileNet through ONNX into IR: float32 and the default float16 compression."""
    d = tmp_path_factory.mktemp("ir")
    onnx_path = export_onnx(sample_model(), d / "plain.onnx", fold=False)
    return export_ir(onnx_path, d / "fp32.xml", fp16=False), export_ir(onnx_path, d / "fp16.xml", fp16=True)


def test_fused_bn_becomes_folded_producers(fused_ir):
    """ov.convert_model fuses each BN into its conv; the Add keeps the BN's name, the conv weights are folded."""
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    ckpt = ir_reader.read(str(fused_ir[0]))
    folded = {m.attributes["folded_bn"]: m for m in ckpt.modules.values() if m.attributes.get("folded_bn")}
    assert sorted(folded) == BN_LAYERS
    state = torch.load(SAMPLES / "mobilenet_v1_tiny.pt", weights_only=True)
    bn = "features.3.bn"
    w, b = fuse_conv_bn_weights(state["features.3.p_conv_k1.weight"].double(), None, state[f"{bn}.running_mean"].double(),
                                state[f"{bn}.running_var"].double(), 1e-5, state[f"{bn}.weight"].double(), state[f"{bn}.bias"].double())
    prefix = folded[bn].path
    np.testing.assert_allclose(ckpt.tensors[f"{prefix}.weight"].float64(), w.detach().numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ckpt.tensors[f"{prefix}.bias"].float64(), b.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert ckpt.modules[prefix].attributes["groups"] == 1
    assert any("fused" in n for n in ckpt.notes)


def test_fp16_compression_keeps_the_stored_dtype(fused_ir):
    ckpt = ir_reader.read(str(fused_ir[1]))
    assert {ckpt.tensors[k].dtype for k in ckpt.tensors} == {"float16"}


def test_sniff():
    assert ir_reader.sniff(b'<?xml version="1.0"?>\n<net name="Model0" version="11">')
    assert ir_reader.sniff(b'\xef\xbb\xbf<net name="m">')
    assert not ir_reader.sniff(b'<?xml version="1.0"?>\n<network>')
    assert not ir_reader.sniff((SAMPLES / "mobilenet_v1_tiny.pt").read_bytes()[:4096])


def test_missing_bin_is_exit_5(cli, tmp_path):
    path = _bn_ir(tmp_path / "m.xml", "5")
    (tmp_path / "m.bin").unlink()
    assert_one_line_error(cli("diff", str(path), str(path)), 5, "weights file 'm.bin' is missing")


def test_truncated_bin_is_invalid(tmp_path):
    path = _bn_ir(tmp_path / "m.xml", "5")
    (tmp_path / "m.bin").write_bytes((tmp_path / "m.bin").read_bytes()[:20])
    with pytest.raises(InvalidFileError, match="do not fit") as info:
        ir_reader.read(str(path))
    assert info.value.exit_code == 4


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_doctype_refused(cli, tmp_path, encoding):
    """A DTD is refused by the parser in any encoding: in UTF-16, "<!DOCTYPE" is not in the bytes."""
    path = _bn_ir(tmp_path / "m.xml", "5")
    text = path.read_text().replace('<net ', '<!DOCTYPE net [<!ENTITY a "aaaa">]>\n<net ', 1)
    path.write_bytes(text.encode(encoding))
    assert (b"<!DOCTYPE" in path.read_bytes()) == (encoding == "utf-8")
    with pytest.raises(InvalidFileError, match="OpenVINO IR with a DOCTYPE/ENTITY declaration refused"):
        ir_reader.read(str(path))
    # Through the command, the format is told by content first.
    assert_one_line_error(cli("show", str(path)), 4, "m.xml")


def test_quantized_weights_are_noted_not_read(tmp_path):
    """NNCF-style weight compression (u8 → Convert → Subtract → Multiply → Convolution): said, not guessed."""
    import openvino.opset1 as ops

    x = ops.parameter([1, 2, 5, 5], np.float32, name="x")
    q = ops.constant(np.arange(16, dtype=np.uint8).reshape(4, 2, 1, 2, 1)[..., 0])  # [4, 2, 1, 2] u8
    w = ops.multiply(ops.subtract(ops.convert(q, "f32"), np.float32(8)), np.float32(0.1))
    conv = ops.convolution(x, w, [1, 1], [0, 0], [0, 0], [1, 1])
    path = tmp_path / "q.xml"
    ov.save_model(ov.Model([conv], [x]), str(path), compress_to_fp16=False)
    ckpt = ir_reader.read(str(path))
    assert ckpt.tensors == {}
    assert any("1 convolution(s) take decompressed (quantized) weights" in n for n in ckpt.notes)
