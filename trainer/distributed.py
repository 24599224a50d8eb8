"""Data-parallel training over several processes: PyTorch's ``torchrun`` starts them,
``DistributedDataParallel`` averages the gradients (NCCL on GPUs, gloo on CPU).

What this module adds to the single-process trainer, and why:

* **Launch.** ``train.nproc_per_node`` > 1 makes ``smart-tuner train`` (and the daemon's
  trainer child) run itself under ``python -m torch.distributed.run`` with the same
  arguments (:func:`torchrun_argv`); inside, ``torchrun``'s environment (``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...) says which process this is.
* **One global batch.** Every rank draws the same global batches in the same order (the
  sampler is seeded and does not know about ranks) and trains on its slice of each
  (:func:`shard`): ``data.batch_size`` stays the effective batch whatever the number of
  processes, and the data position saved in a checkpoint means the same thing on 1 or N
  processes, so a run resumes on another number of processes.
* **Rank 0 decides.** It alone reads the control port, evaluates, writes checkpoints and
  reports telemetry; each step it sends the commands it read and its stop decision to
  every rank (:func:`broadcast_from_main`), so all ranks apply them before the same step.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions: the daemon builds torchrun's command line from
# this module and does not import torch.


@dataclass(frozen=True)
class Group:
    rank: int
    world: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ)


def join(device_type: str, timeout_seconds: float) -> Group | None:
    """Join the process group torchrun set up (None when this is a single process)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not under_torchrun():  # (a 1-process torchrun run keeps DDP: its overhead can be measured)
        return None
    die_with_parent()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo",
                                timeout=timedelta(seconds=timeout_seconds))
    return Group(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def die_with_parent() -> None:
    """SIGKILL this process when torchrun, its parent, dies.

    torchrun starts each worker in a session of its own, so a SIGKILL to torchrun (the
    daemon's hang watchdog, ``kill -9``) would leave the workers training on, orphaned,
    beside the group the daemon starts next. Linux's parent-death signal prevents that.
    """
    import ctypes
    import signal

    if "TORCHELASTIC_RUN_ID" not in os.environ:  # another launcher (srun, mpirun): its own rules
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: torchrun's own SIGTERM handling is all there is
        return
    # Armed now; if torchrun died before that, this process was already handed to init.
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as fh:
            parent = fh.read()
    except OSError:
        return
    if b"torch.distributed.run" not in parent and b"torchrun" not in parent:
        os.kill(os.getpid(), signal.SIGKILL)


def barrier(group: Group | None) -> None:
    """Wait for every rank (the end of a run: no process tears the group down while another
    still uses it; gloo has aborted a process that did)."""
    if group is None:
        return
    import torch.distributed as dist

    dist.barrier()


def leave() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(batch: list[int], group: Group | None) -> list[int]:
    """This rank's part of a global batch (every rank gets batch_size / world items)."""
    return batch if group is None else batch[group.rank::group.world]


def broadcast_from_main(value: Any, group: Group | None) -> Any:
    """Rank 0's ``value`` on every rank (picklable objects; a few hundred bytes a step)."""
    if group is None:
        return value
    import torch.distributed as dist

    box = [value if group.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_over_ranks(values: "torch.Tensor", group: Group | None) -> "torch.Tensor":
    """The mean of a tensor over all ranks (telemetry of the global batch)."""
    if group is None:  # every step of a single-process run: nothing to do
        return values
    import torch.distributed as dist

    out = values.detach().clone()
    dist.all_reduce(out)
    return out / group.world


def torchrun_argv(nproc_per_node: int, nnodes: str, node_rank: int | None, rdzv_endpoint: str | None,
                  module: str, args: list[str]) -> list[str]:
    """``python -m torch.distributed.run ... -m MODULE ARGS``: this module again, N times."""
    argv = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}",
            f"--nnodes={nnodes}"]
    if rdzv_endpoint:
        # Several machines: each runs the same command; they meet at the endpoint.
        argv += ["--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}"]
        if node_rank is not None:
            argv.append(f"--node-rank={node_rank}")
    else:
        argv.append("--standalone")  # one machine: a free local port, no rendezvous server
    return argv + ["-m", module, *args]
