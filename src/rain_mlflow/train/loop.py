"""The training loop: one readable `fit` plus small helpers.

Per epoch, in this order: (1) set LR per optimiser step and train on shuffled windows gathered on the device,
adding the gradients of `accumulate_steps` batches before each step, (2) evaluate validation and test, (3) early
stopping and checkpoints (best.pt when improved, last.pt always, both logged before the epoch's metrics, so a
resumed run can always re-log what a kill interrupted and never logs an epoch twice), (4) the epoch's metrics and
confusion matrices, (5) the live diagnosis, which may stop the run.

The host never waits for the GPU inside the step loop: the loss sum and a marker of the first NaN / inf loss stay
on the device (`LossWatch`) and are read every `check_loss_every` optimiser steps and at the end of the epoch. A
non-finite loss still stops the run, naming the epoch, the step and the steps that check covered.

Under torchrun (`distributed.py`) the same loop runs in every process: the model is wrapped in PyTorch's
DistributedDataParallel, each optimiser step's windows are split between the ranks (every window used once per
epoch), the evaluation windows too (each scored once), and the sums and confusion matrices are added up across
ranks, so every rank sees the same metrics. Rank 0 alone writes checkpoints and tracks; its stop decision is
broadcast so every rank stops together.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from rain_mlflow.config import RunConfig
from rain_mlflow.data.batches import Batches
from rain_mlflow.data.dataset import PreparedData
from rain_mlflow.errors import UserError
from rain_mlflow.model.transfer import set_backbone_frozen
from rain_mlflow.train import distributed
from rain_mlflow.model.checkpoint import LAST_FORMAT, model_payload, save as save_checkpoint
from rain_mlflow.train.losses import build_loss
from rain_mlflow.train.metrics import confusion, split_metrics
from rain_mlflow.train.precision import Precision
from rain_mlflow.train.schedule import lr_at

log = logging.getLogger(__name__)
MODE = {"val_loss": "min", "val_f1": "max", "val_accuracy": "max", "val_mcc": "max"}


class NonFiniteLoss(UserError):
    """A training, validation or test loss became NaN or infinite: training cannot continue meaningfully."""

    def __init__(self, message: str, epoch: int, metrics: dict[str, float] | None = None):
        super().__init__(message)
        self.epoch = epoch
        self.metrics = metrics or {"train_loss": math.nan}  # what is known of the epoch, for the record


@dataclass
class TrainState:
    """What changes during training and must survive a resume (saved in last.pt)."""

    epoch: int = 0                                  # last completed epoch (1-based)
    best_epoch: int = 0
    best_value: float | None = None
    bad_epochs: int = 0                             # epochs since the last improvement
    history: dict[int, dict[str, float]] = field(default_factory=dict)
    confusions: dict[int, dict[str, list]] = field(default_factory=dict)

    def improved(self, value: float, mode: str) -> bool:
        if not math.isfinite(value):
            return False
        if self.best_value is None or (value < self.best_value if mode == "min" else value > self.best_value):
            return True
        return False

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "best_epoch": self.best_epoch, "best_value": self.best_value,
                "bad_epochs": self.bad_epochs, "history": self.history, "confusions": self.confusions}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        return cls(epoch=d["epoch"], best_epoch=d["best_epoch"], best_value=d["best_value"],
                   bad_epochs=d["bad_epochs"], history={int(k): v for k, v in d["history"].items()},
                   confusions={int(k): v for k, v in d["confusions"].items()})


@dataclass
class FitResult:
    state: TrainState
    stopped_by: str | None          # the diagnosis flag that ended the run early, if any
    early_stopped: bool
    time_saved_s: float             # remaining epochs x mean epoch time, when a rule stopped the run


def fit(cfg: RunConfig, data: PreparedData, model: nn.Module, precision: Precision, workdir: Path,
        on_epoch: Callable[[int, dict, TrainState, dict], str | None], resume: dict[str, Any] | None = None,
        run_id: str | None = None) -> FitResult:
    """Train `model`; `on_epoch(epoch, metrics, state, files)` tracks the epoch and may return a flag to stop."""
    t, device = cfg.train, precision.device
    batches = Batches(data, device)
    train_split = data.splits["train"]
    criterion = build_loss(t.loss, t.focal_gamma, train_split.no_rain, train_split.rain).to(device)
    optimizer = build_optimizer(model, t.learning_rate, t.weight_decay, device)
    scaler = precision.grad_scaler()
    world = distributed.world()
    net = parallel(model, device)
    net = compile_or_eager(net, batches, precision) if t.compile else net  # `model` keeps the state dict
    order = torch.Generator().manual_seed(t.seed)  # batch order; its state travels in last.pt
    state = TrainState()
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scaler.load_state_dict(resume["grad_scaler"])
        state = TrainState.from_dict(resume["train_state"])
        _set_rng(resume["rng"], order)
    mode = MODE[t.early_stop_metric]
    pretrained = cfg.model.pretrain_model_path is not None
    stopped_by, early_stopped = None, False

    for epoch in range(state.epoch + 1, t.train_epochs + 1):
        if pretrained and cfg.model.freeze_epochs:
            set_backbone_frozen(model, frozen=epoch <= cfg.model.freeze_epochs)
            if world.distributed and epoch == cfg.model.freeze_epochs + 1:  # DDP syncs what trained when built
                net = parallel(model, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()

        # 1. train
        train_loss, lr, train_seconds = train_one_epoch(cfg, net, batches, criterion, optimizer, scaler,
                                                        precision, order, epoch)
        # 2. evaluate
        scorer = model if world.distributed else net  # each rank scores its own windows: no gradient sync
        val, val_cm = evaluate(scorer, batches, "val", criterion, precision, 2 * t.batch_size)
        test, test_cm = evaluate(scorer, batches, "test", criterion, precision, 2 * t.batch_size)
        metrics = {"train_loss": train_loss, **val, **test, "lr": lr,
                   "epoch_time_s": time.perf_counter() - started,
                   "samples_per_s": train_split.size / max(train_seconds, 1e-9)}
        check_evaluation_losses(metrics, epoch, t.learning_rate)
        if device.type == "cuda":
            metrics["vram_peak_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
            metrics["vram_reserved_gb"] = torch.cuda.memory_reserved(device) / 2**30
        state.epoch = epoch
        state.history[epoch] = metrics
        state.confusions[epoch] = {"val": val_cm, "test": test_cm}

        # 3. early stopping and checkpoints (before the metrics are logged: see the module docstring)
        files = {}
        value = metrics[t.early_stop_metric]
        if state.improved(value, mode):
            state.best_value, state.best_epoch, state.bad_epochs = value, epoch, 0
            files["best"] = workdir / "best.pt"
            if world.main:
                save_checkpoint(_model_payload(cfg, model, data, epoch, metrics, run_id), files["best"])
        else:
            state.bad_epochs += 1
        files["last"] = workdir / "last.pt"
        if world.main:
            save_checkpoint(_last_payload(cfg, model, data, optimizer, scaler, order, state, run_id),
                            files["last"])

        # 4 and 5. track, diagnose live; the callback returns a flag when a stop rule fired (rank 0 decides)
        stopped_by = distributed.broadcast(on_epoch(epoch, metrics, state, files) if world.main else None)
        if stopped_by:
            break
        if state.bad_epochs >= t.patience:
            early_stopped = True
            break

    mean_epoch = float(np.mean([h["epoch_time_s"] for h in state.history.values()])) if state.history else 0.0
    saved = (t.train_epochs - state.epoch) * mean_epoch if stopped_by else 0.0
    return FitResult(state=state, stopped_by=stopped_by, early_stopped=early_stopped, time_saved_s=saved)


def train_one_epoch(cfg: RunConfig, model: nn.Module, batches: Batches, criterion: nn.Module,
                    optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, precision: Precision,
                    order: torch.Generator, epoch: int) -> tuple[float, float, float]:
    """One pass over the shuffled training windows; returns (mean loss, last LR, seconds)."""
    t = cfg.train
    model.train()
    device = batches.series.device
    n = len(batches.ends["train"])
    permutation = torch.randperm(n, generator=order).to(device)
    per_step = t.batch_size * t.accumulate_steps  # windows per optimiser step (the effective batch)
    steps = math.ceil(n / per_step)
    world = distributed.world()
    chunk = math.ceil(t.batch_size / world.size)  # windows per forward pass on this rank
    watch = LossWatch(device)
    total, checked, lr = 0.0, 0, t.learning_rate
    started = time.perf_counter()
    bar = tqdm(range(steps), desc=f"epoch {epoch}/{t.train_epochs}", leave=False, unit="step",
               disable=not sys.stderr.isatty(), file=sys.stderr)
    for step in bar:
        lr = lr_at(t.learning_rate, t.lradj, epoch - 1, t.schedule_span, step, steps, t.warmup_epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        first, last = step * per_step, min((step + 1) * per_step, n)
        optimizer.zero_grad(set_to_none=True)
        for index, weight, final in step_passes(permutation[first:last], chunk, world):
            x, y = batches.get("train", index)
            with no_sync(model, final):
                with precision.autocast():
                    loss = criterion(model(x), y)
                # Weighted by its share of the step's windows, so the step's gradient is the mean over all of them.
                scaler.scale(loss * weight).backward()
            if weight:
                watch.add(loss, len(index), step)
        if t.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        if (step + 1) % t.check_loss_every == 0 or step + 1 == steps:  # the only host syncs of the loop
            total = watch.check(epoch, checked, step + 1, steps, t.learning_rate)  # summed over the ranks
            checked = step + 1
            if not bar.disable:
                bar.set_postfix(loss=f"{total / last:.4f}", lr=f"{lr:.2e}")
    if device.type == "cuda":
        torch.cuda.synchronize()
    return total / n, lr, time.perf_counter() - started


class LossWatch:
    """The epoch's loss sum and its first non-finite loss, kept on the device so that steps never wait for it."""

    def __init__(self, device: torch.device):
        self.total = torch.zeros((), device=device)
        self.first_bad = torch.full((), -1.0, device=device)   # 0-based step of the first NaN / inf loss, or -1
        self.bad_value = torch.zeros((), device=device)

    def add(self, loss: Tensor, windows: int, step: int) -> None:
        loss = loss.detach().float()
        self.total += loss * windows
        fresh = ~torch.isfinite(loss) & (self.first_bad < 0)
        self.first_bad = torch.where(fresh, float(step), self.first_bad)
        self.bad_value = torch.where(fresh, loss, self.bad_value)

    def check(self, epoch: int, checked: int, done: int, steps: int, learning_rate: float) -> float:
        """Read the device state (one host sync); raise NonFiniteLoss if a loss in steps checked+1..done was bad."""
        total, first_bad, value = torch.stack([self.total, self.first_bad, self.bad_value]).tolist()
        if distributed.world().distributed:  # every rank stops at the same check when any rank saw a bad loss
            total, bad_ranks = distributed.sum_([total, float(first_bad >= 0)], self.total.device)
            first_bad = max(first_bad, 0.0) if bad_ranks else -1.0
        if first_bad >= 0:
            raise NonFiniteLoss(
                f"training stopped: the loss became {value} at epoch {epoch}, step {int(first_bad) + 1}/{steps} "
                f"(found by the check over steps {checked + 1}-{done}; learning_rate {learning_rate:g}); lower "
                "learning_rate, check the data, or use amp=off", epoch)
        return total


