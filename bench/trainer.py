"""Sections 2 and 3: the whole trainer vs its raw step, and the share of wall time spent on tracking.

`run_training` runs in this process as `rain-mlflow train` runs it, against a real store (a sqlite file, or a local
`mlflow server` with proxied artifacts). The blocking time of every `Tracker` call, of `mlflow.start_run`, of
`connect` and of each checkpoint write is added up by wrapping those functions (nested calls count once); the fit's
training time is split out the same way. The raw step is then timed on the same training batches with the same
model, precision and optimizer, without anything around it.

The checkpoint of a `transfer` run (weights + AdamW moments, about 0.8 GB) is written and sent to both stores to
time what one epoch's `last.pt` costs.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.common import Figure, log
from rain_mlflow.config import presets

TRACKER_METHODS = ("_write", "end", "tags", "logged_steps", "current_diagnosis", "download_artifact", "log_model")


class Stopwatch:
    """Seconds spent inside wrapped functions, per category; a call nested in a call of its category counts once."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.by_function: dict[str, float] = {}   # outermost function name -> seconds
        self._depth: dict[str, int] = {}

    def wrap(self, category: str, function: Callable) -> Callable:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._depth.get(category):
                return function(*args, **kwargs)
            self._depth[category] = 1
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self._depth[category] = 0
                seconds = time.perf_counter() - start
                self.seconds[category] = self.seconds.get(category, 0.0) + seconds
                name = function.__qualname__
                self.by_function[name] = self.by_function.get(name, 0.0) + seconds
                self.calls[category] = self.calls.get(category, 0) + 1
        return timed


@contextlib.contextmanager
def instrumented(watch: Stopwatch):
    """Patch the tracking entry points, checkpoint writes and the loop's phases for one training run."""
    import mlflow

    from rain_mlflow.tracking.tracker import Tracker
    from rain_mlflow.train import epochs, loop, run

    targets = [(Tracker, name, "mlflow") for name in TRACKER_METHODS]
    targets += [(run, "connect", "mlflow"), (mlflow, "start_run", "mlflow"),
                (loop, "save_checkpoint", "checkpoint_write"), (loop, "train_one_epoch", "train_steps"),
                (loop, "evaluate", "evaluation"), (run, "fit", "fit"),
                (epochs.EpochTracker, "__call__", "per_epoch_tracking")]
    saved = [(owner, name, owner.__dict__[name]) for owner, name, _ in targets]
    try:
        for owner, name, category in targets:
            setattr(owner, name, watch.wrap(category, getattr(owner, name)))
        yield watch
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def train_once(preset: str, overrides: dict[str, Any], uri: str) -> tuple[dict[str, Any], Stopwatch, float]:
    """One `train` run in this process; returns (its summary, the stopwatch, wall seconds)."""
    import mlflow

    from rain_mlflow.train.run import TrainRequest, run_training

    cfg = presets.build(preset, overrides)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    mlflow.MlflowClient(uri).search_experiments()  # a user's store exists already: its creation is not timed
    watch = Stopwatch()
    start = time.perf_counter()
    with instrumented(watch), contextlib.redirect_stdout(sys.stderr):  # stdout carries only the table
        summary = run_training(cfg, TrainRequest(experiment=f"bench-{preset}"))
    return summary, watch, time.perf_counter() - start


