"""render.common: the hand-laid tables of every command (rich's Table took 190 ms for 155 rows),
and output that needs rich only on a terminal."""

from __future__ import annotations

import io
import random
import re

import pytest
from rich.cells import cell_len

from bninspect.render.common import Column, Styled, _wrap, table
from tests.conftest import SAMPLES, needs_torch, run_cli

COLUMNS = (Column("layer", wrap=True), Column("C", "right"), Column("producer", wrap=True))
ROWS = [(Styled("layer4.2.bn3", "cyan"), "2048", "layer4.2.conv3 (conv 1×1)"),
        (Styled("bn1", "cyan"), "64", "conv1 (conv 7×7 stride 2)")]


def cells(line: str) -> list[str]:
    """The cell texts of one drawn row (between the vertical bars), stripped."""
    return [c.strip() for c in line[1:-1].replace("┃", "│").split("│")]


def test_rows_are_aligned_and_numbers_right_justified():
    drawn = table(COLUMNS, ROWS, width=200)
    lines = drawn.plain.split("\n")
    assert len({cell_len(line) for line in lines}) == 1  # every line equally wide
    assert lines[0].startswith("┏") and lines[2].startswith("┡") and lines[-1].startswith("└")
    assert cells(lines[1]) == ["layer", "C", "producer"]
    assert cells(lines[3]) == ["layer4.2.bn3", "2048", "layer4.2.conv3 (conv 1×1)"]
    c_column = lines[4].split("│")[2]
    assert c_column.endswith("64 ") and c_column.startswith("  ")


def test_styles_cover_exactly_their_cells():
    drawn = table(COLUMNS, ROWS, width=200)
    styled = {drawn.plain[a:b]: style for a, b, style in drawn.spans}
    assert styled["layer4.2.bn3"] == "cyan" and styled["bn1"] == "cyan"
    assert styled["layer"] == "bold" and styled["producer"] == "bold"


def test_long_cells_wrap_between_words_to_fit_a_narrow_terminal_and_lose_nothing():
    drawn = table(COLUMNS, ROWS, width=40)
    lines = drawn.plain.split("\n")
    assert all(cell_len(line) <= 40 for line in lines)
    body = [cells(line) for line in lines[3:-1]]
    assert [row[2] for row in body[:2]] == ["layer4.2.conv3", "(conv 1×1)"]  # broken at a space
    assert body[1][0] == ""  # a wrapped row continues under an empty name cell
    narrow = [cells(line) for line in table(COLUMNS, ROWS, width=30).plain.split("\n")[3:-1]]
    assert "".join(row[2] for row in narrow[:3]).replace(" ", "") == "layer4.2.conv3(conv1×1)"  # a long word is cut


def test_cells_keep_their_own_lines():
    drawn = table((Column("code"), Column("finding / fix", wrap=True)),
                  [("BN105", Styled("running_var is 0").append("\nfix: recompute", "dim"))], width=80)
    body = [cells(line) for line in drawn.plain.split("\n")[3:-1]]
    assert body == [["BN105", "running_var is 0"], ["", "fix: recompute"]]
    assert {drawn.plain[a:b] for a, b, style in drawn.spans if style == "dim"} == {"fix: recompute"}


def test_a_title_goes_above_the_box():
    drawn = table(COLUMNS[:2], [("a", "1")], width=80, title=Styled("bn1: entry i of each tensor belongs to channel i"))
    assert drawn.plain.split("\n")[0] == "bn1: entry i of each tensor belongs to channel i"


@pytest.mark.parametrize("text", ["aaa bbb ccc", "a" * 25 + " b", "  lead and trailing  ", "x" * 7,
                                  "wide 漢字漢字漢字 words", "one\ntwo three four", "fix: prune these channels"])
@pytest.mark.parametrize("width", [3, 7, 10])
def test_lines_break_where_rich_breaks_them(text, width):
    from rich.text import Text

    ours = [text[a:b] for a, b in _wrap(text, width)]
    theirs = [line.plain for line in Text(text).wrap(_console(width), width, overflow="fold")]
    assert [s.rstrip() for s in ours] == [s.rstrip() for s in theirs]


def _console(width: int):
    from rich.console import Console

    return Console(width=width)


_WORDS = ["a", "bn", "layer4.2.bn3", "0.001", "σ²", "漢字", "漢字漢字漢字", "x" * 30, "—", "↔", "…",
          "model.backbone.stage_three_with_a_long_name"]


