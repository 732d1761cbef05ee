"""Text formatting shared by every layer: numbers in prose and tables, names from untrusted files.

Names, keys, file names and messages about files come from bytes we do not trust, and some
characters in them act on the terminal or on how the text reads rather than showing as
themselves. Every path of output neutralises the same set (``UNSAFE``), whatever prints it:

- C0 and C1 controls and DEL (Unicode category Cc): ESC starts an ANSI sequence, U+009B is an
  8-bit CSI that some terminals obey, newlines and carriage returns forge lines;
- format characters (Cf): the bidi embeddings, overrides and isolates (U+202A-U+202E,
  U+2066-U+2069, U+061C, U+200E/U+200F) reorder what is displayed, so a layer name can read as
  another; zero-width characters (U+200B-U+200D, U+2060, U+FEFF) hide differences between two
  names; the rest of Cf (soft hyphen, Arabic number signs, tag characters...) is invisible too;
- the line and paragraph separators U+2028 and U+2029 (Zl, Zp), which some viewers break on;
- surrogates (Cs): a lone surrogate is not text (Python makes one of each undecodable byte in a
  file name), and writing it as UTF-8 fails.

The list is Unicode 15.0's Cc, Cf, Cs, Zl and Zp categories (a test checks it against the
running interpreter's ``unicodedata``). Text shows each such character as its Python escape
(``\\x1b``, ``\\x9b``, ``\\u202e``, ``\\udc9b``); JSON documents write it as a JSON escape
(``\\u009b``), so the value a JSON parser reads is unchanged and the raw character never reaches
a terminal.

Every piece of text shown is also bounded: at most ``MAX_SHOWN`` characters, its end replaced
by a note of how many were cut (a file can hold a 24 MiB key).
"""

from __future__ import annotations

import math
import re

# Unicode 15.0, categories Cc, Cf, Cs, Zl, Zp (see the module docstring for why each): the C0
# controls, those beyond them in the Basic Multilingual Plane, and the astral ones. JSON's
# encoder escapes only the C0 controls in a string.
_BMP = ("\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u180e\u200b-\u200f"
        "\u2028-\u202e\u2060-\u2064\u2066-\u206f\ud800-\udfff\ufeff\ufff9-\ufffb")
_ASTRAL = ("\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
           "\U000e0001\U000e0020-\U000e007f")
UNSAFE = re.compile(f"[\x00-\x1f{_BMP}{_ASTRAL}]")
# Apart, for JSON documents of megabytes: a class of BMP ranges is one table lookup a character,
# and astral ranges make every character a walk through the range list (3.5x slower).
_BMP_IN_JSON = re.compile(f"[{_BMP}]")
_ASTRAL_IN_JSON = re.compile(f"[{_ASTRAL}]")

# Characters of one piece of text (a name, a message, an error line) shown before it is cut.
# Longer than any path (Linux's PATH_MAX is 4096) or message of ours; far shorter than a hostile key.
MAX_SHOWN = 4096


def num(x: float | None, digits: int = 4) -> str:
    """A compact number: ``digits`` significant digits, NaN/Inf spelled out, None as an em dash."""
    if x is None:
        return "—"
    x = float(x)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Inf" if x > 0 else "-Inf"
    if x == 0:
        return "0"
    return f"{x:.{digits}g}"


def _escape(m: re.Match[str]) -> str:
    return m.group(0).encode("unicode_escape", "backslashreplace").decode("ascii")


def cut_note(count: int) -> str:
    """What replaces ``count`` characters cut from the end of a text."""
    return f"… [{count:,} more characters]"


def visible(text: object, limit: int = MAX_SHOWN) -> str:
    """``text`` safe to print: every ``UNSAFE`` character shown as its escape (``\\x1b``,
    ``\\u202e``), in at most ``limit`` characters; a longer result is cut, and a note at its
    end says how many characters of ``text`` were left out. Applying it again changes nothing."""
    text = str(text)
    # Each character shows as at least one: escaping more than ``limit`` of them would be wasted work.
    head = text[:limit]
    shown = UNSAFE.sub(_escape, head)
    if len(shown) <= limit and len(head) == len(text):
        return shown
    pieces: list[str] = []
    room = limit - len(cut_note(len(text)))  # the note, as long as it can get, fits in ``limit``
    taken, pos = 0, 0
    for m in [*UNSAFE.finditer(head), None]:
        plain = head[pos:m.start() if m else len(head)]
        pieces.append(plain[:room])
        taken += min(len(plain), room)
        room -= min(len(plain), room)
        if m is None or not room:
            break
        escaped = _escape(m)
        if len(escaped) > room:  # an escape is shown whole or not at all
            break
        pieces.append(escaped)
        room -= len(escaped)
        taken += 1
        pos = m.end()
    return "".join(pieces) + cut_note(len(text) - taken)


def _json_escape(m: re.Match[str]) -> str:
    code = ord(m.group(0))
    if code > 0xFFFF:  # JSON spells a character beyond the BMP as its UTF-16 surrogate pair
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def json_visible(document: str) -> str:
    """A JSON text with every ``UNSAFE`` character written as a JSON escape (``\\u009b``).

    Only strings can hold such characters beyond C0 (JSON's own syntax is ASCII), and the JSON
    encoder escapes the C0 controls in strings itself (the newlines left are the document's
    layout), so replacing the raw character by its escape leaves every value the same for a
    JSON parser.
    """
    if document.isascii():
        return document.replace("\x7f", "\\u007f")
    document = _BMP_IN_JSON.sub(_json_escape, document)
    if len(document.encode("utf-16-le", "surrogatepass")) > 2 * len(document):  # characters beyond the BMP
        document = _ASTRAL_IN_JSON.sub(_json_escape, document)
    return document
