"""What torch's pickles may name, and two opcode-level passes that run before or beside the unpickler.

- The allow-list: the globals the static unpickler (:mod:`bninspect.formats.unpickler`) maps
  to inert stand-ins (tensor rebuilds, storages, dtypes, a few containers). Everything else
  becomes an opaque record there and is judged by :mod:`bninspect.formats.verdict`. An
  allow-list, not a deny-list: deny-lists miss globals such as ``builtins.exec``,
  ``operator.attrgetter`` or ``torch.load`` itself, and here nothing outside it even
  becomes callable.
- ``check_memo_indices``: lengths only, before the C unpickler sees a byte (memo bombs).
- ``scan_globals``: the globals a pickle names, from its opcodes alone (``pickletools.genops``
  decodes, executes nothing), for the verdict on a pickle too malformed to load.
"""

from __future__ import annotations

import _compat_pickle
import functools
import io
import pickletools
import re
import sys
from collections.abc import Callable


# torch's storage classes (the typed-storage names torch.save still writes in persistent ids)
# and the dtype of one element of each.
STORAGE_DTYPES: dict[str, str] = {
    "torch.DoubleStorage": "float64",
    "torch.FloatStorage": "float32",
    "torch.HalfStorage": "float16",
    "torch.BFloat16Storage": "bfloat16",
    "torch.LongStorage": "int64",
    "torch.IntStorage": "int32",
    "torch.ShortStorage": "int16",
    "torch.CharStorage": "int8",
    "torch.ByteStorage": "uint8",
    "torch.BoolStorage": "bool",
    "torch.ComplexFloatStorage": "complex64",
    "torch.ComplexDoubleStorage": "complex128",
    # Untyped storages count bytes; the tensor rebuilt on them is read as bytes too.
    "torch.UntypedStorage": "uint8",
    "torch.storage.UntypedStorage": "uint8",
    "torch.storage.TypedStorage": "uint8",
}

# torch dtypes pickle as globals of the torch module ("torch float32"); aliases included.
DTYPE_GLOBALS: dict[str, str] = {
    f"torch.{name}": canonical
    for canonical, names in {
        "float64": ("float64", "double"),
        "float32": ("float32", "float"),
        "float16": ("float16", "half"),
        "bfloat16": ("bfloat16",),
        "int64": ("int64", "long"),
        "int32": ("int32", "int"),
        "int16": ("int16", "short"),
        "int8": ("int8",),
        "uint8": ("uint8",),
        "bool": ("bool",),
        "complex64": ("complex64", "cfloat"),
        "complex128": ("complex128", "cdouble"),
    }.items()
    for name in names
}

# Everything else a torch.save state dict (plain, Lightning, with optimizer state) needs.
# Each is mapped to an inert stand-in by the reader; none of the real callables is ever called.
TENSOR_GLOBALS = frozenset({
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor",  # torch < 1.0 (legacy files)
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
    "torch._tensor._rebuild_from_type_v2",
    "torch.nn.parameter.Parameter",
    "torch.Tensor",
    "torch.Size",
    "torch.device",
    "collections.OrderedDict",
    "_codecs.encode",  # protocol 2 pickles bytes as _codecs.encode(str, "latin1")
    "builtins.set",
    "builtins.frozenset",
    "builtins.complex",
})

# TorchScript's data.pkl wraps lists with these; its module classes live under __torch__.
TORCHSCRIPT_GLOBALS = frozenset({
    "torch.jit._pickle.build_intlist",
    "torch.jit._pickle.build_doublelist",
    "torch.jit._pickle.build_boollist",
    "torch.jit._pickle.build_tensorlist",
    "torch.jit._pickle.restore_type_tag",
})
TORCHSCRIPT_CLASS_PREFIX = "__torch__."

def allowed(name: str, *, torchscript: bool = False) -> bool:
    """Whether the reader maps the global ``module.name`` to an inert stand-in."""
    if name in TENSOR_GLOBALS or name in STORAGE_DTYPES or name in DTYPE_GLOBALS:
        return True
    if torchscript:
        return name in TORCHSCRIPT_GLOBALS or name.startswith(TORCHSCRIPT_CLASS_PREFIX)
    return False


def normalize(module: str, name: str) -> str:
    """``module.name`` as Python 3 resolves it: protocol 0-2 pickles say ``__builtin__.set``."""
    module, name = resolve(module, name)
    return f"{module}.{name}"


