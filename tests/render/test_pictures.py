"""Part 2 of issue 18: one-line per-channel pictures in `show --channels` and `explain`.

On a terminal (TTY_COMPATIBLE=1 is how rich, and render.common.Out, are told the output is
one) each selected layer gets a sparkline for μ, σ² and scale, with the channels a check rule
names drawn as ×; in a pipe and with --json the plain numbers stay alone.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from bninspect.render.pictures import LEVELS, MARK, sparkline
from tests.conftest import SAMPLES, run_cli

ANSI = re.compile(r"\x1b\[[0-9;]*m")
TERMINAL = {"TTY_COMPATIBLE": "1", "NO_COLOR": "1", "COLUMNS": "120"}


def terminal(*args: str, env: dict | None = None) -> str:
    """What a terminal shows (ANSI styles removed), after checking the command succeeded."""
    run = run_cli(*args, env={**TERMINAL, **(env or {})})
    assert run.code == 0, run.err
    assert run.err == ""
    return ANSI.sub("", run.out)


def picture(out: str, label: str) -> str:
    """The sparkline of one quantity (μ, σ², scale): the characters between the label and the range."""
    line = next(l for l in out.splitlines() if l.startswith(f"  {label.ljust(6)} "))
    return line[9:].split("  ")[0]


def test_show_channels_draws_mu_var_scale_and_marks_the_zero_variance_channels():
    out = terminal("show", str(SAMPLES / "faulty" / "zero_var.pt"), "--channels", "--layer", "features.3.bn")
    for label in ("μ", "σ²", "scale"):
        drawn = picture(out, label)
        assert len(drawn) == 64  # one character per channel: 64 channels fit in 120 columns
        assert [i for i, ch in enumerate(drawn) if ch == MARK] == [3, 9]
        assert set(drawn) - {MARK} <= set(LEVELS)
    assert "× = channels 3, 9 (BN105 running_var = 0 (constant channel))" in out
    # The levels span the other channels: σ² from its smallest non-zero value.
    assert re.search(r"σ²\s+\S+\s+0\.0555 … 0\.512 without ×", out)
    # The numbers stay, under the picture.
    assert "features.3.bn: entry i of each tensor belongs to channel i" in out
    assert "σ² running_var" in out


def test_the_outlier_is_marked_and_does_not_flatten_the_other_channels():
    out = terminal("show", str(SAMPLES / "faulty" / "outlier.pt"), "--channels", "--layer", "features.3.bn")
    mu = picture(out, "μ")
    assert mu[6] == MARK and mu.count(MARK) == 1
    # running_mean[6] = 1000 among values within ±0.33: without it the others still use every level.
    assert {LEVELS[0], LEVELS[-1]} <= set(mu)
    assert "channel 6 (BN108" in out


def test_healthy_checkpoint_has_no_marks():
    out = terminal("show", str(SAMPLES / "mobilenet_v1_tiny.pt"), "--channels")
    assert out.count("entry i of each tensor belongs to channel i") == 4
    for label in ("μ", "σ²", "scale"):
        assert picture(out, label) and MARK not in picture(out, label)
    assert "× = " not in out


def test_wide_layers_bin_channels_and_say_so():
    out = terminal("show", str(SAMPLES / "mobilenet_v1_tiny.pt"), "--channels", "--layer", "features.5.bn",
                   env={"COLUMNS": "80"})
    drawn = picture(out, "μ")
    # 80 columns less the label (9) and the widest range ("  -0.478 … 0.585", 16): 55 characters,
    # so 3 of the 128 channels a character.
    assert len(drawn) == 43
    assert "1 character = 3 channels, drawn by the one farthest from the median" in out
    assert all(len(line) <= 80 for line in out.splitlines() if line.startswith("  μ"))


@pytest.mark.parametrize("extra", [(), ("--json",)], ids=["pipe", "json"])
def test_no_picture_in_a_pipe_or_in_json(extra):
    env = {"TTY_COMPATIBLE": "1"} if extra else {}
    run = run_cli("show", str(SAMPLES / "faulty" / "zero_var.pt"), "--channels", *extra, env=env)
    assert run.code == 0, run.err
    assert not set(LEVELS) & set(run.out)
    assert "× = " not in run.out
    if extra:
        doc = json.loads(run.out)
        assert "_series" not in doc["layers"][0] and len(doc["layers"][1]["per_channel"]) == 64
    else:
        assert "features.3.bn: entry i of each tensor belongs to channel i" in run.out
        assert re.search(r"^│\s*3 │", run.out, re.M)  # the numbers of channel 3


def test_explain_draws_the_layer_after_what_the_numbers_are():
    out = terminal("explain", str(SAMPLES / "faulty" / "nan.pt"), "features.4.bn")
    lines = out.splitlines()
    start = lines.index("Channel by channel, low ▁ to high █:")
    assert lines.index("What the numbers are") < start < lines.index("Inference (eval mode)")
    mu = picture(out, "μ")
    assert [i for i, ch in enumerate(mu) if ch == MARK] == [3, 10]
    assert "× = channels 3, 10 (BN001 NaN or Inf in a BatchNorm tensor)" in out


@pytest.mark.parametrize("extra", [(), ("--json",)], ids=["pipe", "json"])
def test_explain_has_no_picture_in_a_pipe_or_in_json(extra):
    env = {"TTY_COMPATIBLE": "1"} if extra else {}
    run = run_cli("explain", str(SAMPLES / "faulty" / "nan.pt"), "features.4.bn", *extra, env=env)
    assert run.code == 0, run.err
    assert "Channel by channel" not in run.out and "× = " not in run.out
    assert not set(LEVELS) & set(run.out)
    if extra:
        assert "_series" not in json.loads(run.out)


def test_a_layer_without_running_statistics_has_no_picture():
    out = terminal("explain", str(SAMPLES / "faulty" / "no_running_stats.pt"), "features.3.bn")
    assert "Channel by channel" not in out


def test_a_bin_is_drawn_by_its_channel_farthest_from_the_median():
    values = np.zeros(1000)
    values[517] = 5.0  # one wild channel, not marked: an average over its bin of 10 would hide it
    line = sparkline(values, {}, 100)
    assert line.per_cell == 10 and len(line.text) == 100
    assert line.text[51] == LEVELS[-1] and set(line.text[:51] + line.text[52:]) == {LEVELS[0]}


def test_non_finite_values_that_no_finding_names_are_shown_as_unknown():
    line = sparkline(np.array([0.0, np.nan, 1.0, np.inf]), {}, 10)
    assert line.text == f"{LEVELS[0]}?{LEVELS[-1]}?" and (line.low, line.high) == (0.0, 1.0)
