"""Fuzzing: mutated sample checkpoints never crash bninspect, never hang it, never change the input.

Mutations of the real samples (zip archive, safetensors, TorchScript, legacy, Lightning): bit
flips, byte overwrites, truncations, edits of the safetensors JSON header, and byte edits inside
``data.pkl`` written back with a valid CRC (so the unpickler, not the CRC check, meets them).
Each mutant goes through one command in-process (``bninspect.cli.main``, SystemExit caught:
~50 ms instead of ~0.5 s per run) and must give an exit code of a known class, exactly one
``bninspect: error:`` line on failure, never a traceback or our "unexpected failure" bug line,
and leave the file's bytes and mtime, and its folder, as they were. A few fixed mutants also
go through the installed command.

CI runs a short deterministic part. The long run, thousands of random cases:

    BNINSPECT_FUZZ_EXAMPLES=5000 python -m pytest -m slow -p no:cacheprovider tests/hardening/test_fuzz.py

(``BNINSPECT_FUZZ_LOG=FILE`` also appends one line per mutant: seed, mutation, command, exit code.)
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal
import struct
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bninspect.cli import main
from tests.conftest import HAVE_TORCH, SAMPLES, run_cli

SEEDS = {
    "zip": SAMPLES / "mobilenet_v1_tiny.pt",
    "safetensors": SAMPLES / "mobilenet_v1_tiny.safetensors",
    "torchscript": SAMPLES / "mobilenet_v1_tiny.ts",
    "legacy": SAMPLES / "mobilenet_v1_tiny_legacy.pt",
    "lightning": SAMPLES / "resnet_tiny_lightning.ckpt",
}
if not HAVE_TORCH:  # the legacy format is loaded by torch.load(weights_only=True) once scanned
    del SEEDS["legacy"]
SEED_BYTES = {name: path.read_bytes() for name, path in SEEDS.items()}
ZIP_SEEDS = ("zip", "torchscript", "lightning")

# Exit codes a mutant may get: ok, findings (check/verify), usage (explain: the layer's name was
# mutated away), unsafe (a mutated GLOBAL now names something else), invalid. 5 cannot happen: the
# path is always a regular file.
ALLOWED_CODES = {0, 1, 2, 3, 4}
COMMANDS = (
    ("show",),
    ("show", "--json", "--channels"),
    ("show", "--strict"),
    ("explain", "{path}", "features.2.bn", "--channel", "3"),
    ("check", "--json"),
)
CI_EXAMPLES = 80
LONG_EXAMPLES = int(os.environ.get("BNINSPECT_FUZZ_EXAMPLES", "3000"))
PER_CASE_SECONDS = 60

STATS: Counter = Counter()


# -- mutations -----------------------------------------------------------------------------------

def _flip_bits(raw: bytes, bits: list[int]) -> bytes:
    out = bytearray(raw)
    for bit in bits:
        out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _overwrite(raw: bytes, at: int, data: bytes) -> bytes:
    at %= len(raw)
    return raw[:at] + data + raw[at + len(data):]


def _data_pkl_edit(raw: bytes, edit) -> bytes:
    """Apply ``edit(bytes) -> bytes`` to data.pkl and rewrite the zip, CRCs valid."""
    src = zipfile.ZipFile(io.BytesIO(raw))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl") and info.filename.count("/") == 1:
                data = edit(data)
            dst.writestr(info.filename, data)
    return out.getvalue()


def _st_split(raw: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _st_join(header: dict | bytes, data: bytes, delta: int = 0) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", max(0, len(text) + delta)) + text + data


WEIRD_VALUES = st.one_of(
    st.integers(-(2**70), 2**70),
    st.lists(st.integers(-3, 2**40), max_size=5),
    st.lists(st.integers(0, 2**64), min_size=2, max_size=2),
    st.text(max_size=8),
    st.none(),
    st.floats(allow_nan=True),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
WEIRD_NAMES = st.sampled_from(["[bold red]x[/]", "[/]", "a\x1b[2Jb", "a\nb", "", "bn.running_var", "__metadata__"])


@st.composite
def mutants(draw) -> tuple[str, str, bytes]:
    """(seed name, mutation name, mutated bytes)."""
    seed = draw(st.sampled_from(sorted(SEEDS)))
    raw = SEED_BYTES[seed]
    kinds = ["bitflip", "overwrite", "truncate"]
    if seed in ZIP_SEEDS:
        kinds.append("data_pkl")
    if seed == "safetensors":
        kinds += ["st_field", "st_name", "st_length", "st_duplicate"]
    kind = draw(st.sampled_from(kinds))
    if kind == "bitflip":
        positions = draw(st.lists(st.integers(0, len(raw) * 8 - 1), min_size=1, max_size=16))
        return seed, kind, _flip_bits(raw, positions)
    if kind == "overwrite":
        at = draw(st.integers(0, len(raw) - 1))
        return seed, kind, _overwrite(raw, at, draw(st.binary(min_size=1, max_size=64)))
    if kind == "truncate":
        return seed, kind, raw[: draw(st.integers(0, len(raw) - 1))]
    if kind == "data_pkl":
        op = draw(st.sampled_from(["flip", "overwrite", "cut", "insert"]))
        pos = draw(st.integers(0, 10**6))
        blob = draw(st.binary(min_size=1, max_size=16))

        def edit(pkl: bytes) -> bytes:
            at = pos % len(pkl)
            if op == "flip":
                return pkl[:at] + bytes([pkl[at] ^ (blob[0] or 1)]) + pkl[at + 1:]
            if op == "overwrite":
                return _overwrite(pkl, at, blob)
            if op == "cut":
                return pkl[:at] + pkl[at + len(blob):]
            return pkl[:at] + blob + pkl[at:]

        return seed, f"data_pkl_{op}", _data_pkl_edit(raw, edit)
    header, data = _st_split(raw)
    names = sorted(k for k in header if k != "__metadata__")
    name = draw(st.sampled_from(names))
    if kind == "st_field":
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
        header[name] = {**header[name], field: draw(WEIRD_VALUES)}
        return seed, f"st_{field}", _st_join(header, data)
    if kind == "st_name":
        header[draw(WEIRD_NAMES)] = header.pop(name)
        return seed, kind, _st_join(header, data)
    if kind == "st_length":
        return seed, kind, _st_join(header, data, delta=draw(st.integers(-40, 40)))
    text = json.dumps(header)
    dup = text[:-1] + f", {json.dumps(name)}: " + json.dumps(header[draw(st.sampled_from(names))]) + "}"
    return seed, kind, _st_join(dup.encode(), data)


# -- the invariant -------------------------------------------------------------------------------

class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout


def run_in_process(args: list[str]) -> tuple[int, str, str]:
    """``bninspect ARGS`` through ``main`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = None
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(PER_CASE_SECONDS)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except _Timeout:
        pytest.fail(f"bninspect {' '.join(args)} took over {PER_CASE_SECONDS} s")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert code is not None, "main() returned without sys.exit"
    return code, out.getvalue(), err.getvalue()


def check_mutant(seed: str, kind: str, raw: bytes, command: tuple[str, ...]) -> None:
    """Write the mutant, run one command on it, assert the invariant."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"mutant-{seed}{SEEDS[seed].suffix}"
        path.write_bytes(raw)
        os.utime(path, ns=(10**18, 10**18))
        args = [a.replace("{path}", str(path)) for a in command]
        if "{path}" not in " ".join(command):
            args.append(str(path))
        code, out, err = run_in_process(args)
        STATS[(seed, kind, code)] += 1
        if os.environ.get("BNINSPECT_FUZZ_LOG"):  # a record that survives a long run cut short
            with open(os.environ["BNINSPECT_FUZZ_LOG"], "a") as log:
                log.write(f"{seed} {kind} {' '.join(command)} {code}\n")
        where = f"{seed}/{kind}: bninspect {' '.join(command)} -> {code}"
        assert code in ALLOWED_CODES, (where, err)
        assert "Traceback" not in out + err, (where, err)
        assert "unexpected failure" not in err, (where, err)
        lines = [line for line in err.splitlines() if line.strip()]
        if code not in (0, 1):
            assert len(lines) == 1 and lines[0].startswith("bninspect: error: "), (where, err)
        assert path.read_bytes() == raw, f"{where}: the input was modified"
        assert os.stat(path).st_mtime_ns == 10**18, f"{where}: the input's mtime changed"
        assert os.listdir(d) == [path.name], f"{where}: new files beside the input: {os.listdir(d)}"


FUZZ = dict(deadline=None, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])


@settings(max_examples=CI_EXAMPLES, derandomize=True, **FUZZ)
@given(mutant=mutants(), command=st.sampled_from(COMMANDS))
def test_fuzz_mutated_samples(mutant, command):
    """The CI part: a fixed set of mutants (derandomized, the same every run)."""
    check_mutant(*mutant, command)


@pytest.mark.slow
@settings(max_examples=LONG_EXAMPLES, **FUZZ)
@given(mutant=mutants(), command=st.sampled_from(COMMANDS))
def test_fuzz_mutated_samples_long(mutant, command):
    """The long run: BNINSPECT_FUZZ_EXAMPLES random mutants (3000 by default)."""
    check_mutant(*mutant, command)


@pytest.fixture(scope="module", autouse=True)
def _report_counts(request):
    """After the module: how many mutants ran, by seed and exit code (the long run's record)."""
    yield
    if STATS:
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        by_code = Counter()
        for (_seed, _kind, code), n in STATS.items():
            by_code[code] += n
        line = f"fuzz: {sum(STATS.values())} mutants; exit codes {dict(sorted(by_code.items()))}"
        if reporter is not None:
            reporter.write_line(line)


@pytest.mark.parametrize("seed", sorted(SEEDS))
def test_installed_command_on_fixed_mutants(tmp_path, seed):
    """The same invariant through the installed command, for one seeded mutant per sample."""
    rng = random.Random(f"bninspect-fuzz-{seed}")
    raw = bytearray(SEED_BYTES[seed])
    for _ in range(8):
        raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    path = tmp_path / f"mutant{SEEDS[seed].suffix}"
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(10**18, 10**18))
    run = run_cli("show", str(path), timeout=PER_CASE_SECONDS)
    assert run.code in ALLOWED_CODES, run
    assert "Traceback" not in run.out + run.err and "unexpected failure" not in run.err, run.err
    if run.code != 0:
        assert len(run.err_lines) == 1 and run.err_lines[0].startswith("bninspect: error: "), run.err
    assert path.read_bytes() == bytes(raw) and os.stat(path).st_mtime_ns == 10**18
    assert os.listdir(tmp_path) == [path.name]
