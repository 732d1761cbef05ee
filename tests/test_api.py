"""The Python API (bninspect.api): the commands as functions, on files and on live modules.

What a notebook user relies on: the same numbers and findings as the CLI (the CLI calls these
functions, and the JSON documents are compared byte for byte), a live module read for its own
facts and left exactly as it was, failures as exceptions with the CLI's messages, and
``import bninspect`` staying light.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import bninspect
from tests.conftest import SAMPLES, run_cli

MOBILENET = SAMPLES / "mobilenet_v1_tiny.pt"


def test_the_public_surface_is_small_and_documented():
    assert set(bninspect.__all__) >= {"load", "show", "explain", "check", "verify", "diff", "drift", "report"}
    for name in bninspect.__all__:
        obj = getattr(bninspect, name)
        assert name == "__version__" or obj.__doc__, name
    with pytest.raises(AttributeError):
        bninspect.no_such_thing  # noqa: B018


def test_import_bninspect_and_its_names_load_no_heavy_module():
    """Touching the public names (not calling them) imports neither torch, numpy, rich nor matplotlib."""
    code = ("import sys, bninspect; [getattr(bninspect, n) for n in bninspect.__all__]; "
            "print(sorted(m for m in ('torch', 'numpy', 'matplotlib', 'rich', 'typer') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.torch
def test_load_gives_each_layer_its_numbers_as_torch_saved_them():
    import torch

    ck = bninspect.load(MOBILENET)
    state = torch.load(MOBILENET, weights_only=True)
    assert list(ck.layers) == [l["name"] for l in json.loads(run_cli("show", str(MOBILENET), "--json").out)["layers"]]
    for name, layer in ck.layers.items():
        for tensor in ("weight", "bias", "running_mean", "running_var"):
            values = getattr(layer, tensor)
            assert values.shape == (layer.channels,)  # entry i belongs to channel i
            np.testing.assert_array_equal(values, state[f"{layer.key}.{tensor}"].numpy())
        expected = state[f"{layer.key}.weight"].double() / torch.sqrt(state[f"{layer.key}.running_var"].double() + 1e-5)
        np.testing.assert_allclose(layer.scale, expected.numpy(), rtol=1e-12)
    assert ck.format == "torch-zip" and "only rebuild tensors" in ck.safety


@pytest.mark.parametrize("command, args", [("show", ()), ("show", ("--channels",)), ("explain", ("features.2.bn",)),
                                           ("check", ())])
def test_the_api_and_the_cli_give_the_same_document(command, args):
    cli = run_cli(command, str(MOBILENET), *args, "--json")
    call = getattr(bninspect, command)
    kwargs = {"channels": True} if "--channels" in args else {}
    result = call(str(MOBILENET), *[a for a in args if not a.startswith("--")], **kwargs)
    assert result.to_json() + "\n" == cli.out


def test_text_is_what_the_command_prints_into_a_pipe():
    cli = run_cli("show", str(SAMPLES / "resnet_tiny_lightning.ckpt"), env={"COLUMNS": "100"})
    assert bninspect.show(SAMPLES / "resnet_tiny_lightning.ckpt").text(100) == cli.out


def test_check_findings_are_the_rules_findings():
    result = bninspect.check(SAMPLES / "faulty" / "negvar.pt")
    assert [f.code for f in result.findings] == [f["code"] for f in json.loads(
        run_cli("check", str(SAMPLES / "faulty" / "negvar.pt"), "--json").out)["findings"]]
    assert "BN002" in {f.code for f in result.findings} and result.exit_code == 1
    assert bninspect.check(SAMPLES / "faulty" / "negvar.pt", ignore="BN0").findings == []
    with pytest.raises(bninspect.UsageError, match="no setting max_scal"):
        bninspect.check(MOBILENET, max_scal=3)


def test_failures_are_exceptions_with_the_clis_message_and_exit_code(tmp_path):
    with pytest.raises(bninspect.UnsafeFileError) as unsafe:
        bninspect.load(SAMPLES / "faulty" / "getpid_on_load.pt")
    assert unsafe.value.exit_code == 3 and "posix.getpid" in unsafe.value.message.replace("os.getpid", "posix.getpid")
    with pytest.raises(bninspect.PathProblemError):
        bninspect.show(tmp_path / "missing.pt")
    with pytest.raises(bninspect.UsageError, match="did you mean"):
        bninspect.explain(MOBILENET, "features.2.bm")
    with pytest.raises(bninspect.UsageError, match="not int"):
        bninspect.show(3)


@pytest.mark.torch
def test_a_notebook_shows_a_table_with_names_escaped(tmp_path):
    import torch

    path = tmp_path / "hostile.pt"
    torch.save({"<script>alert(1)</script>.bn.weight": torch.ones(4), "<script>alert(1)</script>.bn.bias": torch.zeros(4),
                "<script>alert(1)</script>.bn.running_mean": torch.zeros(4),
                "<script>alert(1)</script>.bn.running_var": torch.ones(4)}, path)
    page = bninspect.show(path)._repr_html_()
    assert page.startswith("<pre") and "&lt;script&gt;" in page and "<script>" not in page
    assert "running_mean" in bninspect.load(path)._repr_html_()


def test_a_layer_in_a_notebook_is_explained_and_drawn():
    layer = bninspect.load(SAMPLES / "faulty" / "negvar.pt").layers["features.4.bn"]
    page = layer._repr_html_()
    assert "features.4.bn is a BatchNorm2d over 64 channels" in page.replace("\n", " ")
    assert page.count("<svg") == 1 and "running_var" in page


# -- live modules -----------------------------------------------------------------------------------

@pytest.fixture
def model():
    import torch

    sys.path.insert(0, str(SAMPLES))
    try:
        import sample_models
    finally:
        sys.path.remove(str(SAMPLES))
    torch.manual_seed(0)
    m = sample_models.mobilenet_v1_tiny()
    m.train()
    with torch.no_grad():  # a few real updates, so the running statistics are not the defaults
        for _ in range(3):
            m(torch.randn(4, 3, 32, 32))
    m.eval()
    m.features[2].bn.eps, m.features[2].bn.momentum = 1e-3, 0.03  # as YOLO-style models set them
    m.features[3].bn.train()
    return m


def _state(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {n: (m.training, type(m).__name__) for n, m in model.named_modules()},
            {n: p.requires_grad for n, p in model.named_parameters()},
            [p.grad for p in model.parameters()])


def _unchanged(model, before) -> None:
    import torch

    state, modes, grads_required, grads = _state(model)
    assert state.keys() == before[0].keys()
    assert all(torch.equal(state[k], before[0][k]) for k in state)
    assert modes == before[1] and grads_required == before[2]
    assert all(g is None for g in grads)


@pytest.mark.torch
def test_a_live_module_is_read_for_its_own_facts(model):
    ck = bninspect.load(model)
    bns = {n: m for n, m in model.named_modules() if isinstance(m, __import__("torch").nn.BatchNorm2d)}
    assert list(ck.layers) == list(bns)  # module paths, definition order
    for name, layer in ck.layers.items():
        module = bns[name]
        assert (layer.eps, layer.momentum, layer.training, layer.eps_source) == (module.eps, module.momentum,
                                                                                 module.training, "module")
        np.testing.assert_array_equal(layer.running_var, module.running_var.numpy())
        assert layer.producer is not None
    assert ck.format == "live-module" and ck.path == "<MobileNetV1Tiny in memory>"


@pytest.mark.torch
def test_commands_on_a_live_module_leave_it_unchanged(model):
    import torch

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = model(x)
    before = _state(model)
    found = bninspect.check(model)
    codes = {f.code for f in found.findings}
    assert "BN202" in codes  # one BatchNorm left in training mode in an eval model
    shown = bninspect.show(model, channels=True)
    assert shown.file == "<MobileNetV1Tiny in memory>" and len(shown.layers) == len(bninspect.load(model).layers)
    verified = bninspect.verify(model)
    assert verified.passed, verified.summary
    assert bninspect.explain(model, "features.2.bn").numbers["eps"] == 1e-3
    same = bninspect.diff(model, model)  # only the layer left in training mode is not identical to itself
    assert {d.name for d in same.layers if d.status != "identical"} == {"features.3.bn"}
    _unchanged(model, before)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == y.shape


@pytest.mark.torch
def test_diff_of_a_live_module_and_its_state_dict_names_what_the_file_lost(model, tmp_path):
    """A state dict keeps the tensors and loses eps and modes: the diff says exactly that."""
    import torch

    torch.save(model.state_dict(), tmp_path / "m.pt")
    result = bninspect.diff(model, tmp_path / "m.pt")
    status = {d.name: d.status for d in result.layers}
    assert status == {"features.2.bn": "different", "features.3.bn": "different", "features.4.bn": "identical",
                      "features.5.bn": "identical"}, result.text(160)
    causes = {d.name: " ".join(d.causes) for d in result.layers}
    assert "eps 0.001 vs 1e-05" in causes["features.2.bn"] and "training mode" in causes["features.3.bn"]
    with_eps = bninspect.diff(model, tmp_path / "m.pt", layers="features.4.bn")
    assert with_eps.exit_code == 0


@pytest.mark.torch
def test_drift_runs_a_copy_of_a_live_module_on_data_in_memory(model):
    """The model's own statistics against data it never saw in training: a real, large drift,
    measured on a copy (the model's modes and buffers stay as they were)."""
    import torch

    before = _state(model)
    data = torch.randn(64, 3, 32, 32) * 3 + 2  # far from what the three warm-up batches showed
    kept = data.clone()
    result = bninspect.drift(model, data=data, batch_sizes=[4, 16])
    assert result.model_source == "live-module" and result.path == "<MobileNetV1Tiny in memory>"
    assert {l.name for l in result.layers} == set(bninspect.load(model).layers)
    assert max(l.drift_score for l in result.layers) > 0.1 and result.exit_code == 1
    assert torch.equal(data, kept)
    _unchanged(model, before)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data, torch.zeros(64)), batch_size=10)
    from_loader = bninspect.drift(model, data=loader, batch_sizes=[4, 16])  # (inputs, labels) batches
    assert [l.drift_score for l in from_loader.layers] == [l.drift_score for l in result.layers]
    synthetic = bninspect.drift(model, synthetic="8x3x32x32", batch_sizes=[2, 8], max_drift=1e-9)
    assert not any(l.exceeds for l in synthetic.layers)  # --max-drift does not apply to synthetic input
    with pytest.raises(bninspect.UsageError, match="live module runs as it is"):
        bninspect.drift(model, data=data, arch="sample_models:mobilenet_v1_tiny")
    with pytest.raises(bninspect.UsageError, match="two or more dimensions"):
        bninspect.drift(model, data=torch.ones(5))


