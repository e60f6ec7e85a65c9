"""`train`: validate everything, then one tracked run around the loop in `loop.py`.

Order matters for the user: config, data, device and the pretrained weights (found, downloaded if need be, and
verified: `rain_mlflow.weights`) are all checked BEFORE an MLflow run is created, so a bad parameter or a failed
download costs no run and leaves nothing RUNNING; `dry_run_training` stops before the weights (`dry_run.py`).
Then the run records what DESIGN.md "What a training run records" lists: params, per-epoch metrics at
step = epoch, confusion matrices, checkpoints, figures, the cleaning report, the dataset digest, the live
diagnosis tags and a summary note. Under torchrun every rank runs this; rank 0 alone talks to MLflow
(`distributed.py`).

The walk: `run_training` prepares a `RunContext` (`_prepare`), opens the run (`_tracked_run`), and calls
`loop.fit`, whose per-epoch callback is `epochs.EpochTracker` (where each epoch's metrics are logged).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from rain_mlflow import plots, weights
from rain_mlflow.config import RunConfig
from rain_mlflow.data.dataset import PreparedData, prepare, resolve
from rain_mlflow.data.source import load_clean
from rain_mlflow.data.timing import time_params, time_settings
from rain_mlflow.data.windows import gather
from rain_mlflow.errors import UserError
from rain_mlflow.model import checkpoint
from rain_mlflow.model.factory import build_classifier
from rain_mlflow.model.transfer import load_pretrained_backbone, shapes_of
from rain_mlflow.config.presets import time_meaning
from rain_mlflow.progress import SILENT, Progress
from rain_mlflow.tracking import ui
from rain_mlflow.tracking.datasets import data_digest, same_data
from rain_mlflow.tracking.delivery import deliver_pending, run_folder
from rain_mlflow.tracking.experiments import connect
from rain_mlflow.tracking.protocol import RunTracker
from rain_mlflow.tracking.store import tracking_uri
from rain_mlflow.tracking.tracker import Tracker
from rain_mlflow.train import distributed, resume
from rain_mlflow.train.baselines import prepared_baselines, skill
from rain_mlflow.train.dry_run import DryRun, dry_run_report
from rain_mlflow.train.epochs import EpochHook, EpochTracker
from rain_mlflow.train.loop import FitResult, NonFiniteLoss, TrainState, fit
from rain_mlflow.train.note import run_note
from rain_mlflow.train.oom import is_out_of_memory, out_of_memory
from rain_mlflow.train.precision import Precision, select_device, select_precision

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainRequest:
    """How `train` was asked to run, beyond the config: where the run goes and how it starts."""

    experiment: str | None = None
    run_name: str | None = None                      # default: the preset
    resume: str | None = None                        # the id of a run to continue (its own config then applies)
    overrides: Mapping[str, Any] = field(default_factory=dict)  # the settings the user gave (checked on resume)
    reschedule: bool = False                         # resume: spread the LR schedule over the new train_epochs
    force: bool = False                              # resume: even if the run's trainer still looks alive
    tags: Mapping[str, str] = field(default_factory=dict)       # put on the run when it starts
    on_epoch: EpochHook | None = None                # after each epoch's diagnosis; may return a reason to stop
    progress: Progress = SILENT                      # where the run's progress lines go


@dataclass
class RunContext:
    """Everything one training run works with, prepared before the run exists."""

    cfg: RunConfig                    # resolved: every time setting in steps of the data
    data: PreparedData
    raw: pd.DataFrame                 # the record as read (its digest identifies the data)
    clean_report: dict
    model: torch.nn.Module
    precision: Precision
    request: TrainRequest
    resume_payload: dict | None = None     # the last.pt of the run being resumed
    weights_source: weights.Source | None = None
    pretrained: dict | None = None         # which bytes the backbone started from

    @property
    def progress(self) -> Progress:
        return self.request.progress


def run_training(cfg: RunConfig | None, request: TrainRequest = TrainRequest()) -> dict:
    """Train (or resume) and return a summary dict: run id, best epoch, metrics, and `lines`, what the command
    prints at the end (the run's note). `cfg` is None for a resume (the run's own config is used)."""
    with _joined(cfg, request) as world:
        ctx = _prepare(world, cfg, request)
        if ctx.weights_source is not None and world.main:  # found, downloaded and verified before any run
            # exists (other ranks get the weights from rank 0 when DDP wraps the model)
            resolved = weights.fetch(ctx.weights_source, shapes_of(ctx.model.backbone.state_dict()))
            ctx.pretrained = {**load_pretrained_backbone(ctx.model.backbone, resolved.path),
                              "sha256": resolved.sha256, "source": ctx.weights_source.kind,
                              "origin": resolved.origin}
        ctx.model.to(ctx.precision.device)
        if not world.main:
            return _untracked_run(ctx)
        if not request.resume:
            connect(request.experiment)
        return _tracked_run(ctx)


def dry_run_training(cfg: RunConfig | None, request: TrainRequest = TrainRequest()) -> DryRun:
    """`train --dry-run`: everything `run_training` checks, plus the estimates; no run and no weights download
    (the report says where the weights are or what would be downloaded)."""
    with _joined(cfg, request) as world:
        ctx = _prepare(world, cfg, request)
        status = weights.status(ctx.weights_source) if ctx.weights_source is not None else None
        return dry_run_report(ctx.cfg, ctx.data, ctx.clean_report, ctx.model.to(ctx.precision.device),
                              ctx.precision, status)


@contextmanager
def _joined(cfg: RunConfig | None, request: TrainRequest) -> Iterator[distributed.World]:
    """This process's place among the ranks (one process of rank 0 without torchrun), left at the end."""
    world = distributed.init(request.overrides.get("device") or (cfg.train.device if cfg else "auto"))
    try:
        yield world
    finally:
        distributed.shutdown()


