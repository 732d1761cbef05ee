"""Loaders that run code from the file: only reached when the user passed ``--trust``.

``torch.load(weights_only=False)`` unpickles arbitrary globals (a full pickled ``nn.Module``
needs its class importable); ``torch.jit.load`` runs a TorchScript archive's code. Both are
the user's explicit choice; the safe readers never fall back to them on their own.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import warnings
from collections import deque
from typing import Any, Iterator

from bninspect.checkpoint import Checkpoint
from bninspect.errors import InvalidFileError
from bninspect.formats import containers, torchzip
from bninspect.formats.paths import open_regular, read_head

@contextlib.contextmanager
def _importable_beside(path: str) -> Iterator[None]:
    """Let a pickled model find its classes in the checkpoint's directory or the working directory.

    Appended, not prepended, so they never shadow installed packages; removed afterwards.
    """
    extra = [d for d in (os.getcwd(), os.path.dirname(os.path.abspath(path))) if d not in sys.path]
    sys.path.extend(extra)
    try:
        yield
    finally:
        for d in extra:
            with contextlib.suppress(ValueError):
                sys.path.remove(d)


def _missing_class(exc: BaseException) -> str | None:
    if isinstance(exc, ModuleNotFoundError):
        return f"module '{exc.name}'"
    # pickle says "Can't get attribute 'Net' on <module 'my_models' from '/path/my_models.py'>".
    found = re.search(r"attribute '([\w.]+)' on <module '([\w.]+)'", str(exc))
    if found:
        return f"class '{found.group(2)}.{found.group(1)}'"
    return "a class that no longer exists (" + " ".join(str(exc).split())[:120] + ")"


def load_object(path: str) -> Any:
    """What ``torch.load(weights_only=False)`` makes of a torch.save file (runs code from it; the
    user passed --trust), its classes importable from beside it; InvalidFileError in our words."""
    import torch

    fd = open_regular(path)
    with os.fdopen(fd, "rb") as f, _importable_beside(path):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return torch.load(f, map_location="cpu", weights_only=False)
        except (ModuleNotFoundError, AttributeError) as exc:
            raise InvalidFileError(
                f"the pickled model needs {_missing_class(exc)}, which cannot be imported here; "
                "run bninspect where the model's code is importable (PYTHONPATH)",
                path=path,
            ) from None
        except Exception as exc:
            raise InvalidFileError(f"torch.load failed on it ({type(exc).__name__})", path=path) from None


def read(path: str, *, key: str | None, strict: bool) -> Checkpoint:
    """Load a torch.save file (zip or legacy) with torch.load(weights_only=False): the user
    passed --trust (``formats.open_checkpoint`` decides that, and only there)."""
    from bninspect.formats.torchobj import to_tree

    obj = load_object(path)
    tree = to_tree(obj, path)
    fmt = "torch-zip" if read_head(path, 4) == b"PK\x03\x04" else "torch-legacy"
    checkpoint = containers.build_checkpoint(tree, path=path, format=fmt, key=key,
                                             notes=["loaded with --trust (torch.load weights_only=False)"])
    if checkpoint.modules:
        checkpoint.format = "pickled-module"
    return checkpoint


def _find_module(obj: Any) -> Any:
    import torch

    queue: deque[tuple[Any, int]] = deque([(obj, 0)])
    while queue:
        node, depth = queue.popleft()
        if isinstance(node, torch.nn.Module):
            return node
        if isinstance(node, dict) and depth < containers.MAX_DEPTH:
            queue.extend((v, depth + 1) for v in node.values())
    return None


def load_module(path: str) -> Any:
    """The real ``torch.nn.Module`` in a file (TorchScript or pickled module), built by running
    its code: the one place a model is made from a file, reached only when the user passed
    --trust (``running.build.load_model`` decides that)."""
    import torch

    if torchzip.sniff(read_head(path, 4)) and torchzip.is_torchscript(path):
        fd = open_regular(path)
        with os.fdopen(fd, "rb") as f:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return torch.jit.load(f, map_location="cpu")
            except Exception as exc:
                raise InvalidFileError(f"torch.jit.load failed on it ({type(exc).__name__})", path=path) from None
    module = _find_module(load_object(path))
    if module is None:
        raise InvalidFileError("holds weights but no model (nn.Module); a state dict needs the model's code", path=path)
    return module

