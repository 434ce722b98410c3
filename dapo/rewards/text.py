"""Bounded text helpers shared by the scorers: sanitising untrusted model output, taking its tail, finding
the last `\\boxed{...}`, reading plain numbers.

Every function here runs in time linear in a bounded window of its input (never in the size of the whole
response beyond one C-level scan), so a megabyte of text, invalid UTF-8, control characters, deeply nested
or unterminated braces and million-digit numbers all return quickly. Pure: no I/O, no project imports.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

# Control characters other than tab and newline carry no meaning in an answer and can confuse regexes
# and terminals; carriage returns become newlines so that "Answer: 5\r\n" is one line.
_CONTROL = re.compile(r"\x1b\[[0-9;?]{0,32}[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f-\x9f]")

# Longest answer (inside \boxed{...} or after "Answer:") a scorer looks at. The longest MATH-500 answer
# has 159 characters; anything beyond this bound is treated as no answer rather than parsed.
MAX_ANSWER_CHARS = 2000

# Longest numeral read as a number. Int/Decimal parsing of a 10^6-digit string is slow (and CPython
# refuses int() beyond 4300 digits), so longer numerals are compared as strings only.
MAX_NUMBER_CHARS = 64


def sanitize(text: str | bytes) -> str:
    """Return `text` as valid, printable-safe str.

    bytes are decoded as UTF-8 with U+FFFD for invalid sequences; lone surrogates (what
    `errors="surrogateescape"` produces from invalid UTF-8) are replaced the same way; "\\r\\n" and "\\r"
    become "\\n"; ANSI escape sequences and other C0/C1 control characters except tab are removed.

    >>> sanitize(b"Answer: 5\\xff\\r\\n")
    'Answer: 5\\ufffd\\n'
    """
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8", errors="replace")
    elif not isinstance(text, str):
        raise TypeError(f"expected str or bytes, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", errors="replace").decode("utf-8")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("", text)


def tail(text: str | bytes, num_chars: int) -> str:
    """Sanitised last `num_chars` characters of `text` (sanitising only the tail keeps it O(num_chars))."""
    if isinstance(text, bytes | bytearray):
        text = bytes(text[-4 * num_chars :]).decode("utf-8", errors="replace")
    return sanitize(text[-num_chars:])


def matching_brace(text: str, open_index: int, max_chars: int = MAX_ANSWER_CHARS) -> int | None:
    """Index of the `}` closing the `{` at `open_index`, or None if it is not closed within `max_chars`.

    Linear scan with a depth counter, so arbitrarily deep nesting costs O(max_chars). A backslash escapes
    the next character (`\\{` and `\\}` are literal braces in LaTeX, not grouping).
    """
    depth, i, end = 0, open_index, min(len(text), open_index + max_chars)
    while i < end:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


_BOX_COMMANDS = ("\\boxed", "\\fbox")


def last_boxed(text: str, max_chars: int = MAX_ANSWER_CHARS) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`) in `text`, braces matched, or None.

    Also accepts the brace-less form `\\boxed 5` (content up to the next whitespace or `$`). Returns None
    when there is no box, or the last box is unterminated or longer than `max_chars`.

    >>> last_boxed(r"so \\boxed{1} or rather $\\boxed{\\frac{1}{2}}$.")
    '\\\\frac{1}{2}'
    """
    start = max(text.rfind(cmd) for cmd in _BOX_COMMANDS)
    if start < 0:
        return None
    cmd = next(c for c in _BOX_COMMANDS if text.startswith(c, start))
    i = start + len(cmd)
    if text.startswith(" ", i) and not text.startswith(" {", i):
        m = re.match(r" +([^\s$]+)", text[i : i + max_chars + 8])
        return m.group(1) if m and len(m.group(1)) <= max_chars else None
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text) or text[i] != "{":
        return None
    close = matching_brace(text, i, max_chars)
    return None if close is None else text[i + 1 : close]


_PLAIN_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")
_SIMPLE_FRACTION = re.compile(r"([+-]?)\\[dt]?frac\{([+-]?\d+)\}\{([+-]?\d+)\}|([+-]?\d+)/([+-]?\d+)")


def parse_number(text: str) -> Fraction | None:
    """Exact value of a plain numeral, or None.

    Accepts integers and decimals (`-12`, `3.50`, `.5`), thousands separators in groups of three
    (`1,000,000`, `1{,}000`, `1\\,000`), and integer fractions (`\\frac{3}{4}`, `\\dfrac{-3}{4}`, `3/4`).
    Nothing else: no powers, no expressions, so the cost is bounded by MAX_NUMBER_CHARS.

    >>> parse_number("1,234.50") == Fraction(2469, 2)
    True
    """
    s = text.strip()
    if not s or len(s) > MAX_NUMBER_CHARS:
        return None
    s = s.replace("{,}", ",").replace("\\,", ",").replace("\\!", "")
    if "," in s:
        if not re.fullmatch(r"[+-]?\d{1,3}(,\d{3})+(\.\d+)?", s):
            return None
        s = s.replace(",", "")
    if _PLAIN_NUMBER.fullmatch(s):
        try:
            return Fraction(Decimal(s))
        except (InvalidOperation, ValueError):
            return None
    m = _SIMPLE_FRACTION.fullmatch(s)
    if not m:
        return None
    sign, num, den = (m.group(1), m.group(2), m.group(3)) if m.group(2) else ("", m.group(4), m.group(5))
    if int(den) == 0:
        return None
    value = Fraction(int(num), int(den))
    return -value if sign == "-" else value


def numbers_equal(a: str, b: str) -> bool:
    """True when both strings are plain numerals (see `parse_number`) with the same exact value."""
    x = parse_number(a)
    return x is not None and x == parse_number(b)
