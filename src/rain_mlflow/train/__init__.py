"""`train`: validate everything, then one tracked run around the loop in `loop.py`.

Order matters for the user: config, data, device and the pretrained checkpoint are all checked BEFORE an MLflow
run is created, so a bad parameter costs no run and leaves nothing RUNNING. Then the run records what DESIGN.md
"What a training run records" lists: params, per-epoch metrics at step = epoch, confusion matrices, checkpoints,
figures, the cleaning report, the dataset digest, the live diagnosis tags and a summary note.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import torch

from rain_mlflow.config import RunConfig
from rain_mlflow.data import accounting, load_clean
from rain_mlflow.data.dataset import PreparedData, prepare, resolve
from rain_mlflow.data.windows import gather
from rain_mlflow.diagnostics.rules import format_duration
from rain_mlflow.errors import UserError
from rain_mlflow.model import load_pretrained_backbone
from rain_mlflow.model.factory import build_classifier
from rain_mlflow.train import checkpoint
from rain_mlflow.train.estimate import estimate
from rain_mlflow.train.loop import FitResult, NonFiniteLoss, TrainState, fit
from rain_mlflow.train.baselines import prepared_baselines, skill
from rain_mlflow.train.baselines import verdict as baseline_verdict
from rain_mlflow.train.precision import Precision, select_device, select_precision

log = logging.getLogger(__name__)
# Settings a resumed run may change: they do not alter the model, the data or the optimisation path so far.
RESUMABLE_OVERRIDES = ("train_epochs", "patience", "stop_on", "device", "amp", "data")


def run_training(cfg: RunConfig | None, overrides: dict[str, Any] | None = None, resume: str | None = None,
                 dry_run: bool = False, experiment: str | None = None, run_name: str | None = None) -> dict:
    """Train (or resume, or dry-run) and return a small summary dict (run id, best epoch, metrics)."""
    from rain_mlflow.tracking import connect

    resume_payload = None
    if resume:
        connect(experiment, run_id=resume)
        cfg, resume_payload = _resume_source(resume, overrides or {})
    assert cfg is not None
    raw, cleaned = load_clean(cfg.data)
    cfg = resolve(cfg, cleaned)
    data = prepare(cleaned, cfg)
    device = select_device(cfg.train.device)
    precision = select_precision(cfg.train.amp, device)
    torch.manual_seed(cfg.train.seed)
    model = build_classifier(cfg, data.n_vars)
    pretrained = None
    if cfg.model.pretrain_model_path and resume_payload is None:
        pretrained = load_pretrained_backbone(model.backbone, cfg.model.pretrain_model_path)
    model.to(device)
    if dry_run:
        return _dry_run(cfg, data, cleaned.report, model, precision)
    if not resume:
        connect(experiment)
    return _tracked_run(cfg, data, raw, cleaned.report, model, precision, pretrained, resume, resume_payload,
                        run_name)


def _tracked_run(cfg: RunConfig, data: PreparedData, raw: Any, clean_report: dict, model: torch.nn.Module,
                 precision: Precision, pretrained: dict | None, resume: str | None,
                 resume_payload: dict | None, run_name: str | None) -> dict:
    from rain_mlflow.tracking import Tracker

    with tempfile.TemporaryDirectory(prefix="rain-mlflow-") as tmp, Tracker.start(
            "train", run_name=run_name or cfg.preset, resume_run_id=resume, system_metrics=True,
            tags={"preset": cfg.preset}) as tracker:
        workdir = Path(tmp)
        epochs = EpochTracker(tracker, cfg, data)
        if resume_payload is None:
            _record_setup(tracker, cfg, data, raw, clean_report, model, precision, pretrained)
        else:
            _check_same_data(tracker, raw, clean_report)
            epochs.catch_up(TrainState.from_dict(resume_payload["train_state"]))
            tracker.download_artifact("checkpoints/best.pt", str(workdir))
            click.echo(f"resuming run {resume} after epoch {resume_payload['train_state']['epoch']}")
        click.echo(f"MLflow run {tracker.run_id} ({cfg.preset}, {precision.device.type}, {precision.name})")
        try:
            result = fit(cfg, data, model, precision, workdir, epochs, resume=resume_payload,
                         run_id=tracker.run_id)
        except NonFiniteLoss as exc:
            epochs.record_non_finite(exc)
            raise
        return _finish(tracker, cfg, data, result, workdir)


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
              **data.class_counts()}
    if pretrained:
        params["pretrained_tensors"] = pretrained.get("n_tensors")
    tracker.log_params(params)
    digest = tracker.log_input(raw, source=clean_report["source"], name="station-data", context="training")
    tracker.set_tags({"data_digest": digest, "diagnosis": "ok"})
    tracker.log_dict({**cfg.to_dict(), "effective_seq_len": data.window, "features": list(data.features)},
                     "config.json")
    tracker.log_dict({**clean_report, "windows": data.accounting}, "cleaning_report.json")
    for note in data.notes:
        tracker.set_tags({"warning.seq_len": note})


def _check_same_data(tracker: Any, raw: Any, clean_report: dict) -> None:
    import mlflow

    expected = tracker.client.get_run(tracker.run_id).data.tags.get("data_digest")
    digest = mlflow.data.from_pandas(raw, name="station-data").digest
    if expected and digest != expected:
        raise UserError(f"the data {clean_report['source']!r} differs from the data run {tracker.run_id} started "
                        f"with (digest {digest} vs {expected}); resume needs the same data")


class EpochTracker:
    """The per-epoch callback of `fit`: log, print, diagnose live, and say whether a stop rule fired."""

    def __init__(self, tracker: Any, cfg: RunConfig, data: PreparedData):
        self.tracker, self.cfg, self.data = tracker, cfg, data
        self.run_name = cfg.preset

    def __call__(self, epoch: int, metrics: dict, state: TrainState, files: dict) -> str | None:
        for path in files.values():
            self.tracker.log_artifact(path, "checkpoints")
        self._log_epoch(epoch, metrics, state)
        findings = self.diagnose(state)
        self._print(epoch, metrics, state, findings)
        stop = [f for f in findings if f.flag in self.cfg.train.stop_on]
        if stop:
            first = stop[0]
            self.tracker.set_tags({"stopped_by": first.flag})
            click.echo(f"stopping: {first.flag}: {first.evidence}")
            return first.flag
        return None

    def catch_up(self, state: TrainState) -> None:
        """Log the epochs a kill interrupted between checkpoint and metrics (each epoch exactly once)."""
        logged = self.tracker.logged_steps("val_loss")
        for epoch in sorted(state.history):
            if epoch not in logged:
                self._log_epoch(epoch, state.history[epoch], state)

    def _log_epoch(self, epoch: int, metrics: dict, state: TrainState) -> None:
        self.tracker.log_dict(state.confusions[epoch], f"confusion_matrices/epoch_{epoch:03d}.json")
        self.tracker.log_metrics(metrics, step=epoch)

    def diagnose(self, state: TrainState) -> list:
        from rain_mlflow.diagnostics.history import RunHistory
        from rain_mlflow.diagnostics.rules import diagnose

        names = sorted({k for m in state.history.values() for k in m})
        history = RunHistory(
            run_id=self.tracker.run_id, run_name=self.run_name, status="RUNNING",
            params={"vram_budget_gb": str(self.cfg.train.vram_budget_gb),
                    "windows_val": str(self.data.splits["val"].size)},
            metrics={k: {e: m[k] for e, m in state.history.items() if k in m} for k in names},
            start_time_ms=None, last_update_ms=int(time.time() * 1000))
        findings = diagnose(history, only=_live_rules())
        self.tracker.set_diagnosis(findings)
        return findings

    def record_non_finite(self, exc: NonFiniteLoss) -> None:
        self.tracker.log_metrics({"train_loss": math.nan}, step=exc.epoch)
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
    from rain_mlflow.model.factory import rain_model_from_payload

    payload = checkpoint.load(best_path)
    model, _ = rain_model_from_payload(payload)
    example = gather(data.raw, data.splits["val"].ends[:2], data.window)  # raw windows: what the model takes
    return tracker.log_model(model, input_example=example, step=int(payload["epoch"]))


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


def _resume_source(run_id: str, overrides: dict[str, Any]) -> tuple[RunConfig, dict]:
    """The config and last.pt of a run to continue; refuses changes that would alter what already ran."""
    from rain_mlflow.tracking import Tracker, find_run

    run = find_run(run_id)
    if run.data.tags.get("rain.step") != "train":
        raise UserError(f"run {run_id} is not a training run (rain.step={run.data.tags.get('rain.step')!r})")
    if run.info.status == "FINISHED":
        raise UserError(f"run {run_id} already FINISHED; nothing to resume (train a new run instead)")
    blocked = sorted(set(overrides) - set(RESUMABLE_OVERRIDES))
    if blocked:
        raise UserError(f"cannot change {blocked[0]} when resuming run {run_id}; a resumed run may only change "
                        f"{', '.join(RESUMABLE_OVERRIDES)}")
    tmp = tempfile.mkdtemp(prefix="rain-mlflow-resume-")
    try:
        path = Tracker.download_run_artifact(run_id, "checkpoints/last.pt", tmp)
    except Exception:
        raise UserError(f"run {run_id} has no checkpoints/last.pt to resume from (it did not finish an epoch)") \
            from None
    payload = checkpoint.load(path, checkpoint.LAST_FORMAT)
    cfg = checkpoint.config_of(payload).with_overrides(**overrides)
    if payload["train_state"]["epoch"] >= cfg.train.train_epochs:
        raise UserError(f"run {run_id} already completed {payload['train_state']['epoch']} of "
                        f"{cfg.train.train_epochs} epochs; pass a larger --train-epochs to continue it")
    return cfg, payload


def _dry_run(cfg: RunConfig, data: PreparedData, report: dict, model: torch.nn.Module,
             precision: Precision) -> dict:
    est = estimate(model, data, cfg.train.batch_size, precision)
    echo = click.echo
    echo(f"preset {cfg.preset}: resolved settings")
    for key, value in cfg.flat().items():
        echo(f"  {key:22} {value}")
    echo(f"data: {report['source']}: {report['steps']} steps of {report['freq']} ({report['start']} .. "
         f"{report['end']}), features {', '.join(data.features)}")
    for name, split in data.splits.items():
        echo(f"  {name:5} {split.size:>7} windows  rain {split.rain:>7} ({split.rain / split.size:.1%})  "
             f"no rain {split.no_rain:>7}  majority share {split.majority_share:.1%}")
    for line in accounting.lines(data.accounting):
        echo(line)
    if data.policy and data.policy.indicators:
        echo(f"  missing inputs: training mean plus indicator variable(s) {', '.join(data.policy.indicators)}")
    for note in data.notes:
        echo(f"  note: {note}")
    echo(f"model: {est.n_params:,} parameters ({est.n_trainable:,} trainable); window {data.window} steps = "
         f"{data.window // cfg.model.input_token_len} tokens x {data.n_vars} variables = {est.tokens_per_sample} "
         f"tokens per sample")
    echo(f"device: {precision.device}, precision {precision.name}")
    echo(f"training memory (VRAM on a GPU), batch {cfg.train.batch_size}: {est.vram_gb:.2f} GB, {est.vram_basis}")
    echo(f"  = weights {est.weights_gb:.2f} + AdamW {est.optimizer_gb:.2f} + max(activations "
         f"{est.activations_gb:.2f}, gradients {est.gradients_gb:.2f}) GB, + 5 % (GB = 2^30 bytes)")
    budget = cfg.train.vram_budget_gb
    if budget:
        verdict = "within" if est.vram_gb <= budget else "OVER"
        echo(f"  budget {budget:g} GB: {verdict} budget")
    echo(f"epoch time on {precision.device.type} ({precision.name}): {format_duration(est.epoch_time_s)} "
         f"({est.steps_per_epoch} steps of {est.step_time_s:.3f} s + evaluation); "
         f"{cfg.train.train_epochs} epochs at most: {format_duration(est.epoch_time_s * cfg.train.train_epochs)}")
    return {"dry_run": True, "vram_gb": est.vram_gb, "epoch_time_s": est.epoch_time_s, "n_params": est.n_params,
            "tokens_per_sample": est.tokens_per_sample, **data.class_counts()}
