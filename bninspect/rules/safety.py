"""Safety rules (BN4xx): what a real load of the file would run, from the static reader's verdict.

bninspect reads every pickle without importing or calling anything from it
(:mod:`bninspect.formats.verdict`); these rules report what ``torch.load(weights_only=False)``
or ``torch.jit.load`` would do with the same file, so that ``bninspect check models/`` is also a
safety audit of a model zoo. They see the file, not a layer: a finding's layer is "(file)".
Formats that run nothing on load (safetensors, ONNX, OpenVINO IR) have no verdict.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bninspect.rules.base import Context, name_list, rule

if TYPE_CHECKING:
    from bninspect.formats.verdict import Use

FILE = "(file)"


def _uses(ctx: Context, *kinds: str) -> list[Use]:
    return ctx.verdict.of(*kinds) if ctx.verdict is not None else []


def _evidence(uses: list[Use]) -> dict[str, Any]:
    return {"calls": [{"name": u.name, "kind": u.kind, "count": u.count, "where": u.where, "location": u.location,
                       "example": u.example} for u in uses]}


def _listed(uses: list[Use]) -> str:
    return name_list([u.describe() for u in uses], shown=3)


@rule("BN401", "code-execution-on-load", "error", "loading the file runs code", scope="model")
def code_execution(ctx: Context):
    """
    ## What it does
    Reports the calls a real `torch.load(weights_only=False)` of the file would make that run
    code or touch the system: `os.system`/`posix.system`, `subprocess`, `builtins.exec`,
    `eval`, `compile`, `__import__`, `getattr`, `open`, `importlib`, `runpy`, `socket`,
    `shutil`, `webbrowser`, `pickle.loads`, `torch.load` of other bytes, and the other
    gadgets public pickle scanners list. A dangerous function that is only referenced (the
    factory of a `defaultdict`, the function of a `functools.partial`) counts too: the object
    holding it will call it. bninspect found them by reading the pickle statically; nothing ran.

    ## Why is this bad?
    Unpickling calls whatever the file names. A checkpoint that names `posix.system` runs a
    shell command on every machine that loads it with `torch.load(weights_only=False)`: a
    training job, a notebook, a CI runner, a colleague's laptop.

    ## Example
    `{"state_dict": ..., "x": <an object whose __reduce__ returns (os.system, ("curl … | sh",))>}`.

    ## Use instead
    Do not load the file with `weights_only=False` or `--trust`. If the weights are needed,
    take them out with bninspect (`show --json`, or `drift --write-recalibrated` to a
    .safetensors file), or get the checkpoint from its original source, and publish weights as
    safetensors.
    """
    found = _uses(ctx, "code-execution")
    if found:
        yield code_execution.finding(
            FILE, f"a real load would run code: {_listed(found)}",
            fix="never load it with weights_only=False or --trust; re-obtain the weights or keep them as safetensors",
            evidence=_evidence(found))


@rule("BN402", "unreviewed-call-on-load", "warning", "loading the file calls unreviewed functions", scope="model")
def unreviewed_call(ctx: Context):
    """
    ## What it does
    Reports functions a real `torch.load(weights_only=False)` would call that are neither
    known to run code (BN401) nor on bninspect's reviewed list of reconstructors that only
    rebuild data (numpy's `_reconstruct` and `scalar`, `copyreg._reconstructor`,
    `re._compile`, torch's tensor rebuilds, ...), and calls of objects the pickle itself
    built (a `functools.partial`, the result of another call). Constructing a class is not
    such a call: BN404 names the packages whose classes a load constructs.

    ## Why is this bad?
    What such a function does is not known. Pickle payloads hide behind harmless-looking
    names, and a call that is not a plain reconstruction is exactly the kind of step a real
    checkpoint does not need. `show`, `explain`, `verify` and `diff` refuse such a file.

    ## Example
    A pickle that calls `pathlib.Path.write_text` or `shlex.split` while being unpickled.

    ## Use instead
    Find out where the call comes from (the finding names it and where it sits in the file).
    If you made the file, save plain data instead (a state dict, numbers, strings) and load
    it with `weights_only=True`.
    """
    found = _uses(ctx, "function")
    if found:
        yield unreviewed_call.finding(
            FILE, f"a real load would call functions bninspect has not reviewed: {_listed(found)}",
            fix="load only with weights_only=True (or not at all) until you know what these calls do",
            evidence=_evidence(found))


@rule("BN403", "torchscript-code-on-load", "warning", "torch.jit.load runs code from the file", scope="model")
def script_code(ctx: Context):
    """
    ## What it does
    Reports TorchScript code that `torch.jit.load` runs while loading the archive: the
    `__setstate__`/`__getstate__` methods of scripted classes outside torch's own, found in the
    archive's code text (never run), and code files bninspect could not examine.

    ## Why is this bad?
    `torch.jit.load` calls a scripted class's `__setstate__` to restore it, before you have
    called the model at all. TorchScript cannot reach Python, but it can still act on the
    machine, for instance create files with `torch.from_file(path, shared=True)`. Ordinary
    exported models have no such code outside torch's own modules.

    ## Example
    A scripted module with `@torch.jit.export def __setstate__(self, state): ...`.

    ## Use instead
    Read the named method in the archive (`unzip -p model.pt 'model/code/__torch__/....py'`)
    before loading it, or export the weights as safetensors and the graph as ONNX.
    """
    found = _uses(ctx, "script-code")
    if found:
        yield script_code.finding(
            FILE, f"torch.jit.load would run TorchScript code from the file: {_listed(found)}",
            fix="read that code before loading the archive, or ship weights as safetensors",
            evidence=_evidence(found))


@rule("BN404", "packages-needed-on-load", "info", "loading the file imports third-party packages", scope="model")
def packages_needed(ctx: Context):
    """
    ## What it does
    Names the third-party packages (not Python's own modules, not torch) a real load would
    import for the classes the file pickles (a YOLO checkpoint needs `ultralytics`, a
    Lightning checkpoint's hyper-parameters `omegaconf`), the classes of the script that
    saved it (`__main__`), and custom TorchScript operators from libraries outside torch.

    ## Why is this bad?
    It is not, by itself: it says what a real load depends on. Importing a package runs that
    package's code, and constructing its classes runs their constructors: a load is only as
    safe as those packages, and it fails where they are missing (`__main__` classes only
    exist in the script that saved the file).

    ## Example
    `torch.save({"model": detector, "train_args": {...}}, "best.pt")` with `detector` a class
    from an installed package.

    ## Use instead
    Nothing, if the packages are the ones you expect. To depend on nothing, save the state
    dict (or safetensors) and rebuild the model from code you control.
    """
    if ctx.verdict is None:
        return
    packages = ctx.verdict.packages
    ops = _uses(ctx, "custom-op")
    if packages or ops:
        parts = []
        if packages:
            parts.append(f"a real load imports {name_list(packages)}")
        if ops:
            parts.append(f"it calls operators from libraries outside torch: {name_list([u.name for u in ops])}")
        classes = [u for u in ctx.verdict.of("class", "reference") if u.package in packages]
        yield packages_needed.finding(
            FILE, "; ".join(parts), fix="make sure these are the packages you expect before loading it",
            evidence={"packages": packages, **_evidence(classes + ops)})
