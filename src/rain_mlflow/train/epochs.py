"""`EpochTracker`, the per-epoch callback of `fit`: send the checkpoints, log the epoch, diagnose it live, say it,
and tell the loop whether a stop rule fired."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from rain_mlflow.config import RunConfig
from rain_mlflow.data.dataset import PreparedData
from rain_mlflow.diagnostics.history import RunHistory
from rain_mlflow.diagnostics.rules import RULES, Finding, diagnose
from rain_mlflow.diagnostics.thresholds import THRESHOLDS_TAG, Thresholds
from rain_mlflow.errors import ConfigError
from rain_mlflow.progress import SILENT, Progress
from rain_mlflow.tracking.protocol import RunTracker
from rain_mlflow.train.loop import NonFiniteLoss, TrainState
from rain_mlflow.train.note import epoch_line

log = logging.getLogger(__name__)
EpochHook = Callable[[int, dict, list], "str | None"]  # (epoch, metrics, live findings) -> reason to stop
# Every rule except dead_run: a run that is reporting epochs is alive by definition.
LIVE_RULES = [name for name in RULES if name != "dead_run"]


class EpochTracker:
    """The per-epoch callback of `fit`: log, print, diagnose live, and say whether a stop rule fired."""

    def __init__(self, tracker: RunTracker, cfg: RunConfig, data: PreparedData, hook: EpochHook | None = None,
                 progress: Progress = SILENT):
        self.tracker, self.cfg, self.data, self.hook, self.progress = tracker, cfg, data, hook, progress
        self.run_name = cfg.preset
        self.completed = 0                               # the last epoch whose checkpoints are in the store
        self.sent: dict[str, tuple[int, int]] = {}       # checkpoint name -> (mtime_ns, size) last uploaded

    def __call__(self, epoch: int, metrics: dict, state: TrainState, files: dict) -> str | None:
        for path in files.values():
            self._send(Path(path))
        self.completed = epoch
        self._log_epoch(epoch, metrics, state)
        findings = self.diagnose(state)
        self.progress.line(epoch_line(self.cfg, epoch, metrics, state, findings))
        reason = self.hook(epoch, metrics, findings) if self.hook else None
        if reason:  # the caller's own rule (e.g. Optuna's pruner)
            self.tracker.set_tags({"stopped_by": reason})
            self.progress.line(f"stopping: {reason}")
            return reason
        stop = [f for f in findings if f.flag in self.cfg.train.stop_on]
        if stop:
            first = stop[0]
            self.tracker.set_tags({"stopped_by": first.flag})
            self.progress.line(f"stopping: {first.flag}: {first.evidence}")
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

    def diagnose(self, state: TrainState) -> list[Finding]:
        """The rules after this epoch, with the thresholds stored on the run (a `compare --<threshold>` while it
        trains, or the first session's before a resume), else the defaults; the window counts give the noise
        floor."""
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
        findings = diagnose(history, thresholds, only=LIVE_RULES)
        self.tracker.set_diagnosis(findings, thresholds)
        return findings

    def record_non_finite(self, exc: NonFiniteLoss) -> None:
        self.tracker.log_metrics(exc.metrics, step=exc.epoch)
        self.tracker.set_tags({"diagnosis": "non_finite_loss", "diagnosis.non_finite_loss": str(exc),
                               "stopped_by": "non_finite_loss"})
