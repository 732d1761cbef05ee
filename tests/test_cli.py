"""The command line itself: help, version, usage errors, closed pipes."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.conftest import SAMPLES, assert_one_line_error, bninspect_command, needs_torch


def test_help_lists_every_command_and_keeps_bracketed_text(cli):
    run = cli("--help")
    assert run.code == 0
    for command in ("show", "explain", "verify", "check", "rules", "drift", "diff"):
        assert f" {command} " in run.out
    check_help = cli("check", "--help").out
    # rich would read these as markup and drop them silently.
    assert "[tool.bninspect]" in check_help and "[default: 200]" in check_help


USAGE = {"show": "CKPT", "explain": "CKPT LAYER", "verify": "[CKPT]", "check": "PATH...", "rules": "[CODE]",
         "drift": "CKPT", "diff": "A B"}


@pytest.mark.parametrize("command", list(USAGE))
def test_help_names_arguments_as_users_type_them(cli, command):
    """No {CKPT} braces, no Python types such as <str> or <list[str]>: CKPT, [CKPT], PATH..."""
    text = cli(command, "--help").out
    assert text.startswith(f"Usage: bninspect {command} [OPTIONS] {USAGE[command]}\n"), text.splitlines()[0]
    assert not any(mark in text for mark in ("{", "<str>", "<list[", "<int>", "<float>")), text
    arguments = text.split("Arguments:\n", 1)[1].split("\n\n", 1)[0]
    assert [line.split()[0] for line in arguments.splitlines() if line[2:3] != " "] == \
        USAGE[command].replace("[", "").replace("]", "").split()


def test_no_arguments_prints_help(cli):
    run = cli()
    assert run.code == 0 and "Usage" in run.out


def test_version(cli):
    run = cli("--version")
    assert run.code == 0 and run.out.startswith("bninspect ")


def test_unknown_command_and_option_are_one_line_usage_errors(cli):
    assert_one_line_error(cli("frobnicate"), 2, "frobnicate")
    assert_one_line_error(cli("show", str(SAMPLES / "resnet_tiny.pt"), "--bogus"), 2, "--bogus")


def test_a_misspelt_command_gets_a_suggestion_and_a_command_its_own_help(cli):
    """A run builds only the command it names (an app of its own); the whole app still answers
    a misspelt name with a suggestion, and a command's help and usage name the program and it."""
    assert_one_line_error(cli("shw", "x.pt"), 2, "No such command 'shw'. Did you mean 'show'?")
    assert cli("show", "--help").out.startswith("Usage: bninspect show [OPTIONS] CKPT")
    assert_one_line_error(cli("show"), 2, "Missing argument 'CKPT'")
    assert_one_line_error(cli("--debug", "show"), 2, "Missing argument 'CKPT'")


def test_option_values_are_converted_and_bad_ones_are_usage_errors(cli):
    """typer converts values (its own messages); a number that is not one is exit 2 naming the
    option, and good values reach the command."""
    sample = str(SAMPLES / "resnet_tiny.pt")
    assert_one_line_error(cli("show", sample, "--limit", "x"), 2, "'--limit'", "integer")
    assert_one_line_error(cli("show", sample, "--eps", "1e-3e"), 2, "'--eps'", "number")
    assert_one_line_error(cli("check", sample, "--jobs", "1.5"), 2, "'--jobs'")
    run = cli("show", sample, "--limit", "2", "--eps", "1e-3", "--layer", "bn1", "--layer", "layer1.*")
    assert run.code == 0, run.err
    assert "eps: 0.001 (from --eps)" in run.out
    assert "3 BatchNorm layers" in run.out and "showing the first 2" in run.out  # both --layer globs, --limit 2


