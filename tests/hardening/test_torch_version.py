"""No format bninspect reads depends on the installed torch's safety: every reader is static.

torch < 2.6 could be tricked into running code under ``weights_only=True`` (CVE-2025-32434);
the legacy format used to go through that loader and was refused there. Now it is read by the
same static unpickler as zip archives, so an old torch changes nothing for any format.
"""

from __future__ import annotations

import pytest
import torch

from bninspect.formats import open_checkpoint
from tests.conftest import SAMPLES

# Every test here needs torch (the Python 3.10 job of .ci/run runs without it).
pytestmark = pytest.mark.torch


@pytest.mark.parametrize("version", ["2.5.1", "1.13.0"])
@pytest.mark.parametrize("name", ["mobilenet_v1_tiny.pt", "mobilenet_v1_tiny_legacy.pt", "mobilenet_v1_tiny.safetensors",
                                  "mobilenet_v1_tiny.ts"])
def test_no_reader_depends_on_the_torch_version(monkeypatch, version, name):
    monkeypatch.setattr(torch, "__version__", version)
    assert "features.2.bn.running_mean" in open_checkpoint(SAMPLES / name).tensors
