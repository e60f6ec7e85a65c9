"""`promote` among real smoke runs (one deliberately broken) and `test` on what it registered.

Every test stands alone (any order, any subset): a test that needs the champion promotes it itself (promoting is
idempotent), and a test that changes the runs' verdicts puts the default ones back.
"""

from __future__ import annotations

import json
import os
import time

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from rain_mlflow.config import MODEL_NAME
from tests.conftest import assert_user_error

pytestmark = pytest.mark.e2e

EXPERIMENT = "registry"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, synthetic_csv):
    """Two healthy smoke runs and one that stalls (learning rate 1e-12: it learns nothing, flag `stalled`)."""
    from rain_mlflow.cli import main

    tmp = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    old_uri, old_cwd = os.environ.get("MLFLOW_TRACKING_URI"), os.getcwd()
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    os.chdir(tmp)
    base = ["train", "--preset", "smoke", "--data", str(synthetic_csv), "--train-epochs", "3",
            "--experiment", EXPERIMENT]
    variants = {"good_a": ["--learning-rate", "3e-4"], "good_b": ["--seed", "7", "--learning-rate", "3e-4"],
                "stalled": ["--learning-rate", "1e-12", "--stop-on", ""]}
    ids = {}
    try:
        for name, extra in variants.items():
            with pytest.raises(SystemExit) as done:
                main([*base, *extra, "--run-name", name])
            assert done.value.code == 0
            client = MlflowClient()
            (run,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id],
                                        f"attributes.run_name = '{name}'")
            ids[name] = run.info.run_id
        yield ids, tmp
    finally:
        os.chdir(old_cwd)
        if old_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri


def val_f1_at_best(client: MlflowClient, run_id: str) -> float:
    best = int(client.get_run(run_id).data.metrics["best_epoch"])
    return {m.step: m.value for m in client.get_metric_history(run_id, "val_f1")}[best]


def test_the_broken_run_is_flagged(runs):
    ids, _ = runs
    tags = MlflowClient().get_run(ids["stalled"]).data.tags
    assert "stalled" in tags["diagnosis"].split(",") and "diagnosis.stalled" in tags


def champion(cli) -> str:
    """Promote the champion (idempotent) and return its version."""
    result = cli("promote", "--experiment", EXPERIMENT)
    assert result.code == 0, result.err
    return str(MlflowClient().get_model_version_by_alias(MODEL_NAME, "champion").version)


def test_promote_registers_the_best_healthy_run(runs, cli):
    ids, _ = runs
    client = MlflowClient()
    result = cli("promote", "--experiment", EXPERIMENT)
    assert result.code == 0, result.err
    # the best run by val_f1 among those without a flag (a 3-epoch smoke run can be flagged by chance)
    healthy = [n for n in ("good_a", "good_b") if client.get_run(ids[n]).data.tags["diagnosis"] == "ok"]
    assert healthy, {n: client.get_run(ids[n]).data.tags["diagnosis"] for n in ("good_a", "good_b")}
    expected = max(healthy, key=lambda n: val_f1_at_best(client, ids[n]))
    version = client.get_model_version_by_alias(MODEL_NAME, "champion")
    assert version.run_id == ids[expected]
    assert version.tags["diagnosis"] == "ok" and version.tags["preset"] == "smoke"
    assert float(version.tags["metric.val_f1"]) == pytest.approx(val_f1_at_best(client, ids[expected]), rel=1e-5)
    assert version.tags["data_digest"] == client.get_run(ids[expected]).data.tags["data_digest"]
    assert "flagged" in result.out and "stalled" in result.out and "<- promoted" in result.out
    promote_runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id],
                                      "tags.`rain.step` = 'promote'")
    assert promote_runs[0].data.tags["promoted_run_id"] == ids[expected]


