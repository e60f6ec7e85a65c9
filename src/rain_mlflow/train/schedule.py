"""Learning rate per optimisation step; a pure function, so resuming needs only the step counters."""

from __future__ import annotations

import math

COSINE_FLOOR = 1e-8  # eta_min of the official CosineAnnealingLR


def lr_at(base_lr: float, schedule: str, epoch: int, total_epochs: int, step: int, steps_per_epoch: int,
          warmup_epochs: int) -> float:
    """LR for optimisation `step` (0-based) of `epoch` (0-based).

    cosine: annealed once per epoch from base_lr to 1e-8 over `total_epochs` (the official per-epoch schedule),
    then held at 1e-8 (a resumed run that runs past its original horizon stays at the floor); type1: base_lr * 0.1 ** epoch (the official `type1`: 1e-4, 1e-5, 1e-6, ...); none: constant.
    A linear warmup over the first `warmup_epochs` epochs (per step) multiplies any of them.
    """
    if schedule == "cosine":
        progress = min(epoch, total_epochs) / total_epochs
        lr = COSINE_FLOOR + (base_lr - COSINE_FLOOR) * (1 + math.cos(math.pi * progress)) / 2
    elif schedule == "type1":
        lr = base_lr * 0.1 ** epoch
    else:
        lr = base_lr
    warmup_steps = warmup_epochs * steps_per_epoch
    done = epoch * steps_per_epoch + step
    if done < warmup_steps:
        lr *= (done + 1) / warmup_steps
    return lr
