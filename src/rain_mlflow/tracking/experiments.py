"""Which experiment a command's runs go to, created with what the MLflow UI needs.

- Experiment: `--experiment` / `MLFLOW_EXPERIMENT_NAME`, default `rain-timerxl`, created with the tag
  `mlflow.experimentKind=custom_model_development` (without it the 3.x UI opens the GenAI overview).
- Under `mlflow run` the launched run's experiment wins; a resume goes to the resumed run's experiment.
- Every experiment we use stores the runs-table view that printed experiment links open (`ensure_training_view`;
  the links themselves are built in `ui.py`).
"""

from __future__ import annotations

import os

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from rain_mlflow.errors import UserError
from rain_mlflow.tracking import ui
from rain_mlflow.tracking.runs import find_run
from rain_mlflow.tracking.store import DEFAULT_EXPERIMENT, retry_locked, use_store
from rain_mlflow.tracking.tracker import STEP_TAG

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"


def experiment_name(explicit: str | None = None) -> str:
    """--experiment, else MLFLOW_EXPERIMENT_NAME, else the experiment `mlflow run` chose, else rain-timerxl."""
    if explicit or os.environ.get("MLFLOW_EXPERIMENT_NAME"):
        return explicit or os.environ["MLFLOW_EXPERIMENT_NAME"]
    active = mlflow.active_run()
    launched = os.environ.get("MLFLOW_RUN_ID") or (active.info.run_id if active else None)
    exp_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
    if launched or exp_id:
        use_store()
        client = MlflowClient()
        exp_id = client.get_run(launched).info.experiment_id if launched else exp_id
        return client.get_experiment(exp_id).name
    return DEFAULT_EXPERIMENT


def connect(experiment: str | None = None, run_id: str | None = None) -> str:
    """Point MLflow at the store and the experiment (created if missing, with the UI kind tag); return its id.

    With `run_id` (resume) the experiment is that run's; inside `mlflow run` it is the launched run's.
    """
    use_store()
    client = MlflowClient()
    env_run = os.environ.get("MLFLOW_RUN_ID")
    if run_id:
        exp_id = find_run(run_id).info.experiment_id
        mlflow.set_experiment(experiment_id=exp_id)
        if env_run and env_run != run_id:  # `mlflow run -P resume=...` made a launcher run: say what it did
            client.set_tag(env_run, STEP_TAG, "resume")
            client.set_tag(env_run, "mlflow.note.content", f"Launcher of `train --resume {run_id}`; the training "
                           f"continues in run {run_id}.")
    elif env_run:  # inside `mlflow run`: the experiment is the run's, whatever --experiment says
        exp_id = client.get_run(env_run).info.experiment_id
    else:
        name = experiment_name(experiment)
        found = client.get_experiment_by_name(name)
        if found is not None and found.lifecycle_stage == "deleted":
            raise UserError(f"experiment {name!r} is deleted; restore it or choose another --experiment")
        exp_id = found.experiment_id if found else _create_experiment(client, name)
        mlflow.set_experiment(experiment_id=exp_id)
    experiment_obj = client.get_experiment(exp_id)
    if EXPERIMENT_KIND_TAG not in experiment_obj.tags:
        client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, "custom_model_development")
    ensure_training_view(client, exp_id, experiment_obj.tags)
    return exp_id


def _create_experiment(client: MlflowClient, name: str) -> str:
    """Create the experiment; another process creating it at the same moment is not an error."""
    try:
        return retry_locked(lambda: client.create_experiment(
            name, tags={EXPERIMENT_KIND_TAG: "custom_model_development"}), "create experiment")
    except MlflowException:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def ensure_training_view(client: MlflowClient, experiment_id: str, tags: dict[str, str]) -> None:
    """Store the runs-table view that printed experiment links open (MLflow's "shared view", an experiment tag):
    the training metrics and the diagnosis as columns. Rewritten only when it differs."""
    wanted = ui.training_view_state()
    if tags.get(ui.TRAINING_VIEW_TAG) != wanted:
        client.set_experiment_tag(experiment_id, ui.TRAINING_VIEW_TAG, wanted)


def experiment_name_of(experiment_id: str) -> str:
    return MlflowClient().get_experiment(experiment_id).name
