"""The one escaper: which characters it neutralises, how text and JSON show them, how it cuts."""

from __future__ import annotations

import json
import sys
import unicodedata

from bninspect.render.common import MAX_LINE, Styled, _bounded
from bninspect.textfmt import MAX_SHOWN, UNSAFE, json_visible, visible

NEUTRALISED = ("Cc", "Cf", "Cs", "Zl", "Zp")


def test_every_control_format_surrogate_and_separator_is_neutralised():
    """Unicode's Cc, Cf, Cs, Zl and Zp, as this interpreter's unicodedata knows them, all match;
    nothing else does but code points this Unicode version has not assigned yet (Cn)."""
    chars = [chr(c) for c in range(sys.maxunicode + 1)]
    missed = [f"U+{ord(c):04X}" for c in chars if unicodedata.category(c) in NEUTRALISED and not UNSAFE.match(c)]
    extra = [f"U+{ord(c):04X}" for c in chars if UNSAFE.match(c) and unicodedata.category(c) not in (*NEUTRALISED, "Cn")]
    assert not missed and not extra, (missed[:10], extra[:10])


def test_text_shows_escapes():
    name = "a\x1b[31mb\x9b2J\u202eevil\u2066x\u200by\ufeff\u2028\udc9b"
    assert visible(name) == "a\\x1b[31mb\\x9b2J\\u202eevil\\u2066x\\u200by\\ufeff\\u2028\\udc9b"
    assert visible("plain name 名前 é") == "plain name 名前 é"


def test_json_escapes_keep_the_value():
    name = "b\x9b2J\u202eevil\ud800\U000e0041"
    text = json_visible(json.dumps({"name": name, "nl": "a\nb"}, ensure_ascii=False, indent=1))
    assert not any(UNSAFE.match(c) for c in text.replace("\n", ""))
    assert "\\u009b" in text and "\\udb40\\udc41" in text
    assert json.loads(text) == {"name": name, "nl": "a\nb"}


def test_long_text_is_cut_saying_how_much_and_cutting_again_changes_nothing():
    for text in ("k" * 25_000_000, "\x1b" * 5000, "ab\x9b" * 3000):
        shown = visible(text)
        assert MAX_SHOWN - 40 < len(shown) <= MAX_SHOWN
        assert shown.endswith(" more characters]")
        assert visible(shown) == shown
    shown = visible("k" * 25_000_000)
    kept = shown.index("…")
    assert shown == "k" * kept + f"… [{25_000_000 - kept:,} more characters]"
    escaped = visible("\x1b" * 5000)  # each escape counts as the one character it stands for
    assert escaped.endswith(f"[{5000 - escaped.index('…') // 4:,} more characters]")


def test_long_lines_are_cut_keeping_styles():
    line = Styled("n" * (MAX_LINE + 500), "cyan").append("\nnext", "dim")
    cut = _bounded(line)
    first, second = cut.plain.split("\n")
    assert len(first) <= MAX_LINE and first.endswith(" more characters]") and second == "next"
    assert cut.spans[0][2] == "cyan" and cut.spans[-1] == (len(first) + 1, len(cut.plain), "dim")
    assert _bounded("short") == "short"
