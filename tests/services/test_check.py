"""`bninspect check` and `bninspect rules` through the installed command: selection, fail-on,
pyproject settings, folder scanning with a broken file, --jobs, JSON, exit codes, escaping."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from bninspect.errors import UsageError
from bninspect.services.check import CheckOptions, check, collect_files, resolve_options
from bninspect.services.check_config import find_config
from tests.conftest import SAMPLES, assert_one_line_error, run_cli

FAULTY = SAMPLES / "faulty"


def findings(out: str) -> list[tuple[str, str, str]]:
    doc = json.loads(out)
    assert doc["schema"] == "bninspect.check/2"
    return [(Path(f["path"]).name, x["code"], x["severity"]) for f in doc["files"] for x in f["findings"]]


def test_json_document_shape():
    r = run_cli("check", str(FAULTY / "zero_var.pt"), "--json")
    assert r.code == 0 and r.err == ""
    doc = json.loads(r.out)
    (f,) = doc["files"]
    assert f["path"] == str(FAULTY / "zero_var.pt") and f["format"] == "torch-zip" and f["error"] is None
    (x,) = f["findings"]
    assert {"code", "severity", "layer", "channels", "message", "evidence", "fix"} <= set(x)
    assert (x["code"], x["severity"], x["layer"], x["channels"]) == ("BN105", "warning", "features.3.bn", [3, 9])
    assert doc["findings"] == [{"path": f["path"], **x}]  # the flat list for jq '.findings[]'
    assert doc["summary"] == {"error": 0, "warning": 1, "info": 0, "files": 1, "failed_files": 0}
    assert doc["fail_on"] == "error" and doc["exit_code"] == 0 and len(doc["rules"]) == 25


def codes_of(paths: list[Path], **flags) -> tuple[int, list[tuple[str, str, str]]]:
    """In-process: resolve flags as the CLI does (no pyproject here), check, list (file, code, severity)."""
    report = check([str(p) for p in paths], resolve_options(flags, cwd="/"))
    return report.exit_code, [(Path(f.path).name, x.code, x.severity) for f in report.files for x in f.findings]


def test_fail_on_select_ignore():
    zero = FAULTY / "zero_var.pt"  # one BN105 warning
    assert codes_of([zero]) == (0, [("zero_var.pt", "BN105", "warning")])
    assert codes_of([zero], fail_on="warning")[0] == 1
    assert codes_of([zero], fail_on="warning", ignore=["BN105"]) == (0, [])
    assert codes_of([zero], select=["BN1"], ignore=["BN104"], fail_on="info") == (1, [("zero_var.pt", "BN105", "warning")])
    train = SAMPLES / "mobilenet_v1_tiny_train.ts"
    assert codes_of([train])[0] == 1  # BN202 errors
    assert codes_of([train], fail_on="never")[0] == 0
    assert codes_of([train], ignore=["BN2"]) == (0, [])
    # the same through the installed command, comma-separated codes included (BN107: dead_gamma.pt)
    r = run_cli("check", str(zero), str(FAULTY / "dead_gamma.pt"), "--select", "BN1,BN2", "--ignore", "BN104,BN107",
                "--json", "--fail-on", "info")
    assert r.code == 1 and findings(r.out) == [("zero_var.pt", "BN105", "warning")]


def test_min_updates_sets_where_bn102_starts():
    zero = FAULTY / "zero_var.pt"  # trained like the healthy samples: 240 updates per BN
    assert {c for _, c, _ in codes_of([zero])[1]} == {"BN105"}  # 240 ≥ the default 200
    assert {c for _, c, _ in codes_of([zero], min_updates=1000)[1]} == {"BN102", "BN105"}
    r = run_cli("check", str(zero), "--select", "BN102", "--min-updates", "1000", "--json")
    assert r.code == 0 and findings(r.out) == [("zero_var.pt", "BN102", "warning")] * 4


def test_expect_eps_turns_bn301_into_an_error():
    keras = FAULTY / "eps_keras.ts"
    code, found = codes_of([keras])
    assert code == 0 and {s for _, c, s in found if c == "BN301"} == {"info"}
    code, found = codes_of([keras], expect_eps=1e-5)
    assert code == 1 and {s for _, c, s in found if c == "BN301"} == {"error"}


def test_pyproject_settings_apply_and_flags_override(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.bninspect]\nfail-on = "warning"\nignore = ["BN3"]\nmin-updates = 1000\n')
    sub = tmp_path / "models" / "deep"
    sub.mkdir(parents=True)
    (sub / "pyproject.toml").write_text('[project]\nname = "inner, without the table"\n')
    zero, half = str(FAULTY / "zero_var.pt"), str(FAULTY / "half_stats.pt")
    # BN303 ignored by the table; the table's min-updates (BN102 on 240 updates) is overridden by the flag
    assert check([half], resolve_options({"min_updates": 200}, cwd=str(sub))).exit_code == 0
    assert resolve_options({}, cwd=str(sub)).thresholds.min_updates == 1000
    r = run_cli("check", zero, "--json", cwd=sub)  # fail-on warning from the table
    assert r.code == 1 and json.loads(r.out)["config"] == str(tmp_path / "pyproject.toml")
    assert run_cli("check", zero, "--fail-on", "error", cwd=sub).code == 0  # the flag wins
    assert find_config(sub)[1]["min-updates"] == 1000


def test_pyproject_mistakes_are_usage_errors(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.bninspect]\nfail_on = "warning"\nmax-scle = 5\n')
    r = run_cli("check", str(FAULTY / "zero_var.pt"), cwd=tmp_path)
    assert_one_line_error(r, 2, "unknown key 'max-scle'", "pyproject.toml")
    (tmp_path / "pyproject.toml").write_text('[tool.bninspect]\nselect = ["BN9"]\n')
    assert_one_line_error(run_cli("check", str(FAULTY / "zero_var.pt"), cwd=tmp_path), 2, "no rule matches 'BN9'")
    (tmp_path / "pyproject.toml").write_text('[tool.bninspect]\nmin-updates = "many"\n')
    assert_one_line_error(run_cli("check", str(FAULTY / "zero_var.pt"), cwd=tmp_path), 2, "must be an integer")


def test_usage_errors():
    zero = str(FAULTY / "zero_var.pt")
    assert_one_line_error(run_cli("check", zero, "--fail-on", "sometimes"), 2, "--fail-on must be one of")
    assert_one_line_error(run_cli("check", zero, "--select", "BN1O1"), 2, "did you mean BN101")
    for flags, needle in (({"format": "xml"}, "--format"), ({"max_scale": -1.0}, "--max-scale must be a positive"),
                          ({"jobs": -2}, "--jobs"), ({"expect_eps": -1.0}, "--expect-eps must be a finite number ≥ 0")):
        with pytest.raises(UsageError, match=needle):
            resolve_options(flags, cwd="/")


def _folder(tmp_path: Path) -> Path:
    """Two good checkpoints (one nested), one truncated one, and things that are not checkpoints."""
    root = tmp_path / "models"
    (root / "nested").mkdir(parents=True)
    (root / ".git").mkdir()
    shutil.copy(SAMPLES / "mobilenet_v1_tiny.pt", root / "a.pt")
    shutil.copy(FAULTY / "zero_var.pt", root / "nested" / "b.bin")  # extension does not matter
    shutil.copy(SAMPLES / "mobilenet_v1_tiny.ts", root / "model.ts")  # data.pkl is not its first member
    data = (SAMPLES / "resnet_tiny.pt").read_bytes()
    (root / "broken.pt").write_bytes(data[: len(data) // 2])
    shutil.copy(SAMPLES / "resnet_tiny.pt", root / ".git" / "hidden.pt")  # hidden folders are skipped
    (root / "README.md").write_text("# models\n")
    (root / "train.py").write_text("print('hi')\n")
    os.mkfifo(root / "pipe.pt")  # never opened: reading a FIFO would block
    import zipfile

    with zipfile.ZipFile(root / "images.zip", "w") as zf:  # a zip, but not a torch archive
        zf.writestr("cat.txt", "meow")
    return root


def test_folder_scan_reports_the_broken_file_and_checks_the_rest(tmp_path):
    root = _folder(tmp_path)
    files, problems = collect_files([str(root)])
    assert [Path(f).relative_to(root).as_posix() for f in files] == ["a.pt", "broken.pt", "model.ts", "nested/b.bin"]
    assert problems == []
    r = run_cli("check", str(root), "--json")
    assert r.code == 1, r.err  # a file could not be checked
    doc = json.loads(r.out)
    by_name = {Path(f["path"]).name: f for f in doc["files"]}
    assert by_name["broken.pt"]["error"] and by_name["broken.pt"]["exit_code"] == 4
    assert by_name["a.pt"]["findings"] == [] and [x["code"] for x in by_name["b.bin"]["findings"]] == ["BN105"]
    assert len(r.err_lines) == 1 and r.err_lines[0].startswith("bninspect: error: ") and "broken.pt" in r.err_lines[0]
    assert "Traceback" not in r.err + r.out


def test_jobs_give_the_same_report(tmp_path):
    root = _folder(tmp_path)
    one = run_cli("check", str(root), "--json", "--jobs", "1")
    two = run_cli("check", str(root), "--json", "--jobs", "2")
    assert one.code == two.code == 1 and json.loads(one.out) == json.loads(two.out)


def _copies(folder: Path, n: int) -> list[str]:
    for i in range(n):
        shutil.copy(FAULTY / "zero_var.pt", folder / f"m{i}.pt")
    return [f"m{i}.pt" for i in range(n)]


def test_jobs_share_files_over_processes_in_order(tmp_path):
    """Three jobs over five files: every file is checked once and the report keeps the folder's order."""
    names = _copies(tmp_path, 5)
    report = check([str(tmp_path)], CheckOptions(jobs=3))
    assert [Path(f.path).name for f in report.files] == names
    assert all([x.code for x in f.findings] == ["BN105"] and not f.error for f in report.files)


