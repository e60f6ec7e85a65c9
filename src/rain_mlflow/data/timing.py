"""What each time setting means for the data at hand: as given, in steps, and as a duration.

The same numbers go to the clean report, the run's params (`horizon` in steps, `horizon_duration` as text) and
`config.json`, so a run on daily data can never be read as if its 24-step horizon were 24 hours.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from rain_mlflow.config import TIME_FIELDS, DataConfig
from rain_mlflow.config.durations import describe_span, steps_text


def time_settings(given: DataConfig, steps: DataConfig, step: pd.Timedelta) -> dict[str, Any]:
    """{"time_step": "1 day", "horizon": {"given": "24h", "steps": 24, "duration": "24 h"}, ...}."""
    out: dict[str, Any] = {"time_step": describe_span(step)}
    for name in TIME_FIELDS:
        value = getattr(steps, name)
        out[name] = {"given": getattr(given, name), "steps": value, "duration": describe_span(value * step)}
    return out


def time_params(settings: dict[str, Any]) -> dict[str, str]:
    """The durations as run params: horizon_duration, seq_len_duration, ..., time_step."""
    return {"time_step": settings["time_step"],
            **{f"{name}_duration": settings[name]["duration"] for name in TIME_FIELDS}}


def time_line(settings: dict[str, Any]) -> str:
    """One line: `time step 1 day: seq_len 60d = 60 steps (60 days), horizon 24h = 1 step (1 day), ...`."""
    parts = [f"{name} {'default' if s['given'] is None else s['given']} = {steps_text(s['steps'])} ({s['duration']})"
             for name, s in settings.items() if isinstance(s, dict)]
    return f"time step {settings['time_step']}: " + ", ".join(parts)