@pytest.mark.torch
def test_report_of_a_live_module_saves_one_html_file_never_over_an_input(model, tmp_path):
    import torch

    report = bninspect.report(model, pages=2, synthetic="8x3x32x32", batch_sizes=[2, 8])
    assert report.drift is not None and report.drift.synthetic
    size = report.save(tmp_path / "r.html")
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert size == len(text.encode()) and "&lt;MobileNetV1Tiny in memory&gt;" in text and "<svg" in text
    assert report._repr_html_().startswith("<iframe srcdoc=")
    copy = tmp_path / "m.pt"
    copy.write_bytes(MOBILENET.read_bytes())
    with pytest.raises(bninspect.UsageError, match="overwrite an input"):
        bninspect.report(copy, output=copy)
    assert copy.read_bytes() == MOBILENET.read_bytes()


@pytest.mark.torch
@pytest.mark.cuda
def test_verify_of_a_live_module_on_cuda_leaves_the_model_where_it_was(model):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    before = _state(model)
    result = bninspect.verify(model, device="all")
    assert result.passed, result.text(160)
    assert result.devices == ["cpu", "cuda:0"]
    assert all("cpu_vs_cuda" in {c.path for c in layer.checks} for layer in result.layers)
    _unchanged(model, before)
    assert all(p.device.type == "cpu" for p in model.parameters())
