"""What the package promises on failure (README, "When something fails"), each promise on the real thing:
SIGTERM and resume, a live run refused, an unreachable or misconfigured store, a failure under `mlflow run`,
a non-finite validation loss, out of memory, and figures that leave the caller's matplotlib alone."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.conftest import REPO, assert_user_error, error_lines, run_env
from tests.test_train import EPOCH_METRICS, histories, start_training


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_csv(synthetic_csv, folder, rows: int = 2200):
    path = folder / "small.csv"
    path.write_text("\n".join(synthetic_csv.read_text().splitlines()[:rows]) + "\n")
    return path


# ---- SIGTERM, a live run, resume ------------------------------------------------------------------------------

@pytest.mark.e2e
def test_sigterm_during_epoch_2_ends_killed_and_resume_logs_every_epoch_once(store, synthetic_csv, cli):
    process = start_training(store, synthetic_csv, "--train-epochs", "3", "--experiment", "sigterm")
    run_id = None
    for line in process.stdout:
        if line.startswith("MLflow run "):
            run_id = line.split()[2]
            # the trainer is alive: a second process may not take its run over
            assert_user_error(cli("train", "--resume", run_id), "still being trained", "this machine", "--force")
        if line.startswith("epoch   1/"):
            process.send_signal(signal.SIGTERM)  # epoch 2 has just started
            break
    rest, _ = process.communicate(timeout=300)
    assert process.returncode == 143, rest[-3000:]
    assert len(error_lines(rest)) == 1 and "interrupted by SIGTERM" in rest and "Traceback" not in rest
    assert f"rain-mlflow train --resume {run_id}" in rest
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["killed_by"] == "SIGTERM" and "SIGTERM" in run.data.tags["failure_reason"]
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [1]

    resumed = subprocess.run([sys.executable, "-m", "rain_mlflow", "train", "--resume", run_id],
                             env=run_env(store), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for key, points in histories(client, run_id, EPOCH_METRICS).items():
        assert [step for step, _ in points] == [1, 2, 3], key            # every epoch exactly once
    assert run.data.params["resume.1.after_epoch"] == "1" and run.data.tags["resume_count"] == "1"


# ---- the store --------------------------------------------------------------------------------------------------

@pytest.mark.e2e
def test_an_unreachable_server_is_one_error_line_within_30_s(tmp_path, synthetic_csv):
    uri = f"http://127.0.0.1:{closed_port()}"
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "rain_mlflow", "train", "--preset", "smoke", "--data",
                             str(small_csv(synthetic_csv, tmp_path)), "--train-epochs", "1"],
                            env=run_env(uri), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = error_lines(result.stderr)
    assert uri in line and "unreachable" in line and "Traceback" not in result.stderr
    assert elapsed < 30, elapsed


@pytest.mark.e2e
@pytest.mark.parametrize("make_uri, fragment", [
    (lambda d: f"sqlite:///{d}", "is not a file"),
    (lambda d: f"sqlite:///{(d / 'notes.txt').write_text('not a database') and d / 'notes.txt'}",
     "not an SQLite database"),
    (lambda d: f"sqlite:///{(d / 'afile').write_text('x') and d / 'afile'}/sub/mlflow.db", "is a file, not a folder"),
    (lambda d: "sqlite:////proc/rain/mlflow.db", "cannot be created"),
    (lambda d: str(d / "mlruns"), "file store"),
    (lambda d: "ftp://example.org/store", "not a tracking URI MLflow understands"),
])
def test_a_misconfigured_store_is_one_error_line_naming_it(cli, tmp_path, monkeypatch, make_uri, fragment):
    uri = make_uri(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    started = time.monotonic()
    result = cli("compare", "--experiment", "anything")
    assert_user_error(result, "tracking store", fragment)
    assert time.monotonic() - started < 30


@pytest.mark.server
def test_the_failure_path_keeps_the_error_when_the_store_dies_mid_run(tmp_path, monkeypatch):
    """End the run first, tag best-effort: a store that is gone must not replace the error, nor hang."""
    from rain_mlflow.tracking.experiments import connect
    from rain_mlflow.tracking.store import bound_http_retries
    from rain_mlflow.tracking.tracker import Tracker

    port = closed_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
                               str(port), "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                               "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              # no GenAI job runner: its consumer processes would outlive the killed server
                              env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    try:
        uri = f"http://127.0.0.1:{port}"
        wait_for(uri)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
        for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
            monkeypatch.delenv(key, raising=False)
        bound_http_retries()
        connect("dies")
        with pytest.raises(ValueError, match="the real problem"), \
                Tracker.start("train", run_name="doomed") as tracker:
            tracker.log_metrics({"val_loss": 0.5}, step=1)
            run_id = tracker.run_id
            server.kill()
            server.wait(timeout=30)
            started = time.monotonic()
            raise ValueError("the real problem")
        assert time.monotonic() - started < 60   # bounded retries, not MLflow's ~4 minutes per request
    finally:
        if server.poll() is None:
            server.kill()
    assert run_id


def wait_for(uri: str, timeout: float = 120) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"mlflow server at {uri} did not start")


@pytest.mark.e2e
def test_a_user_error_under_mlflow_run_ends_the_launched_run_failed_with_the_reason(store, synthetic_csv):
    result = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "train", "--env-manager", "local",
         "--experiment-name", "launched", "-P", "preset=smoke", "-P", f"data={synthetic_csv}", "-P",
         "batch_size=0"], env=run_env(store), capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "error: batch_size must be >= 1; got 0" in result.stderr
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("launched").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"] == "batch_size must be >= 1; got 0"


# ---- non-finite validation loss, out of memory ---------------------------------------------------------------

@pytest.mark.e2e
def test_a_non_finite_validation_loss_fails_the_run(store, synthetic_csv, cli, tmp_path):
    # Real data that does it: a pressure sensor that reported 1e30 hPa for a week of the validation period. The
    # scaler (fitted on the training split) leaves those inputs near 1e30 and the attention overflows to NaN on
    # exactly the windows that contain them; the training windows stay finite.
    frame = pd.read_csv(synthetic_csv)
    first = int(len(frame) * 0.65)
    frame.loc[first:first + 170, "pressure"] = 1e30
    path = tmp_path / "extreme.csv"
    frame.to_csv(path, index=False)
    result = cli("train", "--preset", "smoke", "--data", path, "--train-epochs", "3", "--experiment", "nanval")
    assert_user_error(result, "validation loss became nan at epoch 1", "extreme values")
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("nanval").experiment_id])
    assert run.info.status == "FAILED" and "validation loss became nan" in run.data.tags["failure_reason"]
    assert run.data.tags["diagnosis"] == "non_finite_loss"
    (point,) = client.get_metric_history(run.info.run_id, "val_loss")
    assert point.step == 1 and math.isnan(point.value)
    (train_point,) = client.get_metric_history(run.info.run_id, "train_loss")
    assert math.isfinite(train_point.value)


@pytest.mark.e2e
def test_out_of_memory_is_an_error_with_the_need_the_estimate_and_the_remedies(store, synthetic_csv, cli,
                                                                              monkeypatch, tmp_path):
    # No GPU here: the CUDA allocator's exception is raised, once, by the first training forward pass (the
    # one place in this suite where an exception is injected; everything around it is the real run).
    from rain_mlflow.model.classifier import RainClassifier

    csv = small_csv(synthetic_csv, tmp_path, rows=6000)
    dry = cli("train", "--preset", "smoke", "--data", csv, "--amp", "off", "--dry-run")
    estimate = next(line for line in dry.out.splitlines() if line.startswith("training memory")).split(": ")[1]
    estimate = float(estimate.split(" GB")[0])

    forward, raised = RainClassifier.forward, []

    def out_of_memory_once(self, x):
        if self.training and not raised:
            raised.append(True)
            raise torch.cuda.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 3.00 GiB. GPU 0 has a total capacity of 14.74 GiB of "
                "which 1.20 GiB is free.")
        return forward(self, x)

    monkeypatch.setattr(RainClassifier, "forward", out_of_memory_once)
    result = cli("train", "--preset", "smoke", "--data", csv, "--amp", "off", "--experiment", "oom")
    assert_user_error(result, "out of memory at epoch 1", "3.00 GiB", f"dry-run estimate for batch 64 is "
                      f"{estimate:.2f} GiB", "--batch-size (e.g. 32)", "--accumulate-steps 2",
                      "--checkpoint-activations", "--seq-len (now 168)")
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("oom").experiment_id])
    assert run.info.status == "FAILED" and "out of memory" in run.data.tags["failure_reason"]


# ---- figures ---------------------------------------------------------------------------------------------------

@pytest.mark.e2e
def test_figures_leave_the_callers_matplotlib_backend_alone():
    code = (
        "import matplotlib; matplotlib.use('svg')\n"
        "import sys\n"
        "from rain_mlflow import plots\n"
        "h = {1: {'train_loss': .5, 'val_loss': .6, 'val_accuracy': .7, 'val_f1': .6}}\n"
        "fig = plots.learning_curves(h, 1, 'x')\n"
        "cm = plots.confusion_figure({'val': [[3, 1], [2, 4]]}, 'y')\n"
        "import io; buf = io.BytesIO(); fig.savefig(buf, format='png')\n"
        "assert buf.getvalue()[:4] == b'\\x89PNG'\n"
        "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "print(type(fig).__module__, len(fig.axes), len(cm.axes))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["matplotlib.figure", "3", "1"]
