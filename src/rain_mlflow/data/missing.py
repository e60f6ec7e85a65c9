"""Missing inputs without look-ahead: a causal fill, then `mask` or `exclude` (DESIGN.md "Data").

1. Carry forward: a missing reading takes the last observed value of its column if that value is at most
   `max_fill` steps old. Only values at or before t are used, so the input at t never depends on a later reading.
   Precipitation is never carried (a shower does not last because the gauge stopped reporting).
2. What is still missing:
   - `mask` (default): scaled to 0 (the training mean) and flagged by indicator variables appended to the inputs:
     one variable holding the share of the columns missing at each step, or one 0/1 variable per column that has
     gaps in the training period (`missing_indicators`). Which indicators exist is decided on the training period.
   - `exclude`: every window that touches a missing value is dropped (the inputs are still 0 there, never NaN).

The same `model_inputs` runs on the whole series when training (numpy) and on each raw window inside the served
model (torch), so the registered model applies exactly this treatment to the data it is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from rain_mlflow.config import DEFAULT_MAX_FILL_HOURS, DataConfig

INDICATOR_PREFIX = "missing:"            # model variables named like this are indicators, not data columns
SHARE_INDICATOR = INDICATOR_PREFIX + "share"


def default_max_fill(step: pd.Timedelta) -> int:
    """6 hours of steps (6 for hourly data, 2 for 3-hourly, 0 for daily)."""
    return int(math.floor(pd.Timedelta(hours=DEFAULT_MAX_FILL_HOURS) / step))  # as DataConfig.in_steps


@dataclass(frozen=True)
class MissingPolicy:
    columns: tuple[str, ...]        # data columns, in model order
    carried: tuple[bool, ...]       # per column: may a reading be carried forward (False for precipitation)
    max_fill: int                   # steps a reading may be carried forward
    mode: str                       # mask | exclude
    indicators: tuple[str, ...] = ()  # indicator variables appended after the columns (mask only)

    @property
    def variables(self) -> tuple[str, ...]:
        """What the model sees: the data columns, then the indicator variables."""
        return self.columns + self.indicators

    @classmethod
    def build(cls, columns: tuple[str, ...], cfg: DataConfig, max_fill: int, precip_col: str | None,
              missing_in_training: np.ndarray) -> MissingPolicy:
        """The policy of a run; `missing_in_training` [T_train, C] says what is missing after the fill there."""
        carried = tuple(c != precip_col for c in columns)
        indicators: tuple[str, ...] = ()
        if cfg.missing == "mask":
            with_gaps = [c for c, gaps in zip(columns, np.atleast_1d(missing_in_training.any(axis=0))) if gaps]
            if cfg.missing_indicators == "per_feature":
                indicators = tuple(INDICATOR_PREFIX + c for c in with_gaps)
            elif with_gaps:
                indicators = (SHARE_INDICATOR,)
        return cls(tuple(columns), carried, int(max_fill), cfg.missing, indicators)

    @classmethod
    def from_variables(cls, variables: list[str], data: dict[str, Any]) -> MissingPolicy:
        """Rebuild the policy of a trained model from its variable names and its config's `data` section."""
        columns = tuple(v for v in variables if not v.startswith(INDICATOR_PREFIX))
        indicators = tuple(v for v in variables if v.startswith(INDICATOR_PREFIX))
        precip = data.get("precip_col")
        return cls(columns, tuple(c != precip for c in columns), int(data.get("max_fill") or 0),
                   data.get("missing", "exclude"), indicators)


def carry_forward(x: Any, max_fill: int, carried: Any, in_place: bool = False) -> Any:
    """Fill each missing value of a carried column with the last observed one, if at most `max_fill` steps old.

    `x` is [..., T, C] (numpy or torch, time on axis -2); `carried` is a bool per column. numpy works a column at a
    time, so its temporaries are one column wide, and with `in_place` fills `x` itself instead of a copy.
    """
    if isinstance(x, np.ndarray):
        filled = x if in_place else x.copy()
        for c in _carried_columns(carried, x.shape[-1]):
            column = filled[..., c]
            gaps = np.isnan(column)
            if gaps.any():
                fill, source = _fill_sources(gaps, max_fill)
                np.copyto(column, np.take_along_axis(column, source, axis=-1), where=fill)
        return filled
    import torch  # only torch input gets here; `clean` (numpy only) starts without torch

    observed = ~torch.isnan(x)
    steps = torch.arange(x.shape[-2], device=x.device)[:, None].expand(x.shape)
    last = torch.cummax(torch.where(observed, steps, torch.full_like(steps, -1)), dim=-2).values
    latest = torch.gather(x, -2, last.clamp(min=0))
    carried_t = torch.as_tensor(carried, device=x.device)
    fillable = ~observed & (last >= 0) & (steps - last <= max_fill) & carried_t
    return torch.where(fillable, latest, x)


