"""`bninspect report`: one self-contained HTML file, names escaped, bounded in size, written safely.

The browser test (tests/render/test_report_browser.py) opens these files in Chromium; here the
HTML itself is checked: what it holds, what it refers to, and what the command does around it.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import warnings
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from bninspect.render.report import SIZE_BOUND, to_html  # noqa: E402
from bninspect.services.report import report  # noqa: E402
from tests.conftest import SAMPLES, assert_one_line_error, run_cli  # noqa: E402

FAULTY = SAMPLES / "faulty"


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text, of an HTML document."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):  # type: ignore[no-untyped-def]
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag, attrs):  # type: ignore[no-untyped-def]
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):  # type: ignore[no-untyped-def]
        self.text.append(data)


def parse(html: str) -> Tags:
    parser = Tags()
    parser.feed(html)
    parser.close()
    return parser


def write_report(tmp_path: Path, *args: str, name: str = "r.html") -> tuple[str, str]:
    """Run the command; (the HTML, its stdout line). The command must succeed quietly."""
    out = tmp_path / name
    run = run_cli("report", *args, "-o", str(out))
    assert run.code == 0, run.err
    assert run.err == ""
    return out.read_text(encoding="utf-8"), run.out


@pytest.mark.torch  # the second file makes the diff section, whose comparison runs on torch
def test_the_file_stands_alone_no_script_no_reference_outside_it(tmp_path):
    html, _ = write_report(tmp_path, str(FAULTY / "zero_var.pt"), str(SAMPLES / "mobilenet_v1_tiny.safetensors"))
    doc = parse(html)
    tags = [t for t, _ in doc.tags]
    assert not {"script", "link", "iframe", "object", "embed", "img", "base", "form"} & set(tags)
    for tag, attrs in doc.tags:
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)  # no event handlers
        for key in ("href", "src", "xlink:href", "action", "data"):
            value = attrs.get(key)
            assert value is None or value.startswith("#"), (tag, key, value)  # only links within the page
    csp = next(a["content"] for t, a in doc.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert "default-src 'none'" in csp
    assert not re.search(r"url\((?!#)", html) and "@import" not in html  # clip paths refer to ids within
    # One figure for the overview, one per layer page (4 layers); the diff adds none where B is identical.
    assert tags.count("figure") == 5 and tags.count("svg") == 5
    text = " ".join(doc.text)
    assert "1 finding (0 errors, 1 warnings, 0 info)" in text
    assert "Named by findings: channels 3, 9 (BN105 running_var = 0 (constant channel))" in text
    assert "identical" in text and "Diff with B" in text


def test_sections_follow_the_issue(tmp_path):
    html, line = write_report(tmp_path, str(FAULTY / "nan.pt"))
    ids = [a.get("id") for _, a in parse(html).tags if a.get("id")]
    assert ids[:4] == ["file", "findings", "layers", "fig-overview"]
    assert "pages" in ids and [i for i in ids if i.startswith("layer-")] == [f"layer-{i}" for i in range(4)]
    assert line.strip() == f"wrote {tmp_path / 'r.html'} ({Path(tmp_path / 'r.html').stat().st_size // 1024} KiB): 4 layers, 1 finding, 4 layer pages"
    for fact in ("torch.save zip archive", "the top level of the file",
                 "eps: 1e-05 (PyTorch default; not stored in this file", "no code from the file ran"):
        assert fact in html


def _hostile_file(path: Path) -> list[str]:
    """A safetensors file whose layer names try HTML, script, terminal escapes and matplotlib's mathtext."""
    from safetensors.numpy import save_file

    names = ['a<script>alert("x")</script>', "b&amp;\"'><img src=x onerror=alert(1)>", "c\x1b[31mred\nline",
             "d$\\frac{1}{0}$_x^2", "e" + "é" * 3000]
    rng = np.random.default_rng(0)
    state = {}
    for n in names:
        state.update({f"{n}.bn.weight": rng.normal(1, 0.1, 8).astype(np.float32),
                      f"{n}.bn.bias": rng.normal(0, 0.1, 8).astype(np.float32),
                      f"{n}.bn.running_mean": rng.normal(0, 0.5, 8).astype(np.float32),
                      f"{n}.bn.running_var": np.exp(rng.normal(-1, 0.5, 8)).astype(np.float32),
                      f"{n}.bn.num_batches_tracked": np.array(1000, dtype=np.int64)})
    save_file(state, str(path))
    return names


