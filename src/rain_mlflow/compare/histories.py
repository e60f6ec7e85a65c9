"""From raw MLflow records (`tracking.readers.RawRun`) to `RunHistory`: which runs are diagnosed, under which
names, at which epochs.

Pure functions over plain data (no MLflow import), so every reading rule is tested without a store:

- **Which runs**: every run with a per-epoch `val_accuracy` or `val_loss` (after the metric map), whoever logged
  it, except the runs this package's other steps make (tag `rain.step` in `OTHER_STEPS`).
- **Which names**: `--metric-map` renames a run's metrics to ours (`val_acc=val_accuracy`, or the built-in maps
  `lightning` and `openltm`). A name the run already logs under our spelling is never overridden.
- **Which epochs**: runs made by `train` or `import-log` log step = epoch from 1 and their end-of-run summary at
  step 0, which is not an epoch. Any other run: when it logs an `epoch` metric (Lightning does, next to every
  metric, at the training step), a point's epoch is that metric's value at the point's step; otherwise the step
  is the epoch. Either way a count that starts at 0 is shifted to start at 1.
- **Percent**: an accuracy-like metric with a value above 1 (and none above 100) was logged in percent; it is
  read as value / 100 and every finding that uses it says so.
When an epoch was logged more than once (a resumed run), the value with the latest timestamp wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from rain_mlflow.diagnostics.history import RunHistory, is_finite, normalise
from rain_mlflow.diagnostics.rules import RULE_METRICS
from rain_mlflow.diagnostics.history import INF_SENTINEL
from rain_mlflow.errors import UserError
from rain_mlflow.tracking.readers import RawRun

STEP_TAG = "rain.step"
OURS = frozenset({"train", "import"})  # step = epoch from 1; step 0 holds end-of-run summaries
# This package's runs that hold no training history: never diagnosed (`tune` is the parent of a study).
OTHER_STEPS = frozenset({"clean", "test", "compare", "promote", "main", "synth", "resume", "tune", "import-log"})
HISTORY_METRICS = RULE_METRICS + ("val_f1",)  # rules + the table's best val F1
WINDOW_METRICS = ("val_windows", "test_windows")  # the same at every epoch: the latest value is enough
SUMMARY_METRICS = (
    "best_epoch", "best_val_loss", "best_val_accuracy", "best_val_f1",
    "val_always_rain_f1", "test_always_rain_f1", "val_majority_accuracy", "test_majority_accuracy",
)
FRACTION_METRICS = ("val_accuracy", "test_accuracy", "val_f1", "val_pred_rain_fraction")
EPOCH_METRIC = "epoch"

BUILTIN_MAPS: dict[str, dict[str, str]] = {
    # Lightning: `self.log("val_acc", ...)`; `on_epoch=True` with `on_step=True` adds the `_epoch` suffix.
    "lightning": {"val_acc": "val_accuracy", "val_acc_epoch": "val_accuracy", "test_acc": "test_accuracy",
                  "test_acc_epoch": "test_accuracy", "val_loss_epoch": "val_loss", "train_loss_epoch": "train_loss",
                  "valid_acc": "val_accuracy", "valid_loss": "val_loss", "val_f1_epoch": "val_f1"},
    # OpenLTM's printed labels in snake case ("Vali Loss", "Test Loss", "cost time"), as notebooks log them.
    "openltm": {"vali_loss": "val_loss", "vali_acc": "val_accuracy", "vali_accuracy": "val_accuracy",
                "val_acc": "val_accuracy", "test_acc": "test_accuracy", "cost_time": "epoch_time_s"},
}
MAP_TARGETS = HISTORY_METRICS + WINDOW_METRICS


def parse_metric_map(spec: str | Iterable[str] | None) -> dict[str, str]:
    """`lightning`, `openltm` and `SOURCE=TARGET` items, comma-separated, into one source -> target map (later
    items win). Targets must be names compare reads; anything else is a UserError naming the item."""
    items = [spec] if isinstance(spec, str) or spec is None else list(spec)
    out: dict[str, str] = {}
    for item in (part.strip() for text in items for part in (text or "").split(",")):
        if not item:
            continue
        if item in BUILTIN_MAPS:
            out.update(BUILTIN_MAPS[item])
            continue
        source, sep, target = (s.strip() for s in item.partition("="))
        if not sep or not source or not target:
            raise UserError(f"--metric-map item must be SOURCE=TARGET or one of {', '.join(BUILTIN_MAPS)}; "
                            f"got {item!r}")
        if target not in MAP_TARGETS:
            raise UserError(f"--metric-map target must be one of {', '.join(MAP_TARGETS)}; got {target!r} "
                            f"(in {item!r})")
        out[source] = target
    return out


@dataclass(frozen=True)
class ReadRun:
    """A run ready for the rules: its history, how its epochs were read and hints for metrics it lacks."""

    history: RunHistory
    epochs_from: str
    metric_map: dict[str, str]
    hints: dict[str, str]
    experiment_id: str = ""  # for the UI links `compare` prints


def logged_by_us(run: RawRun) -> bool:
    """Made by `train` or `import-log`: step = epoch from 1, step 0 holds end-of-run summaries."""
    return run.tags.get(STEP_TAG) in OURS


def names_for(run: RawRun, metric_map: Mapping[str, str], wanted: Iterable[str]) -> dict[str, str]:
    """Our name -> the run's own name, for every wanted metric the run has (its own spelling first)."""
    out = {name: name for name in wanted if name in run.latest}
    for source, target in metric_map.items():
        if target in wanted and target not in out and source in run.latest:
            out[target] = source
    return out


