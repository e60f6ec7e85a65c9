"""`train`: validate everything, then one tracked run around the loop in `loop.py`.

Order matters for the user: config, data, device and the pretrained weights (found, downloaded if need be, and
verified: `rain_mlflow.weights`) are all checked BEFORE an MLflow run is created, so a bad parameter or a failed
download costs no run and leaves nothing RUNNING; `--dry-run` stops before the weights (`dry_run.py`). Then the
run records what DESIGN.md "What a training run records" lists: params, per-epoch metrics at step = epoch,
confusion matrices, checkpoints, figures, the cleaning report, the dataset digest, the live diagnosis tags and a
summary note.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import click
import torch

from rain_mlflow import weights
from rain_mlflow.config import RunConfig
from rain_mlflow.data.source import load_clean
from rain_mlflow.data.dataset import PreparedData, prepare, resolve
from rain_mlflow.data.timing import time_params, time_settings
from rain_mlflow.data.windows import gather
from rain_mlflow.diagnostics.rules import format_duration
from rain_mlflow.errors import UserError
from rain_mlflow.model.transfer import load_pretrained_backbone
from rain_mlflow.model.factory import build_classifier
from rain_mlflow.model.transfer import shapes_of
from rain_mlflow.presets import time_meaning
from rain_mlflow.model import checkpoint
from rain_mlflow.train import distributed
from rain_mlflow.train.dry_run import dry_run_report
from rain_mlflow.train.loop import FitResult, NonFiniteLoss, TrainState, fit
from rain_mlflow.train.baselines import prepared_baselines, skill
from rain_mlflow.train.baselines import verdict as baseline_verdict
from rain_mlflow.train.oom import is_out_of_memory, out_of_memory
from rain_mlflow.train.precision import Precision, select_device, select_precision
from rain_mlflow.train.resume import RESUMABLE_OVERRIDES, resume_source

log = logging.getLogger(__name__)
__all__ = ["RESUMABLE_OVERRIDES", "EpochHook", "run_training"]
EpochHook = Callable[[int, dict, list], "str | None"]  # (epoch, metrics, live findings) -> reason to stop


def run_training(cfg: RunConfig | None, overrides: dict[str, Any] | None = None, resume: str | None = None,
                 dry_run: bool = False, experiment: str | None = None, run_name: str | None = None,
                 output_format: str = "text", reschedule: bool = False, force: bool = False,
                 tags: dict[str, str] | None = None, on_epoch: EpochHook | None = None) -> dict:
    """Train (or resume, or dry-run) and return a small summary dict (run id, best epoch, metrics). Under torchrun
    every rank calls this; rank 0 alone talks to MLflow (`distributed.py`).

    `tags` go on the run when it starts; `on_epoch(epoch, metrics, findings)` is called after each epoch's live
    diagnosis and may return a reason to stop (`tune` reports to Optuna and prunes through it)."""
    world = distributed.init((overrides or {}).get("device") or (cfg.train.device if cfg else "auto"))
    try:
        return _run_training(world, cfg, overrides, resume, dry_run, experiment, run_name, output_format,
                             reschedule, force, tags, on_epoch)
    finally:
        distributed.shutdown()


def _run_training(world: distributed.World, cfg: RunConfig | None, overrides: dict[str, Any] | None,
                  resume: str | None, dry_run: bool, experiment: str | None, run_name: str | None,
                  output_format: str, reschedule: bool, force: bool, tags: dict[str, str] | None,
                  on_epoch: EpochHook | None) -> dict:
    from rain_mlflow.tracking.delivery import deliver_pending, run_folder
    from rain_mlflow.tracking.experiments import connect

    resume_payload = None
    if resume:  # rank 0 reads the run and its last.pt; the other ranks get both from it
        shared = None
        if world.main:
            try:
                connect(experiment, run_id=resume)
                if deliver_pending(resume):  # what an earlier session left undelivered, before reading the run
                    click.echo(f"delivered the writes run {resume} had left in {run_folder(resume)}")
                shared = resume_source(resume, overrides or {}, reschedule=reschedule, force=force)
            finally:
                distributed.broadcast(shared)
        else:
            shared = distributed.broadcast(None)
            if shared is None:
                raise SystemExit(2)  # rank 0 says why
        cfg, resume_payload = shared
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
    if dry_run:  # never needs the weights: says where they are or what would be downloaded
        status = weights.status(source) if source is not None else None
        return dry_run_report(cfg, data, clean_report, model.to(device), precision, status, output_format)
    pretrained = None
    if source is not None and world.main:  # found, downloaded and verified before any run exists (other ranks
        # get the weights from rank 0 when DDP wraps the model)
        resolved = weights.fetch(source, shapes_of(model.backbone.state_dict()))
        pretrained = {**load_pretrained_backbone(model.backbone, resolved.path), "sha256": resolved.sha256,
                      "source": source.kind, "origin": resolved.origin}
    model.to(device)
    if not world.main:
        return _untracked_run(cfg, data, model, precision, resume_payload)
    if not resume:
        connect(experiment)
    return _tracked_run(cfg, data, raw, clean_report, model, precision, pretrained, resume, resume_payload,
                        run_name, tags, on_epoch)


def _tracked_run(cfg: RunConfig, data: PreparedData, raw: Any, clean_report: dict, model: torch.nn.Module,
                 precision: Precision, pretrained: dict | None, resume: str | None,
                 resume_payload: dict | None, run_name: str | None, tags: dict[str, str] | None = None,
                 on_epoch: EpochHook | None = None) -> dict:
    from rain_mlflow.tracking import ui
    from rain_mlflow.tracking.store import tracking_uri
    from rain_mlflow.tracking.tracker import Tracker

    with Tracker.start("train", run_name=run_name or cfg.preset, resume_run_id=resume, system_metrics=True,
                       tags={"preset": cfg.preset, **(tags or {})}, durable=True) as tracker, tracker.keep_alive():
        assert tracker.folder is not None
        workdir = tracker.folder / "checkpoints"  # written here first; the outbox sends them to the store
        workdir.mkdir(exist_ok=True)
        epochs = EpochTracker(tracker, cfg, data, on_epoch)
        if resume_payload is None:
            _record_setup(tracker, cfg, data, raw, clean_report, model, precision, pretrained)
        else:
            _continue_run(tracker, cfg, precision, raw, clean_report, resume_payload, epochs, workdir)
        click.echo(f"MLflow run {tracker.run_id} ({cfg.preset}, {precision.device.type}, {precision.name})")
        for line in clean_report["time_meaning"]:
            click.echo(f"  {line}")
        links = [("this run", ui.run_url("", tracker.experiment_id, tracker.run_id)),
                 ("training runs", ui.experiment_url("", tracker.experiment_id))]
        click.echo(ui.links_block(tracking_uri(), links), nl=False)
        try:
            result = fit(cfg, data, model, precision, workdir, epochs, resume=resume_payload,
                         run_id=tracker.run_id)
        except NonFiniteLoss as exc:
            epochs.record_non_finite(exc)
            raise
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: keep the last completed epoch resumable
            try:
                epochs.send_unsent(workdir)
            except Exception as exc:  # the run still ends KILLED; the store holds the epoch before
                log.warning("could not upload the latest checkpoint: %s", " ".join(str(exc).split())[:200])
            click.echo(f"run {tracker.run_id} stopped after epoch {epochs.completed}; continue it with: "
                       f"rain-mlflow train --resume {tracker.run_id}", err=True)
            raise
        except Exception as exc:
            if is_out_of_memory(exc):
                raise out_of_memory(exc, cfg, data, precision.device, precision.dtype, epochs.completed + 1) \
                    from None
            raise
        return _finish(tracker, cfg, data, result, workdir)


def _untracked_run(cfg: RunConfig, data: PreparedData, model: torch.nn.Module, precision: Precision,
                   resume_payload: dict | None) -> dict:
    """A rank other than 0 trains its share; rank 0 tracks, checkpoints and decides when to stop."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rain-mlflow-rank-") as tmp:
        result = fit(cfg, data, model, precision, Path(tmp), lambda *_: None, resume=resume_payload)
    return {"best_epoch": result.state.best_epoch, "stopped_by": result.stopped_by}


