"""``bninspect drift``: real models from the sample script, real data, numbers checked against brute force."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bninspect.numerics import kernels
from bninspect.errors import InvalidFileError, PathProblemError, UnsafeFileError, UsageError
from bninspect.formats import open_checkpoint
from bninspect.running.build import build_arch, load_model
from bninspect.running.data import SyntheticSource, batches, open_data, parse_shape
from bninspect.running.interface import DataSource, LoadedModel
from bninspect.running.modules import bn_modules
from bninspect.running.probe import NoProbe, script_probe
from bninspect.services import drift
from tests.conftest import SAMPLES, assert_one_line_error

if str(SAMPLES) not in sys.path:
    sys.path.insert(0, str(SAMPLES))

import make_samples  # noqa: E402
import sample_models  # noqa: E402

# Every test here needs torch (the Python 3.10 job of .ci/run runs without it).
pytestmark = pytest.mark.torch

MOBILENET = "sample_models:mobilenet_v1_tiny"
RESNET = "sample_models:resnet_tiny"
BS64 = str(SAMPLES / "drift" / "mobilenet_v1_tiny_bs64.pt")
BS2 = str(SAMPLES / "drift" / "mobilenet_v1_tiny_bs2.pt")
CALIB = str(SAMPLES / "drift" / "calib.pt")
MOBILENET_BNS = ["features.2.bn", "features.3.bn", "features.4.bn", "features.5.bn"]
CPU = torch.device("cpu")


class TensorSource(DataSource):
    """Inputs already in memory (tests only)."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x
        self._shape = tuple(x.shape)
        self.description = "memory"

    def batch(self, start: int, stop: int) -> torch.Tensor:
        return self.x[start:stop].clone()


def calib(shift: float = 0.0) -> torch.Tensor:
    x, _ = sample_models.synthetic_images(make_samples.CALIB_SAMPLES, seed=make_samples.CALIB_SEED, shift=shift)
    return x


def arch_model(path: str, arch: str = MOBILENET) -> LoadedModel:
    return load_model(path, arch=arch, arch_kwargs=None, trust=False, key=None)


def run(loaded: LoadedModel, x: torch.Tensor, sizes=(2, 8, 32), **kw) -> drift.DriftResult:
    return drift.measure(loaded, TensorSource(x), path="ckpt", batch_sizes=list(sizes), device=CPU, **kw)


def snapshot(model: torch.nn.Module) -> tuple[dict, list]:
    state = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    return state, [m.training for m in model.modules()]


def assert_unchanged(model: torch.nn.Module, before: tuple[dict, list]) -> None:
    state, flags = before
    now = model.state_dict(keep_vars=True)
    assert list(now) == list(state)
    for key, value in state.items():
        assert now[key].dtype == value.dtype and now[key].device == value.device, key
        assert torch.equal(now[key].detach(), value), key
    assert [m.training for m in model.modules()] == flags


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared CI machine torch's default pool oversubscribes (10x slower here)."""
    with kernels.one_thread():
        yield


@pytest.fixture(scope="module")
def bs64() -> LoadedModel:
    return arch_model(BS64)


@pytest.fixture(scope="module")
def bs2() -> LoadedModel:
    return arch_model(BS2)


# ── measurement 1: the samples' drift lands where it should ─────────────────────────────────


def test_batch64_model_fits_its_data(bs64: LoadedModel) -> None:
    """Trained at batch 64: every layer's statistics describe held-out data (drift < 0.03), exit 0."""
    result = run(bs64, calib())
    assert [l.name for l in result.layers] == MOBILENET_BNS
    assert all(l.reached for l in result.layers)
    assert max(l.drift_score for l in result.layers) < 0.03
    assert result.problems == [] and result.exit_code == 0
    assert result.loaded_in_train_mode is None  # a state dict has no mode


def test_batch2_model_drifts_most_in_the_deepest_layer(bs2: LoadedModel) -> None:
    """Trained at batch 2: noisy running statistics, worst at features.5.bn, over the default threshold."""
    result = run(bs2, calib())
    scores = {l.name: l.drift_score for l in result.layers}
    assert max(scores, key=scores.get) == "features.5.bn"
    assert scores["features.5.bn"] > 0.15
    assert min(scores.values()) > 0.1  # clearly above the batch-64 model's 0.015 everywhere
    assert result.exit_code == 1
    assert any(p.startswith("features.5.bn: drift score") for p in result.problems)


def test_shifted_data_is_caught_at_the_first_layer(bs64: LoadedModel) -> None:
    """Every pixel + 1.0 after training: the first BN (after conv → ReLU → dw conv) drifts most."""
    result = run(bs64, calib(make_samples.CALIB_SHIFT))
    scores = {l.name: l.drift_score for l in result.layers}
    assert max(scores, key=scores.get) == "features.2.bn"
    assert scores["features.2.bn"] > 0.5
    assert result.exit_code == 1


