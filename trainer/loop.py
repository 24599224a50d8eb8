"""The one training loop.

``Trainer.train`` reads like the algorithm: take a batch, step, report, evaluate,
checkpoint, apply commands. Everything else (data, loss, metrics, checkpoints,
commands, logging) lives in its own module.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from trainer import distributed, tunables
from trainer.callbacks import Callback
from trainer.checkpoint import CheckpointError, CheckpointManager, load_checkpoint
from trainer.commands import apply_command
from trainer.config import RunConfig
from trainer.control import CheckpointRecord, ControlPort, NullPort, StepTelemetry
from trainer.data.dataset import Batch, BucketBatchSampler, Collate, TextMelDataset
from trainer.errors import UserError
from trainer.evaluate import Evaluator
from trainer.loss import LossWeights, tacotron2_loss
from trainer.model.graphed import GraphedDecoder
from trainer.model.tacotron2 import Tacotron2
from trainer.redact import mask_urls
from trainer.schedule import LRSchedule
from trainer.speech.freerun import build_free_running, frames_per_token
from trainer.speech.verdict import speech_rank
from trainer.text import symbols_for
from trainer.tunables import DROPOUTS, TUNABLES

PAUSE_POLL_SECONDS = 0.5
# Remember this many applied command ids (enough to make redelivery harmless).
APPLIED_COMMANDS_KEPT = 10_000


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device is 'cuda' but no CUDA device is available; set train.device: auto or cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """RNG states as tensors and plain lists, so ``torch.load(weights_only=True)`` reads them."""
    version, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [version, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    version, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((version, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_metric(record, best_metric: str) -> float | None:
    """The value of ``checkpoint.best_metric`` for an evaluation (None: not measured)."""
    if best_metric == "speech":
        return speech_rank(record.speech)
    return getattr(record, best_metric)


class Trainer:
    """One training run of Tacotron2: model, optimizer, data, evaluation and checkpoints.

    ``port`` connects a supervisor (telemetry out, commands in; default: none).
    ``callbacks`` observe the run. ``resume`` continues from the newest good checkpoint
    in ``run_dir`` (True) or from the given one; ``warm_start`` begins a new run from
    another checkpoint's weights, leaving out ``ignore_layers``. A fresh run refuses a
    ``run_dir`` that already holds checkpoints.
    """

    def __init__(self, config: RunConfig, port: ControlPort | None = None, callbacks: Sequence[Callback] = (),
                 resume: bool | str | Path = False, warm_start: str | Path | None = None,
                 ignore_layers: Sequence[str] = ()) -> None:
        self.config = config
        self.run_dir = Path(config.run_dir)
        self.port = port or NullPort()
        self.callbacks = list(callbacks)
        self.device = pick_device(config.train.device)
        # Several processes under torchrun: rank 0 alone talks to the port, evaluates,
        # saves and reports (the others get no port and no callbacks); see trainer/distributed.py.
        self.group = distributed.join(self.device.type, config.train.dist_timeout_seconds)
        if self.group is not None:
            if config.data.batch_size % self.group.world:
                raise UserError(f"data.batch_size {config.data.batch_size} is not a multiple of the "
                                f"{self.group.world} training processes: each takes an equal part of every batch")
            if self.device.type == "cuda":
                torch.cuda.set_device(self.group.local_rank)
                self.device = torch.device("cuda", self.group.local_rank)
            if not self.group.is_main:
                self.port, self.callbacks = NullPort(), []
        if config.train.torch_threads:
            torch.set_num_threads(config.train.torch_threads)
        torch.backends.cudnn.benchmark = config.train.cudnn_benchmark
        # Without this, tiny attention weights and gradients become denormal floats
        # after a few dozen steps and CPU steps slow down more than tenfold.
        torch.set_flush_denormal(True)
        seed_everything(config.train.seed)

        n_symbols = len(symbols_for(config.text))
        self.model: Tacotron2 = Tacotron2(config.model, n_symbols, config.audio.n_mel_channels).to(self.device)
        # DDP averages the gradients over the processes; checkpoints keep saving self.model
        # (NVIDIA's key names, no "module." prefix).
        self.ddp = None if self.group is None else torch.nn.parallel.DistributedDataParallel(
            self.model, device_ids=[self.group.local_rank] if self.device.type == "cuda" else None)
        o = config.optim
        self.optimizer: torch.optim.Adam = torch.optim.Adam(
            self.model.parameters(), lr=o.learning_rate, eps=o.adam_eps, weight_decay=o.weight_decay,
            fused=self.device.type == "cuda")
        self.schedule = LRSchedule(o)
        self.loss_weights = LossWeights.from_config(config.loss)
        self.grad_clip: float = o.grad_clip_thresh
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.train.amp)
        if self.device.type != "cuda":
            self.amp_dtype = None  # AMP is a CUDA feature here; CPU runs stay in float32
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        t = config.train
        self.graphed_decoder = GraphedDecoder(
            self.model.decoder, t.cuda_graph_frame_bucket, t.cuda_graph_text_bucket, t.cuda_graph_max_shapes,
        ) if t.cuda_graphs and self.device.type == "cuda" and self.group is None else None  # DDP: eager

        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.skipped_steps = 0
        self.paused = False
        self.stop_reason: str | None = None
        self.applied_commands: OrderedDict[str, int] = OrderedDict()
        self.best_metric = math.inf
        self.last_eval: dict[str, float] = {}
        self.extras: dict[str, Any] = {}  # persisted state of callbacks (e.g. the MLflow run id)
        self._last_saved_step = -1
        self._stream: Iterator[Batch] | None = None
        self._started = time.time()

        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints", config.checkpoint.keep_last,
                                             config.checkpoint.keep_best)
        d = config.data
        self.collate = Collate(config.model.n_frames_per_step)
        self.train_set = TextMelDataset(d.training_files, d, config.audio, config.text, progress=True)
        val_set = TextMelDataset(d.validation_files, d, config.audio, config.text)
        # The data's speaking rate, saved with checkpoints: synth judges a result's length by it.
        self.frames_per_token = frames_per_token([(u.n_frames, len(u.text_ids)) for u in self.train_set.items])
        self.sampler = BucketBatchSampler(self.train_set.lengths, d.batch_size, d.bucket_batches, config.train.seed)
        speech = build_free_running(val_set, config.eval, config.text, config.audio, d,
                                    config.model.n_frames_per_step, d.batch_size, self.run_dir / "speech")
        self.evaluator = Evaluator(val_set, self.collate, d.batch_size, config.eval, config.model.gate_threshold,
                                   self.run_dir / "alignments", speech, config.eval.active_metrics())
        if warm_start is not None and resume:
            raise UserError("--warm-start and --resume exclude each other: resume continues a run, "
                            "warm start begins a new one from other weights")
        if not resume and self.checkpoints.list():
            newest = self.checkpoints.list()[-1]
            raise UserError(f"{self.checkpoints.directory} already holds checkpoints (newest: step {newest.step}); "
                            "add --resume to continue that run, or choose another run_dir for a new one")
        if warm_start is not None:
            self.warm_start(warm_start, ignore_layers)
        if resume:
            self.resume(None if resume is True else resume)
        if self.group is not None:
            # Each process its own dropout masks (a checkpoint restores rank 0's generator).
            torch.manual_seed(config.train.seed + 1_000_003 * self.group.rank + self.step)

    # -- the loop -----------------------------------------------------------------------
    def train(self) -> str:
        """Train until max_steps, max_minutes or a stop; returns the reason."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._notify("on_train_start", self)
        self._started = time.time()
        if self.step >= self.config.train.max_steps:
            self.request_stop("max_steps")
        while True:
            self.apply_commands()  # with several processes: also every rank learns rank 0's stop
            if self.stop_reason is not None:
                break
            if self.paused:
                time.sleep(PAUSE_POLL_SECONDS)
                continue
            record = self.train_step(self.next_batch())
            self.port.emit_step(record)
            self._notify("on_step", self, record)
            self.after_step()
        if self._last_saved_step != self.step and self.is_main:
            self.save_checkpoint("final")
        self._notify("on_train_end", self, self.stop_reason)
        self.port.close()
        distributed.barrier(self.group)
        return self.stop_reason

    @property
    def is_main(self) -> bool:
        """The process that evaluates, saves and reports (the only one without torchrun)."""
        return self.group is None or self.group.is_main

    def after_step(self) -> None:
        cfg = self.config
        if self.step % cfg.eval.every_steps == 0 and self.is_main:
            self.evaluate()
        if (self.step % cfg.checkpoint.every_steps == 0 and self._last_saved_step != self.step
                and self.is_main):
            self.save_checkpoint("periodic")
        if self.step >= cfg.train.max_steps:
            self.request_stop("max_steps")
        elif cfg.train.max_minutes and time.time() - self._started >= cfg.train.max_minutes * 60:
            self.request_stop("max_minutes")

    def train_step(self, batch: Batch) -> StepTelemetry:
        t0 = time.perf_counter()
        lr = self.schedule.lr(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        batch = batch.to(self.device)
        # BatchNorm running statistics change in the forward pass; keep a copy (a few
        # KB) so a non-finite batch cannot poison them either.
        buffers = [b.clone() for b in self.model.buffers()]
        with self.autocast():
            out = (self.ddp or self.model)(batch.text, batch.text_lengths, batch.mel, decoder=self.graphed_decoder)
        parts = tacotron2_loss(out, batch.mel, batch.gate, batch.mel_lengths, batch.text_lengths,
                               self.model.n_frames_per_step, self.loss_weights)
        self.optimizer.zero_grad(set_to_none=True)
        grad_norm = torch.tensor(float("nan"))
        # Every process must take the same branch (DDP's backward is collective): a
        # non-finite loss on any of them skips the step on all.
        finite = bool(torch.isfinite(distributed.mean_over_ranks(parts.total.detach(), self.group)))
        backward_done = finite
        overflow = False
        if finite:
            self._backward(parts.total)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            finite = bool(torch.isfinite(grad_norm))
            # fp16: inf gradients are how GradScaler probes its scale; scaler.step() skips
            # them itself. That is routine, not a sick run, so it is not counted as skipped.
            overflow = self.scaler is not None and not finite
        if finite:
            (self.scaler.step(self.optimizer) if self.scaler else self.optimizer.step())
        elif overflow:
            self.scaler.step(self.optimizer)
            finite = True
        else:
            # Never let a non-finite loss or gradient touch the weights.
            self.optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                for live, saved in zip(self.model.buffers(), buffers):
                    live.copy_(saved)
            self.skipped_steps += 1
        if self.scaler and backward_done:
            # A non-finite loss never reached the scaler (no backward): nothing to update.
            self.scaler.update()
        self.step += 1
        values = distributed.mean_over_ranks(torch.stack([  # the global batch's losses
            parts.total.detach(), parts.mel.detach(), parts.mel_postnet.detach(), parts.gate.detach(),
            parts.guided_attention.detach(), grad_norm.detach().float().to(parts.total.device)]), self.group).tolist()
        return StepTelemetry(
            step=self.step, epoch=self.epoch, wall_time=time.time(), lr=lr, loss=values[0], mel_loss=values[1],
            mel_postnet_loss=values[2], gate_loss=values[3], guided_attention_loss=values[4], grad_norm=values[5],
            grad_clip=self.grad_clip, guided_attention_weight=self.loss_weights.guided_attention_weight,
            gate_pos_weight=self.loss_weights.gate_pos_weight, step_seconds=time.perf_counter() - t0,
            skipped_steps=self.skipped_steps, finite=finite, loss_scale_overflow=overflow,
        )

    def _backward(self, loss: torch.Tensor) -> None:
        if self.scaler:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        # CUDA graphs capture under autocast only with its weight-cast cache off (the decoder
        # casts its LSTM weights once per pass itself, see CastLSTMCell).
        return torch.autocast(self.device.type, dtype=self.amp_dtype, cache_enabled=self.graphed_decoder is None)

    # -- data position ------------------------------------------------------------------
    def next_batch(self) -> Batch:
        if self._stream is None:
            self._stream = self._batches()
        return next(self._stream)

    def _batches(self) -> Iterator[Batch]:
        """Batches from the current (epoch, batch_in_epoch) on; the position counts consumed batches."""
        workers = self.config.data.num_workers
        while True:
            # Under torchrun each process takes its slice of every global batch.
            remaining = [distributed.shard(b, self.group)
                         for b in self.sampler.epoch_batches(self.epoch)[self.batch_in_epoch:]]
            loader = DataLoader(self.train_set, batch_sampler=remaining, collate_fn=self.collate,
                                num_workers=workers, pin_memory=self.device.type == "cuda",
                                # Its own generator: creating a loader must not draw from the
                                # global RNG, or a resumed run's dropout masks would shift.
                                generator=torch.Generator().manual_seed(self.config.train.seed + self.epoch),
                                persistent_workers=False)
            for batch in loader:
                self.batch_in_epoch += 1
                yield batch
            self.epoch += 1
            self.batch_in_epoch = 0

    def skip_batches(self, n: int) -> None:
        """Advance the data position by n batches without training on them."""
        self._stream = None  # restart the loader at the new position
        self._roll_over_finished_epoch()
        for _ in range(n):
            self.batch_in_epoch += 1
            self._roll_over_finished_epoch()

    def _roll_over_finished_epoch(self) -> None:
        # (epoch, len(epoch)) means "epoch finished"; make it (epoch + 1, 0).
        while self.batch_in_epoch >= len(self.sampler.epoch_batches(self.epoch)):
            self.epoch += 1
            self.batch_in_epoch = 0

    # -- commands, evaluation, checkpoints ------------------------------------------
    def apply_commands(self) -> None:
        commands = self.port.poll() if self.is_main else []
        if self.group is not None:
            # Rank 0 read the port: every process applies its commands before the same step,
            # stops when it stops (a time limit or a signal seen by rank 0 first) and is
            # paused when it is (a supervised run can start paused).
            commands, self.stop_reason, self.paused = distributed.broadcast_from_main(
                (list(commands), self.stop_reason, self.paused), self.group)
        for command in commands:
            result = apply_command(self, command)
            while len(self.applied_commands) > APPLIED_COMMANDS_KEPT:
                self.applied_commands.popitem(last=False)
            if self.is_main:
                self.port.acknowledge(result)

    def request_stop(self, reason: str) -> None:
        """End the run after the current step, with a final checkpoint; the first reason given wins."""
        if self.stop_reason is None:
            self.stop_reason = reason

    @property
    def current_lr(self) -> float:
        return self.schedule.lr(self.step)

    def set_lr(self, lr: float) -> None:
        self.schedule.set_current(self.step, lr)

    @property
    def dropouts(self) -> dict[str, float]:
        """The model's dropout probabilities as they are now (commands may have changed them)."""
        return {name: TUNABLES[name].get(self) for name in DROPOUTS}

    def evaluate(self):
        """Evaluate now: emit the ``EvalRecord`` to the port and the callbacks, save
        ``best.pt`` when ``checkpoint.best_metric`` improved, and return it."""
        record = self.evaluator.run(self.model, self.loss_weights, self.step, self.device, self.autocast)
        self.last_eval = record.model_dump(exclude={"alignment_image"})
        self.port.emit_eval(record)
        self._notify("on_eval", self, record)
        metric = checkpoint_metric(record, self.config.checkpoint.best_metric)
        if metric is not None and math.isfinite(metric):
            # best_metric is stored as "lower is better"; higher-is-better metrics are negated.
            score = metric if self.config.checkpoint.lower_is_better else -metric
            if score < self.best_metric:
                self.best_metric = score
                self.save_checkpoint("best", best=True)
        return record

    def checkpoint_payload(self) -> dict[str, Any]:
        return {
            "iteration": self.step,
            "state_dict": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "learning_rate": self.current_lr,
            "smart_tuner": {
                "version": 1,
                "config": mask_urls(self.config.model_dump(mode="json")),  # checkpoints get handed around
                "n_symbols": self.model.embedding.num_embeddings,
                "schedule": self.schedule.state_dict(),
                "loss_weights": self.loss_weights.state_dict(),
                "grad_clip": self.grad_clip,
                "dropouts": self.dropouts,
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "rng": rng_state(),
                "data_position": {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch},
                "skipped_steps": self.skipped_steps,
                "applied_commands": list(self.applied_commands.items()),
                "best_metric": self.best_metric,
                "best_metric_name": self.config.checkpoint.best_metric,
                "metrics": self.last_eval,
                "frames_per_token": self.frames_per_token,
                "extras": self.extras,
                "saved_at": time.time(),
            },
        }

    def save_checkpoint(self, reason: str, best: bool = False) -> Path:
        """Save the whole training state (weights, optimizer, schedule, loss weights, data
        position, RNG) at this step, report it as a ``CheckpointRecord`` and return its path."""
        if not self.is_main:  # one writer: rank 0 (a save command reaches every rank)
            return self.checkpoints.directory
        finite = all(bool(torch.isfinite(p).all()) for p in self.model.parameters())
        path = self.checkpoints.save(self.checkpoint_payload(), self.step, best=best)
        self._last_saved_step = self.step
        record = CheckpointRecord(step=self.step, path=str(path), wall_time=time.time(), reason=reason,
                                  val_loss=self.last_eval.get("val_loss"),
                                  diagonality=self.last_eval.get("diagonality"), finite=finite)
        self.port.emit_checkpoint(record)
        self._notify("on_checkpoint", self, record)
        return path

    def load_training_state(self, ckpt: dict[str, Any], path: Path, restore_position: bool = True,
                            config_changes: bool = True) -> None:
        self._load_weights(ckpt["state_dict"], path)
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{path}: optimizer state does not fit this model ({exc}); "
                                  "use --warm-start to start a new optimizer") from None
        self.step = int(ckpt.get("iteration", 0))
        ours = ckpt.get("smart_tuner")
        if ours is None:  # an NVIDIA checkpoint: weights, optimizer, step and learning rate only
            self.schedule.set_current(self.step, float(ckpt.get("learning_rate", self.current_lr)))
            return
        self.schedule.load_state_dict(ours["schedule"])
        self.loss_weights.load_state_dict(ours["loss_weights"])
        self.grad_clip = ours["grad_clip"]
        for name, value in (ours.get("dropouts") or {}).items():  # older checkpoints: the config's dropouts
            if name in DROPOUTS:
                TUNABLES[name].set(self, float(value))
        if self.scaler and ours.get("scaler"):
            self.scaler.load_state_dict(ours["scaler"])
        # A best value measured by another metric (the config changed, or a checkpoint from
        # before best.pt followed speech) is on another scale: start the comparison afresh.
        same = ours.get("best_metric_name", "val_loss") == self.config.checkpoint.best_metric
        self.best_metric = ours["best_metric"] if same else math.inf
        self.last_eval = ours["metrics"]
        if restore_position:  # resume (not rollback): the run's own counters and place
            if config_changes:
                self.apply_config_changes(ours["config"], path)
            self.skipped_steps = ours["skipped_steps"]
            self.epoch = ours["data_position"]["epoch"]
            self.batch_in_epoch = ours["data_position"]["batch_in_epoch"]
            self.applied_commands = OrderedDict(ours["applied_commands"])
            self.extras = ours.get("extras", {})
            set_rng_state(ours["rng"])
        self._stream = None

    def apply_config_changes(self, saved: dict[str, Any], path: Path) -> None:
        """On resume, values the user changed in the config since the save win.

        Unchanged values come from the checkpoint (which may hold a supervisor's later
        adjustments); a changed one means the user wants the new value now, set as a
        live command would set it.
        """
        changed = tunables.changed_since(saved, self.config)
        tunables.apply(self, changed)
        if changed:
            now = ", ".join(f"{TUNABLES[name].config_key}={value}" for name, value in changed.items())
            print(f"resume: config changed since {path.name}; now using {now}", flush=True)

    def _load_weights(self, state_dict: dict[str, torch.Tensor], path: Path, ignore: Sequence[str] = ()) -> None:
        own = self.model.state_dict()
        state = {k: v for k, v in state_dict.items() if not any(k == i or k.startswith(i + ".") for i in ignore)}
        mismatched = [f"{k} {tuple(v.shape)} vs ours {tuple(own[k].shape)}"
                      for k, v in state.items() if k in own and v.shape != own[k].shape]
        missing = [k for k in own if k not in state and not any(k == i or k.startswith(i + ".") for i in ignore)]
        unexpected = [k for k in state if k not in own]
        if mismatched or missing or unexpected:
            detail = "; ".join(filter(None, [
                f"shape mismatch: {', '.join(mismatched[:4])}" if mismatched else "",
                f"missing: {', '.join(missing[:4])}" if missing else "",
                f"unexpected: {', '.join(unexpected[:4])}" if unexpected else "",
            ]))
            raise CheckpointError(f"{path}: weights do not fit the configured model ({detail}); check the model "
                                  "section of the config, or warm-start with --ignore-layers for those layers")
        self.model.load_state_dict(state, strict=not ignore)

    def resume(self, path: str | Path | None = None) -> None:
        if path is not None:
            self.load_training_state(load_checkpoint(path), Path(path))
            print(f"resumed from {path} at step {self.step}", flush=True)
            return
        found = self.checkpoints.load_latest_good()
        if found is None:
            print(f"no checkpoint in {self.checkpoints.directory}; starting from scratch", flush=True)
            return
        self.load_training_state(found[1], found[0])
        print(f"resumed from {found[0]} at step {self.step}", flush=True)

    def continue_from(self, path: str | Path) -> str:
        """Carry on from another branch's checkpoint (a tuning trial's winner) as if this
        run had trained those steps itself: weights, optimizer, step, schedule, loss
        weights, clip, dropouts, data position and RNG come from it; this run's applied
        command ids and callback state (its MLflow run) stay. Saved at once in this run's
        own checkpoint folder, so a crash right after does not lose the adopted steps."""
        path = Path(path)
        ckpt = load_checkpoint(path)
        applied, extras = self.applied_commands, self.extras
        # config_changes=False: the branch's config differs from ours on purpose (its
        # hyperparameters); its live values are what we adopt.
        self.load_training_state(ckpt, path, restore_position=True, config_changes=False)
        self.applied_commands, self.extras = applied, extras
        saved = self.save_checkpoint("adopted")
        return f"continued from {path} at step {self.step}; saved {saved.name}"

    def warm_start(self, path: str | Path, ignore_layers: Sequence[str]) -> None:
        """Weights only (as NVIDIA's --warm_start): new optimizer, step 0."""
        ckpt = load_checkpoint(path)
        self._load_weights(ckpt["state_dict"], Path(path), ignore_layers)
        print(f"warm start from {path} (ignored: {', '.join(ignore_layers) or 'nothing'})", flush=True)

    def rollback(self, step: int | None, skip_batches: int) -> str:
        """Restore the model from a checkpoint; keep going forward in the data."""
        if step is None:
            found = self.checkpoints.load_latest_good()
        else:
            path = self.checkpoints.path_for(step)
            found = (path, load_checkpoint(path))
        if found is None:
            raise CheckpointError(f"no good checkpoint in {self.checkpoints.directory} to roll back to")
        path, ckpt = found
        moved = self.checkpoints.set_aside_after(int(ckpt.get("iteration", 0)))
        # Going back in weights but not in data (restore_position=False): the batches
        # that led to trouble are not replayed.
        self.load_training_state(ckpt, path, restore_position=False)
        self.skip_batches(skip_batches)
        aside = f"; {moved} later checkpoint(s) moved to {self.checkpoints.abandoned_dir.name}/" if moved else ""
        return f"rolled back to {path.name} (step {self.step}), skipped {skip_batches} batches{aside}"

    # -- reporting ------------------------------------------------------------------------
    def describe(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        return (f"{n / 1e6:.2f}M parameters on {self.device}, r={self.model.n_frames_per_step}, "
                f"{len(self.train_set)} train clips, batch {self.config.data.batch_size}, step {self.step}, "
                f"run dir {self.run_dir}")

    def eta_seconds(self, steps_per_second: float) -> float:
        by_steps = (self.config.train.max_steps - self.step) / steps_per_second if steps_per_second > 0 else math.inf
        if self.config.train.max_minutes:
            by_time = self.config.train.max_minutes * 60 - (time.time() - self._started)
            return min(by_steps, by_time)
        return by_steps

    def _notify(self, event: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(*args)
