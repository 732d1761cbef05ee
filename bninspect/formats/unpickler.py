"""The one static unpickler: every pickle bninspect reads goes through it, and nothing in it runs.

A pickle acts only through the globals it names (``GLOBAL``, ``STACK_GLOBAL``, ``INST``, ``EXT*``
all end in ``find_class``). Here ``find_class`` never imports: a short allow-list (tensor
rebuilds, storages, dtypes, a few plain containers) gets inert stand-ins from the reader, and
every other global becomes an :class:`Opaque` class made on the spot, named after the global
and empty of behaviour. What a real load would do with it is recorded instead of done:

- calling it (``REDUCE``, ``INST``/``OBJ``) or constructing it (``NEWOBJ``) makes an Opaque
  object holding the arguments;
- ``BUILD`` (``__setstate__``) records the state; ``APPENDS``/``SETITEMS``/``ADDITEMS`` on an
  object record the items (a defaultdict's entries, a deque's items);
- calling an object the pickle built (a ``functools.partial``, the result of a ``getattr``)
  makes a :class:`CalledObject`.

So the file's data (dicts, lists, tensors as lazy references, a pickled module's attributes)
is read as data, and :mod:`bninspect.formats.verdict` judges afterwards which of the recorded
calls a real ``torch.load`` would make. Nothing of the file is imported, called or executed.

Bounded by construction, for every pickle of every format:

- **memory**: the unpickler reads its input in chunks of :data:`CHUNK` bytes through
  :class:`_Source`, and between chunks the process's resident memory may have grown by at
  most :data:`MAX_GROWTH` since the load began (an opcode flood, 12 MiB of ``EMPTY_SET``,
  would otherwise build gigabytes); stand-ins that build from their arguments (bytes, sets,
  sizes) charge what they build against the same kind of budget (:class:`Log.charge`);
- **nesting**: hashing a tuple recurses in C, so a dict key or set element that is a tuple
  nested 200,000 deep kills the process (SIGSEGV) on an 8 MiB stack. Each nesting level is a
  tuple of 48 bytes, so the memory budget bounds the depth (``MAX_GROWTH / 48`` levels, fewer
  for a short pickle: a level costs at least one opcode byte), and the load runs in a thread
  whose stack holds that depth at :data:`STACK_PER_LEVEL` bytes a level (64 measured on
  CPython 3.10 to 3.13); a pickle of at most :data:`INLINE_BYTES` cannot nest deep enough to
  need more than the main thread's stack, and loads there. Only what a deep hash touches is ever resident, and it counts
  against the memory budget at the next chunk: tuples and stack together stay near 1.2 GiB;
- **memo**: the memo-index check in :mod:`bninspect.formats.pickles` runs first (a single
  ``LONG_BINPUT`` must not make the C unpickler allocate gigabytes);
- **names**: at most :data:`MAX_GLOBALS` distinct globals per pickle (each is a class).
"""

from __future__ import annotations

import io
import os
import pickle
import sys
import threading
from typing import Any, Callable, ClassVar

from bninspect.errors import BNInspectError, InvalidFileError
from bninspect.formats.pickles import check_memo_indices, resolve

# Memory one unpickle may add to the process (resident set size, checked between chunks).
# A 10,000-layer state dict adds about 150 MiB, a pickled model of 1,000 modules far less.
MAX_GROWTH = 512 << 20
# The C unpickler asks for this much at a time when it can peek (CPython's PREFETCH): the
# memory check runs once per chunk, and one chunk of the worst opcodes builds ~30 MiB at most.
CHUNK = 128 << 10
# Stack per level of tuple nesting the load thread reserves: hash() of nested tuples takes 64
# bytes a level on CPython 3.10-3.13 (measured); twice that for other builds.
STACK_PER_LEVEL = 128
TUPLE_BYTES = 48  # a 1-tuple with its GC header (measured): what one level of nesting costs in memory
MIN_STACK = 16 << 20
# Pickles up to this size are loaded on the main thread (see _inline_ok).
INLINE_BYTES = 32 << 10
# Distinct globals in one pickle: a torch.save'd model names a few dozen classes.
MAX_GLOBALS = 10_000
# What stand-ins may build from their arguments (bytes, sets, sizes) in one pickle: protocol
# 2 pickles bytes as _codecs.encode(str), so a memo'd 1 MiB string re-encoded a thousand
# times costs 1 MiB of pickle per call otherwise.
MAX_BUILT = 512 << 20


