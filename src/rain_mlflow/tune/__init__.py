"""`tune`: a hyperparameter search on Optuna whose trials are `train` runs, pruned by the diagnosis rules.

`space.py` says what a trial may change, `study.py` runs the trials (objective, pruning, storage, resume) and
`results.py` writes the study's summary onto its parent MLflow run. See docs/tuning.md.
"""

from __future__ import annotations

import os
from typing import Any

import click

from rain_mlflow.tune.space import Space, default_space, load
from rain_mlflow.tune.study import DIRECTION, PRUNERS, STUDY_TAG, TuneConfig, default_storage

__all__ = ["DIRECTION", "PRUNERS", "STUDY_TAG", "Space", "TuneConfig", "default_space", "default_storage", "load",
           "run_tune"]


def run_tune(cfg: TuneConfig) -> dict[str, Any]:
    """Run (or continue) the study and return the parent run id and the summary numbers."""
    from rain_mlflow import weights
    from rain_mlflow.tracking import ui
    from rain_mlflow.data.source import load_clean
    from rain_mlflow.tracking.experiments import connect
    from rain_mlflow.tracking.runs import find_runs
    from rain_mlflow.tracking.store import shown, tracking_uri
    from rain_mlflow.tracking.tracker import Tracker
    from rain_mlflow.tune import results
    from rain_mlflow.tune.study import check_direction, fail_stale_trials, open_study, optimize

    load_clean(cfg.base.data)  # a bad data file fails here, before the study or a run exists
    source = weights.parse(cfg.base.model.pretrain_model_path)
    if source is not None:  # found (downloaded once) and verified before the study, not in every trial
        weights.fetch(source)
    experiment_id = connect(cfg.experiment)
    study = open_study(cfg)
    check_direction(study, cfg)
    stale = fail_stale_trials(study, experiment_id, cfg)
    if stale:
        click.echo(f"study {cfg.study}: trials {', '.join(map(str, stale))} were left running by a worker that is "
                   "gone; marked failed, their runs ended KILLED")
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
        click.echo(f"{verb} study {cfg.study} ({len(study.trials)} trials so far) in {shown(cfg.storage)}; "
                   f"parent MLflow run {tracker.run_id}")
        click.echo(ui.links_block(tracking_uri(), [("study run", ui.run_url("", experiment_id, tracker.run_id))]),
                   nl=False)
        optimize(study, cfg)
        numbers = results.record(tracker, study, cfg)
        return {"run_id": tracker.run_id, **numbers}
