"""Each rule on hand-made layers: it fires on the fault it names, at its boundary, and not on
healthy values; plus the registry (docs in ruff's shape, selection by code and prefix)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bninspect.checkpoint import TensorRef
from bninspect.errors import UsageError
from bninspect.layers import BNLayer, Producer
from bninspect.rules import RULES, Context, Thresholds, find_rule, run_rules, select_rules
from bninspect.numerics.reference import channel_change_bound, eps_sensitivity
from bninspect.rules.statistics import max_abs_robust_z, robust_z

C = 16


def layer(name: str = "features.3.bn", *, mean=None, var=None, weight=None, bias=None, count=1000,
          dtypes: dict[str, str] | None = None, **facts) -> BNLayer:
    """A trained-looking BN layer (seeded), with any tensor replaced or removed (pass False)."""
    rng = np.random.default_rng(len(name))
    values = {
        "weight": rng.normal(1.0, 0.1, C) if weight is None else weight,
        "bias": rng.normal(0.0, 0.1, C) if bias is None else bias,
        "running_mean": rng.normal(0.0, 0.5, C) if mean is None else mean,
        "running_var": np.exp(rng.normal(-0.5, 0.3, C)) if var is None else var,
        "num_batches_tracked": None if count is None else np.array(count, dtype=np.int64),
    }
    tensors = {}
    for k, v in values.items():
        if v is None or v is False:
            continue
        arr = np.asarray(v, dtype=np.int64 if k == "num_batches_tracked" else np.float32)
        tensors[k] = TensorRef.from_array(arr, (dtypes or {}).get(k))
    channels = len(values["running_mean"]) if values["running_mean"] is not False else len(values["weight"])
    base = dict(name=name, key_prefix=name, kind="BatchNorm2d", kind_source="producer", channels=channels,
                tensors=tensors, eps=1e-5, eps_source="default", momentum=0.1, momentum_source="default")
    base.update(facts)
    return BNLayer(**base)


def run(*layers: BNLayer, codes: list[str] | None = None, **thresholds) -> list:
    ctx = Context(layers=list(layers), thresholds=Thresholds(**thresholds))
    return run_rules(ctx, select_rules(codes))


def codes(findings) -> list[str]:
    return sorted({f.code for f in findings})


def test_a_healthy_layer_has_no_finding():
    assert run(layer()) == []


# ── integrity ──

def test_bn001_names_tensors_and_channels():
    var = np.full(C, 0.5)
    var[3] = np.nan
    mean = np.zeros(C) + 0.1
    mean[10] = np.inf
    (f,) = run(layer(var=var, mean=mean), codes=["BN001"])
    assert f.severity == "error" and f.channels == [3, 10]
    assert "NaN in running_var, channel 3 (1 of 16)" in f.message and "Inf in running_mean, channel 10" in f.message
    assert f.evidence["running_var_nan"] == 1 and f.evidence["running_mean_inf"] == 1


def test_bn001_does_not_drag_other_rules_along():
    var = np.full(C, 0.5)
    var[3] = np.nan
    assert codes(run(layer(var=var))) == ["BN001"]


def test_bn002_negative_variance():
    var = np.full(C, 0.5)
    var[[4, 7]] = [-1e-9, -0.25]
    (f,) = run(layer(var=var), codes=["BN002"])
    assert f.channels == [4, 7] and f.evidence["min_running_var"] == -0.25
    assert codes(run(layer(var=var))) == ["BN002"]


def test_bn003_lengths_and_producer():
    (f,) = run(layer(weight=np.ones(C - 1)), codes=["BN003"])
    assert f.evidence["weight_length"] == C - 1 and "weight has 15" in f.message
    # the other rules stay silent on a misaligned layer instead of crashing
    assert codes(run(layer(weight=np.ones(C - 1)))) == ["BN003"]
    prod = Producer("features.3.conv", "features.3.conv", "conv 3×3", "conv2d", C + 4, 8, 1,
                    TensorRef.from_array(np.zeros((C + 4, 8, 3, 3), np.float32)), None)
    (g,) = run(layer(producer=prod), codes=["BN003"])
    assert g.evidence["producer_out_channels"] == C + 4


# ── statistics ──

def test_bn101_default_statistics_regardless_of_count():
    for count in (0, 500, None):
        (f,) = run(layer(mean=np.zeros(C), var=np.ones(C), count=count), codes=["BN101"])
        assert f.severity == "error" and f.channels == list(range(C))
    almost = np.ones(C)
    almost[5] = 0.999
    assert run(layer(mean=np.zeros(C), var=almost), codes=["BN101"]) == []


def test_bn102_reports_the_initial_weight():
    (f,) = run(layer(count=5), codes=["BN102"])
    assert f.evidence["initial_value_weight"] == pytest.approx(0.9**5, rel=1e-5)
    assert "(1 − 0.1)^5 = 0.59" in f.message and "not stored in this file" in f.message
    assert run(layer(count=200), codes=["BN102"]) == []
    assert run(layer(count=199), codes=["BN102"]) != []
    assert run(layer(count=0), codes=["BN102"]) == []
    (g,) = run(layer(count=20, momentum=0.01, momentum_source="module"), codes=["BN102"])
    assert g.evidence["initial_value_weight"] == pytest.approx(0.99**20, rel=1e-5)


def test_bn102_cumulative_momentum_says_so():
    (f,) = run(layer(count=7, momentum=None, momentum_source="module"), codes=["BN102"])
    assert f.evidence["initial_value_weight"] == 0.0 and "cumulative" in f.message


def test_bn104_not_bn101_or_bn102_on_converted_statistics():
    found = run(layer(count=0))
    assert codes(found) == ["BN104"]
    assert found[0].severity == "info" and "eps" in found[0].message and "momentum" in found[0].message


def test_bn103_groups_layers_by_count():
    layers = [layer(f"b{i}", count=4000) for i in range(5)] + [layer("head.bn1", count=40), layer("head.bn2", count=40)]
    (f,) = run(*layers, codes=["BN103"])
    assert f.layer == "head.bn1" and "head.bn1, head.bn2" in f.message
    assert f.evidence == {"num_batches_tracked": 40, "layers_with_count": 2, "most_common_count": 4000,
                          "layers_with_most_common_count": 5, "ratio": 100.0, "count_ratio": 10.0}
    # a shared layer counted twice per pass is not "strongly" different
    assert run(layer("a", count=1000), layer("b", count=1000), layer("c", count=2000), codes=["BN103"]) == []
    assert run(layer("a", count=1000), layer("b", count=None), codes=["BN103"]) == []


def test_bn105_zero_variance():
    var = np.full(C, 0.5)
    var[[3, 9]] = 0.0
    (f,) = run(layer(var=var), codes=["BN105"])
    assert f.channels == [3, 9] and f.evidence["amplification_per_unit_gamma"] == pytest.approx(1 / math.sqrt(1e-5), rel=1e-5)
    assert codes(run(layer(var=var))) == ["BN105"]  # not BN302 (no input spread) nor BN108
    var[3] = 1e-12  # tiny but not zero: not this rule
    assert run(layer(var=var), codes=["BN105"])[0].channels == [9]


def test_bn106_extreme_scale_and_float16_limit():
    w = np.ones(C)
    w[7] = 5000.0
    var = np.full(C, 1.0)
    (f,) = run(layer(weight=w, var=var), codes=["BN106"])
    scale = 5000 / math.sqrt(1 + 1e-5)
    assert f.channels == [7] and f.evidence["max_scale"] == pytest.approx(scale, rel=1e-5)
    assert f.evidence["float16_max_input"] == pytest.approx(65504 / scale, rel=1e-5)
    w[7] = 999.0
    assert run(layer(weight=w, var=var), codes=["BN106"]) == []


def test_bn107_dead_channels():
    w = np.ones(C)
    w[[2, 11]] = [0.0, -1e-7]
    (f,) = run(layer(weight=w), codes=["BN107"])
    assert f.channels == [2, 11] and f.severity == "info"
    assert run(layer(weight=False), codes=["BN107"]) == []  # affine=False: γ is 1


def test_bn108_outliers_robust_z():
    mean = np.random.default_rng(0).normal(0, 1, 64)
    mean[6] = 1000.0
    (f,) = run(layer(mean=mean, var=np.ones(64) * 0.5, weight=np.ones(64), bias=np.zeros(64)), codes=["BN108"])
    assert f.channels == [6] and f.evidence["running_mean_max_z"] > 20
    # heavy but natural spread (lognormal variances over 2 decades) stays below the threshold
    var = np.exp(np.random.default_rng(1).normal(0, 1, 64))
    assert run(layer(mean=np.zeros(64) + 0.1, var=var, weight=np.ones(64), bias=np.zeros(64)), codes=["BN108"]) == []
    assert robust_z(np.ones(10)).tolist() == [0.0] * 10


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(40))
def test_bn108_gate_is_exactly_the_largest_z(seed, dtype):
    """BN108 skips a layer when max_abs_robust_z is within the threshold; that number must be
    robust_z's own maximum, to the last bit (MAD > 0, MAD = 0, constant values)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(8, 3000))
    kind = seed % 4
    x = {0: rng.normal(0, 1, n), 1: np.exp(rng.normal(-1, 2, n)), 2: np.where(rng.random(n) < 0.7, 0.25, rng.normal(0, 5, n)),
         3: np.full(n, 0.5)}[kind].astype(dtype)
    assert max_abs_robust_z(x) == float(np.abs(robust_z(x)).max())


