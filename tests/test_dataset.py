"""Windows: labels, chronological split with purge, train-only scaler, index vs naive slicing, window counts and
accounting against naive counts, the realistic record at 60-day windows, memory."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pandas as pd
import pytest

from rain_mlflow.config import presets
from rain_mlflow.data.clean import clean
from rain_mlflow.data.dataset import prepare, resolve
from rain_mlflow.data.windows import gather, persistence, rain_labels
from rain_mlflow.errors import ConfigError, DataError
from rain_mlflow.synth import synthetic_frame

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def two_years():
    return synthetic_frame(years=2.0)


def prepared(frame: pd.DataFrame, preset: str = "smoke", **overrides):
    cfg = presets.build(preset, {k: str(v) for k, v in overrides.items()})
    cleaned = clean(frame, cfg.data, "synthetic")
    cfg = resolve(cfg, cleaned)
    return prepare(cleaned, cfg), cfg


def test_label_is_rain_over_the_next_horizon_steps():
    precip = np.array([0, 0, 0.5, 0, 0, 0, np.nan, 0, 0])
    labels = rain_labels(precip, horizon=2, threshold=0.1)
    # t=0 looks at steps 1..2 (0.5 at 2): rain; t=1 looks at 2..3: rain; t=2 looks at 3..4: dry
    assert labels[0] == 1 and labels[1] == 1 and labels[2] == 0 and labels[3] == 0
    assert np.isnan(labels[4]) and np.isnan(labels[5])      # (t, t+2] touches the missing step 6
    assert np.isnan(labels[7]) and np.isnan(labels[8])      # beyond the end of the record


@pytest.mark.parametrize("tip", [0.1, 0.2, 0.3])
def test_a_total_equal_to_the_threshold_is_not_rain_however_long_the_record(tip):
    # a gauge reading tip mm after k steps of rain: the windows holding only it total exactly `tip`, not above
    rng = np.random.default_rng(0)
    history = np.round(rng.gamma(0.7, 0.5, 20_000) * (rng.random(20_000) < 0.3), 1)
    for k in range(0, 20_000, 500):
        precip = np.concatenate([history[:k], [0, 0, 0, tip, 0, 0, 0]])
        labels = rain_labels(precip, horizon=3, threshold=tip)
        assert labels[k: k + 3].tolist() == [0, 0, 0], k                         # (t, t + 3] holds only the tip
        assert rain_labels(precip, horizon=3, threshold=tip - 0.01)[k: k + 3].tolist() == [1, 1, 1], k
        assert persistence(precip, labels, 3, tip)[k + 3: k + 6].tolist() == [0, 0, 0], k


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
    observed = ~np.isnan(raw[:train_end])
    np.testing.assert_allclose(data.series[:train_end, :raw.shape[1]][observed],
                               ((raw[:train_end] - data.scaler_mean) / data.scaler_scale)[observed], rtol=1e-5,
                               atol=1e-5)


def test_window_index_matches_naive_slicing(two_years):
    data, cfg = prepared(two_years, missing="exclude", max_fill=0)
    cleaned = clean(two_years, cfg.data, "synthetic")
    raw = cleaned.frame[list(cleaned.features)].to_numpy(dtype=float)
    precip = cleaned.frame["precipitation"].to_numpy(dtype=float)
    seen = {True: 0, False: 0}
    for split in data.splits.values():
        pick = split.ends[:: max(1, split.size // 50)]
        windows = data.gather(pick)
        for end, window, label in zip(pick, windows, split.labels[:: max(1, split.size // 50)]):
            naive = (raw[end - data.window + 1: end + 1] - data.scaler_mean) / data.scaler_scale
            np.testing.assert_allclose(window, naive, rtol=1e-5, atol=1e-5)
            future = precip[end + 1: end + 1 + cfg.data.horizon]          # the label's steps: (t, t + horizon]
            assert len(future) == cfg.data.horizon and not np.isnan(future).any()
            rained = math.fsum(future) > cfg.data.rain_threshold                 # the exact sum of the readings
            assert label == float(rained), (end, future)
            seen[rained] += 1
            assert not np.isnan(naive).any()          # exclude, no fill: never a window touching a missing value
    assert seen[True] and seen[False]                 # both answers were compared


def test_the_gather_helper_is_the_same_in_numpy_and_torch():
    import torch

    series = np.arange(40, dtype=np.float32).reshape(20, 2)
    ends = np.array([3, 7, 19])
    expected = np.stack([series[e - 3: e + 1] for e in ends])
    np.testing.assert_array_equal(gather(series, ends, 4), expected)
    np.testing.assert_array_equal(gather(torch.from_numpy(series), torch.from_numpy(ends), 4).numpy(), expected)


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


# ---- every window evaluated, counted like a naive loop would ----------------------------------------------------

def naive_ends(cleaned, cfg, window: int, first: int, last: int, stride: int, exclude: bool,
               need_label: bool = True) -> list[int]:
    """Every usable end step of [first, last), one at a time: input inside the record, label known, (exclude) no
    input still missing after a naive last-observation-carried-forward."""
    from tests.test_missing import naive_carry_forward

    columns = list(cleaned.features)
    raw = cleaned.frame[columns].to_numpy(dtype=float)
    filled = naive_carry_forward(raw, cleaned.max_fill, [c != "precipitation" for c in columns])
    precip = cleaned.frame["precipitation"].to_numpy(dtype=float)
    h = cfg.data.horizon
    ends = []
    for t in range(first, last):
        if t < window - 1 or t + h >= last or (t - (window - 1)) % stride:
            continue
        if need_label and np.isnan(precip[t + 1: t + h + 1]).any():
            continue
        if exclude and np.isnan(filled[t - window + 1: t + 1]).any():
            continue
        ends.append(t)
    return ends


@pytest.mark.parametrize("missing", ["mask", "exclude"])
def test_val_and_test_use_every_window_training_the_stride_and_counts_equal_a_naive_count(missing):
    frame = synthetic_frame(years=1.0, seed=8, gaps="realistic")
    # allow_degenerate: one dry year leaves validation without rain; the counts under test do not depend on it
    cfg = presets.build("smoke", {"missing": missing, "window_stride": "6", "allow_degenerate": "true"})
    cleaned = clean(frame, cfg.data, "synthetic")
    cfg = resolve(cfg, cleaned)  # horizon 24h -> 24 steps
    data = prepare(cleaned, cfg)
    for name, split in data.splits.items():
        stride = 6 if name == "train" else 1
        expected = naive_ends(cleaned, cfg, data.window, split.first_step, split.last_step, stride,
                              missing == "exclude")
        assert split.ends.tolist() == expected, name
        counts = data.accounting["splits"][name]
        assert counts["kept"] == split.size == len(expected)
        candidates = naive_ends(cleaned, cfg, data.window, split.first_step, split.last_step, stride, False,
                                need_label=False)
        assert counts["candidates"] == split.candidates == len(candidates)
        assert counts["label_unknown"] + counts["input_missing"] == len(candidates) - len(expected)
    assert data.splits["val"].size > 5 * data.splits["train"].size * (0.2 / 0.6)  # val is not thinned


def constructed(precip_gap: tuple[int, int] | None = None, a_gap: tuple[int, int] | None = None) -> pd.DataFrame:
    """200 hourly steps: precipitation (rain every 10th step), feature a (maybe a gap), feature b (complete)."""
    n = 200
    frame = pd.DataFrame({"date": pd.date_range("2021-03-01", periods=n, freq="h"),
                          "precipitation": np.where(np.arange(n) % 10 == 0, 1.0, 0.0),
                          "a": np.sin(np.arange(n) / 5), "b": np.cos(np.arange(n) / 7)})
    if precip_gap:
        frame.loc[precip_gap[0]:precip_gap[1] - 1, "precipitation"] = np.nan
    if a_gap:
        frame.loc[a_gap[0]:a_gap[1] - 1, "a"] = np.nan
    return frame


TINY = {"seq_len": "24", "horizon": "4", "max_fill": "3", "window_stride": "1",
        "min_windows": "0"}  # 200 hand-checked steps: splits of tens of windows


def test_windows_whose_label_touches_missing_precipitation_are_excluded():
    # precipitation missing at steps 60-61: the labels of t = 56..60 sum over (t, t + 4], which reaches into it
    data, _ = prepared(constructed(precip_gap=(60, 62)), **TINY, missing="mask")
    train = data.splits["train"]
    assert not set(range(56, 61)) & set(train.ends.tolist())
    assert {55, 61} <= set(train.ends.tolist())
    assert data.accounting["splits"]["train"]["label_unknown"] == 5
    # as an input the missing precipitation is masked, not carried forward (rain is never invented):
    # in the window ending at 70, steps 60 and 61 are positions -11 and -10
    window = data.gather(np.array([70]))[0]
    assert (window[-11:-9, 0] == 0).all() and (window[-11:-9, -1] == 1 / 3).all()
    assert (window[-12, -1] == 0) and (window[-9, -1] == 0)


def test_per_feature_window_cost_and_suggestion_on_a_constructed_record():
    # a is missing at steps 50-69; carried forward 3 steps, 53-69 stay missing: windows of 24 steps ending at
    # 53 .. 92 touch them, 40 windows. Candidates with a known label: train 23..115 (93), val 120..155 (36),
    # test 160..195 (36): 165. 40 / 165 = 24 % > 20 %: a suggestion under exclude, none under mask.
    frame = constructed(a_gap=(50, 70))
    excluded, _ = prepared(frame, **TINY, missing="exclude")
    report = excluded.accounting
    assert report["features"]["a"] == {"windows_touching_gaps": 40, "share": round(40 / 165, 4),
                                       "missing_steps_after_fill": 17, "longest_gap_after_fill": 17}
    assert report["features"]["b"]["windows_touching_gaps"] == 0
    assert report["features"]["precipitation"]["windows_touching_gaps"] == 0
    assert report["splits"]["train"] == {"candidates": 93, "kept": 53, "label_unknown": 0, "input_missing": 40,
                                         "kept_share": round(53 / 93, 4)}
    (suggestion,) = report["suggestions"]
    assert suggestion.startswith("a:") and "--missing mask" in suggestion and "--max-fill" in suggestion
    masked, _ = prepared(frame, **TINY, missing="mask")
    assert masked.accounting["features"]["a"]["windows_touching_gaps"] == 40
    assert masked.accounting["splits"]["train"]["kept"] == 93 and masked.accounting["suggestions"] == []
    assert masked.class_counts()["gap_windows.a"] == 40 and masked.class_counts()["candidate_windows_val"] == 36


def test_the_realistic_record_keeps_90_percent_of_60_day_windows_in_every_split():
    frame = synthetic_frame(years=2.0, gaps="realistic")
    data, cfg = prepared(frame, "transfer", pretrain_model_path="")
    assert data.window == 1440
    for name, counts in data.accounting["splits"].items():
        assert counts["kept"] / counts["candidates"] >= 0.90, (name, counts)
    assert "wind_gust" not in data.columns     # 83 % empty in the training period: dropped
    with pytest.raises(DataError, match="train split has no usable window.*--missing mask"):
        prepared(frame, "transfer", pretrain_model_path="", missing="exclude")
