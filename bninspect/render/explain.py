"""Render an ExplainResult: titled sections of prose wrapped to the terminal, or JSON."""

from __future__ import annotations

from rich.text import Text

from bninspect.render.common import console, safe
from bninspect.render.jsondoc import dumps
from bninspect.services.explain import ExplainResult

SCHEMA = "bninspect.explain/1"


def to_json(result: ExplainResult) -> str:
    """JSON document (schema bninspect.explain/1): the layer, the sections, the worked channel."""
    return dumps(SCHEMA, {"file": result.file, "layer": result.layer, "numbers": result.numbers,
                          "channel": result.channel, "sections": result.sections})


def render(result: ExplainResult) -> None:
    """Print each section as wrapped paragraphs (names from the file printed literally)."""
    out = console()
    out.print(Text(f"{safe(result.layer.name)} in {safe(result.file)}", style="bold"))
    for section in result.sections:
        out.print()
        out.print(Text(section.title, style="bold underline"))
        for para in section.paragraphs:
            out.print(Text(safe(para)))
