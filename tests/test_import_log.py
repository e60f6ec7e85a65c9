"""`import-log`: OpenLTM logs (the seeds' two failed runs, a long healthy run, a NaN run) into real MLflow runs."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
from mlflow import MlflowClient

from rain_mlflow.import_log import parse_log
from tests.conftest import REPO, assert_user_error

LOGS = REPO / "tests" / "fixtures" / "logs"


def compare_rows(cli, experiment: str) -> dict[str, dict]:
    result = cli("compare", "--experiment", experiment, "--format", "json")
    assert result.code == 0, result.err
    return {row["run_name"]: row for row in json.loads(result.out)}


def runs_of(experiment: str) -> list:
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id])


@pytest.mark.e2e
def test_the_seed_logs_get_exactly_their_flags(store, cli):
    result = cli("import-log", LOGS / "transfer_long.log", "--vram-budget-gb", "7", "--vram-peak-gb", "10",
                 "--preset", "transfer_long", "--experiment", "seeds")
    assert result.code == 0, result.err
    assert "diagnosis: val_test_divergence,vram_over_budget" in result.out
    result = cli("import-log", LOGS / "small_improved.log", LOGS / "healthy_long.log", LOGS / "nan_loss.log",
                 "--experiment", "seeds")
    assert result.code == 0, result.err
    rows = compare_rows(cli, "seeds")
    assert {name: row["flags"] for name, row in rows.items()} == {
        "transfer_long": ["val_test_divergence", "vram_over_budget"],
        "small_improved": ["oscillating", "val_loss_not_improving", "val_test_divergence"],
        "healthy_long": [],
        "nan_loss": ["non_finite_loss"],
    }
    # The import's own diagnosis already left the same verdict on the runs.
    tags = {run.info.run_name: run.data.tags for run in runs_of("seeds")}
    assert tags["small_improved"]["diagnosis"] == "oscillating,val_loss_not_improving,val_test_divergence"
    assert tags["healthy_long"]["diagnosis"] == "ok" and tags["nan_loss"]["diagnosis"] == "non_finite_loss"
    # With the small family's budget and the 6 GB the user saw, small_improved is over budget too.
    result = cli("import-log", LOGS / "small_improved.log", "--experiment", "seeds-vram", "--vram-budget-gb", "5",
                 "--vram-peak-gb", "6")
    assert result.code == 0, result.err
    assert compare_rows(cli, "seeds-vram")["small_improved"]["flags"] == [
        "oscillating", "val_loss_not_improving", "val_test_divergence", "vram_over_budget"]


@pytest.mark.e2e
def test_an_imported_run_records_the_log(store, cli):
    path = LOGS / "small_improved.log"
    assert cli("import-log", path, "--experiment", "one", "--run-name", "small 6x768", "--preset",
               "small_improved", "--vram-budget-gb", "5").code == 0
    (run,) = runs_of("one")
    client = MlflowClient()
    assert run.info.status == "FINISHED" and run.info.run_name == "small 6x768"
    tags = run.data.tags
    assert tags["rain.step"] == "import" and tags["rain.imported_from"] == "small_improved.log"
    assert tags["rain.import.digest"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert tags["preset"] == "small_improved" and tags["rain.import.unreadable_lines"] == "0"
    params = run.data.params
    assert (params["rain_val"], params["no_rain_val"], params["rain_test"], params["patience"]) == \
        ("5292", "2173", "4727", "8")
    assert params["vram_budget_gb"] == "5.0" and params["majority_share_val"] == str(round(5292 / 7465, 4))

    def history(key: str) -> dict[int, float]:
        return {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}

    assert history("val_accuracy") == {1: 4543 / 6025, 2: 4235 / 6025, 3: 4544 / 6025}  # the exact counts
    assert history("test_accuracy") == {1: 4593 / 6026, 2: 4368 / 6026, 3: 4225 / 6026}
    assert history("val_windows") == {1: 6025, 2: 6025, 3: 6025} and history("test_windows")[3] == 6026
    assert history("val_loss") == {1: 0.0355761, 2: 0.0380584, 3: 0.0372419}
    assert history("epoch_time_s")[2] == 866.5918929576874
    assert history("early_stopping_counter") == {2: 1, 3: 2}
    assert history("vram_peak_gb") == {}  # the log prints none and none was given
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "logs")}
    assert artifacts == {"logs/small_improved.log"}
    report = client.download_artifacts(run.info.run_id, "import_report.json")
    assert json.loads(Path(report).read_text())["unreadable"] == []


@pytest.mark.e2e
def test_importing_the_same_log_again_is_a_no_op(store, cli):
    assert cli("import-log", LOGS / "transfer_long.log", "--experiment", "again").code == 0
    (first,) = runs_of("again")
    result = cli("import-log", LOGS / "transfer_long.log", LOGS / "transfer_long.log", "--experiment", "again",
                 "--vram-budget-gb", "7")
    assert result.code == 0, result.err
    assert f"already imported as run {first.info.run_id}; nothing written" in result.out
    (still,) = runs_of("again")
    assert still.info.run_id == first.info.run_id and "vram_budget_gb" not in still.data.params


@pytest.mark.unit
def test_both_spellings_read_the_same(tmp_path):
    openltm = tmp_path / "openltm.log"
    openltm.write_text("Epoch: 1 cost time: 860.0865225791931\n"
                       "Val Accuracy: 75.40% (4543/6025)\nTest Accuracy: 76.22% (4593/6026)\n"
                       "Epoch: 1, Steps: 217 | Vali Loss: 0.0355761 Test Loss: 0.0321258\n")
    seed = tmp_path / "seed.log"
    seed.write_text("Epoch 1 cost time: 860.0865225791931 (14.33 min)\n"
                    "Val Accuracy: 75.40% (4543/6025)\nTest Accuracy: 76.22% (4593/6026)\n"
                    "Vali Loss: 0.0355761, Test Loss: 0.0321258\n")
    expected = {1: {"epoch_time_s": 860.0865225791931, "val_accuracy": 4543 / 6025, "val_windows": 6025.0,
                    "test_accuracy": 4593 / 6026, "test_windows": 6026.0, "val_loss": 0.0355761,
                    "test_loss": 0.0321258}}
    assert parse_log(openltm).epochs == expected and parse_log(seed).epochs == expected
    with_train = tmp_path / "with_train.log"
    with_train.write_text("Epoch: 4, Steps: 868 | Train Loss: 0.0393 Vali Loss: nan Test Loss: inf\n"
                          "GPU memory (max allocated): 3.5 GB\nVRAM peak: 3686.4 MiB\n")
    epoch = parse_log(with_train).epochs[4]
    assert epoch["train_loss"] == 0.0393 and math.isnan(epoch["val_loss"]) and epoch["test_loss"] == math.inf
    assert epoch["vram_peak_gb"] == 3.6  # the larger of the epoch's readings: 3686.4 MiB / 1024


@pytest.mark.unit
def test_unreadable_lines_are_counted_never_guessed(tmp_path):
    log = tmp_path / "mixed.log"
    log.write_text("\n".join([
        "Namespace(task_name='classification', train_epochs=30, learning_rate=5e-05)",  # 1: other output
        "Val Accuracy: 70.00% (700/1000)",                   # 2: before any epoch line
        "Epoch: 1 cost time: 100.0",                          # 3
        "\titers: 100, epoch: 1 | loss: 0.0500000 | acc: 68.75%",  # 4: progress, skipped
        "Val Accuracy: 71.00% (710/1000)",                   # 5
        "   Accuracy: 76.09% (1251/1644)",                    # 6: which split? not said
        "Test Accuracy: 69.00% (700/1000)",                  # 7: 69.00% is not 700/1000
        "Epoch: 1, Steps: 10 | Vali Loss: 0.05 Test Loss: 0.06",  # 8
        "Epoch: 1 | loss: 0.0352620 | acc: 68.75%",          # 9: no known pattern
        "Test Accuracy: 71.50% (715/1000)",                  # 10
        "Test Accuracy: 76.10% (761/1000)",                  # 11: a second test accuracy for epoch 1
        "[VAL] Class distribution: No Rain=300, Rain=700",   # 12
        "✅ Class distribution: No Rain=2934 (38%), Rain=4730 (62%)",  # 13: which split? not said
    ]) + "\n")
    parsed = parse_log(log)
    assert [(n, why) for n, why, _ in parsed.unreadable] == [
        (2, "a metric before the first epoch line"), (6, "no known pattern"),
        (7, "69.00% disagrees with 700/1000"), (9, "no known pattern"),
        (11, "a second test_accuracy for epoch 1"), (13, "no known pattern")]
    assert parsed.epochs == {1: {"epoch_time_s": 100.0, "val_accuracy": 0.71, "val_windows": 1000.0,
                                 "val_loss": 0.05, "test_loss": 0.06, "test_accuracy": 0.715,
                                 "test_windows": 1000.0}}
    assert parsed.params == {"no_rain_val": 300, "rain_val": 700}
    assert "6 unreadable: line 2: a metric before the first epoch line" in parsed.summary()


@pytest.mark.e2e
def test_user_errors_write_nothing(store, cli, tmp_path):
    assert_user_error(cli("import-log", tmp_path / "missing.log", "--experiment", "bad"), "missing.log",
                      "cannot be read")
    empty = tmp_path / "empty.log"
    empty.write_text("nothing that looks like an epoch\n")
    assert_user_error(cli("import-log", LOGS / "nan_loss.log", empty, "--experiment", "bad"),
                      "empty.log", "must hold OpenLTM epoch lines")
    assert_user_error(cli("import-log", LOGS / "nan_loss.log", "--vram-budget-gb", "lots", "--experiment", "bad"),
                      "vram_budget_gb must be a number; got 'lots'")
    assert_user_error(cli("import-log", LOGS / "nan_loss.log", LOGS / "small_improved.log", "--run-name", "x",
                          "--experiment", "bad"), "--run-name must name a single imported log; got 2")
    assert_user_error(cli("import-log", LOGS / "healthy_long.log", "--vram-peak-gb", "4", "--experiment", "bad"),
                      "--vram-peak-gb must be left out", "healthy_long.log", "25 VRAM lines")
    assert_user_error(cli("import-log", "--experiment", "bad"), "import-log needs at least one log file")
    assert MlflowClient().get_experiment_by_name("bad") is None  # not even the experiment was created


@pytest.mark.unit
@pytest.mark.parametrize("name", ["transfer_long", "small_improved", "healthy_long", "nan_loss"])
def test_the_fixture_logs_read_whole(name):
    parsed = parse_log(LOGS / f"{name}.log")
    assert parsed.unreadable == []
    assert sorted(parsed.epochs) == list(range(1, len(parsed.epochs) + 1))
