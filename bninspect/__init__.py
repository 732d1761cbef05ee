"""bninspect: understand and debug the BatchNorm layers of PyTorch checkpoints.

The command line is ``bninspect``; in Python the same commands are functions::

    import bninspect
    ck = bninspect.load("ckpt.pt")                 # the safe static reader; key=, eps=, trust=
    ck.layers["features.2.bn"].running_mean        # numpy array, C values
    bninspect.check("ckpt.pt").findings            # the same rules and codes as `bninspect check`
    bninspect.check(model)                         # a live torch.nn.Module, left unchanged

``import bninspect`` loads neither torch nor numpy; each function imports what it needs when
it is called (bninspect.api).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["load", "show", "explain", "check", "verify", "diff", "drift", "report",
           "Loaded", "Layer", "Result", "CheckResult", "Report",
           "BNInspectError", "UsageError", "UnsafeFileError", "InvalidFileError", "PathProblemError", "__version__"]

_ERRORS = frozenset({"BNInspectError", "UsageError", "UnsafeFileError", "InvalidFileError", "PathProblemError"})


def __getattr__(name: str) -> Any:
    """The public names, imported on first use (PEP 562): ``import bninspect`` stays light."""
    if name in _ERRORS:
        from bninspect import errors

        return getattr(errors, name)
    if name in __all__:
        from bninspect import api

        return getattr(api, name)
    raise AttributeError(f"module 'bninspect' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
