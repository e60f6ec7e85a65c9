"""The one MLflow writer for runs (the registry and the compare reader have their own small modules).

- Tracking URI: `MLFLOW_TRACKING_URI`, else `sqlite:///<cwd>/mlflow.db` (MLflow 3's default, made absolute).
- Experiment: `--experiment` / `MLFLOW_EXPERIMENT_NAME`, default `rain-timerxl`, created with the tag
  `mlflow.experimentKind=custom_model_development` (without it the 3.x UI opens the GenAI overview).
- Under `mlflow run`, the run already exists (`MLFLOW_RUN_ID`): `Tracker.start` attaches to it instead of making a
  second one. The entry-point params `mlflow run` logged are write-once, so `log_params` skips keys that already
  hold an equivalent value and logs a differing resolved value as `resolved.<key>`, never failing the run.
- A run that ends by an exception we catch is marked FAILED with the reason in the tag `failure_reason`
  (KILLED on Ctrl-C), never left RUNNING.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from rain_mlflow import ui
from rain_mlflow.errors import UserError

log = logging.getLogger(__name__)
DEFAULT_EXPERIMENT = "rain-timerxl"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
STEP_TAG = "rain.step"  # which command made the run: clean, train, test, compare, promote, main


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return uri if uri else f"sqlite:///{Path.cwd() / 'mlflow.db'}"


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


def use_store() -> None:
    mlflow.set_tracking_uri(tracking_uri())
    check_credentials(tracking_uri())


def find_run(run_id: str) -> Any:
    """The run with this id, or a UserError naming it."""
    use_store()
    try:
        return MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise UserError(f"run {run_id!r} not found in {tracking_uri()}") from None


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
        exp_id = found.experiment_id if found else client.create_experiment(
            name, tags={EXPERIMENT_KIND_TAG: "custom_model_development"})
        mlflow.set_experiment(experiment_id=exp_id)
    experiment_obj = client.get_experiment(exp_id)
    if EXPERIMENT_KIND_TAG not in experiment_obj.tags:
        client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, "custom_model_development")
    ensure_training_view(client, exp_id, experiment_obj.tags)
    return exp_id


def _equivalent(logged: str, value: str) -> bool:
    """Whether a param already logged (e.g. by `mlflow run`, as typed by the user) means the same value."""
    if logged == value:
        return True
    if logged.strip().lower() in ("true", "false") and value.lower() in ("true", "false"):
        return logged.strip().lower() == value.lower()
    try:
        return math.isclose(float(logged), float(value), rel_tol=1e-12)
    except ValueError:
        return False


def param_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return str(value)


class Tracker:
    """Writes one run. Use `Tracker.start(...)` as a context manager; everything else is a thin method."""

    def __init__(self, run: mlflow.ActiveRun):
        self.run_id = run.info.run_id
        self.experiment_id = run.info.experiment_id
        self.client = MlflowClient()

    @classmethod
    @contextmanager
    def start(cls, step: str, run_name: str | None = None, resume_run_id: str | None = None,
              system_metrics: bool = False, tags: dict[str, str] | None = None) -> Iterator[Tracker]:
        """Open (or attach to, or resume) a run; end it FINISHED, FAILED (with the reason) or KILLED."""
        nested = mlflow.active_run() is not None  # a step of `main`: a child of its run
        kwargs: dict[str, Any] = dict(log_system_metrics=system_metrics)
        if resume_run_id:
            kwargs["run_id"] = resume_run_id
        else:
            kwargs.update(run_name=run_name, nested=nested)
        run = mlflow.start_run(**kwargs)
        tracker = cls(run)
        tracker.set_tags({STEP_TAG: step, **(tags or {})})
        try:
            yield tracker
        except KeyboardInterrupt:
            tracker.set_tags({"failure_reason": "interrupted (Ctrl-C or SIGTERM)"})
            mlflow.end_run("KILLED")
            raise
        except BaseException as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            tracker.set_tags({"failure_reason": reason[:5000]})
            mlflow.end_run("FAILED")
            raise
        else:
            mlflow.end_run("FINISHED")

    # -- params, metrics, tags -------------------------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        existing = self.client.get_run(self.run_id).data.params
        fresh = []
        for key, value in params.items():
            text = param_text(value)
            if key not in existing:
                fresh.append(Param(key, text))
            elif not _equivalent(existing[key], text) and f"resolved.{key}" not in existing:
                fresh.append(Param(f"resolved.{key}", text))
        for i in range(0, len(fresh), 100):
            self.client.log_batch(self.run_id, params=fresh[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = _now_ms()
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def set_note(self, text: str) -> None:
        self.set_tags({"mlflow.note.content": text})

    def set_diagnosis(self, findings: list, thresholds: Any = None) -> None:
        """`diagnosis` = ok or the sorted flags, one `diagnosis.<flag>` evidence tag each, the thresholds used;
        stale ones removed."""
        write_run_diagnosis(self.client, self.run_id, findings, thresholds=thresholds)

    def current_diagnosis(self) -> str:
        return self.client.get_run(self.run_id).data.tags.get("diagnosis", "ok")

    def tags(self) -> dict[str, str]:
        """The run's tags as they are now (e.g. the stored `diagnosis.thresholds`)."""
        return dict(self.client.get_run(self.run_id).data.tags)

    def logged_steps(self, key: str) -> set[int]:
        return {m.step for m in self.client.get_metric_history(self.run_id, key)}

    # -- artifacts -------------------------------------------------------------------------------------------
    def log_artifact(self, path: str | os.PathLike, artifact_dir: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_dir)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, obj, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def log_input(self, frame: Any, source: str, name: str, context: str) -> str:
        """Log the input data as an MLflow dataset (its digest identifies the data); return the digest."""
        if os.path.exists(source):
            dataset = mlflow.data.from_pandas(frame, source=str(Path(source).resolve()), name=name)
        else:
            from mlflow.data.code_dataset_source import CodeDatasetSource

            dataset = mlflow.data.from_pandas(frame, source=CodeDatasetSource({"generator": source}), name=name)
        mlflow.log_input(dataset, context=context)
        return dataset.digest

    def log_model(self, model: Any, input_example: Any, step: int) -> str:
        """Log the serving model as an MLflow PyTorch model (format `pickle`, our package code bundled with it
        so `models:/...` loads without rain-mlflow installed); return its LoggedModel id."""
        import mlflow.pytorch
        import torch

        import rain_mlflow

        info = mlflow.pytorch.log_model(
            model, name="model", input_example=input_example, serialization_format="pickle", step=step,
            code_paths=[str(Path(rain_mlflow.__file__).parent)],
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy", "pandas", "scikit-learn"])
        return info.model_id

    def download_artifact(self, artifact_path: str, dst_dir: str | None = None) -> Path:
        return self.download_run_artifact(self.run_id, artifact_path, dst_dir)

    @staticmethod
    def download_run_artifact(run_id: str, artifact_path: str, dst_dir: str | None = None) -> Path:
        dst = dst_dir or tempfile.mkdtemp(prefix="rain-mlflow-")
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=dst))


