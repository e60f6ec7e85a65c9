"""The click parameter types of the command line: each option's rule is its type's constructor arguments.

- `Setting(name)`: an option for a run config field (`--seq-len`). Its rule is the field's own declaration
  (`run.py`): the text is checked by the config's own check and passed on as typed, so the config, which also checks
  the fields against each other, receives exactly what the user wrote.
- `Threshold(name)`: a diagnosis threshold (`--stalled-epochs`), checked by `Thresholds` itself.
- The options that are not run settings: text, bounded numbers, true/false, fixed choices, presets, frequencies,
  run ids, flag lists, aliases, model URIs, paths to write or read, metric maps, durations.

Every type subclasses click's type for its kind (`click.IntRange`, `click.Choice`, `click.Path`...), so help pages
and shell completion work as click's do, but a bad value raises a ConfigError in the house wording
`<option> must be <rule>; got <value>`, which the CLI prints as one `error:` line with exit code 2.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import click

from rain_mlflow.config.rules import Rule, parse_bool
from rain_mlflow.config.run import DIAGNOSIS_FLAGS, check_setting, field_type, rule_of
from rain_mlflow.diagnostics.thresholds import Thresholds
from rain_mlflow.errors import ConfigError

RUN_ID = re.compile(r"[0-9a-f]{32}")
ALIAS = re.compile(r"[\w-]+")
RESERVED_ALIAS = re.compile(r"latest|v\d+", re.IGNORECASE)


def _refuse(field: str, rule: str, value: Any) -> NoReturn:
    raise ConfigError(f"{field} must be {rule}; got {value!r}")


class Setting(click.ParamType):
    """A run config field given on the command line: checked with the field's own rule, passed on as typed."""

    def __init__(self, setting: str):
        self.setting = setting
        self.rule = rule_of(setting)
        self.base, self.optional = field_type(setting)
        self.name = f"setting {setting}"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        check_setting(self.setting, value)
        return value

    def metavar(self) -> str:
        """What the help page shows for the value."""
        if self.rule.duration:
            return "N|DURATION"
        return {int: "INT", float: "NUM", bool: "BOOL", tuple: "A,B"}.get(self.base, "TEXT")


class Threshold(click.ParamType):
    """A diagnosis threshold: a number of the field's type, within the range `Thresholds` itself enforces."""

    def __init__(self, threshold: str):
        self.threshold = threshold
        self.kind: type = type(getattr(Thresholds(), threshold))
        self.name = "integer" if self.kind is int else "number"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, str):
            try:
                value = self.kind(value.strip())
            except ValueError:
                _refuse(self.threshold, "an integer" if self.kind is int else "a number", value)
        Thresholds(**{self.threshold: value})  # the threshold's own rule: a ConfigError naming it
        return value


class Text(click.types.StringParamType):
    """A non-empty name (stripped); `optional`: '' means "not given" (`mlflow run` passes '' for a parameter left
    out); `pattern` / `pattern_text`: the whole text must match (for names that go into search filters)."""

    def __init__(self, field: str, *, optional: bool = False, pattern: str | None = None,
                 pattern_text: str | None = None):
        self.field, self.optional = field, optional
        self.rule = Rule(pattern=pattern, pattern_text=pattern_text)

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if not isinstance(value, str):
            return value
        if not value.strip():
            if self.optional:
                return ""
            _refuse(self.field, "a non-empty name", value)
        text = value.strip()
        if self.rule.pattern is not None and not re.fullmatch(self.rule.pattern, text):
            _refuse(self.field, str(self.rule.pattern_text), value)
        return text


