"""bninspect's Python API: the commands as functions, for notebooks and scripts.

Each function takes what the command takes, with the same names and defaults, and returns the
result the command renders: its fields are read through (``bninspect.show("ck.pt").layers``),
``to_json()`` gives the command's ``--json`` document, ``text()`` its table, and a notebook
shows it as a table. A source is a file path or a live ``torch.nn.Module``: a module is read for
its own classes, eps, momentum and training flags, and nothing on it is changed.

Failures raise :class:`bninspect.BNInspectError` (``UsageError``, ``UnsafeFileError``,
``InvalidFileError``, ``PathProblemError``) with the one-line message the CLI prints; the
``exit_code`` attribute is the CLI's. The CLI calls these functions, so the two cannot drift.
"""

from __future__ import annotations

import html
import json
import os
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence, Union

if TYPE_CHECKING:
    import numpy as np

    from bninspect.layers import BNLayer, Discovery

# A checkpoint path, or a live torch.nn.Module (not named here: torch is imported only by callers that have one).
Source = Union[str, "os.PathLike[str]", Any]

__all__ = ["load", "show", "explain", "check", "verify", "diff", "drift", "report",
           "Loaded", "Layer", "Result", "CheckResult", "Report"]


# -- results --------------------------------------------------------------------------------------

