"""The study: an Optuna study whose trials are training runs, pruned by the live diagnosis or Optuna's pruner.

Each trial samples the space, builds its config (the config refuses invalid combinations: the trial is marked
failed as `invalid_config` and never trains), and calls `run_training` as `train` would, as a nested MLflow run
under the study's parent run, tagged `tune.study` and `tune.trial`. After every epoch the trial reports `--metric`
to Optuna; a flag listed in `--prune-on` stops the run at once (`stopped_by`, trial user attr `pruned_by`), and so
does Optuna's pruner (`optuna_pruner`). A non-finite loss ends that run FAILED as every run does and prunes the
trial as `non_finite_loss`; the study goes on. Each pruned trial records the time it saved: the epochs it did not
run times its mean epoch time.

Storage: Optuna's RDB storage, by default `optuna.db` beside the MLflow sqlite store. The same `--study` on the
same storage continues a study (a killed one included: its trials left RUNNING by a worker that is gone are
marked FAIL and their MLflow runs ended KILLED), and several processes on one storage share it.
"""

from __future__ import annotations

import datetime
import logging
import math
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import optuna
from sqlalchemy.exc import SQLAlchemyError

from rain_mlflow.config import RunConfig
from rain_mlflow.config.choices import PRUNERS as PRUNERS  # the pruners `_pruner` builds
from rain_mlflow.errors import ConfigError, UserError
from rain_mlflow.progress import SILENT, Progress
from rain_mlflow.tracking import liveness
from rain_mlflow.tracking.runs import find_runs
from rain_mlflow.tracking.tracker import end_stale_run
from rain_mlflow.train.loop import NonFiniteLoss
from rain_mlflow.train.run import TrainRequest, run_training
from rain_mlflow.tune.space import Space

log = logging.getLogger(__name__)
STUDY_TAG, TRIAL_TAG = "tune.study", "tune.trial"
DIRECTION: dict[str, Literal["minimize", "maximize"]] = {
    "val_loss": "minimize", "val_f1": "maximize", "val_accuracy": "maximize", "val_mcc": "maximize"}
JUST_STARTED_S = 300  # a RUNNING trial with no owner recorded yet is a peer's for this long
INVALID_LIMIT = 10  # x n_trials sampled configs the config refuses before the study gives up


@dataclass(frozen=True)
class TuneConfig:
    """What `tune` was asked: the fixed base config, the space and the study's settings."""

    base: RunConfig
    space: Space
    study: str
    storage: str
    n_trials: int
    timeout_s: float | None
    metric: str
    prune_on: tuple[str, ...]
    pruner: str
    experiment: str | None

    def __post_init__(self) -> None:
        if self.metric not in DIRECTION:
            raise ConfigError(f"metric must be one of {', '.join(DIRECTION)} (a validation metric: the search "
                              f"never looks at the test set); got {self.metric!r}")


class InvalidTrial(Exception):
    """The sampled combination is not a valid config: the trial fails without training."""


def default_storage(tracking: str) -> str:
    """`optuna.db` beside the MLflow sqlite store, else in the working directory."""
    if tracking.startswith("sqlite:///"):
        return f"sqlite:///{Path(tracking[len('sqlite:///'):]).parent / 'optuna.db'}"
    return f"sqlite:///{Path.cwd() / 'optuna.db'}"


def open_study(cfg: TuneConfig) -> Any:
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # we print each trial's outcome ourselves
    pruner = {"median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner,
              "none": optuna.pruners.NopPruner}[cfg.pruner]()
    try:
        storage = optuna.storages.RDBStorage(cfg.storage, engine_kwargs=_engine_kwargs(cfg.storage))
        study = optuna.create_study(study_name=cfg.study, storage=storage, load_if_exists=True, pruner=pruner,
                                    direction=DIRECTION[cfg.metric])
    except (SQLAlchemyError, ValueError, ImportError) as exc:
        raise UserError(f"storage must be a database URL Optuna can open (sqlite:///FILE, postgresql://...); got "
                        f"{cfg.storage!r} ({' '.join(str(exc).split())[:200]})") from None
    # Reproducible from the training seed; offset by the trials already there, so a continued study (or a second
    # worker started later) does not repeat the first worker's samples.
    study.sampler = optuna.samplers.TPESampler(seed=cfg.base.train.seed + len(study.trials))
    return study


