"""The commands: each parses its options, calls one service, and hands the result to one renderer.

No domain logic here. ``COMMANDS`` lists them in help order with their one-line help; the
dispatcher (``bninspect.cli``) registers them on typer apps, and turns failures into one line.
"""

from __future__ import annotations

from typing import Callable, List, Optional

import typer

from bninspect.cli.options import (
    Arch,
    ArchKwargs,
    BatchSizes,
    Eps,
    Json,
    Key,
    KeyB,
    Layers,
    Strict,
    Synthetic,
    Trust,
)

# The files a run is about, for the line an unexpected failure prints (see ``about``).
ABOUT: list[str] = []
# --debug, read by check (a file's error with its traceback); set by the dispatcher.
DEBUG = {"on": False}


def about(*paths: Optional[str]) -> None:
    """Name the files this command is about: an unexpected failure's line starts with them."""
    ABOUT[:] = [p for p in paths if p]


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


def _emit(result: object, renderer: object, as_json: bool) -> None:
    """Hand a service's result to its renderer module: the JSON document, or tables and text."""
    if as_json:
        from bninspect.render.common import write_document

        write_document(renderer.to_json(result))  # type: ignore[attr-defined]
    else:
        renderer.render(result)  # type: ignore[attr-defined]


def show(
    ckpt: str = typer.Argument(..., metavar="CKPT", help="Checkpoint file (.pt .pth .bin .ckpt .safetensors TorchScript ...)."),
    layer: Layers = None,
    channels: bool = typer.Option(False, "--channels", help="Add a per-channel table (γ, β, μ, σ², scale, shift) for each layer."),
    key: Key = None,
    eps: Eps = None,
    limit: Optional[int] = typer.Option(None, "--limit", metavar="N", help="Show at most N layers (0 = all); a summary line says what was left out."),
    as_json: Json = False,
    trust: Trust = False,
    strict: Strict = False,
) -> int:
    """List every BatchNorm layer: tensors, shapes, dtypes, statistics and the layer that feeds it."""
    from bninspect.render import show as render_show
    from bninspect.services.show import show as show_service

    about(ckpt)
    result = show_service(ckpt, layers=layer, channels=channels, key=key, eps=eps, limit=limit, trust=trust, strict=strict)
    _emit(result, render_show, as_json)
    return 0


def explain(
    ckpt: str = typer.Argument(..., metavar="CKPT", help="Checkpoint file."),
    layer: str = typer.Argument(..., metavar="LAYER", help="BN layer name as `show` prints it (or its original key prefix)."),
    channel: Optional[int] = typer.Option(None, "--channel", "-c", metavar="I", help="Work channel I through with its real numbers."),
    key: Key = None,
    eps: Eps = None,
    as_json: Json = False,
    trust: Trust = False,
    strict: Strict = False,
) -> int:
    """Explain one layer with its own numbers: per-channel mapping, inference and training formulas."""
    from bninspect.render import explain as render_explain
    from bninspect.services.explain import explain as explain_service

    about(ckpt)
    result = explain_service(ckpt, layer, channel=channel, key=key, eps=eps, trust=trust, strict=strict)
    _emit(result, render_explain, as_json)
    return 0


