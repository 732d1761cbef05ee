"""Tolerances and comparison: the allowance catches real kernel mistakes and forgives rounding."""

from __future__ import annotations

import numpy as np
import pytest

from bninspect import numerics as nx
from bninspect.errors import UsageError

# Every test here needs torch (the Python 3.10 job of .ci/run runs without it).
pytestmark = pytest.mark.torch


def _layer(c=8, seed=0):
    rng = np.random.default_rng(seed)
    mean, var = rng.normal(0, 2, c), np.exp(rng.normal(0, 1, c))
    gamma, beta = rng.normal(1, 0.5, c), rng.normal(0, 0.5, c)
    x = nx.synthetic_input(mean, var, (4, c, 5, 5), rng)
    return x, mean, var, gamma, beta


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_device_kernel_within_tolerance(dtype):
    x, mean, var, gamma, beta = (nx.round_to(a, dtype) for a in _layer())
    ref = nx.eval_reference(x, mean, var, gamma, beta, 1e-5)
    mag = nx.eval_magnitude(x, mean, var, gamma, beta, 1e-5)
    for got in (nx.device_eval(x, mean, var, gamma, beta, 1e-5, dtype, "cpu"),
                nx.device_eval(x, mean, var, gamma, beta, 1e-5, dtype, "cpu", channels_last=True),
                nx.device_folded(x, mean, var, gamma, beta, 1e-5, dtype, "cpu")):
        assert nx.compare(got, ref, mag, nx.TOLERANCES[dtype]).passed


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_wrong_eps_or_variance_fails(dtype):
    x, mean, var, gamma, beta = (nx.round_to(a, dtype) for a in _layer())
    var[0] = 1e-5  # a channel where eps matters
    ref = nx.eval_reference(x, mean, var, gamma, beta, 1e-5)
    mag = nx.eval_magnitude(x, mean, var, gamma, beta, 1e-5)
    tol = nx.TOLERANCES[dtype]
    wrong_eps = nx.device_eval(x, mean, var, gamma, beta, 1e-3, dtype, "cpu")
    unbiased = nx.device_eval(x, mean, var * 100 / 99, gamma, beta, 1e-5, dtype, "cpu")
    cmp = nx.compare(wrong_eps, ref, mag, tol)
    assert not cmp.passed and cmp.worst_channel == 0
    assert not nx.compare(unbiased, ref, mag, tol).passed


def test_nan_agreement_and_disagreement():
    tol = nx.TOLERANCES["float32"]
    ref = np.array([[1.0, np.nan]])
    assert nx.compare(np.array([[1.0, np.nan]]), ref, np.ones((1, 2)), tol).passed
    bad = nx.compare(np.array([[np.nan, np.nan]]), ref, np.ones((1, 2)), tol)
    assert not bad.passed and bad.max_abs_err == np.inf


def test_tolerance_table_is_eight_machine_epsilons():
    assert nx.TOLERANCES["float32"].rtol == 8 * 2.0**-23
    assert nx.TOLERANCES["bfloat16"].rtol == 8 * 2.0**-7
    assert nx.TOLERANCES["float16"].atol == pytest.approx(6.103515625e-05)


def test_resolve_devices_without_cuda():
    import torch

    assert nx.resolve_devices("cpu") == ["cpu"]
    with pytest.raises(UsageError, match="unknown device"):
        nx.resolve_devices("tpu")
    if not torch.cuda.is_available():
        for spec in ("cuda", "cuda:0", "all"):
            with pytest.raises(UsageError, match="CUDA is not available"):
                nx.resolve_devices(spec)


@pytest.mark.cuda
def test_cuda_kernels_within_tolerance():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    for dtype in nx.TORCH_DTYPES:
        x, mean, var, gamma, beta = (nx.round_to(a, dtype) for a in _layer())
        ref = nx.eval_reference(x, mean, var, gamma, beta, 1e-5)
        mag = nx.eval_magnitude(x, mean, var, gamma, beta, 1e-5)
        got = nx.device_eval(x, mean, var, gamma, beta, 1e-5, dtype, "cuda:0")
        assert nx.compare(got, ref, mag, nx.TOLERANCES[dtype]).passed, dtype
