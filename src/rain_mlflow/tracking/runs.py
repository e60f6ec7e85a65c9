"""Runs other than the one this process writes: found by id or by tags, and their artifacts."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from rain_mlflow.errors import UserError
from rain_mlflow.tracking.store import shown, tracking_uri, use_store


def find_run(run_id: str) -> Run:
    """The run with this id, or a UserError naming it."""
    use_store()
    try:
        return MlflowClient().get_run(run_id)
    except MlflowException:
        raise UserError(f"run {run_id!r} not found in {shown(tracking_uri())}") from None


def find_runs(experiment_id: str, filter_string: str) -> list[Run]:
    """Every run of the experiment matching an MLflow filter (e.g. the trials of one study), oldest first."""
    use_store()
    runs = MlflowClient().search_runs([experiment_id], filter_string, max_results=5000,
                                      order_by=["attributes.start_time ASC"])
    return list(runs)


def runs_with_tag(experiment_id: str, key: str, value: str) -> list[str]:
    """Ids of the experiment's active runs whose tag `key` is `value` (e.g. an imported log's digest)."""
    quoted = value.replace("'", "\\'")
    found = MlflowClient().search_runs([experiment_id], f"tags.`{key}` = '{quoted}'", ViewType.ACTIVE_ONLY,
                                       max_results=10)
    return [run.info.run_id for run in found]


def download_run_artifact(run_id: str, artifact_path: str, dst_dir: str | None = None) -> Path:
    """One artifact of a run, downloaded into `dst_dir` (a new temporary folder by default)."""
    dst = dst_dir or tempfile.mkdtemp(prefix="rain-mlflow-")
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=dst))
