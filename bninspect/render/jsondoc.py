"""JSON documents: dataclasses and numpy values made plain, every document with a schema."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
from typing import Any


def plain(obj: Any) -> Any:
    """Dataclasses, numpy scalars/arrays and tuples turned into JSON types.

    Non-finite floats become the strings "NaN", "Infinity", "-Infinity" (JSON has no NaN;
    a checkpoint with NaN statistics must still produce a valid document).
    Fields whose name starts with "_" are private and left out.
    """
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, float):
        if math.isnan(obj):
            return "NaN"
        if math.isinf(obj):
            return "Infinity" if obj > 0 else "-Infinity"
        return obj
    if obj is None or isinstance(obj, (str, int)):
        return obj
    try:
        return plain(_default(obj))
    except TypeError:
        return obj


def _is_dataclass_instance(obj: Any) -> bool:
    return hasattr(type(obj), "__dataclass_fields__")


@functools.cache
def _public_fields(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if not f.name.startswith("_"))


def _fields(obj: Any) -> dict[str, Any]:
    """A dataclass's public fields, one level deep (the encoder recurses)."""
    return {name: getattr(obj, name) for name in _public_fields(type(obj))}


def _default(obj: Any) -> Any:
    """One step towards JSON types for what neither JSON nor ``plain`` knows: a dataclass
    becomes its public fields, a numpy array a list, a numpy scalar a Python one. No value is a
    numpy one unless numpy is loaded, and `bninspect rules` never loads it."""
    if _is_dataclass_instance(obj):
        return _fields(obj)
    np = sys.modules.get("numpy")
    if np is not None and isinstance(obj, np.ndarray):
        return obj.tolist()
    if np is not None and isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


_SEPARATORS = (", ", ": ")
_fast = json.JSONEncoder(default=_default, allow_nan=True, ensure_ascii=False, separators=_SEPARATORS)
_strict = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=_SEPARATORS)

# Containers this deep or deeper are written on one line: a layer, a finding, a tensor entry.
_EXPANDED_DEPTH = 2


def _one_line(value: Any) -> str:
    """Compact JSON through the C encoder. It writes non-finite floats as bare NaN/Infinity,
    which JSON forbids; where the text has those letters at all (rare: broken statistics, or
    a message naming them) the value goes the careful way, through ``plain``."""
    text = _fast.encode(value)
    if "NaN" in text or "Infinity" in text:
        text = _strict.encode(plain(value))
    return text


def _layout(value: Any, depth: int) -> str:
    """The document's outer levels one entry per line, everything deeper on one line each.

    An indent-everywhere document (``json.dumps(indent=2)``) goes through the pure-Python
    encoder: 0.7 s of a 10,000-layer `show --json`, 4x the C encoder, and 600,000 lines.
    """
    if _is_dataclass_instance(value):
        value = _fields(value)
    if depth >= _EXPANDED_DEPTH or not value or not isinstance(value, (dict, list, tuple)):
        return _one_line(value)
    pad, end = "  " * (depth + 1), "  " * depth
    if isinstance(value, dict):
        items = [f"{pad}{_strict.encode(str(k))}: {_layout(v, depth + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + end + "}"
    return "[\n" + ",\n".join(pad + _layout(v, depth + 1) for v in value) + "\n" + end + "]"


def dumps(schema: str, body: dict[str, Any]) -> str:
    """A JSON document: ``{"schema": schema, ...body}``, strictly valid JSON, its outer levels
    one entry per line and each deeper value (a layer, a finding) on one line."""
    return _layout({"schema": schema, **body}, 0)


def safety(verdict: Any) -> dict[str, Any] | None:
    """A file's safety verdict (formats.verdict.Verdict) as the ``safety`` object of the show and
    check documents: every global by kind with its count and first place, and the packages a
    real load imports; None for formats whose load runs nothing (safetensors, ONNX, IR)."""
    if verdict is None:
        return None
    return {
        "refused": bool(verdict.refused),
        "packages": list(verdict.packages),
        "uses": [{"name": u.name, "kind": u.kind, "count": u.count, "where": u.where, "location": u.location,
                  "example": u.example} for u in verdict.uses],
    }
