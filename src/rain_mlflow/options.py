"""Rules of the command options that are not run settings: paths to write, run ids, model URIs, names.

Each is a click parameter type that carries its rule (`Checked.kind`, `Checked.rule`), so the command line checks a
value before anything is read or written and the tests generate bad values from the same rule. A bad value raises
a ConfigError worded like the config's own (`<option> must be <rule>; got <value>`), which the CLI prints as one
`error:` line with exit code 2. Run settings (`--seq-len` ...) are checked by the config (`config.py`).
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import click

from rain_mlflow.config import DIAGNOSIS_FLAGS, parse_bool
from rain_mlflow.errors import ConfigError

RUN_ID = re.compile(r"[0-9a-f]{32}")
ALIAS = re.compile(r"[\w-]+")
RESERVED_ALIAS = re.compile(r"latest|v\d+", re.IGNORECASE)
KINDS = ("text", "int", "float", "bool", "choice", "preset", "freq", "run_id", "run_ids", "flags", "alias", "model_uri",
         "output_file", "output_dir", "input_file", "metric_map", "duration")


class Checked(click.ParamType):
    """A click type for one option: `kind` names the rule, `rule` holds its bounds (min, gt, choices...)."""

    def __init__(self, field: str, kind: str, **rule: Any):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")
        self.field, self.kind, self.rule = field, kind, rule
        self.name = kind

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if not isinstance(value, str):  # already converted (a default given as a Python value)
            return value
        return CHECKS[self.kind](self.field, value, self.rule)


def _fail(field: str, rule: str, value: Any) -> ConfigError:
    return ConfigError(f"{field} must be {rule}; got {value!r}")


def _text(field: str, value: str, rule: dict) -> str:
    if rule.get("optional") and not value.strip():  # `mlflow run` passes "" for a parameter left out
        return ""
    if not value.strip():
        raise _fail(field, "a non-empty name", value)
    return value.strip()


def _number(field: str, value: str, rule: dict, kind: type) -> int | float | None:
    words = "an integer" if kind is int else "a number"
    if rule.get("optional") and not value.strip():  # `mlflow run` passes "" for a parameter left out
        return None
    try:
        number = kind(value.strip())
    except ValueError:
        raise _fail(field, words, value) from None
    if not math.isfinite(number):
        raise _fail(field, f"a finite {words.split()[-1]}", value)
    if "min" in rule and number < rule["min"]:
        raise _fail(field, f"{words} >= {rule['min']}", value)
    if "gt" in rule and number <= rule["gt"]:
        raise _fail(field, f"{words} > {rule['gt']}", value)
    return number


def _choice(field: str, value: str, rule: dict) -> str:
    if value not in rule["choices"]:
        raise _fail(field, f"one of {', '.join(rule['choices'])}", value)
    return value


def _preset(field: str, value: str, rule: dict) -> str:
    from rain_mlflow import presets

    if value not in presets.names():
        raise ConfigError(f"unknown preset {value!r}; choose one of: {', '.join(presets.names())}")
    return value


def _freq(field: str, value: str, rule: dict) -> str:
    import pandas as pd

    try:
        step = pd.Timedelta(pd.tseries.frequencies.to_offset(value.strip()))
    except (ValueError, TypeError):
        raise _fail(field, "a pandas frequency such as 1h, 3h or 30min", value) from None
    if not pd.Timedelta(minutes=1) <= step <= pd.Timedelta(days=1):
        raise _fail(field, "between 1min and 1D", value)
    return value.strip()


def _run_id(field: str, value: str, rule: dict) -> str:
    if not RUN_ID.fullmatch(value.strip()):
        raise _fail(field, "an MLflow run id (32 hexadecimal characters)", value)
    return value.strip()


def _run_ids(field: str, value: str, rule: dict) -> list[str] | None:
    ids = [part.strip() for part in value.split(",") if part.strip()]
    for run_id in ids:
        if not RUN_ID.fullmatch(run_id):
            raise _fail(field, "MLflow run ids (32 hexadecimal characters) separated by commas", run_id)
    return ids or None


def _flags(field: str, value: str, rule: dict) -> list[str]:
    flags = [part.strip() for part in value.split(",") if part.strip()]
    for flag in flags:
        if flag not in DIAGNOSIS_FLAGS:
            raise ConfigError(f"{field} may only list {', '.join(DIAGNOSIS_FLAGS)}; got {flag!r}")
    return flags


def _alias(field: str, value: str, rule: dict) -> str:
    if not ALIAS.fullmatch(value) or RESERVED_ALIAS.fullmatch(value):
        raise _fail(field, "letters, digits, '_' or '-' (not 'latest' or v<number>, which MLflow reserves)", value)
    return value


def _model_uri(field: str, value: str, rule: dict) -> str:
    text = value.strip()
    if text.startswith("models:/"):
        if not re.fullmatch(r"models:/[^/@]+([@/][^/@]+)?", text):
            raise _fail(field, "models:/NAME@ALIAS, models:/NAME/VERSION or models:/MODEL_ID", value)
        return text
    if RUN_ID.fullmatch(text) and not Path(text).exists():
        return text
    path = Path(text)
    if not text or not path.is_file():
        what = "a folder" if text and path.is_dir() else "neither"
        raise ConfigError(f"{field} must be models:/NAME@ALIAS, a run id (32 hexadecimal characters) or an existing "
                          f"checkpoint file; got {value!r}, which is {what}")
    return text


def _writable_folder(field: str, value: str, folder: Path) -> None:
    """`folder` (or its nearest existing parent) must be a folder this process can create files in."""
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"{field} must be a path below folders; got {value!r} ({str(folder)!r} is a file)")
    try:  # os.access answers yes to root everywhere; only a real file says whether the folder takes one
        fd, probe = tempfile.mkstemp(prefix=".rain-mlflow-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{field} must be a writable path; got {value!r} (cannot create files in "
                          f"{str(folder)!r}: {exc.strerror or exc})") from None


def _output_file(field: str, value: str, rule: dict) -> str:
    if not value.strip():
        raise _fail(field, "a file path", value)
    path = Path(value)
    if path.is_dir() or value.endswith(("/", os.sep)):
        raise _fail(field, "a file path, not a folder", value)
    _writable_folder(field, value, path.absolute().parent)
    return value


def _output_dir(field: str, value: str, rule: dict) -> str:
    if not value.strip():
        raise _fail(field, "a folder path", value)
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise _fail(field, "a folder path, not a file", value)
    _writable_folder(field, value, path.absolute())
    return value


def _input_file(field: str, value: str, rule: dict) -> str:
    path = Path(value)
    if not value.strip() or not path.is_file():
        what = "a folder" if value.strip() and path.is_dir() else "not a file"
        raise ConfigError(f"{field} must be an existing file; got {value!r}, which is {what}")
    return value


def _metric_map(field: str, value: str, rule: dict) -> str:
    from rain_mlflow.compare.histories import parse_metric_map

    parse_metric_map(value)  # raises a UserError naming the bad item; the command parses the text again
    return value


def _duration(field: str, value: str, rule: dict) -> float | None:
    """Seconds, or a pandas duration such as 30min, 2h, 1h30min; '' = no limit (when `optional`)."""
    import pandas as pd

    text = value.strip()
    if rule.get("optional") and not text:
        return None
    try:
        seconds = float(text) if re.fullmatch(r"[0-9.]+(e[0-9]+)?", text) else pd.Timedelta(text).total_seconds()
    except (ValueError, TypeError):
        raise _fail(field, "a duration such as 3600, 90min, 2h or 1h30min", value) from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise _fail(field, "a positive duration such as 3600, 90min, 2h or 1h30min", value)
    return seconds


CHECKS = {
    "input_file": _input_file, "metric_map": _metric_map, "duration": _duration,
    "text": _text, "choice": _choice, "preset": _preset, "freq": _freq, "run_id": _run_id, "run_ids": _run_ids, "flags": _flags,
    "alias": _alias, "model_uri": _model_uri, "output_file": _output_file, "output_dir": _output_dir,
    "int": lambda f, v, r: _number(f, v, r, int), "float": lambda f, v, r: _number(f, v, r, float),
    "bool": lambda f, v, r: parse_bool(f, v),
}
