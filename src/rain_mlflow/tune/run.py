"""`rain-mlflow tune`: check what every trial needs, open (or continue) the study, run the trials under one parent
MLflow run, and record the study's summary on it."""

from __future__ import annotations

import os
from typing import Any

from rain_mlflow import weights
from rain_mlflow.data.source import load_clean
from rain_mlflow.progress import SILENT, Progress
from rain_mlflow.tracking import ui
from rain_mlflow.tracking.experiments import connect
from rain_mlflow.tracking.runs import find_runs
from rain_mlflow.tracking.store import shown, tracking_uri
from rain_mlflow.tracking.tracker import Tracker
from rain_mlflow.tune import results
from rain_mlflow.tune.study import (DIRECTION, STUDY_TAG, TuneConfig, check_direction, fail_stale_trials, open_study,
                                    optimize)


def run_tune(cfg: TuneConfig, progress: Progress = SILENT) -> dict[str, Any]:
    """Run (or continue) the study: the parent run id, the summary numbers and the `lines` the command prints
    at the end (the trials table); the trials' own lines go to `progress` as they train."""
    load_clean(cfg.base.data)  # a bad data file fails here, before the study or a run exists
    source = weights.parse(cfg.base.model.pretrain_model_path)
    if source is not None:  # found (downloaded once) and verified before the study, not in every trial
        weights.fetch(source)
    experiment_id = connect(cfg.experiment)
    study = open_study(cfg)
    check_direction(study, cfg)
    stale = fail_stale_trials(study, experiment_id, cfg)
    if stale:
        progress.line(f"study {cfg.study}: trials {', '.join(map(str, stale))} were left running by a worker that "
                      "is gone; marked failed, their runs ended KILLED")
    parent = None
    if not os.environ.get("MLFLOW_RUN_ID"):  # under `mlflow run` the launched run is the parent
        found = find_runs(experiment_id, f"tags.`{STUDY_TAG}` = '{cfg.study}' and tags.`rain.step` = 'tune'")
        parent = found[0].info.run_id if found else None
    with Tracker.start("tune", run_name=f"tune {cfg.study}", resume_run_id=parent,
                       tags={STUDY_TAG: cfg.study}) as tracker, tracker.keep_alive():
        tracker.log_params({"study": cfg.study, "storage": shown(cfg.storage), "metric": cfg.metric,
                            "direction": DIRECTION[cfg.metric], "pruner": cfg.pruner,
                            "prune_on": ",".join(cfg.prune_on), "n_trials": cfg.n_trials,
                            "preset": cfg.base.preset, "space": cfg.space.source})
        verb = "continuing" if parent else "starting"
        progress.line(f"{verb} study {cfg.study} ({len(study.trials)} trials so far) in {shown(cfg.storage)}; "
                      f"parent MLflow run {tracker.run_id}")
        progress.lines(ui.links_block(tracking_uri(), [("study run", ui.run_url("", experiment_id,
                                                                                  tracker.run_id))]).splitlines())
        optimize(study, cfg, progress)
        numbers, lines = results.record(tracker, study, cfg)
        return {"run_id": tracker.run_id, **numbers, "lines": lines}
