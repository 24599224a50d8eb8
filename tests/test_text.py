"""Text front end: NVIDIA symbol order, cleaners, numbers, ARPAbet, Russian, errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from trainer.config import TextConfig
from trainer.errors import UserError
from trainer.text import (
    TextError,
    clean_text,
    numbers,
    numbers_ru,
    sequence_to_text,
    symbols_for,
    text_to_sequence,
    unknown_characters,
)
from trainer.text.cleaners import english_cleaners, russian_cleaners, transliteration_cleaners

EN = TextConfig()
RU = TextConfig(language="ru", cleaners=["russian_cleaners"])


# ---------------------------------------------------------------------------
# Symbols: rows of NVIDIA's embedding
# ---------------------------------------------------------------------------

def test_english_symbols_follow_nvidia_order():
    symbols = symbols_for(EN)
    assert len(symbols) == 148 == len(set(symbols))
    # NVIDIA: [pad] + special + punctuation + letters + '@'-ARPAbet (CMUdict order).
    expected = {"_": 0, "-": 1, "!": 2, "'": 3, "?": 10, " ": 11, "A": 12, "Z": 37, "a": 38, "z": 63,
                "@AA": 64, "@AA0": 65, "@B": 88, "@HH": 106, "@ZH": 147}
    assert {s: symbols.index(s) for s in expected} == expected


def test_symbols_for_returns_a_copy():
    symbols_for(EN).append("x")
    assert len(symbols_for(EN)) == 148


def test_nvidia_sequence_for_a_plain_sentence():
    # Hand-computed from NVIDIA's table: t=57 u=58 r=55 n=51 ' '=11 a=38 .=7
    assert text_to_sequence("Turn a.", EN) == [57, 58, 55, 51, 11, 38, 7]


# ---------------------------------------------------------------------------
# English cleaners and numbers
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, spoken", [
    ("0", "zero"),
    ("7", "seven"),
    ("42", "forty-two"),
    ("101", "one hundred one"),
    ("1000", "one thousand"),
    ("12,345", "twelve thousand, three hundred forty-five"),
    ("1,000,000", "one million"),
    ("3000000017", "three billion, seventeen"),
    # 1001-2999 are read as years, as NVIDIA's cleaners do.
    ("1984", "nineteen eighty-four"),
    ("1905", "nineteen oh five"),
    ("1900", "nineteen hundred"),
    ("2000", "two thousand"),
    ("2005", "two thousand five"),
    ("2019", "twenty nineteen"),
    ("the 1960s", "the nineteen sixties"),
    ("1st", "first"),
    ("22nd", "twenty-second"),
    ("12th", "twelfth"),
    ("103rd", "one hundred and third"),
    ("3.14", "three point one four"),
    ("$3.50", "three dollars, fifty cents"),
    ("$3.5", "three dollars, fifty cents"),
    ("$1", "one dollar"),
    ("$0.01", "one cent"),
    ("$1,000,000", "one million dollars"),
    ("$5 million", "five million dollars"),
    ("£5", "five pounds"),
    ("50%", "fifty percent"),
])
def test_english_numbers(text, spoken):
    assert english_cleaners(text) == spoken


def test_ordinal_and_cardinal_helpers():
    assert numbers.ordinal(1) == "first" and numbers.ordinal(30) == "thirtieth"
    assert numbers.cardinal(-5) == "minus five"
    assert numbers.cardinal(999_999) == "nine hundred ninety-nine thousand, nine hundred ninety-nine"


@pytest.mark.parametrize("text, cleaned", [
    ("Mr. Smith met Mrs. Jones and Dr. Who.", "mister smith met misess jones and doctor who."),
    ("St. Paul, Co. Ltd., Jr., Maj. Gen. Capt. Sgt. Lt. Col.",
     "saint paul, company limited, junior, major general captain sergeant lieutenant colonel"),
    ("Rev. Hon. Drs. Esq. Ft. Worth", "reverend honorable doctors esquire fort worth"),
    ("Mister St.Pierre", "mister saint pierre"),
])
def test_english_abbreviations(text, cleaned):
    assert english_cleaners(text) == cleaned


def test_english_cleaners_transliterate_and_collapse():
    assert english_cleaners("  Café   NAÏVE\tMüller —  “straße”…") == " cafe naive muller - strasse..."
    assert transliteration_cleaners("Crème Brûlée") == "creme brulee"


def test_ljspeech_quotes_and_brackets_do_not_break_strict_mode():
    # NVIDIA drops these characters silently; the ids must be the same without them.
    quoted = 'He said, "the [old] press."'
    assert text_to_sequence(quoted, EN) == text_to_sequence("He said, the old press.", EN)


def test_unicode_outside_ascii_is_reported_not_dropped():
    assert unknown_characters("hello привет", EN) == ["в", "е", "и", "п", "р", "т"]


# ---------------------------------------------------------------------------
# ARPAbet in braces
# ---------------------------------------------------------------------------

def test_arpabet_braces_map_to_phone_symbols():
    symbols = symbols_for(EN)
    text = "Turn left on {HH AW1 S S T AH0 N} Street."
    ids = text_to_sequence(text, EN)
    phones = [symbols[i] for i in ids if symbols[i].startswith("@")]
    assert phones == ["@HH", "@AW1", "@S", "@S", "@T", "@AH0", "@N"]
    assert sequence_to_text(ids, EN) == "turn left on {HH AW1 S S T AH0 N} street."
    assert clean_text(text, EN) == "turn left on {HH AW1 S S T AH0 N} street."


def test_unknown_arpabet_phone_is_an_error():
    assert unknown_characters("{HH XX1}", EN) == ["{XX1}"]
    with pytest.raises(TextError, match="XX1"):
        text_to_sequence("say {HH XX1}", EN)


# ---------------------------------------------------------------------------
# Errors and strictness
# ---------------------------------------------------------------------------

def test_unknown_characters_raise_a_user_error_listing_them():
    with pytest.raises(TextError) as info:
        text_to_sequence("Price # 5 ~ ok", EN)
    message = str(info.value)
    assert isinstance(info.value, UserError)
    assert "'#'" in message and "'~'" in message and "U+0023" in message and "Price # 5" in message


def test_non_strict_drops_unknown_characters():
    assert text_to_sequence("a#b", EN, strict=False) == text_to_sequence("ab", EN)


def test_pad_symbol_is_not_speakable():
    assert unknown_characters("a_b", EN) == ["_"]


def test_unknown_characters_are_sorted_unique_after_cleaning():
    assert unknown_characters("x ~ # ~ 3 é", EN) == ["#", "~"]
    assert unknown_characters("All fine, 42!", EN) == []


def test_unknown_cleaner_names_the_available_ones():
    with pytest.raises(TextError) as info:
        text_to_sequence("hi", TextConfig(cleaners=["englsh_cleaners"]))
    assert "englsh_cleaners" in str(info.value) and "english_cleaners" in str(info.value)


def test_language_and_cleaners_must_agree():
    # Russian text through ASCII transliteration would silently lose 'й' and 'ё'.
    with pytest.raises(TextError, match="russian_cleaners"):
        text_to_sequence("привет", TextConfig(language="ru", cleaners=["english_cleaners"]))


def test_russian_language_defaults_to_russian_cleaners():
    assert TextConfig(language="ru").cleaners == ["russian_cleaners"]
    assert sequence_to_text(text_to_sequence("Ёж", TextConfig(language="ru")), TextConfig(language="ru")) == "ёж"


def test_sequence_to_text_accepts_arrays_and_skips_padding():
    ids = text_to_sequence("hi there", EN)
    padded = ids + [0, 0]
    assert sequence_to_text(np.array(padded), EN) == "hi there"
    assert sequence_to_text(torch.tensor(padded), EN) == "hi there"
    with pytest.raises(ValueError):
        sequence_to_text([148], EN)


# ---------------------------------------------------------------------------
# Russian
# ---------------------------------------------------------------------------

def test_russian_symbols_keep_yo_apart():
    symbols = symbols_for(RU)
    assert symbols[0] == "_" and "ё" in symbols and "е" in symbols
    assert symbols.index("ё") != symbols.index("е")
    assert len(symbols) == len(set(symbols))


@pytest.mark.parametrize("n, words", [
    (0, "ноль"),
    (1, "один"),
    (12, "двенадцать"),
    (21, "двадцать один"),
    (101, "сто один"),
    (1000, "тысяча"),
    (2000, "две тысячи"),
    (5000, "пять тысяч"),
    (21000, "двадцать одна тысяча"),
    (1_000_000, "миллион"),
    (3_000_000, "три миллиона"),
    (11_000_000, "одиннадцать миллионов"),
    (1_000_000_000, "миллиард"),
    (123_456_789, "сто двадцать три миллиона четыреста пятьдесят шесть тысяч семьсот восемьдесят девять"),
])
def test_russian_cardinals(n, words):
    assert numbers_ru.cardinal(n) == words


def test_russian_cleaners():
    text = "Ёжик   купил 21 яблоко за 1 000 000 рублей — «дёшево»!"
    assert russian_cleaners(text) == "ёжик купил двадцать один яблоко за миллион рублей - дёшево!"
    assert russian_cleaners("в 1,5 раза") == "в одна целая пять десятых раза"
    assert russian_cleaners("50%") == "пятьдесят процентов"
    # Decomposed ё (е + U+0308) is composed, not stripped; an acute accent marks stress.
    assert russian_cleaners("е\u0308лка моло\u0301ко") == "ёлка мол+око"


def test_russian_sequence_round_trip():
    text = "Съешь же ещё этих мягких французских булок, да выпей чаю: 5 чашек?"
    ids = text_to_sequence(text, RU)
    assert sequence_to_text(ids, RU) == clean_text(text, RU)
    assert clean_text(text, RU).endswith("да выпей чаю: пять чашек?")


def test_russian_rejects_latin_letters():
    assert unknown_characters("привет, world", RU) == ["d", "l", "o", "r", "w"]


# -- phonemes (text.phonemes: espeak) ------------------------------------------------------
def test_ipa_maps_to_arpabet_with_stress():
    from trainer.text.phonemes import ipa_to_arpabet

    assert ipa_to_arpabet("həlˈoʊ") == ["HH", "AH0", "L", "OW1"]
    assert ipa_to_arpabet("pɹˈɪntɪŋ") == ["P", "R", "IH1", "N", "T", "IH0", "NG"]
    assert ipa_to_arpabet("dʒˈʌmps") == ["JH", "AH1", "M", "P", "S"]
    assert ipa_to_arpabet("ˌoʊvɚ") == ["OW2", "V", "ER0"]
    assert ipa_to_arpabet("wˈɜːld") == ["W", "ER1", "L", "D"]


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_phonemes_keep_punctuation_and_the_symbol_set(tmp_path):
    from trainer.config import TextConfig
    from trainer.text import phonemes, sequence_to_text, symbols_for, text_to_sequence

    text = "Printing, in the only sense."
    ph = phonemes.phonemize(text)
    assert ph.startswith("{P R IH1 N T IH0 NG},") and ph.endswith("{S EH1 N S}.")
    cfg = TextConfig(phonemes="espeak")
    assert len(symbols_for(cfg)) == 148  # NVIDIA's table: checkpoints still fit
    assert sequence_to_text(text_to_sequence(text, cfg), cfg) == ph
    assert text_to_sequence("{HH AH0 L OW1}", cfg) == text_to_sequence("{HH AH0 L OW1}")  # braces taken as they are
    # A cache file makes the next process skip espeak-ng.
    cache = tmp_path / "phonemes.json"
    texts = ["A first sentence.", "And a second one, with a comma."]
    assert phonemes.warm(texts, cache) == 2
    phonemes._MEMO.clear()
    assert phonemes.warm(texts, cache) == 0 and phonemes.phonemize(texts[1]).count(",") == 1
    with pytest.raises(ValueError, match="text.language: en"):
        TextConfig(language="ru", phonemes="espeak")
