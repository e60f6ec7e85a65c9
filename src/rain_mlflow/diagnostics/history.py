"""`RunHistory`: one training run's per-epoch metrics, params and tags, as plain Python values.

The rules read nothing else. Two producers build it: the offline reader (`rain_mlflow.compare`, from MLflow in
bulk) and the trainer (in memory, after every epoch, for live diagnosis). So this module imports no MLflow and
construction is just the dataclass constructor (plus `with_epoch` for the live, one-epoch-at-a-time case).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

# MLflow stores +/-inf as +/-sys.float_info.max (1.7976931348623157e308); anything this large is infinite to us.
INF_SENTINEL = 1e308


def is_finite(value: float) -> bool:
    """False for NaN, +/-inf and MLflow's stand-in for inf (abs(value) >= 1e308)."""
    return -INF_SENTINEL < value < INF_SENTINEL  # NaN fails every comparison


def normalise(value: float) -> float:
    """Map MLflow's stand-in for +/-inf back to +/-inf; leave every other value unchanged."""
    if not math.isnan(value) and abs(value) >= INF_SENTINEL:
        return math.copysign(math.inf, value)
    return value


@dataclass(frozen=True)
class RunHistory:
    """What the diagnosis rules may know about one run.

    `metrics` holds per-epoch metrics only (metric -> {epoch: value}, epochs counted from 1; the reader turns
    whatever steps the run logged into these epochs, see docs/diagnostics.md "Which epochs");
    `summary` holds run-level values: the end-of-run metrics the trainer logs at step 0 (`best_epoch`,
    `val_always_rain_f1`, ...) and the latest `val_windows` / `test_windows`.
    `notes` says how a metric was read when that was not verbatim (metric -> note, e.g. percent read as /100);
    the rules append the note to the evidence of every finding that used the metric.
    Times are Unix epoch milliseconds, as MLflow reports them.
    """

    run_id: str
    run_name: str
    status: str  # MLflow run status: RUNNING, FINISHED, FAILED, KILLED, SCHEDULED
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, dict[int, float]] = field(default_factory=dict)
    summary: dict[str, float] = field(default_factory=dict)
    start_time_ms: int | None = None
    last_update_ms: int | None = None  # timestamp of the most recent per-epoch metric; None before epoch 1
    notes: dict[str, str] = field(default_factory=dict)

    def epochs(self) -> list[int]:
        """Sorted epochs that have a validation result (val_accuracy or val_loss)."""
        present = set(self.metrics.get("val_accuracy", {})) | set(self.metrics.get("val_loss", {}))
        return sorted(present)

    def series(self, name: str) -> list[tuple[int, float]]:
        """(epoch, value) pairs of one per-epoch metric, sorted by epoch; empty when the metric is absent."""
        return sorted(self.metrics.get(name, {}).items())

    def value_at(self, name: str, epoch: int | None) -> float | None:
        """The metric's value at one epoch, or None when it was not logged there."""
        if epoch is None:
            return None
        return self.metrics.get(name, {}).get(epoch)

    def param_float(self, name: str) -> float | None:
        """A param parsed as a float; None when absent or not a number (e.g. the string 'None')."""
        raw = self.params.get(name)
        if raw is None:
            return None
        try:
            return float(raw)
        except ValueError:
            return None

    def param_int(self, name: str) -> int | None:
        """A param parsed as an int ('6025' or '6025.0'); None when absent, not a number or not integral."""
        value = self.param_float(name)
        if value is None or not math.isfinite(value) or value != int(value):
            return None
        return int(value)

    def eval_windows(self, split: str, epoch: int | None = None) -> int | None:
        """How many windows `split` ('val' or 'test') was evaluated on: the metric `<split>_windows` at `epoch`
        (else its latest value), else the older runs' param `windows_<split>`; None when unknown."""
        name = f"{split}_windows"
        per_epoch = self.metrics.get(name, {})
        candidates = (per_epoch.get(epoch) if epoch is not None else None,
                      per_epoch[max(per_epoch)] if per_epoch else None, self.summary.get(name))
        for value in candidates:
            if value is not None and is_finite(value) and value >= 1 and value == int(value):
                return int(value)
        from_param = self.param_int(f"windows_{split}")
        return from_param if from_param is not None and from_param >= 1 else None

    def with_epoch(self, epoch: int, values: Mapping[str, float], timestamp_ms: int | None = None) -> RunHistory:
        """A copy with one more epoch of metrics (the live trainer's path); the original is left unchanged."""
        if epoch < 1:
            raise ValueError(f"epoch must be >= 1 (MLflow step = epoch, starting at 1); got {epoch}")
        metrics = {name: dict(points) for name, points in self.metrics.items()}
        for name, value in values.items():
            metrics.setdefault(name, {})[epoch] = float(value)
        last_update = timestamp_ms if timestamp_ms is not None else self.last_update_ms
        return dataclasses.replace(self, metrics=metrics, last_update_ms=last_update)
