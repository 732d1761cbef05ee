"""render.layout and render.common: our own word wrap and the one table fit every command uses,
and output that needs rich only on a terminal (the same characters either way)."""

from __future__ import annotations

import io
import random
import re

import pytest
from rich.cells import cell_len

from bninspect.render.layout import WRAP_MIN, Column, Styled, cell_width, fit, table, wrap
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
def test_text_wraps_by_the_documented_rules(text, width):
    """render.layout's rules: every line fits, a newline always ends a line, lines break between
    words and drop the spaces there, an indent stays, and only a word wider than a line is cut."""
    lines = wrap(text, width)
    pieces = [text[a:b] for a, b in lines]
    assert all(cell_width(p) <= width or len(p) == 1 for p in pieces)
    assert [a for a, _ in lines] == sorted(a for a, _ in lines)
    # Nothing but the spaces where a line breaks (and the newlines) is left out.
    assert re.sub(r"\s", "", "".join(pieces)) == re.sub(r"\s", "", text)
    for (a1, b1), (a2, _) in zip(lines, lines[1:]):
        between = text[b1:a2]
        assert set(between) <= {" ", "\n"} and between.count("\n") <= 1
        if not between:  # a cut inside a word: only where the word alone is wider than a line
            word = re.search(r"[^ \n]*$", text[:b1]).group() + re.match(r"[^ \n]*", text[a2:]).group()
            assert cell_width(word) > width
    if text.startswith("  ") and width > 2:
        assert pieces[0].startswith("  ")


def test_wrapped_lines_take_as_many_words_as_fit():
    assert [("aaa bbb ccc")[a:b] for a, b in wrap("aaa bbb ccc", 7)] == ["aaa bbb", "ccc"]
    assert [("one\ntwo three four")[a:b] for a, b in wrap("one\ntwo three four", 10)] == ["one", "two three", "four"]
    assert [("漢字漢字 ab")[a:b] for a, b in wrap("漢字漢字 ab", 5)] == ["漢字", "漢字", "ab"]  # wide characters take two cells


_WORDS = ["a", "bn", "layer4.2.bn3", "0.001", "σ²", "漢字", "漢字漢字漢字", "x" * 30, "—", "↔", "…",
          "model.backbone.stage_three_with_a_long_name"]


def _random_cell(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) + rng.choice([" ", " ", "  ", "\n"]) for _ in range(rng.choice([0, 1, 1, 2, 3, 5, 8]))]
    return (" " if rng.random() < 0.1 else "") + "".join(words)[:-1]


def _words(text: str) -> str:
    return re.sub(r"\s", "", text)


@pytest.mark.parametrize("seed", range(6))
def test_every_table_fits_or_is_drawn_whole_and_loses_nothing(seed):
    """The one table fit (render.layout): a table fits the terminal wherever its columns can
    narrow enough, columns that may not wrap (numbers) keep their width, and no character of a
    cell is ever cut or hidden (random tables, fixed seeds)."""
    rng = random.Random(seed)
    for _ in range(60):
        n = rng.randint(1, 7)
        columns = [Column(rng.choice(["layer", "C", "max rel. difference per tensor", "Δ if eps were"]),
                          rng.choice(["left", "right"]), rng.random() < 0.7) for _ in range(n)]
        rows = [[_random_cell(rng) for _ in range(n)] for _ in range(rng.randint(0, 4))]
        width = rng.choice([3, 8, 12, 20, 30, 40, 55, 70, 100, 200])
        drawn = table(columns, rows, width=width).plain
        lines = drawn.split("\n")
        assert len({cell_width(line) for line in lines}) == 1, (columns, rows, width)  # a box, every line as wide
        widths = fit(columns, [c.header for c in columns], rows, width)
        for c, w, i in zip(columns, widths, range(n)):
            if not c.wrap:
                widest = max([cell_width(line) for row in rows for line in row[i].split("\n")] + [0])
                assert w >= widest, (columns, rows, width)
        if sum(widths) + 3 * n - 1 > width:  # drawn whole only where every column is at its floor
            for c, w, i in zip(columns, widths, range(n)):
                words = max(cell_width(x) for x in c.header.split(" "))
                widest = max([cell_width(line) for row in rows for line in row[i].split("\n")] + [0])
                assert w <= WRAP_MIN if c.wrap else w == max(widest, words, 1), (columns, rows, width)
        below = lines[next(k for k, line in enumerate(lines) if line.startswith("┡")) + 1:-1]
        body = "".join(cell for row in rows for cell in row)
        assert sorted(_words(body)) == sorted(_words("".join(line[1:-1] for line in below).replace("│", ""))), \
            (columns, rows, width)


def test_a_column_that_may_wrap_narrows_before_headers_break_further():
    columns = (Column("layer", wrap=True), Column("max abs err", "right"))
    rows = [("model.backbone.stage_three_with_a_long_name.bn", "1.2e-07")]
    drawn = table(columns, rows, width=30).plain.split("\n")
    assert all(cell_width(line) <= 30 for line in drawn)
    assert any("1.2e-07" in line for line in drawn)  # a number is never broken


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
