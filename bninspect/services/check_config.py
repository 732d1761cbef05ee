"""`bninspect check`'s options: defaults, then the nearest ``[tool.bninspect]`` of a
pyproject.toml, then the flags given; every value checked before any file is read."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bninspect.errors import UsageError
from bninspect.rules import Rule, Thresholds, select_rules
from bninspect.services.common import validate_eps

FAIL_ON = ("error", "warning", "info", "never")
FORMATS = ("table", "concise")

# [tool.bninspect] keys (dashes or underscores) → CheckOptions/Thresholds fields and their types.
_CONFIG_KEYS: dict[str, type] = {
    "select": list, "ignore": list, "fail_on": str, "format": str,
    **{f.name: (float if f.name != "min_updates" else int) for f in fields(Thresholds)},
}


@dataclass
class CheckOptions:
    """Everything that decides what `check` reports (after merging pyproject and flags)."""

    select: list[str] = field(default_factory=list)
    ignore: list[str] = field(default_factory=list)
    fail_on: str = "error"
    format: str = "table"
    thresholds: Thresholds = field(default_factory=Thresholds)
    eps: float | None = None
    key: str | None = None
    strict: bool = False
    jobs: int = 1
    config: str | None = None  # the pyproject.toml whose [tool.bninspect] was applied
    debug: bool = False  # let a file's error propagate (with its traceback) instead of reporting it

    def rules(self) -> list[Rule]:
        """The rules ``select`` and ``ignore`` choose, in code order."""
        return select_rules(self.select, self.ignore)


def find_config(start: str | os.PathLike | None = None) -> tuple[str, dict[str, Any]] | None:
    """The nearest pyproject.toml with a [tool.bninspect] table, walking up from ``start`` (the
    current directory); files without the table are passed over, as ruff does with [tool.ruff]."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if not candidate.is_file():
            continue
        try:
            with open(candidate, "rb") as fh:
                doc = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UsageError(f"cannot read its [tool.bninspect] settings: {' '.join(str(exc).split())}", path=str(candidate)) from None
        table = doc.get("tool", {}).get("bninspect")
        if table is not None:
            if not isinstance(table, dict):
                raise UsageError("[tool.bninspect] must be a table", path=str(candidate))
            return str(candidate), table
    return None


def _config_value(path: str, key: str, value: Any) -> Any:
    name = key.replace("-", "_")
    kind = _CONFIG_KEYS.get(name)
    if kind is None:
        known = ", ".join(sorted(k.replace("_", "-") for k in _CONFIG_KEYS))
        raise UsageError(f"unknown key '{key}' in [tool.bninspect]; known keys: {known}", path=path)
    if kind is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UsageError(f"[tool.bninspect] {key} must be a list of rule codes or prefixes", path=path)
        return value
    if kind is str:
        if not isinstance(value, str):
            raise UsageError(f"[tool.bninspect] {key} must be a string", path=path)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
        raise UsageError(f"[tool.bninspect] {key} must be a{'n integer' if kind is int else ' number'}", path=path)
    return kind(value)


def resolve_options(flags: dict[str, Any], cwd: str | None = None) -> CheckOptions:
    """Defaults, then the nearest [tool.bninspect], then the flags given (None = not given)."""
    merged: dict[str, Any] = {}
    found = find_config(cwd)
    if found:
        path, table = found
        for key, value in table.items():
            merged[key.replace("-", "_")] = _config_value(path, key, value)
    merged.update({k: v for k, v in flags.items() if v is not None and v != []})
    thresholds = Thresholds(**{f.name: merged.pop(f.name) for f in fields(Thresholds) if f.name in merged})
    opts = CheckOptions(thresholds=thresholds, config=found[0] if found else None,
                        **{k: v for k, v in merged.items() if k in {f.name for f in fields(CheckOptions)}})
    _validate(opts)
    return opts


def _validate(opts: CheckOptions) -> None:
    if opts.fail_on not in FAIL_ON:
        raise UsageError(f"--fail-on must be one of {', '.join(FAIL_ON)}, not '{opts.fail_on}'")
    if opts.format not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not '{opts.format}'")
    if opts.jobs < 0:
        raise UsageError("--jobs must be 0 (one per CPU) or more")
    t = opts.thresholds
    for name in ("min_updates", "count_ratio", "max_scale", "outlier_z"):
        value = getattr(t, name)
        if not (math.isfinite(value) and value > 0):
            raise UsageError(f"--{name.replace('_', '-')} must be a positive number, not {value}")
    for name in ("dead_gamma", "eps_tolerance"):
        value = getattr(t, name)
        if not (math.isfinite(value) and value >= 0):
            raise UsageError(f"--{name.replace('_', '-')} must be zero or a positive number, not {value}")
    validate_eps(t.expect_eps, "--expect-eps")
    validate_eps(opts.eps)
    opts.rules()  # unknown codes are usage errors before any file is read
