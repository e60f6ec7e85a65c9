"""The one MLflow writer for runs (the registry and the compare reader have their own small modules).

- Tracking URI: `MLFLOW_TRACKING_URI`, else `sqlite:///<cwd>/mlflow.db` (MLflow 3's default, made absolute).
- Experiment: `--experiment` / `MLFLOW_EXPERIMENT_NAME`, default `rain-timerxl`, created with the tag
  `mlflow.experimentKind=custom_model_development` (without it the 3.x UI opens the GenAI overview).
- Under `mlflow run`, the run already exists (`MLFLOW_RUN_ID`): `Tracker.start` attaches to it instead of making a
  second one. The entry-point params `mlflow run` logged are write-once, so `log_params` skips keys that already
  hold an equivalent value and logs a differing resolved value as `resolved.<key>`, never failing the run.
- A run that ends by an exception is marked FAILED with the reason in the tag `failure_reason`; Ctrl-C and
  SIGTERM end it KILLED with `killed_by` (see `interrupts.py`). The status is written first and the tags after,
  each on its own, so a store that fails mid-way still leaves the status if anything can be written.
- Every write goes through `Tracker._send`: held from signals (never half an artifact) and retried while another
  process holds sqlite's write lock. The store itself (URI, first contact, errors) is `store.py`.
- A training run (`Tracker.start(..., durable=True)`) has a local run folder, `run_folder(run_id)`:
  `$RAIN_MLFLOW_HOME/runs/<run_id>/`, else `./rain-runs/<run_id>/`. Its checkpoints are written there first, and
  its writes go to an on-disk outbox there (`outbox.py`) that a background thread delivers in order: training
  never waits for the store and goes on through an outage. The folder is deleted once everything, the end status
  included, is in the store; otherwise `rain-mlflow sync RUN_FOLDER` (`sync_run`) delivers the rest later.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import posixpath
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import mlflow
from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient

from rain_mlflow import interrupts, ui
from rain_mlflow.errors import UserError
from rain_mlflow.delivery import (RUN_FILE, deliver, deliver_pending, hold_folder, is_outage, log_model_once,
                                  run_folder, sync_run, within)
from rain_mlflow.outbox import Outbox
from rain_mlflow.store import retry_locked, reachable, shown, tracking_uri, use_store

__all__ = ["Tracker", "connect", "data_digest", "deliver_pending", "end_launched_run", "experiment_name", "find_run",
           "run_folder", "same_data", "sync_run", "tracking_uri", "use_store", "write_run_diagnosis"]
T = TypeVar("T")

log = logging.getLogger(__name__)
DEFAULT_EXPERIMENT = "rain-timerxl"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
STEP_TAG = "rain.step"  # which command made the run: clean, train, test, compare, promote, main
# While a durable run trains, a failed request is retried once; the outbox retries after that, in the background.
OUTBOX_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


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


def find_run(run_id: str) -> Any:
    """The run with this id, or a UserError naming it."""
    use_store()
    try:
        return MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise UserError(f"run {run_id!r} not found in {shown(tracking_uri())}") from None


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
    except mlflow.exceptions.MlflowException:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


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
    """Writes one run. Use `Tracker.start(...)` as a context manager; everything else is a thin method that
    goes through `_send`: straight to the store, or (a durable run) into the run's outbox."""

    def __init__(self, run: mlflow.ActiveRun):
        self.run_id = run.info.run_id
        self.experiment_id = run.info.experiment_id
        self.client = MlflowClient()
        self.folder: Path | None = None      # the local run folder of a durable run
        self.outbox: Outbox | None = None
        self._tags: dict[str, str] = {}      # tags as this process last wrote them (a durable run reads these)
        self._deleted: set[str] = set()
        self._saved_env: dict[str, str | None] = {}
        self._lock: Any = None

    @classmethod
    @contextmanager
    def start(cls, step: str, run_name: str | None = None, resume_run_id: str | None = None,
              system_metrics: bool = False, tags: dict[str, str] | None = None,
              durable: bool = False) -> Iterator[Tracker]:
        """Open (or attach to, or resume) a run; end it FINISHED, FAILED (with the reason) or KILLED.
        `durable`: a local run folder and an outbox (see the module docstring)."""
        nested = mlflow.active_run() is not None  # a step of `main`: a child of its run
        kwargs: dict[str, Any] = dict(log_system_metrics=system_metrics)
        if resume_run_id:
            kwargs["run_id"] = resume_run_id
        else:
            kwargs.update(run_name=run_name, nested=nested)
        with interrupts.handling():
            with interrupts.shielded():
                run = retry_locked(lambda: mlflow.start_run(**kwargs), "start run")
            tracker = cls(run)
            try:
                if durable:
                    tracker._open_outbox(run.data.tags)
                tracker.set_tags({STEP_TAG: step, **(tags or {})})
                yield tracker
            except KeyboardInterrupt as exc:
                name = interrupts.signal_name(exc)
                tracker.end("KILLED", {"killed_by": name, "failure_reason": f"interrupted by {name}"})
                raise
            except BaseException as exc:
                reason = " ".join(str(exc).split()) or type(exc).__name__
                tracker.end("FAILED", {"failure_reason": reason[:5000]})
                raise
            else:
                tracker.end("FINISHED", strict=True)

    def _open_outbox(self, tags: dict[str, str]) -> None:
        self.folder = run_folder(self.run_id)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / RUN_FILE).write_text(json.dumps(
            {"run_id": self.run_id, "experiment_id": self.experiment_id, "tracking_uri": tracking_uri()}))
        self._lock = hold_folder(self.folder)  # `sync` refuses a folder a training process is writing
        self._tags = dict(tags)
        self._saved_env = {k: os.environ.get(k) for k in OUTBOX_HTTP}
        os.environ.update(OUTBOX_HTTP)
        self.outbox = Outbox(self.folder / "outbox", lambda op: deliver(self.client, self.run_id, op), is_outage,
                             shown(tracking_uri()))
        self.outbox.start()

    def end(self, status: str, tags: dict[str, str] | None = None, strict: bool = False) -> None:
        """End the run with `status` first, then add `tags`; on a failure path each part is best-effort."""
        if self.outbox is not None:
            self._end_through_outbox(status, tags)
            return
        with interrupts.shielded():
            try:
                retry_locked(lambda: self.client.set_terminated(self.run_id, status), "end run")
            except Exception as exc:
                if strict:
                    raise
                _forget_active_run(self.run_id)
                log.warning("could not mark run %s %s in %s (%s); it shows RUNNING until it is resumed",
                            self.run_id, status, shown(tracking_uri()), " ".join(str(exc).split())[:200])
                return
            if _is_active(self.run_id):  # MLflow's bookkeeping (active-run stack, system metrics); same status
                retry_locked(lambda: mlflow.end_run(status), "end run")
            if tags:
                try:
                    self.set_tags(tags)
                except Exception as exc:
                    log.warning("run %s ended %s but its tags %s could not be written: %s", self.run_id, status,
                                ", ".join(tags), " ".join(str(exc).split())[:200])

    def _end_through_outbox(self, status: str, tags: dict[str, str] | None) -> None:
        """The end status and tags join the outbox; wait for it (`RAIN_MLFLOW_FLUSH_TIMEOUT_S` of outage at most),
        then delete the run folder if the store has everything, else say how to deliver the rest."""
        assert self.outbox is not None and self.folder is not None
        with interrupts.shielded():
            _forget_active_run(self.run_id)  # stops MLflow's system-metrics thread; no write of its own
            self._send("end run", {"kind": "terminate", "status": status})
            if tags:
                self.set_tags(tags)
            delivered = self.outbox.close(float(os.environ.get("RAIN_MLFLOW_FLUSH_TIMEOUT_S", "60")))
            if self._lock is not None:
                self._lock.close()
            for key, value in self._saved_env.items():
                os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
            if delivered:
                shutil.rmtree(self.folder, ignore_errors=True)
                with contextlib.suppress(OSError):
                    self.folder.parent.rmdir()  # only when empty
            else:
                log.warning("run %s ended %s, but %d of its writes (the end status among them) are not in %s yet; "
                            "they are kept in %s: deliver them with `rain-mlflow sync %s`", self.run_id, status,
                            self.outbox.pending(), shown(tracking_uri()), self.folder, self.folder)

    def flush(self, timeout_s: float = 60.0) -> bool:
        """Wait until the outbox is delivered (True at once without one)."""
        return self.outbox is None or self.outbox.flush(timeout_s)

    def _send(self, what: str, op: dict[str, Any]) -> None:
        """Every write: into the outbox, or straight to the store (held from signals, retried while another
        process holds sqlite's lock)."""
        if self.outbox is not None:
            self.outbox.put(op)
        else:
            self._write(what, lambda: deliver(self.client, self.run_id, op))

    def _write(self, what: str, write: Callable[[], T]) -> T:
        with interrupts.shielded():
            return retry_locked(write, what)

    def _send_file(self, artifact_file: str, write: Callable[[Path], None]) -> None:
        """An artifact whose content `write(path)` produces (a dict, a text, a figure)."""
        folder, name = posixpath.split(artifact_file)
        if self.outbox is not None:
            self.outbox.put_file(name, write, {"kind": "artifact", "dir": folder or None})
            return
        with tempfile.TemporaryDirectory(prefix="rain-mlflow-") as tmp:
            write(Path(tmp) / name)
            self._send("log artifact", {"kind": "artifact", "path": str(Path(tmp) / name), "dir": folder or None})

    @contextmanager
    def keep_alive(self) -> Iterator[None]:
        """Write the run's heartbeat now and every `heartbeat_s()` seconds until the block ends."""
        from rain_mlflow import liveness

        self.set_tags({liveness.HEARTBEAT_TAG: liveness.beat()})
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(liveness.heartbeat_s()):
                try:
                    self.set_tags({liveness.HEARTBEAT_TAG: liveness.beat()})
                except Exception as exc:  # a missed beat only makes the run look gone sooner
                    log.debug("heartbeat not written: %s", exc)

        thread = threading.Thread(target=beat, daemon=True, name="rain-mlflow-heartbeat")
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)

    # -- params, metrics, tags -------------------------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        existing = self.client.get_run(self.run_id).data.params
        fresh = []
        for key, value in params.items():
            text = param_text(value)
            if key not in existing:
                fresh.append([key, text])
            elif not _equivalent(existing[key], text) and f"resolved.{key}" not in existing:
                fresh.append([f"resolved.{key}", text])
        for i in range(0, len(fresh), 100):
            self._send("log params", {"kind": "params", "params": fresh[i:i + 100]})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = _now_ms()  # taken now and kept: a write delivered twice is then the same row (see outbox.py)
        batch = [[k, float(v), now, int(step)] for k, v in metrics.items() if v is not None]
        for i in range(0, len(batch), 1000):
            self._send("log metrics", {"kind": "metrics", "metrics": batch[i:i + 1000]})

    def set_tags(self, tags: dict[str, str]) -> None:
        tags = {k: str(v) for k, v in tags.items()}
        self._tags.update(tags)
        self._deleted.difference_update(tags)
        self._send("set tags", {"kind": "tags", "tags": tags})

    def set_note(self, text: str) -> None:
        self.set_tags({"mlflow.note.content": text})

    def set_diagnosis(self, findings: list, thresholds: Any = None) -> None:
        """`diagnosis` = ok or the sorted flags, one `diagnosis.<flag>` evidence tag each, the thresholds used;
        stale ones removed."""
        from rain_mlflow.diagnostics import diagnosis_tags, tag_changes

        changed, stale = tag_changes(self.tags(), diagnosis_tags(findings, thresholds))
        if changed:
            self.set_tags(changed)
        if stale:
            for key in stale:
                self._tags.pop(key, None)
            self._deleted.update(stale)
            self._send("delete tags", {"kind": "delete_tags", "keys": list(stale)})

    def current_diagnosis(self) -> str:
        return self.tags().get("diagnosis", "ok")

    def tags(self) -> dict[str, str]:
        """The run's tags as they are now (e.g. the stored `diagnosis.thresholds`). A durable run asks the store
        for a few seconds at most and lays its own writes (delivered or not) over the answer."""
        if self.outbox is None:
            return dict(self.client.get_run(self.run_id).data.tags)
        stored = within(5.0, lambda: self.client.get_run(self.run_id).data.tags) if self.outbox.online else None
        merged = {k: v for k, v in (stored or {}).items() if k not in self._deleted}
        return {**merged, **self._tags}

    def logged_steps(self, key: str) -> set[int]:
        return {m.step for m in self.client.get_metric_history(self.run_id, key)}

    # -- artifacts -------------------------------------------------------------------------------------------
    def log_artifact(self, path: str | os.PathLike, artifact_dir: str | None = None) -> None:
        self._send("log artifact", {"kind": "artifact", "path": str(Path(path).resolve()), "dir": artifact_dir})

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        self._send_file(artifact_file, lambda p: p.write_text(json.dumps(obj, indent=2)))

    def log_text(self, text: str, artifact_file: str) -> None:
        self._send_file(artifact_file, lambda p: p.write_text(text))

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self._send_file(artifact_file, lambda p: figure.savefig(p))

    def log_input(self, frame: Any, source: str, name: str, context: str) -> str:
        """Log the input data as an MLflow dataset whose digest is `data_digest(frame)`; return the digest.
        (Written directly: it belongs to the run's setup, right after the store answered.)"""
        digest = data_digest(frame)
        if os.path.exists(source):
            dataset = mlflow.data.from_pandas(frame, source=str(Path(source).resolve()), name=name, digest=digest)
        else:
            from mlflow.data.code_dataset_source import CodeDatasetSource

            dataset = mlflow.data.from_pandas(frame, source=CodeDatasetSource({"generator": source}), name=name,
                                              digest=digest)
        self._write("log input", lambda: mlflow.log_input(dataset, context=context))
        return digest

    def log_model(self, checkpoint_path: Path, window: int, n_vars: int, input_example: Any,
                  step: int) -> str | None:
        """Log the serving model (see `model/serving.py`) from `best.pt`; return its LoggedModel id, or None when
        the store is away (then it waits in the outbox with the rest, and gets its `model_id` tag on delivery)."""
        import numpy as np

        op = {"kind": "model", "checkpoint": str(Path(checkpoint_path).resolve()), "window": int(window),
              "n_vars": int(n_vars), "step": int(step)}
        if self.outbox is None or (self.outbox.online and self.flush(0)):  # away: queued, never waited for
            try:
                return self._write("log model", lambda: log_model_once(self.client, self.run_id, op,
                                                                         input_example))
            except Exception as exc:
                if self.outbox is None or not is_outage(exc):
                    raise
        assert self.outbox is not None
        self.outbox.put_file("input_example.npy", lambda p: np.save(p, np.asarray(input_example)), op)
        return None

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