def test_the_cli_uses_no_private_name_of_typer_click_or_rich():
    """Public APIs only: a renamed private attribute in a typer release must not break every
    command. The same patterns the project's pre-stop hook looks for, over the package."""
    import re

    pattern = re.compile(r"typer\._[a-z]|typer\.core\._|click\._[a-z]|rich\._[a-z]|_TyperParameter|registered_commands *=")
    package = SAMPLES.parent / "bninspect"
    hits = [f"{p.relative_to(package)}:{n}" for p in package.rglob("*.py")
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert hits == []


def test_closed_output_pipe_is_not_a_traceback():
    proc = subprocess.Popen([*bninspect_command(), "show", str(SAMPLES / "mobilenet_v1_tiny.pt"), "--channels"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={"COLUMNS": "200", "PATH": "/usr/bin:/bin",
                                 **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"}})  # this checkout's code
    proc.stdout.readline()
    proc.stdout.close()  # like `| head -1`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert "Traceback" not in err and err == ""


@pytest.mark.torch
@pytest.mark.parametrize("args", [("verify", SAMPLES / "resnet_tiny.pt"),
                                  ("diff", SAMPLES / "mobilenet_v1_tiny.pt", SAMPLES / "mobilenet_v1_tiny_train.ts"),
                                  ("drift", SAMPLES / "mobilenet_v1_tiny.ts", "--trust", "--synthetic", "4x3x16x16",
                                   "--batch-sizes", "2")], ids=["verify", "diff", "drift"])
def test_output_into_a_closed_pipe_is_exit_141(args):
    """The reader is gone before the first line: the first write fails, deterministically."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([*bninspect_command(), *map(str, args)], stdout=write_end, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, timeout=120, env={**os.environ, "COLUMNS": "200"})
    finally:
        os.close(write_end)
    assert proc.returncode == 141 and proc.stderr == b"", proc.stderr.decode()


def test_terminal_escapes_in_a_file_name_are_printed_escaped(cli, tmp_path):
    name = tmp_path / "evil\x1b[2J\x1b[31mname.pt"
    name.write_bytes(b"not a checkpoint")
    run = cli("show", str(name))
    assert_one_line_error(run, 4, "evil\\x1b[2J\\x1b[31mname.pt")
    assert "\x1b" not in run.err


def test_debug_is_accepted_after_the_command(cli):
    run = cli("show", str(SAMPLES / "resnet_tiny.pt"), "--debug", "--limit", "1")
    assert run.code == 0 and "bn1" in run.out


def test_size_lists_are_checked_in_one_place(cli):
    for bad in ("1,x", "0", ","):
        assert_one_line_error(cli("verify", str(SAMPLES / "resnet_tiny.pt"), "--train-batch", bad), 2,
                              "--train-batch must be positive integers separated by commas", repr(bad))


@pytest.mark.torch  # verify imports torch before it reads --input
def test_activation_files_get_the_same_path_checks_as_checkpoints(cli, tmp_path):
    import os

    ckpt = str(SAMPLES / "resnet_tiny.pt")
    assert_one_line_error(cli("verify", ckpt, "--layer", "bn1", "--input", str(tmp_path)), 5, "not an array file")
    os.mkfifo(tmp_path / "x.npy")
    assert_one_line_error(cli("verify", ckpt, "--layer", "bn1", "--input", str(tmp_path / "x.npy"), timeout=60),
                          5, "FIFO")
    os.symlink(tmp_path / "loop.npy", tmp_path / "loop.npy")
    assert_one_line_error(cli("verify", ckpt, "--layer", "bn1", "--input", str(tmp_path / "loop.npy")), 5, "symlink loop")


def test_an_unexpected_failure_names_the_file_in_one_bounded_line(monkeypatch, capsys):
    """The line for a bug of ours names the command's files and cuts a huge message. No input
    known today makes one (the hardening suite checks that), so a service is made to fail."""
    import bninspect.services.show as show_service
    from bninspect import cli

    def fail(*args, **kwargs):
        raise RuntimeError("boom " + "x" * 10_000_000)

    monkeypatch.setattr(show_service, "show", fail)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["show", "some model.pt"])
    lines = capsys.readouterr().err.splitlines()
    assert exit_info.value.code == 4 and len(lines) == 1
    assert lines[0].startswith("bninspect: error: some model.pt: unexpected failure (RuntimeError: boom xxx")
    assert len(lines[0]) < 400


ZERO_VAR = str(SAMPLES / "faulty" / "zero_var.pt")  # features.3.bn.running_var is 0 in channels 3 and 9
EPS_COMMANDS = {"show": ("show", ZERO_VAR), "explain": ("explain", ZERO_VAR, "features.3.bn"), "check": ("check", ZERO_VAR),
                "verify": ("verify", ZERO_VAR, "--layer", "features.3.bn"), "diff": ("diff", ZERO_VAR, ZERO_VAR)}


@pytest.mark.parametrize("command", [c if c in ("show", "explain", "check") else needs_torch(c) for c in EPS_COMMANDS])
@pytest.mark.parametrize("bad", ["-1", "nan", "inf", "-inf"])
def test_every_command_validates_eps_the_same_way(cli, command, bad):
    assert_one_line_error(cli(*EPS_COMMANDS[command], f"--eps={bad}"), 2, f"--eps must be a finite number ≥ 0, not {bad}")


@pytest.mark.parametrize("command", [c if c in ("show", "explain") else needs_torch(c) for c in ("show", "explain", "verify", "diff")])
def test_eps_0_is_allowed_and_says_where_it_divides_by_zero(cli, command):
    run = cli(*EPS_COMMANDS[command], "--eps", "0")
    assert run.code in (0, 1) and run.err == "", run.err  # verify fails the layer (its output is not finite)
    assert ("features.3.bn: eps 0 and running_var 0 in channels 3, 9 (2 of 64): y = γ·(x − μ)/√(σ² + ε) divides by zero"
            in " ".join(run.out.split()))


def test_check_eps_0_is_allowed_and_bn105_says_it_divides_by_zero(cli):
    run = cli("check", ZERO_VAR, "--eps", "0", "--expect-eps", "0", "--json")
    assert run.code == 0 and run.err == "", run.err
    (finding,) = json.loads(run.out)["findings"]
    assert finding["code"] == "BN105" and finding["channels"] == [3, 9]
    assert "with eps 0 inference divides by √(σ² + ε) = 0 there" in finding["message"]
    assert finding["evidence"]["amplification_per_unit_gamma"] == "Infinity"
    assert_one_line_error(cli("check", ZERO_VAR, "--expect-eps=nan"), 2, "--expect-eps must be a finite number ≥ 0, not nan")
