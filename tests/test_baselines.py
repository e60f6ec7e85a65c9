"""Baselines on the same windows, recomputed here by hand (counts and formulas, a per-window loop) on a small
record; skill and the plain-words verdict."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

from rain_mlflow.config import presets
from rain_mlflow.data.clean import clean
from rain_mlflow.data.dataset import prepare, resolve
from rain_mlflow.synth import synthetic_frame
from rain_mlflow.train.baselines import GBM_SETTINGS, prepared_baselines, skill, verdict

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def small():
    frame = synthetic_frame(years=0.4, seed=3, gaps="realistic")
    cfg = presets.build("smoke", {"window_stride": "1"})
    cleaned = clean(frame, cfg.data, "synthetic")
    cfg = resolve(cfg, cleaned)
    data = prepare(cleaned, cfg)
    return data, cleaned, cfg, prepared_baselines(data)


def f1_and_mcc(labels: np.ndarray, guess: np.ndarray) -> tuple[float, float]:
    tp = int(((guess == 1) & (labels == 1)).sum())
    tn = int(((guess == 0) & (labels == 0)).sum())
    fp = int(((guess == 1) & (labels == 0)).sum())
    fn = int(((guess == 0) & (labels == 1)).sum())
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return f1, ((tp * tn - fp * fn) / denominator if denominator else 0.0)


def naive_persistence(precip: np.ndarray, ends: np.ndarray, horizon: int, threshold: float) -> np.ndarray:
    out = []
    for t in ends:
        past = precip[max(t - horizon + 1, 0): t + 1]
        out.append(int(np.nansum(past) > threshold))
    return np.array(out)


def naive_gbm_features(series: np.ndarray, ends: np.ndarray, window: int, rain: int) -> np.ndarray:
    series = series.astype(np.float64)
    rows = []
    for t in ends:
        row = []
        for lag in (0, 1, 2, 3, 6, 12, 24):
            row += list(series[t - lag])
        for k in (1, 3, 6, 12, 24):
            row += list(series[t] - series[t - k])
        row += list(np.round(series[t - window + 1: t + 1].mean(axis=0), 6))
        for k in (3, 6, 12, 24):
            row.append(np.round(series[t - k + 1: t + 1, rain].sum(), 6))
        rows.append(row)
    return np.array(rows)


def test_every_baseline_metric_is_present_for_val_and_test(small):
    *_, bars = small
    for split in ("val", "test"):
        for name in ("always_rain", "persistence", "gbm"):
            for metric in ("f1", "mcc"):
                assert math.isfinite(bars[f"{split}_{name}_{metric}"]), (split, name, metric)
        assert f"{split}_majority_accuracy" in bars


@pytest.mark.parametrize("split", ["val", "test"])
def test_always_rain_majority_and_persistence_recomputed_by_hand(small, split):
    data, cleaned, cfg, bars = small
    labels = data.splits[split].labels
    rain, dry = int(labels.sum()), int((labels == 0).sum())
    assert bars[f"{split}_always_rain_f1"] == pytest.approx(2 * rain / (2 * rain + dry))
    assert bars[f"{split}_always_rain_mcc"] == 0.0
    assert bars[f"{split}_majority_accuracy"] == pytest.approx(max(rain, dry) / (rain + dry))
    precip = cleaned.frame["precipitation"].to_numpy(dtype=float)
    guess = naive_persistence(precip, data.splits[split].ends, cfg.data.horizon, cfg.data.rain_threshold)
    f1, mcc = f1_and_mcc(labels, guess)
    assert bars[f"{split}_persistence_f1"] == pytest.approx(f1)
    assert bars[f"{split}_persistence_mcc"] == pytest.approx(mcc)
    assert 0 < f1 < 1 and mcc > 0                           # a real forecast, not a degenerate one


def test_gbm_recomputed_from_per_window_features_fitted_on_training_windows_only(small):
    data, _, _, bars = small
    rain = data.columns.index("precipitation")
    train = data.splits["train"]
    with threadpool_limits(1, user_api="openmp"):
        model = HistGradientBoostingClassifier(**GBM_SETTINGS).fit(
            naive_gbm_features(data.series, train.ends, data.window, rain), train.labels)
    for split in ("val", "test"):
        s = data.splits[split]
        guess = model.predict(naive_gbm_features(data.series, s.ends, data.window, rain))
        f1, mcc = f1_and_mcc(s.labels, guess)
        assert bars[f"{split}_gbm_f1"] == pytest.approx(f1) and bars[f"{split}_gbm_mcc"] == pytest.approx(mcc)
    # the evaluation labels play no part in the fit: flipping every validation label leaves the test scores
    flipped = dataclasses.replace(data, splits={**data.splits, "val": dataclasses.replace(
        data.splits["val"], labels=1 - data.splits["val"].labels)})
    again = prepared_baselines(flipped)
    assert again["test_gbm_f1"] == bars["test_gbm_f1"] and again["test_gbm_mcc"] == bars["test_gbm_mcc"]


def test_skill_is_ours_minus_the_best_baseline_and_the_verdict_says_who_won():
    bars = {"test_always_rain_f1": 0.47, "test_always_rain_mcc": 0.0, "test_persistence_f1": 0.55,
            "test_persistence_mcc": 0.41, "test_gbm_f1": 0.62, "test_gbm_mcc": 0.38}
    gains = skill("test", {"f1": 0.58, "mcc": 0.45}, bars)
    assert gains["test_skill_f1"] == pytest.approx(0.58 - 0.62) and gains["test_best_baseline_f1"] == "gbm"
    assert gains["test_skill_mcc"] == pytest.approx(0.45 - 0.41) and gains["test_best_baseline_mcc"] == "persistence"
    text = verdict("test", {"f1": 0.58, "mcc": 0.45}, bars, "the 290 test windows")
    assert "F1 0.580 does NOT beat the best baseline, gbm (0.620)" in text
    assert "MCC 0.450 beats the best baseline, persistence (0.410)" in text


def test_test_leaves_the_gbm_out_when_the_training_data_is_gone(small):
    from types import SimpleNamespace

    from rain_mlflow.evaluate import gbm_predictions, score

    data, cleaned, cfg, _ = small
    gone = cfg.with_overrides(data="/nowhere/training.csv")
    guess, note = gbm_predictions(SimpleNamespace(features=list(data.columns)), gone, cleaned, None, new_data=True)
    assert guess is None and "gbm baseline left out" in note and "/nowhere/training.csv" in note
    labels = data.splits["test"].labels
    metrics = score(labels, np.full(len(labels), 0.9), {"persistence": data.persistence[data.splits["test"].ends]})
    assert "gbm_f1" not in metrics
    assert metrics["skill_f1"] == pytest.approx(metrics["f1"] - max(metrics["always_rain_f1"],
                                                                     metrics["persistence_f1"]))
