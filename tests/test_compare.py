"""`compare` against real MLflow stores: a sqlite file, and a real `mlflow server` over HTTP. No mocks."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import matplotlib.image
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.store.tracking.rest_store import RestStore

from rain_mlflow import compare
from rain_mlflow.diagnostics import Thresholds
from rain_mlflow.errors import UserError

HOUR_MS = 3_600_000
SEED_PARAMS = {"windows_val": "6025", "train_epochs": "30"}


def log_run(client: MlflowClient, experiment_id: str, name: str, per_epoch: dict[str, list[float]], *,
            preset: str = "small", params: dict | None = None, summary: dict | None = None,
            status: str = "FINISHED", step_tag: str = "train", end_ms: int | None = None,
            extra: list[Metric] = ()) -> str:
    """One training run as the trainer records it: per-epoch metrics at step = epoch, summaries at step 0."""
    run = client.create_run(experiment_id, run_name=name, tags={"rain.step": step_tag, "preset": preset})
    n_epochs = max(len(values) for values in per_epoch.values())
    end_ms = end_ms or int(time.time() * 1000)
    start_ms = end_ms - n_epochs * 60_000
    metrics = [Metric(key, value, start_ms + epoch * 60_000, epoch)
               for key, values in per_epoch.items() for epoch, value in enumerate(values, start=1)]
    metrics += [Metric(key, value, end_ms, 0) for key, value in (summary or {}).items()]
    metrics += list(extra)
    param_list = [Param(k, str(v)) for k, v in {**SEED_PARAMS, **(params or {})}.items()]
    for i in range(0, max(len(metrics), 1), 900):  # MLflow takes at most 1,000 entities per log_batch
        client.log_batch(run.info.run_id, metrics=metrics[i:i + 900], params=param_list if i == 0 else [])
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def populate(client: MlflowClient, experiment: str) -> dict[str, str]:
    """The seed's two sick runs, a healthy run, a NaN run, a CPU run, a dead run and a non-training run."""
    exp = client.create_experiment(experiment)
    ids = {
        "transfer_long": log_run(client, exp, "transfer_long", {
            "val_accuracy": [0.6905, 0.6905], "test_accuracy": [0.6334, 0.6334],
            "val_loss": [0.0392924, 0.0394477], "test_loss": [0.0413758, 0.0413155], "train_loss": [0.05, 0.045],
            "vram_peak_gb": [10.0, 10.0], "epoch_time_s": [3897.7, 3881.5]},
            preset="transfer_long", params={"vram_budget_gb": "7.0", "seq_len": "2880"}),
        "small_improved": log_run(client, exp, "small_improved", {
            "val_accuracy": [0.7540, 0.7029, 0.7542], "test_accuracy": [0.7622, 0.7249, 0.7011],
            "val_loss": [0.0355761, 0.0380584, 0.0372419], "test_loss": [0.0321258, 0.0342675, 0.0420861],
            "vram_peak_gb": [6.0, 6.0, 6.0], "epoch_time_s": [860.1, 866.6, 865.8]},
            preset="small_improved", params={"vram_budget_gb": "5.0", "seq_len": "1440"}),
        "healthy": log_run(client, exp, "healthy", {
            "val_accuracy": [0.70, 0.72, 0.74, 0.755, 0.765, 0.762], "test_accuracy": [0.69, 0.71, 0.73, 0.745,
                                                                                     0.752, 0.75],
            "val_loss": [0.040, 0.038, 0.0365, 0.0352, 0.0344, 0.0347], "val_f1": [0.80, 0.81, 0.82, 0.83, 0.84,
                                                                                   0.835],
            "train_loss": [0.041, 0.037, 0.034, 0.032, 0.030, 0.029], "vram_peak_gb": [3.1] * 6,
            "val_pred_rain_fraction": [0.71] * 6, "epoch_time_s": [500.0] * 6},
            params={"vram_budget_gb": "5.0"}, summary={"best_epoch": 5, "best_val_f1": 0.84, "best_val_loss": 0.0344},
            extra=[Metric("system/cpu_utilization_percentage", 50.0, 1, s) for s in range(1, 40)]),
        "nan_loss": log_run(client, exp, "nan_loss", {
            "val_accuracy": [0.70, 0.71, 0.72], "test_accuracy": [0.70, 0.71, 0.72],
            "val_loss": [0.040, 0.035, math.nan], "train_loss": [0.05, math.inf, math.nan]},
            params={"vram_budget_gb": "5.0"}, status="FAILED"),
        "cpu_collapsed": log_run(client, exp, "cpu_collapsed", {
            "val_accuracy": [0.72, 0.73, 0.721], "test_accuracy": [0.70, 0.71, 0.702],
            "val_loss": [0.040, 0.039, 0.041], "val_pred_rain_fraction": [0.9, 0.97, 0.995]},
            params={"vram_budget_gb": "5.0"}),
        "dead": log_run(client, exp, "dead", {
            "val_accuracy": [0.70, 0.75], "test_accuracy": [0.70, 0.74], "val_loss": [0.04, 0.03],
            "epoch_time_s": [60.0, 60.0]}, status="RUNNING", end_ms=int(time.time() * 1000) - 5 * HOUR_MS),
    }
    log_run(client, exp, "cleaning", {"rows": [1.0]}, step_tag="clean")  # not a training run: never compared
    return ids


