"""Tracking outages: a real `mlflow server` killed in the middle of a real training run (and restarted on the same
port and store, or never), the outbox that keeps the run's writes, and `rain-mlflow sync`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_env
from tests.servers import free_port, wait_until_up

EPOCHS = 5


class RestartableServer:
    """`mlflow server` on a fixed port and store (sqlite + proxied artifacts), which can be killed and restarted."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = self.folder / f"server-{self.starts}.log"
        command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                   f"sqlite:///{self.folder / 'server.db'}", "--artifacts-destination", str(self.folder / "artifacts"),
                   "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        with open(log, "w") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        wait_until_up(f"{self.url}/health", self.process, log)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


@pytest.fixture
def server(tmp_path):
    srv = RestartableServer(tmp_path)
    srv.start()
    yield srv
    srv.kill()


def start_training(server: RestartableServer, csv: Path, workdir: Path, flush_timeout_s: float,
                   epochs: int = EPOCHS) -> subprocess.Popen:
    env = {**run_env(server.url), "RAIN_MLFLOW_FLUSH_TIMEOUT_S": str(flush_timeout_s), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "rain_mlflow", "train", "--preset", "smoke", "--data", str(csv), "--train-epochs",
         str(epochs), "--patience", "99", "--amp", "off", "--experiment", "outage"],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_line(process: subprocess.Popen, fragment: str, seen: list[str]) -> None:
    """Read stdout until a line holds `fragment` (the lines read are kept in `seen`)."""
    assert process.stdout is not None
    for line in process.stdout:
        seen.append(line)
        if fragment in line:
            return
    raise AssertionError(f"training ended before printing {fragment!r}:\n{''.join(seen)}\n{process.stderr.read()}")


def stored_run(url: str) -> tuple:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    (run,) = client.search_runs([client.get_experiment_by_name("outage").experiment_id])
    return client, run


