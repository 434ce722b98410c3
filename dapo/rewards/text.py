"""Bounded text helpers shared by the scorers: sanitising untrusted model output, taking its tail, finding
the last `\\boxed{...}` and the final answer, reading plain numbers.

Every function here runs in time linear in a bounded window of its input (never in the size of the whole
response beyond one C-level scan), so a megabyte of text, invalid UTF-8, control characters, deeply nested
or unterminated braces and million-digit numbers all return quickly. Pure: no I/O, no project imports.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

# ANSI escape sequences are terminal formatting: they render as nothing, so they are removed. Other control
# characters (C0 and C1 except tab and newline) become a space, never nothing: deleting one could join its
# neighbours into a different answer ("1\x0044" must not read as "144").
_ANSI = re.compile(r"\x1b\[[0-9;?]{0,32}[A-Za-z]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# What `printable` escapes: control characters (here also tab and newline) and lone surrogates.
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")

# Longest answer (inside \boxed{...} or after "Answer:") a scorer looks at. The longest MATH-500 answer
# has 159 characters; anything beyond this bound is treated as no answer rather than parsed.
MAX_ANSWER_CHARS = 2000

# Longest numeral read as a number. Int/Decimal parsing of a 10^6-digit string is slow (and CPython
# refuses int() beyond 4300 digits), so longer numerals are compared as strings only.
MAX_NUMBER_CHARS = 64

# A text-mode group without nested braces: `\text{ cm}`, `\mbox{and}`. Unwrapping it keeps its words.
TEXT_COMMAND = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox)\{([^{}]*)\}")


def decode_tail(text: str | bytes, num_chars: int) -> str:
    """The last `num_chars` characters of `text` as str, nothing else changed (bytes are decoded as UTF-8
    with U+FFFD for invalid sequences; decoding only the tail keeps it O(num_chars))."""
    if isinstance(text, bytes | bytearray):
        # 4 bytes per character at most, plus 3 for a character cut at the start of the slice.
        text = bytes(text[-(4 * num_chars + 3) :]).decode("utf-8", errors="replace")
    elif not isinstance(text, str):
        raise TypeError(f"expected str or bytes, got {type(text).__name__}")
    return text[-num_chars:]


def sanitize(text: str | bytes) -> str:
    """Return `text` as valid, printable-safe str.

    bytes are decoded as UTF-8 with U+FFFD for invalid sequences; lone surrogates (what
    `errors="surrogateescape"` produces from invalid UTF-8) are replaced the same way; "\\r\\n" and "\\r"
    become "\\n"; ANSI escape sequences are removed and other C0/C1 control characters except tab become
    a space.

    >>> sanitize(b"Answer: 5\\xff\\r\\n")
    'Answer: 5\\ufffd\\n'
    >>> sanitize("Answer: 1\\x0044 \\x1b[1mbold\\x1b[0m")
    'Answer: 1 44 bold'
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
    return _CONTROL.sub(" ", _ANSI.sub("", text))


def tail(text: str | bytes, num_chars: int) -> str:
    """Sanitised last `num_chars` characters of `text` (sanitising only the tail keeps it O(num_chars))."""
    return sanitize(decode_tail(text, num_chars))


def printable(text: str) -> str:
    """`text` with control characters and lone surrogates written as escapes ("\\x1b", "\\udcff").

    For showing an unsanitised prediction (verl mode) in logs without changing what it is.

    >>> printable("\\x1b[1m144\\r")
    '\\\\x1b[1m144\\\\r'
    """
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


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
_BARE_BOX = re.compile(r" +([^\s$]+)")  # `\boxed 5`


def _last_box(text: str, max_chars: int) -> tuple[str, int] | None:
    """(content, end index) of the last box in `text`, or None (no box, unterminated, or too long)."""
    start = max(text.rfind(cmd) for cmd in _BOX_COMMANDS)
    if start < 0:
        return None
    cmd = next(c for c in _BOX_COMMANDS if text.startswith(c, start))
    i = start + len(cmd)
    if text.startswith(" ", i) and not text.startswith(" {", i):
        m = _BARE_BOX.match(text, i, i + max_chars + 8)
        return (m.group(1), m.end()) if m and len(m.group(1)) <= max_chars else None
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text) or text[i] != "{":
        return None
    close = matching_brace(text, i, max_chars)
    return None if close is None else (text[i + 1 : close], close + 1)


