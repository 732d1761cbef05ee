"""render.common.table: the hand-laid tables of `show` (rich's Table took 190 ms for 155 rows)."""

from __future__ import annotations

from rich.cells import cell_len
from rich.text import Text

from bninspect.render.common import Column, table

COLUMNS = (Column("layer", fold=True), Column("C", "right"), Column("producer", fold=True))
ROWS = [(Text("layer4.2.bn3", style="cyan"), "2048", "layer4.2.conv3 (conv 1×1)"),
        (Text("bn1", style="cyan"), "64", "conv1 (conv 7×7 stride 2)")]


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
    styled = {drawn.plain[s.start:s.end]: str(s.style) for s in drawn.spans}
    assert styled["layer4.2.bn3"] == "cyan" and styled["bn1"] == "cyan"
    assert styled["layer"] == "bold" and styled["producer"] == "bold"


def test_names_fold_to_fit_a_narrow_terminal_and_lose_nothing():
    drawn = table(COLUMNS, ROWS, width=36)
    lines = drawn.plain.split("\n")
    assert all(cell_len(line) <= 36 for line in lines)
    body = [cells(line) for line in lines[3:-1]]
    assert "".join(row[2] for row in body[:len(body) // 2]).replace(" ", "") == "layer4.2.conv3(conv1×1)"
    assert any(row[0] == "" for row in body)  # a folded row continues under an empty name cell


def test_a_title_goes_above_the_box():
    drawn = table(COLUMNS[:2], [("a", "1")], width=80, title=Text("bn1: entry i of each tensor belongs to channel i"))
    assert drawn.plain.split("\n")[0] == "bn1: entry i of each tensor belongs to channel i"
