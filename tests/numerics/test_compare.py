"""Tolerances and comparison: the allowance catches real kernel mistakes and forgives rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bninspect.errors import UsageError
from bninspect.numerics import kernels, reference

# Every test here needs torch (the Python 3.10 job of .ci/run runs without it).
pytestmark = pytest.mark.torch


def _layer(c=8, seed=0):
    rng = np.random.default_rng(seed)
    mean, var = rng.normal(0, 2, c), np.exp(rng.normal(0, 1, c))
    gamma, beta = rng.normal(1, 0.5, c), rng.normal(0, 0.5, c)
    x = reference.synthetic_input(mean, var, (4, c, 5, 5), rng)
    return x, mean, var, gamma, beta


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_device_kernel_within_tolerance(dtype):
    x, mean, var, gamma, beta = (kernels.round_to(a, dtype) for a in _layer())
    ref = reference.eval_reference(x, mean, var, gamma, beta, 1e-5)
    mag = reference.eval_magnitude(x, mean, var, gamma, beta, 1e-5)
    for got in (kernels.device_eval(x, mean, var, gamma, beta, 1e-5, dtype, "cpu"),
                kernels.device_eval(x, mean, var, gamma, beta, 1e-5, dtype, "cpu", channels_last=True),
                kernels.device_folded(x, mean, var, gamma, beta, 1e-5, dtype, "cpu")):
        assert reference.compare(got, ref, mag, reference.TOLERANCES[dtype]).passed


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_wrong_eps_or_variance_fails(dtype):
    x, mean, var, gamma, beta = (kernels.round_to(a, dtype) for a in _layer())
    var[0] = 1e-5  # a channel where eps matters
    ref = reference.eval_reference(x, mean, var, gamma, beta, 1e-5)
    mag = reference.eval_magnitude(x, mean, var, gamma, beta, 1e-5)
    tol = reference.TOLERANCES[dtype]
    wrong_eps = kernels.device_eval(x, mean, var, gamma, beta, 1e-3, dtype, "cpu")
    unbiased = kernels.device_eval(x, mean, var * 100 / 99, gamma, beta, 1e-5, dtype, "cpu")
    cmp = reference.compare(wrong_eps, ref, mag, tol)
    assert not cmp.passed and cmp.worst_channel == 0
    assert not reference.compare(unbiased, ref, mag, tol).passed


def test_nan_agreement_and_disagreement():
    tol = reference.TOLERANCES["float32"]
    ref = np.array([[1.0, np.nan]])
    assert reference.compare(np.array([[1.0, np.nan]]), ref, np.ones((1, 2)), tol).passed
    bad = reference.compare(np.array([[np.nan, np.nan]]), ref, np.ones((1, 2)), tol)
    assert not bad.passed and bad.max_abs_err == np.inf


def test_tolerance_table_is_eight_machine_epsilons():
    assert reference.TOLERANCES["float32"].rtol == 8 * 2.0**-23
    assert reference.TOLERANCES["bfloat16"].rtol == 8 * 2.0**-7
    assert reference.TOLERANCES["float16"].atol == pytest.approx(6.103515625e-05)


def test_torch_free_tables_match_torch():
    # the reference half keeps its own dtype facts so that it never imports torch: torch's are the truth
    assert set(reference.DTYPES) == set(kernels.TORCH_DTYPES)
    for name, dtype in kernels.TORCH_DTYPES.items():
        assert reference.TOLERANCES[name].atol == torch.finfo(dtype).tiny
        assert reference.MACHINE_EPS[name] == torch.finfo(dtype).eps


def test_resolve_devices_without_cuda():
    import torch

    assert kernels.resolve_devices("cpu") == ["cpu"]
    with pytest.raises(UsageError, match="unknown device"):
        kernels.resolve_devices("tpu")
    if not torch.cuda.is_available():
        for spec in ("cuda", "cuda:0", "all"):
            with pytest.raises(UsageError, match="CUDA is not available"):
                kernels.resolve_devices(spec)


def test_one_device_grammar_for_the_commands_that_run_a_model():
    # drift takes one device: the same words and messages as verify's, without `all`
    assert kernels.resolve_device(" CPU ") == torch.device("cpu")
    for spec in ("all", "tpu", "cuda:x"):
        with pytest.raises(UsageError, match=f"unknown device '{spec}'; use cpu, cuda or cuda:N$"):
            kernels.resolve_device(spec)
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            kernels.resolve_device("cuda:0")


@pytest.mark.cuda
def test_cuda_kernels_within_tolerance():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    for dtype in kernels.TORCH_DTYPES:
        x, mean, var, gamma, beta = (kernels.round_to(a, dtype) for a in _layer())
        ref = reference.eval_reference(x, mean, var, gamma, beta, 1e-5)
        mag = reference.eval_magnitude(x, mean, var, gamma, beta, 1e-5)
        got = kernels.device_eval(x, mean, var, gamma, beta, 1e-5, dtype, "cuda:0")
        assert reference.compare(got, ref, mag, reference.TOLERANCES[dtype]).passed, dtype
