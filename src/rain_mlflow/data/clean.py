"""Cleaning a station record (DESIGN.md "Data"): one function per rule, a report of everything done.

Rules, in order: parse dates (unparseable ones are an error, empty ones are dropped and counted); keep numeric
columns (an all-text column is ignored and reported, a column mixing numbers and text is an error); sort; drop
duplicate timestamps (first kept); a record observed at a few fixed times of day (e.g. 07, 13 and 19 h) is
recognised as such and resampled to a regular grid (`freq`, default 1D: see `_resample`); reindex to the regular
frequency (given, or the most common step), so gaps become explicit missing rows; check precipitation (not all
missing, never negative); check a given label (0/1);
drop features missing in more than `max_missing_fraction` of the TRAINING period's steps (the later periods never
decide what the data is). The cleaned record keeps observed values only: no cell is filled here. The causal fill
(last observation carried forward over at most `max_fill` steps, `data/missing.py`) happens when windows are made;
the report counts, per column, the cells it will fill and the cells still missing after it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from rain_mlflow.config import DataConfig
from rain_mlflow.data.io import EXTRA_NA_TOKENS
from rain_mlflow.data.missing import carry_forward
from rain_mlflow.data.windows import split_bounds
from rain_mlflow.errors import DataError

MIN_ROWS = 3


@dataclass(frozen=True)
class CleanResult:
    frame: pd.DataFrame          # date column, then precipitation (if any), features, label (if any)
    features: tuple[str, ...]    # model inputs, in column order
    step: pd.Timedelta           # the regular time step
    report: dict[str, Any]
    max_fill: int = 0            # resolved `max_fill`: steps a reading may be carried forward when windows are made


def clean(raw: pd.DataFrame, cfg: DataConfig, source: str) -> CleanResult:
    """Apply every rule to `raw`; raise DataError for data that cannot be used."""
    report: dict[str, Any] = {"source": source, "rows_in": int(len(raw)), "columns_in": list(raw.columns),
                              "date_col": cfg.date_col, "precip_col": None, "label_col": cfg.label_col,
                              "warnings": []}
    precip = _resolve_columns(raw, cfg)
    report["precip_col"] = precip
    frame = _parse_dates(raw, cfg.date_col, report)
    numeric = _numeric_columns(frame, cfg, precip, report)
    frame = frame[[cfg.date_col, *numeric]]
    frame = _sort_and_dedupe(frame, cfg.date_col, report)
    schedule = _schedule(frame[cfg.date_col])
    report["schedule"] = None
    if schedule:
        step = _grid_step(cfg.freq or SCHEDULE_GRID)
        frame = _resample(frame, cfg.date_col, step, precip, cfg.label_col)
        report.update(freq=_format_step(step), freq_inferred=cfg.freq is None, schedule={
            "times": schedule, "grid": _format_step(step), "grid_default": cfg.freq is None,
            "aggregation": SCHEDULE_AGGREGATION})
    else:
        step = _time_step(frame[cfg.date_col], cfg.freq, report)
    frame = _reindex(frame, cfg.date_col, step, report)
    if precip is not None:
        _check_precipitation(frame[precip], precip, cfg.date_col, frame)
    if cfg.label_col is not None:
        _check_label(frame[cfg.label_col], cfg.label_col)
    features = _choose_features(frame, cfg, precip, report)
    max_fill = cfg.in_steps(step).max_fill_steps  # also refuses a duration that is not a whole number of steps
    report.update(max_fill=max_fill, max_fill_default=cfg.max_fill is None)
    report["columns"] = {c: _column_report(frame[c], c != precip, max_fill, frame[cfg.date_col])
                         for c in dict.fromkeys([*([precip] if precip else []), *features])}
    kept = [cfg.date_col, *dict.fromkeys([*([precip] if precip else []), *features,
                                          *([cfg.label_col] if cfg.label_col else [])])]
    frame = frame[kept].reset_index(drop=True)
    report.update(features=list(features), steps=int(len(frame)),
                  start=str(frame[cfg.date_col].iloc[0]), end=str(frame[cfg.date_col].iloc[-1]))
    return CleanResult(frame=frame, features=tuple(features), step=step, report=report, max_fill=max_fill)


def _resolve_columns(raw: pd.DataFrame, cfg: DataConfig) -> str | None:
    columns = list(raw.columns)
    if cfg.date_col not in columns:
        raise DataError(f"date column {cfg.date_col!r} not found; columns are: {', '.join(columns)} "
                        "(choose one with --date-col)")
    if cfg.label_col is not None and cfg.label_col not in columns:
        raise DataError(f"label column {cfg.label_col!r} not found; columns are: {', '.join(columns)}")
    if cfg.precip_col in columns:
        return cfg.precip_col
    if cfg.label_col is not None:
        return None  # an existing label needs no precipitation rule
    raise DataError(f"precipitation column {cfg.precip_col!r} not found; columns are: {', '.join(columns)} "
                    "(choose one with --precip-col, or give an existing 0/1 label with --label-col)")


def _parse_dates(raw: pd.DataFrame, date_col: str, report: dict) -> pd.DataFrame:
    text = raw[date_col]
    parsed = pd.to_datetime(text, errors="coerce")
    bad = parsed.isna() & text.notna()
    if bad.any():  # several formats in one file: let pandas try each value on its own
        parsed = pd.to_datetime(text, errors="coerce", format="mixed")
        bad = parsed.isna() & text.notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"date column {date_col!r} has {int(bad.sum())} unparseable value(s), first "
                        f"{text.iloc[row]!r} on line {row + 2}; expected timestamps such as 2014-01-31 13:00")
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
        report["warnings"].append("timestamps carried a time zone; converted to UTC")
    frame = raw.assign(**{date_col: parsed})
    report["rows_without_date"] = int(parsed.isna().sum())
    frame = frame[parsed.notna()].copy()
    if len(frame) < MIN_ROWS:
        raise DataError(f"need at least {MIN_ROWS} rows with a date to infer the time step; got {len(frame)}")
    return frame


def _numeric_columns(frame: pd.DataFrame, cfg: DataConfig, precip: str | None, report: dict) -> list[str]:
    """Columns converted to numbers; text-only columns are ignored unless the user asked for them."""
    required = {c for c in (precip, cfg.label_col) if c} | set(cfg.features or ())
    missing = [c for c in cfg.features or () if c not in frame.columns]
    if missing:
        raise DataError(f"feature column {missing[0]!r} not found; columns are: {', '.join(frame.columns)}")
    numeric, ignored = [], {}
    for column in frame.columns:
        if column == cfg.date_col:
            continue
        values = _missing_tokens_to_nan(frame[column], cfg.na_values)
        frame[column] = values
        if not pd.api.types.is_numeric_dtype(values):
            converted = pd.to_numeric(values, errors="coerce")
            bad = converted.isna() & values.notna()
            if bad.any():
                if converted.notna().any() or column in required:
                    row = int(np.flatnonzero(bad.to_numpy())[0])
                    raise DataError(
                        f"column {column!r} is not numeric: value {values.iloc[row]!r} on line "
                        f"{frame.index[row] + 2}; if it marks a missing reading, pass --na-values "
                        f"{values.iloc[row]!r}")
                ignored[column] = "not numeric"
                continue
            frame[column] = converted
        if pd.api.types.is_bool_dtype(frame[column]):
            frame[column] = frame[column].astype(float)
        numeric.append(column)
    report["ignored_columns"] = ignored
    return numeric


def _missing_tokens_to_nan(values: pd.Series, na_values: tuple[str, ...]) -> pd.Series:
    """Station placeholders ('---', 'S/D', and the user's --na-values such as -999) become NaN."""
    tokens = {*EXTRA_NA_TOKENS, *na_values}
    if pd.api.types.is_numeric_dtype(values):
        numbers = []
        for token in tokens:
            with contextlib.suppress(ValueError):  # a word token (e.g. 'NA') is no number to mask
                numbers.append(float(token))
        return values.mask(values.isin(numbers)) if numbers else values
    text = values.astype("string").str.strip()
    return values.mask(text.isin(tokens))


def _sort_and_dedupe(frame: pd.DataFrame, date_col: str, report: dict) -> pd.DataFrame:
    frame = frame.sort_values(date_col, kind="stable")
    duplicated = frame[date_col].duplicated(keep="first")
    report["duplicates_dropped"] = int(duplicated.sum())
    return frame[~duplicated]


def _grid_step(freq: str) -> pd.Timedelta:
    try:
        return pd.Timedelta(pd.tseries.frequencies.to_offset(freq))
    except (ValueError, TypeError):
        raise DataError(f"freq must be a fixed step such as 1h, 3h or 30min; got {freq!r}") from None


def _time_step(dates: pd.Series, freq: str | None, report: dict) -> pd.Timedelta:
    if freq is not None:
        step = _grid_step(freq)
        report.update(freq=freq, freq_inferred=False)
        return step
    diffs = dates.diff().dropna()
    step = diffs.mode().iloc[0]
    report.update(freq=_format_step(step), freq_inferred=True,
                  freq_share=round(float((diffs == step).mean()), 4))
    return step


SCHEDULE_GRID = "1D"         # where a fixed-times-of-day record goes unless --freq says otherwise
SCHEDULE_MAX_TIMES = 12      # more distinct observation times than this is an hourly-ish record, not a schedule
SCHEDULE_AGGREGATION = ("each step t of the grid summarises the readings in (t - step, t]: precipitation summed "
                        "(a total stays a total; missing when a reading that usually falls there is missing), "
                        "other columns averaged, a label column 1 if any reading is 1")


def _schedule(dates: pd.Series) -> list[str] | None:
    """The fixed times of day of a record observed at a few of them with unequal spacing (07, 13, 19 h), else
    None (a regular record: hourly, 3-hourly, daily...)."""
    if len(dates) < 3 * MIN_ROWS:
        return None
    time_of_day = dates - dates.dt.normalize()
    counts = time_of_day.value_counts()
    main = counts[counts >= max(2, 0.02 * len(dates))]  # a fixed time recurs: one day of hours is no schedule
    if not 2 <= len(main) <= SCHEDULE_MAX_TIMES or main.sum() < 0.95 * len(dates):
        return None
    times = sorted(main.index)
    spacing = np.diff([*times, times[0] + pd.Timedelta(days=1)])
    if len(set(spacing)) == 1:
        return None  # evenly spaced times are a regular grid (e.g. 3-hourly)
    return [f"{int(t.total_seconds() // 3600):02d}:{int(t.total_seconds() % 3600 // 60):02d}" for t in times]


def _resample(frame: pd.DataFrame, date_col: str, step: pd.Timedelta, precip: str | None,
              label_col: str | None) -> pd.DataFrame:
    """Fixed-times readings onto a regular grid, causally: step t holds what was read in (t - step, t].

    Precipitation totals are summed; a step where a reading that usually falls in it (the most common count for
    its time of day) is absent or missing has an unknown total (never invented). Other columns are averaged.
    Steps where nothing was read although readings usually are become gaps; steps where nothing is ever read
    (a grid finer than the schedule) hold a total of 0 (the rain is in the next reading's total)."""
    indexed = frame.set_index(date_col)
    bins = indexed.resample(step, closed="right", label="right")
    out = bins.mean()
    read = bins.size()
    usual = read.groupby(read.index - read.index.normalize()).transform(lambda c: c.mode().iloc[0])
    if precip is not None:
        valid = bins[precip].count()
        out[precip] = bins[precip].sum().where(valid >= usual)
    if label_col is not None:
        out[label_col] = bins[label_col].max()
    out = out[(read > 0) | (usual == 0)]
    return out.rename_axis(date_col).reset_index()


def _format_step(step: pd.Timedelta) -> str:
    seconds = int(step.total_seconds())
    for unit, size in (("D", 86400), ("h", 3600), ("min", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _reindex(frame: pd.DataFrame, date_col: str, step: pd.Timedelta, report: dict) -> pd.DataFrame:
    """Put every row on the regular grid starting at the first timestamp; gaps become missing rows."""
    dates = frame[date_col]
    start = dates.iloc[0]
    off_grid = ((dates - start) % step) != pd.Timedelta(0)
    report["off_grid_rows_dropped"] = int(off_grid.sum())
    frame = frame[~off_grid].set_index(date_col)
    grid = pd.date_range(start, frame.index[-1], freq=step)
    present = grid.isin(frame.index)
    report["gaps"] = _runs_report(~present, grid)
    return frame.reindex(grid).rename_axis(date_col).reset_index()


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of every run of True in a boolean array."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(s), int(e - s)) for s, e in zip(edges[::2], edges[1::2])]


def _runs_report(mask: np.ndarray, dates: pd.DatetimeIndex) -> dict[str, Any]:
    runs = _runs(np.asarray(mask))
    return {
        "count": len(runs),
        "missing_steps": int(sum(length for _, length in runs)),
        "longest_steps": max((length for _, length in runs), default=0),
        "runs": [{"start": str(dates[s]), "end": str(dates[s + n - 1]), "steps": n} for s, n in runs],
    }


def _check_precipitation(values: pd.Series, name: str, date_col: str, frame: pd.DataFrame) -> None:
    if values.isna().all():
        raise DataError(f"precipitation column {name!r} has no readings (every value is missing)")
    negative = values < 0
    if negative.any():
        row = int(np.flatnonzero(negative.to_numpy())[0])
        raise DataError(
            f"precipitation column {name!r} has {int(negative.sum())} negative value(s), first "
            f"{values.iloc[row]:g} at {frame[date_col].iloc[row]}; precipitation cannot be negative "
            f"(if {values.iloc[row]:g} marks a missing reading, pass --na-values {values.iloc[row]:g})")


def _check_label(values: pd.Series, name: str) -> None:
    present = values.dropna()
    bad = present[~present.isin([0, 1])]
    if len(bad):
        raise DataError(f"label column {name!r} must hold only 0 and 1 (missing allowed); "
                        f"found {bad.iloc[0]:g} ({len(bad)} such values)")


def _choose_features(frame: pd.DataFrame, cfg: DataConfig, precip: str | None, report: dict) -> list[str]:
    candidates = list(cfg.features) if cfg.features else [
        c for c in frame.columns if c not in (cfg.date_col, cfg.label_col)]
    training = frame.iloc[:max(split_bounds(len(frame), cfg)[0], 1)]
    dropped = {}
    for column in list(candidates):
        share = float(training[column].isna().mean())
        if column != precip and share > cfg.max_missing_fraction:
            dropped[column] = (f"missing in {share:.1%} of the training period's steps (> max_missing_fraction "
                               f"{cfg.max_missing_fraction:g})")
            candidates.remove(column)
    report["dropped_features"] = dropped
    if not candidates:
        raise DataError("no usable feature column is left after cleaning "
                        f"(dropped: {', '.join(dropped) or 'none'}); check --features and --max-missing-fraction")
    return candidates


def _column_report(values: pd.Series, carried: bool, max_fill: int, dates: pd.Series) -> dict[str, Any]:
    observed = values.to_numpy(dtype=float)
    after = carry_forward(observed[:, None], max_fill if carried else 0, [True])[:, 0]
    runs = _runs(np.isnan(observed))
    return {
        "missing": int(np.isnan(observed).sum()),
        "filled": int(np.isnan(observed).sum() - np.isnan(after).sum()),
        "missing_after_fill": int(np.isnan(after).sum()),
        "longest_after_fill": max((n for _, n in _runs(np.isnan(after))), default=0),
        "missing_after": int(np.isnan(observed).sum()),  # kept for older readers: missing in the cleaned CSV
        "interpolated": 0,                                # kept for older readers: nothing is interpolated
        "missing_runs": len(runs),
        "longest_missing_run": max((n for _, n in runs), default=0),
        "runs": [{"start": str(dates.iloc[s]), "steps": n} for s, n in runs],
    }


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A short human summary of a cleaning report."""
    gaps = report["gaps"]
    lines = [
        f"{report['rows_in']} rows in -> {report['steps']} steps of {report['freq']} "
        f"({report['start']} .. {report['end']})",
        f"duplicates dropped: {report['duplicates_dropped']}, rows without date: {report['rows_without_date']}, "
        f"off-grid rows dropped: {report['off_grid_rows_dropped']}",
        f"gaps: {gaps['count']} ({gaps['missing_steps']} missing steps, longest {gaps['longest_steps']})",
    ]
    schedule = report.get("schedule")
    if schedule:
        default = " (the default; choose another with --freq)" if schedule["grid_default"] else ""
        lines.append(f"schedule: observed at fixed times {', '.join(schedule['times'])}; resampled to a regular "
                     f"{schedule['grid']} grid{default}: {schedule['aggregation']}")
    lines.append(f"columns (the causal fill carries a reading forward over at most {report['max_fill']} steps "
                 "when windows are made; precipitation is never carried):")
    for column, info in report["columns"].items():
        lines.append(f"  {column}: {info['missing']} missing (longest run {info['longest_missing_run']}), "
                     f"{info['filled']} will be filled, {info['missing_after_fill']} stay missing "
                     f"(longest {info['longest_after_fill']})")
    for column, why in report["dropped_features"].items():
        lines.append(f"  dropped {column}: {why}")
    for column, why in report["ignored_columns"].items():
        lines.append(f"  ignored {column}: {why}")
    lines += [f"warning: {w}" for w in report["warnings"]]
    return lines
