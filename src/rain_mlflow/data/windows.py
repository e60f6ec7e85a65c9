"""The window index: end steps, labels, the split of the timeline, and the one gather that turns ends into windows.

A window is named by its END step t (inclusive): its input is steps [t - L + 1, t] and its label says whether rain
falls in (t, t + horizon]. Everything here is a pure function of arrays, shared by `prepare` (training), the clean
report's window accounting and `test`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from rain_mlflow.config import DataConfig


def gather(series: Any, ends: Any, window: int) -> Any:
    """Windows ending at `ends` as [len(ends), window, C]; numpy in, numpy out; torch in, torch out (same device)."""
    offsets: Any
    if isinstance(series, np.ndarray):
        offsets = np.arange(1 - window, 1)
    else:
        import torch  # only torch input gets here; `clean` (numpy only) starts without torch

        offsets = torch.arange(1 - window, 1, device=series.device)
    return series[ends[:, None] + offsets[None, :]]


def split_bounds(n_steps: int, cfg: DataConfig) -> tuple[int, int]:
    """(train_end, val_end): the training period is steps [0, train_end), validation [train_end, val_end)."""
    train_end = int(round(n_steps * cfg.train_fraction))
    val_end = train_end + int(round(n_steps * cfg.val_fraction))
    return train_end, min(val_end, n_steps)


def candidate_ends(first: int, last: int, window: int, horizon: int, stride: int = 1) -> np.ndarray:
    """End steps of windows whose input starts at step >= 0 and whose label ends before `last`, on the stride."""
    ends = np.arange(max(first, window - 1), max(last - horizon, 0))
    return ends[(ends - (window - 1)) % stride == 0].astype(np.int64)


def _window_sums(values: np.ndarray, length: int) -> np.ndarray:
    """sums[t] = values[t - length + 1 .. t] summed (the first length - 1 entries sum what exists)."""
    total = np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])
    t = np.arange(len(values))
    return total[t + 1] - total[np.maximum(t + 1 - length, 0)]


def _trailing_totals(values: np.ndarray, length: int) -> np.ndarray:
    """totals[t] = values[t - length + 1 .. t] summed window by window (the first length - 1 entries sum what
    exists). Not a difference of running sums: over years of record those carry rounding errors that flip a total
    lying exactly on the rain threshold (0.1 mm readings are common)."""
    padded = np.concatenate([np.zeros(length - 1), values.astype(np.float64)])
    return np.lib.stride_tricks.sliding_window_view(padded, length).sum(axis=1)


def rain_labels(precip: np.ndarray, horizon: int, threshold: float) -> np.ndarray:
    """label[t] = 1.0 if precip over (t, t + horizon] sums above threshold, NaN if any of it is missing or beyond."""
    n = len(precip)
    missing = np.isnan(precip)
    totals = _trailing_totals(np.where(missing, 0.0, precip), horizon)    # totals[u]: (u - horizon, u]
    holes = np.concatenate([[0], np.cumsum(missing)])
    labels = np.full(n, np.nan)
    t = np.arange(max(n - horizon, 0))
    future = totals[t + horizon]
    known = (holes[t + horizon + 1] - holes[t + 1]) == 0
    labels[t] = np.where(known, (future > threshold).astype(float), np.nan)
    return labels


def persistence(precip: np.ndarray | None, labels: np.ndarray, horizon: int, threshold: float) -> np.ndarray:
    """The persistence forecast at each step: "rain in the next horizon if it rained in the last one".

    With precipitation: its sum over (t - horizon, t] (missing steps count as dry) > threshold. With only an
    existing label: the label of the window that ended `horizon` steps ago, whose answer is known by t.
    """
    if precip is not None:
        return (_trailing_totals(np.nan_to_num(precip, nan=0.0), horizon) > threshold).astype(np.int64)
    earlier = np.zeros(len(labels))
    earlier[horizon:] = np.nan_to_num(labels[:-horizon], nan=0.0)
    return earlier.astype(np.int64)


def touching(bad_steps: npt.ArrayLike, window: int) -> np.ndarray:
    """out[t] is True when the window ending at t contains a True step (or starts before step 0)."""
    counts = _window_sums(np.asarray(bad_steps, dtype=np.float64), window)
    out = counts > 0
    out[: window - 1] = True
    return out
