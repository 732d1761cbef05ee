"""The pre-1.6 non-zip torch.save format, through ``torch.load(weights_only=True)``.

The format is a run of pickles (magic number, protocol version, system info, the object,
the storage keys) followed by raw storage bytes. We first list the globals of the leading
pickles statically (``pickles.scan_globals``) so a refusal names all of them; then torch's
own weights-only unpickler loads it. That second line of defence is only sound on torch
>= 2.6: before it, weights_only=True could be bypassed (CVE-2025-32434), so older torch is
refused outright. A refused load is never retried unsafely; only ``--trust`` goes further.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings

from bninspect.checkpoint import Checkpoint
from bninspect.errors import InvalidFileError, UnsafeFileError
from bninspect.formats import containers
from bninspect.formats.paths import open_regular
from bninspect.formats.pickles import TRUST_HINT, refuse_globals, scan_globals

# torch/serialization.py: MAGIC_NUMBER = 0x1950a86a20f9469cfc6c, pickled first as a LONG1.
MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
MIN_TORCH = (2, 6)
CORRUPT = "a legacy torch.save file that is corrupt or truncated"


def sniff(head: bytes) -> bool:
    """A pickle whose first value is torch's legacy magic number."""
    i = 0
    if head[:1] == b"\x80":  # PROTO n
        i = 2
    if head[i:i + 1] == b"\x95":  # FRAME (protocol 4+) with its 8-byte length
        i += 9
    return head[i:i + 12] == b"\x8a\x0a" + MAGIC


def require_safe_torch(path: str) -> None:
    """UnsafeFileError on torch < 2.6, whose weights_only=True could be bypassed (CVE-2025-32434)."""
    import torch

    parts = re.match(r"(\d+)\.(\d+)", torch.__version__)
    version = (int(parts.group(1)), int(parts.group(2))) if parts else (0, 0)
    if version < MIN_TORCH:
        raise UnsafeFileError(
            f"refused: torch {torch.__version__} is installed, and before 2.6 torch.load(weights_only=True) "
            "can be tricked into running code (CVE-2025-32434); upgrade torch to 2.6 or later",
            path=path,
        )


def _leading_globals(f, path: str) -> list[str]:
    names: list[str] = []
    try:
        # magic, protocol version, system info, the saved object, the storage keys: torch
        # unpickles all five, so a payload in any of them must be named here.
        for _ in range(5):
            found, _end = scan_globals(f)
            names.extend(n for n in found if n not in names)
    except Exception:  # a malformed pickle: let the reader say so below
        raise InvalidFileError(CORRUPT, path=path) from None
    return names


def read(path: str, *, trust: bool, key: str | None, strict: bool) -> Checkpoint:
    """Load with torch.load(weights_only=True) after a static scan; trusted load only with ``trust``."""
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as f:
        try:
            refuse_globals(_leading_globals(f, path), path=path)
        except UnsafeFileError:
            if not trust:
                raise
            from bninspect.formats import trusted

            return trusted.read(path, trust=trust, key=key, strict=strict)
        require_safe_torch(path)
        import torch

        f.seek(0)
        try:
            # torch warns on stderr (e.g. about pickle protocols); our output is one line at most.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                obj = torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            # torch names the global it stopped at ("GLOBAL builtins.exec was not an allowed
            # global"); we keep only the names, never its multi-line advice.
            text = str(exc)
            refused = sorted(set(re.findall(r"GLOBAL ([\w.]+)", text)))
            if refused:
                reason = f"torch's weights-only loader rejects globals ({', '.join(refused)})"
            elif "Unsupported operand" in text:
                # e.g. FRAME (protocol 4) in a legacy file: valid, but torch's safe unpickler lacks it.
                reason = "torch's weights-only loader does not support this file's pickle opcodes"
            else:
                raise InvalidFileError(CORRUPT, path=path) from None
            if trust:
                from bninspect.formats import trusted

                return trusted.read(path, trust=trust, key=key, strict=strict)
            raise UnsafeFileError(f"refused: {reason}; {TRUST_HINT}", path=path) from None
        except Exception:
            raise InvalidFileError(CORRUPT, path=path) from None
    from bninspect.formats.torchobj import to_tree

    return containers.build_checkpoint(to_tree(obj, path), path=path, format="torch-legacy", key=key)
