"""Symbol sets: the alphabet a text is spelled in before it reaches the embedding.

The English set must keep NVIDIA/tacotron2's exact order. A checkpoint's embedding
matrix has one row per symbol, so a different order would silently feed a warm-started
model the wrong letters (their embedding is ``(148, 512)``).
"""

from __future__ import annotations

# Row 0 is padding; batches are padded with it, so it never appears in real text.
PAD = "_"
SPECIAL = "-"
PUNCTUATION = "!'(),.:;? "
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

# CMUdict phone set. Vowels carry lexical stress (0 none, 1 primary, 2 secondary) and
# also appear bare; consonants never carry stress.
_VOWELS = ("AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW")
_CONSONANTS = (
    "B", "CH", "D", "DH", "F", "G", "HH", "JH", "K", "L", "M", "N", "NG",
    "P", "R", "S", "SH", "T", "TH", "V", "W", "Y", "Z", "ZH",
)
# NVIDIA's list is in plain string order ('AA' < 'AA0' < ... < 'ZH'), so sorting
# reproduces it exactly.
ARPABET = tuple(sorted([v + s for v in _VOWELS for s in ("", "0", "1", "2")] + list(_CONSONANTS)))

# '@' keeps phones apart from letters: '@B' is the phone, 'B' the letter.
ARPABET_PREFIX = "@"

ENGLISH_SYMBOLS: tuple[str, ...] = (
    (PAD, SPECIAL)
    + tuple(PUNCTUATION)
    + tuple(LETTERS)
    + tuple(ARPABET_PREFIX + phone for phone in ARPABET)
)

# Russian: lower-case only (russian_cleaners lower-cases), with 'ё' a symbol of its
# own because it is a different vowel from 'е'. '+' marks stress before a vowel, the
# usual convention of Russian TTS corpora ("молок+о").
RUSSIAN_LETTERS = "абвгдеёжзийклмнопрстуфхцчшщъыьэюя"
STRESS = "+"

RUSSIAN_SYMBOLS: tuple[str, ...] = (PAD, SPECIAL) + tuple(PUNCTUATION) + tuple(RUSSIAN_LETTERS) + (STRESS,)

SYMBOL_SETS: dict[str, tuple[str, ...]] = {"en": ENGLISH_SYMBOLS, "ru": RUSSIAN_SYMBOLS}
