"""The words a training run leaves: one line per epoch while it trains, and its description when it ends (the
MLflow note, `mlflow.note.content`)."""

from __future__ import annotations

from rain_mlflow.config import RunConfig
from rain_mlflow.diagnostics.rules import Finding
from rain_mlflow.diagnostics.text import format_duration
from rain_mlflow.train.baselines import verdict as baseline_verdict
from rain_mlflow.train.loop import FitResult, TrainState


def epoch_line(cfg: RunConfig, epoch: int, m: dict[str, float], state: TrainState, findings: list[Finding]) -> str:
    """The epoch's progress line: losses, scores, LR, time, the live diagnosis, `*` on the best epoch."""
    flags = ",".join(sorted(f.flag for f in findings)) or "ok"
    best = " *" if state.best_epoch == epoch else ""
    vram = f"  vram {m['vram_peak_gb']:.2f} GB" if "vram_peak_gb" in m else ""
    return (f"epoch {epoch:>3}/{cfg.train.train_epochs}  train_loss {m['train_loss']:.4f}  val_loss "
            f"{m['val_loss']:.4f}  val_acc {m['val_accuracy']:.2%}  val_f1 {m['val_f1']:.3f}  val_mcc "
            f"{m['val_mcc']:+.3f}  test_acc {m['test_accuracy']:.2%}  lr {m['lr']:.2e}  "
            f"{m['epoch_time_s']:.1f} s{vram}  [{flags}]{best}")


def run_note(cfg: RunConfig, state: TrainState, s: dict, result: FitResult, diagnosis: str) -> str:
    """The run's description: its best epoch against the baselines, how it ended, time per epoch, diagnosis."""
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
