"""Several processes, one run: real torchrun (`train --devices 2`) with the gloo backend on CPU."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import run_env

TRAIN = ["train", "--preset", "smoke", "--amp", "off", "--dropout", "0", "--experiment", "ddp"]


def launch(store: str, *args: str, cwd) -> subprocess.Popen:
    env = {**run_env(store), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "rain_mlflow", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def runs(name: str = "ddp"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    return client, client.search_runs([experiment.experiment_id], "tags.`rain.step` = 'train'")


def history(client, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def test_two_gloo_processes_make_one_run_that_follows_the_single_process_run(store, tiny_csv, cli, tmp_path):
    single = cli(*TRAIN, "--data", tiny_csv, "--train-epochs", "2", "--run-name", "single")
    assert single.code == 0, single.err
    ddp = launch(store, *TRAIN, "--data", str(tiny_csv), "--train-epochs", "2", "--run-name", "ddp", "--devices",
                 "2", cwd=tmp_path)
    out, err = ddp.communicate(timeout=300)
    assert ddp.returncode == 0, (out, err)
    client, found = runs()
    by_name = {r.info.run_name: r for r in found}
    assert sorted(by_name) == ["ddp", "single"]  # the two ranks made one run, not two
    one, two = by_name["single"], by_name["ddp"]
    assert two.info.status == "FINISHED"
    assert set(two.data.metrics) == set(one.data.metrics)
    for key in ("train_loss", "val_loss", "test_loss", "val_accuracy", "val_windows", "test_windows"):
        a, b = history(client, one.info.run_id, key), history(client, two.info.run_id, key)
        assert sorted(a) == sorted(b) == [1, 2], key
        for epoch in a:  # the same global batch and the same windows: only float rounding differs
            assert b[epoch] == pytest.approx(a[epoch], rel=2e-3, abs=1e-4), (key, epoch, a, b)
    matrices = client.list_artifacts(two.info.run_id, "confusion_matrices")
    assert len(matrices) == 2
    assert {f.path for f in client.list_artifacts(two.info.run_id, "checkpoints")} == \
        {"checkpoints/best.pt", "checkpoints/last.pt"}


def test_sigkill_of_the_launcher_then_resume_logs_every_epoch_once(store, tiny_csv, tmp_path):
    from rain_mlflow import liveness

    first = launch(store, *TRAIN, "--data", str(tiny_csv), "--train-epochs", "4", "--patience", "99",
                   "--devices", "2", cwd=tmp_path)
    assert first.stdout is not None
    seen = []
    for line in first.stdout:
        seen.append(line)
        if "epoch   2/" in line:
            break
    else:
        raise AssertionError("".join(seen) + first.stderr.read())
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    client, (run,) = runs()
    deadline = time.monotonic() + 60
    while liveness.owner_alive(client.get_run(run.info.run_id).data.tags.get(liveness.HEARTBEAT_TAG)):
        assert time.monotonic() < deadline, "the ranks outlived their launcher"
        time.sleep(1)
    assert client.get_run(run.info.run_id).info.status == "RUNNING"
    second = launch(store, "train", "--resume", run.info.run_id, "--devices", "2", cwd=tmp_path)
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, (out, err)
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags.get("resume_count") == "1"
    for key in ("train_loss", "val_loss", "val_accuracy"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == [1, 2, 3, 4], (key, steps)