def test_promoting_again_creates_no_new_version(runs, cli):
    version = champion(cli)
    versions = len(MlflowClient().search_model_versions(f"name='{MODEL_NAME}'"))
    result = cli("promote", "--experiment", EXPERIMENT)
    assert result.code == 0, result.err
    assert f"already registered as version {version}" in result.out
    assert len(MlflowClient().search_model_versions(f"name='{MODEL_NAME}'")) == versions


def test_test_on_the_champion(runs, cli):
    ids, _ = runs
    client = MlflowClient()
    champion(cli)
    champion_run = client.get_model_version_by_alias(MODEL_NAME, "champion").run_id
    result = cli("test", "--model-uri", f"models:/{MODEL_NAME}@champion", "--experiment", EXPERIMENT)
    assert result.code == 0, result.err
    assert "majority" in result.out and "persistence" in result.out and "ROC-AUC" in result.out
    assert "gbm" in result.out and "skill over the best baseline" in result.out
    (test_run,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id],
                                     "tags.`rain.step` = 'test'")
    assert test_run.data.tags["trained_run_id"] == champion_run
    metrics = test_run.data.metrics
    # the test split scored here is the one training scored every epoch (float32 here, bf16 there)
    best = int(client.get_run(champion_run).data.metrics["best_epoch"])
    trained = {m.step: m.value for m in client.get_metric_history(champion_run, "test_accuracy")}[best]
    assert metrics["accuracy"] == pytest.approx(trained, abs=0.01)
    assert metrics["accuracy"] > metrics["majority_accuracy"] and metrics["mcc"] > metrics["persistence_mcc"]
    assert metrics["n_windows"] == int(client.get_run(champion_run).data.params["windows_test"])
    # the same windows, the same baselines: the gbm refitted on the training split scores what training logged
    trained_metrics = client.get_run(champion_run).data.metrics
    for name in ("always_rain_f1", "persistence_f1", "persistence_mcc", "gbm_f1", "gbm_mcc"):
        assert metrics[name] == pytest.approx(trained_metrics[f"test_{name}"]), name
    assert metrics["skill_f1"] == pytest.approx(metrics["f1"] - max(
        metrics[f"{b}_f1"] for b in ("always_rain", "persistence", "gbm")))
    files = {a.path for a in client.list_artifacts(test_run.info.run_id)}
    assert {"confusion_matrix.json", "classification_report.txt", "predictions.csv",
            "confusion_matrix.png"} <= files


def test_test_on_a_new_data_file_and_a_checkpoint(runs, cli, tmp_path, synthetic_csv):
    ids, _ = runs
    from rain_mlflow.synth import SynthConfig, write_synthetic

    other = tmp_path / "other_station.csv"
    write_synthetic(str(other), SynthConfig(years=1.0, seed=3))
    result = cli("test", "--model-uri", ids["good_a"], "--data", other, "--experiment", EXPERIMENT)
    assert result.code == 0, result.err
    assert "on all windows" in result.out
    assert f"gbm fitted on the training split of {synthetic_csv}" in result.out
    path = MlflowClient().download_artifacts(ids["good_a"], "checkpoints/best.pt", str(tmp_path))
    result = cli("test", "--model-uri", path, "--data", other, "--experiment", EXPERIMENT)
    assert result.code == 0, result.err
    predictions = pd.read_csv(MlflowClient().download_artifacts(
        _latest_test_run(), "predictions.csv", str(tmp_path)))
    assert set(predictions.columns) == {"window_end", "rain_probability", "predicted", "label"}
    assert predictions["rain_probability"].between(0, 1).all()


def _latest_test_run() -> str:
    client = MlflowClient()
    exp = client.get_experiment_by_name(EXPERIMENT).experiment_id
    latest = client.search_runs([exp], "tags.`rain.step` = 'test'", order_by=["attributes.start_time DESC"])[0]
    return latest.info.run_id