def data_digest(frame: Any) -> str:
    """A digest of every row of a data frame (column names included): the data's identity, whatever its path.

    MLflow's own pandas digest hashes only the first 10,000 rows; two records sharing a beginning would match.
    """
    import pandas as pd

    rows = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    h = hashlib.sha256(rows.tobytes())
    h.update("\x1f".join(map(str, frame.columns)).encode())
    return h.hexdigest()[:16]


def same_data(frame: Any, recorded: str) -> bool:
    """Whether `frame` is the data a run recorded as its `data_digest` (whatever path it was read from)."""
    if data_digest(frame) == recorded:
        return True
    if len(recorded) == 8:  # runs from before this digest recorded MLflow's (first 10,000 rows only)
        return mlflow.data.from_pandas(frame).digest == recorded
    return False


def end_launched_run(status: str, reason: str) -> None:
    """End the run `mlflow run` created for this process (MLFLOW_RUN_ID) when we fail before attaching to it."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id or not reachable():
        return
    try:
        use_store()
        client = MlflowClient()
        if client.get_run(run_id).info.status == "RUNNING":
            retry_locked(lambda: client.set_terminated(run_id, status), "end launched run")
            retry_locked(lambda: client.set_tag(run_id, "failure_reason", reason[:5000]), "tag launched run")
    except Exception as exc:  # the error line the user sees matters more than this bookkeeping
        log.warning("could not mark the run %s %s: %s", run_id, status, " ".join(str(exc).split())[:200])


def _is_active(run_id: str) -> bool:
    active = mlflow.active_run()
    return active is not None and active.info.run_id == run_id


def _forget_active_run(run_id: str) -> None:
    """Drop the run from MLflow's active-run stack without a write (the store did not answer): later commands in
    this process must not attach to it. `mlflow.end_run` would first try the store again."""
    from mlflow.tracking import fluent

    stack = fluent._active_run_stack.get()  # private; checked by the store-dies test
    if stack and stack[-1].info.run_id == run_id:
        stack.pop()
    os.environ.pop("MLFLOW_RUN_ID", None)
    monitor = getattr(fluent, "run_id_to_system_metrics_monitor", {}).pop(run_id, None)
    if monitor is not None:
        try:
            monitor.finish()
        except Exception:  # noqa: BLE001 - best effort on a failure path
            pass



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

TRAINING_VIEW_TAG = ui.TRAINING_VIEW_TAG
PIPELINE_TAG = "pipeline"  # on every run a `main` pipeline started: the pipeline run's id



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


# -- studies (`tune`): find a study's runs, end a run whose worker is gone ---------------------------------------
def find_runs(experiment_id: str, filter_string: str) -> list[Any]:
    """Every run of the experiment matching an MLflow filter (e.g. the trials of one study), oldest first."""
    use_store()
    runs = MlflowClient().search_runs([experiment_id], filter_string, max_results=5000,
                                      order_by=["attributes.start_time ASC"])
    return list(runs)


def end_stale_run(run_id: str, status: str, tags: dict[str, str]) -> None:
    """End a run another process left RUNNING (killed): the status first, then the tags that say why."""
    use_store()
    Tracker(MlflowClient().get_run(run_id)).end(status, tags)
