"""`tune`: real Optuna studies of real (tiny) training runs in a real sqlite MLflow store.

The space of the main study has a deliberately bad region (learning rate 10: the loss explodes and the model
predicts one class); those trials must be pruned by a diagnosis rule and say so everywhere (Optuna's user attrs,
the run's `stopped_by` and `diagnosis` tags), while the healthy ones complete. Kill-and-resume and two workers on
one storage run `tune` as separate processes.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import assert_user_error, run_env

SPACE = "learning_rate: {type: categorical, choices: [0.001, 10.0]}\ndropout: {type: float, low: 0.0, high: 0.2}\n"
FAST = ["--preset", "smoke", "--train-epochs", "2", "--window-stride", "12"]


@pytest.fixture(scope="module")
def half_year(tmp_path_factory) -> Path:
    from rain_mlflow.synth import SynthConfig, write_synthetic

    path = tmp_path_factory.mktemp("tune") / "half_year.csv"
    write_synthetic(str(path), SynthConfig(years=0.5))
    return path


def study_trials(tmp_path: Path, name: str) -> list:
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'optuna.db'}").get_trials()


def trial_runs(name: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name("rain-timerxl")
    return client.search_runs([experiment.experiment_id], f"tags.`tune.study` = '{name}' and "
                                                          "tags.`rain.step` = 'train'", max_results=100)


def parent_run(name: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name("rain-timerxl")
    found = client.search_runs([experiment.experiment_id], f"tags.`tune.study` = '{name}' and "
                                                           "tags.`rain.step` = 'tune'")
    assert len(found) == 1, [r.info.run_id for r in found]
    return found[0]


@pytest.mark.e2e
def test_study_prunes_the_bad_region_by_rule_and_promotes_its_best_healthy_trial(store, cli, half_year, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    result = cli("tune", *FAST, "--data", half_year, "--space", space, "--n-trials", "4", "--study", "s")
    assert result.code == 0, result.err[-3000:]

    trials = study_trials(tmp_path, "s")
    assert len(trials) == 4
    by_number = {t.number: t for t in trials}
    runs = {int(r.data.tags["tune.trial"]): r for r in trial_runs("s")}
    assert sorted(runs) == list(range(4))
    bad = [n for n, t in by_number.items() if t.params["learning_rate"] == 10.0]
    good = [n for n, t in by_number.items() if t.params["learning_rate"] == 0.001]
    assert bad and good, "the seeded sampler must visit both regions"
    for n in bad:
        t, run = by_number[n], runs[n]
        assert t.state.name == "PRUNED", (n, t.state)
        reason = t.user_attrs["pruned_by"]
        assert reason in ("class_collapse", "non_finite_loss", "stalled", "oscillating"), reason
        assert run.data.tags["stopped_by"] == reason
        assert reason in run.data.tags["diagnosis"].split(",")                 # the rule really fired
        assert run.info.status == ("FAILED" if reason == "non_finite_loss" else "FINISHED")
        assert run.data.tags["mlflow.parentRunId"] == parent_run("s").info.run_id
    for n in good:
        t, run = by_number[n], runs[n]
        assert t.state.name == "COMPLETE" and run.info.status == "FINISHED"
        assert "diagnosis" in run.data.tags and "stopped_by" not in run.data.tags
        # the objective is val_mcc at the trial's best epoch, read back from the run's own history
        from mlflow.tracking import MlflowClient
        best_epoch = int(run.data.metrics["best_epoch"])
        history = {m.step: m.value for m in MlflowClient().get_metric_history(run.info.run_id, "val_mcc")}
        assert t.value == pytest.approx(history[best_epoch])

    parent = parent_run("s")
    metrics = parent.data.metrics
    reasons = [by_number[n].user_attrs["pruned_by"] for n in bad]
    assert metrics["n_trials"] == 4 and metrics["n_pruned"] == len(bad) and metrics["n_complete"] == len(good)
    for reason in set(reasons):
        assert metrics[f"pruned_{reason}"] == reasons.count(reason)
    # time saved: the epochs each pruned trial did not run x its mean epoch time, from the runs' own metrics
    expected = 0.0
    from mlflow.tracking import MlflowClient
    for n in bad:
        times = [m.value for m in MlflowClient().get_metric_history(runs[n].info.run_id, "epoch_time_s")]
        expected += (2 - len(times)) * sum(times) / len(times)
    assert metrics["time_saved_s"] == pytest.approx(expected, rel=1e-6)
    assert metrics["time_saved_s"] > 0
    best = max(good, key=lambda n: by_number[n].value)
    assert metrics["best_value"] == pytest.approx(by_number[best].value)
    assert parent.data.tags["best_trial_run_id"] == runs[best].info.run_id
    assert parent.data.tags["best.learning_rate"] == "0.001"

    import mlflow
    folder = Path(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id))
    rows = list(csv.DictReader((folder / "trials.csv").open()))
    assert [int(r["number"]) for r in rows] == list(range(4))
    assert {int(r["number"]): r["mlflow_run_id"] for r in rows} == {n: r.info.run_id for n, r in runs.items()}
    assert (folder / "plots" / "optimization_history.png").stat().st_size > 1000
    assert (folder / "plots" / "intermediate_values.png").stat().st_size > 1000
    assert runs[best].info.run_id in result.out

    promoted = cli("promote", "--study", "s", "--metric", "val_mcc")
    assert promoted.code == 0, promoted.err[-2000:]
    version = MlflowClient().get_model_version_by_alias("rain-timerxl-classifier", "champion")
    assert version.run_id == runs[best].info.run_id
    assert_user_error(cli("promote", "--study", "no-such-study"), "study", "no-such-study")


def _tune_process(tmp_path: Path, data: Path, space: Path, *extra: str) -> subprocess.Popen:
    env = run_env(f"sqlite:///{tmp_path / 'mlflow.db'}")
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.Popen([sys.executable, "-m", "rain_mlflow", "tune", *FAST, "--data", str(data), "--space",
                             str(space), *extra], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.e2e
def test_a_study_killed_mid_trial_resumes_with_the_same_name(store, cli, half_year, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("dropout: {type: float, low: 0.0, high: 0.2}\n")
    worker = _tune_process(tmp_path, half_year, space, "--n-trials", "2", "--study", "k")
    lines = []
    for line in worker.stdout:  # kill it while trial 0 trains (after its first epoch, before its last)
        lines.append(line)
        if line.startswith("epoch   1/"):
            worker.send_signal(signal.SIGKILL)
            break
    worker.wait(timeout=60)
    assert worker.returncode == -signal.SIGKILL, "".join(lines)[-2000:]
    assert [t.state.name for t in study_trials(tmp_path, "k")] == ["RUNNING"]
    assert [r.info.status for r in trial_runs("k")] == ["RUNNING"]

    result = cli("tune", *FAST, "--data", half_year, "--space", space, "--n-trials", "1", "--study", "k",
                 "--train-epochs", "1")
    assert result.code == 0, result.err[-3000:]
    assert "continuing study k" in result.out
    trials = study_trials(tmp_path, "k")
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[0].user_attrs["failed_by"] == "killed"
    killed = [r for r in trial_runs("k") if r.data.tags["tune.trial"] == "0"]
    assert [r.info.status for r in killed] == ["KILLED"]
    parent = parent_run("k")  # found again by the study tag, not a second parent
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["n_trials"] == 1 and parent.data.metrics["n_killed"] == 1


@pytest.mark.e2e
def test_two_workers_share_one_study_without_duplicate_trials(store, half_year, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("dropout: {type: float, low: 0.0, high: 0.2}\n")
    workers = [_tune_process(tmp_path, half_year, space, "--n-trials", "2", "--study", "shared",
                             "--train-epochs", "1") for _ in range(2)]
    outputs = [w.communicate(timeout=400)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [o[-2000:] for o in outputs]
    trials = study_trials(tmp_path, "shared")
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) >= 2
    assert all(t.state.name == "COMPLETE" for t in trials)
    tagged = [r.data.tags["tune.trial"] for r in trial_runs("shared")]
    assert sorted(tagged, key=int) == [str(n) for n in sorted(numbers)]    # one MLflow run per trial
    # both workers trained: each printed at least one trial of its own
    assert all("trial " in o and " of study shared" in o for o in outputs)


@pytest.mark.e2e
@pytest.mark.parametrize("text, fragments", [
    ("lerning_rate: {type: float, low: 1.0e-4, high: 1.0e-2}\n", ["lerning_rate", "unknown setting"]),
    ("learning_rate: {type: float, low: 1.0e-2, high: 1.0e-4}\n", ["learning_rate.low must be below high"]),
    ("learning_rate: {type: float, low: -1.0, high: 1.0e-2}\n", ["learning_rate.low", "learning_rate must be > 0"]),
    ("n_heads: {type: categorical, choices: [3, 5]}\n", ["n_heads", "divisible"]),
    ("d_model: {type: categorical, choices: [48]}\nn_heads: {type: categorical, choices: [8]}\n",
     ["can never give a valid run"]),
    ("dropout: {type: uniform, low: 0, high: 1}\n", ["dropout.type must be one of"]),
    ("[1, 2]\n", ["must map settings to distributions"]),
])
def test_an_invalid_space_is_refused_before_anything_is_written(store, cli, half_year, tmp_path, text, fragments):
    space = tmp_path / "space.yaml"
    space.write_text(text)
    before = set(os.listdir(tmp_path))
    assert_user_error(cli("tune", *FAST, "--data", half_year, "--space", space), "space file", *fragments)
    assert set(os.listdir(tmp_path)) == before            # no optuna.db, no MLflow store


@pytest.mark.e2e
def test_a_test_metric_and_a_field_both_fixed_and_searched_are_refused(store, cli, half_year, tmp_path):
    assert_user_error(cli("tune", "--metric", "test_f1"), "metric must be one of", "test_f1")
    assert_user_error(cli("tune", "--study", "it's"), "study must be letters", "it's")
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    assert_user_error(cli("tune", *FAST, "--data", half_year, "--space", space, "--learning-rate", "0.01"),
                      "learning_rate must be either fixed")
    assert not (tmp_path / "optuna.db").exists()


@pytest.mark.unit
def test_the_default_space_is_valid_for_every_preset():
    import optuna

    from rain_mlflow.config import presets
    from rain_mlflow.tune.space import default_space

    for name in presets.names():
        base = presets.build(name)
        space = default_space(base)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        for _ in range(20):  # every sample is a config the trainer accepts
            base.with_overrides(**space.sample(study.ask()))
        tokens = {c for p in space.params if p.name == "seq_len" for c in p.choices}
        assert all(t % base.model.input_token_len == 0 for t in tokens), (name, tokens)