def _layer_inputs(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every BN layer's input for all of x at once (eval mode), in float64: the brute-force view."""
    seen: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_pre_hook(lambda mod, inp, n=name: seen.__setitem__(n, inp[0].double()))
               for name, m in bn_modules(model)]
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def test_drift_score_and_batch_errors_equal_brute_force(bs2: LoadedModel) -> None:
    """The expanded float64 formulas equal the element-wise errors of the normalized outputs."""
    x = calib()
    result = run(bs2, x, sizes=(4, 16))
    inputs = _layer_inputs(bs2.model, x)
    modules = dict(bn_modules(bs2.model))
    for layer in result.layers:
        a, bn = inputs[layer.name], modules[layer.name]
        eps = bn.eps
        dims = [0, 2, 3]
        mu_p = a.mean(dim=dims)
        var_p = a.var(dim=dims, unbiased=True)  # the population variance as PyTorch would store it
        shape = (1, -1, 1, 1)
        ideal = (a - mu_p.view(shape)) / torch.sqrt(var_p.view(shape) + eps)
        used = (a - bn.running_mean.double().view(shape)) / torch.sqrt(bn.running_var.double().view(shape) + eps)
        per_channel = ((used - ideal) ** 2).mean(dim=dims).sqrt()
        assert layer.channel_error == pytest.approx(per_channel.tolist(), rel=1e-9, abs=1e-12)
        assert layer.drift_score == pytest.approx(float(per_channel.pow(2).mean().sqrt()), rel=1e-9)
        shift = (bn.running_mean.double() - mu_p) / torch.sqrt(var_p + eps)
        assert layer.mean_shift == pytest.approx(shift.tolist(), rel=1e-9, abs=1e-12)
        for row in layer.by_batch_size:
            b = row.batch_size
            errors = []
            for start in range(0, len(x), b):
                chunk = a[start:start + b]
                # train mode: F.batch_norm with batch statistics (biased variance)
                train = F.batch_norm(chunk, None, None, training=True, eps=eps)
                eval_ = (chunk - mu_p.view(shape)) / torch.sqrt(var_p.view(shape) + eps)
                errors.append(((train - eval_) ** 2).mean(dim=dims))
            expected = torch.stack(errors).mean(dim=0).sqrt().pow(2).mean().sqrt()
            assert row.batches == len(x) // b
            assert row.output_error == pytest.approx(float(expected), rel=1e-7)
        # small batches are worse than large ones, the whole point of measurement 2
        assert layer.by_batch_size[0].output_error > layer.by_batch_size[1].output_error


def test_population_merge_is_exact_in_float64() -> None:
    """Chan's merge over uneven batches gives numpy's mean and variance of everything at once."""
    rng = np.random.default_rng(3)
    data = rng.normal(5.0, 0.01, size=(3, 10_000)) + 1e4  # a large mean: naive Σx² would cancel
    pop = kernels.Population()
    for a, b in ((0, 1), (1, 4000), (4000, 4001), (4001, 10_000)):
        pop.add(torch.from_numpy(data[:, a:b]))
    mean, biased, unbiased = pop.stats()
    np.testing.assert_allclose(mean, data.mean(axis=1), rtol=1e-15)
    np.testing.assert_allclose(biased, data.var(axis=1), rtol=1e-9)
    np.testing.assert_allclose(unbiased, data.var(axis=1, ddof=1), rtol=1e-9)


def test_min_batch_size_is_where_the_error_stays_within_tolerance(bs2: LoadedModel) -> None:
    result = run(bs2, calib(), sizes=(1, 2, 8, 32), batch_tolerance=0.1)
    for layer in result.layers:
        errors = {r.batch_size: r.output_error for r in layer.by_batch_size}
        ok = [b for b in sorted(errors) if all(errors[c] <= 0.1 for c in errors if c >= b)]
        assert layer.min_batch_size == (ok[0] if ok else None)
    assert result.layers[0].min_batch_size == 32  # the 16×16 images: only 32 stay within 0.1
    mins = {l.name: l.min_batch_size for l in result.layers}
    if None in mins.values():
        assert result.min_batch_size is None and mins[result.min_batch_size_layer] is None
    else:
        assert result.min_batch_size == max(mins.values()) == mins[result.min_batch_size_layer]


# ── measurement 3 and the model's mode ──────────────────────────────────────────────────────


def test_eval_train_mismatch_shrinks_with_batch_size(bs64: LoadedModel) -> None:
    result = run(bs64, calib(), sizes=(1, 2, 32))
    assert result.output_kind == "class scores [N, 4]"
    rows = {m.batch_size: m for m in result.mismatch}
    assert rows[32].top1_agreement == 1.0
    assert rows[2].top1_agreement < 0.9  # batch statistics of two images: a forgotten eval() costs
    assert rows[1].top1_agreement < rows[2].top1_agreement
    assert rows[1].max_abs_diff > rows[32].max_abs_diff > 0