def verify(
    ckpt: Optional[str] = typer.Argument(None, metavar="CKPT", help="Checkpoint file; without it, check this machine's BN kernels."),
    device: str = typer.Option("cpu", "--device", "-d", metavar="DEVICE", help="cpu, cuda, cuda:N, or all (CPU and CUDA side by side)."),
    layer: Layers = None,
    input_path: Optional[str] = typer.Option(None, "--input", "-i", metavar="FILE", help="Real activations for the layer (.npy, .pt, .safetensors; N,C,... unless --channels-last)."),
    channels_last: bool = typer.Option(False, "--channels-last", help="--input, --output and --expected hold N,...,C (NHWC) data."),
    input_channels_last: bool = typer.Option(False, "--input-channels-last", help="Only --input holds N,...,C (NHWC) data."),
    output_channels_last: bool = typer.Option(False, "--output-channels-last", help="Only --output and --expected hold N,...,C (NHWC) data."),
    output: Optional[str] = typer.Option(None, "--output", "-o", metavar="FILE", help="Write one layer's recomputed output here, in the input's format."),
    expected: Optional[str] = typer.Option(None, "--expected", metavar="FILE", help="Outputs captured from another runtime: match, or the likely cause of the mismatch."),
    eps: Eps = None,
    batch: int = typer.Option(2, "--batch", metavar="N", help="Batch size of the synthetic inputs."),
    spatial: int = typer.Option(4, "--spatial", metavar="N", help="Size of each spatial dimension of the synthetic inputs."),
    train_batch: str = typer.Option("1,2,8,32", "--train-batch", metavar="B,B,...", help="Batch sizes for the train/eval gap."),
    seed: int = typer.Option(0, "--seed", metavar="N", help="Seed of the synthetic inputs."),
    key: Key = None,
    as_json: Json = False,
    trust: Trust = False,
    strict: Strict = False,
) -> int:
    """Recompute BN inference (reference, F.batch_norm, folded, fused conv) and check it; without CKPT, check the kernels."""
    from bninspect.render import verify as render_verify
    from bninspect.services.common import parse_sizes
    from bninspect.services.verify import run_verify

    batches = tuple(parse_sizes(train_batch, "--train-batch"))
    about(ckpt, input_path, expected)
    result = run_verify(ckpt, device=device, layer_globs=layer, eps=eps, trust=trust, key=key, strict=strict,
                        input_path=input_path, channels_last=channels_last, output_path=output, expected_path=expected,
                        batch=batch, spatial=spatial, train_batches=batches, seed=seed,
                        input_channels_last=input_channels_last, output_channels_last=output_channels_last)
    _emit(result, render_verify, as_json)
    return result.exit_code


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
    eps: Eps = None,
    key: Key = None,
    as_json: Json = False,
    trust: bool = typer.Option(False, "--trust", help="No effect, kept for old command lines: check reads every file statically and reports what a real load would run (BN4xx)."),
    strict: Strict = False,
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
        "eps": eps, "key": key, "strict": strict or None, "debug": DEBUG["on"] or None,
    })
    about(*paths)
    report = run_check(paths, opts)
    render_check.render(report, opts.format, as_json)
    return report.exit_code


def rules(
    code: Optional[str] = typer.Argument(None, metavar="CODE", help="A rule code (BN101) for its full text, or a prefix (BN1) for a shorter table."),
    as_json: Json = False,
) -> int:
    """The check rules: a table of codes, or one rule's documentation."""
    from bninspect.render import rules as render_rules
    from bninspect.rules import lookup

    chosen, one = lookup(code)
    render_rules.render(chosen, one, as_json)
    return 0


def drift(
    ckpt: str = typer.Argument(..., metavar="CKPT", help="Checkpoint (with --arch) or a TorchScript/pickled model (with --trust)."),
    arch: Arch = None,
    arch_kwargs: ArchKwargs = None,
    data: Optional[str] = typer.Option(None, "--data", metavar="FILE", help="Inputs (.pt, .npy, .safetensors); first dimension = samples."),
    synthetic: Synthetic = None,
    batch_sizes: BatchSizes = None,
    device: str = typer.Option("cpu", "--device", "-d", metavar="DEVICE", help="cpu or cuda."),
    max_drift: float = typer.Option(0.1, "--max-drift", metavar="X", help="Exit 1 when a layer's drift score (RMS error of its normalized output, in σ) exceeds this; not applied to --synthetic."),
    batch_tolerance: float = typer.Option(0.1, "--batch-tolerance", metavar="X", help="Train-mode error (in σ) a batch size may cause and still count as large enough (min B)."),
    min_agreement: float = typer.Option(0.99, "--min-agreement", metavar="X", help="Exit 1 when eval- and train-mode top-1 agree on fewer outputs than this at the largest batch size."),
    write_recalibrated: Optional[str] = typer.Option(None, "--write-recalibrated", metavar="OUT", help="Write a copy whose running statistics are the data's (.safetensors, or .pt/.pth/.ckpt like the input), then re-measure."),
    key: Key = None,
    as_json: Json = False,
    trust: Trust = False,
) -> int:
    """Run the model on data: running statistics vs the data, small-batch drift, eval/train mismatch."""
    from bninspect.render import drift as render_drift
    from bninspect.services.drift import run_drift

    about(ckpt, data)
    with render_drift.progress_bar(enabled=not as_json) as progress:
        result = run_drift(ckpt, arch=arch, arch_kwargs=arch_kwargs, trust=trust, key=key, data=data,
                           synthetic=synthetic, batch_sizes=batch_sizes, device=device, max_drift=max_drift,
                           batch_tolerance=batch_tolerance, min_agreement=min_agreement,
                           write_recalibrated=write_recalibrated, progress=progress)
    _emit(result, render_drift, as_json)
    return result.exit_code