def build_optimizer(model: nn.Module, learning_rate: float, weight_decay: float,
                    device: torch.device) -> torch.optim.AdamW:
    """AdamW, fused where torch has the kernel: on CUDA one kernel for all parameters and a GradScaler's inf check
    without a host sync; on CPU one vectorised pass instead of a dozen tensor ops per parameter (the update of
    `small` takes a quarter of the time: bench/README.md)."""
    fused = {"fused": True} if device.type in ("cuda", "cpu") else {}
    return torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay, **fused)


def compile_or_eager(model: nn.Module, batches: Batches, precision: Precision) -> nn.Module:
    """`torch.compile(model)`, tried once on two training windows (forward and backward, random state untouched);
    the eager model and one warning where it cannot compile (no C++ compiler, an unsupported platform...)."""
    device = precision.device
    x, _ = batches.get("train", torch.arange(min(2, len(batches.ends["train"])), device=device))
    compiled = torch.compile(model)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            model.train()
            with precision.autocast():
                out = compiled(x)
            out.float().sum().backward()
    except Exception as exc:  # compilers fail in many ways; training must not
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        log.warning("compile: torch.compile failed here, training without it (%s: %s)", type(exc).__name__, reason)
        torch._dynamo.reset()
        return model
    finally:
        model.zero_grad(set_to_none=True)
    return compiled


