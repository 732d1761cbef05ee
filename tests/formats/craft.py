"""Build real torch files, and hostile or broken variants of them, for the loading-layer tests.

Hostile pickles are made the way an attacker makes them: ``__reduce__`` returning a real
callable (``builtins.exec``, ``operator.attrgetter``, ``torch.load``), so each payload is one
``torch.load(weights_only=False)`` away from running. The tests check it never runs.
"""

from __future__ import annotations

import builtins
import io
import operator
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn


class Payload:
    """Unpickling this runs ``exec`` that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').write('ran')",))


class Getter:
    """A global deny-lists miss: operator.attrgetter (a building block of gadget chains)."""

    def __reduce__(self):
        return (operator.attrgetter, ("__class__",))


class TorchLoad:
    """torch.load itself as a global: it would load a second file with whatever options."""

    def __init__(self, other: Path) -> None:
        self.other = str(other)

    def __reduce__(self):
        return (torch.load, (self.other,))


class TinyNet(nn.Module):
    """conv → BN(eps=1e-3, momentum=0.01) → depthwise conv → BN(momentum=None) → BN(affine=False)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, bias=False)
        self.bn = nn.BatchNorm2d(8, eps=1e-3, momentum=0.01)
        self.dw = nn.Conv2d(8, 8, 3, groups=8)
        self.bn2 = nn.BatchNorm2d(8, momentum=None)
        self.bn3 = nn.BatchNorm2d(8, affine=False)
        self.head = nn.Sequential(nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4, track_running_stats=False))

    def forward(self, x):
        return self.head(self.bn3(self.bn2(self.dw(self.bn(self.conv(x))))))


def trained_net(seed: int = 0) -> TinyNet:
    """A TinyNet with non-trivial running statistics (two training steps), in eval mode."""
    torch.manual_seed(seed)
    net = TinyNet()
    net.train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.randn(4, 3, 12, 12))
    return net.eval()


# -- crafting torch.save zip archives by hand -------------------------------------------------

class Storage:
    """Stands for a storage in a crafted pickle: becomes ('storage', cls, key, 'cpu', numel)."""

    def __init__(self, key: str, numel: int, cls=torch.FloatStorage) -> None:
        self.key, self.numel, self.cls = key, numel, cls


class Tensor:
    """Pickles as torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)."""

    def __init__(self, storage: Storage, offset: int, size: tuple, stride: tuple) -> None:
        self.args = (storage, offset, size, stride)

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, (*self.args, False, OrderedDict()))


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.cls, obj.key, "cpu", obj.numel)
        return None


def dumps(obj, protocol: int = 2) -> bytes:
    """Pickle ``obj`` as torch.save would (Storage objects become persistent ids)."""
    buf = io.BytesIO()
    _Pickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


def write_zip(path: Path, data_pkl: bytes | None, records: dict[str, bytes], name: str = "archive") -> Path:
    """A torch.save-style zip: ``name/data.pkl``, ``name/data/<key>`` records, version, byteorder."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        if data_pkl is not None:
            zf.writestr(f"{name}/data.pkl", data_pkl)
        zf.writestr(f"{name}/byteorder", "little")
        for key, raw in records.items():
            zf.writestr(f"{name}/data/{key}", raw)
        zf.writestr(f"{name}/version", "3\n")
    return path


def rewrite_zip(src: Path, dst: Path, change) -> Path:
    """Copy a zip member by member; ``change(name, data)`` returns new bytes or None to drop it."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = change(info.filename, zin.read(info))
            if data is not None:
                zout.writestr(info.filename, data)
    return dst


def record_offset(path: Path, suffix: str) -> tuple[int, int]:
    """(data offset, size) of the first zip member whose name ends with ``suffix``."""
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(suffix))
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def safetensors_bytes(header: dict | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    """A safetensors file from a header (dict → JSON) and a data area; ``length`` overrides N."""
    import json

    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if length is None else length
    return struct.pack("<Q", n) + raw + data
