"""The forecasts a user would pick instead of ours, scored on the same windows (DESIGN.md "What a training run
records").

- always-rain: predict rain every time (F1 = 2p / (1 + p) for a rain share p; MCC 0);
- majority class: the more frequent class of the windows scored (reported as accuracy);
- persistence: rain in the next horizon if it rained in the last one (`data.windows.persistence`);
- gbm: scikit-learn's `HistGradientBoostingClassifier` on summaries of the same model inputs at each window's
  end (lagged values, tendencies, window means and rolling rain sums), fitted on the training windows only. It is
  what a careful user would try first on tabular weather data; beating it is the point of a sequence model.

`skill` = ours minus the best baseline, per metric: positive means the model adds something.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

from rain_mlflow.train.metrics import split_metrics

LAGS = (0, 1, 2, 3, 6, 12, 24)      # steps back: the recent values of every input variable
TENDENCIES = (1, 3, 6, 12, 24)      # x[t] - x[t - k]: falling pressure, rising humidity...
RAIN_SUMS = (3, 6, 12, 24)          # steps summed of the precipitation input (plus the whole window)
SKILL_BASELINES = ("always_rain", "persistence", "gbm")
GBM_SETTINGS = dict(max_iter=200, learning_rate=0.1, max_leaf_nodes=31, early_stopping=False, random_state=0)
# One OpenMP thread: a few seconds for a year of hourly windows, and no collapse when the cores are busy (with two
# threads on two busy cores one fit took 13x longer than with one).
GBM_THREADS = 1


def gbm_features(series: np.ndarray, ends: np.ndarray, window: int, rain_index: int | None) -> np.ndarray:
    """[len(ends), F] summaries of the model inputs `series` [T, V] over each window ending at `ends`."""
    values = series.astype(np.float64)
    total = np.concatenate([np.zeros((1, values.shape[1])), np.cumsum(values, axis=0)])

    def window_sum(k: int) -> np.ndarray:  # sum over (t - k, t] for every variable
        return total[ends + 1] - total[ends + 1 - k]

    parts = [values[ends - lag] for lag in LAGS if lag < window]
    parts += [values[ends] - values[ends - k] for k in TENDENCIES if k < window]
    sums = [window_sum(window) / window]
    if rain_index is not None:
        sums += [window_sum(k)[:, rain_index:rain_index + 1] for k in RAIN_SUMS if k <= window]
    # sums from a running total differ from direct sums in the last bits: round them to the inputs' precision
    return np.concatenate([*parts, *(np.round(x, 6) for x in sums)], axis=1)


class GbmBaseline:
    """The gradient-boosting baseline: fitted once on the training windows, then scores any windows."""

    def __init__(self, window: int, rain_index: int | None):
        self.window, self.rain_index = window, rain_index
        self.model = HistGradientBoostingClassifier(**GBM_SETTINGS)

    def fit(self, series: np.ndarray, ends: np.ndarray, labels: np.ndarray) -> GbmBaseline:
        if len(np.unique(labels)) < 2:  # a single class: nothing to learn, predict it
            self.constant: int | None = int(labels[0])
            return self
        self.constant = None
        with threadpool_limits(GBM_THREADS, user_api="openmp"):
            self.model.fit(gbm_features(series, ends, self.window, self.rain_index), labels)
        return self

    def predict(self, series: np.ndarray, ends: np.ndarray) -> np.ndarray:
        if self.constant is not None:
            return np.full(len(ends), self.constant, dtype=np.int64)
        with threadpool_limits(GBM_THREADS, user_api="openmp"):
            return self.model.predict(gbm_features(series, ends, self.window, self.rain_index)).astype(np.int64)


def baseline_metrics(prefix: str, labels: np.ndarray, predictions: dict[str, np.ndarray]) -> dict[str, float]:
    """`<prefix>_<name>_f1` / `_mcc` / `_accuracy` for always-rain and each given forecast, plus
    `<prefix>_majority_accuracy` (the share of the more frequent class among these windows)."""
    rain_share = float(labels.mean())
    out = {f"{prefix}_majority_accuracy": max(rain_share, 1 - rain_share)}
    for name, guess in {"always_rain": np.ones_like(labels), **predictions}.items():
        m = split_metrics("b", labels, guess, float("nan"))
        out.update({f"{prefix}_{name}_f1": m["b_f1"], f"{prefix}_{name}_mcc": m["b_mcc"],
                    f"{prefix}_{name}_accuracy": m["b_accuracy"]})
    return out


def skill(prefix: str, ours: dict[str, float], baselines: dict[str, float]) -> dict[str, Any]:
    """`<prefix>_skill_f1` / `_mcc` = ours minus the best baseline (and which baseline that was)."""
    out: dict[str, Any] = {}
    for metric in ("f1", "mcc"):
        scores = {b: baselines[f"{prefix}_{b}_{metric}"] for b in SKILL_BASELINES
                  if f"{prefix}_{b}_{metric}" in baselines}
        best = max(scores, key=scores.get)
        out[f"{prefix}_skill_{metric}"] = ours[metric] - scores[best]
        out[f"{prefix}_best_baseline_{metric}"] = best
    return out


def verdict(prefix: str, ours: dict[str, float], baselines: dict[str, float], scope: str) -> str:
    """One plain sentence: does the model beat the best baseline on F1 and MCC, and if not, which one wins."""
    s = skill(prefix, ours, baselines)
    parts = []
    for metric in ("f1", "mcc"):
        best = s[f"{prefix}_best_baseline_{metric}"]
        value = baselines[f"{prefix}_{best}_{metric}"]
        sign = "beats" if s[f"{prefix}_skill_{metric}"] > 0 else "does NOT beat"
        parts.append(f"{metric.upper()} {ours[metric]:.3f} {sign} the best baseline, {best.replace('_', '-')} "
                     f"({value:.3f})")
    return f"on {scope}: " + "; ".join(parts)


def prepared_baselines(data: Any) -> dict[str, float]:
    """Every baseline on the validation and test windows of a `PreparedData`; the gbm is fitted on its training
    windows (the same ones the model trains on)."""
    train = data.splits["train"]
    gbm = GbmBaseline(data.window, data.rain_index).fit(data.series, train.ends, train.labels)
    out: dict[str, float] = {}
    for name in ("val", "test"):
        split = data.splits[name]
        out.update(baseline_metrics(name, split.labels, {"persistence": data.persistence[split.ends],
                                                         "gbm": gbm.predict(data.series, split.ends)}))
    return out