def check_evaluation_losses(metrics: dict[str, float], epoch: int, learning_rate: float) -> None:
    """A NaN / infinite validation or test loss ends the run like a non-finite training loss does."""
    for key, split in (("val_loss", "validation"), ("test_loss", "test")):
        if not math.isfinite(metrics[key]):
            raise NonFiniteLoss(
                f"training stopped: the {split} loss became {metrics[key]} at epoch {epoch} (training loss "
                f"{metrics['train_loss']:.4g}): the model's outputs on the {split} windows are not finite; check the "
                f"{split} period of the data for extreme values, lower learning_rate ({learning_rate:g}) or use "
                "amp=off", epoch, metrics)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches, split: str, criterion: nn.Module, precision: Precision,
             batch_size: int) -> tuple[dict[str, float], list[list[int]]]:
    """Loss and classification metrics of one split, plus its confusion matrix."""
    model.eval()
    n = len(batches.ends[split])
    mine = distributed.shard(n)  # all of them in one process
    total = torch.zeros((), device=batches.series.device)
    predictions = [torch.zeros(0, dtype=torch.long, device=batches.series.device)]
    for start in range(mine.start, mine.stop, batch_size):
        index = torch.arange(start, min(start + batch_size, mine.stop), device=batches.series.device)
        x, y = batches.get(split, index)
        with precision.autocast():
            logits = model(x)
        total += criterion(logits.float(), y) * len(index)
        predictions.append(logits.argmax(dim=-1))
    labels = batches.labels[split][mine].cpu().numpy()
    predicted = torch.cat(predictions).cpu().numpy()
    loss_sum = float(total.item())
    if distributed.world().distributed:  # the ranks' sums and counts, added up; the metrics need no more
        (tn, fp), (fn, tp) = confusion(labels, predicted)
        loss_sum, tn, fp, fn, tp = distributed.sum_([loss_sum, tn, fp, fn, tp], batches.series.device)
        labels, predicted = from_counts(int(tn), int(fp), int(fn), int(tp))
    metrics = split_metrics(split, labels, predicted, loss_sum / n)
    if split == "val":
        metrics["val_pred_rain_fraction"] = float(predicted.mean())
    return metrics, confusion(labels, predicted)


