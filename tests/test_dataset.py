"""Windows: labels, chronological split with purge, train-only scaler, index vs naive slicing, memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd
import pytest

from rain_mlflow import presets
from rain_mlflow.data.clean import clean
from rain_mlflow.data.dataset import complete_windows, prepare, rain_labels
from rain_mlflow.errors import ConfigError
from rain_mlflow.synth import synthetic_frame


@pytest.fixture(scope="module")
def two_years():
    return synthetic_frame(years=2.0)


def prepared(frame: pd.DataFrame, preset: str = "smoke", **overrides):
    cfg = presets.build(preset, {k: str(v) for k, v in overrides.items()})
    return prepare(clean(frame, cfg.data, "synthetic"), cfg), cfg


def test_label_is_rain_over_the_next_horizon_steps():
    precip = np.array([0, 0, 0.5, 0, 0, 0, np.nan, 0, 0])
    labels = rain_labels(precip, horizon=2, threshold=0.1)
    # t=0 looks at steps 1..2 (0.5 at 2): rain; t=1 looks at 2..3: rain; t=2 looks at 3..4: dry
    assert labels[0] == 1 and labels[1] == 1 and labels[2] == 0 and labels[3] == 0
    assert np.isnan(labels[4]) and np.isnan(labels[5])      # (t, t+2] touches the missing step 6
    assert np.isnan(labels[7]) and np.isnan(labels[8])      # beyond the end of the record


def test_no_training_label_reaches_validation_time(two_years):
    data, cfg = prepared(two_years)
    train, val, test = (data.splits[s] for s in ("train", "val", "test"))
    assert train.ends.max() + cfg.data.horizon < val.first_step      # purge: train labels end before val
    assert val.ends.max() + cfg.data.horizon < test.first_step
    assert val.ends.min() >= val.first_step and test.ends.min() >= test.first_step
    assert train.ends.max() < val.ends.min() < test.ends.min()


def test_scaler_is_fitted_on_the_training_steps_only(two_years):
    data, cfg = prepared(two_years)
    cleaned = clean(two_years, cfg.data, "synthetic")
    raw = cleaned.frame[list(cleaned.features)].to_numpy(dtype=float)
    train_end = data.splits["train"].last_step
    np.testing.assert_allclose(data.scaler_mean, np.nanmean(raw[:train_end], axis=0), rtol=1e-9)
    np.testing.assert_allclose(data.scaler_scale, np.nanstd(raw[:train_end], axis=0), rtol=1e-9)
    assert not np.allclose(data.scaler_mean, np.nanmean(raw, axis=0))  # the whole record would differ
    np.testing.assert_allclose(data.series[:train_end].astype(float),
                               (raw[:train_end] - data.scaler_mean) / data.scaler_scale, rtol=1e-5, atol=1e-5)


def test_window_index_matches_naive_slicing(two_years):
    data, cfg = prepared(two_years)
    cleaned = clean(two_years, cfg.data, "synthetic")
    raw = cleaned.frame[list(cleaned.features)].to_numpy(dtype=float)
    labels = rain_labels(cleaned.frame["precipitation"].to_numpy(dtype=float), cfg.data.horizon,
                         cfg.data.rain_threshold)
    for split in data.splits.values():
        pick = split.ends[:: max(1, split.size // 50)]
        windows = data.gather(pick)
        for end, window, label in zip(pick, windows, split.labels[:: max(1, split.size // 50)]):
            naive = (raw[end - data.window + 1: end + 1] - data.scaler_mean) / data.scaler_scale
            np.testing.assert_allclose(window, naive, rtol=1e-5, atol=1e-5)
            assert label == labels[end]
            assert not np.isnan(naive).any()          # never a window touching a missing value


def test_windows_touching_missing_values_are_excluded_and_counted(two_years):
    data, cfg = prepared(two_years)
    assert sum(s.dropped for s in data.splits.values()) > 0
    ok = complete_windows(data.series, data.window)
    for split in data.splits.values():
        assert ok[split.ends].all()


def test_class_counts_and_majority_share(two_years):
    data, _ = prepared(two_years)
    counts = data.class_counts()
    for name, split in data.splits.items():
        assert counts[f"rain_{name}"] + counts[f"no_rain_{name}"] == counts[f"windows_{name}"] == split.size
        assert counts[f"majority_share_{name}"] == round(max(split.labels.mean(), 1 - split.labels.mean()), 4)


def test_oldest_remainder_is_trimmed(two_years, caplog):
    # seq_len 180 with tokens of 24: 168 steps are used, the OLDEST 12 are dropped (not the most recent)
    data, cfg = prepared(two_years, seq_len=180)
    assert data.window == cfg.effective_seq_len == 168
    assert any("oldest 12" in note for note in data.notes)
    end = data.splits["val"].ends[0]
    window = data.gather(np.array([end]))[0]
    np.testing.assert_array_equal(window[-1], data.series[end])           # the newest step is kept
    np.testing.assert_array_equal(window[0], data.series[end - 167])      # starts 12 steps later than 180 would


def test_seq_len_longer_than_the_training_split_is_refused(two_years):
    with pytest.raises(ConfigError, match="seq_len 20000 .* longer than the training split"):
        prepared(two_years, seq_len=20000)


def test_eleven_years_at_2880_costs_megabytes_not_gigabytes():
    frame = synthetic_frame(years=11.0)
    cfg = presets.build("transfer_long")
    cleaned = clean(frame, cfg.data, "synthetic")
    tracemalloc.start()
    data = prepare(cleaned, cfg)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    n_windows = sum(s.size for s in data.splits.values())
    materialised = n_windows * data.window * data.n_vars * 4
    assert materialised > 3 * 2**30                      # what [n_windows, 2880, C] would have cost: > 3 GiB
    assert peak < 100 * 2**20, peak                      # what preparing the index cost
