"""The safety verdict: what a real load of a file would do, judged from what the static reader recorded.

bninspect reads every pickle statically (:mod:`bninspect.formats.unpickler`), so reading is
safe whatever the file holds. The verdict is about the *other* program, the one that calls
``torch.load(weights_only=False)`` or ``torch.jit.load`` on the same file: every global the
pickle names falls in one of these kinds (:data:`KINDS`), from harmless to hostile:

- ``allowed``: tensor and storage rebuilds and plain containers, what torch's own weights-only
  loader allows;
- ``reconstructor``: functions from a reviewed list that only rebuild data (numpy's
  ``_reconstruct`` and ``scalar``, ``copyreg._reconstructor``, ``re._compile`` ...);
- ``class``: classes a real load imports and instantiates (``argparse.Namespace``, a model's
  ``nn.Module`` classes, OmegaConf's ``DictConfig``): the class's package runs, the file's
  code does not;
- ``reference``: globals named but never called (``typing.Any``, a defaultdict's factory);
- ``function``: a function outside the reviewed list, or an object the pickle built and then
  calls; what it does is not known, so a real load of it is not safe to assume;
- ``code-execution``: calls and references that run code or touch the system (``os.system``,
  ``builtins.exec``/``eval``/``getattr``, ``subprocess``, ``torch.load`` of other bytes, ...),
  from :data:`DANGEROUS_MODULES` and :data:`DANGEROUS_NAMES`;
- ``script-code``, ``custom-op``: TorchScript code that ``torch.jit.load`` runs (a
  ``__setstate__`` outside torch's own classes) and operators from libraries outside torch,
  found in the archive's code *text* (never run).

The reading commands refuse a file with ``code-execution`` or ``function`` uses (exit 3),
``check`` reports every kind above ``reference`` as a finding (rules BN401-BN404).
What the verdict cannot promise is in SECURITY.md: a class's own constructor is package
code that the verdict names but cannot read.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from bninspect.errors import BNInspectError, InvalidFileError, UnsafeFileError
from bninspect.formats import unpickler
from bninspect.formats.pickles import scan_globals
from bninspect.formats.unpickler import CalledObject, Log, Opaque, is_opaque_class
from bninspect.textfmt import visible

KINDS = ("allowed", "reconstructor", "class", "reference", "function", "code-execution", "script-code", "custom-op")
REFUSED_KINDS = frozenset({"code-execution", "function"})

# Modules every global of which (and of their submodules) runs code, starts processes, opens
# files or sockets, or loads other pickles. From picklescan's _unsafe_globals and fickling's
# UNSAFE_IMPORTS (public lists of pickle gadgets), extended with the loaders the torch
# documentation warns about; reviewed here.
DANGEROUS_MODULES = frozenset({
    "os", "posix", "nt", "subprocess", "pty", "socket", "shutil", "runpy", "importlib", "imp", "zipimport",
    "pkgutil", "webbrowser", "_osx_support", "_aix_support", "ctypes", "_ctypes", "cffi", "code", "codeop",
    "multiprocessing", "asyncio", "concurrent", "threading", "_thread", "signal", "sys", "marshal", "pickle",
    "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "pdb", "bdb", "timeit", "trace", "profile",
    "cProfile", "pydoc", "doctest", "idlelib", "lib2to3", "pip", "venv", "ensurepip", "distutils", "setuptools",
    "commands", "popen2", "requests", "urllib", "urllib2", "urllib3", "http", "httplib", "ftplib", "smtplib",
    "telnetlib", "ssl", "aiohttp", "tempfile", "_io", "io", "gc",
    "numpy.f2py", "numpy.testing", "numpy.ctypeslib", "numpy.distutils", "numpy.lib.npyio",
    "torch.hub", "torch.utils.cpp_extension", "torch._inductor", "torch._dynamo", "torch.jit.unsupported_tensor_ops",
    "torch.utils.bottleneck", "torch.utils.collect_env", "torch.utils._config_module", "torch.package",
    "torch.utils.data.datapipes.utils.decoder", "torch.distributed.rpc",
})
# Single globals that do the same from otherwise harmless modules.
DANGEROUS_NAMES = frozenset({
    "builtins.exec", "builtins.eval", "builtins.compile", "builtins.__import__", "builtins.getattr",
    "builtins.setattr", "builtins.delattr", "builtins.open", "builtins.input", "builtins.breakpoint",
    "builtins.globals", "builtins.locals", "builtins.vars", "builtins.apply", "builtins.execfile",
    "builtins.file", "builtins.reload", "builtins.__build_class__", "builtins.help", "builtins.exit", "builtins.quit",
    "operator.attrgetter", "operator.itemgetter", "operator.methodcaller", "functools.reduce",
    "codecs.open", "tarfile.open", "zipfile.ZipFile", "gzip.open", "bz2.open", "lzma.open",
    "types.FunctionType", "types.LambdaType", "types.CodeType", "types.MethodType", "types.new_class",
    "torch.load", "torch.serialization.load", "torch.serialization._legacy_load", "torch.jit.load",
    "torch.jit._serialization.load", "torch.storage._load_from_bytes", "torch.from_file", "torch.save",
    "torch.serialization.save", "torch.ops.load_library", "torch.classes.load_library",
    "numpy.load", "numpy.fromfile", "numpy.memmap", "numpy.save", "numpy.savez", "pandas.read_pickle",
    "torch.fx.experimental.symbolic_shapes.ShapeEnv.evaluate_guards_expression",
})

# Functions that only rebuild data from their arguments; the index of the argument that is a
# class the real load instantiates (None: no class argument).
RECONSTRUCTORS: dict[str, int | None] = {
    "copyreg._reconstructor": 0,
    "copyreg.__newobj__": 0,
    "copyreg.__newobj_ex__": 0,
    "numpy.core.multiarray._reconstruct": 0,
    "numpy._core.multiarray._reconstruct": 0,
    "numpy.core.multiarray.scalar": None,
    "numpy._core.multiarray.scalar": None,
    "numpy.core.numeric._frombuffer": None,
    "numpy._core.numeric._frombuffer": None,
    "re._compile": None,
    "_codecs.encode": None,
    "torch._utils._rebuild_tensor_v3": None,
    "torch._utils._rebuild_qtensor": None,
    "torch._utils._rebuild_sparse_tensor": None,
    "torch._utils._rebuild_sparse_csr_tensor": None,
    "torch._utils._rebuild_device_tensor_from_numpy": None,
    "torch._utils._rebuild_meta_tensor_no_storage": None,
    "torch._utils._rebuild_wrapper_subclass": None,
    "torch._utils._rebuild_nested_tensor": None,
    "torch._utils._rebuild_xla_tensor": None,
    "torch.serialization._get_layout": None,
    "torch._tensor._rebuild_from_type": None,
}

# Classes whose names do not look like classes (lowercase): called, they construct.
LOWERCASE_CLASSES = frozenset({
    "builtins.object", "builtins.dict", "builtins.list", "builtins.tuple", "builtins.set", "builtins.frozenset",
    "builtins.int", "builtins.float", "builtins.complex", "builtins.str", "builtins.bytes", "builtins.bytearray",
    "builtins.bool", "builtins.slice", "builtins.range", "builtins.type",
    "collections.defaultdict", "collections.deque", "functools.partial",
    "datetime.datetime", "datetime.date", "datetime.time", "datetime.timedelta", "datetime.timezone",
    "numpy.dtype", "numpy.ndarray", "numpy.float64", "numpy.float32", "numpy.float16", "numpy.int64",
    "numpy.int32", "numpy.bool_", "torch.device", "torch.dtype", "torch.finfo", "torch.iinfo",
})

# Top-level modules that ship with Python, torch itself, and numpy (whose reconstructors are
# reviewed above, and which torch's numpy interop imports): a real load importing them is no
# news. Everything else, the saving script's own `__main__` included, is a package the verdict names.
_BUNDLED = frozenset(getattr(sys, "stdlib_module_names", ())) | {"torch", "numpy", "__builtin__", "copy_reg", "__torch__"}

MAX_WALK = 2_000_000  # objects visited looking for where notable globals sit
_CALLED = "a call of the result of "  # how a use names the call of an object the pickle built
_SHOWN = 160  # characters of a call's arguments shown in a message


@dataclass
class Use:
    """One global (or TorchScript class / op) and what a real load would do with it."""

    name: str  # "posix.system", "argparse.Namespace", "__torch__.Hook.__setstate__", "myops::nms"
    kind: str  # one of KINDS
    count: int  # calls, constructions or references
    where: str = ""  # "data.pkl", "code/__torch__/net.py"
    location: str = ""  # first place it sits: 'under key "x"', "the whole pickle", ""
    example: str = ""  # the first call with its arguments, shortened: "posix.system('touch x')"

    @property
    def package(self) -> str:
        """The top-level package a real load imports for this global ("" for TorchScript items and
        calls of objects, which name no global of their own)."""
        if self.kind in ("script-code", "custom-op") or self.name.startswith(_CALLED):
            return ""
        return self.name.split(".", 1)[0]

    def describe(self) -> str:
        """For one line: the call with its arguments where known, then where it sits."""
        what = self.example or self.name
        place = ", ".join(p for p in (f"in {self.where}" if self.where else "", self.location) if p)
        return f"{what} ({place})" if place else what


@dataclass
class Verdict:
    """What a real load of the file would do, by kind; empty for safetensors, ONNX, IR."""

    uses: list[Use] = field(default_factory=list)

    def of(self, *kinds: str) -> list[Use]:
        return [u for u in self.uses if u.kind in kinds]

    @property
    def refused(self) -> list[Use]:
        """Uses for which the reading commands refuse the file: code execution first."""
        return self.of("code-execution") + self.of("function")

    @property
    def packages(self) -> list[str]:
        """Third-party packages a real load imports (torch and Python's own modules left out)."""
        found: list[str] = []
        for u in self.uses:
            p = u.package
            if p and p not in _BUNDLED and p not in found:
                found.append(p)
        return found

    def note(self) -> str:
        """For the reading commands: which objects were read as opaque data and which packages a
        real load would import; "" where the file holds only tensors and plain containers."""
        script = self.of("script-code")
        code = (f"torch.jit.load would run TorchScript code from the file ({visible(script[0].name)}"
                + (f" and {len(script) - 1} more" if len(script) > 1 else "") + "); bninspect read it as text") if script else ""
        ops = self.of("custom-op")
        if ops:
            names = ", ".join(u.name for u in ops[:4]) + (f" and {len(ops) - 4} more" if len(ops) > 4 else "")
            code = "; ".join(p for p in (code, f"it calls operators from libraries outside torch: {visible(names)}") if p)
        opaque = self.of("class", "reconstructor")
        if not opaque:
            return code
        names = [f"{u.name} ×{u.count}" if u.count > 1 else u.name for u in sorted(opaque, key=lambda u: -u.count)]
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        packages = self.packages
        needs = (f"; a real torch.load would import {', '.join(packages[:4])}"
                 + (f" and {len(packages) - 4} more" if len(packages) > 4 else "")) if packages else ""
        return "; ".join(p for p in (f"read as opaque data, nothing imported or run: {visible(shown)}{needs}", code) if p)

    def merge(self, other: "Verdict") -> None:
        """Add another pickle's uses (legacy files hold several; TorchScript has code too)."""
        for u in other.uses:
            same = next((mine for mine in self.uses if mine.name == u.name and mine.kind == u.kind), None)
            if same is None:
                self.uses.append(u)
            else:
                same.count += u.count


def classify(name: str, attr: str, called: bool, constructed: bool) -> str:
    """The kind of one global from its name and whether the pickle called or constructed it."""
    if dangerous(name):
        return "code-execution"
    if name in RECONSTRUCTORS:
        return "reconstructor"
    if constructed and not called:
        return "class"  # NEWOBJ: the pickler itself wrote a class construction
    if called:
        return "class" if looks_like_class(name, attr) else "function"
    return "reference"


def dangerous(name: str) -> bool:
    """Whether ``name`` (module.qualname) is a global that runs code or touches the system."""
    if name in DANGEROUS_NAMES:
        return True
    module = name
    while "." in module:
        module = module.rpartition(".")[0]
        if module in DANGEROUS_MODULES:
            return True
    return False


def looks_like_class(name: str, attr: str) -> bool:
    """A class by Python's naming convention (CapWords) or by the list of lowercase classes.

    Only a guess for names nobody reviewed: it decides between "class" and "function" for a
    global the pickle calls, and the dangerous lists are consulted before it. ``attr`` is the
    name within its module; a dotted one (``Path.write_text``) is a method, a function.
    """
    if name in LOWERCASE_CLASSES:
        return True
    return "." not in attr and attr[:1].isupper()


def judge(log: Log, root: Any, *, where: str) -> Verdict:
    """The verdict on one pickle from its load's :class:`Log` and the object it made.

    Globals that got the reader's stand-ins (tensor rebuilds, storages, dtypes, plain
    containers) are the ``allowed`` kind; every other one is judged by what the pickle did with it.
    """
    uses: list[Use] = [Use(name=name, kind="allowed", count=refs, where=where)
                       for name, (refs, _made, _first) in log.names.items() if name not in log.classes]
    firsts: dict[int, Use] = {}  # id of an object to locate → its use
    classes: dict[int, Use] = {}  # id of an Opaque class that is only referenced → its use
    constructed_by: dict[str, int] = {}
    for name, (_refs, made, first) in log.names.items():
        if name not in log.classes:
            continue
        if first is not None and first.args and name in RECONSTRUCTORS:
            index = RECONSTRUCTORS[name]
            cls = first.args[index] if index is not None and len(first.args) > index else None
            if is_opaque_class(cls):
                constructed_by[cls.qualname] = constructed_by.get(cls.qualname, 0) + made
    for name, (refs, made, first) in log.names.items():
        cls = log.classes.get(name)
        if cls is None:
            continue
        called = first is not None and _any_called(log, name)
        constructed = made > 0 or name in constructed_by
        kind = classify(name, cls.attr, called, constructed)
        use = Use(name=name, kind=kind, count=max(made, constructed_by.get(name, 0), 1 if refs else 0), where=where)
        if first is not None:
            use.example = _call_text(name, first) if kind in REFUSED_KINDS else ""
            firsts[id(first)] = use
        else:
            classes[id(cls)] = use
        uses.append(use)
    for call in log.object_calls:
        callee = call.callee
        made = f"{type(callee).qualname}(…)" if isinstance(callee, Opaque) else "a call"
        name = f"{_CALLED}{made}"
        use = next((u for u in uses if u.name == name), None)
        if use is None:
            use = Use(name=name, kind="function", count=0, where=where, example=_call_text(made, call))
            uses.append(use)
            firsts[id(call)] = use
        use.count += 1
    _locate(root, firsts, classes)
    order = {k: i for i, k in enumerate(KINDS)}
    uses.sort(key=lambda u: (-order[u.kind], u.name))
    return Verdict(uses=uses)


def _any_called(log: Log, name: str) -> bool:
    """Whether the pickle called (REDUCE) the global ``name`` rather than only constructing it.

    The first instance answers for all: a pickler writes one global one way.
    """
    first = log.names[name][2]
    return bool(first is not None and first.called)


def _call_text(name: str, obj: Any) -> str:
    """``name(arg, ...)`` with the recorded arguments, shortened and made printable."""
    args = getattr(obj, "args", ()) or ()
    parts = [_short(a) for a in args[:4]] + (["…"] if len(args) > 4 else [])
    text = f"{name}({', '.join(parts)})"
    return visible(text if len(text) <= _SHOWN else text[:_SHOWN - 1] + "…")


def _short(value: Any, depth: int = 0) -> str:
    """A bounded, printable rendering of one argument (strings quoted, containers sized)."""
    if isinstance(value, (str, bytes)):
        shown = repr(value[:80])
        return shown + ("…" if len(value) > 80 else "")
    if isinstance(value, (bool, int, float)) or value is None:
        text = repr(value) if not isinstance(value, int) or value.bit_length() < 64 else "<a large integer>"
        return text
    if is_opaque_class(value):
        return value.qualname
    if isinstance(value, Opaque):
        return f"{value.qualname}(…)" if value.called else f"<{value.qualname} object>"
    if isinstance(value, CalledObject):
        return "<the result of a call>"
    if isinstance(value, (tuple, list)) and depth < 2:
        inner = ", ".join(_short(v, depth + 1) for v in value[:3]) + (", …" if len(value) > 3 else "")
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    return f"<{type(value).__name__}>"


def _locate(root: Any, firsts: dict[int, Use], classes: dict[int, Use]) -> None:
    """Set each use's ``location``: the shortest path from the pickle's object to its first
    instance (or, for a global only referenced, to the class itself). Breadth-first, iterative,
    bounded; stops when everything is found."""
    wanted = {**firsts, **classes}
    if not wanted:
        return
    seen: set[int] = set()
    queue: deque[tuple[Any, tuple[str, ...]]] = deque([(root, ())])
    visited = 0
    while queue and wanted and visited < MAX_WALK:
        node, path = queue.popleft()
        key = id(node)
        if key in seen:
            continue
        seen.add(key)
        visited += 1
        use = wanted.pop(key, None)
        if use is not None:
            use.location = _place(path)
        for step, child in _children(node):
            if not isinstance(child, (str, bytes, int, float, bool, type(None))) or id(child) in wanted:
                queue.append((child, path + (step,) if len(path) < 32 else path))


def _children(node: Any) -> Iterable[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield (k if isinstance(k, str) else f"[{_short(k)}]"), v
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield f"[{i}]", v
    elif isinstance(node, (set, frozenset)):
        for v in node:
            yield "[…]", v
    elif isinstance(node, Opaque):
        for i, v in enumerate(node.args):
            yield f"({type(node).qualname} argument {i})", v
        if node.kwargs:
            yield from node.kwargs.items()
        if node.state is not None:
            yield from _children(node.state) if isinstance(node.state, dict) else [("(state)", node.state)]
        for i, v in enumerate(node.items or ()):
            yield f"[{i}]", v
        for k, v in node.entries or ():
            yield (k if isinstance(k, str) else "[…]"), v
    elif isinstance(node, CalledObject):
        yield "(called)", node.callee
        for i, v in enumerate(node.args):
            yield f"(argument {i})", v


def _place(path: tuple[str, ...]) -> str:
    if not path:
        return "the whole pickle"
    text = "/".join(path)
    if len(text) > 120:
        text = text[:119] + "…"
    return f'under key "{visible(text)}"'


def load_judged(data: bytes, *, path: str, what: str, find: Callable[[str], Any], log: Log,
                persistent_load: Callable[[Any], Any] | None = None) -> Any:
    """:func:`bninspect.formats.unpickler.load`, and where the pickle is malformed, the dangerous
    globals its opcodes name attached to the error: a real load would run whatever it
    reaches before it fails, and a corrupt file is no excuse to hide a payload."""
    try:
        return unpickler.load(data, path=path, what=what, find=find, log=log, persistent_load=persistent_load)
    except InvalidFileError as exc:
        seen = judge(log, None, where=what)
        with contextlib.suppress(Exception):
            names, _end = scan_globals(io.BytesIO(data))
            known = {u.name for u in seen.uses}
            seen.uses += [Use(name=n, kind="code-execution", count=1, where=what, location="(the pickle is malformed)")
                          for n in names if n not in known and (dangerous(n) or n == "<computed global>")]
        if seen.refused:
            exc.verdict = seen
        raise


@contextlib.contextmanager
def attached(verdict: Verdict) -> Iterator[None]:
    """Attach ``verdict`` to a BNInspectError raised inside (a file without a state dict may
    still hold a payload; the caller decides what to say)."""
    try:
        yield
    except BNInspectError as exc:
        if exc.verdict is None:
            exc.verdict = verdict
        raise


def unsafe(verdict: Verdict, path: str) -> UnsafeFileError:
    """The error that refuses ``path`` for what a real load of it would run, carrying the verdict
    (``check`` reports it as findings); raise it."""
    error = UnsafeFileError(refusal(verdict), path=path)
    error.verdict = verdict
    return error


def refusal(verdict: Verdict) -> str:
    """The one line that refuses a file: the calls a real load would make, and where they sit."""
    refused = verdict.refused
    shown = "; ".join(u.describe() for u in refused[:2])
    rest = [u.name for u in refused[2:]]
    more = f"; also {', '.join(rest[:10])}" + (f" and {len(rest) - 10} more" if len(rest) > 10 else "") if rest else ""
    verb = "run code" if any(u.kind == "code-execution" for u in refused) else "call functions bninspect has not reviewed"
    return (f"refused: a real load of it would {verb}: {shown}{more}; nothing from the file ran here "
            "(`bninspect check` lists every call). Pass --trust only for a file you made: it loads with "
            "torch.load(weights_only=False), which runs them")


# -- TorchScript: code that torch.jit.load runs, read as text -------------------------------------

_SCRIPT_METHODS = re.compile(rb"^class (\w+)\(|^  def (__setstate__|__getstate__)\(", re.MULTILINE)
_OPS = re.compile(rb"\bops\.(\w+)\.(\w+)")
# Operator namespaces that ship with torch itself; any other is a library a real load needs
# (torchvision::nms) and whose code runs when the model does.
TORCH_OP_NAMESPACES = frozenset({
    "aten", "prim", "prims", "quantized", "_quantized", "quantized_decomposed", "prepacked", "_caffe2", "profiler",
    "cuda", "sparse", "mkldnn", "mkldnn_prepacked", "onednn", "_nested", "inductor", "higher_order", "rngprims",
    "_c10d_functional", "c10d_functional", "_dtensor", "debugprims", "_prims", "_export", "xnnpack", "cpu",
})
_TORCH_CLASSES = "__torch__.torch."  # torch's own modules, scripted: their __setstate__ is torch's


def script_code(files: Iterable[tuple[str, bytes | None]], *, where: str) -> Verdict:
    """TorchScript code a real ``torch.jit.load`` would run, found in the archive's code text
    (``files``: path under ``code/`` and its bytes, None where it could not be examined):
    ``__setstate__``/``__getstate__`` of classes outside torch, and operators outside torch's
    namespaces. Text only, never run; code not examined is named as such."""
    uses: dict[tuple[str, str], Use] = {}

    def add(name: str, kind: str, place: str) -> None:
        use = uses.get((name, kind))
        if use is None:
            uses[(name, kind)] = Use(name=name, kind=kind, count=1, where=where + place)
        else:
            use.count += 1

    for place, text in files:
        if text is None:
            add(visible(f"{place} (not examined: unreadable or past the size limits)"), "script-code", place)
            continue
        module = place.removesuffix(".py").replace("/", ".")
        cls = ""
        for m in _SCRIPT_METHODS.finditer(text):
            if m.group(1):
                cls = m.group(1).decode("ascii", "replace")
            elif cls and not module.startswith(_TORCH_CLASSES):
                add(visible(f"{module}.{cls}.{m.group(2).decode()}"), "script-code", place)
        for m in _OPS.finditer(text):
            namespace = m.group(1).decode("ascii", "replace")
            if namespace not in TORCH_OP_NAMESPACES:
                add(visible(f"{namespace}::{m.group(2).decode('ascii', 'replace')}"), "custom-op", place)
    return Verdict(uses=list(uses.values()))
