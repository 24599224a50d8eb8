"""Text front end: transcript -> cleaned text -> symbol ids, and back.

``TextConfig.language`` picks the symbol set ("en": NVIDIA/tacotron2's 148 symbols,
"ru": Cyrillic); ``TextConfig.cleaners`` the normalisation run before lookup. English
text may carry ARPAbet in curly braces, as in NVIDIA's code:
``"Turn left on {HH AW1 S S T AH0 N} Street."``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from functools import lru_cache

from trainer.config import TextConfig
from trainer.errors import UserError
from trainer.text.cleaners import CLEANER_LANGUAGES, CLEANERS
from trainer.text.symbols import ARPABET_PREFIX, PAD, SYMBOL_SETS

__all__ = [
    "TextError",
    "clean_text",
    "sequence_to_text",
    "symbols_for",
    "text_to_sequence",
    "unknown_characters",
]


class TextError(UserError):
    """Text that cannot be turned into symbols, or a text config that cannot work.

    Messages do not name a file: callers that know the filelist line prefix it.
    """


# Non-greedy, no nesting: "{HH AW1}" is one group; a lone '{' stays text and is
# then reported as an unknown character.
_ARPABET_RE = re.compile(r"\{([^{}]+)\}")


class _Alphabet:
    """Symbol table and cleaner pipeline for one (language, cleaners) pair."""

    def __init__(self, language: str, cleaner_names: tuple[str, ...]):
        self.symbols = SYMBOL_SETS[language]
        self.id_of = {s: i for i, s in enumerate(self.symbols)}
        # Padding is a symbol but not something a transcript may spell.
        self.speakable = {s for s in self.symbols if s != PAD and len(s) == 1}
        self.has_arpabet = any(s.startswith(ARPABET_PREFIX) and len(s) > 1 for s in self.symbols)
        self.cleaners: list[Callable[[str], str]] = []
        for name in cleaner_names:
            if name not in CLEANERS:
                raise TextError(
                    f"unknown text cleaner {name!r} in text.cleaners; "
                    f"available: {', '.join(sorted(CLEANERS))}"
                )
            wanted = CLEANER_LANGUAGES.get(name)
            if wanted is not None and wanted != language:
                suggestion = "russian_cleaners" if language == "ru" else "english_cleaners"
                raise TextError(
                    f"text.cleaners has {name!r}, which is for language {wanted!r}, but text.language is "
                    f"{language!r}; set text.cleaners: [{suggestion}] (or basic_cleaners)"
                )
            self.cleaners.append(CLEANERS[name])

    def clean(self, text: str) -> str:
        for cleaner in self.cleaners:
            text = cleaner(text)
        return text

    def segments(self, text: str) -> Iterable[tuple[bool, str]]:
        """Yield (is_arpabet, piece): cleaned plain text and raw brace contents."""
        if not self.has_arpabet:
            yield False, self.clean(text)
            return
        position = 0
        for match in _ARPABET_RE.finditer(text):
            if match.start() > position:
                yield False, self.clean(text[position:match.start()])
            yield True, match.group(1)
            position = match.end()
        if position < len(text) or position == 0:
            yield False, self.clean(text[position:])


@lru_cache(maxsize=16)
def _alphabet_cached(language: str, cleaner_names: tuple[str, ...]) -> _Alphabet:
    return _Alphabet(language, cleaner_names)


def _alphabet(config: TextConfig | None) -> _Alphabet:
    config = config or TextConfig()
    return _alphabet_cached(config.language, tuple(config.cleaners))


def symbols_for(config: TextConfig | None = None) -> list[str]:
    """The symbol list, index = embedding row (a copy: callers may keep it)."""
    return list(_alphabet(config).symbols)


def clean_text(text: str, config: TextConfig | None = None) -> str:
    """Run the configured cleaners; ARPAbet braces are kept verbatim."""
    return "".join(f"{{{piece}}}" if arpabet else piece for arpabet, piece in _alphabet(config).segments(text))


def _describe(chars: Iterable[str]) -> str:
    # Code points make invisible characters (no-break space, zero-width joiner) findable.
    return ", ".join(f"{c!r} (U+{ord(c):04X})" if len(c) == 1 else repr(c) for c in chars)


def _scan(text: str, alphabet: _Alphabet) -> tuple[list[int], list[str]]:
    """Ids for what is known, plus everything that is not (characters, '{PHONE}')."""
    ids: list[int] = []
    unknown: list[str] = []
    for arpabet, piece in alphabet.segments(text):
        if arpabet:
            for phone in piece.split():
                symbol = ARPABET_PREFIX + phone
                if symbol in alphabet.id_of:
                    ids.append(alphabet.id_of[symbol])
                else:
                    unknown.append(f"{{{phone}}}")
        else:
            for char in piece:
                if char in alphabet.speakable:
                    ids.append(alphabet.id_of[char])
                else:
                    unknown.append(char)
    return ids, unknown


def text_to_sequence(text: str, config: TextConfig | None = None, strict: bool = True) -> list[int]:
    """Clean ``text`` and map it to symbol ids.

    With ``strict`` (the default) characters outside the symbol set raise
    :class:`TextError` listing them: NVIDIA's code drops them silently, which hides
    transcripts in the wrong script or with unspoken markup. ``strict=False`` drops them.
    """
    alphabet = _alphabet(config)
    if config is not None and config.phonemes == "espeak":
        from trainer.text.phonemes import phonemize

        text = phonemize(text)
    ids, unknown = _scan(text, alphabet)
    if unknown and strict:
        language = (config or TextConfig()).language
        shown = _describe(sorted(set(unknown)))
        snippet = text if len(text) <= 80 else text[:77] + "..."
        raise TextError(
            f"characters outside the {language!r} symbol set: {shown} in {snippet!r}; "
            "spell them out or remove them from the transcript, or check text.language / text.cleaners"
        )
    return ids


def unknown_characters(text: str, config: TextConfig | None = None) -> list[str]:
    """Sorted unique characters (after cleaning) that have no symbol.

    An unknown ARPAbet phone in braces is reported as ``'{XX}'``.
    """
    return sorted(set(_scan(text, _alphabet(config))[1]))


def sequence_to_text(ids: Iterable[int], config: TextConfig | None = None) -> str:
    """Inverse of :func:`text_to_sequence` (of the cleaned text); padding is skipped.

    Accepts a list, a numpy array or a 1-D tensor. ARPAbet comes back in braces,
    consecutive phones sharing one pair: ``{HH AW1 S}``.
    """
    symbols = _alphabet(config).symbols
    out: list[str] = []
    phones: list[str] = []
    for raw in ids:
        index = int(raw)
        if not 0 <= index < len(symbols):
            raise ValueError(f"symbol id {index} out of range 0..{len(symbols) - 1}")
        symbol = symbols[index]
        if symbol == PAD:
            continue
        if len(symbol) > 1 and symbol.startswith(ARPABET_PREFIX):
            phones.append(symbol[len(ARPABET_PREFIX):])
            continue
        if phones:
            out.append("{" + " ".join(phones) + "}")
            phones = []
        out.append(symbol)
    if phones:
        out.append("{" + " ".join(phones) + "}")
    return "".join(out)