class Opaque:
    """An object of a class the file names, read as data: the class was never imported.

    ``args``/``kwargs``: what the pickle passed when it called or constructed the class;
    ``state``: what ``BUILD`` gave it (a pickled object's ``__dict__``, a module's attributes);
    ``items``/``entries``: what ``APPENDS``/``SETITEMS`` added (a deque, a defaultdict).
    ``called``: True when the pickle *called* the global (REDUCE), False when it only
    constructed an instance (NEWOBJ), as protocol 2+ pickles do for plain classes.
    """

    __slots__ = ("args", "kwargs", "state", "items", "entries", "called")
    qualname: ClassVar[str] = ""  # the global: "argparse.Namespace"
    attr: ClassVar[str] = ""  # its name within the module: "Namespace", "Path.write_text"
    log: ClassVar["Log"]

    def __new__(cls, *args: Any, **kwargs: Any) -> "Opaque":
        self = object.__new__(cls)
        self.args, self.kwargs = args, kwargs
        self.state = self.items = self.entries = None
        self.called = False
        cls.log.made(cls.qualname, self)
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # type.__call__ runs __init__ after __new__: the pickle called the global (REDUCE).
        # NEWOBJ calls __new__ alone: a plain instance construction.
        self.called = True

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def append(self, item: Any) -> None:
        if self.items is None:
            self.items = []
        self.items.append(item)

    def extend(self, items: Any) -> None:
        if self.items is None:
            self.items = []
        self.items.extend(items)

    add = append  # ADDITEMS on an object that is not a set

    def __setitem__(self, key: Any, value: Any) -> None:
        if self.entries is None:
            self.entries = []
        self.entries.append((key, value))

    def __call__(self, *args: Any, **kwargs: Any) -> "CalledObject":
        return CalledObject(self, args, kwargs)

    def __repr__(self) -> str:
        return f"<{self.qualname} read as data>"


class CalledObject:
    """The result of the pickle calling an object it built (a partial, a getattr result): the
    call a real load would make, recorded with its arguments."""

    __slots__ = ("callee", "args", "kwargs")

    def __init__(self, callee: Any, args: tuple, kwargs: dict) -> None:
        self.callee, self.args, self.kwargs = callee, args, kwargs
        log = getattr(callee, "log", None)
        if log is not None:
            log.object_calls.append(self)

    def __call__(self, *args: Any, **kwargs: Any) -> "CalledObject":
        return CalledObject(self, args, kwargs)

    def __repr__(self) -> str:
        return "<call of an object from the file>"


def is_opaque_class(value: Any) -> bool:
    """Whether ``value`` is a global the file named, unimported (a class or a function alike)."""
    return isinstance(value, type) and issubclass(value, Opaque)


class Log:
    """What one load saw: the globals it named and what it did with each.

    ``names``: global → [references (find_class), instances made, first instance or None];
    ``object_calls``: calls of objects the pickle built. A stand-in that builds from its
    arguments charges what it builds (:meth:`charge`).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.names: dict[str, list[Any]] = {}
        self.classes: dict[str, type] = {}
        self.object_calls: list[CalledObject] = []
        self.built = 0

    def opaque_class(self, name: str, attr: str) -> type:
        """The Opaque class that stands for the global ``name`` in this load (one per name);
        ``attr`` is its part after the module ("Namespace", "Path.write_text")."""
        cls = self.classes.get(name)
        if cls is None:
            if len(self.classes) >= MAX_GLOBALS:
                raise InvalidFileError(f"the pickle names more than {MAX_GLOBALS} distinct globals; "
                                       "bninspect does not read that many", path=self.path)
            cls = type("Opaque", (Opaque,), {"__slots__": (), "qualname": name, "attr": attr, "log": self})
            self.classes[name] = cls
        return cls

    def referenced(self, name: str) -> None:
        entry = self.names.get(name)
        if entry is None:
            self.names[name] = [1, 0, None]
        else:
            entry[0] += 1

    def made(self, name: str, obj: Opaque) -> None:
        entry = self.names.setdefault(name, [0, 0, None])
        entry[1] += 1
        if entry[2] is None:
            entry[2] = obj

    def charge(self, size: int) -> None:
        """Count ``size`` bytes a stand-in is about to build; InvalidFileError past MAX_BUILT."""
        self.built += size
        if self.built > MAX_BUILT:
            raise InvalidFileError(f"its pickle builds more than {MAX_BUILT >> 20} MiB of values from repeated "
                                   "references; bninspect does not read it", path=self.path)


# -- memory: the input in chunks, and a look at the process's memory between them --------------

def _resident_bytes() -> Callable[[], int]:
    """A function returning this process's resident memory in bytes (cheap: a small read).

    /proc/self/statm where it exists (Linux); elsewhere the peak from getrusage, which only
    grows, so growth past the peak at the start is what is measured there.
    """
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        with open("/proc/self/statm", "rb") as f:
            int(f.read().split()[1])

        def statm() -> int:
            with open("/proc/self/statm", "rb") as f:
                return int(f.read().split()[1]) * page

        return statm
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import resource

        scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux KiB

        return lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    except ImportError:  # no way to look (Windows): only the other bounds hold there
        return lambda: 0


_resident = _resident_bytes()


class _Source(io.RawIOBase):
    """One pickle handed to the C unpickler a chunk at a time, with a memory check per chunk."""

    def __init__(self, data: bytes, path: str, what: str) -> None:
        super().__init__()
        self.data = data
        self.view = memoryview(data)
        self.pos = 0
        self.path = path
        self.what = what
        self.limit = _resident() + MAX_GROWTH

    def _checked(self) -> None:
        if _resident() > self.limit:
            raise InvalidFileError(f"reading {self.what} would take more than {MAX_GROWTH >> 20} MiB of memory "
                                   "(a flood of pickle opcodes); bninspect stops here", path=self.path)

    def readable(self) -> bool:
        return True

    def peek(self, size: int = 0) -> bytes:
        self._checked()
        return bytes(self.view[self.pos:self.pos + max(min(size, CHUNK), 1)])

    def read(self, size: int | None = -1) -> bytes:
        self._checked()
        end = len(self.data) if size is None or size < 0 else self.pos + size
        chunk = bytes(self.view[self.pos:end])
        self.pos += len(chunk)
        return chunk

    def readinto(self, buffer: Any) -> int:
        self._checked()
        chunk = self.view[self.pos:self.pos + len(buffer)]
        buffer[:len(chunk)] = chunk
        self.pos += len(chunk)
        return len(chunk)

    def readline(self, size: int | None = -1) -> bytes:
        self._checked()
        newline = self.data.find(b"\n", self.pos)
        stop = len(self.data) if newline < 0 else newline + 1
        line = bytes(self.view[self.pos:stop])
        self.pos = stop
        return line


class _Unpickler(pickle.Unpickler):
    """The C unpickler with ``find_class`` asking the reader first and making Opaque classes for
    the rest. ``persistent_load`` is the reader's (storages)."""

    def __init__(self, source: _Source, find: Callable[[str], Any], log: Log,
                 persistent_load: Callable[[Any], Any] | None) -> None:
        super().__init__(source)
        self.find = find
        self.log = log
        if persistent_load is not None:
            self.persistent_load = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        if not isinstance(module, str) or not isinstance(name, str):
            raise InvalidFileError("corrupt pickle: a global named by something other than text", path=self.log.path)
        module, name = resolve(module, name)
        full = f"{module}.{name}"
        self.log.referenced(full)
        found = self.find(full)
        return found if found is not None else self.log.opaque_class(full, name)


