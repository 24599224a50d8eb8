"""``smart-tuner`` command line: data, train, synth, demo.

Heavy imports (torch, mlflow, librosa) happen inside the command that needs them so
that ``smart-tuner --help`` and light commands start instantly.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainer.errors import UserError


def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="build or audit a dataset")
    dsub = data.add_subparsers(dest="data_command", required=True)

    esp = dsub.add_parser("espeak", help="speak sentences with espeak-ng into an LJSpeech-format dataset")
    esp.add_argument("--out", required=True, type=Path, help="dataset folder to create")
    esp.add_argument("--n", type=int, default=200, help="number of utterances (default 200)")
    esp.add_argument("--voice", default="en-us", help="espeak-ng voice (default en-us; 'ru' for Russian)")
    esp.add_argument("--sentences", type=Path, default=None,
                     help="UTF-8 text file, one sentence per line (default: the LJSpeech transcripts)")
    esp.add_argument("--max-chars", type=int, default=None, help="only sentences up to this many characters")
    esp.add_argument("--min-chars", type=int, default=1, help="only sentences of at least this many characters")
    esp.add_argument("--val-fraction", type=float, default=0.1, help="share of utterances for val.txt (default 0.1)")
    esp.add_argument("--seed", type=int, default=1234)
    esp.add_argument("--rate", type=int, default=None, help="espeak-ng speaking rate, words per minute")
    esp.add_argument("--jobs", type=int, default=None, help="parallel espeak-ng processes (default: CPU count)")
    esp.set_defaults(func=_cmd_data_espeak)

    prep = dsub.add_parser("prepare", help="make train.txt / val.txt from a corpus as downloaded (LJSpeech)")
    prep.add_argument("--ljspeech", required=True, type=Path, metavar="DIR",
                      help="the unpacked LJSpeech-1.1 folder (metadata.csv and wavs/)")
    prep.add_argument("--out", required=True, type=Path, metavar="DIR",
                      help="folder for train.txt and val.txt (may be the LJSpeech folder itself)")
    prep.add_argument("--val-fraction", type=float, default=0.05, help="share of clips for val.txt (default 0.05)")
    prep.add_argument("--seed", type=int, default=1234, help="seed of the train/val split (default 1234)")
    prep.set_defaults(func=_cmd_data_prepare)

    chk = dsub.add_parser("check", help="audit a dataset before training")
    chk.add_argument("--config", required=True, help="config file or shipped config name")
    chk.add_argument("--show", type=int, default=5, help="offending lines to show per problem (default 5)")
    chk.set_defaults(func=_cmd_data_check)


def _cmd_data_espeak(args: argparse.Namespace) -> int:
    from trainer.data.espeak import build_espeak_dataset

    summary = build_espeak_dataset(
        out_dir=args.out, n=args.n, voice=args.voice, sentences_file=args.sentences,
        max_chars=args.max_chars, min_chars=args.min_chars, val_fraction=args.val_fraction,
        seed=args.seed, rate=args.rate, jobs=args.jobs,
    )
    print(summary)
    return 0


def _cmd_data_prepare(args: argparse.Namespace) -> int:
    from trainer.data.ljspeech import prepare_ljspeech

    print(prepare_ljspeech(args.ljspeech, args.out, val_fraction=args.val_fraction, seed=args.seed))
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    from trainer.config import load_config
    from trainer.data.audit import audit_dataset

    config = load_config(args.config)
    report = audit_dataset(config.data, config.audio, config.text)
    print(report.format(show=args.show))
    if report.by_kind("malformed_filelist"):
        return 2  # like an unusable config: that filelist's clips were not checked at all
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smart-tuner", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_data_commands(sub)
    from trainer import cli_train

    cli_train.add_commands(sub)
    return parser


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse and dispatch; user errors become one line on stderr and exit status 2."""
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # smart-tuner history | head
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