def test_torchscript_saved_in_train_mode_is_reported() -> None:
    loaded = load_model(str(SAMPLES / "mobilenet_v1_tiny_train.ts"), arch=None, arch_kwargs=None,
                        trust=True, key=None)
    assert loaded.source == "torchscript"
    before = snapshot(loaded.model)
    result = run(loaded, calib(), sizes=(8, 32))
    assert_unchanged(loaded.model, before)  # still in train mode, statistics untouched
    assert result.loaded_in_train_mode is True
    assert sorted(result.train_mode_layers) == MOBILENET_BNS
    # TorchScript takes no forward hooks: the layers are measured through the graph probe
    assert result.layers_measured and [l.name for l in result.layers] == MOBILENET_BNS
    assert result.exit_code == 1
    assert any("saved in train mode" in p for p in result.problems)
    assert {m.batch_size for m in result.mismatch} == {8, 32}
    assert all(m.max_abs_diff > 0 for m in result.mismatch)


def test_arch_with_a_torchscript_file_measures_layers_and_reads_its_saved_mode() -> None:
    """--arch on a TorchScript file: the state dict and the modes are read statically, hooks work."""
    loaded = arch_model(str(SAMPLES / "mobilenet_v1_tiny_train.ts"))
    result = run(loaded, calib(), sizes=(32,))
    assert result.layers_measured and [l.name for l in result.layers] == MOBILENET_BNS
    assert result.loaded_in_train_mode is True and sorted(result.train_mode_layers) == MOBILENET_BNS
    assert result.exit_code == 1


def test_torchscript_probe_sees_what_eager_hooks_see(tmp_path: Path) -> None:
    """The same trained model as TorchScript (probe) and via --arch (hooks): the same numbers, and it recalibrates."""
    ts_path = str(SAMPLES / "mobilenet_v1_tiny_train.ts")
    scripted = load_model(ts_path, arch=None, arch_kwargs=None, trust=True, key=None)
    probe, names = script_probe(scripted.model)
    assert names == MOBILENET_BNS
    before = snapshot(scripted.model)
    out = tmp_path / "fixed.safetensors"
    via_probe = run(scripted, calib(), sizes=(4, 32), write_recalibrated=str(out))
    assert_unchanged(scripted.model, before)
    via_hooks = run(arch_model(ts_path), calib(), sizes=(4, 32))
    for a, b in zip(via_probe.layers, via_hooks.layers):
        assert a.name == b.name
        assert a.drift_score == pytest.approx(b.drift_score, rel=1e-6)
        assert [r.output_error for r in a.by_batch_size] == pytest.approx([r.output_error for r in b.by_batch_size],
                                                                          rel=1e-6)
    assert via_probe.recalibration.drift_after < 1e-6
    assert open_checkpoint(str(out)).tensors.keys() == scripted.model.state_dict().keys()


def test_torchscript_whose_graph_copy_fails_is_measured_at_the_output(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_model(str(SAMPLES / "mobilenet_v1_tiny_train.ts"), arch=None, arch_kwargs=None,
                        trust=True, key=None)

    def broken(x: torch.Tensor) -> dict:
        raise RuntimeError("a graph this probe cannot run")

    monkeypatch.setattr(drift, "script_probe", lambda model: (broken, MOBILENET_BNS))
    result = run(loaded, calib(), sizes=(32,))
    assert result.layers_measured is False and result.mismatch[0].max_abs_diff > 0
    assert any("measured at the output only" in n for n in result.notes)


@pytest.mark.parametrize("private", ["_create_function_from_graph", "TupleType"])
def test_torchscript_probe_without_its_private_torch_api_measures_the_output(monkeypatch: pytest.MonkeyPatch,
                                                                              private: str) -> None:
    """The probe needs private torch APIs: a release that renames one gets the output measurement
    and a note saying why, never a traceback."""
    loaded = load_model(str(SAMPLES / "mobilenet_v1_tiny_train.ts"), arch=None, arch_kwargs=None, trust=True, key=None)
    monkeypatch.delattr(torch._C, private)
    with pytest.raises(NoProbe, match="lacks the private graph API"):
        script_probe(loaded.model)
    result = run(loaded, calib(), sizes=(32,))
    assert result.layers_measured is False and result.layers == [] and result.mismatch[0].max_abs_diff > 0
    assert any(n.startswith(f"this PyTorch ({torch.__version__}) lacks the private graph API") and
               n.endswith("measured at the output only (give --arch to measure every layer)") for n in result.notes)
    assert result.loaded_in_train_mode is True and result.exit_code == 1  # what it can still tell, it tells


def test_torchscript_in_eval_mode_is_not_flagged_for_its_mode() -> None:
    loaded = load_model(str(SAMPLES / "mobilenet_v1_tiny.ts"), arch=None, arch_kwargs=None, trust=True, key=None)
    result = run(loaded, calib(), sizes=(32,))
    assert result.loaded_in_train_mode is False
    assert result.problems == []


def test_batch_size_one_with_one_value_per_channel_is_skipped_not_crashed() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2)).eval()
    loaded = LoadedModel(model=model, source="arch", description="test")
    x = torch.randn(16, 5, generator=torch.Generator().manual_seed(0))
    result = run(loaded, x, sizes=(1, 4))
    row1 = result.layers[0].by_batch_size[0]
    assert row1.batch_size == 1 and row1.output_error is None and "one value per channel" in row1.skipped
    assert "one value per channel" in result.mismatch[0].skipped
    assert result.mismatch[1].top1_agreement is not None
    assert model[1].num_batches_tracked.item() == 0 and torch.equal(model[1].running_var, torch.ones(3))


