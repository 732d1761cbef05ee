"""Render an ExplainResult: titled sections of prose wrapped to the terminal, or JSON."""

from __future__ import annotations

from bninspect.render.common import Out, Styled, safe
from bninspect.render.jsondoc import dumps
from bninspect.services.explain import ExplainResult

SCHEMA = "bninspect.explain/1"


def to_json(result: ExplainResult) -> str:
    """JSON document (schema bninspect.explain/1): the layer, the sections, the worked channel."""
    return dumps(SCHEMA, {"file": result.file, "format": result.format, "layer": result.layer, "numbers": result.numbers,
                          "channel": result.channel, "sections": result.sections})


def render(result: ExplainResult) -> None:
    """Print each section as wrapped paragraphs (names from the file printed literally)."""
    out = Out()
    out.print(Styled(f"{safe(result.layer.name)} in {safe(result.file)}", "bold"))
    for section in result.sections:
        out.print()
        out.print(Styled(section.title, "bold underline"))
        for para in section.paragraphs:
            out.print(safe(para))