def test_names_from_the_file_are_escaped_and_never_reach_a_figure(tmp_path):
    f = tmp_path / "hostile.safetensors"
    _hostile_file(f)
    html, _ = write_report(tmp_path, str(f))
    doc = parse(html)
    assert not [t for t, _ in doc.tags if t in ("script", "img")]
    assert not [a for _, attrs in doc.tags for a in attrs if a.startswith("on")]
    text = "".join(doc.text)
    assert 'a<script>alert("x")</script>.bn' in text  # shown literally, as text
    assert "b&amp;\"'><img src=x onerror=alert(1)>.bn" in text
    assert "\x1b" not in html and "c\\x1b[31mred\\nline.bn" in text  # control characters made visible
    assert "d$\\frac{1}{0}$_x^2.bn" in text
    assert "e" + "é" * 199 + "… (2804 more characters)" in text  # a name's length does not set the file's
    for svg in re.findall(r"<svg.*?</svg>", html, re.S):
        assert "script" not in svg and "frac" not in svg and "é" not in svg


def test_the_same_file_gives_the_same_report(tmp_path):
    first, _ = write_report(tmp_path, str(FAULTY / "outlier.pt"), name="a.html")
    second, _ = write_report(tmp_path, str(FAULTY / "outlier.pt"), name="b.html")
    assert hashlib.sha256(first.encode()).hexdigest() == hashlib.sha256(second.encode()).hexdigest()


# The safety samples whose load would run code or unreviewed functions are refused, as by show.
REFUSED = ("getpid_on_load.pt", "unreviewed_call.pt")


