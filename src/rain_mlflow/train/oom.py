"""Out of memory during training: one `error:` that says how much was needed, what the dry run expects, and
what to change. The run ends FAILED with the same sentence as `failure_reason`.

Measured need: on CUDA, the peak PyTorch held in this epoch (`torch.cuda.max_memory_allocated`, the counter
`vram_peak_gb` reports) plus the allocation that failed (from PyTorch's message). On CPU only the failed request is
known. The estimate is the dry run's memory model (`estimate.memory`), with the activations probed on the CPU so
the estimate itself needs no GPU memory.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from rain_mlflow.errors import UserError
from rain_mlflow.model.factory import build_classifier
from rain_mlflow.train.estimate import memory
from rain_mlflow.train.precision import Precision

UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
CPU_ALLOCATOR = "can't allocate memory"


class OutOfMemory(UserError):
    """The configuration does not fit the device's memory."""


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and CPU_ALLOCATOR in str(exc))


def requested_gib(message: str) -> float | None:
    """The failed allocation, from PyTorch's message ("Tried to allocate 2.00 GiB" / "allocate 123 bytes")."""
    found = re.search(r"Tried to allocate ([\d.]+) ([KMGT]?i?B)", message)
    if found:
        return float(found.group(1)) * UNITS.get(found.group(2), 1) / 2**30
    found = re.search(r"allocate (\d+) bytes", message)
    return int(found.group(1)) / 2**30 if found else None


def estimate_gib(cfg: Any, data: Any, dtype: torch.dtype | None) -> float | None:
    """The dry run's memory estimate for this config, probed on the CPU; None if even that fails."""
    try:
        model = build_classifier(cfg, data.n_vars)
        cpu = Precision(torch.device("cpu"), dtype)
        return memory(model, data, cfg.train.batch_size, cpu, cfg.train.accumulate_steps).peak_gb
    except Exception:  # noqa: BLE001 - the error message is what matters here
        return None


def out_of_memory(exc: BaseException, cfg: Any, data: Any, device: torch.device, dtype: torch.dtype | None,
                  epoch: int | None) -> OutOfMemory:
    message = str(exc)
    requested = requested_gib(message)
    parts = []
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        need = f"{peak + (requested or 0):.2f} GiB or more" if requested else f"more than {peak:.2f} GiB"
        parts.append(f"training needed {need} on {device} (peak {peak:.2f} GiB in use"
                     f"{f' plus {requested:.2f} GiB requested' if requested else ''}; the GPU has {total:.2f} GiB)")
    else:
        parts.append(f"training asked the {device} allocator for {requested:.2f} GiB more and was refused"
                     if requested else f"training ran out of memory on {device}")
    estimate = estimate_gib(cfg, data, dtype)
    if estimate is not None:
        parts.append(f"the dry-run estimate for batch {cfg.train.batch_size} is {estimate:.2f} GiB")
    smaller = max(cfg.train.batch_size // 2, 1)
    remedies = (f"use a smaller --batch-size (e.g. {smaller}), with --accumulate-steps "
                f"{max(cfg.train.batch_size // smaller, 2)} to keep the effective batch; --checkpoint-activations; "
                f"or a shorter --seq-len (now {cfg.data.seq_len}); `rain-mlflow train ... --dry-run` checks a "
                "setting before training")
    where = f" at epoch {epoch}" if epoch else ""
    return OutOfMemory(f"out of memory{where}: {'; '.join(parts)}; {remedies}")
