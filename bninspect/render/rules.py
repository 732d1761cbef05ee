"""Render the rule registry: the table of rules, one rule's documentation, or JSON."""

from __future__ import annotations

from bninspect.render.common import Column, Out, Styled, table, write_document
from bninspect.render.jsondoc import dumps
from bninspect.rules import Rule

# rich is imported only where the output is a terminal (render.common.Out).

SCHEMA = "bninspect.rules/1"
# One colour per severity, for the rule table and check's findings alike.
STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def as_data(rule: Rule) -> dict[str, str]:
    """A rule as plain data: code, name, default severity, family, title and documentation."""
    return {"code": rule.code, "name": rule.name, "severity": rule.severity, "family": rule.family,
            "scope": rule.scope, "title": rule.title, "doc": rule.doc}


def to_json(rules: list[Rule]) -> str:
    """The documented JSON document (schema bninspect.rules/1)."""
    return dumps(SCHEMA, {"rules": [as_data(r) for r in rules]})


_COLUMNS = tuple(Column(h, wrap=True) for h in ("code", "severity", "family", "name", "title"))


def render_table(rules: list[Rule]) -> None:
    """One row per rule: code, default severity, family, name, title."""
    out = Out()
    rows = [(r.code, Styled(r.severity, STYLE[r.severity]), r.family, r.name, r.title) for r in rules]
    out.print(table(_COLUMNS, rows, width=out.width), wrap=False)
    out.print(Styled("Details: bninspect rules CODE. Select with check --select/--ignore (codes or prefixes such as BN1).",
                     "dim"))


def render_rule(rule: Rule) -> None:
    """One rule's full documentation (what, why, example, fix), as written next to its code."""
    out = Out()
    head = Styled(f"{rule.code} ({rule.name}) ").append(rule.severity, STYLE[rule.severity])
    head.append(f", {rule.family}: {rule.title}")
    head.spans.insert(0, (0, len(head.plain), "bold"))
    out.print(head)
    out.print()
    for line in rule.doc.splitlines():
        out.print(Styled(line[3:], "bold") if line.startswith("## ") else line)


def render(rules: list[Rule], one: bool, as_json: bool) -> None:
    """The table, one rule's text, or JSON."""
    if as_json:
        write_document(to_json(rules))
    elif one:
        render_rule(rules[0])
    else:
        render_table(rules)