def _engine_kwargs(url: str) -> dict:
    # sqlite: wait for another worker's write lock instead of failing at once
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}


def check_direction(study: Any, cfg: TuneConfig) -> None:
    wanted = optuna.study.StudyDirection.MINIMIZE if DIRECTION[cfg.metric] == "minimize" else \
        optuna.study.StudyDirection.MAXIMIZE
    if study.direction != wanted:
        raise UserError(f"metric must keep the direction study {cfg.study!r} was created with "
                        f"({study.direction.name.lower()}); got {cfg.metric!r}")


class Pruning:
    """The per-epoch hook of one trial: report the metric, then prune on a listed flag or Optuna's pruner."""

    def __init__(self, trial: Any, metric: str, prune_on: tuple[str, ...]):
        self.trial, self.metric, self.prune_on = trial, metric, prune_on
        self.epoch_times: list[float] = []
        self.values: dict[int, float] = {}             # the metric at each epoch
        self.reason: str | None = None

    def __call__(self, epoch: int, metrics: dict, findings: list) -> str | None:
        self.epoch_times.append(float(metrics.get("epoch_time_s", 0.0)))
        value = metrics.get(self.metric)
        if value is not None and math.isfinite(value):
            self.values[epoch] = float(value)
            self.trial.report(float(value), epoch)
        flagged = [f for f in findings if f.flag in self.prune_on]
        if flagged:
            self.reason = flagged[0].flag
        elif self.trial.should_prune():
            self.reason = "optuna_pruner"
        return self.reason


