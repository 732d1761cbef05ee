"""Render an ExplainResult: titled sections of prose wrapped to the terminal, or JSON."""

from __future__ import annotations

from bninspect.render.common import Out, Styled, visible
from bninspect.render.jsondoc import dumps
from bninspect.render.pictures import LEVELS, picture_lines, rule_titles
from bninspect.services.explain import ExplainResult

SCHEMA = "bninspect.explain/1"


def to_json(result: ExplainResult) -> str:
    """JSON document (schema bninspect.explain/1): the layer, the sections, the worked channel."""
    return dumps(SCHEMA, {"file": result.file, "format": result.format, "layer": result.layer, "numbers": result.numbers,
                          "channel": result.channel, "sections": result.sections})


def render(result: ExplainResult) -> None:
    """Print each section as wrapped paragraphs (names from the file printed literally)."""
    out = Out()
    out.print(Styled(f"{visible(result.layer.name)} in {visible(result.file)}", "bold"))
    pictures = picture_lines(result._series, out.width, rule_titles()) if out.terminal and result._series else []
    for i, section in enumerate(result.sections):
        out.print()
        out.print(Styled(section.title, "bold underline"))
        for para in section.paragraphs:
            out.print(visible(para))
        if i == 0 and pictures:  # on a terminal: the layer's channels at a glance, after what they are
            out.print(f"Channel by channel, low {LEVELS[0]} to high {LEVELS[-1]}:")
            for line in pictures:
                out.print(line, wrap=False)
