"""Every rule fires on the sample made to trigger it and on no other sample; healthy samples get
no warning or error. Real files from sample_checkpoints/make_samples.py, checked in-process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bninspect.services.check import CheckOptions, check
from bninspect.rules import Thresholds
from tests.conftest import needs_torch

SAMPLES = Path(__file__).resolve().parent.parent.parent / "sample_checkpoints"
if str(SAMPLES) not in sys.path:
    sys.path.insert(0, str(SAMPLES))

# faulty sample → the rules it must fire (and nothing else)
EXPECTED = {
    "faulty/nan.pt": {"BN001"},
    "faulty/negvar.pt": {"BN002"},
    "faulty/length_mismatch.pt": {"BN003"},
    "faulty/default_stats.pt": {"BN101"},
    "faulty/few_updates.pt": {"BN102"},
    "faulty/mixed_counts.pt": {"BN103"},
    "faulty/converted_stats.safetensors": {"BN104"},
    "faulty/zero_var.pt": {"BN105"},
    "faulty/extreme_scale.pt": {"BN106"},
    "faulty/dead_gamma.pt": {"BN107"},
    "faulty/outlier.pt": {"BN108"},
    "faulty/no_running_stats.pt": {"BN201"},
    "mobilenet_v1_tiny_train.ts": {"BN202"},
    "faulty/mixed_mode.ts": {"BN202", "BN203"},  # the layer left in train mode is BN202 too
    "faulty/momentum_none.ts": {"BN204"},
    "faulty/syncbn.ts": {"BN205"},
    "faulty/no_count.pt": {"BN206"},
    "faulty/eps_keras.ts": {"BN301"},
    "faulty/eps_sensitive.pt": {"BN302"},
    "faulty/half_stats.pt": {"BN303"},
    "faulty/conv_bias.pt": {"BN304"},
    "faulty/getpid_on_load.pt": {"BN401"},
    "faulty/unreviewed_call.pt": {"BN402"},
    "faulty/setstate.ts": {"BN403"},
    # torch.save(model) of a class from sample_models.py: a real load imports that package.
    "resnet_tiny_module.pt": {"BN404"},
}
HEALTHY = ["mobilenet_v1_tiny.pt", "mobilenet_v1_tiny.safetensors", "mobilenet_v1_tiny.ts", "mobilenet_v1_tiny_legacy.pt",
           "resnet_tiny.pt", "resnet_tiny_lightning.ckpt", "resnet_tiny_dp.pth", "resnet_tiny_compiled.pt", "norms_tiny.pt"]


def _check(names: list[str]) -> dict[str, object]:
    # Default options throughout: the healthy samples must pass the rules as users run them.
    report = check([str(SAMPLES / n) for n in names], CheckOptions())
    return {Path(f.path).relative_to(SAMPLES).as_posix(): f for f in report.files}


@pytest.fixture(scope="module")
def results():
    return _check(list(EXPECTED) + HEALTHY)


def test_every_rule_has_a_sample():
    from bninspect.rules import RULES

    assert set().union(*EXPECTED.values()) == set(RULES)


def _trained_steps() -> int:
    """The SGD steps the healthy samples trained for: their num_batches_tracked (make_samples.STEPS)."""
    from bninspect.formats import open_checkpoint
    from bninspect.layers import discover

    (steps,) = {l.num_batches_tracked for l in discover(open_checkpoint(str(SAMPLES / "mobilenet_v1_tiny.pt"))).layers}
    return steps


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_rule_fires_on_its_sample_and_only_there(results, name):
    result = results[name]
    assert result.error is None, result.error
    assert {f.code for f in result.findings} == EXPECTED[name]


# The legacy format is loaded by torch.load(weights_only=True) once scanned.
@pytest.mark.parametrize("name", [needs_torch(n) if "legacy" in n else n for n in HEALTHY])
def test_healthy_samples_have_no_finding(results, name):
    result = results[name]
    assert result.error is None, result.error
    assert [(f.code, f.layer) for f in result.findings] == []


def test_the_pickled_module_sample_reads_statically_and_is_otherwise_healthy(results):
    # Its classes live in sample_models; nothing is imported, and BN404 (info) names the package.
    f = results["resnet_tiny_module.pt"]
    assert f.error is None and f.layers == 6 and f.format == "torch-zip"
    (finding,) = f.findings
    assert finding.severity == "info" and finding.evidence["packages"] == ["sample_models"]


def test_bn102_default_threshold_is_silent_on_healthy_samples_and_fires_on_few_updates():
    """The healthy samples trained more steps than BN102's default of 200; few_updates.pt has 5."""
    assert Thresholds().min_updates == 200 < _trained_steps()
    opts = CheckOptions(select=["BN102"])
    report = check([str(SAMPLES / n) for n in [*HEALTHY, "faulty/few_updates.pt"]], opts)
    *healthy, few = report.files
    assert [(Path(f.path).name, f.findings) for f in healthy if f.findings] == []
    assert len(few.findings) == 4 and all(x.evidence["num_batches_tracked"] == 5 for x in few.findings)
    assert few.findings[0].evidence["initial_value_weight"] == pytest.approx(0.9**5, rel=1e-5)


def test_sample_findings_name_the_tampered_channels(results):
    by_code = {f.code: f for r in results.values() for f in r.findings}
    assert by_code["BN001"].layer == "features.4.bn" and by_code["BN001"].channels == [3, 10]
    assert by_code["BN002"].channels == [7]
    assert by_code["BN105"].layer == "features.3.bn" and by_code["BN105"].channels == [3, 9]
    assert by_code["BN106"].layer == "features.5.bn" and by_code["BN106"].channels == [7]
    assert by_code["BN107"].channels == [2, 11]
    assert by_code["BN108"].channels == [6]
    assert by_code["BN103"].layer == "features.5.bn" and by_code["BN103"].evidence["most_common_count"] == 100 * _trained_steps()
    assert by_code["BN102"].evidence["num_batches_tracked"] == 5
    assert by_code["BN203"].layer == "features.5.bn"
    assert by_code["BN304"].layer == "features.3.bn"
