"""Free-running speech metrics on crafted inputs: each must fail the fooling it names."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainer.audio import load_wav, mel_spectrogram
from trainer.config import AudioConfig, SpeechEvalConfig
from trainer.control import EvalRecord
from trainer.data.filelist import read_filelist
from trainer.speech.attention import AttentionLimits, attention_health
from trainer.speech.freerun import evenly_spaced, frames_per_token
from trainer.speech.mcd import mcd_dtw, mel_cepstrum
from trainer.speech.verdict import judge, speech_rank, stop_verdict, summarize

CFG = SpeechEvalConfig()
LIMITS = AttentionLimits()


def diagonal(steps: int, tokens: int) -> np.ndarray:
    """A clean monotonic alignment: each step attends one token, in order, first to last."""
    a = np.zeros((steps, tokens))
    a[np.arange(steps), np.round(np.linspace(0, tokens - 1, steps)).astype(int)] = 1.0
    return a


@pytest.fixture(scope="module")
def clips(espeak_dataset):
    """Log-mels of the fixture's real espeak-ng utterances."""
    entries = read_filelist(espeak_dataset / "train.txt") + read_filelist(espeak_dataset / "val.txt")
    return [mel_spectrogram(load_wav(e.audio_path)[0], AudioConfig()) for e in entries]


# -- attention health ----------------------------------------------------------------------
def test_a_clean_diagonal_reads_the_text():
    h = attention_health(diagonal(60, 30))
    assert h.coverage == 1.0 and h.monotonic == 1.0 and h.reached_end and h.ok(LIMITS)
    assert h.max_skip <= 1 and h.max_repeat == 0


def test_attention_parked_on_the_first_token_or_uniform_does_not_read():
    parked = np.zeros((60, 30))
    parked[:, 0] = 1.0
    h = attention_health(parked)
    assert not h.reached_end and h.coverage < 0.1 and "did not reach the end of the text" in h.problems(LIMITS)
    uniform = np.full((60, 30), 1 / 30)
    assert not attention_health(uniform).ok(LIMITS)


def test_a_skipped_word_and_a_repeat_are_caught():
    # Tokens 0-19 read in order, then a jump straight to token 28: a word left out.
    path = np.concatenate([np.linspace(0, 19, 30), np.linspace(28, 39, 30)]).round().astype(int)
    skipped = np.zeros((60, 40))
    skipped[np.arange(60), path] = 1.0
    h = attention_health(skipped)
    assert h.max_skip >= 8 and any("skipped" in p for p in h.problems(LIMITS))
    back = diagonal(60, 30)
    back[40:45] = 0
    back[40:45, 10] = 1.0  # went back ~10 tokens for five steps
    h = attention_health(back)
    assert h.max_repeat >= 8 and any("went back" in p for p in h.problems(LIMITS))


def test_a_hold_on_one_token_is_caught():
    a = diagonal(100, 20)
    a[30:80] = 0
    a[30:80, 6] = 1.0
    h = attention_health(a)
    assert h.longest_hold >= 50 and any("stayed" in p for p in h.problems(AttentionLimits(max_hold_steps=30)))


# -- MCD-DTW ------------------------------------------------------------------------------
def test_mcd_dtw_is_zero_for_a_copy_and_small_for_a_time_stretched_copy(clips):
    m = clips[0]
    assert mcd_dtw(m, m) == 0.0
    slow = np.repeat(m, 2, axis=1)  # the same frames, twice as long
    assert mcd_dtw(slow, m) < 0.05


def test_mcd_dtw_separates_other_sentences_and_noise(clips):
    own = clips[0]
    other = [mcd_dtw(c, own) for c in clips[1:6]]
    rng = np.random.default_rng(0)
    noise = mel_spectrogram(rng.normal(0, 0.05, 30000).astype(np.float32), AudioConfig())
    held = np.repeat(own.mean(axis=1, keepdims=True), own.shape[1], axis=1)
    assert min(other) > 3.0  # calibrated threshold: other sentences are further away
    assert mcd_dtw(noise, own) > 3.0 and mcd_dtw(held, own) > 3.0


def test_mel_cepstrum_leaves_out_loudness():
    m = np.random.default_rng(1).normal(size=(80, 10))
    assert np.allclose(mel_cepstrum(m + 3.0), mel_cepstrum(m))  # a constant offset is c0 only
    with pytest.raises(ValueError):
        mel_cepstrum(np.zeros((80, 0)))


# -- verdicts ---------------------------------------------------------------------------------
def _judge(mel, alignment, gate_fired=True, expected=None, reference=None, others=()):
    expected = expected if expected is not None else (reference.shape[1] if reference is not None else 100)
    return judge(name="u", kind="validation", text="t", mel=mel, alignment=alignment, gate_fired=gate_fired,
                 expected_frames=expected, reference=reference, cfg=CFG, limits=LIMITS, other_references=others)


