"""train, compare, promote and test against real tracking servers on 127.0.0.1, no mocks:

- `local_stack`: `mlflow server` with a sqlite backend, artifacts proxied into a local directory;
- `team_stack`: the docker/compose.yaml shape: PostgreSQL backend (a throwaway database), artifacts proxied into
  S3 (moto in server mode), basic-auth on, a non-admin user who trains.

Each stack runs once per session (conftest.py): two 2-epoch smoke runs, compare, promote, test, through the CLI.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests import servers
from tests.conftest import ALICE, SERVER_EXPERIMENT, error_lines

pytestmark = pytest.mark.server

MODEL = "rain-timerxl-classifier"
URL = re.compile(r"https?://\S+")


@pytest.fixture(params=["local_stack", "team_stack"])
def stack(request) -> servers.Stack:
    return request.getfixturevalue(request.param)


def client_for(stack: servers.Stack) -> MlflowClient:
    """A client of the stack's server; use it inside `servers.client_env(stack.server.client_env)`."""
    return MlflowClient(stack.server.url)


def test_every_epoch_and_both_checkpoints_reach_the_server(stack, tmp_path):
    assert set(stack.runs) == {"alpha", "beta"}
    with servers.client_env(stack.server.client_env):
        client = client_for(stack)
        for name, run_id in stack.runs.items():
            run = client.get_run(run_id)
            assert run.info.status == "FINISHED" and run.data.tags["preset"] == "smoke"
            for key in ("val_loss", "val_accuracy", "train_loss"):
                assert sorted(m.step for m in client.get_metric_history(run_id, key)) == [1, 2], (name, key)
            assert {a.path for a in client.list_artifacts(run_id, "checkpoints")} == {
                "checkpoints/best.pt", "checkpoints/last.pt"}
            path = client.download_artifacts(run_id, "checkpoints/last.pt", str(tmp_path / name))
            payload = torch.load(path, map_location="cpu", weights_only=True)
            assert payload["config"]["preset"] == "smoke" and payload["epoch"] == 2
            assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied: no storage keys on clients


def test_compare_promote_and_test_ran_against_the_server(stack):
    compared = stack.outcomes["compare"].out
    with servers.client_env(stack.server.client_env):
        client = client_for(stack)
        for name, run_id in stack.runs.items():
            row = next(line for line in compared.splitlines() if line.startswith(f"{run_id[:8]} {name} "))
            diagnosis = client.get_run(run_id).data.tags["diagnosis"]  # written by compare through the server
            assert row.rstrip().endswith(diagnosis.replace(",", ", ") if diagnosis != "ok" else "ok")
        version = client.get_model_version_by_alias(MODEL, "champion")
        assert version.run_id in stack.runs.values()
        assert f"registered as new version {version.version} (run {version.run_id})" in stack.outcomes["promote"].out
        (test_run,) = client.search_runs([client.get_experiment_by_name(SERVER_EXPERIMENT).experiment_id],
                                         "tags.`rain.step` = 'test'")
        assert test_run.data.tags["trained_run_id"] == version.run_id
    printed = re.search(r"^model\s+([\d.]+)%", stack.outcomes["test"].out, flags=re.M)
    assert float(printed.group(1)) / 100 == pytest.approx(test_run.data.metrics["accuracy"], abs=5e-5)


def test_every_printed_link_is_the_servers_model_training_view(stack):
    urls = [url for outcome in stack.outcomes.values() for url in URL.findall(outcome.out)]
    assert len(urls) >= 10  # train 2 x 2, compare 3, promote 3, test 2
    for url in urls:
        assert url.startswith(f"{stack.server.url}/#/") and "workflowType=machine_learning" in url, url
    assert not any("View run" in outcome.out for outcome in stack.outcomes.values())  # MLflow's own, GenAI view


def test_local_server_keeps_artifacts_in_its_directory(local_stack):
    exp_id = _experiment_id(local_stack)
    for run_id in local_stack.runs.values():
        best = Path(local_stack.server.artifacts) / exp_id / run_id / "artifacts" / "checkpoints" / "best.pt"
        assert best.is_file()


def test_team_server_keeps_artifacts_in_s3(team_stack):
    exp_id = _experiment_id(team_stack)
    s3 = servers.s3_client(team_stack.server.s3_env)
    keys = {obj["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="mlflow")
            for obj in page.get("Contents", [])}
    for run_id in team_stack.runs.values():
        assert f"artifacts/{exp_id}/{run_id}/artifacts/checkpoints/best.pt" in keys
        assert f"artifacts/{exp_id}/{run_id}/artifacts/checkpoints/last.pt" in keys
    assert any(key.endswith("/MLmodel") for key in keys)  # the registered model's files too


def test_team_store_is_postgresql_and_compare_reads_it_directly(team_stack):
    """The same comparison over HTTP and straight from PostgreSQL (compare's SQL bulk reader)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    backend = team_stack.server.backend_uri
    assert backend.startswith("postgresql")
    assert isinstance(MlflowClient(backend)._tracking_client.store, SqlAlchemyStore)
    args = ("compare", "--experiment", SERVER_EXPERIMENT, "--format", "json", "--no-write-tags")
    over_http = servers.run_cli(team_stack.server.client_env, *args)
    direct = servers.run_cli({"MLFLOW_TRACKING_URI": backend}, *args)
    assert over_http.code == 0 and direct.code == 0, (over_http.err, direct.err)

    def rows(outcome: servers.Outcome) -> dict[str, tuple]:
        parsed = json.loads(outcome.out)
        return {r["run_name"]: (r["run_id"], r["epochs"], r["best_epoch"], r["flags"], r["best_val_f1"])
                for r in parsed}

    assert rows(direct) == rows(over_http)
    assert {name: row[0] for name, row in rows(direct).items()} == team_stack.runs
    assert all(row[1] == 2 for row in rows(direct).values())


@pytest.mark.parametrize("credentials, fragments", [
    ({"MLFLOW_TRACKING_USERNAME": ALICE[0], "MLFLOW_TRACKING_PASSWORD": "not-her-password"},
     ("MLFLOW_TRACKING_PASSWORD", "got user 'alice'", "HTTP 401")),
    ({}, ("must be set", "got neither", "HTTP 401")),
])
def test_wrong_or_missing_credentials_are_one_error_line(team_stack, tiny_csv, credentials, fragments):
    env = {"MLFLOW_TRACKING_URI": team_stack.server.url, **credentials}
    before = _run_count(team_stack)
    for args in (["train", "--preset", "smoke", "--data", str(tiny_csv), "--experiment", SERVER_EXPERIMENT],
                 ["compare", "--experiment", SERVER_EXPERIMENT], ["promote", "--experiment", SERVER_EXPERIMENT]):
        outcome = servers.run_cli(env, *args)
        assert outcome.code == 2, (args, outcome.err[-2000:])
        (line,) = error_lines(outcome.err)
        assert "Traceback" not in outcome.err
        assert team_stack.server.url in line and all(f in line for f in fragments), line
        assert "not-her-password" not in outcome.err
    assert _run_count(team_stack) == before  # nothing started, nothing left RUNNING


def _experiment_id(stack: servers.Stack) -> str:
    with servers.client_env(stack.server.client_env):
        return client_for(stack).get_experiment_by_name(SERVER_EXPERIMENT).experiment_id


def _run_count(stack: servers.Stack) -> int:
    with servers.client_env(stack.server.client_env):
        return len(client_for(stack).search_runs([_experiment_id(stack)]))
