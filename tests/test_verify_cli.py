"""End to end: the installed `bninspect verify` on sample checkpoints and files made in tmp_path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import SAMPLES, assert_one_line_error

# Every test here needs torch (the Python 3.10 job of .ci/run runs without it).
pytestmark = pytest.mark.torch


def test_conformance_json(cli):
    run = cli("verify", "--json")
    assert run.code == 0, run.err
    doc = json.loads(run.out)
    assert doc["schema"] == "bninspect.verify/1" and doc["passed"] is True and doc["device"] == "cpu"
    assert len(doc["cases"]) == 32 and doc["layers"] == []


def test_checkpoint_json_keys(cli, samples):
    run = cli("verify", str(samples / "mobilenet_v1_tiny.pt"), "--json")
    assert run.code == 0, run.err
    doc = json.loads(run.out)
    names = [l["name"] for l in doc["layers"]]
    assert "features.2.bn" in names and "features.3.bn" in names
    layer = doc["layers"][names.index("features.2.bn")]
    for key in ("name", "dtype", "eps", "eps_source", "max_abs_err", "max_rel_err", "tolerance", "passed",
                "eps_sensitivity", "train_eval_gap"):
        assert key in layer
    assert layer["channels"] == 32 and layer["eps_source"] == "default" and layer["passed"] is True
    assert {c["path"] for c in layer["checks"]} == {"batch_norm", "folded", "fused_conv"}
    assert [g["batch"] for g in layer["train_eval_gap"]] == [1, 2, 8, 32]


@pytest.mark.slow
def test_torchscript_sample_uses_module_eps(cli, samples):
    run = cli("verify", str(samples / "mobilenet_v1_tiny.ts"), "--json")
    assert run.code == 0, run.err
    assert {l["eps_source"] for l in json.loads(run.out)["layers"]} == {"module"}


def test_cuda_unavailable_is_a_usage_error(cli):
    # cuda:N and all take the same path (numerics.kernels.resolve_devices, tested in-process)
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert_one_line_error(cli("verify", "--device", "cuda"), 2, "CUDA is not available")


@pytest.mark.slow
def test_bad_device_and_layer(cli, samples):
    assert_one_line_error(cli("verify", "--device", "tpu"), 2, "unknown device")
    assert_one_line_error(cli("verify", str(samples / "mobilenet_v1_tiny.pt"), "--layer", "nope"), 2, "nope")


def _layer_input(tmp_path, fmt):
    x = np.random.default_rng(0).normal(0.2, 1.0, (2, 32, 5, 5)).astype(np.float32)
    path = tmp_path / f"x.{fmt}"
    if fmt == "npy":
        np.save(path, x)
    elif fmt == "pt":
        torch.save(torch.from_numpy(x), path)
    else:
        from safetensors.torch import save_file

        save_file({"x": torch.from_numpy(x)}, path)
    return x, path


# every format round-trips in-process (tests/services/test_verify.py); the installed command once by default
@pytest.mark.parametrize("fmt", ["npy", pytest.param("pt", marks=pytest.mark.slow),
                                 pytest.param("safetensors", marks=pytest.mark.slow)])
def test_output_then_expected_round_trip(cli, samples, tmp_path, fmt):
    ckpt = str(samples / "mobilenet_v1_tiny.pt")
    x, xin = _layer_input(tmp_path, fmt)
    out = tmp_path / f"y.{fmt}"
    run = cli("verify", ckpt, "--layer", "features.2.bn", "--input", str(xin), "--output", str(out))
    assert run.code == 0 and out.exists(), run.err
    if fmt != "npy":
        run = cli("verify", ckpt, "--layer", "features.2.bn", "--input", str(xin), "--expected", str(out), "--json")
        assert run.code == 0, run.err
        assert json.loads(run.out)["diagnosis"]["cause"] == "match"
    # the same output read by a runtime using Keras' eps is diagnosed as such
    run = cli("verify", ckpt, "--layer", "features.2.bn", "--input", str(xin), "--expected", str(out), "--eps", "1e-3",
              "--json")
    diag = json.loads(run.out)["diagnosis"]
    assert run.code == 1 and diag["cause"] == "eps 1e-05 instead of 0.001" and diag["fits"] is True


def test_channels_last_input(cli, samples, tmp_path):
    x = np.random.default_rng(0).normal(size=(2, 5, 5, 32)).astype(np.float32)
    np.save(tmp_path / "nhwc.npy", x)
    args = ["verify", str(samples / "mobilenet_v1_tiny.pt"), "--layer", "features.2.bn", "--input", str(tmp_path / "nhwc.npy")]
    run = cli(*args, "--channels-last", "--output", str(tmp_path / "y.npy"))
    assert run.code == 0, run.err
    assert np.load(tmp_path / "y.npy").shape == (2, 5, 5, 32)


def test_output_refuses_to_overwrite_input(cli, samples, tmp_path):
    x, xin = _layer_input(tmp_path, "npy")
    run = cli("verify", str(samples / "mobilenet_v1_tiny.pt"), "--layer", "features.2.bn", "--input", str(xin),
              "--output", str(xin))
    assert_one_line_error(run, 2, "overwrite")
    np.testing.assert_array_equal(np.load(xin), x)


@pytest.mark.slow
def test_missing_input_is_a_path_problem(cli, samples, tmp_path):
    run = cli("verify", str(samples / "mobilenet_v1_tiny.pt"), "--layer", "features.2.bn", "--input",
              str(tmp_path / "missing.npy"))
    assert_one_line_error(run, 5, "no such file")


@pytest.mark.cuda
def test_device_all_compares_cpu_and_cuda(cli, samples):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    run = cli("verify", str(samples / "resnet_tiny.pt"), "--device", "all", "--json")
    assert run.code == 0, run.err
    doc = json.loads(run.out)
    assert doc["devices"] == ["cpu", "cuda:0"]
    assert all("cpu_vs_cuda" in {c["path"] for c in l["checks"]} for l in doc["layers"])
    conf = cli("verify", "--device", "cuda", "--json")
    assert conf.code == 0, conf.out


def test_faulty_statistics_leave_stderr_empty(cli, samples):
    # A NaN running_var makes NaN outputs; the eps what-if compares two of them. Python's own
    # RuntimeWarning ("invalid value encountered in subtract") once reached stderr here.
    run = cli("verify", str(samples / "faulty" / "nan.pt"), "--device", "cpu")
    assert run.code in (0, 1) and run.err == "", run.err


def _bn1_input_and_output(tmp_path):
    """An N,C,H,W input for resnet_tiny's bn1 and what torch's BatchNorm2d outputs for it."""
    sd = torch.load(SAMPLES / "resnet_tiny.pt", weights_only=True)
    bn = torch.nn.BatchNorm2d(16).eval()
    bn.load_state_dict({k[len("bn1."):]: v for k, v in sd.items() if k.startswith("bn1.")})
    rng = np.random.default_rng(0)
    mean, sd_ = sd["bn1.running_mean"].numpy(), np.sqrt(sd["bn1.running_var"].numpy())
    x = (mean[None, :, None, None] + sd_[None, :, None, None] * rng.standard_normal((2, 16, 5, 7))).astype(np.float32)
    with torch.no_grad():
        y = bn(torch.from_numpy(x)).numpy()
    np.save(tmp_path / "x.npy", x)
    return x, y


def _diagnosis(cli, tmp_path, y, *flags, x_file="x.npy"):
    np.save(tmp_path / "y.npy", y)
    run = cli("verify", str(SAMPLES / "resnet_tiny.pt"), "--layer", "bn1", "--input", str(tmp_path / x_file),
              "--expected", str(tmp_path / "y.npy"), *flags, "--json")
    assert run.code in (0, 1) and run.err == "", run.err
    return run.code, json.loads(run.out)["diagnosis"]


def test_an_nhwc_output_for_an_nchw_input_is_recognised(cli, tmp_path):
    """TFLite, CoreML and OpenVINO deployments hand back N,H,W,C: its shape is the input's
    permuted, so it is read that way and named, not refused; --output-channels-last says so."""
    _, y = _bn1_input_and_output(tmp_path)
    nhwc = np.ascontiguousarray(y.transpose(0, 2, 3, 1))
    code, diag = _diagnosis(cli, tmp_path, nhwc)
    assert code == 1 and diag["fits"] is True
    assert diag["cause"] == ("output in N,H,W,C layout, shape (2, 5, 7, 16), where N,C,H,W was expected "
                             "(--output-channels-last reads it so)")
    code, diag = _diagnosis(cli, tmp_path, nhwc, "--output-channels-last")
    assert (code, diag["cause"]) == (0, "match")


def test_an_nhwc_buffer_in_an_nchw_shaped_array_is_explained(cli, tmp_path):
    """The runtime's N,H,W,C output copied into an N,C,H,W-shaped array: same shape, scrambled."""
    _, y = _bn1_input_and_output(tmp_path)
    code, diag = _diagnosis(cli, tmp_path, np.ascontiguousarray(y.transpose(0, 2, 3, 1)).reshape(y.shape))
    assert code == 1 and diag["fits"] is True
    assert diag["cause"] == "output's N,H,W,C buffer saved in an N,C,H,W-shaped array (reshaped, not transposed)"


def test_input_and_output_layouts_are_given_separately(cli, tmp_path):
    x, y = _bn1_input_and_output(tmp_path)
    np.save(tmp_path / "x_nhwc.npy", np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    assert _diagnosis(cli, tmp_path, y, "--input-channels-last", x_file="x_nhwc.npy")[1]["cause"] == "match"
    both = np.ascontiguousarray(y.transpose(0, 2, 3, 1))
    assert _diagnosis(cli, tmp_path, both, "--channels-last", x_file="x_nhwc.npy")[1]["cause"] == "match"
    assert _diagnosis(cli, tmp_path, both, "--input-channels-last", "--output-channels-last",
                      x_file="x_nhwc.npy")[1]["cause"] == "match"


def test_an_expected_output_of_another_shape_is_still_a_usage_error(cli, tmp_path):
    _, y = _bn1_input_and_output(tmp_path)
    np.save(tmp_path / "y.npy", y[:, :, :4])
    run = cli("verify", str(SAMPLES / "resnet_tiny.pt"), "--layer", "bn1", "--input", str(tmp_path / "x.npy"),
              "--expected", str(tmp_path / "y.npy"))
    assert_one_line_error(run, 2, "expected output has shape (2, 16, 4, 7), input (2, 16, 5, 7)")