def _prepare(world: distributed.World, cfg: RunConfig | None, request: TrainRequest) -> RunContext:
    """The config (a resumed run's own), the data, the device, the model; the pretrained weights' source, which
    must fit the model. Nothing is written."""
    resume_payload = None
    if request.resume:  # rank 0 reads the run and its last.pt; the other ranks get both from it
        cfg, resume_payload = _resume_source(world, request)
    assert cfg is not None
    raw, cleaned = load_clean(cfg.data)
    given, cfg = cfg, resolve(cfg, cleaned)  # from here on every time setting is a step count
    data = prepare(cleaned, cfg)
    clean_report = {**cleaned.report, "time_settings": time_settings(given.data, cfg.data, cleaned.step),
                    "time_meaning": time_meaning(cfg, cleaned.step, data.window)}
    device = select_device(distributed.device_for(cfg.train.device))
    precision = select_precision(cfg.train.amp, device)
    precision.configure_backends()
    torch.manual_seed(cfg.train.seed)
    model = build_classifier(cfg, data.n_vars)
    source = weights.parse(cfg.model.pretrain_model_path) if resume_payload is None else None
    if source is not None:
        weights.check_release_fits(source, cfg.model)
    return RunContext(cfg, data, raw, clean_report, model, precision, request, resume_payload, source)


def _resume_source(world: distributed.World, request: TrainRequest) -> tuple[RunConfig, dict]:
    """The resumed run's config and last.pt: read by rank 0 and handed to the others."""
    assert request.resume is not None
    shared = None
    if world.main:
        try:
            connect(request.experiment, run_id=request.resume)
            if deliver_pending(request.resume):  # what an earlier session left undelivered, before reading it
                request.progress.line(f"delivered the writes run {request.resume} had left in "
                                      f"{run_folder(request.resume)}")
            shared = resume.resume_source(request.resume, dict(request.overrides), reschedule=request.reschedule,
                                          force=request.force)
        finally:
            distributed.broadcast(shared)
    else:
        shared = distributed.broadcast(None)
        if shared is None:
            raise SystemExit(2)  # rank 0 says why
    return shared


