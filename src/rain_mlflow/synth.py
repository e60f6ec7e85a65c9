"""A deterministic synthetic station record shaped like the user's Peruvian data.

Columns: `date`, `precipitation` (mm per step), `temperature` (degC), `relative_humidity` (%),
`pressure` (hPa), `wind_speed` (m/s). What drives the rain:
- a wet season (peak in late January, as in the southern Peruvian Andes) and a dry season;
- a slow ENSO-like modulation of a few years that makes some wet seasons wetter than others;
- synoptic weather waves (a few days long) that raise moisture; pressure falls and wind rises about half a day
  *before* the moisture arrives, so the recent past carries real but noisy information about the next day;
- an afternoon convection peak in the daily cycle.
Rain falls when a noisy moisture index crosses a threshold, in amounts drawn from a gamma distribution. Then the
record is damaged the way station data are: missing timestamps (gaps), NaN runs in sensors, duplicated rows.

`gaps="realistic"` reproduces instead the airport record real users bring (one year of it: 3 % of the pressure
readings missing in short scattered runs of 1-9 h, 14 gaps of 1-5 missing hours, a `wind_gust` column that is
empty 83 % of the time, since gusts are only reported when it is gusty) in a drier climate: rain within the next
24 h in about 30 % of the hours. The default record (`gaps="default"`) is unchanged by this option.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from rain_mlflow.config.choices import SYNTH_GAPS as GAPS
from rain_mlflow.data.io import write_csv_atomic
from rain_mlflow.errors import ConfigError

START = "2014-01-01"
COLUMNS = ("date", "precipitation", "temperature", "relative_humidity", "pressure", "wind_speed")
RAIN_LEVEL = {"default": 0.95, "realistic": 2.1}  # moisture level above which it rains (2.1: ~30 % rainy days)
# The airport record, per year of hourly data: pressure gaps (share of readings, run lengths 1-9 h mostly short),
# whole hours lost, and how often a gust is reported.
PRESSURE_MISSING_SHARE = 0.03
PRESSURE_RUN_WEIGHTS = (70, 10, 5, 4, 3, 2, 2, 2, 2)   # relative frequency of runs of 1, 2, ..., 9 hours
ROW_GAPS_PER_YEAR, ROW_GAP_HOURS = 14, (1, 5)
GUST_REPORTED_SHARE = 0.17


def _ar1(rng: np.random.Generator, n: int, tau_steps: float, scale: float) -> np.ndarray:
    """A stationary AR(1) series with correlation time `tau_steps` and standard deviation `scale`."""
    phi = float(np.exp(-1.0 / max(tau_steps, 1e-6)))
    noise = rng.standard_normal(n) * scale * np.sqrt(1.0 - phi * phi)
    return lfilter([1.0], [1.0, -phi], noise)


def synthetic_frame(years: float = 11.0, freq: str = "1h", seed: int = 0, gaps: str = "default") -> pd.DataFrame:
    """The synthetic record as a DataFrame (`date` column first), damaged with gaps and NaN runs."""
    if gaps not in GAPS:
        raise ConfigError(f"gaps must be one of {', '.join(GAPS)}; got {gaps!r}")
    if not math.isfinite(years) or years <= 0:
        raise ConfigError(f"years must be a finite number > 0; got {years}")
    try:
        step = pd.Timedelta(pd.tseries.frequencies.to_offset(freq))
    except (ValueError, TypeError):
        raise ConfigError(f"freq must be a pandas frequency such as 1h, 3h or 30min; got {freq!r}") from None
    hours = step / pd.Timedelta(hours=1)
    if not 0 < hours <= 24:
        raise ConfigError(f"freq must be between 1min and 1D; got {freq!r}")
    n = int(years * 365.25 * 24 / hours)
    if n < 48:
        raise ConfigError(f"years={years} at freq={freq} gives only {n} steps; need at least 48")
    rng = np.random.default_rng(seed)
    if hours > 1 and float(hours).is_integer():
        frame = _in_blocks(_weather(rng, n * int(hours), 1.0, gaps), int(hours))
    else:
        frame = _weather(rng, n, hours, gaps)
    if gaps == "realistic":
        return _realistic_damage(frame, rng, hours)
    return _damage(frame, rng, hours)


def _in_blocks(hourly: pd.DataFrame, hours: int) -> pd.DataFrame:
    """A coarse record as a station keeps it: each step's precipitation total and mean readings, dated at the
    step's start (a daily record: the day's total and daily means)."""
    block = np.arange(len(hourly)) // hours
    coarse = hourly.drop(columns="date").groupby(block).mean().round(1)
    coarse["precipitation"] = hourly["precipitation"].groupby(block).sum().round(1).to_numpy()
    coarse.insert(0, "date", hourly["date"].to_numpy()[::hours])
    return coarse.reset_index(drop=True)


def _weather(rng: np.random.Generator, n: int, hours: float, gaps: str) -> pd.DataFrame:
    """The undamaged record: n steps of `hours` hours from START."""
    step = pd.Timedelta(hours=hours)
    dates = pd.date_range(START, periods=n, freq=step)
    t_h = np.arange(n) * hours  # time in hours
    day = 2 * np.pi * dates.day_of_year.to_numpy() / 365.25
    hour = 2 * np.pi * (dates.hour.to_numpy() + dates.minute.to_numpy() / 60) / 24

    season = np.cos(day - 2 * np.pi * 25 / 365.25)                 # +1 late January (wet), -1 July (dry)
    enso = 0.6 * np.sin(2 * np.pi * t_h / (4.3 * 8766) + 1.0) + 0.3 * np.sin(2 * np.pi * t_h / (2.6 * 8766))
    lead = max(1, int(round(12 / hours)))                          # precursors lead moisture by ~12 h
    waves = _ar1(rng, n + lead, tau_steps=60 / hours, scale=1.0)   # synoptic waves, ~2.5 days
    future_waves, waves = waves[lead:], waves[:n]
    afternoon = np.cos(hour - 2 * np.pi * 16 / 24)                 # convection peaks around 16:00

    moisture = 0.9 * season + 0.5 * enso + 1.0 * waves + _ar1(rng, n, 6 / hours, 0.45)
    convective = moisture + 0.45 * afternoon + rng.normal(0, 0.35, n)
    raining = convective > RAIN_LEVEL[gaps]
    amount = rng.gamma(shape=0.8, scale=1.2 + 0.8 * np.clip(moisture, 0, None), size=n) * hours ** 0.5
    precipitation = np.where(raining, np.round(amount + 0.1, 1), 0.0)

    temperature = (12 + 3.0 * season - 1.5 * enso + 6.0 * np.cos(hour - 2 * np.pi * 14 / 24)
                   - 1.5 * raining + _ar1(rng, n, 48 / hours, 1.2))
    humidity = np.clip(62 + 18 * np.tanh(0.8 * moisture) - 8 * np.cos(hour - 2 * np.pi * 14 / 24)
                       + 8 * raining + rng.normal(0, 4, n), 5, 100)
    pressure = (1013 - 2.5 * future_waves - 1.0 * season + 0.8 * np.cos(2 * hour)
                + _ar1(rng, n, 120 / hours, 1.5) + rng.normal(0, 0.4, n))
    wind = np.clip(3 + 1.2 * future_waves + 1.0 * afternoon + rng.gamma(2.0, 0.5, n), 0, None)

    return pd.DataFrame({
        "date": dates,
        "precipitation": precipitation,
        "temperature": np.round(temperature, 1),
        "relative_humidity": np.round(humidity, 0),
        "pressure": np.round(pressure, 1),
        "wind_speed": np.round(wind, 1),
    })


def _damage(frame: pd.DataFrame, rng: np.random.Generator, hours: float) -> pd.DataFrame:
    """Station-style damage: sensor NaN runs (short and long), missing timestamps, duplicated rows."""
    n = len(frame)

    def run_at(length_h: float) -> slice:
        length = max(1, int(length_h / hours))
        start = int(rng.integers(0, max(1, n - length)))
        return slice(start, start + length)

    for column, lengths_h in {
        "temperature": (2, 2, 3, 10),          # short runs clean can interpolate, one it cannot
        "relative_humidity": (1, 5 * 24),      # a 5-day humidity sensor outage
        "pressure": (2, 30),
        "wind_speed": (3,),
        "precipitation": (6, 2 * 24),          # the rain gauge failing: never invented by clean
    }.items():
        for length_h in lengths_h:
            frame.iloc[run_at(length_h), frame.columns.get_loc(column)] = np.nan
    missing = np.zeros(n, dtype=bool)
    for length_h in (1, 4, 3 * 24):            # whole rows lost: gaps in the timestamps
        missing[run_at(length_h)] = True
    frame = frame.loc[~missing]
    duplicates = frame.sample(n=min(2, len(frame)), random_state=int(rng.integers(1 << 31)))
    return pd.concat([frame, duplicates]).sort_values("date", kind="stable").reset_index(drop=True)


def _realistic_damage(frame: pd.DataFrame, rng: np.random.Generator, hours: float) -> pd.DataFrame:
    """The airport record's damage: scattered short pressure gaps, lost hours, a mostly empty gust column."""
    n = len(frame)
    years = n * hours / 8766
    wind = frame["wind_speed"].to_numpy()
    gusty = wind + rng.normal(0, 0.6, n) > np.quantile(wind, 1 - GUST_REPORTED_SHARE)
    gust = np.round(wind * 1.5 + rng.gamma(2.0, 1.0, n), 1)
    frame.insert(len(frame.columns), "wind_gust", np.where(gusty, gust, np.nan))

    weights = np.asarray(PRESSURE_RUN_WEIGHTS, dtype=float)
    pressure = np.zeros(n, dtype=bool)
    while pressure.mean() < PRESSURE_MISSING_SHARE:
        length = max(1, int(round((1 + rng.choice(len(weights), p=weights / weights.sum())) / hours)))
        start = int(rng.integers(0, max(1, n - length)))
        pressure[start:start + length] = True
    frame.loc[pressure, "pressure"] = np.nan

    lost = np.zeros(n, dtype=bool)
    for _ in range(max(1, int(round(ROW_GAPS_PER_YEAR * years)))):
        length = max(1, int(round(rng.integers(ROW_GAP_HOURS[0], ROW_GAP_HOURS[1] + 1) / hours)))
        start = int(rng.integers(1, max(2, n - length - 1)))
        lost[start:start + length] = True
    return frame.loc[~lost].reset_index(drop=True)