def test_a_flagged_run_needs_allow_flagged(runs, cli):
    ids, _ = runs
    champion_version = champion(cli)
    assert_user_error(cli("promote", "--experiment", EXPERIMENT, "--run-id", ids["stalled"]),
                      "flagged", "stalled", "--allow-flagged")
    result = cli("promote", "--experiment", EXPERIMENT, "--run-id", ids["stalled"], "--allow-flagged",
                 "--alias", "challenger")
    assert result.code == 0, result.err
    version = MlflowClient().get_model_version_by_alias(MODEL_NAME, "challenger")
    assert version.run_id == ids["stalled"] and "stalled" in version.tags["diagnosis"]
    assert str(MlflowClient().get_model_version_by_alias(MODEL_NAME, "champion").version) == champion_version


def test_nothing_qualifies_is_a_clear_error(runs, cli):
    assert_user_error(cli("promote", "--experiment", "no-such-experiment"), "not found")
    assert_user_error(cli("promote", "--experiment", EXPERIMENT, "--metric", "val_banana"), "val_banana")


def test_bad_model_uri_is_a_clear_error(runs, cli):
    assert_user_error(cli("test", "--model-uri", "models:/nope@champion"), "cannot load model")
    assert_user_error(cli("test", "--model-uri", "no/such/file.pt"), "neither")


# ---- verdicts that stay, metrics that select fairly, failures that write nothing ------------------------------------

def diagnosis_tags(run_id: str) -> dict[str, str]:
    return {k: v for k, v in MlflowClient().get_run(run_id).data.tags.items() if k.startswith("diagnosis")}


def test_promote_keeps_the_verdict_compare_gave(runs, cli):
    ids, _ = runs
    try:
        # The stalled run has 3 epochs: with --stalled-epochs 4 compare does not call it stalled.
        result = cli("compare", "--experiment", EXPERIMENT, "--stalled-epochs", "4", "--format", "json")
        assert result.code == 0, result.err
        written = {name: diagnosis_tags(run_id) for name, run_id in ids.items()}
        assert "stalled" not in written["stalled"]["diagnosis"].split(",")
        assert json.loads(written["stalled"]["diagnosis.thresholds"])["stalled_epochs"] == 4
        result = cli("promote", "--experiment", EXPERIMENT, "--model-name", "rain-verdicts", "--allow-flagged")
        assert result.code == 0, result.err
        assert {name: diagnosis_tags(run_id) for name, run_id in ids.items()} == written  # as compare wrote them
        # Told otherwise, promote judges by the thresholds it is given, and stores them.
        result = cli("promote", "--experiment", EXPERIMENT, "--model-name", "rain-verdicts", "--allow-flagged",
                     "--stalled-epochs", "3")
        assert result.code == 0, result.err
        assert "stalled" in diagnosis_tags(ids["stalled"])["diagnosis"].split(",")
        assert json.loads(diagnosis_tags(ids["stalled"])["diagnosis.thresholds"])["stalled_epochs"] == 3
    finally:
        assert cli("compare", "--experiment", EXPERIMENT, "--format", "json").code == 0  # the default verdicts


def test_promote_chooses_on_validation_metrics_unless_told(runs, cli):
    ids, _ = runs
    assert_user_error(cli("promote", "--experiment", EXPERIMENT, "--metric", "test_f1"),
                      "--metric must be a validation metric", "got 'test_f1'", "--allow-test-metric")
    assert_user_error(cli("promote", "--experiment", EXPERIMENT, "--metric", "train_loss"),
                      "--metric must be a validation metric", "got 'train_loss'")
    result = cli("promote", "--experiment", EXPERIMENT, "--metric", "test_f1", "--allow-test-metric",
                 "--model-name", "rain-by-test-f1")
    assert result.code == 0, result.err
    client = MlflowClient()
    # among the runs without a flag (a 3-epoch smoke run can be flagged by chance)
    healthy = [n for n in ("good_a", "good_b") if client.get_run(ids[n]).data.tags["diagnosis"] == "ok"]
    assert healthy
    by_test = {name: {m.step: m.value for m in client.get_metric_history(ids[name], "test_f1")}
               [int(client.get_run(ids[name]).data.metrics["best_epoch"])] for name in healthy}
    chosen = client.get_model_version_by_alias("rain-by-test-f1", "champion").run_id
    assert chosen == ids[max(by_test, key=by_test.get)]


