"""Time settings: a step count (`24`) or a duration (`24h`, `3h`, `60d`: pandas offset aliases), and how to say
what a number of steps means for data of a given time step ("24 steps = 1 day of hourly data").

Used by the config (`run.py`, `rules.py`) to check a value as given and to resolve it once the data's step is known.
"""

from __future__ import annotations

import re
import warnings
from typing import TYPE_CHECKING, Any

from rain_mlflow.errors import ConfigError

if TYPE_CHECKING:  # pandas is imported where a duration is parsed: `compare` and `--help` never need it
    import pandas as pd

TIME_RULE = "a step count (an integer) or a duration such as 24h, 3h or 60d"


def duration_of(text: str) -> pd.Timedelta | None:
    """`24h`, `3H`, `60d`, `1D`, `90min`, `1 day` -> Timedelta; None when it is not a fixed duration."""
    import pandas as pd

    for parse in (pd.Timedelta, lambda t: pd.Timedelta(pd.tseries.frequencies.to_offset(t))):
        try:
            with warnings.catch_warnings():  # pandas deprecates the lower-case `d` users naturally type
                warnings.simplefilter("ignore")
                value = parse(text)
        except (ValueError, TypeError):
            continue
        if value is not pd.NaT and not pd.isna(value):
            return value
    return None


def parse_time(name: str, value: Any, minimum: int) -> int | str:
    """A time setting as given: a step count (int, >= minimum) or the text of a duration (> 0, or >= 0 when
    `minimum` is 0). Months and years are refused: they have no fixed length."""
    if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
        raise ConfigError(f"{name} must be {TIME_RULE}; got {value!r}")
    if isinstance(value, (int, float)) or re.fullmatch(r"[+-]?\d+", str(value).strip()):
        steps = int(value)
        if steps < minimum:
            raise ConfigError(f"{name} must be >= {minimum} steps or a duration; got {value!r}")
        return steps
    text = str(value).strip()
    duration = duration_of(text) if text and not text.lower().startswith("nan") else None
    if duration is None:
        raise ConfigError(f"{name} must be {TIME_RULE} (months and years have no fixed length); got {value!r}")
    import pandas as pd

    if duration < pd.Timedelta(0) or (duration == pd.Timedelta(0) and minimum > 0):
        raise ConfigError(f"{name} must be a duration {'>' if minimum else '>='} 0; got {value!r}")
    return text


def steps_of(name: str, value: int | str, step: pd.Timedelta, minimum: int = 0) -> int:
    """The number of steps of `step` a time setting means; a duration must be a whole number of steps."""
    if isinstance(value, int):
        return value
    duration = duration_of(value)
    assert duration is not None, value  # parse_time accepted it
    steps = duration / step
    if abs(steps - round(steps)) > 1e-9:
        raise ConfigError(f"{name} {value} is not a whole number of the data's {describe_span(step)} steps "
                          f"({steps:.4g} steps); give a multiple of {describe_span(step)} or a step count")
    count = int(round(steps))
    if count < minimum:
        raise ConfigError(f"{name} {value} is {count} steps of {describe_span(step)}; it must be >= {minimum}")
    return count


def describe_span(span: pd.Timedelta) -> str:
    """A duration as a person says it: 30 min, 1 h, 24 h, 1 day, 60 days, 3.9 years."""
    seconds = span.total_seconds()
    days = seconds / 86400
    if days >= 730:
        return f"{days / 365.25:.3g} years"
    if seconds % 86400 == 0:
        return f"{int(days)} day{'s' if days != 1 else ''}"
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    if seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"


def data_kind(step: pd.Timedelta) -> str:
    """'hourly data', '3-hourly data', 'daily data', '30 min data'."""
    import pandas as pd

    if step == pd.Timedelta(days=1):
        return "daily data"
    if step % pd.Timedelta(hours=1) == pd.Timedelta(0) and step < pd.Timedelta(days=1):
        hours = int(step / pd.Timedelta(hours=1))
        return "hourly data" if hours == 1 else f"{hours}-hourly data"
    return f"{describe_span(step)} data"


def steps_text(count: int) -> str:
    return f"{count} step{'' if count == 1 else 's'}"
