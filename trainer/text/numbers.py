"""English numbers to words, for ``english_cleaners``.

Follows the reading NVIDIA/tacotron2's cleaners produce (so that text fed to their
checkpoints looks like what they were trained on): cardinals without "and",
thousand groups separated by commas, 1001-2999 read as years ("nineteen eighty-four"),
ordinals with "and" ("one hundred and first"). Where their reading is plainly wrong
we read it properly instead: decimals digit by digit ("three point one four"),
"$3.5" as fifty cents, "50%" as "fifty percent", "1980s" as "nineteen eighties",
"$5 million" as "five million dollars", and commas only where they group thousands.
"""

from __future__ import annotations

import re

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ("", "thousand", "million", "billion", "trillion", "quadrillion", "quintillion")

# Ordinal forms that are not simply "+th".
_IRREGULAR_ORDINALS = {
    "one": "first", "two": "second", "three": "third", "five": "fifth",
    "eight": "eighth", "nine": "ninth", "twelve": "twelfth",
}


def _below_hundred(n: int) -> str:
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")


def _below_thousand(n: int, andword: str) -> str:
    hundreds, rest = divmod(n, 100)
    if not hundreds:
        return _below_hundred(rest)
    words = f"{_ONES[hundreds]} hundred"
    if rest:
        words += f" {andword} " if andword else " "
        words += _below_hundred(rest)
    return words


def cardinal(n: int, andword: str = "") -> str:
    """``1234567`` -> "one million, two hundred thirty-four thousand, five hundred sixty-seven"."""
    if n < 0:
        return "minus " + cardinal(-n, andword)
    if n == 0:
        return "zero"
    if n >= 1000 ** len(_SCALES):
        # Too large to have a name worth saying; read it digit by digit.
        return " ".join(_ONES[int(d)] for d in str(n))
    groups = []
    scale = 0
    while n:
        n, chunk = divmod(n, 1000)
        if chunk:
            words = _below_thousand(chunk, andword)
            groups.append(f"{words} {_SCALES[scale]}" if scale else words)
        scale += 1
    return ", ".join(reversed(groups))


def _last_word(words: str) -> tuple[str, str]:
    """Split off the final word ("twenty-one" -> "twenty-", "one")."""
    m = re.fullmatch(r"(.*?)([a-z]+)", words)
    assert m is not None
    return m.group(1), m.group(2)


def ordinal(n: int) -> str:
    """``21`` -> "twenty-first"; ``103`` -> "one hundred and third" (NVIDIA's reading)."""
    stem, last = _last_word(cardinal(n, andword="and"))
    if last in _IRREGULAR_ORDINALS:
        last = _IRREGULAR_ORDINALS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return stem + last


def _plural(words: str) -> str:
    """Decades: "nineteen eighty" -> "nineteen eighties"."""
    stem, last = _last_word(words)
    return stem + (last[:-1] + "ies" if last.endswith("y") else last + "s")


def _pair(n: int) -> str:
    """Two digits of a year: 5 -> "oh five", 84 -> "eighty-four"."""
    return f"oh {_ONES[n]}" if 0 < n < 10 else _below_hundred(n)


def number(n: int) -> str:
    """A bare integer as it is usually read: years between 1001 and 2999 in pairs."""
    if 1000 < n < 3000:
        if n == 2000:
            return "two thousand"
        if 2000 < n < 2010:
            return "two thousand " + _ONES[n % 100]
        high, low = divmod(n, 100)
        if low == 0:
            return f"{cardinal(high)} hundred"
        return f"{_below_hundred(high)} {_pair(low)}"
    return cardinal(n)


def _digits(text: str) -> str:
    return " ".join(_ONES[int(d)] for d in text)


def _money(whole: str, fraction: str | None, units: tuple[str, str, str, str]) -> str:
    """Currency amount; ``units`` = (one major, many major, one minor, many minor)."""
    major = int(whole) if whole else 0
    # "3.5" means 3.50: the fraction is hundredths, not a count.
    minor = int((fraction or "0")[:2].ljust(2, "0"))
    parts = []
    if major:
        parts.append(f"{cardinal(major)} {units[0] if major == 1 else units[1]}")
    if minor:
        parts.append(f"{cardinal(minor)} {units[2] if minor == 1 else units[3]}")
    return ", ".join(parts) if parts else f"zero {units[1]}"


_DOLLARS = ("dollar", "dollars", "cent", "cents")
_POUNDS = ("pound", "pounds", "penny", "pence")

# Thousand separators only where they really group thousands ("1,000,000", not "1,2").
_THOUSANDS_RE = re.compile(r"(?<![\d,])\d{1,3}(?:,\d{3})+(?![\d])")
_SCALED_DOLLARS_RE = re.compile(r"\$(\d+(?:\.\d+)?) (thousand|million|billion|trillion)\b")
_DOLLARS_RE = re.compile(r"\$(\d*)(?:\.(\d+))?(?<=\d)")
_POUNDS_RE = re.compile(r"£(\d*)(?:\.(\d+))?(?<=\d)")
_PERCENT_RE = re.compile(r"(\d+(?:\.\d+)?) ?%")
_DECIMAL_RE = re.compile(r"(\d+)\.(\d+)")
_ORDINAL_RE = re.compile(r"\b(\d+)(?:st|nd|rd|th)\b")
_DECADES_RE = re.compile(r"\b(\d+0)'?s\b")
_NUMBER_RE = re.compile(r"\d+")


def _scaled_dollars(m: re.Match[str]) -> str:
    # "$5 million" -> "five million dollars", not "five dollars million".
    return f"{m.group(1)} {m.group(2)} dollars"


def normalize_numbers(text: str) -> str:
    """Spell out every number in (lower-case) English text."""
    text = _THOUSANDS_RE.sub(lambda m: m.group(0).replace(",", ""), text)
    text = _SCALED_DOLLARS_RE.sub(_scaled_dollars, text)
    text = _POUNDS_RE.sub(lambda m: _money(m.group(1), m.group(2), _POUNDS), text)
    text = _DOLLARS_RE.sub(lambda m: _money(m.group(1), m.group(2), _DOLLARS), text)
    text = _PERCENT_RE.sub(lambda m: f"{m.group(1)} percent", text)
    text = _DECIMAL_RE.sub(lambda m: f"{cardinal(int(m.group(1)))} point {_digits(m.group(2))}", text)
    text = _ORDINAL_RE.sub(lambda m: ordinal(int(m.group(1))), text)
    text = _DECADES_RE.sub(lambda m: _plural(number(int(m.group(1)))), text)
    return _NUMBER_RE.sub(lambda m: number(int(m.group(0))), text)