# ── mode ──

def test_bn201_possible_and_module_without_running_stats():
    possible = layer(mean=False, var=False, count=None, weight=np.ones(C), bias=np.zeros(C), possible=True,
                     evidence="named like a BatchNorm, no running statistics")
    (f,) = run(possible, codes=["BN201"])
    assert f.message.startswith("features.3.bn: named like a BatchNorm, no running statistics: inference normalizes")
    module = layer(mean=False, var=False, count=None, weight=np.ones(C), bias=np.zeros(C), track_running_stats=False,
                   kind_source="module")
    assert "track_running_stats=False" in run(module, codes=["BN201"])[0].message
    assert codes(run(possible)) == ["BN201"]


def test_bn202_bn203_training_modes():
    all_train = [layer("a", training=True), layer("b", training=True)]
    assert codes(run(*all_train)) == ["BN202"]
    mixed = [layer("a", training=False), layer("b", training=True), layer("c", training=False)]
    found = run(*mixed)
    assert codes(found) == ["BN202", "BN203"]
    (m,) = [f for f in found if f.code == "BN203"]
    assert m.layer == "b" and m.evidence == {"training_layers": 1, "eval_layers": 2}
    assert run(layer("a", training=False), layer("b", training=None)) == []


def test_bn204_bn205_module_facts():
    assert codes(run(layer(momentum=None, momentum_source="module"))) == ["BN204"]
    assert codes(run(layer(kind="SyncBatchNorm", kind_source="module"))) == ["BN205"]