def runs_with_tag(experiment_id: str, key: str, value: str) -> list[str]:
    """Ids of the experiment's active runs whose tag `key` is `value` (e.g. an imported log's digest)."""
    from mlflow.entities import ViewType

    quoted = value.replace("'", "\\'")
    found = MlflowClient().search_runs([experiment_id], f"tags.`{key}` = '{quoted}'", ViewType.ACTIVE_ONLY,
                                       max_results=10)
    return [run.info.run_id for run in found]


def write_run_diagnosis(client: MlflowClient, run_id: str, findings: Any,
                        current_tags: dict[str, str] | None = None, thresholds: Any = None,
                        metric_map: dict[str, str] | None = None) -> None:
    """`diagnosis` (ok or the sorted flags), one `diagnosis.<flag>` evidence tag per finding and the thresholds
    (and metric map) used, in one batch of the tags that changed; `diagnosis.*` tags this diagnosis no longer
    has are deleted. Used live and by compare / promote (`rain_mlflow.diagnostics.tags`)."""
    from rain_mlflow.diagnostics import diagnosis_tags, tag_changes

    if current_tags is None:
        current_tags = client.get_run(run_id).data.tags
    changed, stale = tag_changes(current_tags, diagnosis_tags(findings, thresholds, metric_map))
    if changed:
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in changed.items()])
    for key in stale:
        client.delete_tag(run_id, key)


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


# ---- servers, the UI's training view, and the runs of a pipeline --------------------------------------------------
# Self-contained on purpose: the UI links themselves are built in `ui.py` (no MLflow there).

TRAINING_VIEW_TAG = "mlflow.sharedViewState." + ui.TRAINING_VIEW_KEY
PIPELINE_TAG = "pipeline"  # on every run a `main` pipeline started: the pipeline run's id
_credentials_checked: set[tuple[str, str | None, str | None]] = set()


def check_credentials(uri: str) -> None:
    """A server with basic-auth answers 401 to every request with missing or wrong credentials: ask once per
    process and say so as one user error, not as a traceback from the first MLflow call deep inside a command.
    Any other failure is left to that first call (same error, no second wait)."""
    if not uri.startswith(("http://", "https://")):
        return
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    key = (uri, user, os.environ.get("MLFLOW_TRACKING_PASSWORD"))
    if key in _credentials_checked:
        return
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code != "UNAUTHENTICATED":
            raise
        server = ui.redact(uri)
        if user:
            raise UserError(f"MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD must be valid credentials for "
                            f"{server}; got user {user!r}, refused by the server (HTTP 401)") from None
        got = "no user name" if os.environ.get("MLFLOW_TRACKING_PASSWORD") else "neither"
        raise UserError(f"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD must be set: {server} requires "
                        f"a login (HTTP 401); got {got}") from None
    _credentials_checked.add(key)


def ensure_training_view(client: MlflowClient, experiment_id: str, tags: dict[str, str]) -> None:
    """Store the runs-table view that printed experiment links open (MLflow's "shared view", an experiment tag):
    the training metrics and the diagnosis as columns. Rewritten only when it differs."""
    wanted = ui.training_view_state()
    if tags.get(TRAINING_VIEW_TAG) != wanted:
        client.set_experiment_tag(experiment_id, TRAINING_VIEW_TAG, wanted)


def has_training_view(experiment_id: str) -> bool:
    return TRAINING_VIEW_TAG in MlflowClient().get_experiment(experiment_id).tags


def experiment_name_of(experiment_id: str) -> str:
    return MlflowClient().get_experiment(experiment_id).name


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
    except KeyboardInterrupt:
        tracker.set_tags({"failure_reason": "interrupted (Ctrl-C or SIGTERM)"})
        client.set_terminated(tracker.run_id, "KILLED")
        raise
    except BaseException as exc:
        tracker.set_tags({"failure_reason": (" ".join(str(exc).split()) or type(exc).__name__)[:5000]})
        client.set_terminated(tracker.run_id, "FAILED")
        raise
    else:
        client.set_terminated(tracker.run_id, "FINISHED")


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
