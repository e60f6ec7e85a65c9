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

from rain_mlflow.compare import command, histories, reader
from rain_mlflow.compare.report import diagnose_runs
from rain_mlflow.tracking import readers
from rain_mlflow.tracking.readers import RawRun
from rain_mlflow.tracking.store import tracking_uri
from rain_mlflow.diagnostics.thresholds import Thresholds
from rain_mlflow.errors import UserError

HOUR_MS = 3_600_000
SEED_PARAMS = {"windows_val": "6025", "train_epochs": "30"}


def log_run(client: MlflowClient, experiment_id: str, name: str, per_epoch: dict[str, list[float]], *,
            preset: str = "small", params: dict | None = None, summary: dict | None = None,
            status: str = "FINISHED", step_tag: str | None = "train", end_ms: int | None = None,
            extra: list[Metric] = (), first_step: int = 1) -> str:
    """One run as the trainer records it: per-epoch metrics at step = epoch, summaries at step 0. Without a
    `step_tag` the run carries no tag of ours at all (another tool's run), and `first_step` 0 counts from 0."""
    tags = {"rain.step": step_tag, "preset": preset} if step_tag else {}
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    n_epochs = max(len(values) for values in per_epoch.values())
    end_ms = end_ms or int(time.time() * 1000)
    start_ms = end_ms - n_epochs * 60_000
    metrics = [Metric(key, value, start_ms + epoch * 60_000, epoch)
               for key, values in per_epoch.items() for epoch, value in enumerate(values, start=first_step)]
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
    assert command.run(**{**options, **kwargs}, out=out) == 0
    return json.loads(out.getvalue())


@pytest.mark.e2e
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
    # What each run lacked, from the metrics logged in populate(): rule -> missing metric.
    assert healthy["skipped"] == {}
    assert rows["transfer_long"]["skipped"] == {"class_collapse": "val_pred_rain_fraction"}
    assert rows["cpu_collapsed"]["skipped"] == {"vram_over_budget": "vram_peak_gb"}
    assert rows["dead"]["skipped"] == {"vram_over_budget": "vram_peak_gb, param vram_budget_gb",
                                       "class_collapse": "val_pred_rain_fraction"}
    assert all(row["epochs_from"].startswith("step (") and row["metric_map"] == {} for row in rows.values())


