"""The rule registry: every check rule by code, selection by code or prefix, and the runner.

Rules live one family per module (integrity BN0xx, statistics BN1xx, mode BN2xx, deployment
BN3xx, safety BN4xx); importing this package registers them all in :data:`RULES`, ordered by code.
"""

from __future__ import annotations

import difflib
from typing import Iterable

from bninspect.errors import UsageError
from bninspect.rules import deployment, integrity, mode, safety, statistics  # noqa: F401  (registration)
from bninspect.rules.base import REGISTRY, SEVERITIES, Context, Finding, Rule, Thresholds

RULES: dict[str, Rule] = dict(sorted(REGISTRY.items()))

__all__ = ["RULES", "SEVERITIES", "Context", "Finding", "Rule", "Thresholds", "find_rule", "run_rules", "select_rules"]


def _matching(pattern: str) -> list[str]:
    """The codes ``pattern`` (a code, a prefix or "ALL") names; a usage error when none."""
    p = pattern.strip().upper()
    hits = list(RULES) if p == "ALL" else [code for code in RULES if code.startswith(p)]
    if not hits:
        raise _unknown(pattern)
    return hits


def _unknown(pattern: str) -> UsageError:
    close = difflib.get_close_matches(pattern.upper(), list(RULES), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else f"codes are {next(iter(RULES))}…{list(RULES)[-1]} (see 'bninspect rules')"
    return UsageError(f"no rule matches '{pattern}'; {hint}")


def select_rules(select: Iterable[str] | None = None, ignore: Iterable[str] | None = None) -> list[Rule]:
    """The rules enabled by ``select`` (codes or prefixes like "BN1"; all when empty) minus ``ignore``.

    A code or prefix that matches no rule is a usage error (a typo must not silently disable a gate).
    """
    chosen: list[str] = []
    for pattern in select or ["ALL"]:
        chosen.extend(c for c in _matching(pattern) if c not in chosen)
    dropped = {c for pattern in ignore or [] for c in _matching(pattern)}
    return [RULES[c] for c in sorted(chosen) if c not in dropped]


def lookup(code: str | None) -> tuple[list[Rule], bool]:
    """What `bninspect rules [CODE]` shows: (rules, whether it is one rule's full text).

    A full code (BN101) is one rule; a prefix (BN1) or nothing is a table.
    """
    if code is None:
        return select_rules(), False
    if len(code.strip()) == 5:  # codes are BN + three digits
        return [find_rule(code)], True
    return select_rules([code]), False


def find_rule(code: str) -> Rule:
    """One rule by exact code (case-insensitive); a usage error suggesting close codes otherwise."""
    r = RULES.get(code.strip().upper())
    if r is None:
        raise _unknown(code)
    return r


def run_rules(ctx: Context, rules: Iterable[Rule]) -> list[Finding]:
    """Every finding of ``rules`` over the layers of ``ctx``: the file's own (safety) first, then
    in layer order, then by code."""
    rules = list(rules)
    order = {safety.FILE: -1, **{layer.name: i for i, layer in enumerate(ctx.layers)}}
    findings: list[Finding] = []
    for r in rules:
        if r.scope == "model":
            findings.extend(r.check(ctx))
        else:
            for layer in ctx.layers:
                findings.extend(r.check(layer, ctx))
    findings.sort(key=lambda f: (order.get(f.layer, len(order)), f.code))
    return findings