class Result:
    """What a function returns: the command's result, its fields read through as attributes.

    ``data`` is the result object itself (a dataclass of ``bninspect.services``); ``to_json()``
    the command's ``--json`` document; ``text(width)`` the table the command prints.
    """

    def __init__(self, command: str, data: Any) -> None:
        self._command = command
        self._data = data

    @property
    def data(self) -> Any:
        """The result object the renderers draw (the same the CLI renders)."""
        return self._data

    def __getattr__(self, name: str) -> Any:
        # Only for names the wrapper lacks: the result's own fields (``layers``, ``exit_code``...).
        if name.startswith("__") or name in ("_data", "_command"):
            raise AttributeError(name)
        return getattr(self._data, name)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | {n for n in dir(self._data) if not n.startswith("_")})

    def _renderer(self) -> Any:
        import importlib

        return importlib.import_module(f"bninspect.render.{self._command}")

    def to_json(self) -> str:
        """The command's ``--json`` document."""
        return self._renderer().to_json(self._data)

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document as Python values."""
        return json.loads(self.to_json())

    def print(self) -> None:
        """Print what the command prints, to stdout (styled on a terminal, plain into a pipe)."""
        self._renderer().render(self._data)

    def text(self, width: int = 100) -> str:
        """What the command prints, laid out for ``width`` cells, without styles."""
        from bninspect.render.common import captured

        with captured(width) as buffer:
            self.print()
        return buffer.getvalue()

    def __str__(self) -> str:
        return self.text()

    def __repr__(self) -> str:
        file = getattr(self._data, "file", None) or getattr(self._data, "path", None)
        about = f" of {file}" if isinstance(file, str) else ""
        return f"<bninspect {self._command} result{about}; print() it for the table, .to_json() for the document>"

    def _repr_html_(self) -> str:
        """A notebook's display: the command's table."""
        return _pre(self.text(120))


class CheckResult(Result):
    """``check``'s result: ``files`` (one per file checked), ``findings`` (all of them, in file
    order), ``exit_code`` (what ``fail_on`` makes of them) and ``options`` (the settings that
    applied, pyproject.toml's included)."""

    def __init__(self, data: Any, options: Any) -> None:
        super().__init__("check", data)
        self.options = options

    @property
    def findings(self) -> list[Any]:
        """Every file's findings, in file order (each has code, severity, layer, message, fix, channels)."""
        return [f for file in self._data.files for f in file.findings]

    def print(self, format: str | None = None) -> None:  # noqa: A002 - the CLI's --format
        """Print the findings as ``check`` does: ``table``, or ``concise`` (one line per finding);
        by default as the ``format`` setting says."""
        self._renderer().render(self._data, format or self.options.format, False)


class Report(Result):
    """``report``'s result: ``save(path)`` writes the self-contained HTML file; a notebook shows it."""

    # (path, bytes) of the file ``report(..., output=)`` wrote; None where it wrote none.
    written: tuple[str, int] | None = None

    def to_json(self) -> str:
        """The report's file and layers as ``show --json`` gives them (the report itself is HTML)."""
        from bninspect.render import show as render_show

        return render_show.to_json(self._data.file)

    def to_html(self) -> str:
        """The report as one self-contained HTML document."""
        from bninspect.render import report as render_report

        return render_report.to_html(self._data)

    def save(self, path: str | os.PathLike[str]) -> int:
        """Write the report to ``path`` (never over one of its inputs); returns the bytes written."""
        from bninspect.render import report as render_report

        return render_report.save(self._data, os.fspath(path))

    def print(self) -> None:
        """Print the line ``bninspect report`` prints once it wrote the file (``output=``), or the
        file's layer table where no file was written."""
        from bninspect.render import report as render_report
        from bninspect.render import show as render_show
        from bninspect.render.common import Out

        if self.written is None:
            render_show.render(self._data.file)
        else:
            Out().print(render_report.summary_line(self._data, *self.written))

    def _repr_html_(self) -> str:
        # The document sits in an iframe: its styles stay its own, the notebook's stay the notebook's.
        return (f'<iframe srcdoc="{html.escape(self.to_html(), quote=True)}" '
                'style="width:100%;height:720px;border:1px solid #ccc"></iframe>')


def _pre(text: str) -> str:
    return f'<pre style="white-space:pre;overflow-x:auto;font-size:12px">{html.escape(text)}</pre>'


# -- load: layers as numbers ----------------------------------------------------------------------

class Layer:
    """One BatchNorm layer: its tensors as numpy arrays (entry i belongs to channel i) and its facts.

    ``weight`` (γ), ``bias`` (β), ``running_mean`` (μ) and ``running_var`` (σ²) are 1-D arrays
    of ``channels`` values in the file's precision, or None where the layer lacks them;
    ``scale`` and ``shift`` are what inference multiplies and adds per channel
    (γ/√(σ²+ε) and β − μ·scale, float64).
    """

    def __init__(self, layer: BNLayer, loaded: Loaded) -> None:
        self._layer = layer
        self._loaded = loaded

    name = property(lambda self: self._layer.name, doc="The layer's name as `show` prints it.")
    key = property(lambda self: self._layer.key_prefix, doc="Its module path in the file (wrapper prefix kept).")
    kind = property(lambda self: self._layer.kind, doc="BatchNorm1d/2d/3d, SyncBatchNorm, FrozenBatchNorm2d, ...")
    channels = property(lambda self: self._layer.channels, doc="C: the length of each tensor.")
    eps = property(lambda self: self._layer.eps, doc="ε, the module's own or PyTorch's default (see eps_source).")
    eps_source = property(lambda self: self._layer.eps_source, doc='"module", "default" or "user".')
    momentum = property(lambda self: self._layer.momentum, doc="The running-statistics momentum (None: cumulative).")
    affine = property(lambda self: self._layer.affine, doc="Whether it has γ and β (None where nothing says).")
    track_running_stats = property(lambda self: self._layer.track_running_stats)
    training = property(lambda self: self._layer.training, doc="The module's mode (None: a state dict has none).")
    num_batches_tracked = property(lambda self: self._layer.num_batches_tracked)

    @property
    def producer(self) -> str | None:
        """The layer that feeds it (conv or linear), by name, or None where none matched."""
        return self._layer.producer.name if self._layer.producer else None

    def _tensor(self, name: str) -> np.ndarray | None:
        ref = self._layer.tensors.get(name)
        return None if ref is None else ref.numpy().reshape(-1)

    weight = property(lambda self: self._tensor("weight"), doc="γ, one value per channel (None: affine=False).")
    bias = property(lambda self: self._tensor("bias"), doc="β, one value per channel (None: affine=False).")
    running_mean = property(lambda self: self._tensor("running_mean"), doc="μ, one value per channel.")
    running_var = property(lambda self: self._tensor("running_var"), doc="σ², one value per channel.")

    @property
    def scale(self) -> np.ndarray:
        """γ/√(σ²+ε) per channel: what inference multiplies the input by (float64)."""
        return self._layer.folded()[0]

    @property
    def shift(self) -> np.ndarray:
        """β − μ·scale per channel: what inference adds after (float64)."""
        return self._layer.folded()[1]

    def explain(self, channel: int | None = None) -> Result:
        """``bninspect explain`` of this layer (``channel``: work one channel through)."""
        return explain(self._loaded._source, self.name, channel=channel, **self._loaded._options)

    def __repr__(self) -> str:
        return (f"<BatchNorm layer {self.name}: {self.kind}, C={self.channels}, eps={self.eps:g}"
                + (f", fed by {self.producer}" if self.producer else "") + ">")

    def figure(self) -> str:
        """μ, σ², γ, β and scale by channel and sorted, the channels check's rules name marked: an
        SVG document, as ``report`` draws a layer's page (needs the ``bninspect[report]`` extra)."""
        from bninspect.render import figures
        from bninspect.render import report as render_report
        from bninspect.services.series import layer_series, rule_marks

        render_report.require()
        layer = self._layer
        marks = rule_marks([layer], self._loaded._found.checkpoint).get(layer.name, {})
        values = {n: layer.values(n) for n in ("running_mean", "running_var", "weight", "bias")}
        values["scale"] = layer_series(layer).scale
        drawn, _ = figures.drawable_marks(marks)
        with figures.figures() as drawing:
            return drawing.layer_svg({n: v for n, v in values.items() if v is not None}, drawn, {})

    def _repr_html_(self) -> str:
        """A notebook's display: what ``explain`` says, and the figure where matplotlib is installed."""
        from bninspect.errors import UsageError

        try:
            picture = self.figure()
        except UsageError:  # the report extra (matplotlib) is not installed: the text alone
            picture = ""
        return self.explain()._repr_html_() + picture


class Loaded:
    """A checkpoint (or live module) opened safely: ``layers`` maps each BatchNorm layer's name to
    a :class:`Layer`; ``format``, ``notes`` and ``safety`` say what the file is and what a real
    load of it would run."""

    def __init__(self, source: Source, found: Discovery, options: dict[str, Any]) -> None:
        from bninspect.services.common import source_name

        self._source = source
        self._found = found
        self._options = options
        self.path: str = source_name(source)
        self.format: str = found.checkpoint.format
        self.notes: list[str] = list(found.checkpoint.notes)
        self.layers: dict[str, Layer] = {l.name: Layer(l, self) for l in found.layers}
        self.possible: dict[str, Layer] = {l.name: Layer(l, self) for l in found.possible}

    @property
    def safety(self) -> str | None:
        """What a real ``torch.load`` of the file would run or import, in words (as ``show`` and
        ``report`` say it); None where loading runs nothing (safetensors, ONNX, IR, a live module)."""
        from bninspect.services.report import safety_verdict

        return safety_verdict(self._found.checkpoint)

    def show(self, *, layers: Sequence[str] | None = None, channels: bool = False, limit: int | None = None) -> Result:
        """``bninspect show`` of what was loaded (no second read of the file)."""
        from bninspect.services.show import describe

        return Result("show", describe(self._found, self.path, layers=_globs(layers), channels=channels, limit=limit))

    def check(self, **settings: Any) -> CheckResult:
        """``bninspect check`` of what was loaded (settings as :func:`check` takes them)."""
        from bninspect.services.check import check_discovered

        options = _check_options(settings)
        return CheckResult(check_discovered(self._found, self.path, options), options)

    def __repr__(self) -> str:
        return f"<bninspect.Loaded {self.path}: {len(self.layers)} BatchNorm layers ({self.format})>"

    def _repr_html_(self) -> str:
        return self.show()._repr_html_()


def load(source: Source, *, key: str | None = None, eps: float | None = None, trust: bool = False,
         strict: bool = False) -> Loaded:
    """Open a checkpoint (or read a live ``torch.nn.Module``) and find its BatchNorm layers.

    Files are read statically as ``bninspect show`` reads them: nothing from the file runs unless
    ``trust``. ``key`` picks one state dict of a nested checkpoint; ``eps`` stands in for every
    layer's eps; ``strict`` adds integrity checks.
    """
    from bninspect.services.common import open_layers

    options = {"key": key, "eps": eps, "trust": trust, "strict": strict}
    return Loaded(source, open_layers(_source(source), **options), options)


# -- the commands ---------------------------------------------------------------------------------

def show(source: Source, *, layers: Sequence[str] | str | None = None, channels: bool = False, key: str | None = None,
         eps: float | None = None, limit: int | None = None, trust: bool = False, strict: bool = False) -> Result:
    """``bninspect show``: every BatchNorm layer's tensors, statistics and producer (``layers``:
    name globs; ``channels``: per-channel rows; ``limit``: at most that many layers)."""
    from bninspect.services.show import show as service

    return Result("show", service(_source(source), layers=_globs(layers), channels=channels, key=key, eps=eps,
                                  limit=limit, trust=trust, strict=strict))


def explain(source: Source, layer: str, *, channel: int | None = None, key: str | None = None,
            eps: float | None = None, trust: bool = False, strict: bool = False) -> Result:
    """``bninspect explain``: one layer with its own numbers (``channel``: work it through)."""
    from bninspect.services.explain import explain as service

    return Result("explain", service(_source(source), layer, channel=channel, key=key, eps=eps, trust=trust,
                                     strict=strict))


def check(sources: Source | Iterable[Source], *, select: Sequence[str] | str | None = None,
          ignore: Sequence[str] | str | None = None, fail_on: str | None = None, eps: float | None = None,
          key: str | None = None, strict: bool = False, jobs: int | None = None, debug: bool = False,
          format: str | None = None, **thresholds: float) -> CheckResult:  # noqa: A002 - the CLI's --format
    """``bninspect check``: the coded rules on files, folders or a live module.

    ``select``/``ignore``: rule codes or prefixes; ``fail_on``: the level ``exit_code`` gates on;
    ``thresholds``: the rules' settings by their option names (``min_updates``, ``count_ratio``,
    ``max_scale``, ``dead_gamma``, ``outlier_z``, ``eps_tolerance``, ``expect_eps``). As on the
    command line, ``[tool.bninspect]`` of the nearest pyproject.toml applies first. A file that
    cannot be read is a result with its ``error`` (as the command reports it), or with ``debug``
    the exception itself. ``format`` (table or concise) is how ``print()`` lays findings out.
    """
    settings = {"select": select, "ignore": ignore, "fail_on": fail_on, "eps": eps, "key": key, "strict": strict,
                "jobs": jobs, "debug": debug, "format": format, **thresholds}
    from bninspect.formats import live

    options = _check_options(settings)
    if live.is_module(sources):
        from bninspect.services.check import check_discovered
        from bninspect.services.common import open_layers, source_name

        found = open_layers(sources, eps=options.eps)
        return CheckResult(check_discovered(found, source_name(sources), options), options)
    from bninspect.services.check import check as service

    paths = [os.fspath(p) for p in ([sources] if isinstance(sources, (str, os.PathLike)) else sources)]
    return CheckResult(service(paths, options), options)


def verify(source: Source | None = None, *, device: str = "cpu", layers: Sequence[str] | str | None = None,
           eps: float | None = None, key: str | None = None, trust: bool = False, strict: bool = False,
           input: str | os.PathLike[str] | None = None, expected: str | os.PathLike[str] | None = None,
           output: str | os.PathLike[str] | None = None, channels_last: bool = False,
           input_channels_last: bool = False, output_channels_last: bool = False, batch: int = 2, spatial: int = 4,
           train_batch: Sequence[int] | str = (1, 2, 8, 32), seed: int = 0) -> Result:
    """``bninspect verify``: recompute each layer's inference on ``device`` against a float64
    reference (on a live module: its own buffers); without ``source``, this machine's BN kernels.
    ``input``/``expected``/``output``: real activations, another runtime's outputs, where to write."""
    from bninspect.services.common import parse_sizes
    from bninspect.services.verify import verify as service

    batches = tuple(parse_sizes(train_batch if isinstance(train_batch, str) else ",".join(map(str, train_batch)),
                                "--train-batch"))
    return Result("verify", service(None if source is None else _source(source), device=device,
                                       layers=_globs(layers), eps=eps, trust=trust, key=key, strict=strict,
                                       input_path=_path(input), channels_last=channels_last, output_path=_path(output),
                                       expected_path=_path(expected), batch=batch, spatial=spatial,
                                       train_batches=batches, seed=seed, input_channels_last=input_channels_last,
                                       output_channels_last=output_channels_last))


def diff(a: Source, b: Source, *, layers: Sequence[str] | str | None = None, run: bool = False,
         key: str | None = None, key_b: str | None = None, eps: float | None = None, trust: bool = False) -> Result:
    """``bninspect diff``: where the BatchNorm behaviour of two artifacts (files or live modules)
    differs, per layer and channel, folded or not (``run``: also run the ONNX/IR side)."""
    from bninspect.services.diff import diff as service

    return Result("diff", service(_source(a), _source(b), layers=_globs(layers), trust=trust, key=key, key_b=key_b,
                                  eps=eps, run=run))


def drift(source: Source, *, data: str | os.PathLike[str] | Any = None, synthetic: str | None = None,
          arch: str | None = None, arch_kwargs: Mapping[str, Any] | str | None = None,
          batch_sizes: Sequence[int] | str | None = None, device: str = "cpu", max_drift: float = 0.1,
          batch_tolerance: float = 0.1, min_agreement: float = 0.99,
          write_recalibrated: str | os.PathLike[str] | None = None, key: str | None = None,
          trust: bool = False, progress: Callable[[str, int, int], None] | None = None) -> Result:
    """``bninspect drift``: run the model (``arch`` builds it, or ``trust`` loads a TorchScript/
    pickled model; a live module runs as it is, on a copy) on ``data`` (a file, a tensor or numpy
    array of samples, or a DataLoader: its batches' inputs, up to 2^28 values) or ``synthetic`` inputs (e.g. "16x3x64x64"), and measure how far the
    running statistics are from the data's, per batch size. ``progress(phase, done, total)`` is
    called as the work advances (the CLI draws its progress bar with it)."""
    from bninspect.services.drift import drift as service

    return Result("drift", service(_source(source), arch=arch, arch_kwargs=_kwargs(arch_kwargs), trust=trust,
                                     key=key, data=_data(data), synthetic=synthetic, batch_sizes=_sizes(batch_sizes),
                                     device=device, max_drift=max_drift, batch_tolerance=batch_tolerance,
                                     min_agreement=min_agreement, write_recalibrated=_path(write_recalibrated),
                                     progress=progress))


def report(source: Source, other: Source | None = None, *, data: str | os.PathLike[str] | Any = None,
           synthetic: str | None = None, arch: str | None = None, arch_kwargs: Mapping[str, Any] | str | None = None,
           batch_sizes: Sequence[int] | str | None = None, layers: Sequence[str] | str | None = None,
           pages: int | None = None, key: str | None = None, key_b: str | None = None, eps: float | None = None,
           trust: bool = False, strict: bool = False, output: str | os.PathLike[str] | None = None) -> Report:
    """``bninspect report``: every layer, check's findings, per-channel plots (``pages`` layers),
    drift with ``data`` (a file, tensor, array or DataLoader) or ``synthetic``, the diff with ``other``. ``output``: write the
    HTML file there (checked before any work: never over an input); ``.save(path)`` writes it
    anywhere later; a notebook shows it inline. Needs the ``bninspect[report]`` extra."""
    from bninspect.render import report as render_report
    from bninspect.services.report import report as service

    render_report.require()
    result = Report("report", service(_source(source), None if other is None else _source(other), data=_data(data),
                                      synthetic=synthetic, arch=arch, arch_kwargs=_kwargs(arch_kwargs),
                                      batch_sizes=_sizes(batch_sizes), layers=_globs(layers), pages=pages, key=key,
                                      key_b=key_b, eps=eps, trust=trust, strict=strict, output=_path(output)))
    if output is not None:
        result.written = (os.fspath(output), result.save(output))
    return result


# -- arguments: the API's Python values in the services' terms --------------------------------------

def _source(source: Any) -> Any:
    """A path as a str, a live module as it is; anything else is a usage error."""
    from bninspect.errors import UsageError
    from bninspect.formats import live

    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if live.is_module(source):
        return source
    raise UsageError(f"expected a checkpoint path or a torch.nn.Module, not {type(source).__name__}")


def _data(data: Any) -> Any:
    """A data file's path as a str; a tensor or array of samples as it is."""
    return os.fspath(data) if isinstance(data, (str, os.PathLike)) else data


def _path(path: str | os.PathLike[str] | None) -> str | None:
    return None if path is None else os.fspath(path)


def _globs(globs: Sequence[str] | str | None) -> list[str] | None:
    return [globs] if isinstance(globs, str) else list(globs) if globs else None


def _sizes(sizes: Sequence[int] | str | None) -> str | None:
    return sizes if sizes is None or isinstance(sizes, str) else ",".join(map(str, sizes))


def _kwargs(kwargs: Mapping[str, Any] | str | None) -> str | None:
    return kwargs if kwargs is None or isinstance(kwargs, str) else json.dumps(dict(kwargs))


def _codes(codes: Sequence[str] | str | None) -> list[str] | None:
    if not codes:
        return None
    return [c for v in ([codes] if isinstance(codes, str) else codes) for c in v.split(",") if c.strip()]


def _check_options(settings: dict[str, Any]) -> Any:
    """check's options from the API's keyword arguments (rule settings by their option names)."""
    import dataclasses

    from bninspect.errors import UsageError
    from bninspect.rules import Thresholds
    from bninspect.services.check import CheckOptions, resolve_options

    rules = [f.name for f in dataclasses.fields(Thresholds)]
    options = {f.name for f in dataclasses.fields(CheckOptions)} - {"thresholds", "config"}
    unknown = sorted(set(settings) - set(rules) - options)
    if unknown:
        raise UsageError(f"check() has no setting {', '.join(unknown)}; its rule settings are {', '.join(rules)}")
    flags = dict(settings)
    flags["select"], flags["ignore"] = _codes(flags.get("select")), _codes(flags.get("ignore"))
    flags["strict"], flags["debug"] = flags.get("strict") or None, flags.get("debug") or None
    return resolve_options(flags)
