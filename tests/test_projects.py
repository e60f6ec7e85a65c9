"""Every MLproject entry point through a real `mlflow run ... --env-manager local`, starting with `main`."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO, run_env

pytestmark = pytest.mark.e2e

EXPERIMENT = "rain-timerxl"


# The embedded record shortened from 11 to 4 years (RAIN_MLFLOW_SYNTH_YEARS, docs/testing.md): the same pipeline in
# about 40 % of the time. On it the `smoke` run is healthy by a margin (largest val/test gap 3.4 of 5 pts), as
# promote needs; at 2 years it is flagged val_test_divergence, at 3 years it passes by 0.24 pts only.
PIPELINE_YEARS = "4"


def mlflow_run(uri: str, cwd, *args: str, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local",
                           "--experiment-name", EXPERIMENT, *args],
                          env={**run_env(uri), **env}, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """The README's main job: `mlflow run .` on the embedded defaults (a shorter record), in a fresh store."""
    tmp = tmp_path_factory.mktemp("pipeline")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    result = mlflow_run(uri, tmp, RAIN_MLFLOW_SYNTH_YEARS=PIPELINE_YEARS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return uri, tmp, result.stdout


def client_for(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri)


def test_main_groups_its_steps_but_shows_the_training_run_as_a_row(pipeline):
    uri, _, _ = pipeline
    client = client_for(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "mlflow.sharedViewState.rain-training" in exp.tags  # the view the printed runs link opens
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("rain.step") == "main"]
    pipeline_id = parent.info.run_id
    children = {r.data.tags["rain.step"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == pipeline_id}
    assert set(children) == {"synth", "clean", "test", "compare", "promote"}
    (train,) = [r for r in runs if r.data.tags.get("rain.step") == "train"]
    assert "mlflow.parentRunId" not in train.data.tags  # top-level: a row of the runs table, charted directly
    assert {r.info.run_id for r in runs if r.data.tags.get("pipeline") == pipeline_id} == \
        {pipeline_id, train.info.run_id} | {r.info.run_id for r in children.values()}
    assert all(r.info.status == "FINISHED" for r in runs)
    assert parent.data.tags["mlflow.project.entryPoint"] == "main"
    assert parent.info.run_name == "pipeline (smoke)"
    note = parent.data.tags["mlflow.note.content"]
    assert "champion" in note
    for run_id in [train.info.run_id, *(r.info.run_id for r in children.values())]:
        assert f"(#/experiments/{exp.experiment_id}/runs/{run_id}?workflowType=machine_learning)" in note
    version = client.get_model_version_by_alias("rain-timerxl-classifier", "champion")
    assert version.run_id == train.info.run_id
    assert children["test"].data.tags["trained_run_id"] == train.info.run_id
    assert float(children["synth"].data.params["years"]) == float(PIPELINE_YEARS)  # the shortened record
    assert {a.path for a in client.list_artifacts(children["compare"].info.run_id, "report")} == {
        "report/report.md", "report/curves.png"}


def test_main_prints_where_to_look(pipeline):
    uri, _, out = pipeline
    assert "== summary ==" in out
    assert "rain-timerxl-classifier@champion = version 1" in out
    client = client_for(uri)
    exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    train = client.search_runs([exp_id], "tags.`rain.step` = 'train'")[0]
    assert train.info.run_id in out
    summary = out.split("== summary ==", 1)[1]
    ui = "http://127.0.0.1:5000/#"
    assert f"{ui}/experiments/{exp_id}/runs?workflowType=machine_learning&viewStateShareKey=rain-training" in summary
    assert f"{ui}/experiments/{exp_id}/runs/{train.info.run_id}?workflowType=machine_learning" in summary
    assert f"{ui}/models/rain-timerxl-classifier?workflowType=machine_learning" in summary
    assert f"(start the UI first: mlflow ui --backend-store-uri {uri})" in summary
    assert "View run" not in out  # MLflow's own links open the GenAI view; ours are the ones printed


def test_synth_and_clean_entry_points(pipeline):
    uri, tmp, _ = pipeline
    raw, cleaned = tmp / "raw1.csv", tmp / "clean1.csv"  # absolute: `mlflow run` runs in the project directory
    result = mlflow_run(uri, tmp, "-e", "synth", "-P", f"output={raw}", "-P", "years=1", "-P", "seed=4")
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(pd.read_csv(raw)) > 8000
    result = mlflow_run(uri, tmp, "-e", "clean", "-P", f"data={raw}", "-P", f"output={cleaned}")
    assert result.returncode == 0, result.stderr[-2000:]
    client = client_for(uri)
    (run,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id],
                                f"params.output = '{cleaned}'")
    assert run.data.tags["rain.step"] == "clean" and run.info.status == "FINISHED"
    assert run.data.tags["mlflow.project.entryPoint"] == "clean"
    assert json.loads((tmp / "clean1.report.json").read_text())["steps"] == len(pd.read_csv(cleaned))


def test_compare_entry_point_records_its_report_and_fails_on_request(pipeline):
    uri, tmp, _ = pipeline
    result = mlflow_run(uri, tmp, "-e", "compare", "-P", "format=json")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(result.stdout[result.stdout.index("["):result.stdout.rindex("]") + 1])
    assert len(rows) == 1 and rows[0]["flags"] == [] and rows[0]["run_name"] == "smoke"
    client = client_for(uri)
    compare_runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id],
                                      "tags.`mlflow.project.entryPoint` = 'compare'")
    assert {a.path for a in client.list_artifacts(compare_runs[0].info.run_id, "report")} == {
        "report/report.md", "report/curves.png"}
    # thresholds so strict that the healthy run counts as stalled: --fail-on stalled makes the run fail
    failing = mlflow_run(uri, tmp, "-e", "compare", "-P", "fail_on=stalled", "-P", "stalled_epochs=2",
                         "-P", "stalled_tolerance=0.5")
    assert failing.returncode != 0 and "stalled" in failing.stdout
    # Those thresholds are now stored on the run and promote would reuse them: give it its default verdict back.
    restored = subprocess.run([sys.executable, "-m", "rain_mlflow", "compare", "--experiment", EXPERIMENT],
                              env=run_env(uri), cwd=tmp, capture_output=True, text=True, timeout=600)
    assert restored.returncode == 0, restored.stderr[-2000:]


