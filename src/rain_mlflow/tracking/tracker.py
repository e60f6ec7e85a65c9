"""`Tracker`: the writer of one MLflow run, and the one place a run ends (FINISHED, FAILED or KILLED).

- Under `mlflow run`, the run already exists (`MLFLOW_RUN_ID`): `Tracker.start` attaches to it instead of making a
  second one. The entry-point params `mlflow run` logged are write-once, so `log_params` skips keys that already
  hold an equivalent value and logs a differing resolved value as `resolved.<key>`, never failing the run.
- A run that ends by an exception is marked FAILED with the reason in the tag `failure_reason`; Ctrl-C and
  SIGTERM end it KILLED with `killed_by` (see `interrupts.py`): `ending(exc)` says which, `Tracker.end` writes it.
  The status is written first and the tags after, each on its own, so a store that fails mid-way still leaves the
  status if anything can be written.
- Every write goes through `Tracker._send`: held from signals (never half an artifact) and retried while another
  process holds sqlite's write lock. The store itself (URI, first contact, errors) is `store.py`.
- A training run (`Tracker.start(..., durable=True)`) has a local run folder, `run_folder(run_id)`:
  `$RAIN_MLFLOW_HOME/runs/<run_id>/`, else `./rain-runs/<run_id>/`. Its checkpoints are written there first, and
  its writes go to an on-disk outbox there (`outbox.py`) that a background thread delivers in order: training
  never waits for the store and goes on through an outage. The folder is deleted once everything, the end status
  included, is in the store; otherwise `rain-mlflow sync RUN_FOLDER` (`delivery.sync_run`) delivers the rest later.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import posixpath
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import mlflow
import numpy as np
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.tracking import MlflowClient

from rain_mlflow.diagnostics.rules import Finding
from rain_mlflow.diagnostics.tags import diagnosis_tags, tag_changes
from rain_mlflow.diagnostics.thresholds import Thresholds
from rain_mlflow.tracking import interrupts, liveness, private
from rain_mlflow.tracking.datasets import data_digest
from rain_mlflow.tracking.delivery import (RUN_FILE, deliver, hold_folder, is_outage, log_model_once, run_folder,
                                           within)
from rain_mlflow.tracking.runs import download_run_artifact
from rain_mlflow.tracking.outbox import Outbox
from rain_mlflow.tracking.store import reachable, retry_locked, shown, tracking_uri, use_store

T = TypeVar("T")

log = logging.getLogger(__name__)
STEP_TAG = "rain.step"  # which command made the run: clean, train, test, compare, promote, main
# While a durable run trains, a failed request is retried once; the outbox retries after that, in the background.
OUTBOX_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def ending(exc: BaseException) -> tuple[str, dict[str, str]]:
    """The status and tags a run ends with when `exc` ends it: KILLED with `killed_by` for Ctrl-C and SIGTERM,
    FAILED with the reason (the error's text, one line) for anything else."""
    if isinstance(exc, KeyboardInterrupt):
        name = interrupts.signal_name(exc)
        return "KILLED", {"killed_by": name, "failure_reason": f"interrupted by {name}"}
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return "FAILED", {"failure_reason": reason[:5000]}


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

    def __init__(self, run: mlflow.entities.Run):
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
            except BaseException as exc:
                tracker.end(*ending(exc))
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

    def set_diagnosis(self, findings: list[Finding], thresholds: Thresholds | None = None) -> None:
        """`diagnosis` = ok or the sorted flags, one `diagnosis.<flag>` evidence tag each, the thresholds used;
        stale ones removed."""
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

    def params(self) -> dict[str, str]:
        """The run's params as the store holds them."""
        return dict(self.client.get_run(self.run_id).data.params)

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
            dataset = mlflow.data.from_pandas(frame, source=CodeDatasetSource({"generator": source}), name=name,
                                              digest=digest)
        self._write("log input", lambda: mlflow.log_input(dataset, context=context))
        return digest

    def log_model(self, checkpoint_path: Path, window: int, n_vars: int, input_example: Any,
                  step: int) -> str | None:
        """Log the serving model (see `serving.py`) from `best.pt`; return its LoggedModel id, or None when
        the store is away (then it waits in the outbox with the rest, and gets its `model_id` tag on delivery)."""
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
        return download_run_artifact(self.run_id, artifact_path, dst_dir)


def end_launched_run(status: str, reason: str) -> None:
    """End the run `mlflow run` created for this process (MLFLOW_RUN_ID) when we fail before attaching to it."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id or not reachable():
        return
    try:
        use_store()
        run = MlflowClient().get_run(run_id)
    except Exception as exc:  # the error line the user sees matters more than this bookkeeping
        log.warning("could not mark the run %s %s: %s", run_id, status, " ".join(str(exc).split())[:200])
        return
    if run.info.status == "RUNNING":
        Tracker(run).end(status, {"failure_reason": reason[:5000]})


def end_stale_run(run_id: str, status: str, tags: dict[str, str]) -> None:
    """End a run another process left RUNNING (killed): the status first, then the tags that say why."""
    use_store()
    Tracker(MlflowClient().get_run(run_id)).end(status, tags)


def _is_active(run_id: str) -> bool:
    active = mlflow.active_run()
    return active is not None and active.info.run_id == run_id


def _forget_active_run(run_id: str) -> None:
    """Drop the run from MLflow's active-run stack without a write (the store did not answer): later commands in
    this process must not attach to it."""
    private.forget_active_run(run_id)
    os.environ.pop("MLFLOW_RUN_ID", None)


def _now_ms() -> int:
    return int(time.time() * 1000)
