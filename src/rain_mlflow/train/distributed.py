"""Several processes training one model (`torchrun --nproc-per-node N`, or `train --devices N`): who am I, and
the few collective steps the loop needs. PyTorch's own DistributedDataParallel averages the gradients.

- One process per device; `torchrun` sets RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE. Backend nccl on CUDA
  (rank r uses cuda:LOCAL_RANK), gloo on CPU (each rank gets its share of the cores, so N ranks do not fight over
  them).
- `batch_size` stays the global batch: every optimiser step uses the same windows as a single process would,
  each rank taking every N-th of them, so N processes follow the single-process run (up to float rounding).
- Only rank 0 talks to MLflow and writes checkpoints; the others learn its decisions through `broadcast`.
- Without torchrun everything here is a no-op: `World()` is one process of rank 0.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


_world = World()


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets the same variables)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device_name: str) -> World:
    """Join the process group when launched by torchrun (once); return this process's place in it."""
    global _world
    if not launched() or dist.is_initialized():
        return _world
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    cuda = torch.cuda.is_available() and device_name != "cpu"
    if cuda:
        torch.cuda.set_device(local_rank)
    else:  # the cores of this machine shared between its ranks
        local_size = int(os.environ.get("LOCAL_WORLD_SIZE", size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_size))
    dist.init_process_group("nccl" if cuda else "gloo")
    _world = World(rank, size, local_rank)
    _exit_with_launcher()
    return _world


def world() -> World:
    return _world


def device_for(device_name: str) -> str:
    """The device of this rank: cuda:LOCAL_RANK when the run uses CUDA, else what was asked."""
    if _world.distributed and device_name in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{_world.local_rank}"
    return device_name


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def sum_(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over ranks (float64)."""
    if not _world.distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (a stop decision, a resumed checkpoint)."""
    if not _world.distributed:
        return obj
    box = [obj if _world.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard(n: int) -> slice:
    """This rank's contiguous part of n evaluation windows (each window scored by exactly one rank)."""
    per = -(-n // _world.size)
    return slice(min(n, _world.rank * per), min(n, (_world.rank + 1) * per))


def launch(processes: int, args: list[str]) -> int:
    """`torchrun --standalone --nproc-per-node N -m rain_mlflow ARGS` (a free rendezvous port; it dies with this
    process); its exit code. Ctrl-C / SIGTERM are passed on, so the run still ends KILLED."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
               "-m", "rain_mlflow", *args]
    process = subprocess.Popen(command, preexec_fn=_die_with_parent)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGTERM)
        process.wait()
        raise


def without_option(args: list[str], name: str) -> list[str]:
    """`args` without `name VALUE` / `name=VALUE`."""
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            kept.append(arg)
    return kept


def _die_with_parent() -> None:
    """Linux: the kernel kills the launched torchrun when this process dies (even by SIGKILL)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _exit_with_launcher() -> None:
    """A rank whose launcher died (SIGKILL: no chance to stop its children) stops too, instead of training on
    (or waiting forever on the others) with nobody to report to."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                sys.stderr.write(f"rank {_world.rank}: the launcher is gone; stopping\n")
                os._exit(137)

    threading.Thread(target=watch, daemon=True, name="rain-mlflow-launcher-watch").start()
