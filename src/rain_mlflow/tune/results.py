"""What a study leaves on its parent run and for the console: counts, time saved, the best trial, a trials table
and Optuna's figures. Computed from the whole study (every worker's trials), so the last worker to finish writes
the complete summary."""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import optuna.visualization.matplotlib as figures

from rain_mlflow import plots
from rain_mlflow.tracking.protocol import RunTracker
from rain_mlflow.tracking.runs import find_runs
from rain_mlflow.tune.study import STUDY_TAG, TRIAL_TAG, TuneConfig, trained

log = logging.getLogger(__name__)
FIGURES = ("optimization_history", "param_importances", "intermediate_values")


def summary(study: Any) -> dict[str, float]:
    """Parent-run metrics: trial counts by outcome, `pruned_<reason>` counts and the time each reason saved."""
    state = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if trained(t)]
    pruned = [t for t in done if t.state == state.PRUNED]
    out: dict[str, float] = {
        "n_trials": len(done), "n_complete": sum(t.state == state.COMPLETE for t in done),
        "n_pruned": len(pruned), "n_failed": sum(t.state == state.FAIL for t in done),
        "n_invalid": sum("invalid_config" in t.user_attrs for t in trials),
        "n_killed": sum(t.user_attrs.get("failed_by") == "killed" for t in trials),
        "time_saved_s": sum(float(t.user_attrs.get("time_saved_s", 0.0)) for t in pruned)}
    for reason, count in Counter(t.user_attrs.get("pruned_by", "unknown") for t in pruned).items():
        out[f"pruned_{reason}"] = count
        out[f"time_saved_s_{reason}"] = sum(float(t.user_attrs.get("time_saved_s", 0.0)) for t in pruned
                                            if t.user_attrs.get("pruned_by", "unknown") == reason)
    best = best_trial(study)
    if best is not None:
        out["best_value"] = float(best.value)
        out["best_trial"] = best.number
        out.update({f"best_trial.{k}": v for k, v in best.user_attrs.get("summary", {}).items()})
    return out


def best_trial(study: Any) -> Any:
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return study.best_trial if complete else None


def trial_runs(experiment_id: str, study_name: str) -> dict[int, str]:
    """trial number -> MLflow run id (the latest run of that trial number)."""
    runs = find_runs(experiment_id, f"tags.`{STUDY_TAG}` = '{study_name}' and tags.`{TRIAL_TAG}` != ''")
    return {int(r.data.tags[TRIAL_TAG]): r.info.run_id for r in runs if r.data.tags.get(TRIAL_TAG, "").isdigit()}


def trials_table(study: Any, runs: dict[int, str]) -> Any:
    frame = study.trials_dataframe(attrs=("number", "value", "state", "duration", "params", "user_attrs"))
    frame = frame.drop(columns=[c for c in ("user_attrs_worker", "user_attrs_summary") if c in frame.columns])
    frame["mlflow_run_id"] = frame["number"].map(lambda n: runs.get(int(n), ""))
    return frame


def record(tracker: RunTracker, study: Any, cfg: TuneConfig) -> tuple[dict[str, float], list[str]]:
    """Write the summary, best trial, trials.csv and figures onto the parent run; (the numbers, the trials table
    and summary as lines)."""
    numbers = summary(study)
    tracker.log_metrics(numbers, step=0)
    runs = trial_runs(tracker.experiment_id, cfg.study)
    best = best_trial(study)
    if best is not None:
        tracker.set_tags({"best_trial_run_id": runs.get(best.number, ""),
                          **{f"best.{k}": str(v) for k, v in best.params.items()}})
    frame = trials_table(study, runs)
    with tempfile.TemporaryDirectory(prefix="rain-mlflow-tune-") as tmp:
        path = Path(tmp) / "trials.csv"
        frame.to_csv(path, index=False)
        tracker.log_artifact(path)
    tracker.log_dict(cfg.space.to_dict(), "space.json")
    _figures(tracker, study)
    lines = _lines(study, numbers, runs, cfg)
    tracker.set_note(lines[-1])
    return numbers, lines


def _figures(tracker: RunTracker, study: Any) -> None:
    """Optuna's own matplotlib figures; one that cannot be drawn yet (too few trials) is skipped with a note."""
    for name in FIGURES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = getattr(figures, f"plot_{name}")(study)
            fig = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            tracker.log_figure(fig, f"plots/{name}.png")
            plots.close(fig)
        except Exception as exc:  # e.g. importances need two finished trials with different values
            log.info("figure %s not drawn: %s", name, " ".join(str(exc).split())[:200])


def _lines(study: Any, numbers: dict, runs: dict[int, str], cfg: TuneConfig) -> list[str]:
    """The trials table, then one summary sentence (also the parent run's note)."""
    lines = ["", f"{'trial':>5}  {'state':8} {cfg.metric:>9}  {'outcome':22} {'saved s':>8}  run"]
    for t in study.get_trials(deepcopy=False):
        value = f"{t.value:.4f}" if t.value is not None else "-"
        outcome = (t.user_attrs.get("pruned_by") or ("invalid config" if "invalid_config" in t.user_attrs else "")
                   or t.user_attrs.get("failed_by", "")[:22] or "")
        saved = f"{t.user_attrs['time_saved_s']:.1f}" if "time_saved_s" in t.user_attrs else "-"
        lines.append(f"{t.number:>5}  {t.state.name:8} {value:>9}  {outcome:22} {saved:>8}  "
                     f"{runs.get(t.number, '-')}")
    reasons = ", ".join(f"{k[len('pruned_'):]} {int(v)}" for k, v in sorted(numbers.items())
                        if k.startswith("pruned_"))
    text = (f"study {cfg.study}: {int(numbers['n_trials'])} trials trained ({int(numbers['n_complete'])} complete, "
            f"{int(numbers['n_pruned'])} pruned{': ' + reasons if reasons else ''}; {int(numbers['n_failed'])} "
            f"failed), {int(numbers['n_invalid'])} invalid combinations not trained; pruning saved about "
            f"{numbers['time_saved_s']:.0f} s of training")
    best = best_trial(study)
    if best is not None:
        text += (f". Best: trial {best.number}, {cfg.metric} {best.value:.4f}, run {runs.get(best.number, '-')} "
                 f"({', '.join(f'{k}={v}' for k, v in best.params.items())})")
    return [*lines, text]