def _inline_ok(size: int) -> bool:
    """Whether a pickle of ``size`` bytes may be loaded on the calling thread: it cannot nest
    deeper than it has bytes, and at 64 bytes a level a 32 KiB pickle needs at most 2 MiB of the
    main thread's stack (at least 8 MiB on Linux and macOS). A thread costs ~1-2 ms to start, a
    third of `check`'s time on a small file, and most pickles are that small."""
    if size > INLINE_BYTES or threading.current_thread() is not threading.main_thread():
        return False
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_STACK)
    except (ImportError, OSError, ValueError):
        return False
    return soft == resource.RLIM_INFINITY or soft >= 8 << 20


def _stack_for(size: int) -> int:
    """Stack for a load thread: room for the deepest tuple nesting a pickle of ``size`` bytes
    can build within the memory budget."""
    levels = min(size, MAX_GROWTH // TUPLE_BYTES)
    return max(MIN_STACK, levels * STACK_PER_LEVEL + MIN_STACK)


def _in_thread(fn: Callable[[], Any], stack: int) -> Any:
    """``fn()`` in a thread with ``stack`` bytes of stack; its result, or its exception re-raised here."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller below, not lost in the thread
            box["error"] = exc

    previous = threading.stack_size()
    try:
        threading.stack_size(stack)
        thread = threading.Thread(target=target, name="bninspect-unpickle", daemon=True)
        thread.start()
    finally:
        threading.stack_size(previous)
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def load(data: bytes, *, path: str, what: str, find: Callable[[str], Any], log: Log,
         persistent_load: Callable[[Any], Any] | None = None) -> Any:
    """Unpickle the pickle ``data`` statically and return its object.

    ``find(name)`` returns the reader's stand-in for an allowed global, or None for an Opaque
    class. ``what`` names the pickle in messages ("data.pkl"). Malformed input is an
    InvalidFileError saying so; the reader's own errors pass through.
    """
    try:
        check_memo_indices(data)
    except ValueError as exc:
        raise InvalidFileError(f"{what} is corrupt ({exc})", path=path) from None
    unpickler = _Unpickler(_Source(data, path, what), find, log, persistent_load)
    try:
        if _inline_ok(len(data)):
            return unpickler.load()
        return _in_thread(unpickler.load, _stack_for(len(data)))
    except BNInspectError:
        raise
    except RecursionError:
        raise InvalidFileError(f"{what} is nested too deeply to read", path=path) from None
    except MemoryError:
        raise InvalidFileError(f"reading {what} would take more memory than bninspect allows", path=path) from None
    except Exception as exc:  # UnpicklingError, EOFError, TypeError from malformed opcodes...
        raise InvalidFileError(f"{what} is corrupt ({type(exc).__name__} while unpickling)", path=path) from None