def resolve(module: str, name: str) -> tuple[str, str]:
    """(module, name) as Python 3's unpickler maps Python 2 names (``__builtin__``, ``copy_reg``)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


_STRING_OPS = frozenset({
    "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8",
})
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})


def scan_globals(stream: io.BufferedIOBase | io.BytesIO) -> tuple[list[str], int]:
    """Every global one pickle imports, in order of first use, and the offset after its STOP.

    Reads opcodes only. A ``STACK_GLOBAL`` whose module and name are not the two strings
    pushed just before it (a legitimate pickler always writes them that way) is reported as
    ``<computed global>`` so it is refused too. Raises ValueError on a malformed pickle.
    """
    names: list[str] = []
    seen: set[str] = set()
    memo: dict[int, object] = {}
    recent: list[object] = []  # what the last opcodes pushed: a str, or None for anything else
    end = 0

    def add(name: str) -> None:
        if name not in seen:
            seen.add(name)
            names.append(name)

    for op, arg, pos in pickletools.genops(stream):
        kind = op.name
        if kind in _STRING_OPS:
            recent.append(arg if isinstance(arg, str) else None)
        elif kind == "MEMOIZE":
            memo[len(memo)] = recent[-1] if recent else None
        elif kind in _PUT_OPS:
            memo[int(arg)] = recent[-1] if recent else None
        elif kind in _GET_OPS:
            recent.append(memo.get(int(arg)))
        elif kind in ("GLOBAL", "INST"):
            module, _, name = str(arg).partition(" ")
            add(normalize(module, name))
            recent.append(None)
        elif kind == "STACK_GLOBAL":
            if len(recent) >= 2 and isinstance(recent[-2], str) and isinstance(recent[-1], str):
                add(normalize(recent[-2], recent[-1]))
            else:
                add("<computed global>")
            recent.append(None)
        elif kind in ("EXT1", "EXT2", "EXT4"):
            add(f"<copyreg extension {arg}>")
            recent.append(None)
        elif kind == "STOP":
            end = pos + 1
        elif kind not in ("FRAME", "PROTO"):
            recent.append(None)
        if len(recent) > 64:
            del recent[:-8]
    return names, end


# -- structure check before the C unpickler -----------------------------------------------------
#
# CPython's C unpickler keeps its memo in an array it grows to twice the largest index a PUT
# names, and zero-fills it: ``LONG_BINPUT 0x20000000`` alone makes it allocate and touch 8 GiB
# (measured: 18 GB peak RSS from a 10-byte pickle). A real pickler numbers memo entries 0, 1,
# 2, ... and every entry takes at least a byte of pickle, so an index as large as the pickle's
# length is never legitimate; refusing those caps the memo at 16 bytes per pickle byte, and needs
# no count of entries (a Python loop over every opcode; benchmarks/README.md).
# BINPUT's one-byte index cannot grow the array past 512 entries, nor MEMOIZE (the next free
# index) by more than one entry per opcode.
#
# The walk decodes lengths only; nothing is built. A regular expression takes runs of
# well-formed opcodes in C (about 50 ns each); what it leaves (STOP, PUT, long strings, a
# LONG_BINPUT at or above its power-of-two bound, anything malformed) is stepped here in Python.

_PUT, _LONG_BINPUT, _STOP = 0x70, 0x72, 0x2E
_BINUNICODE, _SHORT_BINUNICODE = 0x58, 0x8C
# Strings shorter than this (dict keys, storage keys) are matched by the regular expression;
# each count needs a branch of its own, compiled once per process.
_SHORT_STRING = 64


def _opcode_tables() -> tuple[bytes, bytes]:
    """Per opcode byte, its argument kind and size, as two bytes objects (fast to index).

    Kinds: 0 fixed-size argument (size = its length), 1 newline-terminated (size = how many
    lines), 2 counted (size = length of the count field), 255 not an opcode.
    """
    kinds, sizes = bytearray([255] * 256), bytearray(256)
    for op in pickletools.opcodes:
        arg, code = op.arg, ord(op.code)
        if arg is None:
            kinds[code], sizes[code] = 0, 0
        elif arg.n >= 0:
            kinds[code], sizes[code] = 0, arg.n
        elif arg.n == pickletools.UP_TO_NEWLINE:
            kinds[code], sizes[code] = 1, 2 if op.name in ("GLOBAL", "INST") else 1
        elif arg.n == pickletools.TAKEN_FROM_ARGUMENT1:
            kinds[code], sizes[code] = 2, 1
        elif arg.n in (pickletools.TAKEN_FROM_ARGUMENT4, pickletools.TAKEN_FROM_ARGUMENT4U):
            kinds[code], sizes[code] = 2, 4
        elif arg.n == pickletools.TAKEN_FROM_ARGUMENT8U:
            kinds[code], sizes[code] = 2, 8
    return bytes(kinds), bytes(sizes)


_KINDS, _SIZES = _opcode_tables()


def _byte(value: int) -> bytes:
    return re.escape(bytes([value]))


def _one_of(codes: list[int]) -> bytes:
    return b"[" + b"".join(map(_byte, codes)) + b"]"


def _counted(low: int, high: int, zeros: int) -> bytes:
    r"""A string's count (one byte in ``low..high``, then ``zeros`` zero bytes) and as many bytes.

    A regular expression cannot read a count, so this is a binary search on the count byte
    by lookahead, down to one branch per count: ``\x05\x00\x00\x00.{5}``.
    """
    if low == high:
        return _byte(low) + b"\x00" * zeros + (b".{%d}" % low if low else b"")
    mid = (low + high) // 2
    return (b"(?:(?=[" + _byte(low) + b"-" + _byte(mid) + b"])" + _counted(low, mid, zeros)
            + b"|" + _counted(mid + 1, high, zeros) + b")")


def _long_binput_below(bits: int) -> bytes:
    """LONG_BINPUT with an index below ``2**bits``: its four little-endian bytes, high ones zero."""
    whole, rest = divmod(min(bits, 32), 8)
    top = b"[\x00-" + _byte((1 << rest) - 1) + b"]" if rest else b""
    return _byte(_LONG_BINPUT) + b"." * whole + top + b"\x00" * (4 - whole - (1 if rest else 0))


@functools.cache
def _run_matcher(bits: int) -> Callable[[bytes, int], re.Match[bytes]]:
    """``match(data, pos)`` of the longest run of well-formed opcodes from ``pos`` (possibly empty),
    LONG_BINPUT only below ``2**bits``, no STOP or PUT: those are for the Python step."""
    fixed: dict[int, list[int]] = {}
    lines: dict[int, list[int]] = {}
    for code in range(256):
        kind, size = _KINDS[code], _SIZES[code]
        if kind == 0 and code not in (_STOP, _LONG_BINPUT):
            fixed.setdefault(size, []).append(code)
        elif kind == 1 and code != _PUT:
            lines.setdefault(size, []).append(code)
    # The regex engine tries branches in order: the commonest in torch.save's pickles first
    # (LONG_BINPUT, then BINGET/BININT1/BINPUT, MARK/TUPLE/REDUCE..., BINUNICODE): a quarter faster.
    sized = {size: _one_of(codes) + b"." * size for size, codes in sorted(fixed.items())}
    branches = [_long_binput_below(bits), sized.pop(1), sized.pop(0), _byte(_BINUNICODE) + _counted(0, _SHORT_STRING - 1, 3),
                *sized.values(), _byte(_SHORT_BINUNICODE) + _counted(0, _SHORT_STRING - 1, 0)]
    branches += [_one_of(codes) + b"[^\n]*\n" * count for count, codes in sorted(lines.items())]
    # Possessive: no backtracking state is kept per opcode. Python 3.10's re has no possessive
    # repeat (3.11+); a greedy one matches the same run (each branch is chosen by its opcode byte,
    # nothing follows to backtrack for) but keeps state per opcode, so there it is bounded at 1024
    # opcodes a match and the loop below steps one opcode between blocks (benchmarks/README.md).
    repeat = b")*+" if sys.version_info >= (3, 11) else b"){0,1024}"
    return re.compile(b"(?:" + b"|".join(branches) + repeat, re.DOTALL).match


def check_memo_indices(data: bytes) -> int:
    """The offset just past the pickle's STOP; ValueError when a PUT names a memo index as large
    as the pickle, or the pickle is malformed (or ends without STOP).

    Lengths only, nothing is built, most opcodes matched in C (its speed: benchmarks/README.md).
    """
    end = len(data)
    kinds, sizes, number = _KINDS, _SIZES, int.from_bytes
    run = _run_matcher(max(end.bit_length() - 1, 0))
    i = 0
    while i < end:
        i = run(data, i).end()
        if i == end:
            break
        op = data[i]
        kind = kinds[op]
        i += 1
        if kind == 0:
            if op == _LONG_BINPUT:
                index = number(data[i:i + 4], "little")
                if index >= end:
                    raise ValueError(f"memo index {index} in a pickle of {end} bytes")
            elif op == _STOP:
                return i
            i += sizes[op]
        elif kind == 2:
            size = sizes[op]
            i += size + number(data[i:i + size], "little")
        elif kind == 1:
            for _ in range(sizes[op]):
                newline = data.find(b"\n", i)
                if newline < 0:
                    raise ValueError("pickle ends inside a text argument")
                if op == _PUT:
                    text = data[i:newline]
                    if len(text) > 12 or not text.isdigit() or int(text) >= end:
                        raise ValueError("absurd memo index")
                i = newline + 1
        else:
            raise ValueError(f"unknown opcode 0x{op:02x} at byte {i - 1}")
    raise ValueError("pickle ends without STOP")
