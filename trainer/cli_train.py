"""``train``, ``synth`` and ``demo`` subcommands."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from pathlib import Path

from trainer.errors import UserError


def add_commands(sub: argparse._SubParsersAction) -> None:
    tr = sub.add_parser("train", help="train without a supervisor")
    tr.add_argument("--config", required=True, help="config file or shipped config name (default, tiny-cpu)")
    tr.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT",
                    help="continue from the newest good checkpoint of the run (or from CKPT, ours or NVIDIA's)")
    tr.add_argument("--warm-start", type=Path, metavar="CKPT", help="start from these weights (new optimizer, step 0)")
    tr.add_argument("--ignore-layers", default="", help="comma-separated layers not taken from --warm-start, "
                                                         "e.g. embedding.weight")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set train.max_steps=100 (repeatable)")
    tr.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    tr.set_defaults(func=_cmd_train)

    sy = sub.add_parser("synth", help="speak text with a checkpoint (Griffin-Lim vocoder)")
    sy.add_argument("--checkpoint", required=True, type=Path)
    sy.add_argument("--text", required=True)
    sy.add_argument("--out", required=True, type=Path, help="wav file; the alignment plot goes beside it (.png)")
    sy.add_argument("--config", help="config for NVIDIA checkpoints (ours carry their own)")
    sy.add_argument("--max-decoder-steps", type=int, default=None)
    sy.add_argument("--gate-threshold", type=float, default=None)
    sy.add_argument("--griffin-lim-iters", type=int, default=60)
    sy.add_argument("--no-split", action="store_true",
                    help="speak a long text in one go (default: split at sentence ends where it would not fit "
                         "the decoder-step limit)")
    sy.set_defaults(func=_cmd_synth)

    ev = sub.add_parser("eval", help="speak the validation sentences and probes with a checkpoint and judge them")
    ev.add_argument("--checkpoint", required=True, type=Path, help="ours, or NVIDIA's (then give --config)")
    ev.add_argument("--config", help="config whose data and eval sections to use (ours: default the checkpoint's)")
    ev.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set eval.speech.max_utterances=32 (repeatable)")
    ev.add_argument("--out", type=Path, default=None,
                    help="folder for the per-utterance verdicts (JSON), the first probe's plot and audio")
    ev.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    ev.set_defaults(func=_cmd_eval)

    de = sub.add_parser("demo", help="build an espeak-ng dataset and train tiny-cpu on it (again: resumes)")
    de.add_argument("--out", type=Path, default=Path("runs/demo"), help="run folder (default runs/demo)")
    de.add_argument("--n", type=int, default=1900, help="utterances to synthesise (default 1900)")
    de.add_argument("--steps", type=int, default=1000,
                    help="training steps (default 1000); running the demo again trains that many more")
    de.add_argument("--config", default="tiny-cpu")
    de.set_defaults(func=_cmd_demo)


def run_training(config, resume=False, warm_start=None, ignore_layers=(), mlflow=True) -> str:
    """Build a vanilla (unsupervised) trainer with console and MLflow callbacks and run it.

    It holds the run's train lock throughout: a run folder that another trainer trains,
    or that a live daemon supervises, is refused (UserError naming its pid). With several
    processes (``train.nproc_per_node``) it runs itself under torchrun, which holds the
    lock while its processes train."""
    from trainer import distributed
    from trainer.runlock import hold_train_lock

    if config.train.nproc_per_node > 1 or config.train.rdzv_endpoint:
        if not distributed.under_torchrun():
            return _launch_torchrun(config)
        try:  # one process of the group: the launcher holds the lock
            return _train(config, resume, warm_start, ignore_layers, mlflow)
        finally:
            distributed.leave()
    with hold_train_lock(config.run_dir):
        return _train(config, resume, warm_start, ignore_layers, mlflow)


def _train(config, resume, warm_start, ignore_layers, mlflow) -> str:
    from trainer.callbacks import ConsoleProgress
    from trainer.loop import Trainer

    callbacks: list = [ConsoleProgress(config.train.log_every)]  # a rank > 0 drops them itself
    if mlflow and config.tracking.enabled:
        from trainer.tracking import MlflowLogger

        callbacks.append(MlflowLogger(config.tracking, config.run_dir))
    trainer = Trainer(config, callbacks=callbacks, resume=resume, warm_start=warm_start, ignore_layers=ignore_layers)
    # SIGTERM/SIGINT: finish the step, write a final checkpoint, exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: trainer.request_stop(signal.Signals(signum).name))
    return trainer.train()


def _launch_torchrun(config) -> str:
    """Run this same command under torchrun, holding the run's train lock meanwhile; a
    SIGTERM/SIGINT here goes to torchrun, which passes it to every process."""
    import subprocess

    from trainer import distributed
    from trainer.runlock import hold_train_lock

    t = config.train
    argv = distributed.torchrun_argv(t.nproc_per_node, t.nnodes, t.node_rank, t.rdzv_endpoint, "agent.cli",
                                     sys.argv[1:])
    with hold_train_lock(config.run_dir):
        print(f"data-parallel: {t.nproc_per_node} process(es) per machine under torchrun; each trains on "
              f"1/N of every batch of {config.data.batch_size} (the effective batch)", flush=True)
        proc = subprocess.Popen(argv)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: proc.send_signal(signum))
        code = proc.wait()
    if code != 0:
        raise UserError(f"torchrun ended with exit status {code}; each process's error is above")
    return "torchrun"


def _cmd_train(args: argparse.Namespace) -> int:
    from trainer.config import load_config, parse_overrides

    config = load_config(args.config, parse_overrides(args.set))
    ignore = [s.strip() for s in args.ignore_layers.split(",") if s.strip()]
    if ignore and args.warm_start is None:
        raise UserError("--ignore-layers only applies with --warm-start CKPT")
    run_training(config, resume=args.resume, warm_start=args.warm_start, ignore_layers=ignore,
                 mlflow=not args.no_mlflow)
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    import warnings

    from trainer.config import load_config
    from trainer.inference import synthesize_to_files

    config = load_config(args.config) if args.config else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wav, plot, result = synthesize_to_files(
            args.checkpoint, args.text, args.out, config, max_decoder_steps=args.max_decoder_steps,
            gate_threshold=args.gate_threshold, griffin_lim_iters=args.griffin_lim_iters, split=not args.no_split)
    for w in caught:
        print(f"warning: {w.message}")
    seconds = len(result.audio) / (config or _config_of(args.checkpoint)).audio.sampling_rate
    parts = f", spoken in {result.parts} parts split at sentence ends" if result.parts > 1 else ""
    print(f"wrote {wav} ({seconds:.2f} s{parts}) and {plot}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import json

    from trainer.callbacks import describe_speech
    from trainer.config import load_config, parse_overrides
    from trainer.speech.offline import evaluate_checkpoint

    overrides = parse_overrides(args.set)
    config = None
    if args.config:
        config = load_config(args.config, overrides)
    elif overrides:  # the checkpoint's own config, changed
        import yaml

        from trainer.config import parse_config

        saved = yaml.safe_dump(_config_of(args.checkpoint).model_dump(mode="json"))
        config = parse_config(saved, f"{args.checkpoint} (its config)", overrides)
    result = evaluate_checkpoint(args.checkpoint, config, out_dir=args.out, step=0 if args.out else None)
    if args.json:
        print(json.dumps({"summary": result.summary.model_dump(mode="json"),
                          "utterances": [u.model_dump(mode="json") for u in result.utterances]}, indent=1))
        return 0
    for u in result.utterances:
        print(f"{u.name:<12} {u.describe()}")
        print(f"{'':<12} {u.text}")
    print(f"speech: {describe_speech(result.summary)}")
    if args.out:
        print(f"wrote {result.details}" + (f", {result.image}" if result.image else "")
              + "".join(f", {p}" for p in result.audio))
    return 0


def _config_of(checkpoint: Path):
    from trainer.checkpoint import load_checkpoint
    from trainer.config import RunConfig, config_from_checkpoint

    ours = load_checkpoint(checkpoint).get("smart_tuner")
    return config_from_checkpoint(ours["config"]) if ours else RunConfig()


def demo_config(args: argparse.Namespace):
    """Build the demo dataset if needed (and espeak-ng recordings of the probe sentences,
    to judge the model's speech against); the tiny-cpu config pointed at them."""
    from trainer.config import load_config
    from trainer.data.espeak import build_espeak_dataset, speak_references

    data_dir = args.out / "data"
    if not (data_dir / "train.txt").exists():
        print(build_espeak_dataset(out_dir=data_dir, n=args.n, voice="en-us", sentences_file=None, max_chars=60,
                                   min_chars=15, val_fraction=DEMO_VAL_FRACTION, seed=1234, rate=None, jobs=None))
    # Running the demo again continues the run for another --steps steps.
    from trainer.checkpoint import CheckpointManager

    done = CheckpointManager(args.out / "checkpoints", keep_last=1, keep_best=False).list()
    start = done[-1].step if done else 0
    config = load_config(args.config, {
        "run_dir": str(args.out), "data.training_files": str(data_dir / "train.txt"),
        "data.validation_files": str(data_dir / "val.txt"), "train.max_steps": start + args.steps,
    })
    references = speak_references(config.eval.probe_sentences, data_dir, name="probes")
    speech = config.eval.speech.model_copy(update={"probe_references": references})
    return config.model_copy(update={"eval": config.eval.model_copy(update={"speech": speech})})


# The demo's validation share: enough held-out sentences for the free-running evaluation's
# pick of eval.speech.max_utterances, few enough to leave the rest for training.
DEMO_VAL_FRACTION = 0.05


def demo_sample(config) -> dict:
    """Speak the first probe sentence with the demo's best checkpoint, judge it against its
    espeak-ng recording, judge the validation sentences, and say plainly how it went."""
    from trainer.audio import load_wav, mel_spectrogram
    from trainer.callbacks import describe_speech
    from trainer.data.filelist import read_filelist
    from trainer.inference import synthesize_to_files
    from trainer.speech.offline import evaluate_checkpoint
    from trainer.speech.verdict import attention_limits, judge

    best = config.run_dir / "checkpoints" / "best.pt"
    ckpt = best if best.exists() else sorted((config.run_dir / "checkpoints").glob("checkpoint_*.pt"))[-1]
    sentence = config.eval.probe_sentences[0]
    wav, plot, result = synthesize_to_files(ckpt, sentence, config.run_dir / "sample.wav")
    a = config.audio
    seconds = len(result.audio) / a.sampling_rate
    report = {"checkpoint": str(ckpt), "sample": str(wav), "seconds": seconds}
    line = f"demo sample: {wav} ({seconds:.2f} s) and {plot}, spoken by {ckpt.name}"
    refs = config.eval.speech.probe_references
    recording = next((e for e in read_filelist(refs) if e.text.strip() == sentence.strip()), None) if refs else None
    if recording is not None:
        ref_mel = mel_spectrogram(load_wav(recording.audio_path)[0], a)
        # The sample judged as the free-running evaluation judges an utterance, its
        # contrast measured against the validation sentences' recordings.
        others = [mel_spectrogram(load_wav(e.audio_path)[0], a)
                  for e in read_filelist(config.data.validation_files)[:config.eval.speech.max_utterances]]
        verdict = judge(name="sample", kind="probe", text=sentence, mel=result.mel, alignment=result.alignment,
                        gate_fired=result.stopped, expected_frames=ref_mel.shape[1], reference=ref_mel,
                        cfg=config.eval.speech,
                        limits=attention_limits(config.eval.speech, config.model.n_frames_per_step,
                                                a.sampling_rate / a.hop_length),
                        other_references=others)
        report.update(duration_ratio=verdict.duration_ratio, mcd_dtw=verdict.mcd_dtw, sample_spoken=verdict.spoken)
        line += (f"\n  against espeak-ng's recording of the sentence: {verdict.describe()} (two different "
                 f"espeak-ng sentences are 4.7-6.6 dB apart, the same one at another rate 0.8-1.3)")
    for problem in result.problems:
        line += f"\n  {problem}"
    print(line)
    evaluated = evaluate_checkpoint(ckpt)
    val = [u for u in evaluated.utterances if u.kind == "validation"]
    spoken = sum(bool(u.spoken) for u in val)
    report.update(spoken=spoken, validation=len(val), speech=evaluated.summary.model_dump())
    print(f"speech of {ckpt.name}: {describe_speech(evaluated.summary)}")
    if val and spoken / len(val) >= DEMO_SPEAKS:
        print(f"the model speaks: {spoken} of {len(val)} validation sentences spoken")
    else:
        print(f"not speaking yet: {spoken} of {len(val)} validation sentences spoken \u2014 run the demo again to "
              "continue")
    # The venv's own interpreter: `mlflow` is not on the PATH outside the venv.
    print(f"MLflow: {shlex.quote(sys.executable)} -m mlflow ui --backend-store-uri "
          f"sqlite:///{(config.run_dir / 'mlflow.db').resolve()}")
    return report


# The demo calls its model speaking when this share of the validation sentences is spoken.
DEMO_SPEAKS = 0.75


def _cmd_demo(args: argparse.Namespace) -> int:
    config = demo_config(args)
    run_training(config, resume=True)
    demo_sample(config)
    return 0