def _in_a_child(action):
    """A check_file that does ``action`` in a forked --jobs child and checks normally here."""
    from bninspect.services import check

    real, parent = check.check_file, os.getpid()

    def check_file(path: str, opts: CheckOptions):
        if os.getpid() != parent:
            action()
        return real(path, opts)

    return check_file


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the children are forked")
def test_a_dead_job_fails_its_files_not_the_run(tmp_path, monkeypatch):
    """A child process killed mid-run (out of memory): the file it held is reported as not
    checked, with the signal and what to do; the files this process took are checked as usual."""
    import signal

    names = _copies(tmp_path, 6)
    monkeypatch.setattr("bninspect.services.check.check_file",
                        _in_a_child(lambda: os.kill(os.getpid(), signal.SIGKILL)))
    report = check([str(tmp_path)], CheckOptions(jobs=2))
    assert [Path(f.path).name for f in report.files] == names
    failed = [f for f in report.files if f.error]
    assert len(failed) == 1  # the child died on the first file it took
    assert failed[0].error == f"{failed[0].path}: the process checking this file stopped (signal 9); rerun with --jobs 1"
    assert failed[0].exit_code == 4 and report.exit_code == 1  # one file failed among others
    assert all([x.code for x in f.findings] == ["BN105"] for f in report.files if not f.error)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the children are forked")