def assert_every_epoch_once(client, run, epochs: int) -> None:
    for key in ("train_loss", "val_loss", "val_accuracy", "test_f1", "epoch_time_s"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == list(range(1, epochs + 1)), (key, steps)
    names = {f.path for f in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert names == {"checkpoints/best.pt", "checkpoints/last.pt"}
    matrices = {f.path for f in client.list_artifacts(run.info.run_id, "confusion_matrices")}
    assert matrices == {f"confusion_matrices/epoch_{e:03d}.json" for e in range(1, epochs + 1)}
    assert run.data.tags.get("model_id", "").startswith("m-")


@pytest.mark.server
def test_server_killed_for_20_s_mid_run_the_run_finishes_with_every_epoch_once(server, tiny_csv, tmp_path):
    training = start_training(server, tiny_csv, tmp_path, flush_timeout_s=120)
    seen: list[str] = []
    wait_for_line(training, "epoch   1/", seen)
    server.kill()
    time.sleep(20)
    server.start()
    out, err = training.communicate(timeout=300)
    (tmp_path / "train.txt").write_text(out + "\n--- stderr ---\n" + err)
    assert training.returncode == 0, (out, err)
    assert err.count("stopped answering") == 1, err
    assert err.count("answers again") == 1, err
    client, run = stored_run(server.url)
    assert run.info.status == "FINISHED"
    assert_every_epoch_once(client, run, EPOCHS)
    assert not (tmp_path / "rain-runs" / run.info.run_id).exists()  # everything delivered: the folder is gone
    # the checkpoint in the store is the last epoch's, loadable safely
    import torch

    path = client.download_artifacts(run.info.run_id, "checkpoints/last.pt", str(tmp_path))
    assert torch.load(path, weights_only=True)["train_state"]["epoch"] == EPOCHS


@pytest.mark.server
def test_server_never_back_then_sync_delivers_everything_once(server, tiny_csv, tmp_path):
    training = start_training(server, tiny_csv, tmp_path, flush_timeout_s=3, epochs=3)
    seen: list[str] = []
    wait_for_line(training, "epoch   1/", seen)
    server.kill()
    out, err = training.communicate(timeout=300)
    assert training.returncode == 0, (out, err)
    (folder,) = (tmp_path / "rain-runs").iterdir()
    assert f"rain-mlflow sync {folder}" in err, err
    assert (folder / "checkpoints" / "last.pt").is_file()  # written locally first
    server.start()
    synced = subprocess.run([sys.executable, "-m", "rain_mlflow", "sync", str(folder)], cwd=tmp_path,
                            env=run_env(server.url), capture_output=True, text=True, timeout=300)
    assert synced.returncode == 0, synced.stderr
    assert "status FINISHED" in synced.stdout
    client, run = stored_run(server.url)
    assert run.info.run_id == folder.name and run.info.status == "FINISHED"
    assert_every_epoch_once(client, run, 3)
    assert not folder.exists()


@pytest.mark.e2e
def test_a_write_delivered_twice_is_stored_once(store, tmp_path):
    """A request that reached the store but whose answer was lost is sent again: the store must not change."""
    from mlflow.tracking import MlflowClient

    from rain_mlflow.errors import UserError
    from rain_mlflow.tracking.delivery import deliver, sync_run
    from rain_mlflow.tracking.experiments import connect
    from rain_mlflow.tracking.tracker import Tracker

    connect("twice")
    with Tracker.start("train", run_name="twice", durable=True) as tracker:
        tracker.log_metrics({"val_loss": 0.5, "val_accuracy": 0.75}, step=1)
        tracker.set_tags({"diagnosis": "ok"})
        (tmp_path / "last.pt").write_bytes(b"weights")
        tracker.log_artifact(tmp_path / "last.pt", "checkpoints")
        assert tracker.flush(30)
        with pytest.raises(UserError, match="in use by a training process"):  # its own process delivers it
            sync_run(tracker.folder)
        ops = [{"kind": "metrics", "metrics": [["val_loss", 0.5, 1_700_000_000_000, 2]]},
               {"kind": "tags", "tags": {"diagnosis": "stalled"}},
               {"kind": "artifact", "path": str(tmp_path / "last.pt"), "dir": "checkpoints"},
               {"kind": "delete_tags", "keys": ["diagnosis"]}]
        for op in ops:
            deliver(tracker.client, tracker.run_id, op)
            deliver(tracker.client, tracker.run_id, op)
        run_id = tracker.run_id
    client = MlflowClient()
    history = client.get_metric_history(run_id, "val_loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.5), (2, 0.5)]
    assert [m.step for m in client.get_metric_history(run_id, "val_accuracy")] == [1]
    assert "diagnosis" not in client.get_run(run_id).data.tags
    assert [f.path for f in client.list_artifacts(run_id, "checkpoints")] == ["checkpoints/last.pt"]
    assert client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.e2e
def test_sync_of_a_folder_that_is_no_run_folder_is_one_error_line(cli, tmp_path, store):
    from tests.conftest import assert_user_error

    (tmp_path / "empty").mkdir()
    assert_user_error(cli("sync", tmp_path / "empty"), "RUN_FOLDER must be a run folder", "empty")
    assert_user_error(cli("sync"), "RUN_FOLDER must be given")


@pytest.mark.unit
def test_outbox_keeps_order_and_survives_a_restart(tmp_path):
    """Writes put while the store is away are delivered in order after it returns, by a new process's outbox."""
    from rain_mlflow.tracking.outbox import Outbox

    got: list[int] = []
    away = {"now": True}

    def deliver(op: dict) -> None:
        if away["now"]:
            raise ConnectionError("refused")
        got.append(op["n"])

    first = Outbox(tmp_path / "outbox", deliver, lambda exc: isinstance(exc, ConnectionError), "test")
    first.start()
    for n in range(5):
        first.put({"n": n})
    assert not first.close(timeout_s=0.5)            # away: nothing delivered, all kept on disk
    assert got == [] and first.pending() == 5
    away["now"] = False
    second = Outbox(tmp_path / "outbox", deliver, lambda exc: isinstance(exc, ConnectionError), "test")
    second.put({"n": 5})                             # numbered after what the first one left
    assert second.drain() == 6
    assert got == [0, 1, 2, 3, 4, 5] and second.pending() == 0
    assert json.dumps(got)
