"""`promote` among real smoke runs (one deliberately broken) and `test` on what it registered."""

from __future__ import annotations

import os

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from rain_mlflow.config import MODEL_NAME
from tests.conftest import assert_user_error

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
    variants = {"good_a": ["--learning-rate", "1e-3"], "good_b": ["--seed", "7", "--learning-rate", "1e-3"],
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
    assert version.run_id == ids[expected] and str(version.version) == "1"
    assert version.tags["diagnosis"] == "ok" and version.tags["preset"] == "smoke"
    assert float(version.tags["metric.val_f1"]) == pytest.approx(val_f1_at_best(client, ids[expected]), rel=1e-5)
    assert version.tags["data_digest"] == client.get_run(ids[expected]).data.tags["data_digest"]
    assert "flagged" in result.out and "stalled" in result.out and "<- promoted" in result.out
    promote_runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id],
                                      "tags.`rain.step` = 'promote'")
    assert promote_runs[0].data.tags["promoted_run_id"] == ids[expected]


def test_promoting_again_creates_no_new_version(runs, cli):
    result = cli("promote", "--experiment", EXPERIMENT)
    assert result.code == 0, result.err
    assert "already registered as version 1" in result.out
    assert len(MlflowClient().search_model_versions(f"name='{MODEL_NAME}'")) == 1


def test_test_on_the_champion(runs, cli):
    ids, _ = runs
    client = MlflowClient()
    champion = client.get_model_version_by_alias(MODEL_NAME, "champion").run_id
    result = cli("test", "--model-uri", f"models:/{MODEL_NAME}@champion", "--experiment", EXPERIMENT)
    assert result.code == 0, result.err
    assert "majority" in result.out and "persistence" in result.out and "ROC-AUC" in result.out
    assert "gbm" in result.out and "skill over the best baseline" in result.out
    (test_run,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id],
                                     "tags.`rain.step` = 'test'")
    assert test_run.data.tags["trained_run_id"] == champion
    metrics = test_run.data.metrics
    # the test split scored here is the one training scored every epoch (float32 here, bf16 there)
    best = int(client.get_run(champion).data.metrics["best_epoch"])
    trained = {m.step: m.value for m in client.get_metric_history(champion, "test_accuracy")}[best]
    assert metrics["accuracy"] == pytest.approx(trained, abs=0.01)
    assert metrics["accuracy"] > metrics["majority_accuracy"] and metrics["mcc"] > metrics["persistence_mcc"]
    assert metrics["n_windows"] == int(client.get_run(champion).data.params["windows_test"])
    # the same windows, the same baselines: the gbm refitted on the training split scores what training logged
    trained_metrics = client.get_run(champion).data.metrics
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
    return client.search_runs([exp], "tags.`rain.step` = 'test'", order_by=["attributes.start_time DESC"])[0].info.run_id


def test_a_flagged_run_needs_allow_flagged(runs, cli):
    ids, _ = runs
    assert_user_error(cli("promote", "--experiment", EXPERIMENT, "--run-id", ids["stalled"]),
                      "flagged", "stalled", "--allow-flagged")
    result = cli("promote", "--experiment", EXPERIMENT, "--run-id", ids["stalled"], "--allow-flagged",
                 "--alias", "challenger")
    assert result.code == 0, result.err
    version = MlflowClient().get_model_version_by_alias(MODEL_NAME, "challenger")
    assert version.run_id == ids["stalled"] and "stalled" in version.tags["diagnosis"]
    assert str(MlflowClient().get_model_version_by_alias(MODEL_NAME, "champion").version) == "1"


def test_nothing_qualifies_is_a_clear_error(runs, cli):
    assert_user_error(cli("promote", "--experiment", "no-such-experiment"), "not found")
    assert_user_error(cli("promote", "--experiment", EXPERIMENT, "--metric", "val_banana"), "val_banana")


def test_bad_model_uri_is_a_clear_error(runs, cli):
    assert_user_error(cli("test", "--model-uri", "models:/nope@champion"), "cannot load model")
    assert_user_error(cli("test", "--model-uri", "no/such/file.pt"), "neither")
