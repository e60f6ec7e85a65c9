"""Any sampling frequency: time settings as durations, degenerate tasks refused, fixed-hour records resampled.

The records are the synthetic station (`synth.synthetic_frame`) at daily and 3-hourly steps, and the hourly one
read by an observer at 07, 13 and 19 h (`synth.observed_at`). Expected labels are computed here by hand from the
raw CSV's timestamps (sum every reading in (t, t + 24 h]), never by the code under test.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from rain_mlflow.config import DataConfig, RunConfig, presets
from rain_mlflow.data.source import load_clean
from rain_mlflow.data.dataset import prepare, resolve
from rain_mlflow.errors import ConfigError
from rain_mlflow.synth import observed_at, synthetic_frame
from tests.conftest import REPO, assert_user_error, run_env

THRESHOLD = 0.1


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> dict[str, tuple[str, pd.DataFrame]]:
    """name -> (CSV path, raw frame): 6 years daily, 1 year 3-hourly, 3 years read at 07, 13 and 19 h."""
    folder = tmp_path_factory.mktemp("freq")
    frames = {"daily": synthetic_frame(6.0, "1D", seed=1), "3-hourly": synthetic_frame(1.0, "3h", seed=2),
              "schedule": observed_at(synthetic_frame(3.0, "1h", seed=3), (7, 13, 19))}
    out = {}
    for name, frame in frames.items():
        path = folder / f"{name}.csv"
        frame.to_csv(path, index=False)
        out[name] = (str(path), pd.read_csv(path, parse_dates=["date"]))
    return out


def hand_labels(raw: pd.DataFrame, ends: pd.DatetimeIndex, horizon: pd.Timedelta, readings: int) -> np.ndarray:
    """For each end time t: 1 if the readings in (t, t + horizon] sum above the threshold, NaN when fewer than
    `readings` are there or one is missing. A plain loop over timestamps (duplicates: first row kept)."""
    raw = raw.drop_duplicates("date", keep="first")
    dates, rain = raw["date"].to_numpy(), raw["precipitation"].to_numpy()
    out = []
    for t in ends.to_numpy():
        inside = (dates > t) & (dates <= t + horizon.to_timedelta64())
        values = rain[inside]
        known = len(values) == readings and not np.isnan(values).any()
        out.append(float(values.sum() > THRESHOLD) if known else np.nan)
    return np.asarray(out)


def prepared(path: str, **overrides):
    cfg = presets.build("smoke", {"data": path, "allow_degenerate": "true", **overrides})
    _, cleaned = load_clean(cfg.data)
    return prepare(cleaned, resolve(cfg, cleaned)), cleaned


@pytest.mark.unit
@pytest.mark.parametrize("name, readings, steps", [("daily", 1, 1), ("3-hourly", 8, 8), ("schedule", 3, 1)])
def test_horizon_24h_gives_the_hand_computed_labels(records, name, readings, steps):
    path, raw = records[name]
    data, cleaned = prepared(path, horizon="24h", seq_len="24")
    assert data.horizon == steps
    for split in data.splits.values():
        ends = data.dates[split.ends]
        expected = hand_labels(raw, ends, pd.Timedelta(hours=24), readings)
        known = ~np.isnan(expected)
        assert known.mean() > 0.9, name
        np.testing.assert_array_equal(split.labels[known], expected[known])
        assert np.isnan(expected).sum() == 0 or name == "schedule"  # the grid's totals drop partial days there
    # every end step whose label the hand computation knows is used in validation and test (none left out)
    for split_name in ("val", "test"):
        split = data.splits[split_name]
        grid = data.dates[split.first_step:split.last_step - steps]
        known = ~np.isnan(hand_labels(raw, grid, pd.Timedelta(hours=24), readings))
        assert split.size == int(known.sum()), (name, split_name)


@pytest.mark.unit
def test_seq_len_60d_on_daily_data_is_60_steps_in_whole_tokens(records):
    path, _ = records["daily"]
    for token, window in ((24, 48), (7, 56), (10, 60), (60, 60)):
        data, cleaned = prepared(path, seq_len="60d", horizon="1d", input_token_len=str(token))
        assert cleaned.step == pd.Timedelta(days=1)
        assert data.window == window
        dropped = [n for n in data.notes if "oldest" in n]
        assert bool(dropped) == (window != 60)
        if dropped:
            assert f"oldest {60 - window}" in dropped[0]


@pytest.mark.e2e
def test_a_duration_that_is_not_whole_steps_names_both(records, cli, store):
    path, _ = records["3-hourly"]
    assert_user_error(cli("train", "--preset", "smoke", "--data", path, "--horizon", "5h", "--dry-run"),
                      "horizon 5h", "3 h steps")
    path, _ = records["daily"]
    assert_user_error(cli("clean", "--data", path, "--max-fill", "6h", "--output", str(store) + "x.csv"),
                      "max_fill 6h", "1 day steps")
    assert_user_error(cli("train", "--preset", "smoke", "--horizon", "1M", "--dry-run"), "horizon", "'1M'")


@pytest.mark.e2e
def test_the_daily_record_with_a_24_step_horizon_is_refused_and_1d_is_not(records, cli, store):
    path, _ = records["daily"]
    base = ("train", "--preset", "smoke", "--data", path, "--seq-len", "60d", "--dry-run")
    refused = cli(*base, "--horizon", "24")
    assert_user_error(refused, "degenerate", "val split is 100.0% rain", "horizon 24 steps (= 24 days",
                      "rain_threshold 0.1", "split fractions 0.6/0.2/0.2", "--allow-degenerate")
    runs = MlflowClient().search_runs(MlflowClient().search_experiments()[0].experiment_id) \
        if MlflowClient().search_experiments() else []
    assert not runs  # refused before any run
    ok = cli(*base, "--horizon", "1d")
    assert ok.code == 0, ok.err
    assert "horizon 1 step = 1 day" in ok.out and "window 48 steps = 48 days of daily data" in ok.out
    assert "preset smoke is defined for hourly data (168 steps = 7 days there)" in ok.out
    forced = cli(*base, "--horizon", "24", "--allow-degenerate", "--format", "json")
    assert forced.code == 0, forced.err
    summary = json.loads(forced.out)
    assert any("degenerate" in n for n in summary["data"]["notes"])
    assert summary["time_settings"]["horizon"] == {"given": 24, "steps": 24, "duration": "24 days"}


@pytest.mark.unit
def test_too_few_windows_is_refused_by_min_windows(records, cli):
    path, _ = records["daily"]
    result = cli("train", "--preset", "smoke", "--data", path, "--seq-len", "60d", "--horizon", "1d",
                 "--min-windows", "1000", "--dry-run")
    assert_user_error(result, "degenerate", "usable windows (min_windows 1000)", "horizon 1 step (= 1 day")


@pytest.mark.e2e
def test_a_fixed_hour_record_is_recognised_and_resampled_keeping_totals(records, cli, store, tmp_path):
    path, raw = records["schedule"]
    out = tmp_path / "clean.csv"
    result = cli("clean", "--data", path, "--output", out)
    assert result.code == 0, result.err
    assert "observed at fixed times 07:00, 13:00, 19:00" in result.out
    report = json.loads((tmp_path / "clean.report.json").read_text())
    assert report["schedule"]["times"] == ["07:00", "13:00", "19:00"] and report["freq"] == "1D"
    cleaned = pd.read_csv(out, parse_dates=["date"])
    assert (cleaned["date"].diff().dropna() == pd.Timedelta(days=1)).all()   # no slot that is always empty
    # each day's total is the sum of that day's three readings (by hand), unknown when one is missing
    raw = raw.drop_duplicates("date")
    day_end = raw["date"].dt.normalize() + pd.Timedelta(days=1)
    by_day = raw.groupby(day_end)["precipitation"]
    complete = (by_day.count() == 3)
    expected = by_day.sum()[complete]
    got = cleaned.set_index("date")["precipitation"]
    common = expected.index.intersection(got.dropna().index)
    assert len(common) > 0.9 * len(expected)
    np.testing.assert_allclose(got[common].to_numpy(), expected[common].to_numpy(), atol=1e-9)
    assert got[by_day.count()[~complete].index.intersection(got.index)].isna().all()
    np.testing.assert_allclose(cleaned["temperature"].iloc[5],
                               raw.loc[day_end == cleaned["date"].iloc[5], "temperature"].mean(), atol=1e-9)
    # a finer grid the user chooses: readings stay where they were read, never moved earlier
    six = cli("clean", "--data", path, "--output", tmp_path / "six.csv", "--freq", "6h")
    assert six.code == 0, six.err
    grid = pd.read_csv(tmp_path / "six.csv", parse_dates=["date"])
    assert grid["precipitation"].sum() == pytest.approx(cleaned["precipitation"].sum(), rel=0.05)


@pytest.mark.unit
def test_configs_hold_durations_as_given_and_checkpoints_reload(tmp_path):
    cfg = presets.build("smoke", {"horizon": "1d", "seq_len": "60d", "window_stride": "2d", "max_fill": "0h"})
    assert cfg.data.horizon == "1d" and not cfg.data.resolved
    with pytest.raises(ConfigError, match="resolve"):
        _ = cfg.effective_seq_len
    again = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    daily = cfg.in_steps(pd.Timedelta(days=1))
    assert (daily.data.horizon, daily.data.seq_len, daily.data.window_stride, daily.data.max_fill) == (1, 60, 2, 0)
    assert daily.in_steps(pd.Timedelta(days=1)) == daily
    with pytest.raises(ConfigError, match="seq_len 60d is 5 steps of 12 days; it must be >= 24|not a whole"):
        cfg.in_steps(pd.Timedelta(days=7))
    old = presets.build("smoke").to_dict()          # a checkpoint written before durations: steps only
    old["data"]["horizon"] = 24
    assert RunConfig.from_dict(old).in_steps(pd.Timedelta(hours=1)).data.horizon == 24
    hourly = DataConfig().in_steps(pd.Timedelta(hours=1))
    three = DataConfig().in_steps(pd.Timedelta(hours=3))
    assert (hourly.horizon, hourly.max_fill, three.horizon, three.max_fill) == (24, 6, 8, 2)


@pytest.mark.e2e
def test_mlproject_takes_durations(records, tmp_path):
    """`mlflow run . -e train -P horizon=24h` on 3-hourly data: 8 steps, logged as steps and as a duration; its
    checkpoint reloads with weights_only=True."""
    path, _ = records["3-hourly"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local", "--experiment-name", "freq",
         "-e", "train", "-P", "preset=smoke", "-P", f"data={path}", "-P", "horizon=24h", "-P", "seq_len=7d",
         "-P", "window_stride=9h", "-P", "train_epochs=1"],
        env=run_env(uri), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "horizon 8 steps = 1 day" in result.stdout and "window 48 steps = 6 days of 3-hourly data" in result.stdout
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("freq").experiment_id])
    params = run.data.params
    assert params["horizon"] == "24h" and params["resolved.horizon"] == "8"   # as given by mlflow, then steps
    assert params["horizon_duration"] == "1 day" and params["seq_len_duration"] == "7 days"
    assert params["resolved.seq_len"] == "56" and params["effective_seq_len"] == "48"
    assert params["resolved.window_stride"] == "3" and params["time_step"] == "3 h"
    best = client.download_artifacts(run.info.run_id, "checkpoints/best.pt", str(tmp_path))
    payload = torch.load(best, weights_only=True)
    from rain_mlflow.model.factory import rain_model_from_payload

    model, cfg = rain_model_from_payload(payload)
    assert cfg.data.horizon == 8 and model.window == 48
