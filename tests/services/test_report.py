"""`report` as data: the same layers, findings, drift and diff as the commands it is made of, and
the layers that get a page chosen by what is wrong with them."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

from bninspect.errors import PathProblemError, UsageError
from bninspect.services.check import CheckOptions, check_file
from bninspect.services.report import MAX_PAGES, report
from tests.conftest import SAMPLES

# Every test here makes or reads its files with torch (the Python 3.10 job has none).
pytestmark = pytest.mark.torch

FAULTY = SAMPLES / "faulty"
MOBILENET_BNS = ["features.2.bn", "features.3.bn", "features.4.bn", "features.5.bn"]


def test_every_layer_its_findings_and_marks_as_check_reports_them():
    path = str(FAULTY / "zero_var.pt")
    r = report(path)
    assert [row.summary.name for row in r.rows] == MOBILENET_BNS
    checked = check_file(path, CheckOptions())
    assert [(f.code, f.layer, f.channels) for f in r.findings] == [(f.code, f.layer, f.channels) for f in checked.findings]
    assert [(f.code, f.layer, f.channels) for f in r.findings] == [("BN105", "features.3.bn", [3, 9])]
    assert r.counts == {"error": 0, "warning": 1, "info": 0}
    assert r.rows[1].series.marks == {3: ["BN105"], 9: ["BN105"]}
    assert [row.series.marks for i, row in enumerate(r.rows) if i != 1] == [{}, {}, {}]
    assert r.file.format == "torch-zip" and r.file.total_channels == 288 and not r.trusted


def test_page_values_are_the_file_numbers_and_scale_is_gamma_over_sigma():
    r = report(str(SAMPLES / "mobilenet_v1_tiny.pt"))
    sd = torch.load(SAMPLES / "mobilenet_v1_tiny.pt", weights_only=True)
    assert [p.row for p in r.pages] == [0, 1, 2, 3] and r.pages_omitted == 0
    for page, name in zip(r.pages, MOBILENET_BNS):
        values = page.values
        for tensor in ("weight", "bias", "running_mean", "running_var"):
            np.testing.assert_array_equal(values[tensor], sd[f"{name}.{tensor}"].double().numpy())
        expected = sd[f"{name}.weight"].double() / torch.sqrt(sd[f"{name}.running_var"].double() + 1e-5)
        np.testing.assert_allclose(values["scale"], expected.numpy(), rtol=1e-15)
        assert page.marks == {} and page.drift is None and page.diff is None


def test_layers_with_findings_get_the_pages_first_then_model_order():
    r = report(str(FAULTY / "nan.pt"), pages=2)  # BN001 (error) in features.4.bn, the third layer
    assert [r.rows[p.row].summary.name for p in r.pages] == ["features.2.bn", "features.4.bn"]
    assert [row.page for row in r.rows] == [True, False, True, False]
    assert r.pages_omitted == 2 and r.pages_limit == 2
    only = report(str(FAULTY / "nan.pt"), pages=1)
    assert [only.rows[p.row].summary.name for p in only.pages] == ["features.4.bn"]
    assert only.pages[0].marks == {3: ["BN001"], 10: ["BN001"]}


def test_layer_globs_choose_the_pages():
    r = report(str(SAMPLES / "mobilenet_v1_tiny.pt"), layers=["features.[35].bn"])
    assert [r.rows[p.row].summary.name for p in r.pages] == ["features.3.bn", "features.5.bn"]
    assert len(r.rows) == 4  # the overview keeps every layer
    with pytest.raises(UsageError, match="no BatchNorm layer matches 'features.9.bn'; did you mean"):
        report(str(SAMPLES / "mobilenet_v1_tiny.pt"), layers=["features.9.bn"])


@pytest.mark.parametrize("pages", [0, -1, MAX_PAGES + 1])
def test_pages_outside_1_to_200_are_a_usage_error(pages):
    with pytest.raises(UsageError, match="--pages must be between 1 and 200"):
        report(str(SAMPLES / "mobilenet_v1_tiny.pt"), pages=pages)


def test_drift_options_without_data_are_a_usage_error():
    with pytest.raises(UsageError, match="give --data FILE"):
        report(str(SAMPLES / "mobilenet_v1_tiny.pt"), arch="sample_models:mobilenet_v1_tiny")
    with pytest.raises(UsageError, match="not both"):
        report(str(SAMPLES / "mobilenet_v1_tiny.pt"), data="x.pt", synthetic="2x3x8x8")


def test_a_possible_batchnorm_is_a_row_with_its_finding_and_no_statistics():
    r = report(str(FAULTY / "no_running_stats.pt"))
    assert [row.summary.name for row in r.rows] == MOBILENET_BNS and all(row.summary.possible for row in r.rows)
    assert [f.code for f in r.findings] == ["BN201"] * 4
    row = r.rows[0]
    assert row.series.running_mean is None and row.series.scale is None
    assert set(r.pages[0].values) == {"weight", "bias"}


def test_diff_with_b_is_the_diff_service_result_with_per_channel_differences():
    a, b = str(SAMPLES / "drift" / "mobilenet_v1_tiny_bs2.pt"), str(SAMPLES / "drift" / "mobilenet_v1_tiny_bs64.pt")
    r = report(a, b)
    assert r.diff is not None and r.diff.verdict == "different" and r.inputs == [a, b]
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    for page, name in zip(r.pages, MOBILENET_BNS):
        assert page.diff is not None and page.diff.name == name
        var = next(t for t in page.diff.tensors if t.tensor == "running_var")
        va, vb = sa[f"{name}.running_var"].double().numpy(), sb[f"{name}.running_var"].double().numpy()
        channels = page.diff_channels["running_var"]
        np.testing.assert_allclose(channels.relative, np.abs(va - vb) / np.abs(va), rtol=1e-12)
        assert channels.beyond.sum() == var.channels_beyond


def test_identical_b_gives_no_differing_channel():
    r = report(str(SAMPLES / "mobilenet_v1_tiny.pt"), str(SAMPLES / "mobilenet_v1_tiny.safetensors"))
    assert r.diff.verdict == "identical"
    assert all(not p.diff_channels[t.tensor].relative.any() for p in r.pages for t in p.diff.tensors)


def test_drift_on_data_with_arch(monkeypatch):
    monkeypatch.syspath_prepend(str(SAMPLES))
    monkeypatch.chdir(SAMPLES)
    r = report("drift/mobilenet_v1_tiny_bs2.pt", data="drift/calib.pt", arch="sample_models:mobilenet_v1_tiny",
               batch_sizes="2,8")
    assert r.drift is not None and [l.name for l in r.drift.layers] == MOBILENET_BNS
    assert r.drift.batch_sizes == [2, 8]
    # Layers beyond --max-drift count as problems when pages are chosen: all four are (README: 0.11-0.22).
    assert all(p.drift is not None and p.drift.exceeds for p in r.pages)
    assert r.inputs == ["drift/mobilenet_v1_tiny_bs2.pt", "drift/calib.pt"]
    assert "sample_models" in sys.modules


def test_output_that_is_an_input_is_refused_before_any_work(tmp_path):
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes((SAMPLES / "mobilenet_v1_tiny.pt").read_bytes())
    link = tmp_path / "link.html"
    os.link(ckpt, link)
    for out in (ckpt, link):
        with pytest.raises(UsageError, match="-o must not overwrite an input"):
            report(str(ckpt), output=str(out))
    with pytest.raises(PathProblemError, match="is a directory"):
        report(str(ckpt), output=str(tmp_path))
    with pytest.raises(PathProblemError, match="its directory does not exist"):
        report(str(ckpt), output=str(tmp_path / "no" / "r.html"))
