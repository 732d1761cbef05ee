"""verify's service: layers recomputed four ways, the conformance matrix, --expected diagnoses, --output files.

Mistakes are injected with torch directly (not with our own formulas), so a diagnosis that
merely agrees with itself cannot pass.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bninspect.formats.arrays import read_activations
from bninspect.formats.writers import write_activations
from bninspect.checkpoint import TensorRef
from bninspect.errors import UsageError
from bninspect.layers import BNLayer, Producer
from bninspect.services import verify as sv

# Every test here needs torch (the Python 3.10 job of .ci/run runs without it).
pytestmark = pytest.mark.torch

C = 16


def make_layer(c=C, dtype="float32", eps=1e-5, seed=0, producer=None, affine=True, name="block.bn"):
    rng = np.random.default_rng(seed)
    mean = rng.uniform(0.5, 3.0, c)  # positive: the μ/σ² swap stays finite
    var = np.exp(rng.normal(0, 1, c))
    var[::4] = rng.uniform(0.5, 2.0, len(var[::4])) * 1e-5  # channels where eps decides the output
    tensors = {"running_mean": mean, "running_var": var}
    if affine:
        tensors |= {"weight": rng.normal(1, 0.4, c), "bias": rng.normal(0, 0.4, c)}
    np_dtype = {"float32": np.float32, "float64": np.float64, "float16": np.float16}.get(dtype, np.float32)
    refs = {k: TensorRef.from_array(v.astype(np_dtype), dtype) for k, v in tensors.items()}
    return BNLayer(name, name, "BatchNorm2d", "module", c, refs, eps, "module", 0.1, "default", affine=affine,
                   producer=producer)


def conv_producer(weight, groups=None, bias=None):
    return Producer("block.conv", "block.conv", "conv", "conv2d", weight.shape[0], weight.shape[1], groups,
                    TensorRef.from_array(weight.astype(np.float32)), None if bias is None else TensorRef.from_array(bias))


def test_layer_passes_every_path():
    w = np.random.default_rng(5).normal(0, 0.1, (C, 1, 3, 3))
    res, ref = sv.verify_layer(make_layer(producer=conv_producer(w)), ["cpu"])
    assert res.passed and ref.shape == (2, C, 4, 4)
    assert [c.path for c in res.checks] == ["batch_norm", "folded", "fused_conv"]
    assert res.dtype == "float32" and res.eps_source == "module"
    # channels 0, 4, 8, 12 have σ² ≈ ε: a runtime with eps 1e-3 moves their outputs by about |γ|
    sens = res.eps_sensitivity
    assert sens.eps_to == 1e-3 and sens.worst_channel % 4 == 0 and sens.relative_change > 0.5
    assert [g.batch for g in res.train_eval_gap] == [1, 2, 8, 32]
    assert all(g.max_abs_diff > 0 for g in res.train_eval_gap)


def test_float16_layer_uses_its_dtype_and_tolerance():
    res, _ = sv.verify_layer(make_layer(dtype="float16"), ["cpu"])
    assert res.dtype == "float16" and res.passed and res.tolerance == pytest.approx(8 * 2**-10)


def test_broken_statistics_fail_with_a_note():
    layer = make_layer()
    layer.tensors["running_var"] = TensorRef.from_array(np.full(C, -1.0, dtype=np.float32))
    res, _ = sv.verify_layer(layer, ["cpu"])
    assert not res.passed and "not finite" in res.notes[0]


def test_layer_without_running_statistics_is_skipped():
    layer = make_layer()
    del layer.tensors["running_mean"], layer.tensors["running_var"]
    res, ref = sv.verify_layer(layer, ["cpu"])
    assert ref is None and res.skipped and res.passed


def test_train_gap_impossible_for_one_value_per_channel():
    layer = make_layer()
    layer.kind = "BatchNorm1d"
    layer.producer = Producer("fc", "fc", "linear", "linear", C, 8, None, TensorRef.from_array(np.ones((C, 8), np.float32)), None)
    res, _ = sv.verify_layer(layer, ["cpu"])
    assert res.input_shape == [2, C]
    assert res.train_eval_gap[0].max_abs_diff is None and res.train_eval_gap[1].max_abs_diff is not None
    assert "fused_linear" in [c.path for c in res.checks] and res.passed


def test_conformance_matrix_passes_on_cpu():
    cases = sv.conformance(["cpu"])
    assert all(c.passed for c in cases), [c.name for c in cases if not c.passed]
    assert {c.dtype for c in cases} == {"float64", "float32", "float16", "bfloat16"}
    skipped = [c for c in cases if c.skipped]
    assert len(skipped) == 1 and "one value per channel" in skipped[0].skipped


def test_conformance_case_catches_a_broken_module(monkeypatch):
    # a kernel that normalizes train batches with the unbiased variance must fail its case
    from bninspect.numerics import reference

    real = reference.batch_stats

    def biased_swapped(x):
        s = real(x)
        return reference.BatchStats(s.mean, s.var_unbiased, s.var_unbiased, s.n)

    monkeypatch.setattr(reference, "batch_stats", biased_swapped)
    assert not sv.run_case(sv.Case("BatchNorm2d", (4, 8, 3, 3), "float32", training=True), "cpu", 0).passed


# ---------------------------------------------------------------- --expected: inject each mistake with torch

def _torch_params(layer):
    return (torch.from_numpy(layer.values("running_mean")), torch.from_numpy(layer.values("running_var")),
            torch.from_numpy(layer.gamma()), torch.from_numpy(layer.beta()))


def _bn(x, mean, var, gamma, beta, eps=1e-5):
    return F.batch_norm(x, mean, var, gamma, beta, False, 0.0, eps)


def _inject(cause, x, layer):
    mean, var, gamma, beta = _torch_params(layer)
    if cause.startswith("eps "):
        return _bn(x, mean, var, gamma, beta, float(cause.split()[1]))
    if cause == "squared":
        return _bn(x, mean, var**2, gamma, beta)
    if cause == "sqrt":
        return _bn(x, mean, var.sqrt(), gamma, beta)
    if cause == "train":
        return F.batch_norm(x, None, None, gamma, beta, True, 0.0, 1e-5)
    if cause == "unbiased batch":
        m, v = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=True)
        return _bn(x, m, v, gamma, beta)
    if cause == "bessel again":
        n = x.numel() // x.shape[1]
        return _bn(x, mean, var * n / (n - 1), gamma, beta)
    if cause == "axis":
        n, c, h, w = x.shape
        nhwc = x.contiguous().reshape(n, h, w, c)  # NCHW bytes read as NHWC
        return _bn(nhwc.permute(0, 3, 1, 2), mean, var, gamma, beta).permute(0, 2, 3, 1).reshape(n, c, h, w)
    if cause == "gamma beta":
        return _bn(x, mean, var, beta, gamma)
    if cause == "mu var":
        return _bn(x, var, mean, gamma, beta)
    if cause == "affine dropped":
        return _bn(x, mean, var, None, None)
    if cause == "float16":
        return _bn(x.half(), mean.half(), var.half(), gamma.half(), beta.half()).double()
    raise AssertionError(cause)


INJECTED = [
    ("eps 0.001", "eps 0.001 instead of 1e-05"),
    ("eps 1.001e-05", "eps 1.001e-05 instead of 1e-05"),
    ("eps 0", "eps 0 instead of 1e-05"),
    ("squared", "running_var squared (read as a standard deviation)"),
    ("sqrt", "square root of running_var used (variance stored as standard deviation)"),
    ("train", "batch statistics used instead of running statistics (train mode)"),
    ("unbiased batch", "batch statistics with the unbiased variance"),
    ("bessel again", "running_var × n/(n−1) (unbiased correction applied again, n=144)"),
    ("axis", "channel axis confused (NCHW read as NHWC)"),
    ("gamma beta", "γ and β swapped"),
    ("mu var", "μ and σ² swapped"),
    ("affine dropped", "affine dropped (γ = 1, β = 0)"),
    ("float16", "float16 arithmetic"),
]


@pytest.fixture(scope="module")
def diag_input():
    layer = make_layer(dtype="float64")
    rng = np.random.default_rng(11)
    mean, var = layer.values("running_mean"), layer.values("running_var")
    x = (mean.reshape(1, -1, 1, 1) + np.sqrt(var).reshape(1, -1, 1, 1) * rng.normal(size=(4, C, 6, 6))).astype(np.float32)
    return layer, x.astype(np.float64)


@pytest.mark.parametrize("mistake,cause", INJECTED)
def test_each_injected_mistake_is_recovered(diag_input, mistake, cause):
    layer, x = diag_input
    expected = _inject(mistake, torch.from_numpy(x), layer).float().double().numpy()  # saved as float32
    d = sv.diagnose(layer, x, expected, "float32", channels_last=False)
    assert (d.cause, d.fits) == (cause, True), [(c.cause, c.relative_residual, c.fits) for c in d.candidates[:4]]
    assert d.residual < 1e-3


def test_correct_output_is_a_match(diag_input):
    layer, x = diag_input
    mean, var, gamma, beta = _torch_params(layer)
    expected = _bn(torch.from_numpy(x).float(), mean.float(), var.float(), gamma.float(), beta.float()).double().numpy()
    d = sv.diagnose(layer, x, expected, "float32", channels_last=False)
    assert d.cause == "match" and d.fits and d.relative_residual < 1e-4


def test_channel_axis_mistake_on_channels_last_data(diag_input):
    layer, x = diag_input
    mean, var, gamma, beta = _torch_params(layer)
    file = np.ascontiguousarray(np.moveaxis(x, 1, -1))  # the user's NHWC file
    n, h, w, c = file.shape
    wrong = _bn(torch.from_numpy(file).reshape(n, c, h, w), mean, var, gamma, beta).reshape(n, h, w, c).numpy()
    d = sv.diagnose(layer, x, np.moveaxis(wrong, -1, 1), "float64", channels_last=True)
    assert d.cause == "channel axis confused (NHWC read as NCHW)"


def test_unexplained_mismatch_names_the_channels(diag_input):
    layer, x = diag_input
    mean, var, gamma, beta = _torch_params(layer)
    expected = _bn(torch.from_numpy(x), mean, var, gamma, beta).numpy()
    expected[:, [3, 7]] *= 1.5
    d = sv.diagnose(layer, x, expected, "float32", channels_last=False)
    assert (d.cause, d.fits, d.channels_off, d.channels_off_count) == ("unexplained", False, [3, 7], 2)
    expected = _bn(torch.from_numpy(x), mean, var, gamma, beta).numpy()
    expected[:, 5] += 0.3
    d = sv.diagnose(layer, x, expected, "float32", channels_last=False)
    assert d.channels_off == [5] and d.closest.startswith("the checkpoint's own formula")


# ---------------------------------------------------------------- --output round trip in every format

@pytest.mark.parametrize("suffix,dtype", [(".npy", "float32"), (".npy", "float64"), (".pt", "float32"),
                                          (".pt", "bfloat16"), (".safetensors", "float16")])
def test_output_round_trips(tmp_path, suffix, dtype):
    values = np.random.default_rng(0).normal(size=(2, 3, 4, 4))
    src = tmp_path / f"in{suffix}"
    t = torch.from_numpy(values).to(getattr(torch, dtype))
    if suffix == ".npy":
        np.save(src, t.numpy())
    elif suffix == ".pt":
        torch.save(t, src)
    else:
        from safetensors.torch import save_file

        save_file({"act": t}, src)
    like = read_activations(str(src))
    assert (like.format, like.dtype) == ({".npy": "npy", ".pt": "pt", ".safetensors": "safetensors"}[suffix], dtype)
    out = tmp_path / f"out{suffix}"
    write_activations(str(out), values * 2, like)
    back = read_activations(str(out))
    assert (back.format, back.dtype, back.key, back.values.shape) == (like.format, dtype, like.key, values.shape)
    expected = torch.from_numpy(values * 2).to(getattr(torch, dtype)).double().numpy()
    np.testing.assert_array_equal(back.values, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([src.name, out.name])  # no temp file left


def test_output_never_overwrites_an_input(tmp_path):
    src = tmp_path / "x.npy"
    np.save(src, np.zeros((1, 2), np.float32))
    like = read_activations(str(src))
    with pytest.raises(UsageError, match="overwrite an input"):
        write_activations(str(src), np.ones((1, 2)), like)
    assert np.load(src).sum() == 0


def test_pickled_npy_is_refused(tmp_path):
    from bninspect.errors import UnsafeFileError

    src = tmp_path / "obj.npy"
    np.save(src, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UnsafeFileError):
        read_activations(str(src))


def test_usage_errors():
    with pytest.raises(UsageError, match="need a checkpoint"):
        sv.verify(None, input_path="x.npy")
    with pytest.raises(UsageError, match="need --input"):
        sv.verify("ckpt.pt", expected_path="y.npy")
    with pytest.raises(UsageError, match="positive"):
        sv.verify(None, train_batches=(0,))


def test_input_with_the_wrong_channel_axis_suggests_channels_last(tmp_path):
    from conftest import SAMPLES

    np.save(tmp_path / "nhwc.npy", np.zeros((2, 5, 5, 32), np.float32))
    with pytest.raises(UsageError, match="5 channels on axis 1; layer features.2.bn has 32.*--channels-last"):
        sv.verify(str(SAMPLES / "mobilenet_v1_tiny.pt"), layers=["features.2.bn"],
                      input_path=str(tmp_path / "nhwc.npy"))
    with pytest.raises(UsageError, match="exactly one layer"):
        sv.verify(str(SAMPLES / "mobilenet_v1_tiny.pt"), input_path=str(tmp_path / "nhwc.npy"),
                      output_path=str(tmp_path / "y.npy"))


def test_two_devices_add_a_cross_device_check():
    # --device all runs [cpu, cuda:0]; the cross-device comparison's logic is exercised here with cpu twice
    res, _ = sv.verify_layer(make_layer(), ["cpu", "cpu"])
    cross = [c for c in res.checks if c.path == "cpu_vs_cuda"]
    assert len(cross) == 1 and cross[0].passed and cross[0].max_abs_err == 0.0
    assert [c.path for c in res.checks].count("batch_norm") == 2


def test_inconsistent_tensor_sizes_fail_without_a_crash():
    layer = make_layer()
    layer.tensors["weight"] = TensorRef.from_array(np.ones(C + 1, np.float32))
    res, ref = sv.verify_layer(layer, ["cpu"])
    assert ref is None and not res.passed and "weight" in res.skipped


def test_layer_saved_in_train_mode_gets_a_note():
    layer = make_layer()
    layer.training = True
    res, _ = sv.verify_layer(layer, ["cpu"])
    assert res.passed and "train mode" in res.notes[0]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float64"])
def test_checkpoint_in_its_own_dtype(tmp_path, dtype):
    from safetensors.torch import save_file

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, bias=False), torch.nn.BatchNorm2d(8))
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    path = tmp_path / "m.safetensors"
    save_file({k: v.to(getattr(torch, dtype)).contiguous() for k, v in model.state_dict().items()
               if v.is_floating_point()}, path)
    result = sv.verify(str(path))
    (layer,) = result.layers
    assert (layer.name, layer.dtype, layer.passed) == ("1", dtype, True), layer
    assert {c.path for c in layer.checks} == {"batch_norm", "folded", "fused_conv"}
    assert result.exit_code == 0 and result.synthetic == {"batch": 2, "spatial": 4, "seed": 0}


def test_file_with_only_possible_batchnorm_is_a_usage_error():
    from conftest import SAMPLES

    path = SAMPLES / "faulty" / "no_running_stats.pt"
    if not path.exists():
        pytest.skip("faulty samples not generated")
    with pytest.raises(UsageError, match="possible BatchNorm layers without running statistics"):
        sv.verify(str(path))