def step_passes(windows: Tensor, chunk: int, world: distributed.World) -> list[tuple[Tensor, float, bool]]:
    """This rank's forward passes over one optimiser step's windows: (index, loss weight, last pass?).

    Rank r takes every N-th window. Each pass's mean loss is weighted by its share of the step's windows times N
    (DDP averages over the N ranks), so the step's gradient is the mean over all of its windows. Every rank makes
    the same number of passes, so each reaches the step's one gradient exchange (its last pass); a rank with
    nothing left for that pass still takes part with one window at weight 0."""
    total = len(windows)
    mine = windows[world.rank::world.size]
    count = math.ceil(math.ceil(total / world.size) / chunk)
    passes = []
    for p in range(count):
        index = mine[p * chunk:(p + 1) * chunk]
        final = p + 1 == count
        if len(index):
            passes.append((index, len(index) * world.size / total, final))
        elif final:
            passes.append((windows[:1], 0.0, True))
    return passes


def from_counts(tn: int, fp: int, fn: int, tp: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and predictions with this confusion matrix (every metric here ignores the windows' order)."""
    labels = np.repeat([0, 0, 1, 1], [tn, fp, fn, tp])
    return labels, np.repeat([0, 1, 0, 1], [tn, fp, fn, tp])


def parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """The model wrapped in DistributedDataParallel under torchrun (it averages the gradients); else itself."""
    if not distributed.world().distributed:
        return model
    # find_unused_parameters: the backbone's forecasting head is part of the checkpoint but not of the classifier
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=True)


def no_sync(model: nn.Module, final: bool) -> contextlib.AbstractContextManager:
    """DDP's `no_sync` for every pass of a step but its last (one gradient exchange per step)."""
    inner = getattr(model, "_orig_mod", model)
    if final or not hasattr(inner, "no_sync"):
        return contextlib.nullcontext()
    return inner.no_sync()


def _model_payload(cfg: RunConfig, model: nn.Module, data: PreparedData, epoch: int, metrics: dict,
                   run_id: str | None) -> dict:
    return model_payload(cfg, model, epoch, metrics, data.features, data.scaler_mean, data.scaler_scale, run_id)


def _last_payload(cfg: RunConfig, model: nn.Module, data: PreparedData, optimizer: torch.optim.Optimizer,
                  scaler: torch.amp.GradScaler, order: torch.Generator, state: TrainState,
                  run_id: str | None) -> dict:
    payload = _model_payload(cfg, model, data, state.epoch, state.history[state.epoch], run_id)
    payload.update(format=LAST_FORMAT, optimizer=optimizer.state_dict(),
                   grad_scaler=scaler.state_dict(), train_state=state.to_dict(), rng=_get_rng(order))
    return payload


def _get_rng(order: torch.Generator) -> dict[str, Any]:
    rng = {"torch": torch.get_rng_state(), "order": order.get_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def _set_rng(rng: dict[str, Any], order: torch.Generator) -> None:
    torch.set_rng_state(rng["torch"])
    order.set_state(rng["order"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
