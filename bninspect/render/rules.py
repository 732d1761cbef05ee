"""Render the rule registry: the table of rules, one rule's documentation, or JSON."""

from __future__ import annotations

import sys

from bninspect.render.common import console
from bninspect.render.jsondoc import dumps
from bninspect.rules import Rule

# rich is imported only by the functions that draw: `rules --json` never loads it.

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


def render_table(rules: list[Rule]) -> None:
    """One row per rule: code, default severity, family, name, title."""
    from rich.table import Table
    from rich.text import Text

    table = Table(header_style="bold", pad_edge=False)
    for col in ("code", "severity", "family", "name", "title"):
        table.add_column(col, overflow="fold")
    for r in rules:
        table.add_row(r.code, Text(r.severity, style=STYLE[r.severity]), r.family, r.name, r.title)
    out = console()
    out.print(table)
    out.print(Text("Details: bninspect rules CODE. Select with check --select/--ignore (codes or prefixes such as BN1).", style="dim"))


def render_rule(rule: Rule) -> None:
    """One rule's full documentation (what, why, example, fix), as written next to its code."""
    from rich.text import Text

    out = console()
    head = Text(f"{rule.code} ", style="bold")
    head.append(f"({rule.name}) ")
    head.append(rule.severity, style=STYLE[rule.severity])
    head.append(f", {rule.family}: {rule.title}")
    out.print(head)
    out.print()
    for line in rule.doc.splitlines():
        if line.startswith("## "):
            out.print(Text(line[3:], style="bold"))
        else:
            out.print(Text(line))


def render(rules: list[Rule], one: bool, as_json: bool) -> None:
    """The table, one rule's text, or JSON."""
    if as_json:
        sys.stdout.write(to_json(rules) + "\n")
    elif one:
        render_rule(rules[0])
    else:
        render_table(rules)