def _continue_run(tracker: Any, cfg: RunConfig, precision: Precision, raw: Any, clean_report: dict,
                  payload: dict, epochs: EpochTracker, workdir: Path) -> None:
    """A resumed run: same data, the epochs a kill interrupted logged once, what changed recorded."""
    from rain_mlflow.train import resume

    _check_same_data(tracker, raw, clean_report)
    state = TrainState.from_dict(payload["train_state"])
    epochs.catch_up(state)
    tracker.download_artifact("checkpoints/best.pt", str(workdir))
    before = checkpoint.config_of(payload)
    note = resume.schedule_note(before, cfg, state.epoch)
    runtime = {"runtime_device": str(precision.device), "runtime_precision": precision.name}
    entry = resume.record(tracker, before, cfg, state.epoch, runtime, note)
    click.echo(f"resuming run {tracker.run_id} after epoch {state.epoch}"
               + (f"; changed: {', '.join(entry['changed'])}" if entry["changed"] else ""))
    if note:
        log.info(note)


def _record_setup(tracker: Any, cfg: RunConfig, data: PreparedData, raw: Any, clean_report: dict,
                  model: torch.nn.Module, precision: Precision, pretrained: dict | None) -> None:
    """What a fresh run logs once: params, dataset, config, cleaning report."""
    n_params = sum(p.numel() for p in model.parameters())
    params = {**cfg.flat(), "n_params": n_params, "effective_seq_len": data.window,
              "tokens_per_sample": data.n_vars * (data.window // cfg.model.input_token_len),
              "n_vars": data.n_vars, "feature_columns": ",".join(data.columns),
              "indicator_variables": ",".join(data.policy.indicators) if data.policy else "",
              "freq": clean_report["freq"], "runtime_device": str(precision.device),
              "runtime_precision": precision.name, "torch_version": torch.__version__,
              **time_params(clean_report["time_settings"]), **data.class_counts()}
    params["effective_batch_size"] = cfg.train.batch_size * cfg.train.accumulate_steps
    if pretrained:  # which bytes the backbone started from, and where they came from
        params.update(pretrained_tensors=pretrained["n_tensors"], pretrain_sha256=pretrained["sha256"],
                      pretrain_source=pretrained["source"], pretrain_origin=pretrained["origin"])
    tracker.log_params(params)
    digest = tracker.log_input(raw, source=clean_report["source"], name="station-data", context="training")
    tracker.set_tags({"data_digest": digest, "diagnosis": "ok"})
    tracker.log_dict({**cfg.to_dict(), "effective_seq_len": data.window, "features": list(data.features),
                      "time_settings": clean_report["time_settings"]}, "config.json")
    tracker.log_dict({**clean_report, "windows": data.accounting}, "cleaning_report.json")
    for note in data.notes:
        tracker.set_tags({"warning.seq_len": note})


def _check_same_data(tracker: Any, raw: Any, clean_report: dict) -> None:
    from rain_mlflow.tracking.datasets import data_digest, same_data

    expected = tracker.client.get_run(tracker.run_id).data.tags.get("data_digest")
    digest = data_digest(raw)
    if expected and not same_data(raw, expected):
        raise UserError(f"the data {clean_report['source']!r} differs from the data run {tracker.run_id} started "
                        f"with (digest {digest} vs {expected}); resume needs the same data")


class EpochTracker:
    """The per-epoch callback of `fit`: log, print, diagnose live, and say whether a stop rule fired."""

    def __init__(self, tracker: Any, cfg: RunConfig, data: PreparedData, hook: EpochHook | None = None):
        self.tracker, self.cfg, self.data, self.hook = tracker, cfg, data, hook
        self.run_name = cfg.preset
        self.completed = 0                               # the last epoch whose checkpoints are in the store
        self.sent: dict[str, tuple[int, int]] = {}       # checkpoint name -> (mtime_ns, size) last uploaded

    def __call__(self, epoch: int, metrics: dict, state: TrainState, files: dict) -> str | None:
        for path in files.values():
            self._send(Path(path))
        self.completed = epoch
        self._log_epoch(epoch, metrics, state)
        findings = self.diagnose(state)
        self._print(epoch, metrics, state, findings)
        reason = self.hook(epoch, metrics, findings) if self.hook else None
        if reason:  # the caller's own rule (e.g. Optuna's pruner)
            self.tracker.set_tags({"stopped_by": reason})
            click.echo(f"stopping: {reason}")
            return reason
        stop = [f for f in findings if f.flag in self.cfg.train.stop_on]
        if stop:
            first = stop[0]
            self.tracker.set_tags({"stopped_by": first.flag})
            click.echo(f"stopping: {first.flag}: {first.evidence}")
            return first.flag
        return None

    def _send(self, path: Path) -> None:
        self.tracker.log_artifact(path, "checkpoints")
        stat = path.stat()
        self.sent[path.name] = (stat.st_mtime_ns, stat.st_size)

    def send_unsent(self, workdir: Path) -> None:
        """On Ctrl-C / SIGTERM: upload checkpoints written locally but not yet sent (best.pt before last.pt),
        so the store holds the last completed epoch; `catch_up` logs its metrics when the run resumes."""
        for name in ("best.pt", "last.pt"):
            path = workdir / name
            if path.exists() and self.sent.get(name) != (path.stat().st_mtime_ns, path.stat().st_size):
                self._send(path)

    def catch_up(self, state: TrainState) -> None:
        """Log the epochs a kill interrupted between checkpoint and metrics (each epoch exactly once)."""
        self.completed = state.epoch
        logged = self.tracker.logged_steps("val_loss")
        for epoch in sorted(state.history):
            if epoch not in logged:
                self._log_epoch(epoch, state.history[epoch], state)

    def _log_epoch(self, epoch: int, metrics: dict, state: TrainState) -> None:
        self.tracker.log_dict(state.confusions[epoch], f"confusion_matrices/epoch_{epoch:03d}.json")
        self.tracker.log_metrics(metrics, step=epoch)

    def diagnose(self, state: TrainState) -> list:
        """The rules after this epoch, with the thresholds stored on the run (a `compare --<threshold>` while it
        trains, or the first session's before a resume), else the defaults; the window counts give the noise
        floor."""
        from rain_mlflow.diagnostics.history import RunHistory
        from rain_mlflow.diagnostics.rules import diagnose
        from rain_mlflow.diagnostics.thresholds import Thresholds, THRESHOLDS_TAG
        from rain_mlflow.errors import ConfigError

        tags = self.tracker.tags()
        thresholds = Thresholds()
        if tags.get(THRESHOLDS_TAG):
            try:
                thresholds = Thresholds.from_json(tags[THRESHOLDS_TAG], f"run tag {THRESHOLDS_TAG}")
            except ConfigError as exc:  # never end hours of training over a hand-edited tag
                log.warning("%s; diagnosing with the default thresholds", exc)
        names = sorted({k for m in state.history.values() for k in m})
        history = RunHistory(
            run_id=self.tracker.run_id, run_name=self.run_name, status="RUNNING",
            params={"vram_budget_gb": str(self.cfg.train.vram_budget_gb),
                    "windows_val": str(self.data.splits["val"].size),
                    "windows_test": str(self.data.splits["test"].size)},
            tags=tags, metrics={k: {e: m[k] for e, m in state.history.items() if k in m} for k in names},
            start_time_ms=None, last_update_ms=int(time.time() * 1000))
        findings = diagnose(history, thresholds, only=_live_rules())
        self.tracker.set_diagnosis(findings, thresholds)
        return findings

    def record_non_finite(self, exc: NonFiniteLoss) -> None:
        self.tracker.log_metrics(exc.metrics, step=exc.epoch)
        self.tracker.set_tags({"diagnosis": "non_finite_loss", "diagnosis.non_finite_loss": str(exc),
                               "stopped_by": "non_finite_loss"})

    def _print(self, epoch: int, m: dict, state: TrainState, findings: list) -> None:
        flags = ",".join(sorted(f.flag for f in findings)) or "ok"
        best = " *" if state.best_epoch == epoch else ""
        vram = f"  vram {m['vram_peak_gb']:.2f} GB" if "vram_peak_gb" in m else ""
        click.echo(
            f"epoch {epoch:>3}/{self.cfg.train.train_epochs}  train_loss {m['train_loss']:.4f}  val_loss "
            f"{m['val_loss']:.4f}  val_acc {m['val_accuracy']:.2%}  val_f1 {m['val_f1']:.3f}  val_mcc "
            f"{m['val_mcc']:+.3f}  test_acc {m['test_accuracy']:.2%}  lr {m['lr']:.2e}  "
            f"{m['epoch_time_s']:.1f} s{vram}  [{flags}]{best}")


def _live_rules() -> list[str]:
    """Every rule except dead_run (a run that is reporting epochs is alive by definition)."""
    from rain_mlflow.diagnostics.rules import RULES

    return [name for name in RULES if name != "dead_run"]


def _finish(tracker: Any, cfg: RunConfig, data: PreparedData, result: FitResult, workdir: Path) -> dict:
    """Summary metrics, figures, the registry-loadable model and the run description."""
    from rain_mlflow import plots

    state = result.state
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

    findings = tracker.current_diagnosis()
    note = _note(cfg, state, summary, result, findings)
    tracker.set_note(note)
    if model_id:
        tracker.set_tags({"model_id": model_id})
    click.echo(note)
    return {"run_id": tracker.run_id, "best_epoch": state.best_epoch, "stopped_by": result.stopped_by,
            "model_id": model_id, **{k: v for k, v in summary.items() if v is not None}}


def _log_serving_model(tracker: Any, data: PreparedData, best_path: Path) -> str:
    payload = checkpoint.load(best_path)
    example = gather(data.raw, data.splits["val"].ends[:2], data.window)  # raw windows (NaN = missing): the input
    return tracker.log_model(best_path, int(payload["window"]), len(data.columns), input_example=example,
                             step=int(payload["epoch"]))


def _note(cfg: RunConfig, state: TrainState, s: dict, result: FitResult, diagnosis: str) -> str:
    if not state.best_epoch:
        return f"{cfg.preset}: no epoch improved {cfg.train.early_stop_metric}; diagnosis {diagnosis}."
    ending = (f"stopped early by `{result.stopped_by}` after epoch {state.epoch}, saving about "
              f"{format_duration(result.time_saved_s)} of compute" if result.stopped_by else
              f"early-stopped after epoch {state.epoch} (patience {cfg.train.patience})" if result.early_stopped
              else f"ran all {state.epoch} epochs")
    mean_time = sum(h["epoch_time_s"] for h in state.history.values()) / len(state.history)
    best = state.history[state.best_epoch]
    windows = f"the {int(best['test_windows'])} test windows" if "test_windows" in best else "the test windows"
    against = baseline_verdict("test", {"f1": best["test_f1"], "mcc": best["test_mcc"]}, s, windows)
    return (f"{cfg.preset}: best epoch {state.best_epoch} by {cfg.train.early_stop_metric}: val F1 "
            f"{s['best_val_f1']:.3f} (always-rain {s['val_always_rain_f1']:.3f}), val accuracy "
            f"{s['best_val_accuracy']:.1%} (majority {s['val_majority_accuracy']:.1%}), test accuracy "
            f"{s['best_test_accuracy']:.1%}, val MCC {best['val_mcc']:+.3f}; {against}; "
            f"{ending}; {mean_time:.1f} s/epoch; diagnosis: {diagnosis}.")
