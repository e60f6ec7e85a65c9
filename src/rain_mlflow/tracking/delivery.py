"""Delivering a training run's queued writes to the store: one idempotent store write per outbox entry
(`outbox.py`), what counts as an outage, the local run folder, and `rain-mlflow sync RUN_FOLDER`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import mlflow
import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from requests.exceptions import RequestException

from rain_mlflow.errors import UserError
from rain_mlflow.tracking import private
from rain_mlflow.tracking.outbox import Outbox
from rain_mlflow.tracking.store import StoreError, describe, exception_chain, shown, tracking_uri, use_store

log = logging.getLogger(__name__)
T = TypeVar("T")
RUN_FILE = "run.json"   # in a run folder: which run and store its outbox belongs to


def run_folder(run_id: str) -> Path:
    """The local folder of a training run: `$RAIN_MLFLOW_HOME/runs/<run_id>`, else `./rain-runs/<run_id>`."""
    home = os.environ.get("RAIN_MLFLOW_HOME")
    return (Path(home) / "runs" if home else Path.cwd() / "rain-runs") / run_id


def deliver(client: MlflowClient, run_id: str, op: dict[str, Any]) -> None:
    """One write of the outbox; delivering it twice leaves the store as delivering it once."""
    kind = op["kind"]
    if kind == "metrics":
        client.log_batch(run_id, metrics=[Metric(k, v, ts, step) for k, v, ts, step in op["metrics"]])
    elif kind == "params":
        client.log_batch(run_id, params=[Param(k, v) for k, v in op["params"]])
    elif kind == "tags":
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in op["tags"].items()])
    elif kind == "delete_tags":
        for key in op["keys"]:
            try:
                client.delete_tag(run_id, key)
            except mlflow.exceptions.MlflowException as exc:
                if "no tag with name" not in str(exc).lower():  # already deleted: the same outcome
                    raise
    elif kind == "artifact":
        client.log_artifact(run_id, op["path"], op.get("dir"))
    elif kind == "model":
        log_model_once(client, run_id, op, np.load(op["path"]))
    elif kind == "terminate":
        client.set_terminated(run_id, op["status"])
    else:
        raise ValueError(f"unknown outbox write {kind!r}")


def log_model_once(client: MlflowClient, run_id: str, op: dict[str, Any], input_example: Any) -> str:
    """The run's serving model, logged once: a run that already has one (an earlier delivery whose answer was
    lost) keeps it. Tags the run with its `model_id`."""
    # Imported here, when a model is logged: defining the pyfunc class makes MLflow print a warning (`serving.py`),
    # which commands that log no model should not show.
    from rain_mlflow.tracking import serving

    experiment_id = client.get_run(run_id).info.experiment_id
    found = mlflow.search_logged_models(experiment_ids=[experiment_id], output_format="list",
                                        filter_string=f"source_run_id = '{run_id}'")
    if found:
        model_id = found[0].model_id
    else:
        with _attached(run_id):
            model_id = serving.log_pyfunc(Path(op["checkpoint"]), op["window"], op["n_vars"], input_example,
                                          op["step"]).model_id
    client.set_tag(run_id, "model_id", model_id)
    return model_id


@contextmanager
def _attached(run_id: str) -> Iterator[None]:
    """The run as MLflow's active run of this thread (the model logger wants one); left without ending it."""
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        yield
        return
    mlflow.start_run(run_id=run_id, log_system_metrics=False)  # status RUNNING; the outbox's end status follows
    try:
        yield
    finally:
        private.pop_active_run(run_id)


def is_outage(exc: BaseException) -> bool:
    """Whether a failed write means the store is away for now (try again later) rather than refusing it."""
    chain = list(exception_chain(exc))
    if any(isinstance(e, (RequestException, ConnectionError, TimeoutError)) for e in chain):
        return True
    text = " ".join(str(e) for e in chain).lower()
    code = re.search(r"error code (\d{3})", text)
    return ("database is locked" in text or "max retries exceeded" in text or "failed with exception" in text
            or bool(code and int(code.group(1)) >= 500))


def deliver_pending(run_id: str) -> int:
    """Deliver what an earlier session of this run left in its outbox (before resuming it); the count."""
    folder = run_folder(run_id)
    if not (folder / "outbox").is_dir():
        return 0
    try:
        return _drain(folder, run_id)
    except FolderInUse:  # its trainer is alive and delivers them itself; resume then says the run is taken
        return 0


def sync_run(folder: Path) -> dict[str, Any]:
    """`rain-mlflow sync RUN_FOLDER`: deliver a run folder's outbox in order; delete the folder when done."""
    info_path = Path(folder) / RUN_FILE
    try:
        info = json.loads(info_path.read_text())
        run_id = info["run_id"]
    except (OSError, ValueError, KeyError):
        raise UserError(f"RUN_FOLDER must be a run folder of rain-mlflow (with {RUN_FILE}); got {str(folder)!r}") \
            from None
    os.environ.setdefault("MLFLOW_TRACKING_URI", info["tracking_uri"])
    use_store()
    count = _drain(Path(folder), run_id)
    run = MlflowClient().get_run(run_id)
    rejected = sorted((Path(folder) / "outbox" / "rejected").glob("*.json"))
    if not rejected:
        shutil.rmtree(folder, ignore_errors=True)
    return {"run_id": run_id, "delivered": count, "status": run.info.status, "rejected": len(rejected)}


class FolderInUse(UserError):
    """Another process (the run's trainer) holds the run folder."""


def hold_folder(folder: Path) -> Any:
    """An exclusive lock on the run folder while a process writes it (an open file; closing it releases it);
    a UserError when another process holds it. None where the platform has no advisory locks."""
    try:
        import fcntl
    except ImportError:
        return None
    handle = open(Path(folder) / ".lock", "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise FolderInUse(f"RUN_FOLDER {str(folder)!r} is in use by a training process; its writes are being "
                        "delivered by it (wait for it to end, or stop it first)") from None
    return handle


def _drain(folder: Path, run_id: str) -> int:
    lock = hold_folder(folder)
    try:
        return _drain_held(folder, run_id)
    finally:
        if lock is not None:
            lock.close()


def _drain_held(folder: Path, run_id: str) -> int:
    use_store()
    client = MlflowClient()
    outbox = Outbox(folder / "outbox", lambda op: deliver(client, run_id, op), is_outage, shown(tracking_uri()))
    try:
        return outbox.drain()
    except Exception as exc:
        if is_outage(exc):
            raise StoreError(f"tracking store {shown(tracking_uri())} {describe(exc)}; the writes of run {run_id} "
                             f"stay in {folder}") from None
        raise


def within(seconds: float, read: Callable[[], T]) -> T | None:
    """`read()` in a thread, given up on after `seconds` (None): a silent server must not hold the loop."""
    box: dict[str, T] = {}

    def run() -> None:
        try:
            box["value"] = read()
        except Exception as exc:  # noqa: BLE001 - the caller falls back to what it knows
            log.debug("store read failed: %s", exc)

    worker = threading.Thread(target=run, daemon=True, name="rain-mlflow-read")
    worker.start()
    worker.join(seconds)
    return box.get("value")
