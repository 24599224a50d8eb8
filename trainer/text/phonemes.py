"""English text -> ARPAbet phones by espeak-ng, in NVIDIA's curly-brace notation.

``text.phonemes: espeak`` makes the trainer read phones instead of letters: each
transcript (and each sentence given to ``synth``) is phonemized by espeak-ng's
en-us rules and written as NVIDIA/tacotron2 writes ARPAbet, one brace group per
word with the punctuation kept between them::

    "Printing, in the only sense."  ->  "{P R IH1 N T IH0 NG}, {IH0 N} {DH IH0} {OW1 N L IY0} {S EH1 N S}."

The phones are symbols of the English set already (``@AA1`` ...), so the embedding
keeps NVIDIA's 148 rows and their checkpoints still load. A model reading phones does
not have to learn English spelling first, which is most of what a small model trained
for minutes gets wrong.

espeak-ng prints IPA (``--ipa``); :func:`ipa_to_arpabet` maps it. Stress marks
(ˈ primary, ˌ secondary) go to the next vowel as 1 or 2, other vowels get 0.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

from trainer.errors import UserError

# Longest match first: two-letter IPA units before single letters.
_VOWELS = {
    "aɪ": "AY", "aʊ": "AW", "eɪ": "EY", "oʊ": "OW", "ɔɪ": "OY", "iː": "IY", "uː": "UW", "ɑː": "AA", "ɔː": "AO",
    "ɜː": "ER", "oː": "AO", "eː": "EH", "ɛː": "EH", "aː": "AA", "ɪ": "IH", "ᵻ": "IH", "i": "IY", "ɛ": "EH", "e": "EH",
    "æ": "AE", "ʌ": "AH", "ə": "AH", "ɐ": "AH", "ɑ": "AA", "ɒ": "AA", "ɔ": "AO", "ʊ": "UH", "u": "UW", "ɜ": "ER",
    "ɚ": "ER", "a": "AA", "o": "OW", "ɝ": "ER",
}
_CONSONANTS = {
    "tʃ": "CH", "dʒ": "JH", "p": "P", "b": "B", "t": "T", "d": "D", "k": "K", "ɡ": "G", "g": "G", "f": "F", "v": "V",
    "θ": "TH", "ð": "DH", "s": "S", "z": "Z", "ʃ": "SH", "ʒ": "ZH", "h": "HH", "m": "M", "n": "N", "ŋ": "NG", "l": "L",
    "ɹ": "R", "r": "R", "w": "W", "j": "Y", "ɾ": "T", "ʔ": "T", "x": "K", "ɬ": "L",
}
_UNITS = sorted([*_VOWELS, *_CONSONANTS], key=len, reverse=True)
# Marks that carry nothing ARPAbet can say: length, syllabic, tie bars, joiners.
_IGNORED = set("ː̩͡‍‌ˑ̃")
_STRESS = {"ˈ": "1", "ˌ": "2"}
# Where a transcript breaks into clauses: the punctuation the symbol set can say.
_CLAUSE = re.compile(r"([!'(),.:;?\"-]+)")


class PhonemizerError(UserError):
    """espeak-ng is missing or cannot phonemize a text."""


def ipa_to_arpabet(ipa_word: str) -> list[str]:
    """One word of espeak-ng IPA -> ARPAbet phones (vowels with stress digits)."""
    phones: list[str] = []
    stress = "0"
    i = 0
    while i < len(ipa_word):
        ch = ipa_word[i]
        if ch in _STRESS:
            stress = _STRESS[ch]
            i += 1
            continue
        if ch in _IGNORED:
            i += 1
            continue
        unit = next((u for u in _UNITS if ipa_word.startswith(u, i)), None)
        if unit is None:  # a sound outside English: leave it out rather than guess
            i += 1
            continue
        if unit in _VOWELS:
            phones.append(_VOWELS[unit] + stress)
            stress = "0"
        else:
            phones.append(_CONSONANTS[unit])
        i += len(unit)
    return phones


@lru_cache(maxsize=1)
def _espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise PhonemizerError("text.phonemes is 'espeak' but espeak-ng is not installed: run "
                              "'sudo apt-get install espeak-ng' (Debian/Ubuntu) or 'brew install espeak-ng' (macOS)")
    return exe


def _espeak_ipa(clauses: list[str], voice: str) -> list[str]:
    """IPA of each clause (one espeak-ng run for all; each clause ends a sentence so
    espeak-ng prints one line for it)."""
    text = "\n".join(c.rstrip(".") + "." for c in clauses)
    run = subprocess.run([_espeak(), "-q", "--ipa", "-v", voice, "--stdin"], input=text.encode("utf-8"),
                         capture_output=True, timeout=120)
    if run.returncode != 0:
        raise PhonemizerError(f"espeak-ng failed to phonemize {clauses[0][:60]!r}: "
                              f"{run.stderr.decode('utf-8', 'replace').strip() or run.returncode}")
    return [line.strip() for line in run.stdout.decode("utf-8").splitlines() if line.strip()]


# Phonemized texts of this process, (voice, text) -> phones: a dataset is phonemized
# once (and kept on disk by :func:`warm`), every later lookup is a dict hit.
_MEMO: dict[tuple[str, str], str] = {}
_MEMO_LOCK = threading.Lock()
VOICE = "en-us"


def phonemize(text: str, voice: str = VOICE) -> str:
    """A transcript in ARPAbet brace groups, punctuation kept; text that already has braces
    (written in ARPAbet by hand, or phonemized before) is returned as it is."""
    if "{" in text:
        return text
    key = (voice, text)
    with _MEMO_LOCK:
        known = _MEMO.get(key)
    if known is None:
        known = _phonemize(text, voice)
        with _MEMO_LOCK:
            _MEMO[key] = known
    return known


def _clauses(text: str) -> tuple[list[str], list[str]]:
    parts = _CLAUSE.split(text)
    return parts, [p for i, p in enumerate(parts) if i % 2 == 0 and p.strip()]


def _phonemize(text: str, voice: str, ipa: list[str] | None = None) -> str:
    parts, clauses = _clauses(text)
    if not clauses:
        return text
    if ipa is None:
        ipa = _espeak_ipa(clauses, voice)
    if len(ipa) != len(clauses):
        # espeak-ng split or joined a clause: phonemize the clauses one by one.
        ipa = [" ".join(_espeak_ipa([c], voice)) for c in clauses]
    out: list[str] = []
    k = 0
    for i, part in enumerate(parts):
        if i % 2:  # punctuation between clauses
            out.append(part)
        elif part.strip():
            words = [ipa_to_arpabet(w) for w in ipa[k].split()]
            groups = " ".join("{" + " ".join(w) + "}" for w in words if w)
            lead = " " if part[:1].isspace() else ""
            trail = " " if part[-1:].isspace() else ""
            out.append(f"{lead}{groups}{trail}")
            k += 1
        else:
            out.append(part)
    return "".join(out).strip()


def phonemize_all(texts: list[str], voice: str = VOICE, jobs: int = 2, batch: int = 100) -> list[str]:
    """Many transcripts: ``batch`` texts per espeak-ng run, runs in parallel. A batch whose
    output does not line up clause for clause (espeak-ng split a long clause) is done
    text by text."""
    def run(chunk: list[str]) -> list[str]:
        todo = [t for t in chunk if "{" not in t and (voice, t) not in _MEMO]
        clause_lists = [_clauses(t)[1] for t in todo]
        flat = [c for cs in clause_lists for c in cs]
        lines = _espeak_ipa(flat, voice) if flat else []
        if len(lines) == len(flat):
            k = 0
            for text, cs in zip(todo, clause_lists):
                phones = _phonemize(text, voice, lines[k:k + len(cs)])
                k += len(cs)
                with _MEMO_LOCK:
                    _MEMO[(voice, text)] = phones
        return [phonemize(t, voice) for t in chunk]

    chunks = [texts[i:i + batch] for i in range(0, len(texts), batch)]
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return [p for done in pool.map(run, chunks) for p in done]


def warm(texts: list[str], cache_file: Path, voice: str = VOICE, jobs: int | None = None) -> int:
    """Phonemize ``texts`` into this process's memo, reading and extending ``cache_file``
    (JSON, text -> phones, written atomically) so that the next run does not call
    espeak-ng again. Returns how many texts were phonemized now."""
    import os

    from trainer.fsutil import atomic_write

    cache_file = Path(cache_file)
    try:
        saved = json.loads(cache_file.read_text(encoding="utf-8"))
        saved = saved.get(voice, {}) if isinstance(saved, dict) else {}
    except (OSError, ValueError):
        saved = {}  # missing or unreadable: made again
    with _MEMO_LOCK:
        _MEMO.update({(voice, t): p for t, p in saved.items() if isinstance(p, str)})
    todo = sorted({t for t in texts if "{" not in t and (voice, t) not in _MEMO})
    if todo:
        phonemize_all(todo, voice, jobs or os.cpu_count() or 1)
        with _MEMO_LOCK:
            everything = {t: p for (v, t), p in _MEMO.items() if v == voice}
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(cache_file, "w", durable=False, encoding="utf-8") as fh:
            json.dump({voice: everything}, fh, ensure_ascii=False)
    return len(todo)