def raw_steps_per_second(preset: str, overrides: dict[str, Any], n_steps: int) -> tuple[float, int]:
    """Samples/s of the bare step (same data, model, precision, loss, optimizer and batches as the trainer)."""
    from rain_mlflow.data.batches import Batches
    from rain_mlflow.data.dataset import prepare, resolve
    from rain_mlflow.data.source import load_clean
    from rain_mlflow.model.factory import build_classifier
    from rain_mlflow.train.loop import build_optimizer
    from rain_mlflow.train.losses import build_loss
    from rain_mlflow.train.precision import select_precision

    cfg = presets.build(preset, overrides)
    _, cleaned = load_clean(cfg.data)
    cfg = resolve(cfg, cleaned)
    data = prepare(cleaned, cfg)
    t = cfg.train
    precision = select_precision(t.amp, torch.device("cpu"))
    torch.manual_seed(t.seed)
    model = build_classifier(cfg, data.n_vars).train()
    batches = Batches(data, precision.device)
    split = data.splits["train"]
    criterion = build_loss(t.loss, t.focal_gamma, split.no_rain, split.rain)
    optimizer = build_optimizer(model, t.learning_rate, t.weight_decay, precision.device)
    order = torch.randperm(split.size, generator=torch.Generator().manual_seed(t.seed))
    seconds, samples = 0.0, 0
    for step in range(n_steps + 1):  # the first step warms up and is not counted
        index = order[(step * t.batch_size) % split.size:][: t.batch_size]
        start = time.perf_counter()
        x, y = batches.get("train", index)
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast():
            loss = criterion(model(x), y)
        loss.backward()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        if step:
            seconds += time.perf_counter() - start
            samples += len(index)
    return samples / seconds, split.size


def start_server(workdir: Path) -> tuple[Any, str]:
    from bench.bench_compare import start_server as start

    return start(f"sqlite:///{workdir / 'server.db'}", workdir)


def stop_server(process: Any) -> None:
    os.killpg(process.pid, signal.SIGTERM)  # the server's own process group
    process.wait(timeout=30)


# preset -> (years of the synthetic record, overrides, raw steps timed), with the presets' own window stride and batch.
# `smoke` runs exactly as `main` trains it: the embedded 11-year record, the preset's 4 epochs. `small` on 11 years
# takes about 20 minutes an epoch on 2 CPU cores, so it runs on half a year: one epoch then lasts about as long here
# as the seed's `small` epoch on a T4 (35 s), and what every epoch pays (checkpoint writes, metric logging) is the
# share of an epoch it is for the user. Short records can leave a split with one class: that does not change what is
# timed, so the degenerate-task check is off for `small`.
CASES = {
    "smoke": (11.0, {}, 30),
    "small": (0.5, {"train_epochs": 2, "allow_degenerate": True}, 8),
}
QUICK_CASES = {
    "smoke": (0.5, {"train_epochs": 1, "allow_degenerate": True}, 5),
    "small": (0.1, {"train_epochs": 1, "batch_size": 8, "seq_len": 288, "allow_degenerate": True}, 3),
}


def run(quick: bool, with_server: bool, command: str, machine: dict, workdir: Path) -> list[Figure]:
    from rain_mlflow.synth import SynthConfig, write_synthetic

    stores = {"sqlite": f"sqlite:///{workdir / 'train.db'}"}
    server = None
    if with_server:
        server, stores["server"] = start_server(workdir)
    figures = []
    try:
        for preset, (years, overrides, raw_n) in (QUICK_CASES if quick else CASES).items():
            csv = workdir / f"station_{years:g}y.csv"
            write_synthetic(str(csv), SynthConfig(years=years))
            overrides = {**overrides, "data": str(csv), "pretrain_model_path": None}
            raw_rate, windows = raw_steps_per_second(preset, overrides, raw_n)
            for store, uri in stores.items():
                log(f"trainer {preset} on {store}: training ({windows} training windows, {years:g} years)")
                summary, watch, wall = train_once(preset, overrides, uri)
                figures += _figures(preset, store, overrides, summary, watch, wall, raw_rate, windows, quick,
                                    command, machine)
        figures += checkpoint_copy(stores, quick, command, machine, workdir)
    finally:
        if server is not None:
            stop_server(server)
    return figures