def test_bn206_missing_count_but_not_for_frozen_bn():
    assert codes(run(layer(count=None))) == ["BN206"]
    assert run(layer(count=None, kind="FrozenBatchNorm2d", kind_source="module")) == []


# ── deployment ──

def test_bn301_info_and_expect_eps():
    keras = layer(eps=1e-3, eps_source="module")
    (f,) = run(keras)
    assert f.code == "BN301" and f.severity == "info"
    (g,) = run(keras, expect_eps=1e-5)
    assert g.severity == "error" and g.evidence == {"eps": 1e-3, "expected_eps": 1e-5}
    assert run(keras, expect_eps=1e-3) == []
    assert run(layer(), expect_eps=1e-3) == []  # a state dict stores no eps: nothing to compare
    assert run(layer(eps=1e-3, eps_source="user"), expect_eps=1e-5)[0].severity == "error"


def test_bn302_formula_matches_direct_evaluation():
    rng = np.random.default_rng(3)
    var, gamma = np.exp(rng.normal(-4, 2, C)), rng.normal(1, 0.5, C)
    sens = eps_sensitivity(var, gamma, 1e-5)
    # direct: y(ε) at x = μ + σ; the layer's change and scale as RMS over channels
    sigma = np.sqrt(var)
    y = lambda e: gamma * sigma / np.sqrt(var + e)  # noqa: E731
    delta, spread = np.abs(y(1e-5) - y(1e-3)), np.abs(y(1e-5))
    scale = np.sqrt(np.mean(spread**2))
    assert sens.layer == pytest.approx(np.sqrt(np.mean(delta**2)) / scale, rel=1e-12)
    np.testing.assert_allclose(sens.channels, delta / np.maximum(spread, scale), rtol=1e-12)
    assert channel_change_bound(float(var.min())) >= sens.layer