def still_missing(raw: np.ndarray, max_fill: int, carried: Any) -> np.ndarray:
    """bool [..., T, C]: what the causal fill leaves missing, without making a filled copy of the data."""
    missing = np.isnan(raw)
    for c in _carried_columns(carried, raw.shape[-1]):
        if missing[..., c].any():
            missing[..., c] &= ~_fill_sources(missing[..., c], max_fill)[0]
    return missing


def _carried_columns(carried: Any, n_columns: int) -> np.ndarray:
    """Indices of the columns the fill may change (`carried`: one flag per column, or one for all)."""
    return np.flatnonzero(np.broadcast_to(carried, (n_columns,)))


def _fill_sources(gaps: np.ndarray, max_fill: int) -> tuple[np.ndarray, np.ndarray]:
    """For one column's gaps [..., T]: (the steps the fill sets, the last observed step at or before each step).

    Step indices are int32 (a record has far fewer than 2**31 steps): half the memory of numpy's default. Before
    the first reading `last` is -1 (numpy reads it as the final step): those steps are never filled."""
    steps = np.arange(gaps.shape[-1], dtype=np.int32)
    last = np.where(gaps, np.int32(-1), steps)
    np.maximum.accumulate(last, axis=-1, out=last)
    fill = gaps & (last >= 0)
    fill &= steps - last <= max_fill
    return fill, last


def model_inputs(raw: Any, mean: Any, scale: Any, policy: MissingPolicy) -> tuple[Any, Any]:
    """Raw data columns [..., T, C] (NaN = missing) -> (model inputs [..., T, C + K], missing after the fill).

    numpy builds the inputs in one array of `raw`'s dtype, a column at a time (the whole training series of
    11 years hourly is filled and scaled with temporaries one column wide)."""
    if isinstance(raw, np.ndarray):
        n_columns = raw.shape[-1]
        series = np.empty(raw.shape[:-1] + (n_columns + len(policy.indicators),), dtype=raw.dtype)
        inputs = series[..., :n_columns]
        inputs[...] = raw
        carry_forward(inputs, policy.max_fill, policy.carried, in_place=True)
        missing = np.isnan(inputs)
        for c in range(n_columns):
            scaled = np.array(inputs[..., c], dtype=np.float64)   # scaled in float64, stored in raw's dtype
            scaled -= mean[c]
            scaled /= scale[c]
            scaled[missing[..., c]] = 0.0
            inputs[..., c] = scaled
        for k, name in enumerate(policy.indicators):
            series[..., n_columns + k] = _indicator(missing, name, policy.columns)[..., 0]
        return series, missing
    import torch  # only torch input gets here; `clean` (numpy only) starts without torch

    filled = carry_forward(raw, policy.max_fill, policy.carried)
    still = torch.isnan(filled)
    standard = torch.where(still, torch.zeros_like(filled), (filled - mean) / scale)
    extra = [_indicator(still, name, policy.columns).to(standard.dtype) for name in policy.indicators]
    return torch.cat([standard, *extra], dim=-1), still


def _indicator(missing: Any, name: str, columns: tuple[str, ...]) -> Any:
    """[..., T, 1]: the share of columns missing at each step, or one column's missing flag."""
    if name == SHARE_INDICATOR:
        return missing.sum(-1, keepdims=True) / missing.shape[-1] if isinstance(missing, np.ndarray) else \
            missing.sum(-1, keepdim=True) / missing.shape[-1]
    index = columns.index(name[len(INDICATOR_PREFIX):])
    return missing[..., index:index + 1]