def last_boxed(text: str, max_chars: int = MAX_ANSWER_CHARS) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`) in `text`, braces matched, or None.

    Also accepts the brace-less form `\\boxed 5` (content up to the next whitespace or `$`). Returns None
    when there is no box, or the last box is unterminated or longer than `max_chars`.

    >>> last_boxed(r"so \\boxed{1} or rather $\\boxed{\\frac{1}{2}}$.")
    '\\\\frac{1}{2}'
    """
    box = _last_box(text, max_chars)
    return None if box is None else box[0]


# What may follow a final box: math delimiters, markdown emphasis, a full stop, whitespace ("!" may be a
# factorial), and end-of-sequence markers a decode that keeps special tokens leaves (`</s>`, `<|im_end|>`):
# none of them states an answer.
_AFTER_FINAL_BOX = re.compile(r"(?:[\s$.*_]|\\\]|\\\)|</s>|<eos>|<end_of_turn>|<\|[a-z_]{1,32}\|>)*")


def final_boxed(text: str, max_chars: int = MAX_ANSWER_CHARS) -> str | None:
    """Content of the last box when it ends `text` (only delimiters, `.`, whitespace or end-of-sequence
    markers after it), else None.

    A box followed by more words is not a final answer: "\\boxed{5}. Wait, that is wrong: it is 6." has
    none, rather than the retracted 5.

    >>> final_boxed(r"so $\\boxed{5}$."), final_boxed(r"\\boxed{5}$</s>"), final_boxed(r"\\boxed{5} is wrong, it is 6")
    ('5', '5', None)
    """
    box = _last_box(text, max_chars)
    if box is None or not _AFTER_FINAL_BOX.fullmatch(text, box[1]):
        return None
    return box[0]


_ANSWER_LABEL = re.compile(r"(?i)Answer\s*\**\s*:\s*\**([^\n]+)")


def strip_markdown(s: str) -> str:
    """`s` without surrounding whitespace and markdown emphasis or code marks (`**540**` -> `540`)."""
    return s.strip().strip("*_`").strip()


def final_answer(window: str) -> str | None:
    """The final answer of a response window: the rest of the last `Answer:` line (markdown around the
    label tolerated: `**Answer:** 540`), else a box that ends the window (`final_boxed`). None when there
    is neither, or the answer is longer than MAX_ANSWER_CHARS (not parsed, rather than cut to a prefix).

    >>> final_answer("work\\n**Answer:** $540$\\nDone."), final_answer("so\\n\\\\boxed{540}")
    ('$540$', '540')
    """
    matches = _ANSWER_LABEL.findall(window)
    answer = strip_markdown(matches[-1]) if matches else final_boxed(window)
    if answer is None or len(answer) > MAX_ANSWER_CHARS:
        return None
    return answer


# An `=` that is not part of `<=`, `>=`, `==` or `!=`.
_ASSIGNMENT = re.compile(r"(?<![<>!=])=(?![=<>])")
_NOT_A_NAME = re.compile(r"(?i)[,;<>]|\bor\b|\band\b|\\(?:lor|[lgn]eq?|lt|gt|approx|sim|pm|mp)(?![A-Za-z])")
_OPERATOR = re.compile(r"[-+*/^!]|\\(?:cdot|times|div)(?![A-Za-z])")
_COMMAND_OR_SUBSCRIPT = re.compile(r"\\[A-Za-z]+|_(?:\{[^{}]*\}|\w)")


def _top_level(s: str) -> str:
    """`s` without anything inside brackets: `f(1, 2) + a_{n}` -> `f + a_`."""
    depth, kept = 0, []
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(depth - 1, 0)
        elif depth == 0:
            kept.append(ch)
    return "".join(kept)


