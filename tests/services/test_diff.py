"""`diff` on real exports of the sample MobileNet: equivalent when untouched, each tampering found at
the right layer and channel, matching by name, by order and through BN folding."""

from __future__ import annotations

import copy
import json

import pytest

pytest.importorskip("onnx")

import torch  # noqa: E402

from bninspect.errors import UsageError  # noqa: E402
from bninspect.services.diff import diff  # noqa: E402
from tests.conftest import SAMPLES  # noqa: E402
from tests.exports import BN_LAYERS, CKPT, edit_bn_attribute, edit_initializer, export_ir, export_onnx, sample_model  # noqa: E402

# Every test here needs torch (the Python 3.10 job of .ci/run runs without it).
pytestmark = pytest.mark.torch

PT = str(CKPT)


@pytest.fixture(scope="module")
def model(onnx_exports):
    # A copy: tests here may change the model (to make a tampered export), the exports stay as made.
    return copy.deepcopy(onnx_exports[0])


@pytest.fixture(scope="module")
def exports(onnx_exports, tmp_path_factory):
    """The sample MobileNet exported: ONNX unfolded and folded, OpenVINO IR float32 and float16."""
    d = tmp_path_factory.mktemp("diff")
    _, plain, folded = onnx_exports
    out = {"dir": d, "plain": plain, "folded": folded}
    if _has("openvino"):
        out["ir32"] = export_ir(plain, d / "ir32.xml", fp16=False)
        out["ir16"] = export_ir(plain, d / "ir16.xml", fp16=True)
    return out


