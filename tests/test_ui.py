"""The UI links, checked against hand-written URLs (the browser test opens them on a real server)."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, unquote

import pytest

from rain_mlflow.tracking import ui

pytestmark = pytest.mark.unit

RUN_A, RUN_B = "a" * 32, "b" * 32


def test_a_server_is_its_own_ui_without_credentials_or_trailing_slash():
    assert ui.ui_root("http://127.0.0.1:5000/") == "http://127.0.0.1:5000"
    assert ui.ui_root("https://alice:secret@mlflow.example.org/team") == "https://mlflow.example.org/team"
    assert ui.ui_root("http://[::1]:8080") == "http://[::1]:8080"
    assert ui.serve_hint("http://127.0.0.1:5000") is None


def test_a_database_store_points_at_mlflow_ui_and_says_how_to_start_it():
    assert ui.ui_root("sqlite:////tmp/mlflow.db") == "http://127.0.0.1:5000"
    assert ui.serve_hint("sqlite:////tmp/mlflow.db") == "mlflow ui --backend-store-uri sqlite:////tmp/mlflow.db"
    assert ui.serve_hint("postgresql+psycopg2://mlflow:pw@db:5432/mlflow") == \
        "mlflow ui --backend-store-uri postgresql+psycopg2://mlflow:***@db:5432/mlflow"
    assert ui.ui_root("databricks") is None and ui.serve_hint("databricks") is None


def test_every_page_selects_the_model_training_view():
    assert ui.experiment_url("http://h:1", "3") == \
        "http://h:1/#/experiments/3/runs?workflowType=machine_learning&viewStateShareKey=rain-training"
    assert ui.experiment_url("", "3", training_view=False) == "#/experiments/3/runs?workflowType=machine_learning"
    assert ui.run_url("http://h:1", "3", RUN_A) == \
        f"http://h:1/#/experiments/3/runs/{RUN_A}?workflowType=machine_learning"
    assert ui.model_url("", "rain model", "2") == "#/models/rain%20model/versions/2?workflowType=machine_learning"


def test_compare_and_chart_links_name_exactly_the_runs():
    url = ui.compare_url("http://h:1", ["3"], [RUN_A, RUN_B, RUN_A])
    route, query = url.split("#/compare-runs?")
    assert route == "http://h:1/"
    params = parse_qs(query)
    assert json.loads(params["runs"][0]) == [RUN_A, RUN_B] and json.loads(params["experiments"][0]) == ["3"]
    assert params["workflowType"] == ["machine_learning"]
    assert "[" not in query and '"' not in query  # the JSON arrays are URL-encoded

    charts = ui.charts_url("", "3", [RUN_A, RUN_B])
    assert charts.startswith("#/experiments/3/runs?workflowType=machine_learning&compareRunsMode=CHART&searchFilter=")
    assert unquote(charts.split("searchFilter=")[1]) == f"attributes.run_id IN ('{RUN_A}', '{RUN_B}')"


def test_compare_links_stop_at_the_limit():
    many = [f"{i:032x}" for i in range(ui.COMPARE_LIMIT + 5)]
    query = ui.compare_url("", ["1"], many).split("?", 1)[1]
    assert json.loads(parse_qs(query)["runs"][0]) == many[:ui.COMPARE_LIMIT]


def test_training_view_state_selects_the_columns_users_compare():
    state = json.loads(ui.training_view_state())
    assert state == {"selectedColumns": ["attributes.`Models`", "metrics.`val_accuracy`", "metrics.`val_f1`",
                                         "metrics.`val_mcc`", "tags.`preset`", "tags.`diagnosis`"]}


def test_links_block_prefixes_the_root_and_adds_the_hint_for_a_database():
    block = ui.links_block("sqlite:////tmp/x.db", [("this run", "#/experiments/1/runs/r?workflowType=machine_learning"),
                                                   ("training runs", "#/experiments/1/runs?workflowType=x")])
    assert block == (
        "MLflow UI (Model training view):\n"
        "  this run       http://127.0.0.1:5000/#/experiments/1/runs/r?workflowType=machine_learning\n"
        "  training runs  http://127.0.0.1:5000/#/experiments/1/runs?workflowType=x\n"
        "  (start the UI first: mlflow ui --backend-store-uri sqlite:////tmp/x.db)\n")
    assert ui.links_block("databricks", [("run", "#/x")]) == ""
    assert "start the UI" not in ui.links_block("http://127.0.0.1:5000", [("run", "#/x")])
