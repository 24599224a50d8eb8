"""Health of an inference alignment: did the attention read the text, in order, to the end?

The alignment of free-running inference, ``A[t, n]`` over the decoder steps up to the
stop and the N real tokens, is reduced to its peak path ``p_t = argmax_n A[t, n]``:

* ``coverage``: the share of tokens that the peak passes within one token of;
* ``monotonic``: the share of steps whose peak does not move back by more than one token;
* ``reached_end``: the peak came within ``end_tokens`` of the last token;
* ``max_skip``: the largest forward jump of the peak in one step (a skipped word);
* ``max_repeat``: the largest backward jump (a repeated stretch of text);
* ``longest_hold``: the most consecutive steps the peak stays on one token (stuck,
  babbling or humming on one sound);
* ``focus``: mean peak weight (sharpness), for display.

Attention parked on the first token covers one token and never reaches the end;
attention that is uniform over the text has a constant argmax (the first token) and
fails the same way; attention that wanders at random moves back at half its steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AttentionLimits:
    end_tokens: int = 3
    min_coverage: float = 0.8
    min_monotonic: float = 0.9
    max_skip_tokens: int = 4
    max_repeat_tokens: int = 2
    max_hold_steps: int = 30  # the caller converts a time limit to steps (frames per step differ)


@dataclass(frozen=True)
class AttentionHealth:
    coverage: float
    monotonic: float
    reached_end: bool
    max_skip: int
    max_repeat: int
    longest_hold: int
    focus: float

    def problems(self, limits: AttentionLimits, hold: bool = True) -> list[str]:
        """What is wrong, in words; empty when the attention read the text cleanly.
        ``hold=False`` leaves out staying on one token (a runaway parks on the last one)."""
        out = []
        if not self.reached_end:
            out.append("did not reach the end of the text")
        if self.coverage < limits.min_coverage:
            out.append(f"covered {self.coverage:.0%} of the text")
        if self.monotonic < limits.min_monotonic:
            out.append(f"moved back at {1 - self.monotonic:.0%} of the steps")
        if self.max_skip > limits.max_skip_tokens:
            out.append(f"skipped {self.max_skip} tokens at once")
        if self.max_repeat > limits.max_repeat_tokens:
            out.append(f"went back {self.max_repeat} tokens")
        if hold and self.longest_hold > limits.max_hold_steps:
            out.append(f"stayed {self.longest_hold} steps on one token")
        return out

    def ok(self, limits: AttentionLimits) -> bool:
        return not self.problems(limits)


def attention_health(alignment: np.ndarray, end_tokens: int = AttentionLimits.end_tokens) -> AttentionHealth:
    """``alignment`` is ``[steps, tokens]``: the decoder steps up to the stop, the real tokens."""
    a = np.asarray(alignment, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"expected an alignment [steps, tokens] with at least one token, got {a.shape}")
    n_tokens = a.shape[1]
    if a.shape[0] == 0:
        return AttentionHealth(coverage=0.0, monotonic=0.0, reached_end=False, max_skip=0, max_repeat=0,
                               longest_hold=0, focus=0.0)
    peaks = a.argmax(axis=1)
    visited = np.zeros(n_tokens, dtype=bool)
    for offset in (-1, 0, 1):
        visited[np.clip(peaks + offset, 0, n_tokens - 1)] = True
    moves = np.diff(peaks)
    monotonic = 1.0 - float((moves < -1).sum()) / max(len(moves), 1)
    # Runs of equal consecutive peaks: the longest is the longest hold.
    changes = np.flatnonzero(moves != 0)
    bounds = np.concatenate(([-1], changes, [len(peaks) - 1]))
    return AttentionHealth(
        coverage=float(visited.mean()),
        monotonic=monotonic,
        reached_end=bool(peaks.max() >= n_tokens - max(end_tokens, 1)),
        max_skip=int(max(moves.max(initial=0), 0)),
        max_repeat=int(max(-moves.min(initial=0), 0)),
        longest_hold=int(np.diff(bounds).max()),
        focus=float(a.max(axis=1).mean()),
    )