def _has(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def _layer(result, name):
    return next(d for d in result.layers if d.name == name)


def test_state_dict_vs_its_safetensors_copy_is_identical():
    r = diff(PT, str(SAMPLES / "mobilenet_v1_tiny.safetensors"))
    assert r.verdict == "identical" and r.exit_code == 0
    assert [(d.name, d.matched_by, d.status) for d in r.layers] == [(n, "name", "identical") for n in BN_LAYERS]


def test_tensors_of_different_lengths_are_compared_not_folded():
    # faulty/length_mismatch.pt: features.5.bn has weight [127] beside statistics of 128. Folding
    # it into scale/shift once raised a numpy broadcast error ("a bug in bninspect").
    bad = str(SAMPLES / "faulty" / "length_mismatch.pt")
    same = diff(bad, bad)
    assert same.verdict == "identical" and same.exit_code == 0
    last = same.layers[-1]
    assert last.name == "features.5.bn" and last.output is None
    assert any(s.severity == "note" and "weight [127]" in s.message for s in last.settings)
    other = diff(bad, PT)
    last = other.layers[-1]
    assert other.exit_code == 1 and last.status == "different" and last.causes == ["weight: shape [127] vs [128]"]


def test_each_layers_shape_note_is_printed(tmp_path, capsys):
    # Notes are said once per text, not once per setting: two malformed layers, two notes.
    from bninspect.render.diff import render

    sd = torch.load(PT, weights_only=True)
    for name in ("features.2.bn", "features.5.bn"):
        sd[f"{name}.weight"] = sd[f"{name}.weight"][:-1].clone()
    bad = tmp_path / "two_bad.pt"
    torch.save(sd, bad)
    r = diff(PT, str(bad))
    shapes = [s for d in r.layers for s in d.settings if s.setting == "shapes"]
    assert [(s.a, s.b) for s in shapes] == [(False, True), (False, True)]
    render(r)
    notes = [l for l in capsys.readouterr().out.splitlines() if l.startswith("note: output effect not computed")]
    assert [n.split(":")[2].strip() for n in notes] == ["features.2.bn", "features.5.bn"]


def test_unfolded_onnx_is_identical_and_momentum_is_not_flagged(exports):
    r = diff(PT, str(exports["plain"]))
    assert r.verdict == "identical", r.causes
    notes = [s for d in r.layers for s in d.settings]
    assert notes and all(s.setting == "momentum" and s.severity == "note" for s in notes)
    assert "ONNX momentum 0.9" in notes[0].message and "PyTorch momentum 0.1" in notes[0].message


def test_folded_onnx_is_equivalent_through_fuse_conv_bn(exports):
    r = diff(PT, str(exports["folded"]))
    assert r.verdict == "equivalent" and r.exit_code == 0, r.causes
    assert [(d.name, d.name_b, d.mode, d.matched_by) for d in r.layers] == [
        (n, n.replace("bn", "dw_conv_k3" if n in ("features.2.bn", "features.4.bn") else "p_conv_k1"), "folded", "folded, by name")
        for n in BN_LAYERS]
    for d in r.layers:
        assert d.folded_side == "b" and d.output.within
        assert [t.tensor for t in d.tensors] == ["folded weight", "folded bias"]
        assert max(t.max_rel for t in d.tensors) < 1e-5


def test_fuse_conv_bn_deployment_checkpoint_is_equivalent(model, tmp_path):
    """A state dict saved after torch.nn.utils.fusion.fuse_conv_bn_eval: BN keys gone, convs carry the fold."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(model)
    for block in list(fused.features)[2:6]:
        attr = "dw_conv_k3" if hasattr(block, "dw_conv_k3") else "p_conv_k1"
        setattr(block, attr, fuse_conv_bn_eval(getattr(block, attr), block.bn))
        block.bn = torch.nn.Identity()
    path = tmp_path / "fused.pt"
    torch.save(fused.state_dict(), path)
    r = diff(PT, str(path))
    assert r.verdict == "equivalent", r.causes
    assert [(d.name, d.matched_by) for d in r.layers] == [(n, "folded, by name") for n in BN_LAYERS]


def test_folded_side_may_be_a(exports):
    r = diff(str(exports["folded"]), str(exports["plain"]))
    assert r.verdict == "equivalent", r.causes
    assert {d.folded_side for d in r.layers} == {"a"}


@pytest.mark.skipif(not _has("openvino"), reason="openvino not installed")
def test_openvino_ir_float32_and_float16_are_equivalent(exports):
    r32 = diff(PT, str(exports["ir32"]))
    assert r32.verdict == "equivalent", r32.causes
    assert [d.name for d in r32.layers] == BN_LAYERS and all(d.mode == "folded" for d in r32.layers)
    r16 = diff(PT, str(exports["ir16"]))
    assert r16.verdict == "equivalent", r16.causes
    assert any("float32 → float16" in n for n in r16.notes)
    assert {t.dtype_b for d in r16.layers for t in d.tensors} == {"float16"}


@pytest.mark.skipif(not _has("openvino"), reason="openvino not installed")
def test_openvino_runs_the_ir_layers_as_witness(exports, tmp_path):
    """OpenVINO itself runs each folded conv of the IR (its own strides and pads) against conv → BN in float64."""
    r = diff(PT, str(exports["ir16"]), run=True)
    assert r.verdict == "equivalent", r.causes
    assert all(d.witness is not None and d.witness.within for d in r.layers)
    onnx_path = edit_bn_attribute(exports["plain"], tmp_path / "eps.onnx", "features.4.bn", "epsilon", 1e-2)
    r = diff(PT, str(export_ir(onnx_path, tmp_path / "eps.xml", fp16=False)), run=True)
    assert [d.name for d in r.layers if d.status == "different"] == ["features.4.bn"]
    d = _layer(r, "features.4.bn")
    assert not d.witness.within and "openvino confirms" in d.causes[-1]
    assert "fit eps ≈ 0.01" in d.causes[0]


def test_tampered_variance_is_found_at_its_layer_and_channel(exports, tmp_path):
    def bump(v):
        v[7] *= 4
        return v

    path = edit_initializer(exports["plain"], tmp_path / "var.onnx", "features.4.bn.running_var", bump)
    r = diff(PT, str(path))
    assert r.verdict == "different" and r.exit_code == 1
    assert [d.name for d in r.layers if d.status == "different"] == ["features.4.bn"]
    d = _layer(r, "features.4.bn")
    var = next(t for t in d.tensors if t.tensor == "running_var")
    assert (var.channel, var.channels_beyond, var.within) == (7, 1, False)
    assert var.max_rel == pytest.approx(3.0)
    assert d.output.channel == 7 and not d.output.within
    assert r.causes[0].startswith("features.4.bn: running_var channel 7")


def test_tampered_folded_bias_is_found_at_its_channel(exports, tmp_path):
    import onnx

    model = onnx.load(str(exports["folded"]))
    node = next(n for n in model.graph.node if n.name == "/features/features.3/p_conv_k1/Conv")

    def shift(b):
        b[5] += 0.5
        return b

    path = edit_initializer(exports["folded"], tmp_path / "bias.onnx", node.input[2], shift)
    r = diff(PT, str(path))
    assert [d.name for d in r.layers if d.status == "different"] == ["features.3.bn"]
    bias = next(t for t in _layer(r, "features.3.bn").tensors if t.tensor == "folded bias")
    assert (bias.channel, bias.channels_beyond) == (5, 1)


def test_eps_change_is_reported(exports, tmp_path):
    path = edit_bn_attribute(exports["plain"], tmp_path / "eps.onnx", "features.3.bn", "epsilon", 1e-3)
    r = diff(PT, str(path))
    assert r.verdict == "different"
    assert [d.name for d in r.layers if d.status == "different"] == ["features.3.bn"]
    (eps,) = [s for s in _layer(r, "features.3.bn").settings if s.setting == "eps"]
    assert (eps.a, eps.b, eps.severity) == (1e-5, 1e-3, "difference")
    assert "assumed" in eps.message  # a state dict stores no eps: the user is told to pass --eps
    # The same file with the true eps given for A is equivalent at that layer.
    assert _layer(diff(PT, str(path), eps=1e-3, layers=["features.3.bn"]), "features.3.bn").status == "identical"


def test_folded_with_another_eps_is_explained(model, tmp_path):
    other = copy.deepcopy(model)
    other.features[3].bn.eps = 1e-3
    path = export_onnx(other, tmp_path / "eps_folded.onnx", fold=True)
    r = diff(PT, str(path), run=_has("onnxruntime"))
    assert [d.name for d in r.layers if d.status == "different"] == ["features.3.bn"]
    d = _layer(r, "features.3.bn")
    assert "fit eps ≈ 0.001" in d.causes[0]
    if _has("onnxruntime"):  # ONNX Runtime running the folded conv agrees: only features.3 is off
        assert [x.name for x in r.layers if not x.witness.within] == ["features.3.bn"]
        assert "onnxruntime confirms" in d.causes[-1]


def test_folded_export_runs_equivalent_in_onnxruntime(exports):
    pytest.importorskip("onnxruntime")
    r = diff(PT, str(exports["folded"]), run=True)
    assert r.verdict == "equivalent", r.causes
    assert all(d.witness is not None and d.witness.within for d in r.layers)
    assert all(d.witness.max_rel < 1e-5 for d in r.layers)


def test_training_mode_is_an_error_and_onnxruntime_confirms(exports, tmp_path):
    pytest.importorskip("onnxruntime")
    path = edit_bn_attribute(exports["plain"], tmp_path / "train.onnx", "features.5.bn", "training_mode", 1)
    r = diff(PT, str(path), run=True)
    assert r.verdict == "different"
    d = _layer(r, "features.5.bn")
    assert [s.severity for s in d.settings if s.setting == "training"] == ["error"]
    assert "training_mode=1" in r.causes[0]
    # ONNX Runtime normalizes with batch statistics there, and agrees everywhere else.
    assert d.witness is not None and not d.witness.within
    assert all(x.witness.within for x in r.layers if x.name != "features.5.bn")


def test_float16_export_equivalent_until_a_variance_is_lost(model, tmp_path):
    half = copy.deepcopy(model).half()
    path = export_onnx(half, tmp_path / "half.onnx", fold=False, dtype=torch.float16)
    r = diff(PT, str(path))
    assert r.verdict == "equivalent", r.causes
    assert {(t.dtype_a, t.dtype_b) for d in r.layers for t in d.tensors} == {("float32", "float16")}

    # A variance of 1e5 (a first layer fed 0–255 pixels gets there) is beyond float16's 65504: inf.
    state = model.state_dict()
    state["features.2.bn.running_var"][3] = 1e5
    ckpt = tmp_path / "big_var.pt"
    torch.save(state, ckpt)
    big = sample_model()
    big.load_state_dict(state)
    path = export_onnx(big.half(), tmp_path / "big_half.onnx", fold=False, dtype=torch.float16)
    r = diff(str(ckpt), str(path))
    assert r.verdict == "different"
    assert [d.name for d in r.layers if d.status == "different"] == ["features.2.bn"]
    d = _layer(r, "features.2.bn")
    var = next(t for t in d.tensors if t.tensor == "running_var")
    assert (var.channel, var.channels_beyond, var.dtype_b, var.value_b) == (3, 1, "float16", float("inf"))
    assert d.output.channel == 3 and not d.output.within


def test_renamed_keys_are_matched_by_order(tmp_path):
    from safetensors.torch import save_file

    state = torch.load(CKPT, weights_only=True)
    renamed = {k.replace("features.", "backbone.stage"): v.contiguous() for k, v in state.items()}
    path = tmp_path / "renamed.safetensors"
    save_file(renamed, str(path))
    r = diff(PT, str(path))
    assert r.verdict == "identical"
    assert [(d.name, d.name_b, d.matched_by) for d in r.layers] == [
        (n, n.replace("features.", "backbone.stage"), "order") for n in BN_LAYERS]
    assert any("matched by order" in n for n in r.notes)


def test_two_folded_artifacts_say_there_is_nothing_to_compare(exports):
    r = diff(str(exports["folded"]), str(exports["folded"]))
    assert r.layers == [] and r.exit_code == 0
    assert any("nothing to compare" in n for n in r.notes)


def test_layer_glob(exports):
    r = diff(PT, str(exports["folded"]), layers=["features.4.*"])
    assert [d.name for d in r.layers] == ["features.4.bn"]
    with pytest.raises(UsageError, match="no BatchNorm layer matches"):
        diff(PT, str(exports["plain"]), layers=["nothing.*"])


def test_layer_only_on_one_side_is_different(tmp_path):
    from safetensors.torch import save_file

    state = torch.load(CKPT, weights_only=True)
    fewer = {k: v.contiguous() for k, v in state.items() if not k.startswith("features.5.")}
    path = tmp_path / "fewer.safetensors"
    save_file(fewer, str(path))
    r = diff(PT, str(path))
    assert r.verdict == "different" and r.only_a == ["features.5.bn"] and r.only_b == []


def test_cli_json_and_exit_codes(cli, exports, tmp_path):
    run = cli("diff", PT, str(exports["folded"]), "--json")
    assert run.code == 0, run.err
    doc = json.loads(run.out)
    assert doc["schema"] == "bninspect.diff/1" and doc["verdict"] == "equivalent"
    assert [l["name"] for l in doc["layers"]] == BN_LAYERS
    path = edit_bn_attribute(exports["plain"], tmp_path / "eps.onnx", "features.2.bn", "epsilon", 1e-3)
    run = cli("diff", PT, str(path))
    assert run.code == 1 and "Traceback" not in run.err
    assert "features.2.bn" in run.out and "eps 1e-05 vs 0.001" in run.out


@pytest.mark.slow
def test_dynamo_exporter_folded_is_equivalent(model, tmp_path):
    """torch.onnx's dynamo exporter (needs onnxscript) folds BN too and keeps the conv's own key for the folded weight."""
    pytest.importorskip("onnxscript")
    path = export_onnx(model, tmp_path / "dynamo.onnx", fold=True, dynamo=True)
    r = diff(PT, str(path))
    assert r.verdict == "equivalent", r.causes
    assert all(d.mode == "folded" for d in r.layers)


GOLDEN = SAMPLES.parent / "tests" / "services" / "golden" / "diff_train_ts.json"


def test_json_matches_the_golden_document(monkeypatch):
    """The whole bninspect.diff/1 document for the sample checkpoint against its train-mode TorchScript:
    any change to a message, a number or the schema shows up here. Regenerate with BNINSPECT_REGEN_GOLDEN=1."""
    import os

    from bninspect.render.diff import to_json

    monkeypatch.chdir(SAMPLES.parent)  # relative paths in the document
    doc = to_json(diff("sample_checkpoints/mobilenet_v1_tiny.pt", "sample_checkpoints/mobilenet_v1_tiny_train.ts")) + "\n"
    if os.environ.get("BNINSPECT_REGEN_GOLDEN"):
        GOLDEN.write_text(doc, encoding="utf-8")
    assert doc == GOLDEN.read_text(encoding="utf-8")
    body = json.loads(doc)
    assert body["verdict"] == "different" and body["exit_code"] == 1
    assert all(l["settings"][0]["setting"] == "training" for l in body["layers"])


def _head_whose_bias_cancels_its_mean(tmp_path):
    """Linear(64, 5) → BatchNorm1d(5), statistics from train-mode passes on post-ReLU features: the
    rows of W have one sign, so W·h has a large mean (~14), and the Linear's bias cancels it (as
    a Linear trained without the BN would): x ≈ 0 at the BN, b ≈ −14, small gains."""
    import torch.nn as nn

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.bn = nn.Linear(64, 5), nn.BatchNorm1d(5)

        def forward(self, x):
            return self.bn(self.fc(x))

    torch.manual_seed(0)
    model = Head()
    feats = torch.relu(torch.randn(512, 64)) * 4 + 2
    with torch.no_grad():
        model.fc.weight.abs_()
        model.fc.bias.copy_(-(feats @ model.fc.weight.T).mean(0))
        model.bn.weight.fill_(0.03)
        model.bn.bias.fill_(0.01)
        model.train()
        for i in range(0, 512, 32):
            model(feats[i:i + 32])
    model.eval()
    torch.save(model.state_dict(), tmp_path / "head.pt")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (feats[:2],), str(tmp_path / "head.onnx"), dynamo=False)
    return tmp_path / "head.pt", tmp_path / "head.onnx"


@pytest.mark.skipif(not _has("openvino"), reason="openvino not installed")
def test_linear_batchnorm1d_folded_by_openvino_is_equivalent(tmp_path, cli):
    """The Gemm/MatMul fold path sums |s|·|x − b| + |s|·(|b| + |μ|) + |β|, not only A's terms: its
    float32 rounding (2e-8 here) is no difference. A real change of 1e-5 in β still is."""
    pt, onnx_path = _head_whose_bias_cancels_its_mean(tmp_path)
    ir = export_ir(onnx_path, tmp_path / "head.xml", fp16=False)
    run = cli("diff", str(pt), str(ir), "--json")
    assert run.code == 0, run.out
    doc = json.loads(run.out)
    assert doc["verdict"] == "equivalent" and [(l["name"], l["mode"]) for l in doc["layers"]] == [("bn", "folded")]
    assert 0 < doc["layers"][0]["output"]["max_abs"] < 1e-7

    def nudge(beta):
        beta[2] += 1e-5
        return beta

    tampered = export_ir(edit_initializer(onnx_path, tmp_path / "nudged.onnx", "bn.bias", nudge), tmp_path / "n.xml", fp16=False)
    r = diff(str(pt), str(tampered))
    assert r.verdict == "different" and r.layers[0].output.channel == 2


def _tampered(tmp_path, name: str, change) -> str:
    """The sample state dict with ``change(sd)`` applied, saved by torch as B."""
    sd = torch.load(CKPT, weights_only=True)
    change(sd)
    torch.save(sd, tmp_path / name)
    return str(tmp_path / name)


def _swap(sd, layer, i, j):
    for n in ("weight", "bias", "running_mean", "running_var"):
        t = sd[f"{layer}.{n}"]
        t[[i, j]] = t[[j, i]]


def _exchange(sd, layer, x, y):
    sd[f"{layer}.{x}"], sd[f"{layer}.{y}"] = sd[f"{layer}.{y}"].clone(), sd[f"{layer}.{x}"].clone()


CAUSES = {
    "std for variance": (lambda sd: sd["features.3.bn.running_var"].sqrt_(),
                         "standard deviation stored where the variance belongs: B's running_var = √(A's running_var) in every channel"),
    "channels exchanged": (lambda sd: _swap(sd, "features.3.bn", 3, 5), "channels 3 and 5 exchanged (every tensor)"),
    "channels permuted": (lambda sd: [_swap(sd, "features.3.bn", 3, 5), _swap(sd, "features.3.bn", 5, 9)],
                          "channels permuted (every tensor): B's channel ← A's channel 3 ← 5, 5 ← 9, 9 ← 3 (3 channels)"),
    "γ/β exchanged": (lambda sd: _exchange(sd, "features.3.bn", "weight", "bias"),
                      "γ and β exchanged: B's weight is A's bias and B's bias A's weight"),
    "μ/σ² exchanged": (lambda sd: _exchange(sd, "features.3.bn", "running_mean", "running_var"),
                       "μ and σ² exchanged: B's running_mean is A's running_var and the reverse"),
    "Bessel": (lambda sd: sd["features.3.bn.running_var"].mul_(16 / 15),
               "running_var × 1.06667 in every channel (n/(n−1): the unbiased correction applied once more, n = 16)"),
    "constant factor": (lambda sd: sd["features.3.bn.weight"].mul_(0.5), "weight × 0.5 in every channel"),
}


@pytest.mark.parametrize("case", list(CAUSES))
def test_diff_names_the_usual_cause(tmp_path, case):
    """As verify --expected does for outputs: the mistake that turns A's tensors into B's, per layer,
    as the layer's first cause and the summary's."""
    change, cause = CAUSES[case]
    r = diff(PT, _tampered(tmp_path, "b.pt", change))
    assert [d.name for d in r.layers if d.status == "different"] == ["features.3.bn"]
    d = _layer(r, "features.3.bn")
    assert d.explanations == [cause] and d.causes[0] == cause
    assert r.causes[0] == f"features.3.bn: {cause}"


def test_json_lists_the_channels_beyond_tolerance(tmp_path, cli):
    def bump(sd):
        sd["features.4.bn.running_var"][[3, 9, 20]] *= 1.5

    run = cli("diff", PT, _tampered(tmp_path, "b.pt", bump), "--json")
    assert run.code == 1, run.err
    (layer,) = [l for l in json.loads(run.out)["layers"] if l["status"] == "different"]
    var = next(t for t in layer["tensors"] if t["tensor"] == "running_var")
    assert (var["channels_off"], var["channels_beyond"]) == ([3, 9, 20], 3)
    assert layer["explanations"] == []


def test_causes_are_ordered_by_their_effect_on_the_output(tmp_path):
    """A 0.3% γ difference must not lead a β off by 0.5: the worst effect on the output comes first,
    in the layer's causes and the summary's, and each cause says how far it moves the output."""
    def change(sd):
        sd["features.5.bn.weight"][0] *= 1.003
        sd["features.5.bn.bias"][7] += 0.5

    r = diff(PT, _tampered(tmp_path, "b.pt", change))
    d = _layer(r, "features.5.bn")
    assert [c.split(" ")[0] for c in d.causes[:2]] == ["bias", "weight"]
    effects = {t.tensor: t.output_effect for t in d.tensors if not t.within}
    assert effects["bias"] == pytest.approx(0.5, rel=1e-6) and 0 < effects["weight"] < 0.05
    assert "alone it moves the output by up to 0.5" in d.causes[0]
    assert r.causes[0].startswith("features.5.bn: bias channel 7")


def test_result_holds_only_plain_data(exports):
    # what --json dumps holds no arrays and no layers, not even in private fields: the per-channel
    # arrays and the compared objects travel beside it (diff_with_details), for the report and --run
    from dataclasses import fields, is_dataclass

    import numpy as np

    def walk(value, where):
        assert not isinstance(value, np.ndarray), where
        if is_dataclass(value):
            assert {f.name for f in fields(value)} == set(vars(value)), where
            for f in fields(value):
                walk(getattr(value, f.name), f"{where}.{f.name}")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{where}[{i}]")
        elif isinstance(value, dict):
            for k, item in value.items():
                walk(item, f"{where}[{k!r}]")
        else:
            assert value is None or isinstance(value, (str, int, float, bool)), f"{where}: {type(value).__name__}"

    for other in (str(exports["folded"]), str(SAMPLES / "drift" / "mobilenet_v1_tiny_bs2.pt")):
        walk(diff(PT, other), "result")
