"""Every measured number in the README's Status section is in a results file that its bullet names.

A Status bullet states measurements: percentages and points, ×-ratios, durations, tolerances like 4e-7, signed
gains, counts like 8,378. Each must appear in one of the results files that the bullet names in backticks
(`bench/results/*.json`, a `docs/` page or folder, `bench/README.md`, or the test file whose docstring records
the runs it asserts on), so a reader can find where it was measured and a rerun that changes it shows here.
Format-tolerant: 37.8 % matches 0.378 or 37.8 in the file, rounded to the digits shown; 2.5 min matches 148 s;
"2 min 23 s" matches the same words. A gain written after its two ends ("37.8 % -> 60.2 % (+22.5 points") may be
their difference in the file instead (0.6025 - 0.3775).
Settings (temperature 1, 3 seeds, rank 16, 2 ranks) are not measurements and are not extracted; nor is
anything inside backticks (config values, paths).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

pytestmark = pytest.mark.docs

ROOT = Path(__file__).resolve().parents[1]

# Bullets this test skips, by their first words, each with the reason. Keep it short.
EXEMPT = {
    "Not built yet:": "states what is missing, no measurement",
}
# Where a bullet may name its sources: results files, docs, and the tests whose docstrings record their runs.
SOURCE_ROOTS = ("bench/results/", "docs/", "bench/README.md", "tests/")
SOURCE_SUFFIXES = (".json", ".md", ".py")

_N = r"\d+(?:\.\d+)?"
# (pattern, kind): each pattern's number groups are the measurements; the kind says how a file may store them.
PATTERNS = [
    (re.compile(r"(?<![\w.])(\d+) min (\d+) s\b"), "min_s"),  # 2 min 23 s
    (re.compile(rf"(?<![\w.])~?({_N})(?:-({_N}))? ?(s|min)\b"), "duration"),  # 52 s, 2.5 min, ~1-2 s
    (re.compile(rf"(?<![\w.])~?({_N})(?:-({_N}))? ?%"), "percent"),  # 37.8 %, 42-58 %
    (re.compile(rf"(?<![\w.])({_N})(?:-({_N}))?×"), "ratio"),  # 3.3-3.8×, 0.77×
    (re.compile(r"(?<![\w.])\d+(?:\.\d+)?e-\d+"), "tolerance"),  # 4e-7, 1.3e-5
    (re.compile(rf"(?<![\w.])[+±]?({_N})(?:-({_N}))?(?: ± ({_N}))? points"), "percent"),  # +10.0 ± 3.7 points
    (re.compile(rf"(?<![\w.\d])\+({_N})"), "signed"),  # (+26.6), +0.29
    (re.compile(r"(?<![\w.])\d{1,3}(?:,\d{3})+(?!\d)"), "count"),  # 8,378
    (re.compile(rf"(?<![\w.])({_N}) -> ({_N}) tokens"), "count"),  # 17 -> 25 tokens
]


@dataclass(frozen=True)
class Claim:
    """One number shown in a bullet: its text, value, the digits shown, and how a file may hold it."""

    text: str
    value: float
    decimals: int
    kind: str
    approximate: bool
    context: str
    gain_of: tuple[Claim, Claim] | None = None

    def matches(self, y: float) -> bool:
        if self.kind == "tolerance":  # shown to one significant digit: 4e-7 stands for 3.5e-7 .. 4.5e-7
            mantissa, exponent = self.text.split("e")
            return abs(y - self.value) <= 0.5 * 10 ** int(exponent) * 10 ** -_decimals(mantissa) + 1e-15
        half = 0.5 * 10**-self.decimals + 1e-9
        if self.approximate:
            half = max(half, 0.1 * self.value)
        candidates = [y]
        if self.kind == "percent" or (self.kind == "signed" and self.value >= 1):
            candidates.append(100 * y)
        if self.kind == "duration_min":
            candidates.append(y / 60)
        return any(abs(abs(c) - self.value) <= half for c in candidates)


def _decimals(text: str) -> int:
    return len(text.split(".")[1]) if "." in text else 0


GAIN = re.compile(rf"({_N}) % (?:->|to) ({_N}) %[^%()]{{0,40}}\(\+({_N})")


def claims(bullet: str) -> list[Claim]:
    """The measured numbers of one bullet (markdown emphasis and code spans removed first)."""
    text = re.sub(r"`[^`]*`", " ", bullet).replace("**", "")
    text = " ".join(text.split())
    found: dict[int, Claim] = {}  # by the position of the number in `text`
    taken: list[tuple[int, int]] = []
    for pattern, kind in PATTERNS:
        for m in pattern.finditer(text):
            if any(a < m.end() and m.start() < b for a, b in taken):
                continue  # already read by an earlier, more specific pattern
            taken.append(m.span())
            approximate = text[m.start()] == "~"
            context = text[max(0, m.start() - 30) : m.end() + 10]
            if kind == "min_s":
                seconds = 60 * int(m.group(1)) + int(m.group(2))
                found[m.start()] = Claim(m.group(), seconds, 0, "duration", approximate, context)
                continue
            if kind in ("tolerance", "count") and not m.groups():
                value = float(m.group().replace(",", ""))
                found[m.start()] = Claim(m.group(), value, 0, kind, approximate, context)
                continue
            for i, g in enumerate(m.groups(), 1):
                if g is None or (kind == "duration" and i == 3):
                    continue  # an absent group, or the unit
                g = g.lstrip("+")
                number_kind = "duration_min" if kind == "duration" and m.group(3) == "min" else kind
                found[m.start(i)] = Claim(g, float(g), _decimals(g), number_kind, approximate, context)
    for m in GAIN.finditer(text):  # "A % -> B % (+D": D may be B - A
        a, b, d = (found.get(m.start(i)) for i in (1, 2, 3))
        if a and b and d:
            found[m.start(3)] = replace(d, gain_of=(a, b))
    return [found[at] for at in sorted(found)]


def status_bullets(readme: str) -> list[str]:
    section = readme.split("\n## Status", 1)[1].split("\n## ", 1)[0]
    return [" ".join(b.split()) for b in re.split(r"\n- ", section)[1:]]


def named_sources(bullet: str) -> list[Path]:
    """The files a bullet names in backticks (a folder stands for the results files in it)."""
    paths: list[Path] = []
    for span in re.findall(r"`([^`\s]+)`", bullet):
        if not span.startswith(SOURCE_ROOTS):
            continue
        path = ROOT / span
        if path.is_dir():
            paths += sorted(p for p in path.rglob("*") if p.suffix in SOURCE_SUFFIXES)
        elif path.is_file() and path.suffix in SOURCE_SUFFIXES:
            paths.append(path)
    return paths


def numbers_in(text: str) -> list[float]:
    return [float(s.replace(",", "")) for s in re.findall(r"\d+(?:,\d{3})*(?:\.\d+)?(?:e-?\d+)?", text)]


def is_sourced(claim: Claim, text: str, numbers: list[float]) -> bool:
    """The claim's words, a number that rounds to it, or (a gain) the difference of its two ends' numbers."""
    if (claim.text in text and not claim.text.replace(".", "").isdigit()) or any(claim.matches(y) for y in numbers):
        return True
    if claim.gain_of is None:
        return False
    a, b = claim.gain_of
    ends = [(ya, yb) for ya in numbers if a.matches(ya) for yb in numbers if b.matches(yb)]
    return any(claim.matches(yb - ya) for ya, yb in ends if (ya <= 1) == (yb <= 1))


README = (ROOT / "README.md").read_text()
BULLETS = status_bullets(README)


def test_status_section_has_bullets():
    assert len(BULLETS) >= 10, "the Status section's bullets were not found"
    exempt = [b for b in BULLETS if b.startswith(tuple(EXEMPT))]
    assert len(exempt) == len(EXEMPT), f"an exemption matches no bullet: {list(EXEMPT)}"


@pytest.mark.parametrize("bullet", [b for b in BULLETS if not b.startswith(tuple(EXEMPT))], ids=lambda b: b[:30])
def test_status_numbers_come_from_named_results(bullet):
    shown = claims(bullet)
    if not shown:
        return
    sources = named_sources(bullet)
    assert sources, f"the bullet shows {[c.text for c in shown]} but names no results file"
    text = " ".join(" ".join(path.read_text().split()) for path in sources)
    numbers = numbers_in(text)
    missing = [f"{c.text} ({c.kind}) in '...{c.context}...'" for c in shown if not is_sourced(c, text, numbers)]
    assert not missing, f"not in {[str(p.relative_to(ROOT)) for p in sources]}:\n" + "\n".join(missing)


def test_the_extraction_reads_each_kind():
    bullet = (
        "from 13.9 % to 23.9 % (**+10.0 ± 3.7 points**), 3.3-3.8× faster, 2 min 23 s, 2.5 min, 52 s, within 4e-7, "
        "8,378 responses, 17 -> 25 tokens, 37.5 % -> 64.1 % (+26.6), `ray.train_workers=2` on 2 ranks, 3 seeds"
    )
    shown = claims(bullet)
    assert [c.text for c in shown] == [
        *("13.9", "23.9", "10.0", "3.7", "3.3", "3.8", "2 min 23 s", "2.5", "52", "4e-7", "8,378", "17", "25"),
        *("37.5", "64.1", "26.6"),
    ]
    gain = shown[-1]
    assert gain.gain_of is not None and [c.text for c in gain.gain_of] == ["37.5", "64.1"]
    assert is_sourced(gain, "from 0.375 to 0.641", [0.375, 0.641])
    assert not is_sourced(gain, "from 0.375 to 0.642", [0.375, 0.643])
    assert is_sourced(shown[6], "it took 2 min 23 s", numbers_in("it took 2 min 23 s"))
    assert Claim("37.8", 37.8, 1, "percent", False, "").matches(0.3775)
    assert not Claim("37.8", 37.8, 1, "percent", False, "").matches(0.3790)
    assert Claim("2.5", 2.5, 1, "duration_min", False, "").matches(148.2)
    assert Claim("4e-7", 4e-7, 0, "tolerance", False, "").matches(3.6e-7)
    assert not Claim("4e-7", 4e-7, 0, "tolerance", False, "").matches(6e-7)
    assert not Claim("0.40", 0.4, 2, "signed", False, "").matches(0.004)