def test_runs_from_any_tool_are_diagnosed_beside_train_runs(runs, cli):
    """One experiment: the `train` runs, a notebook's plain MlflowClient run and a Lightning-style run."""
    from mlflow.entities import Metric

    ids, _ = runs
    client = MlflowClient()
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    now = int(time.time() * 1000)
    notebook = client.create_run(experiment_id, run_name="notebook").info.run_id  # no tags of ours
    client.log_batch(notebook, metrics=[
        Metric(key, value, now + epoch, epoch) for key, values in {
            "val_accuracy": [0.70, 0.64, 0.71], "test_accuracy": [0.69, 0.65, 0.70], "val_loss": [0.04, 0.043, 0.039],
            "train_loss": [0.05, 0.045, 0.04], "epoch_time_s": [60.0] * 3}.items()
        for epoch, value in enumerate(values, start=1)])
    lightning = client.create_run(experiment_id, run_name="lightning").info.run_id
    client.log_batch(lightning, metrics=[  # Lightning-style names, steps from 0
        Metric(key, value, now + step, step) for key, values in {
            "val_acc": [0.6905, 0.6905, 0.6905], "val_loss": [0.0393, 0.0394, 0.0395]}.items()
        for step, value in enumerate(values)])
    for run_id in (notebook, lightning):
        client.set_terminated(run_id)
    try:
        result = cli("compare", "--experiment", EXPERIMENT, "--format", "json", "--metric-map", "lightning")
        assert result.code == 0, result.err
        rows = {row["run_id"]: row for row in json.loads(result.out)}
        assert set(ids.values()) | {notebook, lightning} <= set(rows)  # all diagnosed
        assert rows[notebook]["flags"] == ["oscillating"]
        assert rows[lightning]["flags"] == ["stalled", "val_loss_not_improving"]
        assert rows[lightning]["epochs_from"] == "step + 1 (steps counted from 0)"
        assert "stalled" in rows[ids["stalled"]]["flags"]
        # skipped, from what each run logged: smoke runs on CPU log no VRAM; the notebook logs no budget either.
        assert rows[ids["good_a"]]["skipped"] == {"vram_over_budget": "vram_peak_gb"}
        assert rows[notebook]["skipped"] == {"vram_over_budget": "vram_peak_gb, param vram_budget_gb",
                                             "class_collapse": "val_pred_rain_fraction"}
        assert rows[lightning]["skipped"] == {
            "val_test_divergence": "test_accuracy", "vram_over_budget": "vram_peak_gb, param vram_budget_gb",
            "class_collapse": "val_pred_rain_fraction"}
        for run_id, row in rows.items():  # tags written on every run, whoever logged it
            assert client.get_run(run_id).data.tags["diagnosis"] == (",".join(row["flags"]) or "ok")
    finally:
        for run_id in (notebook, lightning):
            client.delete_run(run_id)  # the other tests see the experiment as the fixture made it


def test_a_promote_that_fails_writes_nothing(store, cli):
    from tests.test_compare import log_run

    client = MlflowClient()
    experiment_id = client.create_experiment("nothing-qualifies")
    sick = log_run(client, experiment_id, "sick", {"val_accuracy": [0.75, 0.69], "val_loss": [0.03, 0.04],
                                                    "val_f1": [0.8, 0.7]})
    client.set_tag(sick, "diagnosis", "ok")  # out of date: a promote that went ahead would correct it
    before = client.get_run(sick).data.tags
    assert_user_error(cli("promote", "--experiment", "nothing-qualifies"), "no run of experiment", "qualifies",
                      "oscillating")  # flagged, and no logged model
    assert client.get_run(sick).data.tags == before
    assert len(client.search_runs([experiment_id])) == 1  # no promote run either
    assert client.search_registered_models() == []
