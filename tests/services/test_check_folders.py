"""Folder scans: data files saved with torch.save are skipped and named, not errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.conftest import SAMPLES, assert_one_line_error

# Every test here needs torch (the Python 3.10 job of .ci/run runs without it).
pytestmark = pytest.mark.torch


def test_folder_scan_skips_files_without_state_dict_but_a_named_one_is_an_error(cli, tmp_path):
    shutil.copy(SAMPLES / "resnet_tiny.pt", tmp_path / "model.pt")
    torch.save(torch.randn(4, 3, 8, 8), tmp_path / "calib.pt")  # data beside the model
    torch.save([1, 2, 3], tmp_path / "list.pt")
    run = cli("check", str(tmp_path), "--json")
    assert run.code == 0, run.err
    doc = json.loads(run.out)
    assert [f["path"].rsplit("/", 1)[1] for f in doc["files"]] == ["model.pt"]
    assert sorted(p.rsplit("/", 1)[1] for p in doc["skipped"]) == ["calib.pt", "list.pt"]
    assert run.err == ""
    table = cli("check", str(tmp_path))
    assert "skipped 2 files that hold no state dict" in table.out
    assert_one_line_error(cli("check", str(tmp_path / "calib.pt")), 4, "holds no state dict", "single tensor")
