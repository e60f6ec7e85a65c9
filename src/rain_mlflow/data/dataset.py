"""From a cleaned record to training windows: label, chronological split with purge, train-only scaler, index.

A window is named by its END step t (inclusive): its input is steps [t - L + 1, t] of the scaled series and its
label says whether rain falls in (t, t + horizon]. Windows are never materialised: a split is just the array of
its end steps, and a batch is gathered from the one [T, C] series when it is needed (`gather`), so 11 years of
hourly data at L = 2880 cost a few megabytes, not the gigabytes that [n_windows, L, C] would.

Split: the timeline is cut at `train_end` and `val_end` (fractions of the steps). A training window's label must
end before validation time starts (t + horizon < train_end), the same for validation vs test: that purge of
`horizon` steps is what keeps a training label from seeing validation weather. Inputs may reach back across a
boundary (they are the past, as in the official code). The scaler is fitted on the training steps only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.preprocessing import StandardScaler

from rain_mlflow.config import RunConfig
from rain_mlflow.data.clean import CleanResult
from rain_mlflow.errors import ConfigError, DataError

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    name: str
    ends: np.ndarray      # int64 end step of every usable window, ascending
    labels: np.ndarray    # int64 0/1 per window
    dropped: int          # windows in this split's range excluded because they touch a missing value
    first_step: int       # the split's time range [first_step, last_step) on the series
    last_step: int

    @property
    def size(self) -> int:
        return int(len(self.ends))

    @property
    def rain(self) -> int:
        return int(self.labels.sum())

    @property
    def no_rain(self) -> int:
        return self.size - self.rain

    @property
    def majority_share(self) -> float:
        return max(self.rain, self.no_rain) / self.size if self.size else float("nan")


@dataclass(frozen=True)
class PreparedData:
    series: np.ndarray                  # float32 [T, C], scaled with training statistics; NaN where missing
    dates: pd.DatetimeIndex
    features: tuple[str, ...]
    window: int                         # effective seq_len (a multiple of the token length)
    horizon: int
    splits: dict[str, Split]
    scaler_mean: np.ndarray
    scaler_scale: np.ndarray
    notes: list[str] = field(default_factory=list)

    @property
    def n_vars(self) -> int:
        return int(self.series.shape[1])

    def gather(self, ends: np.ndarray) -> np.ndarray:
        """Windows ending at `ends` as [len(ends), window, C] (numpy; the trainer does the same on the device)."""
        offsets = np.arange(-self.window + 1, 1)
        return self.series[ends[:, None] + offsets[None, :]]

    def class_counts(self) -> dict[str, int | float]:
        """Flat per-split counts for logging: windows_<split>, rain_<split>, no_rain_<split>, majority share."""
        out: dict[str, int | float] = {}
        for name, split in self.splits.items():
            out.update({f"windows_{name}": split.size, f"rain_{name}": split.rain,
                        f"no_rain_{name}": split.no_rain, f"dropped_windows_{name}": split.dropped,
                        f"majority_share_{name}": round(split.majority_share, 4)})
        return out


def rain_labels(precip: np.ndarray, horizon: int, threshold: float) -> np.ndarray:
    """label[t] = 1.0 if precip over (t, t + horizon] sums above threshold, NaN if any of it is missing or beyond."""
    n = len(precip)
    missing = np.isnan(precip)
    total = np.concatenate([[0.0], np.cumsum(np.where(missing, 0.0, precip))])
    holes = np.concatenate([[0], np.cumsum(missing)])
    labels = np.full(n, np.nan)
    t = np.arange(max(n - horizon, 0))
    future = total[t + horizon + 1] - total[t + 1]
    known = (holes[t + horizon + 1] - holes[t + 1]) == 0
    labels[t] = np.where(known, (future > threshold).astype(float), np.nan)
    return labels


def complete_windows(series: np.ndarray, window: int) -> np.ndarray:
    """ok[t] is True when steps [t - window + 1, t] are all present (False for t < window - 1)."""
    bad = np.concatenate([[0], np.cumsum(np.isnan(series).any(axis=1))])
    ok = np.zeros(len(series), dtype=bool)
    t = np.arange(window - 1, len(series))
    ok[t] = (bad[t + 1] - bad[t + 1 - window]) == 0
    return ok


def split_bounds(n_steps: int, cfg: RunConfig) -> tuple[int, int]:
    train_end = int(round(n_steps * cfg.data.train_fraction))
    val_end = train_end + int(round(n_steps * cfg.data.val_fraction))
    return train_end, min(val_end, n_steps)


def effective_window(cfg: RunConfig, notes: list[str]) -> int:
    window = cfg.effective_seq_len
    if window != cfg.data.seq_len:
        note = (f"seq_len {cfg.data.seq_len} is not a multiple of input_token_len {cfg.model.input_token_len}: "
                f"using the most recent {window} steps of each window (the oldest {cfg.data.seq_len - window} "
                "are dropped)")
        notes.append(note)
        log.warning(note)
    return window


def window_labels(cleaned: CleanResult, cfg: RunConfig) -> np.ndarray:
    """The label of the window ending at each step (float, NaN where unknown)."""
    if cfg.data.label_col is not None:
        return cleaned.frame[cfg.data.label_col].to_numpy(dtype=np.float64)
    precip = cleaned.frame[cleaned.report["precip_col"]].to_numpy(dtype=np.float64)
    return rain_labels(precip, cfg.data.horizon, cfg.data.rain_threshold)


def candidate_ends(first: int, last: int, window: int, cfg: RunConfig) -> np.ndarray:
    """End steps of windows whose input starts at step >= 0, ending in [first, last - horizon), on the stride."""
    ends = np.arange(max(first, window - 1), max(last - cfg.data.horizon, 0))
    return ends[(ends - (window - 1)) % cfg.data.window_stride == 0]


def prepare(cleaned: CleanResult, cfg: RunConfig) -> PreparedData:
    """Label, split, scale and index a cleaned record for `cfg`; raise for settings the data cannot satisfy."""
    notes: list[str] = []
    frame, d = cleaned.frame, cfg.data
    window = effective_window(cfg, notes)
    raw = frame[list(cleaned.features)].to_numpy(dtype=np.float64)
    labels = window_labels(cleaned, cfg)
    n = len(frame)
    train_end, val_end = split_bounds(n, cfg)
    if window + d.horizon > train_end:
        raise ConfigError(
            f"seq_len {d.seq_len} (effective {window}) is longer than the training split allows: the training "
            f"split has {train_end} steps and a window needs {window} input steps plus horizon {d.horizon}; "
            "use a shorter seq_len, a larger train_fraction or more data")
    scaler = StandardScaler().fit(raw[:train_end])  # NaN are ignored in fit and kept in transform
    series = scaler.transform(raw).astype(np.float32)
    usable = complete_windows(series, window) & ~np.isnan(labels)
    ranges = {"train": (0, train_end), "val": (train_end, val_end), "test": (val_end, n)}
    splits = {}
    for name, (first, last) in ranges.items():
        candidates = candidate_ends(first, last, window, cfg)
        ends = candidates[usable[candidates]].astype(np.int64)
        if len(ends) == 0:
            raise DataError(
                f"the {name} split has no usable window ({len(candidates)} candidate windows, all touching a "
                f"missing value or out of range); check the data's gaps, seq_len {d.seq_len} and the split fractions")
        splits[name] = Split(name, ends, labels[ends].astype(np.int64), int(len(candidates) - len(ends)),
                             first, last)
    return PreparedData(series=series, dates=pd.DatetimeIndex(frame[d.date_col]), features=cleaned.features,
                        window=window, horizon=d.horizon, splits=splits, scaler_mean=scaler.mean_,
                        scaler_scale=scaler.scale_, notes=notes)


@dataclass(frozen=True)
class EvalWindows:
    """Windows to evaluate a trained model on, in the data's own units (the served model scales them itself)."""

    raw: np.ndarray                     # float32 [T, C]
    ends: np.ndarray                    # int64 end step per window
    labels: np.ndarray                  # int64 0/1
    rained_last_step: np.ndarray | None  # precipitation > 0 at each window's last step (persistence baseline)
    end_dates: pd.DatetimeIndex
    dropped: int
    scope: str                          # "test split" or "all windows"

    def gather(self, ends: np.ndarray, window: int) -> np.ndarray:
        return self.raw[ends[:, None] + np.arange(-window + 1, 1)[None, :]]


