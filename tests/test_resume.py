"""Resume edge cases: a run still trained elsewhere, what a resume records, and the LR schedule's horizon."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from rain_mlflow.config import presets
from rain_mlflow.tracking import liveness
from rain_mlflow.train.schedule import COSINE_FLOOR, lr_at
from tests.conftest import assert_user_error
from tests.test_train import run_id_and_kill_after, start_training


def foreign_beat(age_s: float) -> str:
    """The heartbeat a trainer on another machine would have written `age_s` seconds ago."""
    return json.dumps({"host": "colab-vm-7f3a", "boot_id": "0" * 36, "pid": 4242, "process_start": 1.0,
                       "at_ms": int((time.time() - age_s) * 1000), "every_s": 30.0})


@pytest.mark.unit
def test_liveness_reads_the_heartbeat():
    assert liveness.owner_alive(liveness.beat()) is not None            # this very process
    assert "sent a heartbeat" in liveness.owner_alive(foreign_beat(10))
    assert liveness.owner_alive(foreign_beat(10 * 60)) is None           # 3 beats of 30 s missed: gone
    dead = json.loads(liveness.beat())
    dead["process_start"] -= 100                                        # same pid, another process: gone
    assert liveness.owner_alive(json.dumps(dead)) is None
    assert liveness.owner_alive(None) is None and liveness.owner_alive("not json") is None


@pytest.mark.unit
def test_cosine_keeps_its_horizon_and_then_stays_at_the_floor():
    lr = 1e-3
    by_hand = [COSINE_FLOOR + (lr - COSINE_FLOOR) * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    assert [lr_at(lr, "cosine", e, 4, 0, 10, 0) for e in range(4)] == pytest.approx(by_hand)
    assert [lr_at(lr, "cosine", e, 4, 0, 10, 0) for e in (4, 5, 9)] == pytest.approx([COSINE_FLOOR] * 3)


@pytest.mark.e2e
def test_resume_with_more_epochs_keeps_the_horizon_records_changes_and_force_breaks_a_foreign_heartbeat(
        store, synthetic_csv, cli):
    process = start_training(store, synthetic_csv, "--train-epochs", "2", "--experiment", "more")
    run_id = run_id_and_kill_after(process, epoch=1)
    client = MlflowClient()
    client.set_tag(run_id, liveness.HEARTBEAT_TAG, foreign_beat(5))   # as if a Colab VM still trained it

    assert_user_error(cli("train", "--resume", run_id, "--train-epochs", "3"), "still being trained",
                      "colab-vm-7f3a", "--force")
    from rain_mlflow.train.resume import resume_source

    rescheduled, _ = resume_source(run_id, {"train_epochs": "3"}, reschedule=True, force=True)
    assert rescheduled.train.schedule_span == 3 and rescheduled.train.schedule_epochs is None

    result = cli("train", "--resume", run_id, "--train-epochs", "3", "--force")
    assert result.code == 0, result.err[-3000:]
    assert "keeps its original horizon of 2 epochs" in result.err and "--reschedule" in result.err
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["train_epochs"] == "2"                                 # as the run started
    assert params["resume.1.after_epoch"] == "1" and params["resume.1.train_epochs"] == "3"
    assert params["resume.1.schedule_epochs"] == "2" and run.data.tags["resume_count"] == "1"
    history = json.loads(Path(client.download_artifacts(run_id, "resume_history.json", os.getcwd())).read_text())
    assert history[0]["changed"]["train_epochs"] == [2, 3] and "horizon of 2" in history[0]["schedule"]
    lr = {m.step: m.value for m in client.get_metric_history(run_id, "lr")}
    peak = presets.build("smoke").train.learning_rate
    assert lr[1] == pytest.approx(peak)                                  # smoke's rate, cosine over 2 epochs
    assert lr[2] == pytest.approx(COSINE_FLOOR + (peak - COSINE_FLOOR) / 2)
    assert lr[3] == pytest.approx(COSINE_FLOOR)                          # past the kept horizon: the floor
    assert sorted(lr) == [1, 2, 3]