def observed_at(frame: pd.DataFrame, hours: tuple[int, ...] = (7, 13, 19)) -> pd.DataFrame:
    """The record as an observer reads it at fixed hours of the day (e.g. 07, 13 and 19 h local): each column as
    read at those hours, precipitation as the gauge's total since the previous reading (missing if any step of it
    is). The first reading, whose total has no start, is dropped. For tests and for trying `clean` on a schedule."""
    dates = frame["date"]
    read = (dates.dt.hour.isin(hours) & (dates.dt.minute == 0)).to_numpy()
    reading = np.cumsum(read[::-1])[::-1]            # each step belongs to the first reading at or after it
    precipitation = frame["precipitation"]
    totals = precipitation.groupby(reading).sum().where(~precipitation.isna().groupby(reading).any())
    observed = frame.loc[read].copy()
    observed["precipitation"] = totals.loc[reading[read]].to_numpy()
    return observed.iloc[1:].reset_index(drop=True)


EMBEDDED_YEARS_ENV = "RAIN_MLFLOW_SYNTH_YEARS"
EMBEDDED_YEARS = 11.0  # the user's record is 11 years of hourly readings


def embedded_years() -> float:
    """The embedded record's length: 11 years, or $RAIN_MLFLOW_SYNTH_YEARS. The test of `main` sets it to train the
    whole pipeline in a fraction of the time; nothing else should need it."""
    text = os.environ.get(EMBEDDED_YEARS_ENV, "").strip()
    if not text:
        return EMBEDDED_YEARS
    try:
        years = float(text)
    except ValueError:
        years = math.nan
    if not math.isfinite(years) or years <= 0:
        raise ConfigError(f"{EMBEDDED_YEARS_ENV} must be a number of years > 0; got {text!r}")
    return years