@pytest.mark.parametrize("sample", sorted(p.name for p in FAULTY.iterdir() if p.name not in REFUSED))
def test_every_faulty_sample_reports_without_a_warning(sample, capfd):
    """NaN, Inf, negative and zero variances, missing statistics, lengths that disagree: numpy and
    matplotlib must take them all without a warning (on the command's stderr it would be a bug).
    In-process, with every warning an error, and the process's stderr read."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        html = to_html(report(str(FAULTY / sample)))
    assert capfd.readouterr().err == ""
    assert html.endswith("</html>\n") and html.count("<svg") >= 2


def _many_layers(path: Path, layers: int, channels: int = 64) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(1)
    state = {}
    for i in range(layers):
        state[f"blocks.{i}.conv.weight"] = rng.normal(0, 0.1, (channels, channels, 1, 1)).astype(np.float32)
        state[f"blocks.{i}.bn.weight"] = rng.normal(1, 0.1, channels).astype(np.float32)
        state[f"blocks.{i}.bn.bias"] = rng.normal(0, 0.1, channels).astype(np.float32)
        state[f"blocks.{i}.bn.running_mean"] = rng.normal(0, 0.5, channels).astype(np.float32)
        state[f"blocks.{i}.bn.running_var"] = np.exp(rng.normal(-1, 1, channels)).astype(np.float32)
        state[f"blocks.{i}.bn.num_batches_tracked"] = np.array(1000, dtype=np.int64)
    save_file(state, str(path))


def test_rows_and_pages_stop_at_the_size_limit_and_say_so(tmp_path):
    f = tmp_path / "many.safetensors"
    _many_layers(f, 600)
    result = report(str(f), pages=20)
    full = to_html(result)
    assert full.count('class="page"') == 20 and "left out to keep this file" not in full
    limit = 400_000
    cut = to_html(result, limit=limit)
    size = len(cut.encode("utf-8"))
    # The limit is checked before each row or page: at most one page (~100 kB) and the closing
    # parts beyond it.
    assert limit < size < limit + 200_000
    assert re.search(r"\d+ more (layers|layer pages) are left out to keep this file under 34 MiB", cut)
    assert cut.endswith("</html>\n")
    assert SIZE_BOUND == 34 * 2**20


def test_output_over_an_input_is_refused_and_nothing_is_written(tmp_path):
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes((SAMPLES / "mobilenet_v1_tiny.pt").read_bytes())
    before = ckpt.read_bytes()
    (tmp_path / "alias.pt").symlink_to(ckpt)
    run = run_cli("report", str(ckpt), "-o", str(tmp_path / "alias.pt"))
    assert_one_line_error(run, 2, "-o must not overwrite an input")
    assert ckpt.read_bytes() == before
    run = run_cli("report", str(ckpt), "-o", str(tmp_path))
    assert_one_line_error(run, 5, "is a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alias.pt", "m.pt"]


def test_writing_leaves_only_the_report_and_the_input_untouched(tmp_path):
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes((SAMPLES / "mobilenet_v1_tiny.pt").read_bytes())
    stat = ckpt.stat()
    (tmp_path / "r.html").write_text("old")
    write_report(tmp_path, str(ckpt))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "r.html"]  # replaced in place, no temp left
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    assert ckpt.stat().st_mtime_ns == stat.st_mtime_ns and ckpt.read_bytes() == (SAMPLES / "mobilenet_v1_tiny.pt").read_bytes()


def test_usage_errors_are_one_line(tmp_path):
    out = str(tmp_path / "r.html")
    assert_one_line_error(run_cli("report", str(SAMPLES / "mobilenet_v1_tiny.pt")), 2, "Missing option '--output'")
    assert_one_line_error(run_cli("report", str(SAMPLES / "mobilenet_v1_tiny.pt"), "-o", out, "--pages", "0"), 2,
                          "--pages must be between 1 and 200")
    assert_one_line_error(run_cli("report", str(SAMPLES / "mobilenet_v1_tiny.pt"), "-o", out, "--arch", "m:f"), 2,
                          "give --data FILE")
    assert_one_line_error(run_cli("report", str(SAMPLES / "mobilenet_v1_tiny.pt"), str(tmp_path / "nope.onnx"), "-o", out),
                          5, "nope.onnx")
    # A file whose real load would run code is refused, as by show: nothing is written.
    assert_one_line_error(run_cli("report", str(FAULTY / "getpid_on_load.pt"), "-o", out), 3, "posix.getpid", "--trust")
    assert not (tmp_path / "r.html").exists()


def test_a_missing_matplotlib_is_a_usage_error_naming_the_install_command(tmp_path):
    # What Python does for a package that is not installed: the import fails (None in sys.modules).
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from bninspect.cli import main\n"
            "main(sys.argv[1:])\n")
    proc = subprocess.run([sys.executable, "-c", code, "report", str(SAMPLES / "mobilenet_v1_tiny.pt"), "-o",
                           str(tmp_path / "r.html")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "bninspect: error: report draws its plots with matplotlib, which is not installed: pip install 'bninspect[report]'"]
    assert not (tmp_path / "r.html").exists()


def test_a_file_without_batchnorm_is_an_answer(tmp_path):
    html, line = write_report(tmp_path, str(SAMPLES / "norms_tiny.pt"))
    assert "No BatchNorm layers in this file (1 GroupNorm, 1 LayerNorm, 1 LayerNorm/GroupNorm; 0 BatchNorm)." in html
    assert "<svg" not in html and "0 layers, 0 findings, 0 layer pages" in line


def test_a_torchscript_file_shows_its_stored_eps_and_modes(tmp_path):
    html, _ = write_report(tmp_path, str(SAMPLES / "mobilenet_v1_tiny_train.ts"))
    assert "TorchScript archive" in html and "eps: 1e-05 (stored in the TorchScript modules)" in html
    assert html.count("BN202") >= 4  # saved in training mode, every layer: an error each
    assert "BatchNorm2d train" in html


def test_the_file_section_shows_a_safety_verdict_where_there_is_one():
    # safetensors: loading it runs nothing, so there is no verdict to show.
    result = report(str(SAMPLES / "mobilenet_v1_tiny.safetensors"))
    assert result.safety is None and "safety verdict" not in to_html(result)
    plain = report(str(SAMPLES / "mobilenet_v1_tiny.pt"))
    assert ("<tr><th>safety verdict</th><td>a real torch.load would only rebuild tensors and plain containers "
            "(what weights_only=True allows)</td></tr>") in to_html(plain)
    # A pickled model: its classes read as opaque data, the package a real load imports named.
    pickled = to_html(report(str(SAMPLES / "resnet_tiny_module.pt")))
    assert "read as opaque data, nothing imported or run" in pickled and "import sample_models" in pickled
    plain.safety = "tensor rebuilds only <ok>"
    assert "<tr><th>safety verdict</th><td>tensor rebuilds only &lt;ok&gt;</td></tr>" in to_html(plain)


@pytest.mark.slow
def test_ten_thousand_layers_stay_under_the_stated_size(tmp_path):
    """The issue's scale: every layer in the overview, 50 pages, the file under SIZE_BOUND (the
    benchmark measures the time and memory of the same on benchmarks/data/layers_10000.pt)."""
    f = tmp_path / "ten_thousand.safetensors"
    _many_layers(f, 10_000, channels=32)
    html, line = write_report(tmp_path, str(f))
    assert "10000 layers, 0 findings, 50 layer pages" in line
    assert html.count('<tr id="row-') == 10_000 and html.count('class="page"') == 50
    assert len(html.encode("utf-8")) < SIZE_BOUND