def is_diagnosable(run: RawRun, metric_map: Mapping[str, str]) -> bool:
    """Not another step of this package, and a val_accuracy or val_loss (after the map) to read."""
    if run.tags.get(STEP_TAG) in OTHER_STEPS:
        return False
    return bool(names_for(run, metric_map, ("val_accuracy", "val_loss")))


def keys_to_read(run: RawRun, metric_map: Mapping[str, str], wanted: Iterable[str]) -> set[str]:
    """The run's own metric names whose histories must be read (plus `epoch` for runs that are not ours)."""
    keys = set(names_for(run, metric_map, wanted).values())
    if not logged_by_us(run) and EPOCH_METRIC in run.latest:
        keys.add(EPOCH_METRIC)
    return keys


def build(run: RawRun, metric_map: Mapping[str, str], wanted: Iterable[str]) -> ReadRun:
    """The run's RunHistory: our names, epochs from 1, percentages read as fractions (module docstring)."""
    names = names_for(run, metric_map, wanted)
    epoch_of, epochs_from = _epoch_axis(run, names.values())
    metrics: dict[str, dict[int, float]] = {}
    last_update = None
    for ours, theirs in names.items():
        points = sorted(run.points.get(theirs, ()))  # logging order: (timestamp, step)
        by_epoch = {}
        for _, step, value in points:  # a re-logged epoch ends with its latest value
            epoch = epoch_of(step)
            if epoch is not None:
                by_epoch[epoch] = value if -INF_SENTINEL < value < INF_SENTINEL else normalise(value)
        if points:
            last_update = max(last_update or 0, points[-1][0])
        if by_epoch:
            metrics[ours] = dict(sorted(by_epoch.items()))
    notes = {}
    for name in FRACTION_METRICS:
        values = [v for v in metrics.get(name, {}).values() if is_finite(v)]
        if values and 1 < max(values) <= 100:
            metrics[name] = {epoch: value / 100 for epoch, value in metrics[name].items()}
            notes[name] = f"{names[name]} logged in percent (up to {max(values):g}), read as value / 100"
    summary = {k: normalise(run.latest[names.get(k, k)]) for k in WINDOW_METRICS if names.get(k, k) in run.latest}
    if logged_by_us(run):
        summary |= {k: normalise(v) for k, v in run.latest.items() if k in SUMMARY_METRICS}
    history = RunHistory(run_id=run.run_id, run_name=run.run_name or run.run_id, status=run.status,
                         params=dict(run.params), tags=dict(run.tags), metrics=metrics, summary=summary,
                         start_time_ms=run.start_time_ms, last_update_ms=last_update, notes=notes)
    used = {theirs: ours for ours, theirs in names.items() if theirs != ours}
    return ReadRun(history, epochs_from, used, _hints(run, names, wanted), run.experiment_id)


def _epoch_axis(run: RawRun, keys: Iterable[str]):
    """(step -> epoch or None, description) for this run (module docstring, "Which epochs")."""
    if logged_by_us(run):
        return (lambda step: step if step >= 1 else None), "step (step 0 holds the run's summary)"
    epochs = {step: value for _, step, value in sorted(run.points.get(EPOCH_METRIC, []))
              if is_finite(value) and value == int(value) and value >= 0}
    if epochs:
        shift = 1 if min(epochs.values()) == 0 else 0
        return ((lambda step: int(epochs[step]) + shift if step in epochs else None),
                "the logged epoch metric" + (" + 1 (counted from 0)" if shift else ""))
    steps = [step for key in keys for _, step, _ in run.points.get(key, ())]
    shift = 1 if steps and min(steps) == 0 else 0
    return ((lambda step: step + shift if step + shift >= 1 else None),
            "step + 1 (steps counted from 0)" if shift else "step")


def _hints(run: RawRun, names: Mapping[str, str], wanted: Iterable[str]) -> dict[str, str]:
    """For a metric the run lacks under any name: the built-in map that would read a metric it has."""
    hints = {}
    for target in wanted:
        if target in names:
            continue
        for map_name, mapping in BUILTIN_MAPS.items():
            sources = [s for s, t in mapping.items() if t == target and s in run.latest]
            if sources:
                hints[target] = f"the run logs {sources[0]}: --metric-map {map_name} reads it"
                break
    return hints
