"""JSON documents: dataclasses and numpy values made plain, every document with a schema."""

from __future__ import annotations

import dataclasses
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
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if not f.name.startswith("_")}
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    # No value is a numpy one unless numpy is loaded, and `bninspect rules` never loads it.
    np = sys.modules.get("numpy")
    if np is not None and isinstance(obj, np.ndarray):
        return [plain(v) for v in obj.tolist()]
    if np is not None and isinstance(obj, np.generic):
        return plain(obj.item())
    if isinstance(obj, float):
        if math.isnan(obj):
            return "NaN"
        if math.isinf(obj):
            return "Infinity" if obj > 0 else "-Infinity"
        return obj
    return obj


def dumps(schema: str, body: dict[str, Any]) -> str:
    """A JSON document: ``{"schema": schema, ...body}``, indented, strictly valid JSON."""
    return json.dumps({"schema": schema, **plain(body)}, indent=2, allow_nan=False, ensure_ascii=False)