def test_promote_and_test_entry_points(pipeline):
    uri, tmp, _ = pipeline
    result = mlflow_run(uri, tmp, "-e", "promote")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "already registered as version 1" in result.stdout
    result = mlflow_run(uri, tmp, "-e", "test")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "models:/rain-timerxl-classifier@champion on test split" in result.stdout


def test_import_log_entry_point(pipeline):
    uri, tmp, _ = pipeline
    log = REPO / "tests" / "fixtures" / "logs" / "transfer_long.log"
    result = subprocess.run([sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local",
                             "--experiment-name", "imported", "-e", "import-log", "-P", f"log={log}",
                             "-P", "preset=transfer_long", "-P", "vram_budget_gb=7", "-P", "vram_peak_gb=10"],
                            env=run_env(uri), cwd=tmp, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    client = client_for(uri)
    runs = client.search_runs([client.get_experiment_by_name("imported").experiment_id])
    (launcher,) = [r for r in runs if r.data.tags.get("rain.step") == "import-log"]
    (imported,) = [r for r in runs if r.data.tags.get("rain.step") == "import"]
    assert imported.data.tags["mlflow.parentRunId"] == launcher.info.run_id
    assert imported.data.tags["diagnosis"] == "val_test_divergence,vram_over_budget"
    assert imported.data.tags["preset"] == "transfer_long" and imported.info.status == "FINISHED"
    assert launcher.info.status == "FINISHED"