def _tracked_run(ctx: RunContext) -> dict:
    cfg, request = ctx.cfg, ctx.request
    with Tracker.start("train", run_name=request.run_name or cfg.preset, resume_run_id=request.resume,
                       system_metrics=True, tags={"preset": cfg.preset, **request.tags},
                       durable=True) as tracker, tracker.keep_alive():
        assert tracker.folder is not None
        workdir = tracker.folder / "checkpoints"  # written here first; the outbox sends them to the store
        workdir.mkdir(exist_ok=True)
        epochs = EpochTracker(tracker, cfg, ctx.data, request.on_epoch, ctx.progress)
        if ctx.resume_payload is None:
            _record_setup(tracker, ctx)
        else:
            _continue_run(tracker, ctx, epochs, workdir)
        _announce(tracker, ctx)
        try:
            result = fit(cfg, ctx.data, ctx.model, ctx.precision, workdir, epochs, resume=ctx.resume_payload,
                         run_id=tracker.run_id)
        except NonFiniteLoss as exc:
            epochs.record_non_finite(exc)
            raise
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: keep the last completed epoch resumable
            try:
                epochs.send_unsent(workdir)
            except Exception as exc:  # the run still ends KILLED; the store holds the epoch before
                log.warning("could not upload the latest checkpoint: %s", " ".join(str(exc).split())[:200])
            ctx.progress.warn(f"run {tracker.run_id} stopped after epoch {epochs.completed}; continue it with: "
                              f"rain-mlflow train --resume {tracker.run_id}")
            raise
        except Exception as exc:
            if is_out_of_memory(exc):
                raise out_of_memory(exc, cfg, ctx.data, ctx.precision.device, ctx.precision.dtype,
                                    epochs.completed + 1) from None
            raise
        return _finish(tracker, ctx, result, workdir)


def _announce(tracker: RunTracker, ctx: RunContext) -> None:
    """Which run, what its time settings mean, and where to watch it in the MLflow UI."""
    precision = ctx.precision
    ctx.progress.line(f"MLflow run {tracker.run_id} ({ctx.cfg.preset}, {precision.device.type}, {precision.name})")
    ctx.progress.lines([f"  {line}" for line in ctx.clean_report["time_meaning"]])
    links = [("this run", ui.run_url("", tracker.experiment_id, tracker.run_id)),
             ("training runs", ui.experiment_url("", tracker.experiment_id))]
    ctx.progress.lines(ui.links_block(tracking_uri(), links).splitlines())


def _untracked_run(ctx: RunContext) -> dict:
    """A rank other than 0 trains its share; rank 0 tracks, checkpoints and decides when to stop."""
    with tempfile.TemporaryDirectory(prefix="rain-mlflow-rank-") as tmp:
        result = fit(ctx.cfg, ctx.data, ctx.model, ctx.precision, Path(tmp), lambda *_: None,
                     resume=ctx.resume_payload)
    return {"best_epoch": result.state.best_epoch, "stopped_by": result.stopped_by, "lines": []}


def _continue_run(tracker: RunTracker, ctx: RunContext, epochs: EpochTracker, workdir: Path) -> None:
    """A resumed run: same data, the epochs a kill interrupted logged once, what changed recorded."""
    assert ctx.resume_payload is not None
    _check_same_data(tracker, ctx)
    state = TrainState.from_dict(ctx.resume_payload["train_state"])
    epochs.catch_up(state)
    tracker.download_artifact("checkpoints/best.pt", str(workdir))
    before = checkpoint.config_of(ctx.resume_payload)
    note = resume.schedule_note(before, ctx.cfg, state.epoch)
    runtime = {"runtime_device": str(ctx.precision.device), "runtime_precision": ctx.precision.name}
    entry = resume.record(tracker, before, ctx.cfg, state.epoch, runtime, note)
    ctx.progress.line(f"resuming run {tracker.run_id} after epoch {state.epoch}"
                      + (f"; changed: {', '.join(entry['changed'])}" if entry["changed"] else ""))
    if note:
        log.info(note)