def test_debug_error_in_a_job_reaches_the_parent(tmp_path, monkeypatch):
    """With --debug a file's unexpected error is raised (for its traceback), from a child too."""
    _copies(tmp_path, 6)

    def bug():
        raise RuntimeError("rule bug in a child")

    monkeypatch.setattr("bninspect.services.check.check_file", _in_a_child(bug))
    with pytest.raises(RuntimeError, match="rule bug in a child"):
        check([str(tmp_path)], CheckOptions(jobs=2, debug=True))


def test_nothing_loadable_exits_with_the_files_class(tmp_path):
    assert_one_line_error(run_cli("check", str(tmp_path / "missing.pt")), 5, "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04" + b"\0" * 40)
    assert_one_line_error(run_cli("check", str(bad)), 4, "bad.pt")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run_cli("check", str(empty)), 5, "no checkpoint file")


def test_concise_and_table_output():
    r = run_cli("check", str(FAULTY / "zero_var.pt"), str(FAULTY / "nan.pt"), "--format", "concise")
    assert r.code == 1
    lines = r.out.splitlines()
    assert lines[0].startswith(f"{FAULTY / 'zero_var.pt'}:features.3.bn: BN105 [warning] features.3.bn: running_var is 0 in channels 3, 9 (2 of 64)")
    assert lines[1].startswith(f"{FAULTY / 'nan.pt'}:features.4.bn: BN001 [error]")
    assert lines[-1].startswith("2 findings (1 error, 1 warning, 0 info) in 2 files")
    t = run_cli("check", str(FAULTY / "zero_var.pt"))
    assert "BN105" in t.out and "fix: prune these channels" in t.out and "torch-zip, 4 BN layers, 1 finding" in t.out


