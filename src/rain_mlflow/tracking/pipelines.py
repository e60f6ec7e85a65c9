"""The runs of `main`: one pipeline run, and the steps' runs grouped under it (or not)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager

from mlflow.tracking import MlflowClient

from rain_mlflow.tracking.tracker import STEP_TAG, Tracker, ending

PIPELINE_TAG = "pipeline"  # on every run a `main` pipeline started: the pipeline run's id


@contextmanager
def pipeline_run(experiment_id: str, run_name: str, tags: dict[str, str]) -> Iterator[Tracker]:
    """The run of `main` (under `mlflow run`, the launched one). It is never MLflow's *active* run: MLflow nests
    every run started while another is active, and the UI collapses nested runs, which would hide the training
    run. Steps choose with `pipeline_steps` whether they are grouped under it. Ends FINISHED, FAILED or KILLED."""
    client = MlflowClient()
    launched = os.environ.pop("MLFLOW_RUN_ID", None)  # taken here, so that no step attaches to it
    if launched:
        client.update_run(launched, name=run_name)
    run = client.get_run(launched) if launched else client.create_run(experiment_id, run_name=run_name)
    tracker = Tracker(run)
    tracker.set_tags({STEP_TAG: "main", PIPELINE_TAG: tracker.run_id, **tags})
    try:
        yield tracker
    except BaseException as exc:
        tracker.end(*ending(exc))
        raise
    else:
        tracker.end("FINISHED", strict=True)


@contextmanager
def pipeline_steps(pipeline_run_id: str, grouped: bool) -> Iterator[None]:
    """Every run started inside carries `pipeline=<id>`; `grouped` runs are also children of the pipeline run
    (one collapsible row in the UI), the others are rows of their own. Uses MLflow's run context, the
    `MLFLOW_RUN_CONTEXT` tags it adds to each new run."""
    tags = {PIPELINE_TAG: pipeline_run_id}
    if grouped:
        tags["mlflow.parentRunId"] = pipeline_run_id
    previous = os.environ.get("MLFLOW_RUN_CONTEXT")
    os.environ["MLFLOW_RUN_CONTEXT"] = json.dumps(tags)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_RUN_CONTEXT", None)
        else:
            os.environ["MLFLOW_RUN_CONTEXT"] = previous
