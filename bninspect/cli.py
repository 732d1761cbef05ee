"""The command line: each command parses options, calls one service, hands its result to one renderer.

No domain logic here. Errors become one stderr line and an exit code in ``main``.
"""

from __future__ import annotations

import gc
import os
import sys
import warnings
from typing import List, Optional

import typer

from bninspect import process
from bninspect.errors import EXIT_INVALID, EXIT_USAGE, BNInspectError, OutputClosed

# 128 + SIGPIPE, what a shell reports for a program whose output pipe closed early.
EXIT_BROKEN_PIPE = 141

app = typer.Typer(
    name="bninspect",
    help="Understand and debug the BatchNorm layers of PyTorch checkpoints.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain help: typer's rich help imports rich's markdown, syntax and traceback (~125 ms)
    # before printing a line, which alone broke --help's start-up goal (issue 8).
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state: dict = {"debug": False, "files": []}


def _about(*paths: Optional[str]) -> None:
    """Name the files this command is about: an unexpected failure's line starts with them."""
    _state["files"] = [p for p in paths if p]

TRUST_HELP = "Allow loaders that run code from the file (torch.load weights_only=False, torch.jit.load). Only for files you trust."
JSON_HELP = "Print a JSON document instead of tables."
KEY_HELP = "Which state dict of a nested checkpoint to use, as a /-joined path (e.g. state_dict_ema)."
EPS_HELP = "Use this eps for every layer (state dicts do not store eps)."
STRICT_HELP = "Also check zip CRCs and safetensors duplicate keys."


class _Command(typer.core.TyperCommand):
    """A command whose help names its arguments as users type them: ``CKPT``, ``[CKPT]``, ``PATH...``.

    typer's help writes a required argument as ``{CKPT}`` and adds its Python type (``CKPT <str>``,
    ``PATH <list[str]>``), which reads like syntax to type. Only click's public command API is
    used: the usage pieces and the options section are built from each parameter's own fields.
    """

    def collect_usage_pieces(self, ctx):  # type: ignore[no-untyped-def]
        """``[OPTIONS]`` and the arguments in the usual notation (click's Command API)."""
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = _argument_name(param)
                pieces.append(name if param.required else f"[{name}]")
        return pieces

    def format_options(self, ctx, formatter) -> None:  # type: ignore[no-untyped-def]
        """The Arguments and Options sections, arguments by name only (click's Command API)."""
        arguments, options = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                arguments.append((_argument_name(param), record[1]))
            else:
                options.append(record)
        for title, rows in (("Arguments", arguments), ("Options", options)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def _argument_name(param) -> str:  # type: ignore[no-untyped-def]
    name = param.metavar or param.name.upper()
    return f"{name}..." if param.nargs != 1 else name


def _print_version(value: bool) -> None:
    if value:
        from bninspect import __version__

        typer.echo(f"bninspect {__version__}")
        raise typer.Exit(0)



def _emit(result: object, renderer: object, as_json: bool) -> None:
    """Hand a service's result to its renderer module: the JSON document, or tables and text."""
    if as_json:
        from bninspect.render.common import write_document

        write_document(renderer.to_json(result))  # type: ignore[attr-defined]
    else:
        renderer.render(result)  # type: ignore[attr-defined]

@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show a traceback for unexpected errors."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True,
                                 callback=_print_version),
) -> None:
    _state["debug"] = debug