def names_or_computes(left: str) -> bool:
    """Whether `left`, the text before an `=`, names a quantity (letters only, arguments and subscripts
    aside: `x`, `m + n`, `f(3)`, `a_{10}`, `\\angle ABC`) or is a computation (digits and an operator:
    `3 + 5`, `12 \\times 45`), or is empty (a stray `=`). Not when it mixes digits and letters (`2x`,
    `x^2`, `5x - 7y + 4`, `x = 5 or x`): that is an equation, whose right side is not its solution; nor a
    list, a hedge or a relation (`a, b`, `x or y`, `0 < x`), a bare number (`1 = 540`) or symbols only."""
    if not left.strip():
        return True
    top = _top_level(left)
    if _NOT_A_NAME.search(top):
        return False
    bare = _COMMAND_OR_SUBSCRIPT.sub(" ", top)
    has_digit, has_letter = re.search(r"\d", bare) is not None, re.search(r"[A-Za-z]", bare) is not None
    if has_letter:
        return not has_digit
    return has_digit and _OPERATOR.search(top) is not None


def after_assignment(s: str) -> str:
    """`x = 540` -> `540`: the value after the last `=`, as verl reads it, when the left side names what
    was asked or computes it (`names_or_computes`); otherwise (`2x = 8`, `x >= 5`: not an assignment)
    unchanged. Shared by the DAPO default mode and the MATH scorer, so that both read `x = 540` as 540 and
    neither reads `2x = 540` as 540.

    >>> after_assignment("m + n = 540"), after_assignment("2x = 540")
    ('540', '2x = 540')
    """
    positions = [m.start() for m in _ASSIGNMENT.finditer(s)]
    if not positions or not names_or_computes(s[: positions[-1]]):
        return s
    return s[positions[-1] + 1 :].strip()


def has_equals(s: str) -> bool:
    """Whether `s` contains an `=` (not `<=`, `>=`, `==`, `!=`): after `after_assignment`, an equation."""
    return _ASSIGNMENT.search(s) is not None


_PLAIN_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")
_SIMPLE_FRACTION = re.compile(r"([+-]?)\\[dt]?frac\{([+-]?\d+)\}\{([+-]?\d+)\}|([+-]?\d+)/([+-]?\d+)")


def parse_number(text: str) -> Fraction | None:
    """Exact value of a plain numeral, or None.

    Accepts integers and decimals (`-12`, `3.50`, `.5`), thousands separators in groups of three
    (`1,000,000`, `1{,}000`, `1\\,000`, `1 000`), and integer fractions (`\\frac{3}{4}`, `\\dfrac{-3}{4}`,
    `3/4`). Nothing else: no powers, no expressions, so the cost is bounded by MAX_NUMBER_CHARS. Digits
    not in groups of three after a leading 1–999 are not a number (`1,2` and `0,540` are lists, `1 2` two
    numbers).

    >>> parse_number("1,234.50") == Fraction(2469, 2), parse_number("1,2")
    (True, None)
    """
    s = text.strip()
    if not s or len(s) > MAX_NUMBER_CHARS:
        return None
    s = s.replace("{,}", ",").replace("\\,", ",").replace("\\!", "").replace(" ", ",")
    if "," in s:
        if not re.fullmatch(r"[+-]?[1-9]\d{0,2}(,\d{3})+(\.\d+)?", s):
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


LENIENT_TAIL_CHARS = 300
_ANY_NUMERAL = re.compile(r"(?:(?<!\d)[+-])?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def last_number_matches(response: str | bytes, ground_truth: str) -> bool:
    """The lenient verdict: is the last number in the response's tail the ground truth's value?

    An evaluation metric beside the strict scorers (the answer counts wherever it stands, in any format, as
    lm-evaluation-harness's "flexible extract" for GSM8K does), never a reward: a response that ends by
    listing candidates would game it. Only the last LENIENT_TAIL_CHARS characters are read, so the cost is
    bounded; a ground truth that is not a plain number (see `parse_number`) never matches.

    >>> last_number_matches("2 + 3 = 5, so it is 5.", "5"), last_number_matches("5 or 6", "5")
    (True, False)
    """
    numerals = _ANY_NUMERAL.findall(tail(response, LENIENT_TAIL_CHARS))
    return bool(numerals) and numbers_equal(numerals[-1], ground_truth)
