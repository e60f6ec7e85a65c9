"""The tracker protocol: the MLflow `Tracker` and the store-less `NullTracker` both are a `RunTracker`, and the
per-epoch tracking of a training run works on a `NullTracker` (no store): what it logs, the live diagnosis it
leaves in the tags, the stop it asks for, and the progress lines it reports."""

from __future__ import annotations

import inspect
import json

import pytest
from mlflow.entities import Run, RunData, RunInfo

from rain_mlflow.config import presets
from rain_mlflow.data.dataset import prepare, resolve
from rain_mlflow.data.source import load_clean
from rain_mlflow.diagnostics.thresholds import Thresholds
from rain_mlflow.progress import Progress
from rain_mlflow.tracking.protocol import NullTracker, RunTracker
from rain_mlflow.tracking.tracker import Tracker
from rain_mlflow.train.epochs import EpochTracker
from rain_mlflow.train.loop import TrainState


class Recorded(Progress):
    def __init__(self) -> None:
        self.out: list[str] = []

    def line(self, text: str) -> None:
        self.out.append(text)


def protocol_members() -> set[str]:
    return {name for name in vars(RunTracker) if not name.startswith("_")} | set(RunTracker.__annotations__)


@pytest.mark.unit
def test_both_trackers_have_every_member_of_the_protocol_with_its_parameters():
    members = protocol_members()
    assert {"run_id", "log_metrics", "set_diagnosis", "params", "log_model", "download_artifact"} <= members
    stored = Run(RunInfo("r1", "e1", "", "RUNNING", 0, None, "active"), RunData())  # no store is contacted
    for tracker in (Tracker(stored), NullTracker("r1", "e1")):
        assert isinstance(tracker, RunTracker) and (tracker.run_id, tracker.experiment_id) == ("r1", "e1")
        for name in members - {"run_id", "experiment_id"}:
            wanted = list(inspect.signature(getattr(RunTracker, name)).parameters)
            assert list(inspect.signature(getattr(type(tracker), name)).parameters) == wanted, name


@pytest.mark.unit
def test_the_null_tracker_reads_back_what_it_was_given():
    tracker = NullTracker()
    tracker.log_params({"seq_len": 168, "preset": "smoke"})
    tracker.log_params({"seq_len": 336})  # params are write-once, as in MLflow
    tracker.log_metrics({"val_loss": 0.5, "lr": None}, step=1)
    tracker.log_metrics({"val_loss": 0.4}, step=2)
    tracker.log_artifact("/somewhere/best.pt", "checkpoints")
    tracker.log_dict({}, "config.json")
    assert tracker.params() == {"seq_len": "168", "preset": "smoke"}
    assert tracker.logged_steps("val_loss") == {1, 2} and tracker.logged_steps("lr") == set()
    assert tracker.artifacts == ["checkpoints/best.pt", "config.json"]
    assert tracker.current_diagnosis() == "ok" and tracker.log_model(None, 1, 1, None, 1) is None
    with pytest.raises(FileNotFoundError):
        tracker.download_artifact("checkpoints/last.pt")


def epoch_metrics(val_accuracy: float, test_accuracy: float) -> dict[str, float]:
    return {"train_loss": 0.3, "val_loss": 0.2, "test_loss": 0.2, "val_accuracy": val_accuracy,
            "test_accuracy": test_accuracy, "val_f1": 0.7, "val_mcc": 0.4, "lr": 1e-3, "epoch_time_s": 2.0}


@pytest.mark.unit
def test_epoch_tracking_on_a_null_tracker(tiny_csv):
    cfg = presets.build("smoke", {"data": str(tiny_csv), "train_epochs": "3", "stop_on": "val_test_divergence"})
    _, cleaned = load_clean(cfg.data)
    cfg = resolve(cfg, cleaned)
    data = prepare(cleaned, cfg)
    tracker, progress = NullTracker("run-1"), Recorded()
    epochs = EpochTracker(tracker, cfg, data, progress=progress)
    confusion = {"val": [[1, 0], [0, 1]], "test": [[1, 0], [0, 1]]}

    state = TrainState(epoch=1, best_epoch=1, history={1: epoch_metrics(0.80, 0.79)}, confusions={1: confusion})
    assert epochs(1, state.history[1], state, {}) is None  # healthy: go on
    assert tracker.logged_steps("val_loss") == {1} and "confusion_matrices/epoch_001.json" in tracker.artifacts
    assert tracker.tags()["diagnosis"] == "ok"
    assert json.loads(tracker.tags()["diagnosis.thresholds"]) == json.loads(Thresholds().to_json())
    assert progress.out == ["epoch   1/3  train_loss 0.3000  val_loss 0.2000  val_acc 80.00%  val_f1 0.700  "
                            "val_mcc +0.400  test_acc 79.00%  lr 1.00e-03  2.0 s  [ok] *"]

    # A 40-point gap between validation and test at epoch 2: the rule fires, and stop_on names it.
    state = TrainState(epoch=2, best_epoch=1, history={**state.history, 2: epoch_metrics(0.90, 0.50)},
                       confusions={1: confusion, 2: confusion})
    assert epochs(2, state.history[2], state, {}) == "val_test_divergence"
    tags = tracker.tags()
    assert tags["diagnosis"] == "val_test_divergence" and tags["stopped_by"] == "val_test_divergence"
    assert "gap 40.00 pts" in tags["diagnosis.val_test_divergence"]
    assert progress.out[1].endswith("[val_test_divergence]") and progress.out[2].startswith(
        "stopping: val_test_divergence: val_accuracy 90.00% vs test_accuracy 50.00% at epoch 2")
    assert tracker.logged_steps("val_loss") == {1, 2} and epochs.completed == 2
