"""Cleaners: normalise raw transcripts into the spelling the symbol set covers.

The English pipelines follow NVIDIA/tacotron2's (``english_cleaners``,
``basic_cleaners``, ``transliteration_cleaners``) so that text reaches their
checkpoints spelled as in training. Two deliberate differences:

* Transliteration uses Unicode decomposition instead of the ``unidecode`` package:
  accents are stripped ("café" -> "cafe"), a short table covers the typographic
  characters that do not decompose. Anything else (Cyrillic, CJK, emoji) is left in
  place so that the unknown-character check reports it instead of it vanishing.
* Double quotes and square brackets are removed. NVIDIA's sequence step drops them
  anyway (they are not in the symbol set), so the ids are the same, but removing them
  here means a strict check does not reject every LJSpeech line that quotes someone.
"""

from __future__ import annotations

import re
import unicodedata

from trainer.text import numbers, numbers_ru

_WHITESPACE_RE = re.compile(r"\s+")

# NVIDIA's list. Each needs its dot, so "mr." never matches inside "mrs.". The
# lookahead sees a letter glued to the dot ("St.Pierre") so a space can be put back.
_ABBREVIATIONS = [
    (re.compile(rf"\b{abbreviation}\.(?=([a-z])?)", re.IGNORECASE), expansion)
    for abbreviation, expansion in (
        ("mrs", "misess"),
        ("mr", "mister"),
        ("dr", "doctor"),
        ("st", "saint"),
        ("co", "company"),
        ("jr", "junior"),
        ("maj", "major"),
        ("gen", "general"),
        ("drs", "doctors"),
        ("rev", "reverend"),
        ("lt", "lieutenant"),
        ("hon", "honorable"),
        ("sgt", "sergeant"),
        ("capt", "captain"),
        ("esq", "esquire"),
        ("ltd", "limited"),
        ("col", "colonel"),
        ("ft", "fort"),
    )
]

# Characters NFKD does not reduce to ASCII, mapped to what a reader would type.
_TYPOGRAPHY = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'", "\u00b4": "'", "`": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"', "\u00ab": '"', "\u00bb": '"',
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2015": "-", "\u2212": "-",
    "\u00df": "ss", "\u00e6": "ae", "\u00c6": "AE", "\u0153": "oe", "\u0152": "OE",
    "\u00f8": "o", "\u00d8": "O", "\u0142": "l", "\u0141": "L", "\u0111": "d", "\u0110": "D",
    "\u00f0": "d", "\u00d0": "D", "\u00fe": "th", "\u00de": "Th", "\u0131": "i",
})

# Marks with no sound that NVIDIA's symbol set does not contain.
_SILENT_MARKS_RE = re.compile(r'["\[\]]')


def lowercase(text: str) -> str:
    return text.lower()


def collapse_whitespace(text: str) -> str:
    return _WHITESPACE_RE.sub(" ", text)


def to_ascii(text: str) -> str:
    """Strip accents and normalise typography; characters with no ASCII form stay."""
    text = unicodedata.normalize("NFKD", text.translate(_TYPOGRAPHY))
    return "".join(c for c in text if not unicodedata.combining(c))


def expand_abbreviations(text: str) -> str:
    for pattern, expansion in _ABBREVIATIONS:
        text = pattern.sub(lambda m, word=expansion: word + " " if m.group(1) else word, text)
    return text


def drop_silent_marks(text: str) -> str:
    return _SILENT_MARKS_RE.sub("", text)


def basic_cleaners(text: str) -> str:
    """Lower-case and collapse whitespace; no transliteration (for custom alphabets)."""
    return collapse_whitespace(lowercase(text))


def transliteration_cleaners(text: str) -> str:
    """Non-English Latin-script text reduced to ASCII."""
    text = lowercase(to_ascii(text))
    return collapse_whitespace(drop_silent_marks(text))


def english_cleaners(text: str) -> str:
    """English: ASCII, lower case, numbers and abbreviations spelled out."""
    text = lowercase(to_ascii(text))
    text = numbers.normalize_numbers(text)
    text = expand_abbreviations(text)
    return collapse_whitespace(drop_silent_marks(text))


# Russian typography. Quotes carry no sound and are removed; dashes become the
# hyphen symbol; the acute accent some texts use to mark stress becomes '+'.
_RU_TYPOGRAPHY = str.maketrans({
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2015": "-", "\u2212": "-",
    "\u2018": "'", "\u2019": "'", "\u2026": "...",
    "\u00ab": None, "\u00bb": None, "\u201c": None, "\u201d": None, "\u201e": None, '"': None,
    "\u00a0": " ", "\u202f": " ",
})
_ACUTE_STRESS_RE = re.compile("(\\w)\u0301")


def russian_cleaners(text: str) -> str:
    """Russian: lower case ('ё' kept apart from 'е'), numbers spelled out, stress as '+'."""
    # NFC first: a decomposed "е + diaeresis" becomes the single letter 'ё' (and
    # "и + breve" 'й') instead of losing its mark.
    text = unicodedata.normalize("NFC", text)
    text = _ACUTE_STRESS_RE.sub(r"+\1", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = lowercase(text.translate(_RU_TYPOGRAPHY))
    text = numbers_ru.normalize_numbers(text)
    return collapse_whitespace(text).strip()


CLEANERS = {
    "english_cleaners": english_cleaners,
    "basic_cleaners": basic_cleaners,
    "transliteration_cleaners": transliteration_cleaners,
    "russian_cleaners": russian_cleaners,
}

# Cleaners that only make sense for one language: running an ASCII transliteration
# over Russian would turn 'й' into 'и' and 'ё' into 'е' without any error.
CLEANER_LANGUAGES = {
    "english_cleaners": "en",
    "transliteration_cleaners": "en",
    "russian_cleaners": "ru",
}
