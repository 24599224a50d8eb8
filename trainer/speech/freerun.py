"""The free-running evaluation pass: synthesize a fixed set of utterances, judge each.

The set is chosen once: up to ``eval.speech.max_utterances`` validation clips, evenly
spaced over their lengths (they have real audio to compare with), plus the probe
sentences (with a recording if ``eval.speech.probe_references`` has one). Every
evaluation synthesizes the same set in batches, each utterance with its own stop,
and runs no further than ``runaway_ratio`` x the batch's longest true length: past
that every unstopped utterance is a runaway anyway, so decoding on is wasted time.

The caller seeds the RNG (prenet dropout stays on at inference), so the same
weights always give the same verdicts.
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch

from trainer.config import AudioConfig, SpeechEvalConfig, TextConfig
from trainer.control import SpeechSummary
from trainer.speech.verdict import UtteranceSpeech, attention_limits, judge, summarize


@dataclass(frozen=True)
class Target:
    """One utterance to speak: its text and what it is judged against."""

    name: str
    kind: Literal["validation", "probe"]
    text: str
    ids: torch.Tensor  # [tokens]
    reference: np.ndarray | None  # the recording's log-mel [n_mels, frames]
    expected_frames: int


@dataclass
class SpeechResult:
    summary: SpeechSummary
    utterances: list[UtteranceSpeech]
    image: Path | None = None
    audio: list[Path] = field(default_factory=list)
    details: Path | None = None


def frames_per_token(pairs: Sequence[tuple[int, int]]) -> float:
    """Median mel frames per text token over (frames, tokens) pairs: the speaking rate of
    the data, used to expect a length for text nobody recorded."""
    rates = [f / t for f, t in pairs if t > 0]
    if not rates:
        raise ValueError("no utterance to measure a speaking rate from")
    return statistics.median(rates)


def evenly_spaced(n_items: int, k: int) -> list[int]:
    """k indices spread over 0..n_items-1 (all of them when k >= n_items)."""
    if k >= n_items:
        return list(range(n_items))
    if k <= 0:
        return []
    if k == 1:
        return [n_items // 2]
    return sorted({round(i * (n_items - 1) / (k - 1)) for i in range(k)})


class FreeRunningEvaluator:
    def __init__(self, targets: Sequence[Target], cfg: SpeechEvalConfig, audio: AudioConfig, frames_per_step: int,
                 max_decoder_steps: int, batch_size: int, out_dir: Path | None) -> None:
        if not targets:
            raise ValueError("nothing to synthesize: no validation clips and no probe sentences")
        self.targets = list(targets)
        self.cfg = cfg
        self.audio = audio
        self.r = frames_per_step
        self.max_decoder_steps = max_decoder_steps
        self.batch_size = max(1, batch_size)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.limits = attention_limits(cfg, frames_per_step, audio.sampling_rate / audio.hop_length)
        # Sorted by expected length: a batch stops when its longest member is done.
        self._order = sorted(range(len(self.targets)), key=lambda i: self.targets[i].expected_frames)

    def run(self, model, step: int | None = None,
            autocast: Callable[[], contextlib.AbstractContextManager] | None = None) -> SpeechResult:
        """Synthesize and judge every target; the caller seeds the RNG and sets eval mode."""
        started = time.perf_counter()
        device = next(model.parameters()).device
        spoken: dict[int, tuple[UtteranceSpeech, np.ndarray, np.ndarray]] = {}
        for start in range(0, len(self._order), self.batch_size):
            chunk = self._order[start:start + self.batch_size]
            for i, verdict in zip(chunk, self._speak([self.targets[i] for i in chunk], model, device, autocast)):
                spoken[i] = verdict
        utterances = [spoken[i][0] for i in range(len(self.targets))]
        summary = summarize(utterances, time.perf_counter() - started)
        result = SpeechResult(summary, utterances)
        if self.out_dir is not None and step is not None:
            self._write(result, step, spoken)
        result.summary = summary.model_copy(update={"seconds": time.perf_counter() - started})
        return result

    @torch.no_grad()
    def _speak(self, targets: list[Target], model, device: torch.device, autocast
               ) -> list[tuple[UtteranceSpeech, np.ndarray, np.ndarray]]:
        lengths = torch.tensor([len(t.ids) for t in targets], dtype=torch.long)
        ids = torch.nn.utils.rnn.pad_sequence([t.ids for t in targets], batch_first=True)
        longest = max(t.expected_frames for t in targets)
        steps = min(self.max_decoder_steps, math.ceil(self.cfg.runaway_ratio * longest / self.r) + 1)
        with autocast() if autocast is not None else contextlib.nullcontext():
            out = model.infer(ids.to(device), lengths.to(device), max_decoder_steps=steps)
        out_lengths = out.lengths.cpu()
        stopped = out.stopped.cpu()
        mels = out.mel_postnet.float().cpu().numpy()
        aligns = out.alignments.float().cpu().numpy()
        verdicts = []
        for b, t in enumerate(targets):
            n = int(out_lengths[b])
            mel = mels[b, :, :n]
            align = aligns[b, :math.ceil(n / self.r), :len(t.ids)]
            others = [o.reference for o in self.targets if o is not t and o.reference is not None]
            verdict = judge(name=t.name, kind=t.kind, text=t.text, mel=mel, alignment=align,
                            gate_fired=bool(stopped[b]), expected_frames=t.expected_frames, reference=t.reference,
                            cfg=self.cfg, limits=self.limits, other_references=others)
            verdicts.append((verdict, mel, align))
        return verdicts

    # -- files for people: per-utterance verdicts, the first probe's plot and audio ------------
    def _write(self, result: SpeechResult, step: int,
               spoken: dict[int, tuple[UtteranceSpeech, np.ndarray, np.ndarray]]) -> None:
        from trainer.fsutil import atomic_write

        self.out_dir.mkdir(parents=True, exist_ok=True)
        stem = f"step_{step:08d}"
        details = self.out_dir / f"{stem}.json"
        payload = {"step": step, "wall_time": time.time(), "summary": result.summary.model_dump(mode="json"),
                   "utterances": [u.model_dump(mode="json") for u in result.utterances]}
        with atomic_write(details, "w", durable=False, encoding="utf-8") as fh:
            fh.write(json.dumps(payload, indent=1, allow_nan=True))
        result.details = details
        shown = [i for i, t in enumerate(self.targets) if t.kind == "probe"] or [0]
        first = shown[0]
        verdict, mel, align = spoken[first]
        from trainer.plotting import save_alignment_png

        result.image = save_alignment_png(
            align, self.out_dir / f"{stem}_{_slug(verdict.name)}.png",
            f"step {step}, free-running: {verdict.describe()}"[:110], mel=mel)
        if self.cfg.audio_probes:
            from trainer.audio import griffin_lim, save_wav

            for i in shown[:self.cfg.audio_probes]:
                verdict, mel, _ = spoken[i]
                path = self.out_dir / f"{stem}_{_slug(verdict.name)}.wav"
                save_wav(path, griffin_lim(mel, self.audio, n_iter=self.cfg.griffin_lim_iters),
                         self.audio.sampling_rate)
                result.audio.append(path)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:40]


# -- choosing the targets -------------------------------------------------------------------


def build_targets(val_items: Sequence[tuple[str, str, np.ndarray, np.ndarray]], probes: Sequence[str],
                  references: dict[str, tuple[str, np.ndarray]], cfg: SpeechEvalConfig,
                  to_ids: Callable[[str], list[int]]) -> list[Target]:
    """``val_items``: (name, text, text ids, log-mel) of the validation clips, any order;
    ``references``: probe text -> (name, log-mel) of its recording."""
    pairs = [(mel.shape[1], len(ids)) for _, _, ids, mel in val_items]
    pairs += [(mel.shape[1], len(to_ids(text))) for text, (_, mel) in references.items()]
    rate = frames_per_token(pairs) if pairs else None
    by_length = sorted(val_items, key=lambda item: item[3].shape[1])
    targets = [Target(name=name, kind="validation", text=text, ids=torch.as_tensor(ids, dtype=torch.long),
                      reference=mel, expected_frames=int(mel.shape[1]))
               for name, text, ids, mel in (by_length[i] for i in evenly_spaced(len(by_length), cfg.max_utterances))]
    for k, text in enumerate(probes, start=1):
        ids = to_ids(text)
        ref = references.get(text.strip())
        if ref is not None:
            expected = ref[1].shape[1]
        elif rate is not None:
            expected = max(1, round(rate * len(ids)))
        else:
            raise ValueError("a probe without a recording needs validation clips to estimate its length")
        targets.append(Target(name=f"probe{k}", kind="probe", text=text, ids=torch.as_tensor(ids, dtype=torch.long),
                              reference=ref[1] if ref is not None else None, expected_frames=int(expected)))
    return targets


def build_free_running(val_set, eval_cfg, text: TextConfig, audio: AudioConfig, data, frames_per_step: int,
                       batch_size: int, out_dir: Path | None) -> FreeRunningEvaluator | None:
    """The free-running evaluator of a run (None when ``eval.speech.enabled`` is off):
    ``val_set`` is the run's validation ``TextMelDataset``; ``data`` its ``DataConfig``
    (where the probe recordings' mels are cached)."""
    cfg: SpeechEvalConfig = eval_cfg.speech
    if not cfg.enabled:
        return None
    from trainer.data.dataset import TextMelDataset
    from trainer.text import text_to_sequence

    val_items = [(u.entry.audio_path.stem, u.entry.text, u.text_ids, np.load(u.mel_path)) for u in val_set.items]
    references: dict[str, tuple[str, np.ndarray]] = {}
    if cfg.probe_references is not None:
        ref_set = TextMelDataset(cfg.probe_references, data, audio, text)
        wanted = {p.strip() for p in eval_cfg.probe_sentences}
        unused = []
        for u in ref_set.items:
            if u.entry.text.strip() in wanted:
                references[u.entry.text.strip()] = (u.entry.audio_path.stem, np.load(u.mel_path))
            else:
                unused.append(u.entry.where)
        if unused:
            print(f"warning: eval.speech.probe_references: {len(unused)} recording(s) of text that is not among "
                  f"eval.probe_sentences, not used: {', '.join(unused[:3])}{' ...' if len(unused) > 3 else ''}",
                  flush=True)
    targets = build_targets(val_items, eval_cfg.probe_sentences, references, cfg,
                            lambda s: text_to_sequence(s, text))
    return FreeRunningEvaluator(targets, cfg, audio, frames_per_step, eval_cfg.probe_max_decoder_steps, batch_size,
                                out_dir)
