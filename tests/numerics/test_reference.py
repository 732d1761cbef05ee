"""The float64 reference against torch's own BatchNorm modules (hypothesis): eval, train, running-stat update."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bninspect.numerics import kernels, reference

# Every test here needs torch (the Python 3.10 job of .ci/run runs without it).
pytestmark = pytest.mark.torch

MODULES = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d, 5: torch.nn.BatchNorm3d}


@st.composite
def bn_setups(draw):
    ndim = draw(st.sampled_from([2, 3, 4, 5]))
    c = draw(st.integers(1, 12))
    n = draw(st.integers(1, 5))
    spatial = tuple(draw(st.integers(1, 4)) for _ in range(ndim - 2))
    shape = (n, c) + spatial
    if n * int(np.prod(spatial or (1,))) < 2:  # train mode needs two values per channel
        shape = (n + 1, c) + spatial
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    return dict(
        shape=shape,
        mean=rng.normal(0, 3, c),
        var=np.exp(rng.normal(0, 2, c)),
        gamma=rng.normal(1, 1, c),
        beta=rng.normal(0, 1, c),
        x=rng.normal(rng.normal(0, 3), np.exp(rng.normal(0, 1)), shape),
        eps=draw(st.sampled_from([1e-5, 1e-3, 0.1, 1.001e-5])),
        momentum=draw(st.sampled_from([0.1, 0.01, 0.5, None])),
        tracked=draw(st.integers(0, 50)),
        affine=draw(st.booleans()),
    )


def _forward(s, training):
    """torch's module on the drawn input: (module after the step, its output as numpy)."""
    bn = MODULES[len(s["shape"])](s["shape"][1], eps=s["eps"], momentum=s["momentum"], affine=s["affine"]).double()
    with torch.no_grad():
        bn.running_mean.copy_(torch.from_numpy(s["mean"]))
        bn.running_var.copy_(torch.from_numpy(s["var"]))
        bn.num_batches_tracked.fill_(s["tracked"])
        if s["affine"]:
            bn.weight.copy_(torch.from_numpy(s["gamma"]))
            bn.bias.copy_(torch.from_numpy(s["beta"]))
    bn.train(training)
    with torch.no_grad():
        y = bn(torch.from_numpy(s["x"])).numpy()
    return bn, y


def _affine(s):
    c = s["shape"][1]
    return (s["gamma"], s["beta"]) if s["affine"] else (np.ones(c), np.zeros(c))


@settings(max_examples=40, deadline=None)
@given(bn_setups())
def test_eval_matches_torch_module(s):
    _, y = _forward(s, training=False)
    g, b = _affine(s)
    ref = reference.eval_reference(s["x"], s["mean"], s["var"], g, b, s["eps"])
    np.testing.assert_allclose(ref, y, rtol=1e-12, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(bn_setups())
def test_train_step_matches_torch_module(s):
    bn, y = _forward(s, training=True)
    g, b = _affine(s)
    ref, stats = reference.train_reference(s["x"], g, b, s["eps"])
    np.testing.assert_allclose(ref, y, rtol=1e-10, atol=1e-10)
    mean, var, count = reference.running_update(s["mean"], s["var"], stats, s["momentum"], s["tracked"])
    assert count == int(bn.num_batches_tracked) == s["tracked"] + 1
    np.testing.assert_allclose(mean, bn.running_mean.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(var, bn.running_var.numpy(), rtol=1e-12, atol=1e-12)


def test_running_var_uses_unbiased_variance():
    # one channel, values 0 and 2: biased variance 1, unbiased 2; momentum 1 copies the batch value
    x = np.array([[0.0], [2.0]])
    stats = reference.batch_stats(x)
    assert (stats.var_biased[0], stats.var_unbiased[0], stats.n) == (1.0, 2.0, 2)
    _, var, _ = reference.running_update(np.zeros(1), np.ones(1), stats, 1.0, 0)
    assert var[0] == 2.0
    bn = torch.nn.BatchNorm1d(1, momentum=1.0).double().train()
    bn(torch.from_numpy(x))
    assert bn.running_var.item() == 2.0


def test_momentum_none_is_cumulative_average():
    # after k batches from a fresh count, running_mean is the plain average of the k batch means
    rng = np.random.default_rng(3)
    mean, var, count = np.zeros(2), np.ones(2), 0
    batch_means = []
    for _ in range(5):
        stats = reference.batch_stats(rng.normal(size=(6, 2)))
        batch_means.append(stats.mean)
        mean, var, count = reference.running_update(mean, var, stats, None, count)
    np.testing.assert_allclose(mean, np.mean(batch_means, axis=0), rtol=1e-14)
    assert count == 5


def test_fold_is_eval_formula():
    rng = np.random.default_rng(0)
    mean, var, gamma, beta = rng.normal(size=4), rng.uniform(0.1, 2, 4), rng.normal(size=4), rng.normal(size=4)
    x = rng.normal(size=(3, 4, 2, 2))
    scale, shift = reference.fold(mean, var, gamma, beta, 1e-5)
    np.testing.assert_allclose(reference.per_channel(scale, 4) * x + reference.per_channel(shift, 4),
                               reference.eval_reference(x, mean, var, gamma, beta, 1e-5), rtol=1e-13, atol=1e-13)


def test_synthetic_input_has_the_layer_statistics():
    mean, var = np.array([5.0, -2.0]), np.array([4.0, 0.25])
    x = reference.synthetic_input(mean, var, (4000, 2, 4), np.random.default_rng(0))
    stats = reference.batch_stats(x)
    np.testing.assert_allclose(stats.mean, mean, atol=0.05)
    np.testing.assert_allclose(stats.var_unbiased, var, rtol=0.05)
    # broken statistics draw finite values
    assert np.isfinite(reference.synthetic_input(np.array([np.nan]), np.array([-1.0]), (2, 1), np.random.default_rng(0))).all()


@pytest.mark.parametrize("shape", [(1, 6, 4, 4), (8, 6, 4, 4), (32, 6, 3), (2, 6)])
def test_train_eval_gap_matches_two_batch_norm_passes(shape):
    # the closed form (gap linear in z) against torch's own train and eval passes on the same draw
    rng = np.random.default_rng(4)
    mean, var = rng.normal(0, 2, 6), np.exp(rng.normal(0, 1, 6))
    var[0] = 3e-6
    gamma, beta = rng.normal(1, 0.5, 6), rng.normal(0, 0.5, 6)
    # the same draw as train_eval_gap: (C, N·spatial), laid out as N, C, spatial
    z = torch.randn((6, int(np.prod(shape)) // 6), generator=torch.Generator().manual_seed(7)).double()
    z = z.reshape((6, shape[0]) + shape[2:]).transpose(0, 1)
    bshape = (1, -1) + (1,) * (len(shape) - 2)
    x = torch.from_numpy(mean).reshape(bshape) + torch.from_numpy(np.sqrt(var)).reshape(bshape) * z
    g, b, m, v = (torch.from_numpy(a) for a in (gamma, beta, mean, var))
    train = torch.nn.functional.batch_norm(x, None, None, g, b, True, 0.0, 1e-5)
    evaluated = torch.nn.functional.batch_norm(x, m, v, g, b, False, 0.0, 1e-5)
    expected = float((train - evaluated).abs().max())
    assert kernels.train_eval_gap(mean, var, gamma, beta, 1e-5, shape, 7) == pytest.approx(expected, rel=1e-5)