@dataclass(frozen=True)
class SynthConfig:
    """Settings of `rain-mlflow synth` (the MLproject `synth` entry point has the same names). Left at its defaults,
    it is the embedded record (`main`, `--data synthetic`), whose length `embedded_years` gives."""

    years: float = field(default_factory=embedded_years)
    freq: str = "1h"
    seed: int = 0
    gaps: str = "default"

    @classmethod
    def parse(cls, years: str | float, freq: str, seed: str | int, gaps: str = "default") -> SynthConfig:
        try:
            years_value = float(years)
        except ValueError:
            raise ConfigError(f"years must be a number; got {years!r}") from None
        try:
            seed_value = int(seed)
        except ValueError:
            raise ConfigError(f"seed must be an integer; got {seed!r}") from None
        if seed_value < 0:
            raise ConfigError(f"seed must be >= 0; got {seed_value}")
        if gaps not in GAPS:
            raise ConfigError(f"gaps must be one of {', '.join(GAPS)}; got {gaps!r}")
        return cls(years_value, freq, seed_value, gaps)


def write_synthetic(output: str, cfg: SynthConfig | None = None) -> pd.DataFrame:
    """Write the synthetic record to `output` (atomically) and return it (the embedded record by default)."""
    cfg = cfg or SynthConfig()
    frame = synthetic_frame(cfg.years, cfg.freq, cfg.seed, cfg.gaps)
    write_csv_atomic(frame, output)
    return frame
