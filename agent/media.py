"""Pictures and sound for the bot, made in child processes.

The daemon imports neither torch nor matplotlib (its start-up, its memory over days,
and the GIL its supervisor shares with the bot), so ``/plot``'s loss curve and
``/listen``'s speech are made by short-lived processes:

* ``python -m agent.media loss-curve --journal J --out PNG``: the training loss (and the
  validation loss of each evaluation) from the journal, as a PNG;
* ``python -m agent.cli synth --checkpoint C --text T --out WAV``: the CLI's own
  synthesis (``trainer.inference``, Griffin-Lim), unchanged.

They run at low priority (``nice``) with one math thread, so that a ``/listen`` during
training takes little from the trainer; :func:`run_tool` awaits them without blocking
the bot's event loop and kills one that overruns its time.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
from pathlib import Path

NICE = 10


def loss_curve_command(journal: Path, out: Path, title: str, python: str = sys.executable) -> list[str]:
    return [python, "-m", "agent.media", "loss-curve", "--journal", str(journal), "--out", str(out),
            "--title", title]


def synth_command(checkpoint: Path, text: str, out: Path, python: str = sys.executable) -> list[str]:
    return [python, "-m", "agent.cli", "synth", "--checkpoint", str(checkpoint), "--text", text, "--out", str(out)]


async def run_tool(argv: list[str], timeout: float) -> tuple[int, str]:
    """Run a tool at low priority; (exit code, its output's tail). Exit -9: killed on timeout."""
    if shutil.which("nice"):
        argv = ["nice", "-n", str(NICE), *argv]
    from agent.childenv import child_env

    env = child_env({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})  # an allow-list: no bot token
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                                                env=env)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return -9, f"stopped after {timeout:g} s"
    except asyncio.CancelledError:  # the bot is stopping: leave no process behind
        proc.kill()
        raise
    tail = "\n".join(out.decode(errors="replace").strip().splitlines()[-5:])
    return proc.returncode if proc.returncode is not None else -1, tail


# -- the loss-curve process ----------------------------------------------------------------------


def render_loss_curve(journal_file: Path, out: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from agent.journal import Journal
    from trainer.fsutil import atomic_write

    with Journal(journal_file, readonly=True) as journal:  # a picture of it: never a write
        steps, evals = journal.loss_curve()
    fig = Figure(figsize=(8, 4), dpi=90)
    ax = fig.add_subplot(1, 1, 1)
    # Rows in the order written: a rollback shows as the line going back in steps.
    ax.plot([s for s, _ in steps], [v if v is not None else float("nan") for _, v in steps], lw=0.8,
            label="training loss")
    if evals:
        ax.plot([s for s, _ in evals], [v if v is not None else float("nan") for _, v in evals], "o-", ms=3,
                label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if steps and all(v is None or v > 0 for _, v in steps):
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out, durable=False) as fh:
        fig.savefig(fh, format="png")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.media")
    sub = parser.add_subparsers(dest="what", required=True)
    lc = sub.add_parser("loss-curve", help="training and validation loss from a run journal, as a PNG")
    lc.add_argument("--journal", type=Path, required=True)
    lc.add_argument("--out", type=Path, required=True)
    lc.add_argument("--title", default="loss")
    args = parser.parse_args(argv)
    print(render_loss_curve(args.journal, args.out, args.title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