def _figures(preset: str, store: str, overrides: dict, summary: dict, watch: Stopwatch, wall: float,
             raw_rate: float, windows: int, quick: bool, command: str, machine: dict) -> list[Figure]:
    s = watch.seconds
    epochs = int(summary.get("epochs_completed", 0)) or 1
    tracked = s.get("mlflow", 0.0) + s.get("checkpoint_write", 0.0)
    e2e_rate = windows * epochs / s["fit"]  # every epoch: batches, steps, evaluation, checkpoints, tracking
    detail = {"wall_s": wall, "seconds": dict(s), "calls": dict(watch.calls), "epochs": epochs,
              "seconds_by_function": {k: round(v, 3) for k, v in sorted(watch.by_function.items())},
              "training_windows": windows, "overrides": {k: v for k, v in overrides.items() if k != "data"}}
    share = tracked / wall
    limit = 0.05 if preset == "smoke" else 0.01
    # Inside the epochs only: what every further epoch costs (the run's start, model logging and figures are paid
    # once, however long the run), as a share of the fit and in seconds, next to what the run pays once.
    in_epochs = s.get("per_epoch_tracking", 0.0) + s.get("checkpoint_write", 0.0)
    per_epoch = in_epochs / s["fit"]
    detail.update(per_epoch_share_pct=100 * per_epoch, tracking_s_per_epoch=in_epochs / epochs,
                  tracking_s_once=max(tracked - in_epochs, 0.0), epoch_s=s["fit"] / epochs)
    figures = [Figure(section="3 tracking overhead", name=f"{preset} on {store}: MLflow + checkpoint writes, whole run",
                      value=100 * share, unit="% of wall", target=f"<= {limit:.0%}",
                      met=(share <= limit) if not quick else None, detail=detail, command=command, machine=machine),
               Figure(section="3 tracking overhead", name=f"{preset} on {store}: the same inside the epochs",
                      value=100 * per_epoch, unit="% of fit", target=f"<= {limit:.0%}",
                      met=(per_epoch <= limit) if not quick else None, detail=detail, command=command,
                      machine=machine)]
    if store == "sqlite":
        ratio = e2e_rate / raw_rate
        figures.append(Figure(
            section="2 trainer end-to-end", name=f"{preset}: whole train run vs raw step", value=ratio,
            unit="x raw step", target=">= 0.9", met=(ratio >= 0.9) if not quick else None,
            detail={"end_to_end_samples_per_s": e2e_rate, "raw_step_samples_per_s": raw_rate,
                    "train_steps_only_samples_per_s": windows * epochs / max(s.get("train_steps", 0.0), 1e-9),
                    "whole_run_samples_per_s": windows * epochs / wall,
                    **detail}, command=command, machine=machine))
    return figures


def checkpoint_copy(stores: dict[str, str], quick: bool, command: str, machine: dict,
                    workdir: Path) -> list[Figure]:
    """Write a last.pt-sized payload of the `transfer` model (or `small` with --quick) and log it to each store."""
    import mlflow

    from rain_mlflow.model.factory import build_classifier
    from rain_mlflow.model.checkpoint import save
    from rain_mlflow.tracking.tracker import Tracker
    from rain_mlflow.train.loop import build_optimizer

    preset = "small" if quick else "transfer"
    cfg = presets.build(preset, {"pretrain_model_path": None})
    model = build_classifier(cfg, 6)
    optimizer = build_optimizer(model, 1e-4, 0.0, torch.device("cpu"))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # allocates the AdamW moments a real last.pt carries
    path = workdir / "last.pt"
    start = time.perf_counter()
    save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)
    write_s = time.perf_counter() - start
    size_gb = path.stat().st_size / 1e9
    figures = []
    for store, uri in stores.items():
        mlflow.set_tracking_uri(uri)
        os.environ["MLFLOW_TRACKING_URI"] = uri
        mlflow.set_experiment("bench-checkpoint")
        with contextlib.redirect_stdout(sys.stderr), Tracker.start("train", run_name="checkpoint-copy") as tracker:
            start = time.perf_counter()
            tracker.log_artifact(path, "checkpoints")
            copy_s = time.perf_counter() - start
        log(f"checkpoint {preset} ({size_gb:.2f} GB) to {store}: write {write_s:.1f} s, log_artifact {copy_s:.1f} s")
        figures.append(Figure(
            section="3 tracking overhead", name=f"{preset} last.pt ({size_gb:.2f} GB) to the {store} store",
            value=copy_s, unit="s per epoch", target="measure", met=None,
            detail={"size_gb": size_gb, "local_write_s": write_s, "log_artifact_s": copy_s,
                    "gb_per_s": size_gb / copy_s if copy_s else math.inf},
            command=command, machine=machine))
    path.unlink()
    return figures