def test_a_failed_train_forward_does_not_leak_statistics_into_the_next_batch_size() -> None:
    """BN1d after a BN2d: at batch 1 the second one refuses, after the first has updated its buffers."""
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.BatchNorm2d(3), torch.nn.Flatten(),
                                torch.nn.Linear(3 * 4, 4), torch.nn.BatchNorm1d(4)).eval()
    loaded = LoadedModel(model=model, source="arch", description="test")
    x = torch.randn(8, 2, 2, 2, generator=torch.Generator().manual_seed(1))
    alone = run(loaded, x, sizes=(4,)).mismatch[0]
    after_failure = run(loaded, x, sizes=(1, 4)).mismatch
    assert "one value per channel" in after_failure[0].skipped
    assert after_failure[1].max_abs_diff == alone.max_abs_diff


def test_a_model_without_batchnorm_is_measured_and_passes() -> None:
    loaded = arch_model(str(SAMPLES / "norms_tiny.pt"), "sample_models:norms_tiny")
    result = run(loaded, calib(), sizes=(8,))
    assert result.layers == [] and result.exit_code == 0
    assert result.mismatch[0].max_abs_diff == 0.0 and result.mismatch[0].top1_agreement == 1.0
    assert any("no BatchNorm layer" in n for n in result.notes)


