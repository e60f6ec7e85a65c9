"""`train` on real data with a real store: the recorded contract, `mlflow run`, resume after SIGKILL, failures."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from rain_mlflow.config import FIELDS, RunConfig
from rain_mlflow.model.factory import rain_model_from_payload
from rain_mlflow.model import checkpoint
from tests.conftest import REPO, assert_user_error, run_env

pytestmark = pytest.mark.e2e

EPOCH_METRICS = ("train_loss", "val_loss", "test_loss", "val_accuracy", "test_accuracy", "val_f1", "test_f1",
                 "val_precision", "val_recall", "test_precision", "test_recall", "val_mcc", "test_mcc",
                 "val_pred_rain_fraction", "lr", "epoch_time_s", "samples_per_s", "val_windows", "test_windows")
SUMMARY_METRICS = ("best_epoch", "best_val_loss", "best_val_accuracy", "best_val_f1", "val_always_rain_f1",
                   "test_always_rain_f1", "val_majority_accuracy", "test_majority_accuracy", "test_skill_f1",
                   "test_skill_mcc", *(f"{split}_{name}_{metric}" for split in ("val", "test")
                                       for name in ("always_rain", "persistence", "gbm") for metric in ("f1", "mcc")))
TIMING = {"epoch_time_s", "samples_per_s"}
EPOCHS = 3


def smoke_args(csv, *extra: str) -> list[str]:
    return ["train", "--preset", "smoke", "--data", str(csv), "--train-epochs", str(EPOCHS), "--patience", "10",
            *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_csv):
    """One real smoke run in its own store, shared by the contract checks."""
    import mlflow

    from rain_mlflow.cli import main

    tmp = tmp_path_factory.mktemp("trained")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "1"  # a test run is shorter than the default 10 s
    mlflow.set_tracking_uri(uri)
    try:
        with pytest.raises(SystemExit) as done:
            main(smoke_args(synthetic_csv, "--experiment", "contract"))
        assert done.value.code == 0
        client = MlflowClient()
        (run,) = client.search_runs([client.get_experiment_by_name("contract").experiment_id])
        yield client, run, tmp
    finally:
        os.environ.pop("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", None)
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old


def histories(client, run_id: str, keys=EPOCH_METRICS) -> dict[str, list[tuple[int, float]]]:
    return {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in keys}


def test_every_contract_metric_every_epoch_at_step_epoch(trained):
    client, run, _ = trained
    assert run.info.status == "FINISHED"
    for key, points in histories(client, run.info.run_id).items():
        assert [step for step, _ in points] == list(range(1, EPOCHS + 1)), key
        assert all(math.isfinite(v) for _, v in points), key
    for key in ("val_accuracy", "test_accuracy", "val_f1", "val_pred_rain_fraction"):
        assert all(0 <= v <= 1 for _, v in histories(client, run.info.run_id, (key,))[key])
    for key in SUMMARY_METRICS:
        assert key in run.data.metrics, key
    best = int(run.data.metrics["best_epoch"])
    val_loss = dict(histories(client, run.info.run_id, ("val_loss",))["val_loss"])
    assert best == min(val_loss, key=val_loss.get)
    assert run.data.metrics["best_val_loss"] == val_loss[best]


def test_every_window_is_evaluated_and_counted_every_epoch(trained):
    client, run, _ = trained
    got = histories(client, run.info.run_id, ("val_windows", "test_windows"))
    for split in ("val", "test"):
        assert {v for _, v in got[f"{split}_windows"]} == {float(run.data.params[f"windows_{split}"])}
        # not thinned by window_stride 6: every candidate with a known label is evaluated
        assert int(run.data.params[f"windows_{split}"]) == int(run.data.params[f"candidate_windows_{split}"]) - int(
            run.data.params[f"label_unknown_windows_{split}"])


def test_baselines_and_skill_are_recorded(trained):
    _, run, _ = trained
    m, params = run.data.metrics, run.data.params
    rain, windows = int(params["rain_test"]), int(params["windows_test"])
    assert m["test_always_rain_f1"] == pytest.approx(2 * rain / (windows + rain))   # 2p / (1 + p)
    assert m["test_majority_accuracy"] == pytest.approx(max(rain, windows - rain) / windows)
    best = max(m[f"test_{b}_f1"] for b in ("always_rain", "persistence", "gbm"))
    assert m["test_skill_f1"] == pytest.approx(m["best_test_f1"] - best)
    assert run.data.tags["test_best_baseline_mcc"] in ("always_rain", "persistence", "gbm")


def test_system_metrics_are_on(trained):
    _, run, _ = trained
    system = {k for k in run.data.metrics if k.startswith("system/")}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system


def test_params_and_tags(trained):
    _, run, _ = trained
    params, tags = run.data.params, run.data.tags
    for name in FIELDS:
        assert name in params, name
    assert params["preset"] == "smoke" and params["train_epochs"] == str(EPOCHS)
    assert int(params["n_params"]) > 1000 and params["vram_budget_gb"] == "1.0"
    # 5 data columns with gaps and the default missing=mask: one indicator variable, 6 x 7 tokens
    assert params["effective_seq_len"] == "168" and params["tokens_per_sample"] == "42"
    assert params["n_vars"] == "6" and params["indicator_variables"] == "missing:share"
    assert params["missing"] == "mask" and params["max_fill"] == "6"          # resolved: 6 h of hourly steps
    for split in ("train", "val", "test"):
        assert int(params[f"rain_{split}"]) + int(params[f"no_rain_{split}"]) == int(params[f"windows_{split}"])
        assert int(params[f"windows_{split}"]) + int(params[f"dropped_windows_{split}"]) == int(
            params[f"candidate_windows_{split}"])
        assert int(params[f"input_missing_windows_{split}"]) == 0                # mask keeps them
    assert int(params["gap_windows.relative_humidity"]) > 0                      # its 5-day outage
    assert tags["preset"] == "smoke" and tags["rain.step"] == "train"
    assert tags["diagnosis"] == "ok" or all(f"diagnosis.{f}" in tags for f in tags["diagnosis"].split(","))
    assert "best epoch" in tags["mlflow.note.content"] and "always-rain" in tags["mlflow.note.content"]
    assert "beat the best baseline" in tags["mlflow.note.content"].replace("beats", "beat")
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.digest == tags["data_digest"]


def test_artifacts_are_present_and_loadable(trained):
    client, run, tmp = trained
    run_id = run.info.run_id
    listed = {a.path for a in client.list_artifacts(run_id)}
    assert {"checkpoints", "confusion_matrices", "plots", "config.json", "cleaning_report.json"} <= listed
    windows = {split: int(run.data.params[f"windows_{split}"]) for split in ("val", "test")}
    for epoch in range(1, EPOCHS + 1):
        matrices = client.download_artifacts(run_id, f"confusion_matrices/epoch_{epoch:03d}.json", str(tmp))
        content = json.loads(Path(matrices).read_text())
        for split in ("val", "test"):
            assert np.array(content[split]).shape == (2, 2)
            assert np.array(content[split]).sum() == windows[split]
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert plots == {"plots/learning_curves.png", "plots/confusion_best_epoch.png"}
    config = json.loads(Path(client.download_artifacts(run_id, "config.json", str(tmp))).read_text())
    assert RunConfig.from_dict(config).preset == "smoke"

    best = checkpoint.load(client.download_artifacts(run_id, "checkpoints/best.pt", str(tmp)))
    last = checkpoint.load(client.download_artifacts(run_id, "checkpoints/last.pt", str(tmp)))
    assert best["epoch"] == int(run.data.metrics["best_epoch"]) and last["epoch"] == EPOCHS
    assert {"optimizer", "grad_scaler", "train_state", "rng"} <= set(last)
    model, cfg = rain_model_from_payload(best)   # no command line needed
    assert cfg.preset == "smoke"
    x = torch.randn(4, model.window, len(model.features))
    assert model(x).shape == (4, 2)

    import mlflow.pyfunc

    served = mlflow.pyfunc.load_model(f"models:/{run.data.tags['model_id']}")   # no unpickling: see test_safety
    expected = torch.softmax(model(x), dim=-1)[:, 1].detach().numpy()
    np.testing.assert_allclose(served.predict(x.numpy()), expected, rtol=1e-5, atol=1e-6)


def test_checkpoints_load_with_weights_only(trained):
    client, run, tmp = trained
    path = client.download_artifacts(run.info.run_id, "checkpoints/best.pt", str(tmp))
    payload = torch.load(path, map_location="cpu", weights_only=True)
    assert payload["format"] == checkpoint.BEST_FORMAT and payload["config"]["preset"] == "smoke"


def test_mlflow_run_train_reuses_its_run(store, synthetic_csv):
    result = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "train", "--env-manager", "local",
         "--experiment-name", "projects", "-P", "preset=smoke", "-P", f"data={synthetic_csv}",
         "-P", "train_epochs=2", "-P", "learning_rate=2e-3"],
        env=run_env(store), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("projects").experiment_id])
    assert len(runs) == 1                                # our code attached to the run `mlflow run` made
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.project.entryPoint"] == "train" and run.data.tags["rain.step"] == "train"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_f1")] == [1, 2]
    assert run.data.params["learning_rate"] == "2e-3"    # as `mlflow run` logged it; equivalent value kept
    assert "resolved.learning_rate" not in run.data.params


# ---- resume after SIGKILL ---------------------------------------------------------------------------------------

def start_training(store_uri: str, csv, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rain_mlflow", *smoke_args(csv, *extra)], env=run_env(store_uri),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=os.getcwd())


def run_id_and_kill_after(process: subprocess.Popen, epoch: int) -> str:
    run_id = None
    for line in process.stdout:
        if line.startswith("MLflow run "):
            run_id = line.split()[2]
        if line.startswith(f"epoch {epoch:>3}/"):
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert run_id and process.returncode == -signal.SIGKILL
    return run_id


def test_sigkill_after_epoch_2_then_resume_equals_uninterrupted(store, synthetic_csv):
    epochs = ("--train-epochs", "4")
    full = start_training(store, synthetic_csv, *epochs, "--experiment", "resume")
    out, _ = full.communicate(timeout=600)
    assert full.returncode == 0, out[-3000:]
    reference = next(line.split()[2] for line in out.splitlines() if line.startswith("MLflow run "))

    killed = start_training(store, synthetic_csv, *epochs, "--experiment", "resume")
    run_id = run_id_and_kill_after(killed, epoch=2)
    client = MlflowClient()
    assert client.get_run(run_id).info.status == "RUNNING"   # a SIGKILL leaves no chance to say otherwise

    resumed = subprocess.run([sys.executable, "-m", "rain_mlflow", "train", "--resume", run_id],
                             env=run_env(store), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming run {run_id}" in resumed.stdout
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    got, want = histories(client, run_id), histories(client, reference)
    for key in EPOCH_METRICS:
        steps = [s for s, _ in got[key]]
        assert steps == [1, 2, 3, 4], (key, steps)              # each epoch logged exactly once
        if key not in TIMING:
            assert got[key] == want[key], key                   # bit-for-bit the uninterrupted run
    assert run.data.metrics["best_epoch"] == client.get_run(reference).data.metrics["best_epoch"]


def test_resume_refuses_changes_then_continues_under_mlflow_run(store, synthetic_csv, cli):
    process = start_training(store, synthetic_csv, "--train-epochs", "3", "--experiment", "refuse")
    run_id = run_id_and_kill_after(process, epoch=1)
    assert_user_error(cli("train", "--resume", run_id, "--d-model", "64"), "cannot change d_model")
    assert_user_error(cli("train", "--resume", "0" * 32), "not found")

    result = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "train", "--env-manager", "local",
         "--experiment-name", "refuse", "-P", f"resume={run_id}"],
        env=run_env(store), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [1, 2, 3]
    (launcher,) = client.search_runs([run.info.experiment_id], "tags.`rain.step` = 'resume'")
    assert run_id in launcher.data.tags["mlflow.note.content"]


# ---- failures ---------------------------------------------------------------------------------------------------

def test_non_finite_loss_stops_with_an_error_and_a_failed_run(store, synthetic_csv, cli):
    result = cli(*smoke_args(synthetic_csv, "--learning-rate", "1e30", "--experiment", "nan"))
    assert_user_error(result, "loss became", "learning_rate")
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("nan").experiment_id])
    assert run.info.status == "FAILED"
    assert "loss became" in run.data.tags["failure_reason"]
    assert run.data.tags["diagnosis"] == "non_finite_loss"
    assert any(math.isnan(m.value) for m in client.get_metric_history(run.info.run_id, "train_loss"))


def test_interrupted_run_is_marked_killed_not_left_running(store, synthetic_csv):
    process = start_training(store, synthetic_csv, "--train-epochs", "20", "--experiment", "interrupt")
    run_id = None
    for line in process.stdout:
        if line.startswith("MLflow run "):
            run_id = line.split()[2]
        if line.startswith("epoch   1/"):
            process.send_signal(signal.SIGINT)
            break
    rest, _ = process.communicate(timeout=120)
    assert process.returncode == 130, rest
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "KILLED" and "interrupted" in run.data.tags["failure_reason"]


@pytest.mark.parametrize("args, fragments", [
    (["--batch-size", "0"], ("batch_size", ">= 1")),
    (["--learning-rate", "-1"], ("learning_rate", "> 0")),
    (["--preset", "gigantic"], ("unknown preset 'gigantic'",)),
    (["--d-model", "30"], ("d_model must be divisible by n_heads", "30")),
    (["--pretrain-model-path", "nowhere/checkpoint.pth"], ("nowhere/checkpoint.pth",)),
    (["--seq-len", "100000"], ("seq_len 100000", "longer than the training split")),
    (["--train-fraction", "0.5"], ("sum to 1",)),
    (["--lradj", "sometimes"], ("lradj", "cosine, type1, none")),
])
def test_bad_parameters_exit_2_before_any_run(store, synthetic_csv, cli, tmp_path, args, fragments):
    base = ["train", "--data", str(synthetic_csv)]
    if "--preset" not in args:
        base += ["--preset", "smoke"]
    assert_user_error(cli(*base, *args), *fragments)
    assert not (tmp_path / "mlflow.db").exists()   # the store was never opened: no run, nothing RUNNING


def test_transfer_preset_offline_without_the_weights_says_where_it_looked(store, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("RAIN_MLFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RAIN_MLFLOW_OFFLINE", "1")
    assert_user_error(cli("train", "--preset", "transfer"), "release timer-xl-260b is not in the cache",
                      str(tmp_path / "cache" / "weights" / "timer-xl-260b.pth"), "--pretrain-model-path FILE")
    assert not (tmp_path / "mlflow.db").exists()


def test_dry_run_reports_sizes_and_estimates_without_a_run(store, synthetic_csv, cli, tmp_path):
    result = cli("train", "--preset", "smoke", "--data", synthetic_csv, "--dry-run")
    assert result.code == 0, result.err
    out = result.out
    for fragment in ("resolved settings", "train ", "majority share", "candidates", "label unknown",
                     "parameters", "tokens per sample", "training memory (VRAM on a GPU), batch 64", "epoch time",
                     "indicator variable(s) missing:share"):
        assert fragment in out, fragment
    from rain_mlflow.config import presets
    from rain_mlflow.model.factory import build_classifier

    # 5 data columns plus the missingness indicator
    n_params = sum(p.numel() for p in build_classifier(presets.build("smoke"), 6).parameters())
    assert f"{n_params:,} parameters" in out
    assert not (tmp_path / "mlflow.db").exists()


def test_live_stop_on_stalled_ends_the_run_early(store, synthetic_csv, cli):
    # A learning rate of 1e-12 changes nothing: validation accuracy is identical every epoch.
    result = cli(*smoke_args(synthetic_csv, "--learning-rate", "1e-12", "--train-epochs", "8",
                             "--stop-on", "stalled", "--experiment", "stall"))
    assert result.code == 0, result.err
    assert "stopping: stalled" in result.out
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("stall").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["stopped_by"] == "stalled" and "stalled" in run.data.tags["diagnosis"].split(",")
    assert "epochs 1-3" in run.data.tags["diagnosis.stalled"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1, 2, 3]
    assert run.data.metrics["time_saved_s"] > 0
    assert "stopped early by `stalled`" in run.data.tags["mlflow.note.content"]