class _Bounded:
    """A number with bounds: `min` (>=) and `gt` (>); `optional`: '' means "not given" (None)."""

    field: str
    kind: type
    optional: bool
    rule: Rule

    def _number(self, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        words = "an integer" if self.kind is int else "a number"
        if self.optional and not value.strip():
            return None
        try:
            number = self.kind(value.strip())
        except ValueError:
            _refuse(self.field, words, value)
        if not math.isfinite(number):
            _refuse(self.field, f"a finite {words.split()[-1]}", value)
        bound = self.rule.broken_bound(number)
        if bound is not None:
            _refuse(self.field, f"{words} {bound}", value)
        return number


class Integer(_Bounded, click.IntRange):
    def __init__(self, field: str, *, min: int | None = None, gt: int | None = None, optional: bool = False):
        self.field, self.kind, self.optional, self.rule = field, int, optional, Rule(min=min, gt=gt)
        super().__init__(min=gt if gt is not None else min, min_open=gt is not None)

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        return self._number(value)


class Number(_Bounded, click.FloatRange):
    def __init__(self, field: str, *, min: float | None = None, gt: float | None = None, optional: bool = False):
        self.field, self.kind, self.optional, self.rule = field, float, optional, Rule(min=min, gt=gt)
        super().__init__(min=gt if gt is not None else min, min_open=gt is not None)

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        return self._number(value)


class Flag(click.types.BoolParamType):
    """true/false, yes/no, on/off, 1/0 (an option usable bare, `--dry-run`, or with a value, `--dry_run false`)."""

    def __init__(self, field: str):
        self.field = field

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        return value if isinstance(value, bool) else parse_bool(self.field, value)


class Choice(click.Choice):
    """One of a fixed vocabulary (`config.choices`)."""

    def __init__(self, field: str, choices: Sequence[str]):
        self.field = field
        super().__init__(tuple(choices))

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if value not in self.choices:
            _refuse(self.field, f"one of {', '.join(map(str, self.choices))}", value)
        return value


class PresetName(click.ParamType):
    """A preset name (`rain-mlflow presets`); the list is read when a value comes, so `--help` needs no pandas."""

    name = "preset"

    def __init__(self, field: str = "preset"):
        self.field = field

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        from rain_mlflow.config import presets

        if value not in presets.names():
            raise ConfigError(f"unknown preset {value!r}; choose one of: {', '.join(presets.names())}")
        return value


class Frequency(click.ParamType):
    """A pandas frequency between 1 minute and 1 day (1h, 3h, 30min)."""

    name = "frequency"

    def __init__(self, field: str):
        self.field = field

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        import pandas as pd

        try:
            step = pd.Timedelta(pd.tseries.frequencies.to_offset(value.strip()))
        except (ValueError, TypeError):
            _refuse(self.field, "a pandas frequency such as 1h, 3h or 30min", value)
        if not pd.Timedelta(minutes=1) <= step <= pd.Timedelta(days=1):
            _refuse(self.field, "between 1min and 1D", value)
        return value.strip()


class RunId(click.ParamType):
    """An MLflow run id: 32 hexadecimal characters."""

    name = "run_id"

    def __init__(self, field: str):
        self.field = field

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if not RUN_ID.fullmatch(value.strip()):
            _refuse(self.field, "an MLflow run id (32 hexadecimal characters)", value)
        return value.strip()


class RunIds(click.ParamType):
    """Comma-separated MLflow run ids -> a list (None when empty)."""

    name = "run_ids"

    def __init__(self, field: str):
        self.field = field

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if not isinstance(value, str):
            return value
        ids = [part.strip() for part in value.split(",") if part.strip()]
        for run_id in ids:
            if not RUN_ID.fullmatch(run_id):
                _refuse(self.field, "MLflow run ids (32 hexadecimal characters) separated by commas", run_id)
        return ids or None


class DiagnosisFlags(click.ParamType):
    """Comma-separated diagnosis flags -> a list (empty when none)."""

    name = "flags"

    def __init__(self, field: str):
        self.field = field

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if not isinstance(value, str):
            return value
        flags = [part.strip() for part in value.split(",") if part.strip()]
        for flag in flags:
            if flag not in DIAGNOSIS_FLAGS:
                raise ConfigError(f"{self.field} may only list {', '.join(DIAGNOSIS_FLAGS)}; got {flag!r}")
        return flags


class Alias(click.ParamType):
    """A registered model alias: letters, digits, '_' or '-', not one MLflow reserves."""

    name = "alias"

    def __init__(self, field: str):
        self.field = field

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if not ALIAS.fullmatch(value) or RESERVED_ALIAS.fullmatch(value):
            _refuse(self.field, "letters, digits, '_' or '-' (not 'latest' or v<number>, which MLflow reserves)",
                    value)
        return value


class ModelUri(click.ParamType):
    """models:/NAME@ALIAS (or /VERSION, or a model id), a training run id, or an existing checkpoint file."""

    name = "model_uri"

    def __init__(self, field: str):
        self.field = field

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        text = value.strip()
        if text.startswith("models:/"):
            if not re.fullmatch(r"models:/[^/@]+([@/][^/@]+)?", text):
                _refuse(self.field, "models:/NAME@ALIAS, models:/NAME/VERSION or models:/MODEL_ID", value)
            return text
        if RUN_ID.fullmatch(text) and not Path(text).exists():
            return text
        path = Path(text)
        if not text or not path.is_file():
            what = "a folder" if text and path.is_dir() else "neither"
            raise ConfigError(f"{self.field} must be models:/NAME@ALIAS, a run id (32 hexadecimal characters) or an "
                              f"existing checkpoint file; got {value!r}, which is {what}")
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


class OutputFile(click.Path):
    """A file path this process can write (its folders are created when it is written)."""

    def __init__(self, field: str):
        self.field = field
        super().__init__(dir_okay=False, writable=True)

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if not value.strip():
            _refuse(self.field, "a file path", value)
        if Path(value).is_dir() or value.endswith(("/", os.sep)):
            _refuse(self.field, "a file path, not a folder", value)
        _writable_folder(self.field, value, Path(value).absolute().parent)
        return value


class OutputDir(click.Path):
    """A folder path this process can create files in (created when something is written)."""

    def __init__(self, field: str):
        self.field = field
        super().__init__(file_okay=False, writable=True)

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if not value.strip():
            _refuse(self.field, "a folder path", value)
        path = Path(value)
        if path.exists() and not path.is_dir():
            _refuse(self.field, "a folder path, not a file", value)
        _writable_folder(self.field, value, path.absolute())
        return value


class InputFile(click.Path):
    """An existing file to read."""

    def __init__(self, field: str):
        self.field = field
        super().__init__(exists=True, dir_okay=False)

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        path = Path(value)
        if not value.strip() or not path.is_file():
            what = "a folder" if value.strip() and path.is_dir() else "not a file"
            raise ConfigError(f"{self.field} must be an existing file; got {value!r}, which is {what}")
        return value


class MetricMap(click.ParamType):
    """`compare --metric-map`: SOURCE=TARGET items and built-in maps; checked here, parsed by the command."""

    name = "metric_map"

    def __init__(self, field: str):
        self.field = field

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        from rain_mlflow.compare.histories import parse_metric_map

        parse_metric_map(value)  # raises a UserError naming the bad item
        return value


class Duration(click.ParamType):
    """Seconds, or a pandas duration such as 30min, 2h, 1h30min -> seconds; `optional`: '' = no limit (None)."""

    name = "duration"

    def __init__(self, field: str, *, optional: bool = False):
        self.field, self.optional = field, optional

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if self.optional and not text:
            return None
        import pandas as pd

        try:
            seconds = float(text) if re.fullmatch(r"[0-9.]+(e[0-9]+)?", text) else pd.Timedelta(text).total_seconds()
        except (ValueError, TypeError):
            _refuse(self.field, "a duration such as 3600, 90min, 2h or 1h30min", value)
        if not math.isfinite(seconds) or seconds <= 0:
            _refuse(self.field, "a positive duration such as 3600, 90min, 2h or 1h30min", value)
        return seconds