class _DictHead(torch.nn.Module):
    """A 1-d model with dropout that returns a dict, like many detection/NLP heads."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(2, 3, 3)
        self.bn = torch.nn.BatchNorm1d(3)
        self.drop = torch.nn.Dropout(p=0.9)
        self.fc = torch.nn.Linear(3 * 6, 5)

    def forward(self, x: torch.Tensor) -> dict:
        return {"aux": x.sum(), "logits": self.fc(self.drop(self.bn(self.conv(x))).flatten(1))}


def test_dropout_stays_off_and_dict_outputs_are_read() -> None:
    """Only BN changes mode: with the BN's own statistics matching the data exactly, the gap is BN's alone."""
    torch.manual_seed(0)
    model = _DictHead().train()
    x = torch.randn(32, 2, 8, dtype=torch.float64)  # float64 data into a float32 model: cast, not an error
    loaded = LoadedModel(model=model, source="arch", description="test")
    before = snapshot(model)
    result = run(loaded, x, sizes=(32,))
    assert_unchanged(model, before)
    assert result.output_kind == "class scores [N, 5]"
    layer = result.layers[0]
    assert layer.elements_per_channel == 32 * 6 and layer.drift_score > 0.1  # fresh statistics: mean 0, var 1
    # eval vs train differ only through BN: dropout p=0.9 in train mode would change almost every output
    with torch.no_grad():
        bn_only = model.fc(F.batch_norm(model.conv(x.float()), None, None, model.bn.weight, model.bn.bias,
                                         training=True, eps=model.bn.eps).flatten(1))
        eval_out = model.eval()(x.float())["logits"]
    assert result.mismatch[0].max_abs_diff == pytest.approx(float((bn_only - eval_out).abs().max()), rel=1e-5)


# ── the model is never left modified ────────────────────────────────────────────────────────


def test_model_and_buffers_unchanged_after_drift_and_recalibration(tmp_path: Path) -> None:
    loaded = arch_model(BS2)
    loaded.model.train()  # a mode to restore that is not the one drift measures in
    loaded.model.features[2].bn.eval()
    before = snapshot(loaded.model)
    run(loaded, calib(), sizes=(1, 2, 32), write_recalibrated=str(tmp_path / "r.safetensors"))
    assert_unchanged(loaded.model, before)


def test_small_batches_run_on_one_thread_and_the_setting_is_restored() -> None:
    """Torch's thread pool on many tiny batches made drift 2-15x slower on a busy machine: the
    sample's batches (32×3×16×16) run on one intra-op thread, and the caller's setting comes back."""
    loaded = arch_model(BS64)
    seen: list[int] = []
    hook = loaded.model.register_forward_pre_hook(lambda module, args: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = run(loaded, calib(), sizes=(2, 8))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
        hook.remove()
    assert result.threads == 1 and seen and set(seen) == {1}
    assert drift.drift_threads(drift.SMALL_BATCH_VALUES, CPU) >= 1


def test_pickled_module_in_train_mode_is_restored() -> None:
    loaded = load_model(str(SAMPLES / "resnet_tiny_module.pt"), arch=None, arch_kwargs=None,
                        trust=True, key=None)
    loaded.model.train()
    loaded.training_as_loaded = {n: True for n, _ in bn_modules(loaded.model)}
    before = snapshot(loaded.model)
    result = run(loaded, calib(), sizes=(8,))
    assert_unchanged(loaded.model, before)
    assert result.layers_measured and result.loaded_in_train_mode is True


# ── recalibration ───────────────────────────────────────────────────────────────────────────


def test_recalibration_removes_drift_and_keeps_every_other_tensor(tmp_path: Path, bs2: LoadedModel) -> None:
    out = tmp_path / "fixed.safetensors"
    result = run(bs2, calib(), sizes=(32,), write_recalibrated=str(out))
    recal = result.recalibration
    assert recal.format == "safetensors" and recal.layers == 4 and recal.tensors_written == 28
    assert recal.drift_before > 0.2 and recal.drift_after < 1e-6
    assert all(l.drift_after < 1e-6 for l in result.layers)
    original = torch.load(BS2, weights_only=True)
    from safetensors.torch import load_file

    written = load_file(str(out))
    assert sorted(written) == sorted(original)  # safetensors orders keys its own way
    for key, value in original.items():
        assert written[key].dtype == value.dtype, key
        if key.endswith(("running_mean", "running_var")):
            assert not torch.equal(written[key], value), key
        else:
            assert torch.equal(written[key], value), key  # weights, biases, counts: the same values
    # and a fresh run on the written file agrees: the drift is gone
    again = run(arch_model(str(out)), calib(), sizes=(32,))
    assert max(l.drift_score for l in again.layers) < 1e-6 and again.exit_code == 0


def test_recalibrated_running_var_is_the_unbiased_population_variance(tmp_path: Path, bs2: LoadedModel) -> None:
    out = tmp_path / "fixed.safetensors"
    run(bs2, calib(), sizes=(32,), write_recalibrated=str(out))
    fixed = arch_model(str(out))
    # The first BN's input does not depend on any other BN: its statistics are plain to compute.
    a = _layer_inputs(fixed.model, calib())["features.2.bn"]
    bn = fixed.model.features[2].bn
    torch.testing.assert_close(bn.running_mean.double(), a.mean(dim=(0, 2, 3)), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(bn.running_var.double(), a.var(dim=(0, 2, 3), unbiased=True), rtol=1e-6, atol=1e-7)


def test_recalibration_keeps_a_lightning_container(tmp_path: Path) -> None:
    """OUT with the input's extension: the whole checkpoint again, only the statistics changed."""
    src = str(SAMPLES / "resnet_tiny_lightning.ckpt")
    out = tmp_path / "fixed.ckpt"
    result = run(arch_model(src, RESNET), calib(), sizes=(32,), write_recalibrated=str(out))
    assert result.recalibration.format == "torch-zip" and result.recalibration.layers == 6
    original = torch.load(src, weights_only=True)
    written = torch.load(out, weights_only=True)
    assert list(written) == list(original)
    assert written["optimizer_states"][0]["state"].keys() == original["optimizer_states"][0]["state"].keys()
    for key, value in original["state_dict_ema"].items():
        assert torch.equal(written["state_dict_ema"][key], value)  # the other state dict is untouched
    changed = [k for k, v in original["state_dict"].items() if not torch.equal(written["state_dict"][k], v)]
    assert changed and all(k.endswith(("running_mean", "running_var")) for k in changed)
    assert oct(out.stat().st_mode & 0o777) != oct(0o600)


def _with_extras(tmp_path: Path, extra: object) -> str:
    """The batch-2 sample's state dict in a training checkpoint, beside ``extra``."""
    path = tmp_path / "train.ckpt"
    torch.save({"state_dict": torch.load(BS2, weights_only=True), "extra": extra}, path)
    return str(path)


def test_arch_respects_trust_for_a_file_whose_load_runs_code(tmp_path: Path) -> None:
    """--trust is decided once, in open_checkpoint: with --arch too, such a file is refused
    without it and loaded with it (torch.load, which runs the payload: a harmless one here)."""
    path = _with_extras(tmp_path, _SystemCall())
    with pytest.raises(UnsafeFileError, match="posix.system"):
        load_model(path, arch=MOBILENET, arch_kwargs=None, trust=False, key=None)
    loaded = load_model(path, arch=MOBILENET, arch_kwargs=None, trust=True, key=None)
    reference = torch.load(BS2, weights_only=True)
    assert all(torch.equal(value, reference[key]) for key, value in loaded.model.state_dict().items())


