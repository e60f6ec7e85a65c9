"""From a cleaned record to training windows: label, chronological split with purge, train-only scaler, index.

A window is named by its END step t (inclusive): its input is steps [t - L + 1, t] of the model's input series
and its label says whether rain falls in (t, t + horizon]. Windows are never materialised: a split is just the
array of its end steps, and a batch is gathered from the one [T, C] series when it is needed
(`data.windows.gather`), so 11 years of hourly data at L = 2880 cost a few megabytes, not the gigabytes that
[n_windows, L, C] would.

Split: the timeline is cut at `train_end` and `val_end` (fractions of the steps). A training window's label must
end before validation time starts (t + horizon < train_end), the same for validation vs test: that purge of
`horizon` steps is what keeps a training label from seeing validation weather. Inputs may reach back across a
boundary (they are the past, as in the official code). Everything that decides the data is computed on the
training period only: the scaler (whose mean is also the fill value of `missing=mask`), which indicator variables
exist, and (in `clean`) which features are dropped. Training windows follow `window_stride`; validation and test
use every window. Missing inputs: `data/missing.py`; window accounting: `data/accounting.py`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.preprocessing import StandardScaler

from rain_mlflow.config import DataConfig, RunConfig
from rain_mlflow.config.durations import data_kind, describe_span, steps_text
from rain_mlflow.data import accounting
from rain_mlflow.data.clean import CleanResult
from rain_mlflow.data.missing import MissingPolicy, model_inputs, still_missing
from rain_mlflow.data.windows import candidate_ends, gather, persistence, rain_labels, split_bounds, touching
from rain_mlflow.errors import ConfigError, DataError

log = logging.getLogger(__name__)
SPLITS = accounting.SPLITS


@dataclass(frozen=True)
class Split:
    name: str
    ends: np.ndarray      # int64 end step of every usable window, ascending
    labels: np.ndarray    # int64 0/1 per window
    dropped: int          # candidate windows of this split excluded (unknown label, or missing input with exclude)
    first_step: int       # the split's time range [first_step, last_step) on the series
    last_step: int
    candidates: int = 0   # windows the split's range offers (training: on the window_stride)

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
    series: np.ndarray                  # float32 [T, V] model inputs: scaled columns (0 where missing), indicators
    raw: np.ndarray                     # float32 [T, C] the data columns in their own units, NaN where missing
    dates: pd.DatetimeIndex
    features: tuple[str, ...]           # the model's variables: data columns, then indicator variables
    window: int                         # effective seq_len (a multiple of the token length)
    horizon: int
    splits: dict[str, Split]
    scaler_mean: np.ndarray             # per data column, training period only (also the fill value of `mask`)
    scaler_scale: np.ndarray
    policy: MissingPolicy | None = None
    accounting: dict[str, Any] = field(default_factory=dict)
    persistence: np.ndarray | None = None  # int64 per step: the persistence forecast (baselines)
    notes: list[str] = field(default_factory=list)

    @property
    def n_vars(self) -> int:
        return int(self.series.shape[1])

    @property
    def columns(self) -> tuple[str, ...]:
        """The data columns (what the served model takes), without the indicator variables."""
        return self.policy.columns if self.policy else self.features

    @property
    def rain_index(self) -> int | None:
        """Index of the precipitation input (the one column never carried forward), if it is an input."""
        if self.policy is None or all(self.policy.carried):
            return None
        return self.policy.carried.index(False)

    def gather(self, ends: np.ndarray) -> np.ndarray:
        """Model inputs of the windows ending at `ends`, [len(ends), window, V] (the trainer does it on the device)."""
        return gather(self.series, ends, self.window)

    def class_counts(self) -> dict[str, int | float]:
        """Flat per-split counts for logging: windows_<split>, rain_<split>, no_rain_<split>, majority share,
        plus the window accounting (candidates and drops by reason per split, windows each feature's gaps touch)."""
        out: dict[str, int | float] = {}
        for name, split in self.splits.items():
            out.update({f"windows_{name}": split.size, f"rain_{name}": split.rain,
                        f"no_rain_{name}": split.no_rain, f"dropped_windows_{name}": split.dropped,
                        f"majority_share_{name}": round(split.majority_share, 4)})
        if self.accounting:
            out.update(accounting.flat(self.accounting))
        return out


def effective_window(cfg: RunConfig, notes: list[str]) -> int:
    window = cfg.effective_seq_len
    if window != cfg.data.seq_len:
        note = (f"seq_len {cfg.data.seq_len} is not a multiple of input_token_len {cfg.model.input_token_len}: "
                f"using the most recent {window} steps of each window (the oldest {cfg.data.seq_len_steps - window} "
                "are dropped)")
        notes.append(note)
        log.warning(note)
    return window


def resolve(cfg: RunConfig, cleaned: CleanResult) -> RunConfig:
    """The config in steps of the data's time step: durations converted (a duration that is not a whole number of
    steps is a ConfigError naming both), max_fill's default filled in. A config already in steps is unchanged."""
    return cfg.in_steps(cleaned.step)


def check_degenerate(splits: dict[str, Split], cfg: RunConfig, step: pd.Timedelta, notes: list[str]) -> None:
    """Refuse a task no model can learn from: a split with too few windows, or almost only one class."""
    d = cfg.data
    problems = []
    for name, split in splits.items():
        rain = split.rain / split.size
        if split.size < d.min_windows:
            problems.append(f"the {name} split has {split.size} usable windows (min_windows {d.min_windows})")
        elif min(rain, 1 - rain) < d.min_class_share:
            problems.append(f"the {name} split is {rain:.1%} rain and {1 - rain:.1%} no rain "
                            f"(min_class_share {d.min_class_share:.1%})")
    if not problems:
        return
    shares = ", ".join(f"{name} {s.rain / s.size:.1%} rain of {s.size} windows" for name, s in splits.items())
    fractions = f"split fractions {d.train_fraction:g}/{d.val_fraction:g}/{d.test_fraction:g}"
    if d.label_col is not None:
        decided = f"the label column {d.label_col!r} and the {fractions}"
    else:
        decided = (f"horizon {steps_text(d.horizon_steps)} (= {describe_span(d.horizon_steps * step)} of "
                   f"{data_kind(step)}),"
                   f" rain_threshold {d.rain_threshold:g}, {fractions}")
    message = (f"degenerate task: {'; '.join(problems)}; class shares: {shares}; decided by {decided}")
    if d.allow_degenerate:
        notes.append(message + " (allow_degenerate: training anyway)")
        log.warning(notes[-1])
        return
    raise DataError(message + "; change these (e.g. --horizon 24h for rain in the next 24 hours), use more data, "
                    "or pass --allow-degenerate to train anyway")


def window_labels(cleaned: CleanResult, d: DataConfig) -> np.ndarray:
    """The label of the window ending at each step (float, NaN where unknown)."""
    if d.label_col is not None:
        return cleaned.frame[d.label_col].to_numpy(dtype=np.float64)
    precip = cleaned.frame[cleaned.report["precip_col"]].to_numpy(dtype=np.float64)
    return rain_labels(precip, d.horizon_steps, d.rain_threshold)


def window_accounting(cleaned: CleanResult, d: DataConfig) -> dict[str, Any]:
    """The accounting of `clean`: windows of `seq_len` steps as given (the model may trim it to whole tokens)."""
    d = d.in_steps(cleaned.step)
    columns = tuple(cleaned.features)
    carried = [c != cleaned.report.get("precip_col") for c in columns]
    missing = still_missing(data_array(cleaned.frame, columns), cleaned.max_fill, carried)
    labels = window_labels(cleaned, d)
    return accounting.select_windows(missing, labels, columns, d, d.seq_len_steps, cleaned.max_fill)[1]


def precipitation(cleaned: CleanResult) -> np.ndarray | None:
    column = cleaned.report.get("precip_col")
    return cleaned.frame[column].to_numpy(dtype=np.float64) if column else None


def persistence_forecast(cleaned: CleanResult, d: DataConfig, labels: np.ndarray) -> np.ndarray:
    return persistence(precipitation(cleaned), labels, d.horizon_steps, d.rain_threshold)


def data_array(frame: pd.DataFrame, columns: tuple[str, ...]) -> np.ndarray:
    """The data columns as float32 [T, C], NaN where missing, copied a column at a time (never a float64 table)."""
    raw = np.empty((len(frame), len(columns)), dtype=np.float32)
    for i, column in enumerate(columns):
        raw[:, i] = frame[column].to_numpy()
    return raw


def fit_scaler(frame: pd.DataFrame, columns: tuple[str, ...], train_end: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) per data column over the training steps, NaN ignored: sklearn's StandardScaler fitted on each
    float64 column of the frame in turn (the same numbers as one fit on the table, with a column's temporaries)."""
    fits = [StandardScaler().fit(frame[c].to_numpy()[:train_end, None]) for c in columns]
    return np.concatenate([f.mean_ for f in fits]), np.concatenate([f.scale_ for f in fits])


def prepare(cleaned: CleanResult, cfg: RunConfig) -> PreparedData:
    """Label, split, scale, fill and index a cleaned record for `cfg`; raise for settings the data cannot satisfy.

    Memory: the largest arrays are the float32 inputs and raw columns that are kept; everything else is made a
    column at a time or before them (`bench/data_memory.py` measures the peak on 11 years of hourly data)."""
    notes: list[str] = []
    cfg = resolve(cfg, cleaned)
    frame, d = cleaned.frame, cfg.data
    window = effective_window(cfg, notes)
    columns = tuple(cleaned.features)
    train_end, val_end = split_bounds(len(frame), d)
    if window + d.horizon_steps > train_end:
        raise ConfigError(
            f"seq_len {d.seq_len} (effective {window}) is longer than the training split allows: the training "
            f"split has {train_end} steps and a window needs {window} input steps plus horizon {d.horizon}; "
            "use a shorter seq_len, a larger train_fraction or more data")
    scaler_mean, scaler_scale = fit_scaler(frame, columns, train_end)
    labels = window_labels(cleaned, d)
    forecast = persistence_forecast(cleaned, d, labels)
    raw = data_array(frame, columns)
    precip_col = cleaned.report.get("precip_col")
    carried = [c != precip_col for c in columns]
    policy = MissingPolicy.build(columns, d, cleaned.max_fill, precip_col,
                                 still_missing(raw[:train_end], cleaned.max_fill, carried))
    series, missing = model_inputs(raw, scaler_mean, scaler_scale, policy)
    ends, report = accounting.select_windows(missing, labels, columns, d, window, cleaned.max_fill)
    del missing
    ranges = {"train": (0, train_end), "val": (train_end, val_end), "test": (val_end, len(frame))}
    splits = {}
    for name, (first, last) in ranges.items():
        counts = report["splits"][name]
        if len(ends[name]) == 0:
            raise DataError(
                f"the {name} split has no usable window ({counts['candidates']} candidate windows: "
                f"{counts['label_unknown']} with an unknown label, {counts['input_missing']} touching an input "
                f"still missing after the fill); check the data's gaps (rain-mlflow clean shows them), "
                f"seq_len {d.seq_len} and the split fractions" +
                ("; --missing mask keeps windows with missing inputs" if d.missing == "exclude" else ""))
        splits[name] = Split(name, ends[name], labels[ends[name]].astype(np.int64),
                             counts["candidates"] - counts["kept"], first, last, counts["candidates"])
    check_degenerate(splits, cfg, cleaned.step, notes)
    return PreparedData(series=series, raw=raw, dates=pd.DatetimeIndex(frame[d.date_col]),
                        features=policy.variables, window=window, horizon=d.horizon_steps, splits=splits,
                        scaler_mean=scaler_mean, scaler_scale=scaler_scale, policy=policy, accounting=report,
                        persistence=forecast, notes=notes)


@dataclass(frozen=True)
class EvalWindows:
    """Windows to evaluate a trained model on, in the data's own units (the served model fills and scales them)."""

    raw: np.ndarray                     # float32 [T, C]
    ends: np.ndarray                    # int64 end step per window
    labels: np.ndarray                  # int64 0/1
    persistence: np.ndarray             # int64 0/1 per window: rain in the last horizon (a baseline)
    end_dates: pd.DatetimeIndex
    candidates: int
    dropped: int
    scope: str                          # "test split" or "all windows"

    def gather(self, ends: np.ndarray, window: int) -> np.ndarray:
        return gather(self.raw, ends, window)


def evaluation_windows(cleaned: CleanResult, cfg: RunConfig, policy: MissingPolicy, window: int,
                       test_split_only: bool) -> EvalWindows:
    """Every usable window of a record, or only those of its test split (the same windows training scored)."""
    cfg = resolve(cfg, cleaned)
    frame, d = cleaned.frame, cfg.data
    raw = data_array(frame, policy.columns)
    labels = window_labels(cleaned, d)
    n = len(frame)
    first = split_bounds(n, d)[1] if test_split_only else 0
    candidates = candidate_ends(first, n, window, d.horizon_steps)
    usable = ~np.isnan(labels)
    if policy.mode == "exclude":
        usable &= ~touching(still_missing(raw, policy.max_fill, policy.carried).any(axis=1), window)
    ends = candidates[usable[candidates]]
    if len(ends) == 0:
        raise DataError(f"no usable window to evaluate ({len(candidates)} candidates, all with an unknown label"
                        f"{' or touching a missing input' if policy.mode == 'exclude' else ''}, or the record is "
                        f"shorter than the model's window of {window} steps)")
    return EvalWindows(raw=raw, ends=ends, labels=labels[ends].astype(np.int64),
                       persistence=persistence_forecast(cleaned, d, labels)[ends],
                       end_dates=pd.DatetimeIndex(frame[d.date_col].to_numpy()[ends]),
                       candidates=int(len(candidates)), dropped=int(len(candidates) - len(ends)),
                       scope="test split" if test_split_only else "all windows")