@pytest.mark.e2e
def test_compare_on_sqlite_loads_neither_pandas_nor_numpy_nor_torch_nor_mlflow(tracking, runs):
    """The whole `rain-mlflow compare` process must start fast (bench section 5: <= 3 s at 1,000 runs): reading a
    sqlite store whose verdicts are up to date needs only the standard library; a heavy import at the top of a
    shared module breaks that."""
    probe = ("import json, sys\nfrom rain_mlflow.cli import main\n"
             "try:\n    main(['compare', '--experiment', 'rain-test', '--format', 'json'])\n"
             "except SystemExit as exc:\n    code = exc.code\n"
             "heavy = [m for m in ('pandas', 'numpy', 'torch', 'mlflow', 'sklearn', 'matplotlib')\n"
             "         if m in sys.modules]\n"
             "print(json.dumps({'code': code, 'heavy': heavy}), file=sys.stderr)\n")
    # the first pass writes the verdict tags (through MLflow); the measured case is the next one, nothing to write
    first = subprocess.run([sys.executable, "-m", "rain_mlflow", "compare", "--experiment", "rain-test"],
                           capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr[-2000:]
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    report = json.loads(done.stderr.strip().splitlines()[-1])
    assert report == {"code": 0, "heavy": []}, done.stderr[-2000:]
    assert {r["run_name"] for r in json.loads(done.stdout)} >= {"healthy"}


@pytest.mark.e2e
def test_given_run_ids_are_compared_whatever_their_tags(tracking, runs):
    rows = compare_json(experiment=None, run_ids=[runs["healthy"], runs["transfer_long"], runs["healthy"]])
    assert [row["run_name"] for row in rows] == ["healthy", "transfer_long"]


def diagnosis_tags(client: MlflowClient, run_id: str) -> dict[str, str]:
    return {k: v for k, v in client.get_run(run_id).data.tags.items() if k.startswith("diagnosis")}


@pytest.mark.e2e
def test_tags_are_written_read_back_and_stale_ones_deleted(tracking):
    ids = populate(tracking, "rain-tags")
    command.run(experiment="rain-tags", run_ids=None, fmt="json", write_tags=True, fail_on=[], report_dir=None,
                thresholds=Thresholds(), out=io.StringIO())
    tags = tracking.get_run(ids["small_improved"]).data.tags
    assert tags["diagnosis"] == "oscillating,val_loss_not_improving,val_test_divergence,vram_over_budget"
    assert "gap 5.31 pts > 5.00 pts" in tags["diagnosis.val_test_divergence"]
    healthy = diagnosis_tags(tracking, ids["healthy"])
    assert healthy.keys() == {"diagnosis", "diagnosis.thresholds"} and healthy["diagnosis"] == "ok"
    assert json.loads(healthy["diagnosis.thresholds"]) == {
        "stalled_epochs": 3, "stalled_tolerance": 0.001, "oscillation_drop": 0.05, "divergence_gap": 0.05,
        "noise_z": 2.0, "not_improving_min_later_epochs": 2, "collapse_fraction": 0.99, "dead_factor": 3.0,
        "dead_min_seconds": 600.0}

    # A wider gap (6 pts) stops val_test_divergence on both seed runs: its evidence tag must go.
    now_ms = int(time.time() * 1000)
    command.run(experiment="rain-tags", run_ids=None, fmt="json", write_tags=True, fail_on=[], report_dir=None,
                thresholds=Thresholds(divergence_gap=0.06), out=io.StringIO(), now_ms=now_ms)
    tags = tracking.get_run(ids["small_improved"]).data.tags
    assert tags["diagnosis"] == "oscillating,val_loss_not_improving,vram_over_budget"
    assert "diagnosis.val_test_divergence" not in tags and "diagnosis.oscillating" in tags
    assert json.loads(tags["diagnosis.thresholds"])["divergence_gap"] == 0.06
    assert tracking.get_run(ids["transfer_long"]).data.tags["diagnosis"] == "vram_over_budget"
    # Nothing changed since (same thresholds, same clock): nothing to write.
    uri = tracking_uri()
    reports = diagnose_runs(reader.read_runs(uri, experiment="rain-tags"), Thresholds(divergence_gap=0.06),
                                    now_ms)
    assert command.write_diagnosis_tags(uri, reports) == 0


@pytest.mark.e2e
def test_fail_on_sets_the_exit_code(runs):
    options = dict(experiment="rain-test", run_ids=None, fmt="table", write_tags=False, report_dir=None,
                   thresholds=Thresholds(), out=io.StringIO())
    assert command.run(fail_on=["vram_over_budget"], **options) == 1
    assert command.run(fail_on=["stalled,oscillating"], **options) == 1
    assert command.run(fail_on=["stalled"], **options) == 0
    assert command.run(fail_on=[], **options) == 0
    with pytest.raises(UserError, match="unknown diagnosis flag 'nope'; allowed: stalled, oscillating, "):
        command.run(fail_on=["nope"], **options)


@pytest.mark.e2e
@pytest.mark.parametrize("fmt", ["table", "markdown"])
def test_table_and_markdown_list_every_run_and_its_evidence(runs, fmt):
    out = io.StringIO()
    command.run(experiment="rain-test", run_ids=None, fmt=fmt, write_tags=False, fail_on=[], report_dir=None,
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


@pytest.mark.e2e
def test_report_files(runs, tmp_path):
    report_dir = tmp_path / "report"
    command.run(experiment="rain-test", run_ids=None, fmt="table", write_tags=False, fail_on=[],
                report_dir=report_dir, thresholds=Thresholds(divergence_gap=0.06), out=io.StringIO())
    assert sorted(p.name for p in report_dir.iterdir()) == ["curves.png", "report.md"]  # no temp files left
    report = (report_dir / "report.md").read_text()
    assert "![Validation and test accuracy per epoch](curves.png)" in report
    assert "divergence_gap=0.06" in report and "small_improved" in report and "`oscillating`" in report
    png = report_dir / "curves.png"
    assert png.stat().st_size > 20_000
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 300 and image.shape[1] > 800


@pytest.mark.e2e
def test_unknown_experiment_run_format_and_metric_map_are_user_errors(tracking):
    with pytest.raises(UserError, match="experiment 'nope' not found at tracking URI sqlite:///.*; existing: "):
        compare_json(experiment="nope")
    with pytest.raises(UserError, match="run 'ffffffffffffffffffffffffffffffff' not found"):
        compare_json(experiment=None, run_ids=["f" * 32])
    with pytest.raises(UserError, match="unknown format 'csv'; allowed: table, json, markdown"):
        compare_json(fmt="csv")
    with pytest.raises(UserError, match=r"--metric-map item must be SOURCE=TARGET or one of lightning, openltm; "
                                        r"got 'keras'"):
        compare_json(metric_map="lightning,keras")
    with pytest.raises(UserError, match=r"--metric-map target must be one of val_accuracy, .*; got 'val_top1'"):
        compare_json(metric_map="acc=val_top1")


@pytest.mark.e2e
def test_cli_errors_are_one_line(runs, cli):
    from tests.conftest import assert_user_error

    assert_user_error(cli("compare", "--experiment", "nope"), "experiment 'nope' not found")
    assert_user_error(cli("compare", "--experiment", "rain-test", "--metric-map", "val_acc"),
                      "--metric-map item must be SOURCE=TARGET", "'val_acc'")
    assert_user_error(cli("compare", "--experiment", "rain-test", "--noise-z", "-1"),
                      "Thresholds.noise_z must be a number >= 0; got -1.0")


@pytest.mark.e2e
def test_resumed_epoch_keeps_the_latest_value_and_long_runs_are_complete(tracking):
    exp = tracking.create_experiment("rain-long")
    epochs = 3000  # longer than the REST endpoint's 2,500-point cap: nothing may be down-sampled
    run_id = log_run(tracking, exp, "long", {"val_accuracy": [0.5 + e / 10_000 for e in range(epochs)]},
                     extra=[Metric("val_accuracy", 0.99, int(time.time() * 1000) + 10_000, 7)])
    (read,) = reader.read_runs(tracking_uri(), experiment="rain-long")
    h = read.history
    assert h.run_id == run_id and h.epochs() == list(range(1, epochs + 1))
    assert h.metrics["val_accuracy"][7] == 0.99 and h.metrics["val_accuracy"][8] == 0.5007
    assert h.last_update_ms is not None


# ---- runs logged by other tools -----------------------------------------------------------------------------------

def populate_foreign(client: MlflowClient, experiment: str) -> dict[str, str]:
    """Runs logged without this package: plain MlflowClient calls (no tags), a Lightning-style logger (val_acc,
    steps from 0), Lightning as it really logs (an `epoch` metric at the training step), accuracy in percent."""
    exp = client.create_experiment(experiment)
    now = int(time.time() * 1000)
    ids = {
        # The notebook runs: per-epoch metrics by log_batch, a vram_budget_gb param, some VRAM.
        "notebook": log_run(client, exp, "notebook", {
            "val_accuracy": [0.70, 0.64, 0.71], "test_accuracy": [0.69, 0.65, 0.70],
            "val_loss": [0.040, 0.043, 0.039], "train_loss": [0.05, 0.045, 0.04], "epoch_time_s": [60.0] * 3,
            "vram_peak_gb": [6.5, 6.6, 6.6]}, step_tag=None, params={"vram_budget_gb": "5"}),
        "notebook_plain": log_run(client, exp, "notebook_plain", {
            "val_accuracy": [0.70, 0.72, 0.74], "val_loss": [0.040, 0.038, 0.036]}, step_tag=None, params={}),
        # Lightning-style names, steps from 0: three identical accuracies are epochs 1-3, not 0-2.
        "lightning": log_run(client, exp, "lightning", {
            "val_acc": [0.6905, 0.6905, 0.6905], "val_loss": [0.0393, 0.0394, 0.0395],
            "train_loss_epoch": [0.05, 0.049, 0.048]}, step_tag=None, params={}, first_step=0),
        "percent": log_run(client, exp, "percent", {
            "val_accuracy": [75.40, 70.29, 75.42], "val_loss": [0.0356, 0.0381, 0.0350]},
            step_tag=None, params={"windows_val": "6025"}),
    }
    # Lightning as MLFlowLogger logs it: step = batches trained (99, 199, 299), `epoch` (from 0) beside it.
    run = client.create_run(exp, run_name="lightning_steps")
    points = [Metric("epoch", e, now + e, 99 + 100 * e) for e in range(3)]
    points += [Metric("val_acc", v, now + e, 99 + 100 * e) for e, v in enumerate([0.80, 0.70, 0.81])]
    points += [Metric("val_loss", v, now + e, 99 + 100 * e) for e, v in enumerate([0.030, 0.035, 0.029])]
    points += [Metric("train_loss_step", 0.1, now, s) for s in range(0, 300, 50)]  # per batch: never read
    client.log_batch(run.info.run_id, metrics=points)
    client.set_terminated(run.info.run_id)
    ids["lightning_steps"] = run.info.run_id
    log_run(client, exp, "tested", {"val_accuracy": [0.7]}, step_tag="test")  # another step of ours: skipped
    log_run(client, exp, "no_validation", {"train_loss": [0.05, 0.04]}, step_tag=None)  # nothing to judge
    return ids


@pytest.mark.e2e
def test_runs_from_any_tool_are_diagnosed(tracking):
    ids = populate_foreign(tracking, "rain-foreign")
    out = io.StringIO()
    assert command.run(experiment="rain-foreign", run_ids=None, fmt="json", write_tags=True, fail_on=[],
                       report_dir=None, metric_map="lightning", out=out) == 0
    rows = {row["run_name"]: row for row in json.loads(out.getvalue())}
    assert {name: row["flags"] for name, row in rows.items()} == {
        "notebook": ["oscillating", "vram_over_budget"],           # 6 pts fall; 6.6 GB > 5 GB
        "notebook_plain": [],
        "lightning": ["stalled", "val_loss_not_improving"],        # read through the lightning map
        "percent": ["oscillating"],                                # 75.40% -> 70.29%: 5.11 pts
        "lightning_steps": ["oscillating"],                        # 10 pts fall between epochs 1 and 2
    }
    assert "val_accuracy 69.05% at epochs 1-3" in rows["lightning"]["evidence"]["stalled"]
    assert rows["lightning"]["epochs_from"] == "step + 1 (steps counted from 0)"
    assert rows["lightning"]["metric_map"] == {"val_acc": "val_accuracy", "train_loss_epoch": "train_loss"}
    assert rows["lightning_steps"]["epochs_from"] == "the logged epoch metric + 1 (counted from 0)"
    assert "from 80.00% at epoch 1 to 70.00% at epoch 2" in rows["lightning_steps"]["evidence"]["oscillating"]
    assert rows["lightning_steps"]["epochs"] == 3
    assert rows["notebook"]["epochs_from"] == "step"
    evidence = rows["percent"]["evidence"]["oscillating"]
    assert evidence.startswith("val_accuracy fell 5.11 pts from 75.40% at epoch 1 to 70.29% at epoch 2")
    assert evidence.endswith("[val_accuracy logged in percent (up to 75.42), read as value / 100]")
    # What could not be judged, by hand from the metrics each run logged:
    assert rows["notebook"]["skipped"] == {"class_collapse": "val_pred_rain_fraction"}
    assert rows["notebook_plain"]["skipped"] == {
        "val_test_divergence": "test_accuracy", "vram_over_budget": "vram_peak_gb, param vram_budget_gb",
        "class_collapse": "val_pred_rain_fraction"}
    assert rows["lightning"]["skipped"] == {
        "val_test_divergence": "test_accuracy", "vram_over_budget": "vram_peak_gb, param vram_budget_gb",
        "class_collapse": "val_pred_rain_fraction"}
    # Tags written on every run, whoever logged it, with the map that read it.
    assert tracking.get_run(ids["lightning"]).data.tags["diagnosis"] == "stalled,val_loss_not_improving"
    assert json.loads(tracking.get_run(ids["lightning"]).data.tags["diagnosis.metric_map"]) == \
        {"val_acc": "val_accuracy", "train_loss_epoch": "train_loss"}
    assert "diagnosis.metric_map" not in tracking.get_run(ids["notebook"]).data.tags
    assert all("diagnosis" in tracking.get_run(run_id).data.tags for run_id in ids.values())

    # Without the map the Lightning run is still judged on val_loss, and says which map would read the rest.
    rows = {row["run_name"]: row for row in compare_json(experiment="rain-foreign")}
    assert rows["lightning"]["flags"] == ["val_loss_not_improving"]
    assert rows["lightning"]["skipped"]["stalled"] == \
        "val_accuracy (the run logs val_acc: --metric-map lightning reads it)"
    assert rows["lightning_steps"]["flags"] == []  # its val_loss (our name) is read; val_acc needs the map


# ---- the reading rules, pure ---------------------------------------------------------------------------------------

def raw(points: dict[str, list[tuple[int, float]]], tags=None, latest_extra=()) -> RawRun:
    """A RawRun whose points are (step, value) pairs logged in that order."""
    run = RawRun("r", "r", "FINISHED", 0, {}, dict(tags or {}),
                           {key: values[-1][1] for key, values in points.items()} | dict.fromkeys(latest_extra, 1.0))
    run.points = {key: [(1000 + i, step, value) for i, (step, value) in enumerate(values)]
                  for key, values in points.items()}
    return run


@pytest.mark.unit
def test_epochs_of_our_runs_skip_the_step_0_summary_and_others_count_from_0():
    ours = histories.build(raw({"val_loss": [(1, 0.3), (2, 0.2)], "best_epoch": [(0, 2.0)]},
                               tags={"rain.step": "train"}), {}, ("val_loss",))
    assert ours.history.metrics == {"val_loss": {1: 0.3, 2: 0.2}}
    theirs = histories.build(raw({"val_loss": [(0, 0.3), (1, 0.2)]}), {}, ("val_loss",))
    assert theirs.history.metrics == {"val_loss": {1: 0.3, 2: 0.2}}
    from_one = histories.build(raw({"val_loss": [(1, 0.3), (2, 0.2)]}), {}, ("val_loss",))
    assert from_one.history.metrics == {"val_loss": {1: 0.3, 2: 0.2}} and from_one.epochs_from == "step"
    relogged = histories.build(raw({"val_loss": [(1, 0.3), (2, 0.2), (1, 0.25)]}), {}, ("val_loss",))
    assert relogged.history.metrics["val_loss"] == {1: 0.25, 2: 0.2}  # the latest timestamp wins


@pytest.mark.unit
def test_percent_is_read_only_when_a_value_is_above_1():
    fractions = histories.build(raw({"val_accuracy": [(1, 0.7), (2, 1.0)]}), {}, ("val_accuracy",))
    assert fractions.history.metrics["val_accuracy"] == {1: 0.7, 2: 1.0} and fractions.history.notes == {}
    percent = histories.build(raw({"val_acc": [(1, 70.0), (2, 100.0)]}), {"val_acc": "val_accuracy"},
                              ("val_accuracy",))
    assert percent.history.metrics["val_accuracy"] == {1: 0.7, 2: 1.0}
    assert percent.history.notes == {"val_accuracy": "val_acc logged in percent (up to 100), read as value / 100"}


@pytest.mark.unit
def test_a_name_the_run_logs_itself_wins_over_the_map():
    run = raw({"val_accuracy": [(1, 0.7)], "val_acc": [(1, 0.1)]})
    read = histories.build(run, histories.parse_metric_map("lightning"), ("val_accuracy",))
    assert read.history.metrics["val_accuracy"] == {1: 0.7} and read.metric_map == {}


@pytest.mark.unit
def test_metric_maps():
    assert histories.parse_metric_map("") == {}
    assert histories.parse_metric_map("vali_loss=val_loss, top1 = val_accuracy") == \
        {"vali_loss": "val_loss", "top1": "val_accuracy"}
    openltm = histories.parse_metric_map("openltm")
    assert openltm["vali_loss"] == "val_loss" and openltm["cost_time"] == "epoch_time_s"
    assert histories.parse_metric_map(["lightning", "val_acc=test_accuracy"])["val_acc"] == "test_accuracy"


@pytest.mark.unit
def test_other_steps_of_this_package_are_not_diagnosed():
    for step in ("clean", "test", "compare", "promote", "main", "synth", "resume", "tune", "import-log"):
        assert not histories.is_diagnosable(raw({"val_loss": [(1, 0.3)]}, tags={"rain.step": step}), {})
    for step in ("train", "import", None):
        assert histories.is_diagnosable(raw({"val_loss": [(1, 0.3)]}, tags={"rain.step": step} if step else {}), {})
    assert not histories.is_diagnosable(raw({"train_loss": [(1, 0.3)]}), {})


# ---- the fast readers against the public API ----------------------------------------------------------------------

def comparable(reads) -> list:
    """ReadRuns as plain data, NaN spelled out (NaN != NaN would fail any equality)."""
    def plain(value):
        return repr(value) if isinstance(value, float) and math.isnan(value) else value

    return [(r.history.run_id, r.history.run_name, r.history.status, r.history.start_time_ms, r.history.params,
             r.history.tags, {k: {e: plain(v) for e, v in m.items()} for k, m in r.history.metrics.items()},
             {k: plain(v) for k, v in r.history.summary.items()}, r.history.last_update_ms, r.history.notes,
             r.epochs_from, r.metric_map, r.hints) for r in reads]


@pytest.mark.e2e
def test_sqlite_fast_path_reads_what_the_public_api_reads(tracking, runs):
    uri = tracking_uri()
    populate_foreign(tracking, "rain-both-paths")
    for experiment, mapping in (("rain-test", {}), ("rain-both-paths", histories.parse_metric_map("lightning"))):
        fast = reader.read_runs(uri, experiment=experiment, metric_map=mapping)
        public = reader.read_runs(uri, experiment=experiment, metric_map=mapping, fast=False)
        assert comparable(fast) == comparable(public) and len(fast) >= 5
    fast = reader.read_runs(uri, run_ids=[runs["nan_loss"], runs["healthy"]])
    assert comparable(fast) == comparable(reader.read_runs(uri, run_ids=[runs["nan_loss"], runs["healthy"]],
                                                            fast=False))
    assert math.isnan(fast[0].history.metrics["train_loss"][3])  # NaN stays NaN (stored as 0 with is_nan set)
    assert fast[0].history.metrics["train_loss"][2] == math.inf  # MLflow's 1.8e308 read back as inf


@pytest.mark.e2e
def test_sql_store_path_reads_what_the_public_api_reads(tracking, runs):
    # The PostgreSQL / MySQL reader, run here on the sqlite store through MLflow's own SQL session.
    uri = tracking_uri()
    sql = readers.SqlStoreReader(uri)
    public = readers.PublicReader(uri)
    experiment_id = public.experiment_id("rain-test")
    wanted = {run.run_id: set(histories.HISTORY_METRICS) & set(run.latest) for run in public.list_runs(experiment_id)}
    def plain(points):  # sorted, NaN spelled out
        return {run_id: {key: sorted(repr(p) for p in values) for key, values in keys.items()}
                for run_id, keys in points.items()}

    assert plain(sql.points(wanted)) == plain(public.points(wanted))
    assert "nan" in repr(sql.points(wanted)[runs["nan_loss"]]["train_loss"])


@pytest.mark.e2e
def test_a_missing_private_handle_falls_back_with_one_warning(tracking, runs, monkeypatch, caplog):
    import mlflow.store.tracking.dbmodels.models as models

    monkeypatch.setattr(reader, "_warned", set())
    monkeypatch.delattr(models, "SqlMetric")  # what a future MLflow without that table model looks like
    uri = tracking_uri()
    with caplog.at_level("WARNING", logger="rain_mlflow"):
        for _ in range(2):
            with pytest.raises(readers.FastPathUnavailable):
                readers.SqlStoreReader(uri)
    expected = comparable(reader.read_runs(uri, experiment="rain-test", fast=False))
    monkeypatch.setattr(reader, "_fast_reader", lambda uri: readers.SqlStoreReader(uri))
    with caplog.at_level("WARNING", logger="rain_mlflow"):
        assert comparable(reader.read_runs(uri, experiment="rain-test")) == expected
        assert comparable(reader.read_runs(uri, experiment="rain-test")) == expected
    warnings = [r.getMessage() for r in caplog.records if "fast MLflow reader is unavailable" in r.getMessage()]
    assert len(warnings) == 1 and "SqlMetric" in warnings[0]


@pytest.mark.unit
def test_tracking_resolution_matches_the_tracker():
    from rain_mlflow.tracking import experiments, store

    assert reader.tracking_uri() == store.tracking_uri() and reader.DEFAULT_EXPERIMENT == experiments.DEFAULT_EXPERIMENT
    assert reader.experiment_name("x") == experiments.experiment_name("x") == "x"


@pytest.mark.e2e
def test_an_up_to_date_comparison_does_not_import_mlflow(runs):
    # Importing MLflow costs about 3 s of CPU here; a sqlite store whose tags are current needs none of it.
    now_ms = int(time.time() * 1000)  # one clock for both, so the dead run's evidence stays the same
    command.run(experiment="rain-test", run_ids=None, fmt="json", write_tags=True, out=io.StringIO(), now_ms=now_ms)
    script = ("import sys, io; from rain_mlflow.compare import command; "
              "command.run(experiment='rain-test', run_ids=None, fmt='json', write_tags=True, out=io.StringIO(), "
              f"now_ms={now_ms}); print('mlflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri()})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


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


@pytest.mark.server
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
    (long_read,) = reader.read_runs(url, run_ids=[long_id])
    assert long_read.history.epochs() == list(range(1, 2601))  # every row: the bulk endpoint samples nothing
    assert long_read.history.metrics["val_accuracy"][7] == 0.99  # the re-logged epoch: latest timestamp wins
    requests = log_path.read_text()
    assert "/ajax-api/2.0/mlflow/metrics/get-history-bulk?" in requests
    assert "/metrics/get-history?" not in requests  # not one request per run and metric

    # The fast path and the public API (one get_metric_history per run and metric) read the same.
    fast = reader.read_runs(url, experiment="rain-http")
    assert comparable(fast) == comparable(reader.read_runs(url, experiment="rain-http", fast=False))

    # The server cuts a bulk answer at the row cap asked for: with a cap of 500 the 2,601 val_accuracy rows of
    # the long run fill it alone (read exactly, page by page), and the other runs' reads resume where a cut fell.
    monkeypatch.setattr(readers, "REST_MAX_ROWS", 500)
    seen = len(log_path.read_text().splitlines())
    capped = reader.read_runs(url, experiment="rain-http")
    assert comparable(capped) == comparable(fast)
    per_run = [line for line in log_path.read_text().splitlines()[seen:] if "/metrics/get-history?" in line]
    assert per_run and all(long_id in line for line in per_run)


EXPECTED_TAG_SMALL = "oscillating,val_loss_not_improving,val_test_divergence,vram_over_budget"


# ---- the live diagnosis reads what compare stored -------------------------------------------------------------------

@pytest.mark.e2e
def test_the_live_diagnosis_reuses_the_thresholds_stored_on_its_run(store, synthetic_csv):
    from rain_mlflow.config import presets
    from rain_mlflow.data.source import load_clean
    from rain_mlflow.data.dataset import prepare
    from rain_mlflow.tracking.experiments import connect
    from rain_mlflow.tracking.tracker import Tracker
    from rain_mlflow.train.epochs import EpochTracker
    from rain_mlflow.train.loop import TrainState

    cfg = presets.build("smoke", {"data": str(synthetic_csv)})
    data = prepare(load_clean(cfg.data)[1], cfg)
    n_val, n_test = data.splits["val"].size, data.splits["test"].size
    epoch = {"test_accuracy": 0.79, "val_loss": 0.03, "train_loss": 0.04}
    state = TrainState(epoch=2, history={1: {**epoch, "val_accuracy": 0.80}, 2: {**epoch, "val_accuracy": 0.50}})
    connect("live")
    with Tracker.start("train", run_name="live") as tracker:
        live = EpochTracker(tracker, cfg, data)
        fall = {f.flag: f for f in live.diagnose(state)}["oscillating"]  # a 30-pt fall, far above any floor
        assert f"at {n_val} val windows" in fall.evidence  # the split's size reached the rule
        assert json.loads(tracker.tags()["diagnosis.thresholds"]) == json.loads(Thresholds().to_json())
        # A `compare --oscillation-drop 0.4` while it trains stores its thresholds; the next epoch uses them.
        tracker.set_tags({"diagnosis.thresholds": Thresholds(oscillation_drop=0.4).to_json()})
        assert "oscillating" not in {f.flag for f in live.diagnose(state)}
        assert json.loads(tracker.tags()["diagnosis.thresholds"])["oscillation_drop"] == 0.4
        # A malformed tag is reported and never ends the run: the defaults judge.
        tracker.set_tags({"diagnosis.thresholds": "{oops"})
        assert "oscillating" in {f.flag for f in live.diagnose(state)}
        divergence = {f.flag: f for f in live.diagnose(
            TrainState(epoch=1, history={1: {**epoch, "val_accuracy": 0.95}}))}["val_test_divergence"]
        assert f"at {n_val} val / {n_test} test windows" in divergence.evidence