def _record_setup(tracker: RunTracker, ctx: RunContext) -> None:
    """What a fresh run logs once: params, dataset, config, cleaning report."""
    cfg, data, clean_report, precision = ctx.cfg, ctx.data, ctx.clean_report, ctx.precision
    n_params = sum(p.numel() for p in ctx.model.parameters())
    params = {**cfg.flat(), "n_params": n_params, "effective_seq_len": data.window,
              "tokens_per_sample": data.n_vars * (data.window // cfg.model.input_token_len),
              "n_vars": data.n_vars, "feature_columns": ",".join(data.columns),
              "indicator_variables": ",".join(data.policy.indicators) if data.policy else "",
              "freq": clean_report["freq"], "runtime_device": str(precision.device),
              "runtime_precision": precision.name, "torch_version": torch.__version__,
              **time_params(clean_report["time_settings"]), **data.class_counts()}
    params["effective_batch_size"] = cfg.train.batch_size * cfg.train.accumulate_steps
    if ctx.pretrained:  # which bytes the backbone started from, and where they came from
        params.update(pretrained_tensors=ctx.pretrained["n_tensors"], pretrain_sha256=ctx.pretrained["sha256"],
                      pretrain_source=ctx.pretrained["source"], pretrain_origin=ctx.pretrained["origin"])
    tracker.log_params(params)
    digest = tracker.log_input(ctx.raw, source=clean_report["source"], name="station-data", context="training")
    tracker.set_tags({"data_digest": digest, "diagnosis": "ok"})
    tracker.log_dict({**cfg.to_dict(), "effective_seq_len": data.window, "features": list(data.features),
                      "time_settings": clean_report["time_settings"]}, "config.json")
    tracker.log_dict({**clean_report, "windows": data.accounting}, "cleaning_report.json")
    for note in data.notes:
        tracker.set_tags({"warning.seq_len": note})


def _check_same_data(tracker: RunTracker, ctx: RunContext) -> None:
    expected = tracker.tags().get("data_digest")
    if expected and not same_data(ctx.raw, expected):
        raise UserError(f"the data {ctx.clean_report['source']!r} differs from the data run {tracker.run_id} "
                        f"started with (digest {data_digest(ctx.raw)} vs {expected}); resume needs the same data")


def _finish(tracker: RunTracker, ctx: RunContext, result: FitResult, workdir: Path) -> dict:
    """Summary metrics, figures, the registry-loadable model and the run description."""
    cfg, data, state = ctx.cfg, ctx.data, result.state
    best = state.history[state.best_epoch] if state.best_epoch else {}
    bars = prepared_baselines(data)
    summary = {"best_epoch": state.best_epoch, "best_val_loss": best.get("val_loss"),
               "best_val_accuracy": best.get("val_accuracy"), "best_val_f1": best.get("val_f1"),
               "best_test_accuracy": best.get("test_accuracy"), "best_test_f1": best.get("test_f1"),
               "best_test_mcc": best.get("test_mcc"), "epochs_completed": state.epoch, **bars}
    if best:
        gains = skill("test", {"f1": best["test_f1"], "mcc": best["test_mcc"]}, bars)
        summary.update({k: v for k, v in gains.items() if not isinstance(v, str)})
        tracker.set_tags({k: v for k, v in gains.items() if isinstance(v, str)})
    if result.stopped_by:
        summary["time_saved_s"] = result.time_saved_s
    tracker.log_metrics(summary, step=0)

    fig = plots.learning_curves(state.history, state.best_epoch, f"{cfg.preset} ({tracker.run_id[:8]})")
    tracker.log_figure(fig, "plots/learning_curves.png")
    plots.close(fig)
    model_id = None
    if state.best_epoch:
        fig = plots.confusion_figure(state.confusions[state.best_epoch], f"best epoch {state.best_epoch}")
        tracker.log_figure(fig, "plots/confusion_best_epoch.png")
        plots.close(fig)
        model_id = _log_serving_model(tracker, data, workdir / "best.pt")

    note = run_note(cfg, state, summary, result, tracker.current_diagnosis())
    tracker.set_note(note)
    if model_id:
        tracker.set_tags({"model_id": model_id})
    return {"run_id": tracker.run_id, "best_epoch": state.best_epoch, "stopped_by": result.stopped_by,
            "model_id": model_id, **{k: v for k, v in summary.items() if v is not None}, "lines": [note]}


def _log_serving_model(tracker: RunTracker, data: PreparedData, best_path: Path) -> str | None:
    payload = checkpoint.load(best_path)
    example = gather(data.raw, data.splits["val"].ends[:2], data.window)  # raw windows (NaN = missing): the input
    return tracker.log_model(best_path, int(payload["window"]), len(data.columns), input_example=example,
                             step=int(payload["epoch"]))