def test_recalibration_re_saves_a_whole_container_only_with_trust(tmp_path: Path) -> None:
    """A script's extras (argparse.Namespace) need code to load: the whole file is written again
    with --trust only; without it the error says to write .safetensors."""
    import argparse

    path = _with_extras(tmp_path, argparse.Namespace(lr=0.1))
    out = tmp_path / "fixed.ckpt"
    with pytest.raises(InvalidFileError, match="cannot be re-saved as a whole; write the recalibrated state dict as "
                                               ".safetensors instead"):
        run(arch_model(path), calib(), sizes=(32,), write_recalibrated=str(out))
    assert not out.exists()
    trusted = load_model(path, arch=MOBILENET, arch_kwargs=None, trust=True, key=None)
    result = run(trusted, calib(), sizes=(32,), write_recalibrated=str(out))
    assert result.recalibration.format == "torch-zip" and result.recalibration.drift_after < 1e-6
    written = torch.load(out, weights_only=False)
    assert written["extra"] == argparse.Namespace(lr=0.1)
    original = torch.load(BS2, weights_only=True)
    changed = [k for k, v in original.items() if not torch.equal(written["state_dict"][k], v)]
    assert changed and all(k.endswith(("running_mean", "running_var")) for k in changed)


@pytest.mark.parametrize("name", ["same", "symlink"])
def test_recalibration_never_writes_over_the_input(tmp_path: Path, name: str) -> None:
    src = tmp_path / "in.pt"
    src.write_bytes(Path(BS2).read_bytes())
    out = src if name == "same" else tmp_path / "link.pt"
    if name == "symlink":
        out.symlink_to(src)
    with pytest.raises(UsageError, match="must not overwrite the input"):
        drift._check_output_path(str(out), str(src))
    assert src.read_bytes() == Path(BS2).read_bytes()


def test_recalibration_output_problems(tmp_path: Path) -> None:
    with pytest.raises(PathProblemError, match="directory does not exist"):
        drift._check_output_path(str(tmp_path / "nope" / "x.safetensors"), BS2)
    with pytest.raises(PathProblemError, match="is a directory"):
        drift._check_output_path(str(tmp_path), BS2)
    with pytest.raises(UsageError, match="name the file .safetensors"):
        drift._check_output_path(str(tmp_path / "x.onnx"), BS2)


# ── --arch: building and loading ────────────────────────────────────────────────────────────


@pytest.mark.parametrize("sample, prefix", [
    ("resnet_tiny.pt", ""), ("resnet_tiny_dp.pth", "module."), ("resnet_tiny_compiled.pt", "_orig_mod."),
    ("resnet_tiny_lightning.ckpt", "model."),
])
def test_wrapper_prefixes_are_matched(sample: str, prefix: str) -> None:
    loaded = arch_model(str(SAMPLES / sample), RESNET)
    assert loaded.key_map["layer2.0.downsample.1.running_var"] == prefix + "layer2.0.downsample.1.running_var"
    reference = torch.load(SAMPLES / "resnet_tiny.pt", weights_only=True)
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, reference[key]), key