def objective(cfg: TuneConfig, progress: Progress = SILENT) -> Any:
    def run_trial(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", liveness.beat())  # who trains it: a later worker tells a kill from a peer
        values = cfg.space.sample(trial)
        try:
            run_cfg = cfg.base.with_overrides(**values)
        except ConfigError as exc:
            trial.set_user_attr("invalid_config", str(exc))
            progress.line(f"trial {trial.number} not trained (invalid combination): {exc}")
            raise InvalidTrial(str(exc)) from None
        run_cfg = replace(run_cfg, train=replace(run_cfg.train, stop_on=cfg.prune_on))
        progress.line(f"trial {trial.number} of study {cfg.study}: "
                      + ", ".join(f"{k}={_short(v)}" for k, v in values.items()))
        pruning = Pruning(trial, cfg.metric, cfg.prune_on)
        started = time.perf_counter()
        tags = {STUDY_TAG: cfg.study, TRIAL_TAG: str(trial.number)}
        try:
            result = run_training(run_cfg, TrainRequest(experiment=cfg.experiment,
                                                        run_name=f"{cfg.study} #{trial.number}", tags=tags,
                                                        on_epoch=pruning, progress=progress))
        except NonFiniteLoss as exc:
            # the run ended FAILED with `stopped_by` non_finite_loss (the contract); the study goes on
            spent = pruning.epoch_times or [(time.perf_counter() - started) / max(exc.epoch, 1)]
            remaining = run_cfg.train.train_epochs - exc.epoch + 1
            _pruned(trial, "non_finite_loss", remaining * sum(spent) / len(spent), exc.epoch, progress)
            raise optuna.TrialPruned("non_finite_loss") from None
        except KeyboardInterrupt:  # Ctrl-C / SIGTERM: the run ended KILLED; a continued study trains it again
            trial.set_user_attr("failed_by", "killed")
            raise
        except UserError as exc:  # out of memory, a bad file...: this trial failed, the next may not
            trial.set_user_attr("failed_by", " ".join(str(exc).split())[:500])
            progress.warn(f"trial {trial.number} failed: {' '.join(str(exc).split())}")
            raise
        progress.lines(result["lines"])
        trial.set_user_attr("mlflow_run_id", result["run_id"])
        trial.set_user_attr("summary", {k: v for k, v in result.items() if isinstance(v, (int, float))})
        if pruning.reason:
            _pruned(trial, pruning.reason, float(result.get("time_saved_s", 0.0)), result.get("epochs_completed"),
                    progress)
            raise optuna.TrialPruned(pruning.reason)
        # the metric at the epoch the trial's model is kept from (its best epoch by early_stop_metric)
        value = pruning.values.get(result["best_epoch"])
        if value is None:
            trial.set_user_attr("failed_by", f"no finite {cfg.metric} at its best epoch")
            raise UserError(f"trial {trial.number} has no finite {cfg.metric} at its best epoch")
        return value

    return run_trial


def _pruned(trial: Any, reason: str, saved_s: float, epochs: Any, progress: Progress) -> None:
    trial.set_user_attr("pruned_by", reason)
    trial.set_user_attr("time_saved_s", float(saved_s))
    progress.line(f"trial {trial.number} pruned by {reason} after epoch {epochs}, saving about {saved_s:.1f} s")


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def trained(trial: Any) -> bool:
    """A trial that counts towards --n-trials: it trained (not refused, not cut short by a kill)."""
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    return trial.state in states and "invalid_config" not in trial.user_attrs and \
        trial.user_attrs.get("failed_by") != "killed"


def enough(cfg: TuneConfig) -> Any:
    """Optuna callback: stop once the study (every worker together) has --n-trials trained trials."""
    def check(study: Any, _trial: Any) -> None:
        trials = study.get_trials(deepcopy=False)
        if sum(trained(t) for t in trials) >= cfg.n_trials:
            study.stop()
        elif sum("invalid_config" in t.user_attrs for t in trials) >= INVALID_LIMIT * cfg.n_trials:
            log.warning("study %s: %d sampled configs were invalid; stopping (narrow the space)", cfg.study,
                        INVALID_LIMIT * cfg.n_trials)
            study.stop()
    return check


def fail_stale_trials(study: Any, experiment_id: str, cfg: TuneConfig) -> list[int]:
    """Trials left RUNNING by a worker that is gone (killed): FAIL in Optuna, their MLflow runs ended KILLED."""
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        runs = find_runs(experiment_id, f"tags.`{STUDY_TAG}` = '{cfg.study}' and tags.`{TRIAL_TAG}` = "
                                        f"'{trial.number}'")
        beat = runs[-1].data.tags.get(liveness.HEARTBEAT_TAG) if runs else trial.user_attrs.get("worker")
        if beat is None and _age_s(trial) < JUST_STARTED_S:  # a peer between asking for a trial and saying so
            continue
        if liveness.owner_alive(beat):
            continue
        study._storage.set_trial_user_attr(trial._trial_id, "failed_by", "killed")
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        for run in runs:
            if run.info.status == "RUNNING":
                end_stale_run(run.info.run_id, "KILLED", {"killed_by": "gone", "failure_reason":
                              f"the tune worker of trial {trial.number} stopped (killed); the study continues"})
        failed.append(trial.number)
    return failed


def _age_s(trial: Any) -> float:
    start = trial.datetime_start
    return (datetime.datetime.now() - start).total_seconds() if start else 0.0


def optimize(study: Any, cfg: TuneConfig, progress: Progress = SILENT) -> None:
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if sum(trained(t) for t in study.get_trials(deepcopy=False)) >= cfg.n_trials:
        progress.line(f"study {cfg.study} already has {cfg.n_trials} trained trials; raise --n-trials to run more")
        return
    study.optimize(objective(cfg, progress), timeout=cfg.timeout_s, callbacks=[enough(cfg)],
                   catch=(InvalidTrial, UserError), gc_after_trial=True)
