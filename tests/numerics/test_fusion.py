"""Conv → BN against torch's fuse_conv_bn_weights, and the groups inference for state dicts."""

from __future__ import annotations

import numpy as np
import pytest

from bninspect.numerics import kernels, reference

# Every test here needs torch (the Python 3.10 job of .ci/run runs without it).
pytestmark = pytest.mark.torch


def _bn(c, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1, c), np.exp(rng.normal(0, 1, c)), rng.normal(1, 0.3, c), rng.normal(0, 0.3, c)


@pytest.mark.parametrize("op,wshape,groups,dtype", [
    ("conv2d", (16, 8, 3, 3), 1, "float32"),
    ("conv2d", (32, 1, 3, 3), 32, "float32"),  # depthwise
    ("conv2d", (64, 32, 1, 1), 1, "float16"),  # pointwise
    ("conv1d", (8, 2, 5), 2, "bfloat16"),
    ("conv3d", (4, 3, 3, 3, 3), 1, "float64"),
])
def test_fused_conv_within_tolerance(op, wshape, groups, dtype):
    rng = np.random.default_rng(1)
    w = rng.normal(0, 0.2, wshape)
    mean, var, gamma, beta = (kernels.round_to(a, dtype) for a in _bn(wshape[0]))
    check = kernels.fused_conv_check(op, w, rng.normal(size=wshape[0]), groups, mean, var, gamma, beta, 1e-5, dtype, "cpu")
    assert check.got.shape == check.ref.shape and check.got.shape[-1] == 2
    cmp = reference.compare(check.got, check.ref, check.magnitude, reference.TOLERANCES[dtype], reference.dot_growth(check.reduction))
    assert cmp.passed, cmp


def test_fused_conv_detects_a_wrong_eps_in_the_fold():
    rng = np.random.default_rng(2)
    w = rng.normal(0, 0.2, (8, 4, 3, 3))
    mean, var, gamma, beta = _bn(8)
    var[3] = 1e-5
    good = kernels.fused_conv_check("conv2d", w, None, 1, mean, var, gamma, beta, 1e-5, "float32", "cpu")
    bad = kernels.fused_conv_check("conv2d", w, None, 1, mean, var, gamma, beta, 1e-3, "float32", "cpu")
    tol, growth = reference.TOLERANCES["float32"], reference.dot_growth(good.reduction)
    assert not reference.compare(bad.got, good.ref, good.magnitude, tol, growth).passed


def test_infer_groups():
    assert reference.infer_groups((32, 1, 3, 3), 32, None) == 32
    assert reference.infer_groups((32, 1, 1, 1), 32, None) == 32
    assert reference.infer_groups((64, 32, 1, 1), 64, None) == 1
    assert reference.infer_groups((64, 8, 3, 3), 64, 8) == 8
    assert reference.infer_groups((1, 1, 3, 3), 1, None) == 1