@app.command(cls=_Command, short_help='List every BatchNorm layer: tensors, statistics, producer.')
def show(
    ckpt: str = typer.Argument(..., metavar="CKPT", help="Checkpoint file (.pt .pth .bin .ckpt .safetensors TorchScript ...)."),
    layer: Optional[List[str]] = typer.Option(None, "--layer", "-l", metavar="GLOB", help="Only layers matching this glob (repeatable)."),
    channels: bool = typer.Option(False, "--channels", help="Add a per-channel table (γ, β, μ, σ², scale, shift) for each layer."),
    key: Optional[str] = typer.Option(None, "--key", metavar="PATH", help=KEY_HELP),
    eps: Optional[float] = typer.Option(None, "--eps", metavar="EPS", help=EPS_HELP),
    limit: Optional[int] = typer.Option(None, "--limit", metavar="N", help="Show at most N layers (0 = all); a summary line says what was left out."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    trust: bool = typer.Option(False, "--trust", help=TRUST_HELP),
    strict: bool = typer.Option(False, "--strict", help=STRICT_HELP),
) -> int:
    """List every BatchNorm layer: tensors, shapes, dtypes, statistics and the layer that feeds it."""
    from bninspect.render import show as render_show
    from bninspect.services.show import show as show_service

    _about(ckpt)
    result = show_service(ckpt, layers=layer, channels=channels, key=key, eps=eps, limit=limit, trust=trust, strict=strict)
    _emit(result, render_show, as_json)
    return 0


@app.command(cls=_Command, short_help="Explain one layer's numbers: channels, inference, training.")
def explain(
    ckpt: str = typer.Argument(..., metavar="CKPT", help="Checkpoint file."),
    layer: str = typer.Argument(..., metavar="LAYER", help="BN layer name as `show` prints it (or its original key prefix)."),
    channel: Optional[int] = typer.Option(None, "--channel", "-c", metavar="I", help="Work channel I through with its real numbers."),
    key: Optional[str] = typer.Option(None, "--key", metavar="PATH", help=KEY_HELP),
    eps: Optional[float] = typer.Option(None, "--eps", metavar="EPS", help=EPS_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    trust: bool = typer.Option(False, "--trust", help=TRUST_HELP),
    strict: bool = typer.Option(False, "--strict", help=STRICT_HELP),
) -> int:
    """Explain one layer with its own numbers: per-channel mapping, inference and training formulas."""
    from bninspect.render import explain as render_explain
    from bninspect.services.explain import explain as explain_service

    _about(ckpt)
    result = explain_service(ckpt, layer, channel=channel, key=key, eps=eps, trust=trust, strict=strict)
    _emit(result, render_explain, as_json)
    return 0


@app.command(cls=_Command, short_help="Recompute BN inference and check it (or this machine's kernels).")
def verify(
    ckpt: Optional[str] = typer.Argument(None, metavar="CKPT", help="Checkpoint file; without it, check this machine's BN kernels."),
    device: str = typer.Option("cpu", "--device", "-d", metavar="DEVICE", help="cpu, cuda, cuda:N, or all (CPU and CUDA side by side)."),
    layer: Optional[List[str]] = typer.Option(None, "--layer", "-l", metavar="GLOB", help="Only layers matching this glob (repeatable)."),
    input_path: Optional[str] = typer.Option(None, "--input", "-i", metavar="FILE", help="Real activations for the layer (.npy, .pt, .safetensors; N,C,... unless --channels-last)."),
    channels_last: bool = typer.Option(False, "--channels-last", help="--input, --output and --expected hold N,...,C (NHWC) data."),
    input_channels_last: bool = typer.Option(False, "--input-channels-last", help="Only --input holds N,...,C (NHWC) data."),
    output_channels_last: bool = typer.Option(False, "--output-channels-last", help="Only --output and --expected hold N,...,C (NHWC) data."),
    output: Optional[str] = typer.Option(None, "--output", "-o", metavar="FILE", help="Write one layer's recomputed output here, in the input's format."),
    expected: Optional[str] = typer.Option(None, "--expected", metavar="FILE", help="Outputs captured from another runtime: match, or the likely cause of the mismatch."),
    eps: Optional[float] = typer.Option(None, "--eps", metavar="EPS", help=EPS_HELP),
    batch: int = typer.Option(2, "--batch", metavar="N", help="Batch size of the synthetic inputs."),
    spatial: int = typer.Option(4, "--spatial", metavar="N", help="Size of each spatial dimension of the synthetic inputs."),
    train_batch: str = typer.Option("1,2,8,32", "--train-batch", metavar="B,B,...", help="Batch sizes for the train/eval gap."),
    seed: int = typer.Option(0, "--seed", metavar="N", help="Seed of the synthetic inputs."),
    key: Optional[str] = typer.Option(None, "--key", metavar="PATH", help=KEY_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    trust: bool = typer.Option(False, "--trust", help=TRUST_HELP),
    strict: bool = typer.Option(False, "--strict", help=STRICT_HELP),
) -> int:
    """Recompute BN inference (reference, F.batch_norm, folded, fused conv) and check it; without CKPT, check the kernels."""
    from bninspect.render import verify as render_verify
    from bninspect.services.common import parse_sizes
    from bninspect.services.verify import run_verify

    batches = tuple(parse_sizes(train_batch, "--train-batch"))
    _about(ckpt, input_path, expected)
    result = run_verify(ckpt, device=device, layer_globs=layer, eps=eps, trust=trust, key=key, strict=strict,
                        input_path=input_path, channels_last=channels_last, output_path=output, expected_path=expected,
                        batch=batch, spatial=spatial, train_batches=batches, seed=seed,
                        input_channels_last=input_channels_last, output_channels_last=output_channels_last)
    _emit(result, render_verify, as_json)
    return result.exit_code


@app.command(cls=_Command, short_help='Lint BatchNorm layers with coded rules (CI gate).')
def check(
    paths: List[str] = typer.Argument(..., metavar="PATH", help="Checkpoint files or folders (folders: every checkpoint inside, recursively, chosen by content)."),
    select: Optional[List[str]] = typer.Option(None, "--select", metavar="CODE", help="Only these rules: codes or prefixes such as BN1 (repeatable or comma-separated) [default: all]."),
    ignore: Optional[List[str]] = typer.Option(None, "--ignore", metavar="CODE", help="Skip these rules: codes or prefixes (repeatable or comma-separated)."),
    fail_on: Optional[str] = typer.Option(None, "--fail-on", metavar="LEVEL", help="Exit 1 on findings at or above: error, warning, info or never [default: error]."),
    fmt: Optional[str] = typer.Option(None, "--format", metavar="FORMAT", help="table or concise (one line per finding) [default: table]."),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", metavar="N", help="Check files in N processes (0 = one per CPU) [default: 1]."),
    min_updates: Optional[int] = typer.Option(None, "--min-updates", metavar="N", help="BN102: num_batches_tracked below N counts as few updates [default: 200]."),
    count_ratio: Optional[float] = typer.Option(None, "--count-ratio", metavar="X", help="BN103: flag layers whose num_batches_tracked differs from the most common count by X times [default: 10]."),
    max_scale: Optional[float] = typer.Option(None, "--max-scale", metavar="X", help="BN106: flag channels whose |γ|/√(σ²+ε) exceeds X [default: 1000]."),
    dead_gamma: Optional[float] = typer.Option(None, "--dead-gamma", metavar="X", help="BN107: flag channels whose |γ| is at most X [default: 1e-6]."),
    outlier_z: Optional[float] = typer.Option(None, "--outlier-z", metavar="Z", help="BN108: flag channels whose robust z-score (running_mean, log running_var) exceeds Z [default: 20]."),
    eps_tolerance: Optional[float] = typer.Option(None, "--eps-tolerance", metavar="X", help="BN302: flag layers whose output changes by more than X of its scale between eps 1e-5 and 1e-3 [default: 0.05]."),
    expect_eps: Optional[float] = typer.Option(None, "--expect-eps", metavar="EPS", help="BN301: every layer's eps must be EPS (module eps, or --eps); a difference is an error."),
    eps: Optional[float] = typer.Option(None, "--eps", metavar="EPS", help=EPS_HELP),
    key: Optional[str] = typer.Option(None, "--key", metavar="PATH", help=KEY_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    trust: bool = typer.Option(False, "--trust", help="No effect, kept for old command lines: check reads every file statically and reports what a real load would run (BN4xx)."),
    strict: bool = typer.Option(False, "--strict", help=STRICT_HELP),
) -> int:
    """Lint BatchNorm layers with coded rules (see `bninspect rules`); settings also from [tool.bninspect] in pyproject.toml."""
    from bninspect.render import check as render_check
    from bninspect.services.check import resolve_options, run_check

    def codes(values: Optional[List[str]]) -> Optional[List[str]]:
        return [c for v in values for c in v.split(",") if c.strip()] if values else None

    opts = resolve_options({
        "select": codes(select), "ignore": codes(ignore), "fail_on": fail_on, "format": fmt, "jobs": jobs,
        "min_updates": min_updates, "count_ratio": count_ratio, "max_scale": max_scale, "dead_gamma": dead_gamma,
        "outlier_z": outlier_z, "eps_tolerance": eps_tolerance, "expect_eps": expect_eps,
        "eps": eps, "key": key, "strict": strict or None, "debug": _state["debug"] or None,
    })
    _about(*paths)
    report = run_check(paths, opts)
    render_check.render(report, opts.format, as_json)
    return report.exit_code


@app.command(cls=_Command, short_help="The check rules: the table, or one rule's documentation.")
def rules(
    code: Optional[str] = typer.Argument(None, metavar="CODE", help="A rule code (BN101) for its full text, or a prefix (BN1) for a shorter table."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> int:
    """The check rules: a table of codes, or one rule's documentation."""
    from bninspect.render import rules as render_rules
    from bninspect.rules import lookup

    chosen, one = lookup(code)
    render_rules.render(chosen, one, as_json)
    return 0


@app.command(cls=_Command, short_help='Run the model on data: statistics drift, eval/train mismatch.')
def drift(
    ckpt: str = typer.Argument(..., metavar="CKPT", help="Checkpoint (with --arch) or a TorchScript/pickled model (with --trust)."),
    arch: Optional[str] = typer.Option(None, "--arch", metavar="MODULE:CALLABLE", help="Builds the model, e.g. torchvision.models:resnet18; imported from your environment, the current directory first (like python -m)."),
    arch_kwargs: Optional[str] = typer.Option(None, "--arch-kwargs", metavar="JSON", help="Keyword arguments for --arch as a JSON object."),
    data: Optional[str] = typer.Option(None, "--data", metavar="FILE", help="Inputs (.pt, .npy, .safetensors); first dimension = samples."),
    synthetic: Optional[str] = typer.Option(None, "--synthetic", metavar="SHAPE", help="Seeded N(0,1) inputs, e.g. 16x3x64x64: measures mechanics, not fitness."),
    batch_sizes: Optional[str] = typer.Option(None, "--batch-sizes", metavar="B,B,...", help="Batch sizes for small-batch drift and the eval/train gap [default: 1,2,4,8,16,32]."),
    device: str = typer.Option("cpu", "--device", "-d", metavar="DEVICE", help="cpu or cuda."),
    max_drift: float = typer.Option(0.1, "--max-drift", metavar="X", help="Exit 1 when a layer's drift score (RMS error of its normalized output, in σ) exceeds this; not applied to --synthetic."),
    batch_tolerance: float = typer.Option(0.1, "--batch-tolerance", metavar="X", help="Train-mode error (in σ) a batch size may cause and still count as large enough (min B)."),
    min_agreement: float = typer.Option(0.99, "--min-agreement", metavar="X", help="Exit 1 when eval- and train-mode top-1 agree on fewer outputs than this at the largest batch size."),
    write_recalibrated: Optional[str] = typer.Option(None, "--write-recalibrated", metavar="OUT", help="Write a copy whose running statistics are the data's (.safetensors, or .pt/.pth/.ckpt like the input), then re-measure."),
    key: Optional[str] = typer.Option(None, "--key", metavar="PATH", help=KEY_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    trust: bool = typer.Option(False, "--trust", help=TRUST_HELP),
) -> int:
    """Run the model on data: running statistics vs the data, small-batch drift, eval/train mismatch."""
    from bninspect.render import drift as render_drift
    from bninspect.services.drift import run_drift

    _about(ckpt, data)
    with render_drift.progress_bar(enabled=not as_json) as progress:
        result = run_drift(ckpt, arch=arch, arch_kwargs=arch_kwargs, trust=trust, key=key, data=data,
                           synthetic=synthetic, batch_sizes=batch_sizes, device=device, max_drift=max_drift,
                           batch_tolerance=batch_tolerance, min_agreement=min_agreement,
                           write_recalibrated=write_recalibrated, progress=progress)
    _emit(result, render_drift, as_json)
    return result.exit_code


@app.command(cls=_Command, short_help='Compare the BatchNorm behaviour of two artifacts (incl. ONNX, IR).')
def diff(
    a: str = typer.Argument(..., metavar="A", help="First artifact: checkpoint, safetensors, TorchScript, ONNX (.onnx) or OpenVINO IR (.xml)."),
    b: str = typer.Argument(..., metavar="B", help="Second artifact, any of the same formats."),
    layer: Optional[List[str]] = typer.Option(None, "--layer", "-l", metavar="GLOB", help="Only layers matching this glob (repeatable)."),
    run: bool = typer.Option(False, "--run", help="Also run the ONNX side's (ONNX Runtime) or OpenVINO IR side's (OpenVINO) BN or folded-conv layers, where installed, and compare with the other side's recomputation."),
    key: Optional[str] = typer.Option(None, "--key", metavar="PATH", help="Which state dict of a nested checkpoint A to use."),
    key_b: Optional[str] = typer.Option(None, "--key-b", metavar="PATH", help="Which state dict of a nested checkpoint B to use."),
    eps: Optional[float] = typer.Option(None, "--eps", metavar="EPS", help="eps of A's layers where A is a plain state dict (it stores none)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    trust: bool = typer.Option(False, "--trust", help=TRUST_HELP),
) -> int:
    """Where the BatchNorm behaviour of two artifacts differs: per layer, per channel, folded or not."""
    from bninspect.render import diff as render_diff
    from bninspect.services.diff import diff as diff_service

    _about(a, b)
    result = diff_service(a, b, layers=layer, trust=trust, key=key, key_b=key_b, eps=eps, run=run)
    _emit(result, render_diff, as_json)
    return result.exit_code


@app.command(short_help="One HTML file: per-channel plots, findings, drift, diff.")
def report(
    ckpt: str = typer.Argument(..., metavar="CKPT", help="Checkpoint file."),
    other: Optional[str] = typer.Argument(None, metavar="B", help="A second artifact to compare with (as `diff CKPT B`)."),
    output: str = typer.Option(..., "--output", "-o", metavar="FILE", help="Where to write the HTML file (never over an input)."),
    data: Optional[str] = typer.Option(None, "--data", metavar="FILE", help="Inputs to measure drift on (as `drift --data`); needs --arch or --trust."),
    synthetic: Optional[str] = typer.Option(None, "--synthetic", metavar="SHAPE", help="Seeded N(0,1) inputs instead of --data, e.g. 16x3x64x64."),
    arch: Optional[str] = typer.Option(None, "--arch", metavar="MODULE:CALLABLE", help="Builds the model for the drift measurements (as `drift --arch`)."),
    arch_kwargs: Optional[str] = typer.Option(None, "--arch-kwargs", metavar="JSON", help="Keyword arguments for --arch as a JSON object."),
    batch_sizes: Optional[str] = typer.Option(None, "--batch-sizes", metavar="B,B,...", help="Batch sizes for the drift measurements [default: 1,2,4,8,16,32]."),
    layer: Optional[List[str]] = typer.Option(None, "--layer", "-l", metavar="GLOB", help="Give pages to these layers (repeatable) [default: layers with findings first]."),
    pages: Optional[int] = typer.Option(None, "--pages", metavar="N", help="Layers with a page of plots, at most 200 [default: 50]."),
    key: Optional[str] = typer.Option(None, "--key", metavar="PATH", help=KEY_HELP),
    key_b: Optional[str] = typer.Option(None, "--key-b", metavar="PATH", help="Which state dict of a nested checkpoint B to use."),
    eps: Optional[float] = typer.Option(None, "--eps", metavar="EPS", help=EPS_HELP),
    trust: bool = typer.Option(False, "--trust", help=TRUST_HELP),
    strict: bool = typer.Option(False, "--strict", help=STRICT_HELP),
) -> int:
    """Write one self-contained HTML file: the file, every layer, per-channel plots, check's findings; drift with --data, the diff with B."""
    from bninspect.render import report as render_report
    from bninspect.services.report import report as report_service

    render_report.require()
    result = report_service(ckpt, other, data=data, synthetic=synthetic, arch=arch, arch_kwargs=arch_kwargs,
                            batch_sizes=batch_sizes, layers=layer, pages=pages, key=key, key_b=key_b, eps=eps,
                            trust=trust, strict=strict, output=output)
    render_report.render(result, output)
    return 0


def _fail(line: str, code: int) -> int:
    # The line names a file, and a file name may carry terminal escapes: show them, never send them.
    from bninspect.textfmt import visible

    sys.stderr.write(f"bninspect: error: {visible(line)}\n")
    sys.stderr.flush()
    return code


def _click():
    """The click that typer runs on: typer >= 0.28 bundles its own as ``typer._click`` (the
    standalone package is then not installed at all); older typer depends on click."""
    try:
        import typer._click as bundled  # type: ignore[import-not-found]

        return bundled
    except ImportError:
        import click

        return click


def _click_exceptions() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(Exit, NoArgsIsHelp, UsageError, ClickException) classes of the click typer uses."""
    exc = _click().exceptions

    def grab(*names: str) -> tuple[type, ...]:
        return tuple(getattr(exc, n) for n in names if hasattr(exc, n))

    return (*grab("Exit"), typer.Exit), grab("NoArgsIsHelpError", "NoArgsIsHelp"), grab("UsageError"), grab("ClickException")


def _plain_conversions() -> None:
    """Convert option values with int()/float()/str() instead of typer's pydantic adapters.

    typer >= 0.29 converts every parameter through a pydantic TypeAdapter, and building the
    first one imports pydantic: ~170 ms on this machine, more than half of `bninspect rules`
    and more than `show` spends on a 2 GB file (issue 8). Every parameter here (typer's own
    --help included) is a str, int, float, bool or list of str, which need no schema. typer's
    ``RuntimeParam.coerce`` still handles missing values and multi-value checks; only the
    conversion of a present value is ours. Another annotation keeps typer's conversion, and a
    typer without ``typer._coercion`` (< 0.29 converts with click's types) is left as it is.
    """
    try:
        from dataclasses import dataclass

        from typer._coercion import RuntimeParam  # type: ignore[import-not-found]
        from typer.core import _TyperParameter  # type: ignore[attr-defined]
    except ImportError:
        return
    typer_build = _TyperParameter.get_runtime_param
    if getattr(typer_build, "_plain", False):
        return
    click = _click()

    def to_bool(value: object) -> object:
        return value if isinstance(value, bool) else click.types.BOOL.convert(value, None, None)

    kinds = {str: ("text", str), int: ("integer", int), float: ("number", float), bool: ("boolean", to_bool),
             List[str]: ("text", str)}

    @dataclass(frozen=True)
    class PlainConversion(RuntimeParam):  # type: ignore[misc,valid-type]
        kind: str
        convert: object

        def _coerce_value(self, value, param, ctx):  # type: ignore[no-untyped-def]
            def one(item: object) -> object:
                try:
                    return self.convert(item)  # type: ignore[operator]
                except (TypeError, ValueError, click.exceptions.BadParameter):
                    raise click.exceptions.BadParameter(
                        f"{item!r} is not a valid {self.kind}.", ctx=ctx, param=param) from None

            return [one(v) for v in value] if isinstance(value, (list, tuple)) else one(value)

    def get_runtime_param(self):  # type: ignore[no-untyped-def]
        desc = self.type_descriptor
        kind = kinds.get(desc.annotation)
        if self._runtime_param is None and kind is not None:
            self._runtime_param = PlainConversion(
                parameter_info=desc.parameter_info, annotation=desc.annotation, kind=kind[0], convert=kind[1])
        return typer_build(self)

    get_runtime_param._plain = True  # type: ignore[attr-defined]
    _TyperParameter.get_runtime_param = get_runtime_param


def _app_for(args: List[str]) -> typer.Typer:
    """The app with only the command that ``args`` name: typer builds each command's click
    parameters from its signature, ~5 ms for all seven, and a run needs one. The whole app
    where no command is named (--help) or the name is not one of ours (click suggests one)."""
    import copy

    name = next((a for a in args if not a.startswith("-")), None)
    chosen = [c for c in app.registered_commands
              if (c.name or typer.main.get_command_name(c.callback.__name__)) == name]  # type: ignore[union-attr]
    if not chosen:
        return app
    lean = copy.copy(app)
    lean.registered_commands = chosen
    return lean


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point: run the app, turn every failure into one line on stderr and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    # --debug is accepted anywhere on the line (`bninspect check x --debug` too): the error
    # messages that suggest it should not need the user to know where global options go.
    _state["debug"] = "--debug" in args
    if _state["debug"]:
        args = ["--debug"] + [a for a in args if a != "--debug"]
    # A run builds hundreds of thousands of small objects that all live until it exits (a
    # 10,000-layer file: ~300,000 for the state dict, more for layers and findings), and few of
    # them form cycles. At the default threshold (700) the cyclic collector walks the growing
    # heap again every few hundred allocations for nothing: discovery at 10,000 layers took
    # 590 ms, 167 ms at 50,000. Reference counting still frees everything that is not a cycle,
    # and a process that exits soon needs no more than that.
    gc.set_threshold(50_000, 20, 20)
    # And what a checkpoint load made is frozen out of the collector's walks altogether
    # (services.common.open_layers); a library caller's process is left as it is.
    process.freeze_loaded_objects = True
    # numpy's pip wheels start an OpenBLAS thread per core at import, and those threads spin for
    # a while: +110 ms of CPU on a 2-core machine for `check` on one file, taken from the other
    # core that `check --jobs 2` needs. Our arrays are a few thousand values; numpy calls here
    # never need a BLAS thread pool. torch has its own pools; a user's setting is kept.
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    # A library warning (numpy, torch) on stderr is a line that is not ours, in words the user
    # cannot act on. Each known cause is fixed where it arises (read-only buffers are copied
    # before torch sees them, complex statistics are not widened); this drops any other, and
    # --debug shows them.
    if not _state["debug"]:
        warnings.simplefilter("ignore")
    exits, no_args, usage_errors, click_errors = _click_exceptions()
    command = typer.main.get_command(_app_for(args))
    _plain_conversions()
    try:
        rv = command.main(args=args, prog_name="bninspect", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except exits as exc:
        code = getattr(exc, "exit_code", 0)
    except no_args:
        typer.echo(_click().Context(command, info_name="bninspect").get_help())
        code = 0
    except usage_errors as exc:
        msg = " ".join(exc.format_message().split())
        code = _fail(f"{msg} (see 'bninspect --help')", EXIT_USAGE)
    except click_errors as exc:
        code = _fail(" ".join(exc.format_message().split()), EXIT_USAGE)
    except BNInspectError as exc:
        if _state["debug"]:
            raise
        code = _fail(exc.line(), exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        code = _fail("interrupted", 130)
    except (OutputClosed, BrokenPipeError):
        # The reader of our output went away (`bninspect show x | head`): not an error of ours.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_BROKEN_PIPE
    except Exception as exc:  # a bug: still one line, the traceback only with --debug
        if _state["debug"]:
            raise
        detail = " ".join(str(exc)[:400].split())[:200]
        files = ", ".join(_state["files"][:3]) + (", ..." if len(_state["files"]) > 3 else "")
        code = _fail(
            (f"{files}: " if files else "") + f"unexpected failure ({type(exc).__name__}: {detail}); "
            "this is a bug in bninspect, rerun with --debug and report it",
            EXIT_INVALID,
        )
    sys.exit(code)

