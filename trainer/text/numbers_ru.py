"""Russian numbers to words, for ``russian_cleaners``.

Cardinals in the nominative case, which is how a bare number is read aloud; the
scale word agrees with the number before it ("две тысячи", "пять миллионов").
Case agreement with the following noun ("пяти рублям") needs a grammar model and is
out of reach of a regex cleaner.
"""

from __future__ import annotations

import re

_ONES_M = "ноль один два три четыре пять шесть семь восемь девять".split()
_ONES_F = "ноль одна две три четыре пять шесть семь восемь девять".split()
_TEENS = (
    "десять одиннадцать двенадцать тринадцать четырнадцать "
    "пятнадцать шестнадцать семнадцать восемнадцать девятнадцать"
).split()
_TENS = "_ _ двадцать тридцать сорок пятьдесят шестьдесят семьдесят восемьдесят девяносто".split()
_HUNDREDS = "_ сто двести триста четыреста пятьсот шестьсот семьсот восемьсот девятьсот".split()

# (feminine?, forms for 1 / 2-4 / 5+) for each power of a thousand.
_SCALES = (
    (False, ("", "", "")),
    (True, ("тысяча", "тысячи", "тысяч")),
    (False, ("миллион", "миллиона", "миллионов")),
    (False, ("миллиард", "миллиарда", "миллиардов")),
    (False, ("триллион", "триллиона", "триллионов")),
)


def plural_form(n: int, forms: tuple[str, str, str]) -> str:
    """Pick the noun form a count takes: 1 тысяча, 2 тысячи, 5 тысяч, 11 тысяч, 21 тысяча."""
    if 11 <= n % 100 <= 14:
        return forms[2]
    last = n % 10
    if last == 1:
        return forms[0]
    if 2 <= last <= 4:
        return forms[1]
    return forms[2]


def _below_thousand(n: int, feminine: bool) -> list[str]:
    hundreds, rest = divmod(n, 100)
    words = [_HUNDREDS[hundreds]] if hundreds else []
    if 10 <= rest < 20:
        words.append(_TEENS[rest - 10])
    else:
        tens, ones = divmod(rest, 10)
        if tens:
            words.append(_TENS[tens])
        if ones:
            words.append((_ONES_F if feminine else _ONES_M)[ones])
    return words


def cardinal(n: int, feminine: bool = False) -> str:
    """``2021`` -> "две тысячи двадцать один"; ``feminine`` for "одна"/"две"."""
    if n < 0:
        return "минус " + cardinal(-n, feminine)
    if n == 0:
        return "ноль"
    if n >= 1000 ** len(_SCALES):
        return " ".join(_ONES_M[int(d)] for d in str(n))
    groups: list[list[str]] = []
    scale = 0
    while n:
        n, chunk = divmod(n, 1000)
        if chunk:
            scale_feminine, forms = _SCALES[scale]
            if scale and chunk == 1 and n == 0:
                # A leading "одна тысяча" / "один миллион" is read as just the scale word.
                words = [forms[0]]
            else:
                words = _below_thousand(chunk, feminine if scale == 0 else scale_feminine)
                if scale:
                    words.append(plural_form(chunk, forms))
            groups.append(words)
        scale += 1
    return " ".join(word for group in reversed(groups) for word in group)


_FRACTIONS = (
    ("десятая", "десятых", "десятых"),
    ("сотая", "сотых", "сотых"),
    ("тысячная", "тысячных", "тысячных"),
)


def decimal(whole: str, fraction: str) -> str:
    """``3,5`` -> "три целых пять десятых"; more than three decimals: "... запятая ..."."""
    integer = int(whole)
    if len(fraction) > len(_FRACTIONS):
        return f"{cardinal(integer)} запятая {cardinal(int(fraction))}"
    numerator = int(fraction)
    whole_words = f"{cardinal(integer, feminine=True)} {plural_form(integer, ('целая', 'целых', 'целых'))}"
    denominator = plural_form(numerator, _FRACTIONS[len(fraction) - 1])
    return f"{whole_words} {cardinal(numerator, feminine=True)} {denominator}"


# "1 000 000" (space, no-break or narrow no-break space between groups of three).
_GROUPED_RE = re.compile(r"(?<![\d,.])\d{1,3}(?:[ \u00a0\u202f]\d{3})+(?![\d])")
_PLUS_RE = re.compile(r"(?<=\d) ?\+ ?(?=\d)")
_PERCENT_RE = re.compile(r"(\d+)(?:[.,](\d+))? ?%")
_DECIMAL_RE = re.compile(r"(\d+)[.,](\d+)")
_NUMBER_RE = re.compile(r"\d+")


def _percent(m: re.Match[str]) -> str:
    whole, fraction = m.group(1), m.group(2)
    if fraction:
        # After a fraction the noun is genitive singular: "две целых пять десятых процента".
        return f"{decimal(whole, fraction)} процента"
    n = int(whole)
    return f"{cardinal(n)} {plural_form(n, ('процент', 'процента', 'процентов'))}"


def normalize_numbers(text: str) -> str:
    """Spell out every number in (lower-case) Russian text."""
    text = _GROUPED_RE.sub(lambda m: re.sub(r"\D", "", m.group(0)), text)
    text = _PLUS_RE.sub(" плюс ", text)
    text = _PERCENT_RE.sub(_percent, text)
    text = _DECIMAL_RE.sub(lambda m: decimal(m.group(1), m.group(2)), text)
    return _NUMBER_RE.sub(lambda m: cardinal(int(m.group(0))), text)