def evaluation_windows(cleaned: CleanResult, cfg: RunConfig, window: int, test_split_only: bool) -> EvalWindows:
    """Every usable window of a record, or only those of its test split (the same windows training scored)."""
    frame = cleaned.frame
    raw = frame[list(cleaned.features)].to_numpy(dtype=np.float32)
    labels = window_labels(cleaned, cfg)
    n = len(frame)
    first = split_bounds(n, cfg)[1] if test_split_only else 0
    candidates = candidate_ends(first, n, window, cfg)
    usable = complete_windows(raw, window) & ~np.isnan(labels)
    ends = candidates[usable[candidates]].astype(np.int64)
    if len(ends) == 0:
        raise DataError(f"no usable window to evaluate ({len(candidates)} candidates, all touching a missing value "
                        f"or shorter than the model's window of {window} steps)")
    precip_col = cleaned.report.get("precip_col")
    rained = frame[precip_col].to_numpy()[ends] > 0 if precip_col else None
    return EvalWindows(raw=raw, ends=ends, labels=labels[ends].astype(np.int64), rained_last_step=rained,
                       end_dates=pd.DatetimeIndex(frame[cfg.data.date_col].to_numpy()[ends]),
                       dropped=int(len(candidates) - len(ends)),
                       scope="test split" if test_split_only else "all windows")