def test_a_perfect_copy_of_the_reference_is_spoken(clips):
    ref = clips[0]
    u = _judge(ref, diagonal(math.ceil(ref.shape[1] / 2), 25), reference=ref, others=clips[1:4])
    assert u.stop == "stopped" and u.read and u.mcd_dtw == 0.0 and u.mcd_contrast == 0.0 and u.spoken


def test_a_stop_at_step_one_is_premature_not_speech(clips):
    ref = clips[0]
    u = _judge(ref[:, :2], diagonal(1, 25), reference=ref, others=clips[1:4])
    assert u.stop == "premature" and u.gate_fired and u.spoken is False and u.duration_ratio < 0.05


def test_a_runaway_is_not_speech_even_with_the_right_sound(clips):
    ref = clips[0]
    long = np.concatenate([ref, ref, ref], axis=1)  # said it, then said it again and again
    u = _judge(long, diagonal(long.shape[1] // 2, 25), gate_fired=False, reference=ref, others=clips[1:4])
    assert u.stop == "runaway" and not u.spoken
    assert stop_verdict(250, 100, True, CFG) == "runaway" and stop_verdict(150, 100, True, CFG) == "stopped"


def test_the_wrong_sentence_with_clean_attention_is_not_speech(clips):
    """A model that reads along but says a memorised other sentence: attention and stop are
    fine, the sound is another sentence's."""
    ref, wrong = clips[0], clips[1]
    u = _judge(wrong, diagonal(math.ceil(wrong.shape[1] / 2), 25), expected=wrong.shape[1], reference=ref,
               others=clips[2:5])
    assert u.stop == "stopped" and u.read and not u.spoken and u.mcd_dtw > CFG.max_mcd_dtw


def test_babble_that_is_as_close_to_every_sentence_fails_the_contrast(clips):
    """An averaged, babbling output is about as close to every recording as to its own: the
    absolute distance can pass, the contrast cannot."""
    ref, others = clips[0], clips[1:6]
    average = np.mean([np.resize(c, ref.shape) for c in clips], axis=0)
    u = judge(name="u", kind="validation", text="t", mel=average, alignment=diagonal(ref.shape[1] // 2, 25),
              gate_fired=True, expected_frames=ref.shape[1], reference=ref,
              cfg=SpeechEvalConfig(max_mcd_dtw=100.0), limits=LIMITS, other_references=others)
    assert u.mcd_contrast > CFG.max_mcd_contrast and not u.spoken


def test_summary_counts_and_score():
    ref = np.zeros((80, 100))
    spoken = _judge(ref, diagonal(50, 20), reference=ref)
    early = _judge(ref[:, :3], diagonal(1, 20), reference=ref)
    probe = _judge(ref, diagonal(50, 20), gate_fired=False)  # no recording: not in the score
    s = summarize([spoken, early, probe], seconds=1.0)
    assert (s.synthesized, s.utterances, s.spoken, s.score) == (3, 2, 1, 0.5)
    assert (s.stopped, s.premature, s.runaway, s.gate_fired) == (1, 1, 1, 2)
    assert s.gate_missed_end == 1  # the probe read to the end and ran on
    assert summarize([probe], 1.0).score is None


def test_speech_rank_puts_spoken_before_read_before_close():
    base = summarize([_judge(np.zeros((80, 100)), diagonal(50, 20), reference=np.zeros((80, 100)))], 1.0)
    more_spoken = base.model_copy(update={"score": 1.0, "spoken": 1, "read": 0, "mcd_dtw": 5.0})
    more_read = base.model_copy(update={"score": 0.0, "spoken": 0, "read": 1, "mcd_dtw": 4.0})
    closer = base.model_copy(update={"score": 0.0, "spoken": 0, "read": 0, "mcd_dtw": 1.0})
    assert speech_rank(more_spoken) < speech_rank(more_read) < speech_rank(closer)
    assert speech_rank(None) is None


def test_helpers():
    assert evenly_spaced(10, 3) == [0, 4, 9] and evenly_spaced(3, 8) == [0, 1, 2] and evenly_spaced(5, 0) == []
    assert frames_per_token([(100, 20), (60, 10), (90, 10)]) == 6.0


def test_old_records_with_a_probe_stop_rate_still_load():
    raw = dict(step=1, wall_time=0.0, val_loss=1.0, val_mel_loss=1.0, val_mel_postnet_loss=1.0, val_gate_loss=0.1,
               val_guided_attention_loss=0.0, diagonality=0.5, focus=0.5, aligned_fraction=0.0, gate_accuracy=0.5,
               probe_stop_rate=1.0)
    e = EvalRecord.model_validate(raw)
    assert e.speech is None and not hasattr(e, "probe_stop_rate")
