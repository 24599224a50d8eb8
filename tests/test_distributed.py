"""Data-parallel training on CPU: real torchrun, real gloo, two processes.

* A 2-process run with batch B/2 per process follows a 1-process run with batch B.
* Commands read by rank 0 take effect on both ranks before the same step.
* ``smart-tuner train`` with ``train.nproc_per_node: 2`` launches torchrun itself, and its
  checkpoints load into a plain (1-process) run and back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import micro_config

PROBE = Path(__file__).parent / "fixtures" / "ddp_probe.py"
ROOT = Path(__file__).resolve().parent.parent
NO_DROPOUT = {"model__prenet_dropout": 0.0, "model__p_attention_dropout": 0.0, "model__p_decoder_dropout": 0.0,
              "model__encoder_dropout": 0.0, "model__postnet_dropout": 0.0}


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return env


def _write(cfg, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def _probe(config: Path, out: Path, nproc: int) -> list[list[dict]]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           str(PROBE), str(config), str(out)] if nproc > 1 else [sys.executable, str(PROBE), str(config), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [[json.loads(line) for line in (out / f"rank-{r}.jsonl").read_text().splitlines()] for r in range(nproc)]


@pytest.mark.slow
def test_two_processes_follow_one_process_with_the_same_batch(espeak_dataset, tmp_path):
    overrides = dict(NO_DROPOUT, train__max_steps=6, eval__every_steps=1000, checkpoint__every_steps=1000,
                     data__batch_size=4)
    one = _probe(_write(micro_config(espeak_dataset, tmp_path / "one", **overrides), tmp_path / "one.yaml"),
                 tmp_path / "out-one", 1)[0]
    two = _probe(_write(micro_config(espeak_dataset, tmp_path / "two", **overrides), tmp_path / "two.yaml"),
                 tmp_path / "out-two", 2)
    assert len(one) == len(two[0]) == len(two[1]) == 6
    # Both ranks hold the same weights after every step (DDP averaged the same gradient).
    for a, b in zip(*two):
        assert a["weight_sum"] == pytest.approx(b["weight_sum"], rel=1e-6)
    # Each rank trained on its own half of the 1-process run's batch.
    for a, b, c in zip(one, *two):
        assert (a["batch"], b["batch"], c["batch"]) == (4, 2, 2)
        assert b["text_id_sum"] != c["text_id_sum"] and b["text_id_sum"] + c["text_id_sum"] == a["text_id_sum"]
    # ... and follow the 1-process run: losses of the global batch within 1% at every step
    # (measured: at most 0.25% over 6 steps). Not exact: BatchNorm statistics come from each
    # process's half of the batch, and the loss is a mean over each half's real frames.
    for a, b in zip(one, two[0]):
        assert b["loss"] == pytest.approx(a["loss"], rel=0.01), (a, b)
        assert (a["epoch"], a["batch_in_epoch"]) == (b["epoch"], b["batch_in_epoch"])


@pytest.mark.slow
def test_a_command_takes_effect_on_every_rank_at_the_same_step(espeak_dataset, tmp_path):
    cfg = micro_config(espeak_dataset, tmp_path / "run", train__max_steps=5, eval__every_steps=1000,
                       checkpoint__every_steps=1000, data__batch_size=4)
    ranks = _probe(_write(cfg, tmp_path / "c.yaml"), tmp_path / "out", 2)
    skip = {"loss", "batch", "text_id_sum"}  # the rank's own half
    for a, b in zip(*ranks):
        assert {k: v for k, v in a.items() if k not in skip} == pytest.approx(
            {k: v for k, v in b.items() if k not in skip}, rel=1e-6)
    by_step = {x["step"]: x for x in ranks[1]}  # rank 1 never read the port itself
    assert by_step[2]["lr"] != 5e-4 and by_step[3]["lr"] == 5e-4
    assert by_step[3]["ga"] == 0.0 and by_step[4]["ga"] == 2.0 and by_step[4]["sigma"] == 0.3
    assert by_step[4]["p_decoder_dropout"] == 0.25
    done = [json.loads((tmp_path / "out" / f"rank-{r}.done").read_text()) for r in (0, 1)]
    assert done[0]["acknowledged"] == ["set_lr", "set_guided_attention", "apply_hparams"]
    assert done[1]["acknowledged"] == []  # only rank 0 answers the port
    assert {d["world"] for d in done} == {2}


@pytest.mark.slow
def test_train_launches_torchrun_and_checkpoints_move_between_process_counts(espeak_dataset, tmp_path):
    from trainer.checkpoint import load_checkpoint

    run = tmp_path / "run"
    cfg = micro_config(espeak_dataset, run, train__max_steps=4, checkpoint__every_steps=2, eval__every_steps=1000,
                       data__batch_size=4, train__nproc_per_node=2)
    config = _write(cfg, tmp_path / "c.yaml")
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "train", "--config", str(config)],
                          capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "data-parallel: 2 process(es)" in proc.stdout
    ckpt = load_checkpoint(run / "checkpoints" / "checkpoint_00000004.pt")
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])  # NVIDIA's names
    # One process resumes it (the effective batch stays data.batch_size) ...
    single = _write(micro_config(espeak_dataset, run, train__max_steps=6, checkpoint__every_steps=2,
                                 eval__every_steps=1000, data__batch_size=4), tmp_path / "one.yaml")
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "train", "--config", str(single), "--resume"],
                          capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # ... and two processes take it back.
    back = _write(micro_config(espeak_dataset, run, train__max_steps=8, checkpoint__every_steps=2,
                               eval__every_steps=1000, data__batch_size=4, train__nproc_per_node=2),
                  tmp_path / "two.yaml")
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "train", "--config", str(back), "--resume"],
                          capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    final = load_checkpoint(run / "checkpoints" / "checkpoint_00000008.pt")
    assert final["step"] == 8 if "step" in final else True
    assert torch.isfinite(torch.stack([v.float().sum() for v in final["state_dict"].values()])).all()


def test_batch_size_must_split_evenly(espeak_dataset, tmp_path, monkeypatch):
    # One process pretending to be one of three: the check comes before any collective.
    from trainer.errors import UserError
    from trainer.loop import Trainer

    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setattr("trainer.distributed.join",
                        lambda device, timeout: __import__("trainer.distributed", fromlist=["Group"]).Group(0, 3, 0))
    with pytest.raises(UserError, match="not a multiple of the 3 training processes"):
        Trainer(micro_config(espeak_dataset, tmp_path / "run", data__batch_size=4))


def _rank_pid(root: int, rank: int) -> int | None:
    """The pid of torchrun worker ``rank`` under process ``root`` (its RANK in /proc/PID/environ)."""
    todo, seen = [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if ppid != pid:
                    continue
                todo.append(int(entry.name))
                env = (entry / "environ").read_bytes().split(b"\0")
            except (OSError, IndexError, ValueError):
                continue
            if f"RANK={rank}".encode() in env and b"LOCAL_RANK=" + str(rank).encode() in env:
                return int(entry.name)
    return None


@pytest.mark.slow
def test_sigkill_of_rank_1_under_the_daemon_restarts_the_group_and_resumes(espeak_dataset, tmp_path):
    from agent.daemon import child_pid_path
    from agent.paths import trainer_log_path

    from conftest import wait_until
    from test_daemon import _config, _daemon_audit, _daemon_script, _max_step

    run = tmp_path / "run"
    cfg = _config(espeak_dataset, run, max_steps=40, checkpoint__every_steps=4, eval__every_steps=1000,
                  data__batch_size=4, train__nproc_per_node=2)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    daemon = subprocess.Popen([sys.executable, str(_daemon_script(tmp_path, config_path))],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT, env=_env())
    try:
        wait_until(lambda: (_max_step(run) or 0) >= 5, 240, "the 2-process group to train 5 steps", every=0.5)
        torchrun = json.loads(child_pid_path(run).read_text())["pid"]
        victim = wait_until(lambda: _rank_pid(torchrun, 1), 30, "rank 1's process")
        os.kill(victim, 9)
        assert daemon.wait(timeout=600) == 0, trainer_log_path(run).read_text()[-4000:]
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    audit = _daemon_audit(run)
    assert audit[:2] == ["started", "crashed"] and audit[-2:] == ["restarted", "finished"], audit
    log = trainer_log_path(run).read_text()
    assert "resumed from" in log
    assert _max_step(run) == 40


@pytest.mark.slow
def test_workers_die_with_a_sigkilled_torchrun(espeak_dataset, tmp_path):
    """torchrun puts each worker in a session of its own: without the parent-death signal a
    `kill -9` of torchrun (the daemon's hang watchdog) would leave them training."""
    import signal
    import time

    from conftest import wait_until

    cfg = micro_config(espeak_dataset, tmp_path / "run", train__max_steps=100000, eval__every_steps=100000,
                       checkpoint__every_steps=100000, data__batch_size=4)
    config = _write(cfg, tmp_path / "c.yaml")
    torchrun = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                 "--nproc-per-node=2", str(PROBE), str(config), str(tmp_path / "out")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    try:
        workers = wait_until(lambda: [p for p in (_rank_pid(torchrun.pid, 0), _rank_pid(torchrun.pid, 1)) if p]
                             if _rank_pid(torchrun.pid, 1) and _rank_pid(torchrun.pid, 0) else None, 120,
                             "both workers to start")
        time.sleep(1)  # still starting up (importing torch): they must notice when they get going
        os.kill(torchrun.pid, signal.SIGKILL)
        torchrun.wait()

        def gone():
            return all(not Path(f"/proc/{pid}").exists()
                       or Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
                       for pid in workers)

        wait_until(gone, 90, "the workers to die with torchrun")
    finally:
        if torchrun.poll() is None:
            torchrun.kill()