EXPECTED = {
    "transfer_long": ["val_test_divergence", "vram_over_budget"],
    "small_improved": ["oscillating", "val_loss_not_improving", "val_test_divergence", "vram_over_budget"],
    "healthy": [],
    "nan_loss": ["non_finite_loss"],
    "cpu_collapsed": ["class_collapse"],
    "dead": ["dead_run"],
}


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """A real sqlite store in a tmp dir, made MLflow's current tracking URI for this module."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setattr("mlflow.tracking._tracking_service.utils._tracking_uri", None)  # restored afterwards
        yield MlflowClient(uri)


@pytest.fixture(scope="module")
def runs(tracking):
    return populate(tracking, "rain-test")


def compare_json(experiment="rain-test", **kwargs) -> list[dict]:
    out = io.StringIO()
    options = dict(experiment=experiment, run_ids=None, fmt="json", write_tags=False, fail_on=[],
                   report_dir=None, thresholds=Thresholds())
    assert compare.run(**{**options, **kwargs}, out=out) == 0
    return json.loads(out.getvalue())


def test_json_flags_and_fields_per_run(runs):
    rows = {row["run_name"]: row for row in compare_json()}
    assert {name: row["flags"] for name, row in rows.items()} == EXPECTED  # "cleaning" is not a training run
    assert rows["small_improved"]["evidence"]["oscillating"].startswith("val_accuracy fell 5.11 pts")
    healthy = rows["healthy"]
    assert healthy["run_id"] == runs["healthy"] and healthy["diagnosis"] == "ok" and healthy["evidence"] == {}
    assert healthy["best_epoch"] == 5 and healthy["test_accuracy_at_best"] == 0.752  # the logged best_epoch wins
    assert healthy["best_val_f1"] == 0.84 and healthy["best_val_accuracy"] == 0.765 and healthy["epochs"] == 6
    assert healthy["peak_vram_gb"] == 3.1 and healthy["mean_epoch_time_s"] == 500.0
    small = rows["small_improved"]
    assert small["best_epoch"] == 1 and small["preset"] == "small_improved"  # lowest val_loss, nothing logged
    assert rows["cpu_collapsed"]["peak_vram_gb"] is None and rows["cpu_collapsed"]["mean_epoch_time_s"] is None
    assert rows["nan_loss"]["status"] == "FAILED" and rows["dead"]["status"] == "RUNNING"


def test_given_run_ids_are_compared_whatever_their_tags(tracking, runs):
    rows = compare_json(experiment=None, run_ids=[runs["healthy"], runs["transfer_long"], runs["healthy"]])
    assert [row["run_name"] for row in rows] == ["healthy", "transfer_long"]


def test_tags_are_written_read_back_and_stale_ones_deleted(tracking):
    ids = populate(tracking, "rain-tags")
    compare.run(experiment="rain-tags", run_ids=None, fmt="json", write_tags=True, fail_on=[], report_dir=None,
                thresholds=Thresholds(), out=io.StringIO())
    tags = tracking.get_run(ids["small_improved"]).data.tags
    assert tags["diagnosis"] == "oscillating,val_loss_not_improving,val_test_divergence,vram_over_budget"
    assert "gap 5.31 pts > 5.00 pts" in tags["diagnosis.val_test_divergence"]
    assert tracking.get_run(ids["healthy"]).data.tags["diagnosis"] == "ok"
    assert not any(k.startswith("diagnosis.") for k in tracking.get_run(ids["healthy"]).data.tags)

    # A wider gap (6 pts) stops val_test_divergence on both seed runs: its evidence tag must go.
    compare.run(experiment="rain-tags", run_ids=None, fmt="json", write_tags=True, fail_on=[], report_dir=None,
                thresholds=Thresholds(divergence_gap=0.06), out=io.StringIO())
    tags = tracking.get_run(ids["small_improved"]).data.tags
    assert tags["diagnosis"] == "oscillating,val_loss_not_improving,vram_over_budget"
    assert "diagnosis.val_test_divergence" not in tags and "diagnosis.oscillating" in tags
    assert tracking.get_run(ids["transfer_long"]).data.tags["diagnosis"] == "vram_over_budget"


def test_fail_on_sets_the_exit_code(runs):
    options = dict(experiment="rain-test", run_ids=None, fmt="table", write_tags=False, report_dir=None,
                   thresholds=Thresholds(), out=io.StringIO())
    assert compare.run(fail_on=["vram_over_budget"], **options) == 1
    assert compare.run(fail_on=["stalled,oscillating"], **options) == 1
    assert compare.run(fail_on=["stalled"], **options) == 0
    assert compare.run(fail_on=[], **options) == 0
    with pytest.raises(UserError, match="unknown diagnosis flag 'nope'; allowed: stalled, oscillating, "):
        compare.run(fail_on=["nope"], **options)


@pytest.mark.parametrize("fmt", ["table", "markdown"])
def test_table_and_markdown_list_every_run_and_its_evidence(runs, fmt):
    out = io.StringIO()
    compare.run(experiment="rain-test", run_ids=None, fmt=fmt, write_tags=False, fail_on=[], report_dir=None,
                thresholds=Thresholds(), out=out)
    text = out.getvalue()
    for name, run_id in runs.items():
        assert run_id[:8] in text and name in text
    assert "cleaning" not in text
    assert "vram_peak_gb 10.00 GB at epoch 1 > budget 7.00 GB" in text
    if fmt == "markdown":
        assert text.startswith("| run | preset | status |") and "|---|---|---|---:|" in text
    else:
        header, rule, *rows = text.splitlines()[:2 + len(runs)]
        assert header.split()[:3] == ["run", "preset", "status"] and "peak VRAM" in header
        flags_at = header.index("flags")  # every row's flags start in the same column
        assert all(row[flags_at - 2:flags_at] == "  " and row[flags_at] != " " for row in rows)


def test_report_files(runs, tmp_path):
    report_dir = tmp_path / "report"
    compare.run(experiment="rain-test", run_ids=None, fmt="table", write_tags=False, fail_on=[],
                report_dir=report_dir, thresholds=Thresholds(divergence_gap=0.06), out=io.StringIO())
    assert sorted(p.name for p in report_dir.iterdir()) == ["curves.png", "report.md"]  # no temp files left
    report = (report_dir / "report.md").read_text()
    assert "![Validation and test accuracy per epoch](curves.png)" in report
    assert "divergence_gap=0.06" in report and "small_improved" in report and "`oscillating`" in report
    png = report_dir / "curves.png"
    assert png.stat().st_size > 20_000
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 300 and image.shape[1] > 800


def test_unknown_experiment_run_and_format_are_user_errors(tracking):
    with pytest.raises(UserError, match="experiment 'nope' not found at tracking URI sqlite:///.*; existing: "):
        compare_json(experiment="nope")
    with pytest.raises(UserError, match="run 'ffffffffffffffffffffffffffffffff' not found"):
        compare_json(experiment=None, run_ids=["f" * 32])
    with pytest.raises(UserError, match="unknown format 'csv'; allowed: table, json, markdown"):
        compare_json(fmt="csv")
    with pytest.raises(UserError, match="experiment id '987654' not found"):
        compare.load_histories(tracking, experiment_ids=["987654"])


def test_resumed_epoch_keeps_the_latest_value_and_long_runs_are_complete(tracking):
    exp = tracking.create_experiment("rain-long")
    epochs = 3000  # longer than the REST endpoint's 2,500-point cap: nothing may be down-sampled
    run_id = log_run(tracking, exp, "long", {"val_accuracy": [0.5 + e / 10_000 for e in range(epochs)]},
                     extra=[Metric("val_accuracy", 0.99, int(time.time() * 1000) + 10_000, 7)])
    (h,) = compare.load_histories(tracking, experiment_ids=[exp])
    assert h.run_id == run_id and h.epochs() == list(range(1, epochs + 1))
    assert h.metrics["val_accuracy"][7] == 0.99 and h.metrics["val_accuracy"][8] == 0.5007
    assert h.last_update_ms is not None


# ---- over HTTP: a real `mlflow server` ------------------------------------------------------------------------------

@pytest.fixture
def server(tmp_path):
    """`mlflow server` on a free 127.0.0.1 port (sqlite backend, tmp artifacts); yields (url, log path)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log_path = tmp_path / "server.log"
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
               "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]
    with open(log_path, "w") as log:
        # Without the GenAI job runner (seven huey consumer processes): faster start, nothing we need.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mlflow server did not start: {log_path.read_text()[-2000:]}")
                time.sleep(0.5)
        yield url, log_path
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the server's own process group (started above)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_bulk_read_over_http(server, monkeypatch):
    url, log_path = server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setattr("mlflow.tracking._tracking_service.utils._tracking_uri", None)
    client = MlflowClient(url)
    assert isinstance(client._tracking_client.store, RestStore)
    ids = populate(client, "rain-http")
    exp = client.get_experiment_by_name("rain-http").experiment_id
    long_id = log_run(client, exp, "long", {"val_accuracy": [0.5 + e / 10_000 for e in range(2600)],
                                            "val_loss": [0.04] * 2600},
                      extra=[Metric("val_accuracy", 0.99, int(time.time() * 1000) + 10_000, 7)])

    rows = {row["run_name"]: row for row in compare_json(experiment="rain-http", write_tags=True)}
    assert {name: rows[name]["flags"] for name in EXPECTED} == EXPECTED
    assert rows["long"]["epochs"] == 2600 and "stalled" in rows["long"]["flags"]
    assert client.get_run(ids["small_improved"]).data.tags["diagnosis"] == EXPECTED_TAG_SMALL

    (long_history,) = compare.load_histories(client, run_ids=[long_id])
    assert long_history.epochs() == list(range(1, 2601))  # not down-sampled to 2,500
    assert long_history.metrics["val_accuracy"][7] == 0.99  # the re-logged epoch: latest timestamp wins
    requests = log_path.read_text()
    assert "get-history-bulk-interval" in requests
    assert "/metrics/get-history?" not in requests  # not one request per run and metric

    # Every epoch of 1-1000 logged three times: 3,000 rows in one window, over the server's 2,500 cap, so the
    # server samples; that run (and only that run) is re-read exactly.
    later = int(time.time() * 1000) + 60_000
    relogged = [Metric("val_accuracy", 0.6 + copy / 10, later + copy * 1000, epoch)
                for copy in range(3) for epoch in range(1, 1001)]
    resumed_id = log_run(client, exp, "resumed", {"val_loss": [0.04] * 1000}, extra=relogged)
    (resumed, other) = compare.load_histories(client, run_ids=[resumed_id, ids["healthy"]])
    assert resumed.epochs() == list(range(1, 1001))
    assert set(resumed.metrics["val_accuracy"].values()) == {0.8}  # the last copy of every epoch
    per_run_reads = [line for line in log_path.read_text().splitlines() if "/metrics/get-history?" in line]
    assert per_run_reads and all(resumed_id in line and "val_accuracy" in line for line in per_run_reads)
    assert other.metrics["val_accuracy"] == {e: v for e, v in enumerate([0.70, 0.72, 0.74, 0.755, 0.765, 0.762], 1)}


EXPECTED_TAG_SMALL = "oscillating,val_loss_not_improving,val_test_divergence,vram_over_budget"


def test_sql_fast_path_reads_what_the_store_api_reads(tracking, runs):
    batch = compare._wanted([tracking.get_run(run_id) for run_id in runs.values()], compare.HISTORY_METRICS)
    store = tracking._tracking_client.store

    def rows(read) -> list[tuple]:
        return sorted((run_id, key, step, ts, repr(value)) for run_id, key, step, ts, value in read(store, batch))

    fast = rows(compare._sql_rows)
    assert fast == rows(compare._sql_rows_store_api)
    assert any(row[4] == "nan" for row in fast)  # NaN stays NaN (MLflow stores value 0 with is_nan set)
    assert not any(key.startswith("system/") for _, key, *_ in fast)
