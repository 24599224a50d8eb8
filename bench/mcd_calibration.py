"""What an MCD-DTW value means: distances between espeak-ng recordings whose relation is known.

    python bench/mcd_calibration.py [--n 40] [--data-dir runs/mcd-calibration]

Speaks ``--n`` LJSpeech sentences (15-60 characters, the demo's range) with espeak-ng
at its default rate (175 words per minute) and again at 140 and 220, then measures
MCD-DTW (trainer/speech/mcd.py) on the trainer's own log-mel features for pairs of:

* the same sentence at another rate (the words are right, the timing differs);
* a different sentence at the same rate (each sentence against the next one);
* white noise as loud as the speech, and near-silence, of the reference's length;
* the reference against itself (0 by construction).

It prints each group's mean, spread and range, and the threshold halfway between the
largest same-sentence distance and the smallest different-sentence distance: a
generated utterance under it is closer to its sentence than any other sentence here is.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tables import print_rows  # noqa: E402

RATES = (175, 140, 220)


def build(data_dir: Path, n: int) -> dict[int, list[tuple[str, Path]]]:
    from trainer.data.espeak import build_espeak_dataset
    from trainer.data.filelist import read_filelist

    out = {}
    for rate in RATES:
        folder = data_dir / f"rate{rate}"
        build_espeak_dataset(out_dir=folder, n=n, voice="en-us", sentences_file=None, max_chars=60, min_chars=15,
                             val_fraction=0.5, seed=4321, rate=rate, jobs=None)
        entries = read_filelist(folder / "train.txt") + read_filelist(folder / "val.txt")
        out[rate] = sorted(((e.text, e.audio_path) for e in entries), key=lambda t: str(t[1].name))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=40, help="sentences (default 40)")
    ap.add_argument("--data-dir", type=Path, default=Path("runs/mcd-calibration"))
    ap.add_argument("--json", type=Path, default=None, help="write every distance here")
    args = ap.parse_args()

    from trainer.audio import load_wav, mel_spectrogram
    from trainer.config import AudioConfig
    from trainer.speech.mcd import mcd_dtw

    audio = AudioConfig()
    clips = build(args.data_dir, args.n)
    mels = {rate: [mel_spectrogram(load_wav(p)[0], audio) for _, p in items] for rate, items in clips.items()}
    ref = mels[175]
    rng = np.random.default_rng(0)
    groups: dict[str, list[float]] = {"same sentence, 140 wpm": [], "same sentence, 220 wpm": [],
                                      "different sentence": [], "white noise": [], "near-silence": [],
                                      "its average frame, held": [], "itself": []}
    for i, m in enumerate(ref):
        groups["same sentence, 140 wpm"].append(mcd_dtw(mels[140][i], m))
        groups["same sentence, 220 wpm"].append(mcd_dtw(mels[220][i], m))
        groups["different sentence"].append(mcd_dtw(ref[(i + 1) % len(ref)], m))
        wav, _ = load_wav(clips[175][i][1])
        rms = float(np.sqrt(np.mean(wav ** 2)))
        noise = rng.normal(0.0, rms, size=len(wav)).astype(np.float32)
        groups["white noise"].append(mcd_dtw(mel_spectrogram(np.clip(noise, -1, 1), audio), m))
        hush = rng.normal(0.0, 1e-4, size=len(wav)).astype(np.float32)
        groups["near-silence"].append(mcd_dtw(mel_spectrogram(hush, audio), m))
        held = np.repeat(m.mean(axis=1, keepdims=True), m.shape[1], axis=1)
        groups["its average frame, held"].append(mcd_dtw(held, m))
        groups["itself"].append(mcd_dtw(m, m))
    rows = [[name, str(len(vals)), f"{statistics.fmean(vals):.2f}", f"{statistics.pstdev(vals):.2f}",
             f"{min(vals):.2f}", f"{max(vals):.2f}"] for name, vals in groups.items()]
    print(f"MCD-DTW on espeak-ng en-us, {len(ref)} sentences of 15-60 characters, reference at 175 wpm")
    print_rows(["pair", "n", "mean dB", "sd", "min", "max"], rows)
    same = groups["same sentence, 140 wpm"] + groups["same sentence, 220 wpm"]
    diff = groups["different sentence"]
    print(f"largest same-sentence distance {max(same):.2f} dB, smallest different-sentence distance "
          f"{min(diff):.2f} dB: threshold halfway {(max(same) + min(diff)) / 2:.2f} dB")
    if args.json:
        args.json.write_text(json.dumps(groups, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
