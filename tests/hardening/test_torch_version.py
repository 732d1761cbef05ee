"""bninspect refuses torch < 2.6 for the one loader that relies on torch: weights_only could be bypassed there."""

from __future__ import annotations

import pytest
import torch

from bninspect.errors import EXIT_UNSAFE, UnsafeFileError
from bninspect.formats import open_checkpoint
from tests.conftest import SAMPLES

# Every test here needs torch (the Python 3.10 job of .ci/run runs without it).
pytestmark = pytest.mark.torch


@pytest.mark.parametrize("version", ["2.5.1", "2.5.1+cpu", "1.13.0", "2.4.0a0+git1234"])
def test_legacy_files_are_refused_on_torch_before_2_6(monkeypatch, version):
    # CVE-2025-32434: torch.load(weights_only=True) ran code on torch < 2.6, so the legacy
    # format (the only one read through torch.load) must not be opened there at all.
    monkeypatch.setattr(torch, "__version__", version)
    with pytest.raises(UnsafeFileError) as info:
        open_checkpoint(SAMPLES / "mobilenet_v1_tiny_legacy.pt")
    assert info.value.exit_code == EXIT_UNSAFE
    assert "CVE-2025-32434" in info.value.message and version in info.value.message


def test_zip_and_safetensors_do_not_depend_on_torch_version(monkeypatch):
    # The static readers never call torch, so an old torch changes nothing for them.
    monkeypatch.setattr(torch, "__version__", "2.5.1")
    for name in ("mobilenet_v1_tiny.pt", "mobilenet_v1_tiny.safetensors", "mobilenet_v1_tiny.ts"):
        assert "features.2.bn.running_mean" in open_checkpoint(SAMPLES / name).tensors


def test_torch_2_6_and_later_is_accepted(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.6.0")
    assert open_checkpoint(SAMPLES / "mobilenet_v1_tiny_legacy.pt").format == "torch-legacy"
