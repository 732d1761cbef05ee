"""The command line: one dispatcher over the commands of ``cli.commands``, one error line per failure.

Only typer's public API is used. A run builds just the command it names: each command is also
registered alone on a typer app of its own (typer builds every command's click parameters from
its signature, and a run needs one), and the app with every command serves ``--help``, a
missing or unknown command (click suggests the closest) and ``--version``. Every failure
becomes one line on stderr, ``bninspect: error: ...``, and a documented exit code.

typer >= 0.29 converts option values through pydantic, whose import costs ~0.1-0.2 s of every
run that has a valued option; no public typer API avoids it (``parser=`` is wrapped in a
pydantic adapter too), so that is part of the framework's floor that benchmarks/ measures
(`a minimal Typer app`), not something patched here.
"""

from __future__ import annotations

import gc
import os
import sys
import warnings
from typing import List, Optional

import typer

from bninspect import settings
from bninspect.cli import commands
from bninspect.errors import EXIT_INVALID, EXIT_USAGE, BNInspectError, OutputClosed

# 128 + SIGPIPE, what a shell reports for a program whose output pipe closed early.
EXIT_BROKEN_PIPE = 141

_SETTINGS = dict(
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: typer's rich help imports rich's markdown, syntax and traceback before printing
    # a line (benchmarks/README.md).
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
_ROOT_FLAGS = ("--debug", "--version", "-h", "--help")


def _print_version(value: bool) -> None:
    if value:
        from bninspect import __version__

        typer.echo(f"bninspect {__version__}")
        raise typer.Exit(0)


def _root(
    debug: bool = typer.Option(False, "--debug", help="Show a traceback for unexpected errors."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True,
                                 callback=_print_version),
) -> None:
    """Understand and debug the BatchNorm layers of PyTorch checkpoints."""
    commands.DEBUG["on"] = debug


def whole_app() -> typer.Typer:
    """Every command under one app, as ``bninspect --help`` lists them."""
    app = typer.Typer(name="bninspect", help="Understand and debug the BatchNorm layers of PyTorch checkpoints.",
                      no_args_is_help=True, **_SETTINGS)
    app.callback()(_root)
    for name, (function, short_help, cls) in commands.COMMANDS.items():
        app.command(name, short_help=short_help, cls=cls)(function)
    return app


def _one_command(name: str) -> typer.Typer:
    """An app holding only the command ``name``: typer runs a one-command app as that command."""
    function, short_help, cls = commands.COMMANDS[name]
    app = typer.Typer(**_SETTINGS)
    app.command(name, short_help=short_help, cls=cls)(function)
    return app


def _fail(line: str, code: int) -> int:
    # The line names a file, and a file name may carry terminal escapes: show them, never send them.
    from bninspect.textfmt import visible

    sys.stderr.write(f"bninspect: error: {visible(line)}\n")
    sys.stderr.flush()
    return code


def _click_error(exc: BaseException) -> int | None:
    """The exit code for a usage error from click (the parser typer runs on), or None for any
    other exception: click's exceptions have ``format_message()`` and an ``exit_code``, typer
    re-exports none of their classes but ``BadParameter``."""
    message = getattr(exc, "format_message", None)
    if not callable(message) or not isinstance(getattr(exc, "exit_code", None), int):
        return None
    text = " ".join(str(message()).split())
    # UsageError (exit 2) is about the command line: point at the help.
    return _fail(f"{text} (see 'bninspect --help')" if exc.exit_code == EXIT_USAGE else text, EXIT_USAGE)  # type: ignore[attr-defined]


def _dispatch(args: List[str]) -> int:
    """Run the command ``args`` name (one app for it alone), or the whole app; its exit code."""
    name = next((a for a in args if not a.startswith("-")), None)
    before = args[:args.index(name)] if name is not None else args
    if name in commands.COMMANDS and all(a == "--debug" for a in before):
        command = typer.main.get_command(_one_command(name))
        rv = command.main(args=args[len(before) + 1:], prog_name=f"bninspect {name}", standalone_mode=False)
    else:
        command = typer.main.get_command(whole_app())
        rv = command.main(args=args or ["--help"], prog_name="bninspect", standalone_mode=False)
    return rv if isinstance(rv, int) else 0


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point: run the app, turn every failure into one line on stderr and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    # --debug is accepted anywhere on the line (`bninspect check x --debug` too): the error
    # messages that suggest it should not need the user to know where global options go.
    commands.DEBUG["on"] = "--debug" in args
    if commands.DEBUG["on"]:
        args = ["--debug"] + [a for a in args if a != "--debug"]
    # A run builds hundreds of thousands of small objects that all live until it exits, and few
    # of them form cycles: the cyclic collector would walk the growing heap again and again for
    # nothing (numbers in benchmarks/README.md). Reference counting still frees everything that
    # is not a cycle, and a process that exits soon needs no more than that.
    gc.set_threshold(50_000, 20, 20)
    # And what a checkpoint load made is frozen out of the collector's walks altogether
    # (services.common.open_layers); a library caller's process is left as it is.
    settings.freeze_loaded_objects = True
    # numpy's pip wheels start an OpenBLAS thread per core at import, and those threads spin for
    # a while, taking the core that `check --jobs 2` needs; our arrays are a few thousand values.
    # torch has its own pools; a user's setting is kept.
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    # A library warning (numpy, torch) on stderr is a line that is not ours, in words the user
    # cannot act on. Each known cause is fixed where it arises (read-only buffers are copied
    # before torch sees them, complex statistics are not widened); this drops any other, and
    # --debug shows them.
    if not commands.DEBUG["on"]:
        warnings.simplefilter("ignore")
    try:
        code = _dispatch(args)
    except BNInspectError as exc:
        if commands.DEBUG["on"]:
            raise
        code = _fail(exc.line(), exc.exit_code)
    except typer.Exit as exc:
        code = exc.exit_code
    except (KeyboardInterrupt, typer.Abort):
        code = _fail("interrupted", 130)
    except (OutputClosed, BrokenPipeError):
        # The reader of our output went away (`bninspect show x | head`): not an error of ours.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_BROKEN_PIPE
    except Exception as exc:
        usage = _click_error(exc)
        if usage is not None:
            code = usage
        elif commands.DEBUG["on"]:  # a bug: still one line, the traceback only with --debug
            raise
        else:
            detail = " ".join(str(exc)[:400].split())[:200]
            files = ", ".join(commands.ABOUT[:3]) + (", ..." if len(commands.ABOUT) > 3 else "")
            code = _fail(
                (f"{files}: " if files else "") + f"unexpected failure ({type(exc).__name__}: {detail}); "
                "this is a bug in bninspect, rerun with --debug and report it",
                EXIT_INVALID,
            )
    sys.exit(code)