def test_bn302_fires_on_small_variances_only():
    (f,) = run(layer(var=np.full(C, 1e-5)), codes=["BN302"])
    assert f.evidence["relative_change"] == pytest.approx(1 - math.sqrt(2e-5 / 1.01e-3), rel=1e-4)
    assert f.channels == list(range(C))
    assert run(layer(var=np.full(C, 0.05)), codes=["BN302"]) == []  # ~1%: below 5%
    assert run(layer(var=np.full(C, 0.05)), codes=["BN302"], eps_tolerance=0.005) != []


def test_bn302_one_small_channel_among_many_is_not_a_sensitive_layer():
    var = np.full(256, 0.5)
    var[17] = 0.005  # that channel alone moves by 9%
    big = dict(mean=np.zeros(256) + 0.1, weight=np.ones(256), bias=np.zeros(256))
    assert run(layer(var=var, **big), codes=["BN302"]) == []
    var[:64] = 0.002  # a quarter of the layer moves by ~20%
    (f,) = run(layer(var=var, **big), codes=["BN302"])
    assert f.channels == list(range(64)) and f.evidence["relative_change"] > 0.05


def test_bn303_half_precision_statistics():
    var = np.full(C, 0.5)
    var[2] = 1e-5  # below float16's smallest normal 6.1e-5
    (f,) = run(layer(var=var, dtypes={"running_var": "float16", "running_mean": "float16"}), codes=["BN303"])
    assert f.channels == [2] and f.evidence["significand_bits"] == 10
    assert run(layer(dtypes={"running_var": "bfloat16"}), codes=["BN303"])[0].evidence["significand_bits"] == 7


def test_bn304_producer_bias():
    bias = TensorRef.from_array(np.array([0.5, -2.0] * (C // 2), np.float32))
    prod = Producer("conv", "conv", "conv 3×3", "conv2d", C, 8, 1, TensorRef.from_array(np.zeros((C, 8, 3, 3), np.float32)), bias)
    (f,) = run(layer(producer=prod), codes=["BN304"])
    assert f.evidence["max_abs_producer_bias"] == 2.0
    prod.bias = None
    assert run(layer(producer=prod), codes=["BN304"]) == []


# ── registry ──

def test_every_rule_is_documented_in_ruffs_shape():
    assert list(RULES) == ["BN001", "BN002", "BN003", "BN101", "BN102", "BN103", "BN104", "BN105", "BN106", "BN107",
                           "BN108", "BN201", "BN202", "BN203", "BN204", "BN205", "BN206", "BN301", "BN302", "BN303", "BN304",
                           "BN401", "BN402", "BN403", "BN404"]
    for rule in RULES.values():
        heads = [ln for ln in rule.doc.splitlines() if ln.startswith("## ")]
        assert heads == ["## What it does", "## Why is this bad?", "## Example", "## Use instead"], rule.code


def test_select_and_ignore_by_code_and_prefix():
    assert [r.code for r in select_rules(["BN1"], ["BN104"])] == ["BN101", "BN102", "BN103", "BN105", "BN106", "BN107", "BN108"]
    assert [r.code for r in select_rules(["bn30", "BN001"])] == ["BN001", "BN301", "BN302", "BN303", "BN304"]
    assert len(select_rules()) == len(RULES)
    with pytest.raises(UsageError, match="did you mean BN101"):
        select_rules(["BN1O1"])
    with pytest.raises(UsageError):
        select_rules(None, ["BN9"])
    assert find_rule("bn205").code == "BN205"


def test_bn206_silent_on_exported_graphs():
    from bninspect.checkpoint import Checkpoint

    for fmt, expected in (("onnx", []), ("openvino-ir", []), ("safetensors", ["BN206"])):
        ctx = Context(layers=[layer(count=None)], checkpoint=Checkpoint(path="m", format=fmt, tensors={}))
        assert codes(run_rules(ctx, select_rules(None))) == expected