def _random_cell(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) + rng.choice([" ", " ", "  ", "\n"]) for _ in range(rng.choice([0, 1, 1, 2, 3, 5, 8]))]
    return (" " if rng.random() < 0.1 else "") + "".join(words)[:-1]


def _drawn_by_rich(columns, rows, width, title) -> str:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    drawn = Table(header_style="bold", pad_edge=False, title=title, title_justify="left")
    for c in columns:
        drawn.add_column(c.header, justify=c.justify, no_wrap=not c.wrap)
    for row in rows:
        drawn.add_row(*map(Text, row))
    out = io.StringIO()
    Console(file=out, width=width, highlight=False, emoji=False, color_system=None).print(drawn)
    return out.getvalue()


@pytest.mark.parametrize("seed", range(6))
def test_rich_fit_lays_out_what_rich_would(seed):
    """verify, diff and drift printed rich tables; with rich_fit their text is what rich drew at
    any width: columns narrowed as rich narrows them, "…" where rich cuts, headers at the bottom,
    the title wrapped and padded, lines cropped at the terminal (random tables, fixed seeds)."""
    rng = random.Random(seed)
    for _ in range(60):
        n = rng.randint(1, 7)
        columns = [Column(rng.choice(["layer", "C", "max rel. difference per tensor", "Δ if eps were"]),
                          rng.choice(["left", "right"]), rng.random() < 0.7) for _ in range(n)]
        rows = [[_random_cell(rng) for _ in range(n)] for _ in range(rng.randint(0, 4))]
        width = rng.choice([3, 8, 12, 20, 30, 40, 55, 70, 100, 200])
        title = rng.choice([None, "Running statistics vs the data (drift = RMS error of the normalized output, in σ)"])
        ours = table(columns, rows, width=width, title=title, rich_fit=True).plain + "\n"
        assert ours == _drawn_by_rich(columns, rows, width, title), (columns, rows, width, title)


def test_rich_fit_styles_what_it_cuts():
    drawn = table((Column("layer"), Column("x")), [(Styled("features.3.bn", "cyan"), "1")], width=12, rich_fit=True)
    assert "│featur… │" in drawn.plain
    assert {drawn.plain[a:b] for a, b, style in drawn.spans if style == "cyan"} == {"featur", "…"}


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_PICTURE = re.compile(r"  (μ |σ² |scale |× = |1 character = )|Channel by channel, low ")
_DRIFT = (str(SAMPLES / "drift" / "mobilenet_v1_tiny_bs2.pt"), "--arch", "sample_models:mobilenet_v1_tiny",
          "--data", str(SAMPLES / "drift" / "calib.pt"), "--batch-sizes", "2,32")


@pytest.mark.parametrize("args", [("show", SAMPLES / "resnet_tiny_lightning.ckpt"),
                                  ("show", SAMPLES / "mobilenet_v1_tiny.pt", "--channels"),
                                  ("check", SAMPLES / "faulty"), ("check", SAMPLES / "faulty", "--format", "concise"),
                                  ("explain", SAMPLES / "resnet_tiny.pt", "bn1", "--channel", "3"),
                                  needs_torch(("verify", SAMPLES / "mobilenet_v1_tiny_train.ts")),
                                  needs_torch(("diff", SAMPLES / "mobilenet_v1_tiny.pt", SAMPLES / "mobilenet_v1_tiny_train.ts")),
                                  needs_torch(("drift", *_DRIFT))],
                         ids=["show", "channels", "check", "concise", "explain", "verify", "diff", "drift"])
@pytest.mark.parametrize("columns", ["200", "70", "40"])
def test_a_pipe_gets_the_terminal_text_without_styles(args, columns):
    """Off a terminal the text is written without rich; on one (TTY_COMPATIBLE=1, what rich
    honours) rich styles it. Without the styles both are the same characters, but for the
    per-channel pictures (`show --channels`, `explain`), which only a terminal gets."""
    argv = [str(a) for a in args]
    env = {"COLUMNS": columns, "OMP_NUM_THREADS": "1"}
    plain = run_cli(*argv, env=env, cwd=SAMPLES)
    styled = run_cli(*argv, env={**env, "TTY_COMPATIBLE": "1"}, cwd=SAMPLES)
    assert plain.code == styled.code and "\x1b[" not in plain.out and "\x1b[" in styled.out
    shown = _ANSI.sub("", styled.out)
    pictures = [line for line in shown.splitlines(keepends=True) if _PICTURE.match(line)]
    assert bool(pictures) == (args[0] == "explain" or "--channels" in args)
    assert plain.out == "".join(line for line in shown.splitlines(keepends=True) if not _PICTURE.match(line))