def test_names_from_the_file_cannot_drive_the_terminal(tmp_path):
    name = "evil[bold red]x\x1b[31m.bn"
    rng = np.random.default_rng(0)
    var = np.full(8, 0.5, np.float32)
    var[2] = 0.0
    path = tmp_path / "evil.safetensors"
    save_file({"conv.weight": rng.normal(size=(8, 3, 3, 3)).astype(np.float32), f"{name}.weight": np.ones(8, np.float32),
               f"{name}.bias": np.zeros(8, np.float32), f"{name}.running_mean": np.zeros(8, np.float32) + 0.1,
               f"{name}.running_var": var, f"{name}.num_batches_tracked": np.array(500)}, str(path))
    for fmt in ("table", "concise"):
        r = run_cli("check", str(path), "--format", fmt)
        assert r.code == 0 and "\x1b" not in r.out, r.out
        assert "[bold red]x\\x1b[31m" in r.out.replace("\n", "")
    doc = json.loads(run_cli("check", str(path), "--json").out)
    assert doc["files"][0]["findings"][0]["layer"] == name


def test_rules_command():
    r = run_cli("rules")
    assert r.code == 0 and all(code in r.out for code in ("BN001", "BN108", "BN206", "BN304"))
    one = run_cli("rules", "bn104")
    assert one.code == 0 and one.out.startswith("BN104 (imported-statistics) info")
    for head in ("What it does", "Why is this bad?", "Example", "Use instead"):
        assert head in one.out
    doc = json.loads(run_cli("rules", "BN2", "--json").out)
    assert doc["schema"] == "bninspect.rules/1" and [x["code"] for x in doc["rules"]] == [f"BN20{i}" for i in range(1, 7)]
    assert_one_line_error(run_cli("rules", "BN109"), 2, "did you mean")


def test_resolve_options_merges_defaults_table_and_flags(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.bninspect]\nselect = "BN1"\neps-tolerance = 0.1\n')
    opts = resolve_options({"select": None, "fail_on": "info", "eps_tolerance": None, "max_scale": 50.0}, cwd=str(tmp_path))
    assert opts.select == ["BN1"] and opts.fail_on == "info"
    assert (opts.thresholds.eps_tolerance, opts.thresholds.max_scale, opts.thresholds.min_updates) == (0.1, 50.0, 200)


@pytest.mark.parametrize("fail_on,code", [("error", 0), ("warning", 1), ("info", 1), ("never", 0)])
def test_exit_code_follows_fail_on(fail_on, code):
    report = check([str(FAULTY / "dead_gamma.pt"), str(FAULTY / "zero_var.pt")], CheckOptions(fail_on=fail_on))
    assert report.exit_code == code


def test_a_bug_on_one_file_is_reported_and_the_others_are_checked(monkeypatch):
    import bninspect.services.check as check_service

    real = check_service.run_rules

    def flaky(ctx, rules):
        if ctx.checkpoint.path.endswith("nan.pt"):
            raise ZeroDivisionError("boom")
        return real(ctx, rules)

    monkeypatch.setattr(check_service, "run_rules", flaky)
    report = check([str(FAULTY / "nan.pt"), str(FAULTY / "zero_var.pt")], CheckOptions())
    bad, good = report.files
    assert bad.exit_code == 4 and "unexpected failure (ZeroDivisionError: boom)" in bad.error and bad.findings == []
    assert good.error is None and {f.code for f in good.findings} == {"BN105"}
    assert report.exit_code == 1
    with pytest.raises(ZeroDivisionError):  # --debug lets it through, with its traceback
        check([str(FAULTY / "nan.pt")], CheckOptions(debug=True))


GOLDEN = Path(__file__).resolve().parent / "golden" / "check_faulty.json"


def test_json_matches_the_golden_document(monkeypatch):
    """The whole bninspect.check/2 document for three faulty samples: any change to a message,
    an evidence number or the schema shows up here. Regenerate with BNINSPECT_REGEN_GOLDEN=1."""
    from bninspect.render.check import to_json

    monkeypatch.chdir(SAMPLES.parent)  # relative paths in the document
    names = ["sample_checkpoints/faulty/nan.pt", "sample_checkpoints/faulty/mixed_counts.pt",
             "sample_checkpoints/faulty/eps_sensitive.pt"]
    doc = to_json(check(names, resolve_options({}, cwd="/"))) + "\n"
    if os.environ.get("BNINSPECT_REGEN_GOLDEN"):
        GOLDEN.write_text(doc, encoding="utf-8")
    assert doc == GOLDEN.read_text(encoding="utf-8")