def diff(
    a: str = typer.Argument(..., metavar="A", help="First artifact: checkpoint, safetensors, TorchScript, ONNX (.onnx) or OpenVINO IR (.xml)."),
    b: str = typer.Argument(..., metavar="B", help="Second artifact, any of the same formats."),
    layer: Layers = None,
    run: bool = typer.Option(False, "--run", help="Also run the ONNX side's (ONNX Runtime) or OpenVINO IR side's (OpenVINO) BN or folded-conv layers, where installed, and compare with the other side's recomputation."),
    key: Optional[str] = typer.Option(None, "--key", metavar="PATH", help="Which state dict of a nested checkpoint A to use."),
    key_b: KeyB = None,
    eps: Optional[float] = typer.Option(None, "--eps", metavar="EPS", help="eps of A's layers where A is a plain state dict (it stores none)."),
    as_json: Json = False,
    trust: Trust = False,
) -> int:
    """Where the BatchNorm behaviour of two artifacts differs: per layer, per channel, folded or not."""
    from bninspect.render import diff as render_diff
    from bninspect.services.diff import diff as diff_service

    about(a, b)
    result = diff_service(a, b, layers=layer, trust=trust, key=key, key_b=key_b, eps=eps, run=run)
    _emit(result, render_diff, as_json)
    return result.exit_code


def report(
    ckpt: str = typer.Argument(..., metavar="CKPT", help="Checkpoint file."),
    other: Optional[str] = typer.Argument(None, metavar="B", help="A second artifact to compare with (as `diff CKPT B`)."),
    output: str = typer.Option(..., "--output", "-o", metavar="FILE", help="Where to write the HTML file (never over an input)."),
    data: Optional[str] = typer.Option(None, "--data", metavar="FILE", help="Inputs to measure drift on (as `drift --data`); needs --arch or --trust."),
    synthetic: Optional[str] = typer.Option(None, "--synthetic", metavar="SHAPE", help="Seeded N(0,1) inputs instead of --data, e.g. 16x3x64x64."),
    arch: Optional[str] = typer.Option(None, "--arch", metavar="MODULE:CALLABLE", help="Builds the model for the drift measurements (as `drift --arch`)."),
    arch_kwargs: ArchKwargs = None,
    batch_sizes: Optional[str] = typer.Option(None, "--batch-sizes", metavar="B,B,...", help="Batch sizes for the drift measurements [default: 1,2,4,8,16,32]."),
    layer: Optional[List[str]] = typer.Option(None, "--layer", "-l", metavar="GLOB", help="Give pages to these layers (repeatable) [default: layers with findings first]."),
    pages: Optional[int] = typer.Option(None, "--pages", metavar="N", help="Layers with a page of plots, at most 200 [default: 50]."),
    key: Key = None,
    key_b: KeyB = None,
    eps: Eps = None,
    trust: Trust = False,
    strict: Strict = False,
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


# name → (command, one-line help, click command class), in the order `bninspect --help` lists them.
COMMANDS: dict[str, tuple[Callable[..., int], str, type]] = {
    "show": (show, "List every BatchNorm layer: tensors, statistics, producer.", _Command),
    "explain": (explain, "Explain one layer's numbers: channels, inference, training.", _Command),
    "verify": (verify, "Recompute BN inference and check it (or this machine's kernels).", _Command),
    "check": (check, "Lint BatchNorm layers with coded rules (CI gate).", _Command),
    "rules": (rules, "The check rules: the table, or one rule's documentation.", _Command),
    "drift": (drift, "Run the model on data: statistics drift, eval/train mismatch.", _Command),
    "diff": (diff, "Compare the BatchNorm behaviour of two artifacts (incl. ONNX, IR).", _Command),
    "report": (report, "One HTML file: per-channel plots, findings, drift, diff.", _Command),
}