def test_missing_num_batches_tracked_is_tolerated(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    sd = {k: v for k, v in torch.load(BS64, weights_only=True).items() if not k.endswith("num_batches_tracked")}
    save_file(sd, str(tmp_path / "old.safetensors"))
    loaded = arch_model(str(tmp_path / "old.safetensors"))
    assert any("num_batches_tracked missing" in n for n in loaded.notes)
    assert torch.equal(loaded.model.features[2].bn.running_var, sd["features.2.bn.running_var"])


def test_state_dict_that_does_not_fit_lists_keys_and_counts() -> None:
    with pytest.raises(UsageError) as err:
        arch_model(str(SAMPLES / "resnet_tiny.pt"), MOBILENET)
    line = err.value.line()
    assert "missing from the checkpoint: 24 (features.0.weight, features.0.bias," in line
    assert "not in the model: 38 (conv1.weight, bn1.weight, bn1.bias, bn1.running_mean, ...)" in line


def test_shape_mismatch_is_named() -> None:
    with pytest.raises(UsageError, match=r"shapes differ for 2 \(fc.weight \[4, 32\] vs model \[7, 32\], fc.bias"):
        load_model(str(SAMPLES / "resnet_tiny.pt"), arch="sample_models:ResNetTiny",
                   arch_kwargs='{"num_classes": 7}', trust=False, key=None)


@pytest.mark.parametrize("spec, kwargs, message", [
    ("sample_models", None, "must look like module.path:callable"),
    ("no_such_module_xyz:build", None, "cannot import module 'no_such_module_xyz'"),
    ("sample_models:nope", None, "has no attribute 'nope'"),
    ("sample_models:NUM_CLASSES", None, "is not callable"),
    ("sample_models:synthetic_images", '{"n": 2, "seed": 0}', "returned tuple, not a torch.nn.Module"),
    ("sample_models:resnet_tiny", '{"width": 3}', "failed (TypeError)"),
    ("sample_models:resnet_tiny", "{bad json", "--arch-kwargs is not valid JSON"),
    ("sample_models:resnet_tiny", "[1]", "must be a JSON object"),
])
def test_arch_errors(spec: str, kwargs: str | None, message: str) -> None:
    with pytest.raises(UsageError, match=None) as err:
        build_arch(spec, kwargs)
    assert message in err.value.line()


def test_arch_imports_from_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Like `python -m`: ./mynet.py is importable; sys.path is as before afterwards."""
    (tmp_path / "drift_test_net.py").write_text("import torch\ndef build():\n    return torch.nn.BatchNorm1d(3)\n")
    monkeypatch.chdir(tmp_path)
    path_before = list(sys.path)
    model = build_arch("drift_test_net:build")
    assert isinstance(model, torch.nn.BatchNorm1d)
    assert sys.path == path_before
    sys.modules.pop("drift_test_net", None)


def test_file_model_needs_trust() -> None:
    with pytest.raises(UnsafeFileError, match="pass --trust"):
        load_model(str(SAMPLES / "mobilenet_v1_tiny.ts"), arch=None, arch_kwargs=None, trust=False, key=None)
    # Running the pickled model itself needs its classes, and so --trust ...
    with pytest.raises(UnsafeFileError, match="pass --trust"):
        load_model(str(SAMPLES / "resnet_tiny_module.pt"), arch=None, arch_kwargs=None, trust=False, key=None)


def test_arch_takes_the_statically_read_weights_of_a_pickled_model() -> None:
    # ... but --arch only needs its weights: read statically, nothing from the file runs.
    loaded = arch_model(str(SAMPLES / "resnet_tiny_module.pt"), RESNET)
    reference = torch.load(SAMPLES / "resnet_tiny.pt", weights_only=True)
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, reference[key]), key


# ── data ────────────────────────────────────────────────────────────────────────────────────


def test_data_formats_give_the_same_batches(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    x = calib()
    np.save(tmp_path / "x.npy", x.numpy())
    save_file({"images": x, "labels": torch.zeros(64)}, str(tmp_path / "x.safetensors"))
    torch.save((x, torch.zeros(64)), tmp_path / "xy.pt")
    for name in ("x.npy", "x.safetensors", "xy.pt"):
        source = open_data(str(tmp_path / name))
        assert len(source) == 64 and source.sample_shape == (3, 16, 16)
        assert torch.equal(torch.cat(list(batches(source, 24))), x), name


class _SystemCall:
    """Pickles as os.system("true"): a payload, harmless if it ever ran."""

    def __reduce__(self):
        import os

        return (os.system, ("true",))


def test_data_refusals(tmp_path: Path) -> None:
    # Refusals to run code are exit 3 (unsafe), as for checkpoints and verify --input.
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UnsafeFileError, match="needs pickle, refused"):
        open_data(str(tmp_path / "obj.npy"))
    np.save(tmp_path / "flat.npy", np.zeros(5, dtype=np.float32))
    with pytest.raises(InvalidFileError, match="1-d tensor"):
        open_data(str(tmp_path / "flat.npy"))
    torch.save({"a": torch.zeros(2, 3), "b": torch.zeros(2, 3)}, tmp_path / "two.pt")
    with pytest.raises(UsageError, match="holds 2 tensors"):
        open_data(str(tmp_path / "two.pt"))
    # A class the file only names is data (a real load imports it, nothing more) ...
    torch.save({"x": torch.zeros(2, 3), "opt": torch.optim.SGD}, tmp_path / "named.pt")
    assert len(open_data(str(tmp_path / "named.pt"))) == 2
    # ... a call that runs code is refused, in either torch.save format.
    for legacy in (False, True):
        torch.save({"x": torch.zeros(2, 3), "cmd": _SystemCall()}, tmp_path / "code.pt",
                   _use_new_zipfile_serialization=not legacy)
        with pytest.raises(UnsafeFileError, match="posix.system"):
            open_data(str(tmp_path / "code.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a tensor file at all")
    with pytest.raises(InvalidFileError, match="not a tensor file"):
        open_data(str(tmp_path / "junk.pt"))
    with pytest.raises(PathProblemError):
        open_data(str(tmp_path / "missing.pt"))


def test_synthetic_data_is_seeded_and_the_same_at_every_batch_size() -> None:
    source = SyntheticSource((150, 3, 4, 4), seed=0)
    whole = source.batch(0, 150)
    assert whole.shape == (150, 3, 4, 4)
    assert torch.equal(torch.cat(list(batches(source, 7))), whole)
    assert torch.equal(SyntheticSource((150, 3, 4, 4), seed=0).batch(60, 70), whole[60:70])
    assert not torch.equal(SyntheticSource((150, 3, 4, 4), seed=1).batch(0, 10), whole[:10])


@pytest.mark.parametrize("text", ["16", "16x0x4", "ax3", "16x3x-1"])
def test_bad_synthetic_shapes(text: str) -> None:
    with pytest.raises(UsageError, match="--synthetic must look like"):
        parse_shape(text)


def test_synthetic_run_does_not_judge_fitness(bs64: LoadedModel) -> None:
    result = drift.measure(bs64, SyntheticSource((32, 3, 16, 16)), path="ckpt", batch_sizes=[32], device=CPU)
    assert result.synthetic and any("mechanics" in n for n in result.notes)
    assert max(l.drift_score for l in result.layers) > 0.1  # N(0,1) noise is not the training data…
    assert not any("drift score" in p for p in result.problems)  # …so it is not held against the checkpoint


@pytest.mark.parametrize("text", ["0,2", "a", ",", "-1"])
def test_bad_batch_sizes(text: str) -> None:
    with pytest.raises(UsageError, match="--batch-sizes"):
        drift.parse_batch_sizes(text)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="CUDA is not available"):
        kernels.resolve_device("cuda")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_run_matches_cpu_and_leaves_the_model_on_the_cpu(bs64: LoadedModel) -> None:
    before = snapshot(bs64.model)
    on_gpu = drift.measure(bs64, TensorSource(calib()), path="ckpt", batch_sizes=[8, 32], device=torch.device("cuda"))
    assert_unchanged(bs64.model, before)
    on_cpu = run(bs64, calib(), sizes=(8, 32))
    for a, b in zip(on_gpu.layers, on_cpu.layers):
        assert a.drift_score == pytest.approx(b.drift_score, rel=1e-3, abs=1e-4)


# ── the installed command ───────────────────────────────────────────────────────────────────
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def test_cli_batch2_json_exit_1(cli) -> None:
    r = cli("drift", BS2, "--arch", MOBILENET, "--data", CALIB, "--batch-sizes", "2,32", "--json", cwd=SAMPLES, env=ONE_THREAD)
    assert r.code == 1, r.err
    assert r.err == ""  # no progress bar when stderr is not a terminal
    doc = json.loads(r.out)
    assert doc["schema"] == "bninspect.drift/1"
    assert [l["name"] for l in doc["layers"]] == MOBILENET_BNS
    assert doc["verdict"]["ok"] is False
    assert doc["thresholds"] == {"max_drift": 0.1, "batch_tolerance": 0.1, "min_agreement": 0.99}
    assert [m["batch_size"] for m in doc["output"]["eval_vs_train"]] == [2, 32]
    # the documented fields (README, bninspect.drift/1), no more and no fewer
    assert list(doc) == ["schema", "file", "model", "data", "device", "batch_sizes", "pass_batch_size", "threads",
                         "thresholds", "layers_measured", "min_batch_size", "layers", "output", "recalibration", "verdict",
                         "notes"]
    assert doc["threads"] == 1
    assert list(doc["layers"][0]) == [
        "name", "kind", "channels", "eps", "reached", "elements_per_channel", "drift_score", "worst_channel",
        "worst_error", "worst_mean_shift", "worst_var_ratio", "max_abs_mean_shift", "var_ratio_range",
        "worst_channels", "mean_shift", "var_ratio", "channel_error", "by_batch_size", "min_batch_size", "exceeds",
        "drift_after"]
    assert doc["layers"][0]["elements_per_channel"] == 64 * 16 * 16
    assert len(doc["layers"][3]["mean_shift"]) == 128


def test_cli_batch64_table_exit_0_and_recalibrates(cli, tmp_path: Path) -> None:
    out = tmp_path / "fixed.safetensors"
    r = cli("drift", BS64, "--arch", MOBILENET, "--data", CALIB, "--batch-sizes", "8,32",
            "--write-recalibrated", str(out), cwd=SAMPLES, env=ONE_THREAD)
    assert r.code == 0, r.err
    assert "features.5.bn" in r.out and "OK: worst layer drift" in r.out
    assert f"wrote {out}" in r.out.replace("\n", "")
    assert out.is_file() and open_checkpoint(str(out)).format == "safetensors"


def test_cli_one_line_errors(cli, tmp_path: Path) -> None:
    """Refused without --trust (3), a missing file (5): one line each, never a traceback."""
    assert_one_line_error(cli("drift", str(SAMPLES / "mobilenet_v1_tiny_train.ts"), "--data", CALIB, env=ONE_THREAD),
                          3, "--trust")
    assert_one_line_error(cli("drift", str(tmp_path / "nope.pt"), "--arch", MOBILENET, "--data", CALIB,
                              cwd=SAMPLES, env=ONE_THREAD), 5, "no such file")
