"""The one run configuration: frozen sections, validated at construction, built from a preset plus overrides.

Flow: CLI / MLproject -> `presets.build(name, overrides)` -> `RunConfig` -> data, model, trainer.
Every field name is unique across sections, so an override `seq_len=1440` (CLI `--seq-len`, MLproject
`-P seq_len=1440`) finds its section by name. Each field carries its help text and its `Rule` in `metadata`
(`rules.py`); one generic check enforces the rules, so messages always name the field, the value and what is
allowed, and the command line's option for the field (`params.Setting`) checks with the same rule.

Time settings (`horizon`, `seq_len`, `window_stride`, `max_fill`) take a step count (`24`) or a duration (`24h`,
`3h`, `60d`: pandas offset aliases). The config a user builds holds them as given; once the data's time step is
known, `RunConfig.in_steps(step)` returns the resolved config (every time setting a step count, `max_fill`'s
default filled in), and everything downstream (windows, labels, the model, checkpoints) reads that one.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from rain_mlflow.config.durations import parse_time, steps_of
from rain_mlflow.config.rules import Rule, _f, check_value, parse_bool
from rain_mlflow.diagnostics.rules import RULES
from rain_mlflow.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

MODEL_NAME = "rain-timerxl-classifier"  # the registered model `promote` writes and `test` reads
CHAMPION_ALIAS = "champion"
DEFAULT_MODEL_URI = f"models:/{MODEL_NAME}@{CHAMPION_ALIAS}"
SYNTHETIC = "synthetic"  # the value of `data` that selects the embedded synthetic data set
LOSSES = ("focal", "weighted_ce", "ce")
LR_SCHEDULES = ("cosine", "type1", "none")
STOP_METRICS = ("val_loss", "val_f1", "val_accuracy", "val_mcc")
AMP_MODES = ("auto", "bf16", "fp16", "off")
ACTIVATIONS = ("relu", "gelu")
POOLINGS = ("last", "mean", "attention")  # the classifier's head (rain_mlflow.model) imports them from here
MISSING_MODES = ("mask", "exclude")
MISSING_INDICATORS = ("one", "per_feature")
DEFAULT_MAX_FILL_HOURS = 6.0  # max_fill when not set: a reading is carried forward over at most 6 h of steps
TIME_FIELDS = ("seq_len", "horizon", "window_stride", "max_fill")  # a step count or a duration (`24h`, `60d`)
DIAGNOSIS_FLAGS: tuple[str, ...] = tuple(RULES)  # the diagnosis rules' names, in the order they run


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from, how it is cleaned, labelled, split and windowed."""

    data: str = _f(SYNTHETIC, "input CSV, or 'synthetic' for the embedded synthetic data set")
    date_col: str = _f("date", "name of the timestamp column")
    precip_col: str = _f("precipitation", "name of the precipitation column (its own unit, e.g. mm or in)")
    label_col: str | None = _f(None, "existing 0/1 label column (then no precipitation rule is applied)")
    features: tuple[str, ...] | None = _f(None, "comma-separated input columns (default: every other numeric column)")
    na_values: tuple[str, ...] = _f((), "extra cell values that mean 'missing', e.g. -999,-9999")
    freq: str | None = _f(None, "time step, e.g. 1h or 3h (default: inferred from the timestamps); a record "
                                "observed at a few fixed hours a day is resampled to it (default 1D)")
    max_fill: int | str | None = _f(None, "carry the last reading of a feature forward over at most this many "
                                          "missing steps or this long (6, 6h; causal; precipitation is never "
                                          "carried; default: 6 h of steps)", min=0, duration=True)
    missing: str = _f("mask", "inputs still missing after the fill: mask (training mean plus a missingness "
                              "indicator variable) or exclude (drop every window touching one)",
                      choices=MISSING_MODES)
    missing_indicators: str = _f("one", "with missing=mask: one indicator variable (share of the inputs missing at "
                                        "each step) or per_feature (one per feature with gaps; each adds a "
                                        "variable, i.e. attention cost)", choices=MISSING_INDICATORS)
    max_missing_fraction: float = _f(0.5, "drop a feature missing in more than this share of the training "
                                          "period's steps", min=0.0, max=1.0)
    horizon: int | str = _f("24h", "label looks this far ahead, in steps (24) or as a duration (24h, 1d): rain if "
                                   "precipitation over (t, t+horizon] exceeds rain_threshold", min=1, duration=True)
    rain_threshold: float = _f(0.1, "precipitation total (column unit) above which the horizon counts as rain",
                               min=0.0)
    seq_len: int | str = _f(720, "input window in steps (720) or as a duration (30d); trimmed from the oldest "
                                 "end to a multiple of input_token_len", min=1, duration=True)
    window_stride: int | str = _f(1, "use every k-th training window, in steps (6) or as a duration (6h)", min=1,
                                  duration=True)
    train_fraction: float = _f(0.6, "share of the timeline used for training (chronological)", gt=0.0, max=1.0)
    val_fraction: float = _f(0.2, "share of the timeline used for validation", gt=0.0, max=1.0)
    test_fraction: float = _f(0.2, "share of the timeline used for testing", gt=0.0, max=1.0)
    min_class_share: float = _f(0.02, "refuse to train when a split has less than this share of either class "
                                      "(a degenerate task)", min=0.0, lt=0.5)
    min_windows: int = _f(100, "refuse to train when a split has fewer usable windows than this", min=0)
    allow_degenerate: bool = _f(False, "train even when a split breaks min_class_share or min_windows "
                                       "(experiments)")

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.label_col is not None and self.label_col in (self.features or ()):
            # label(t) describes (t, t + horizon]: as an input it would show each window its own answer
            raise ConfigError(f"features must not include the label column {self.label_col!r} (it holds the "
                              f"future each window is asked about); got {','.join(self.features or ())}")
        total = self.train_fraction + self.val_fraction + self.test_fraction
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ConfigError(
                "train_fraction + val_fraction + test_fraction must sum to 1; got "
                f"{self.train_fraction} + {self.val_fraction} + {self.test_fraction} = {total:g}"
            )

    def in_steps(self, step: pd.Timedelta) -> DataConfig:
        """This config with every time setting a step count of `step` (and max_fill's default filled in)."""
        steps: dict[str, Any] = {name: steps_of(name, getattr(self, name), step, int(rule_of(name).min or 0))
                 for name in TIME_FIELDS if getattr(self, name) is not None}
        if self.max_fill is None:
            import pandas as pd

            steps["max_fill"] = int(math.floor(pd.Timedelta(hours=DEFAULT_MAX_FILL_HOURS) / step))
        return dataclasses.replace(self, **steps)

    @property
    def resolved(self) -> bool:
        return all(isinstance(getattr(self, name), int) for name in TIME_FIELDS)

    # The time settings of a resolved config (`in_steps`), as the step counts everything downstream computes with.
    @property
    def seq_len_steps(self) -> int:
        return _steps("seq_len", self.seq_len)

    @property
    def horizon_steps(self) -> int:
        return _steps("horizon", self.horizon)

    @property
    def window_stride_steps(self) -> int:
        return _steps("window_stride", self.window_stride)

    @property
    def max_fill_steps(self) -> int:
        return _steps("max_fill", self.max_fill)


@dataclass(frozen=True)
class ModelConfig:
    """Timer-XL backbone shape plus the classification head; the backbone names follow the official code."""

    input_token_len: int = _f(96, "patch (token) length in steps; 96 for the released checkpoint", min=1)
    d_model: int = _f(512, "hidden size", min=1)
    n_heads: int = _f(8, "attention heads (d_model must be divisible by it)", min=1)
    e_layers: int = _f(4, "number of Transformer blocks", min=1)
    d_ff: int = _f(1024, "feed-forward inner size", min=1)
    dropout: float = _f(0.1, "dropout on attention, residual and FFN branches", min=0.0, lt=1.0)
    activation: str = _f("relu", "FFN activation", choices=ACTIVATIONS)
    use_norm: bool = _f(False, "per-window instance normalisation (the released checkpoint was trained with it)")
    pooling: str = _f("last", "how token features become one vector per window", choices=POOLINGS)
    pretrain_model_path: str | None = _f(None, "pretrained backbone: a release name (timer-xl-260b, downloaded "
                                               "once into the cache), an http(s) URL, a checkpoint file, or none")
    freeze_epochs: int = _f(0, "keep the pretrained backbone frozen for the first N epochs", min=0)

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"d_model must be divisible by n_heads; got d_model={self.d_model}, n_heads={self.n_heads}"
            )
        if (self.d_model // self.n_heads) % 4:
            raise ConfigError(
                "d_model / n_heads (the head size) must be a multiple of 4 for the rotary encoding; got "
                f"{self.d_model} / {self.n_heads} = {self.d_model // self.n_heads}"
            )


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, early stopping, precision, reproducibility and live diagnosis."""

    batch_size: int = _f(32, "windows per forward/backward pass (the memory-relevant batch)", min=1)
    accumulate_steps: int = _f(1, "add the gradients of this many batches before each optimiser step (effective "
                                  "batch = batch_size x accumulate_steps)", min=1)
    checkpoint_activations: bool = _f(False, "recompute each Timer layer in backward instead of keeping its "
                                             "activations: less memory, about a third more compute")
    compile: bool = _f(False, "torch.compile the model (falls back to eager with a warning where it cannot)")
    check_loss_every: int = _f(50, "look for a NaN/inf loss every this many optimiser steps (each look waits "
                                    "for the GPU)", min=1)
    learning_rate: float = _f(1e-4, "peak AdamW learning rate", gt=0.0)
    weight_decay: float = _f(0.01, "AdamW weight decay", min=0.0)
    train_epochs: int = _f(20, "maximum number of epochs", min=1)
    schedule_epochs: int | None = _f(None, "epochs the LR schedule spans (default: train_epochs); a resumed run "
                                           "keeps its original span unless --reschedule", min=1)
    patience: int = _f(10, "stop after this many epochs without improvement of early_stop_metric", min=1)
    early_stop_metric: str = _f("val_loss", "metric that picks the best epoch and drives early stopping",
                                choices=STOP_METRICS)
    lradj: str = _f("cosine", "LR schedule per epoch: cosine, type1 (x0.1 after every epoch, as the official "
                              "code) or none", choices=LR_SCHEDULES)
    warmup_epochs: int = _f(0, "linear LR warmup over this many epochs (per step)", min=0)
    grad_clip: float = _f(1.0, "clip the gradient norm to this value (0 = off)", min=0.0)
    loss: str = _f("focal", "focal (class-balanced), weighted_ce (class-balanced) or ce", choices=LOSSES)
    focal_gamma: float = _f(2.0, "focusing parameter of the focal loss", min=0.0)
    amp: str = _f("auto", "mixed precision: auto picks bf16 / fp16 / off from the hardware", choices=AMP_MODES)
    device: str = _f("auto", "auto, cpu, cuda or cuda:N (N = 0, 1, ...)", pattern=r"auto|cpu|cuda(:\d+)?",
                     pattern_text="auto, cpu, cuda or cuda:N with N a GPU number")
    seed: int = _f(2021, "seed for weights, dropout and batch order", min=0)
    vram_budget_gb: float | None = _f(None, "GPU memory the run may use (GB); above it the run is flagged",
                                      gt=0.0)
    stop_on: tuple[str, ...] = _f(("non_finite_loss", "stalled"),
                                  "diagnosis flags that end the run early (comma-separated, empty = none)",
                                  each_choices=DIAGNOSIS_FLAGS)

    def __post_init__(self) -> None:
        _check_fields(self)

    @property
    def schedule_span(self) -> int:
        """Epochs the LR schedule runs over (the cosine's horizon)."""
        return self.schedule_epochs or self.train_epochs


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs; a preset name plus the three sections."""

    preset: str
    data: DataConfig
    model: ModelConfig
    train: TrainConfig

    def __post_init__(self) -> None:
        if isinstance(self.data.seq_len, int) and self.data.seq_len < self.model.input_token_len:
            raise ConfigError(
                f"seq_len must be at least input_token_len ({self.model.input_token_len}) to hold one token; "
                f"got {self.data.seq_len}"
            )

    def in_steps(self, step: pd.Timedelta) -> RunConfig:
        """The resolved config for data of time step `step` (see `DataConfig.in_steps`); validated again."""
        return dataclasses.replace(self, data=self.data.in_steps(step))

    @property
    def effective_seq_len(self) -> int:
        """The window length actually fed to the model: the oldest remainder steps are dropped."""
        seq_len = self.data.seq_len_steps
        return seq_len - seq_len % self.model.input_token_len

    def with_overrides(self, **overrides: Any) -> RunConfig:
        """A new config with fields replaced by name; unknown names and bad values raise ConfigError."""
        by_section: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        for key, value in overrides.items():
            section = FIELD_SECTION.get(key)
            if section is None:
                raise ConfigError(f"unknown setting {key!r}; known settings: {', '.join(sorted(FIELD_SECTION))}")
            by_section[section][key] = coerce(key, value)
        return dataclasses.replace(
            self, **{name: dataclasses.replace(getattr(self, name), **changes)
                     for name, changes in by_section.items() if changes}
        )

    def flat(self) -> dict[str, Any]:
        """All settings as one flat name -> value dict (for logging and printing)."""
        out: dict[str, Any] = {"preset": self.preset}
        for name in SECTIONS:
            out.update(dataclasses.asdict(getattr(self, name)))
        return out

    def to_dict(self) -> dict[str, Any]:
        """Nested, JSON-friendly form; `from_dict` reverses it (checkpoints and config.json carry this)."""
        return {"preset": self.preset, **{name: _jsonable(dataclasses.asdict(getattr(self, name)))
                                          for name in SECTIONS}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        known = {name: {f.name for f in dataclasses.fields(section)} for name, section in SECTIONS.items()}
        sections = {}
        for name, section in SECTIONS.items():
            values = {k: coerce(k, v) for k, v in d.get(name, {}).items() if k in known[name]}
            sections[name] = section(**values)
        return cls(preset=d["preset"], **sections)


FIELD_SECTION: dict[str, str] = {
    f.name: name for name, section in SECTIONS.items() for f in dataclasses.fields(section)
}
FIELDS: dict[str, dataclasses.Field] = {
    f.name: f for section in SECTIONS.values() for f in dataclasses.fields(section)
}


def field_type(name: str) -> tuple[type, bool]:
    """(base type, optional) of a config field: int, float, str, bool or tuple (of str)."""
    section = SECTIONS[FIELD_SECTION[name]]
    hint = typing.get_type_hints(section)[name]
    optional = False
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional, hint = len(args) < len(typing.get_args(hint)), args[0]
    base = tuple if typing.get_origin(hint) is tuple else hint
    return base, optional


def coerce(name: str, value: Any) -> Any:
    """Turn a CLI / MLproject string (or a JSON value) into the field's type; '' or 'none' mean None."""
    base, optional = field_type(name)
    if isinstance(value, str):
        text = value.strip()
        if optional and text.lower() in ("", "none", "null"):
            return None
        rule = rule_of(name)
        if rule.duration:
            return parse_time(name, text, int(rule.min or 0))
        try:
            if base is bool:
                return parse_bool(name, text)
            if base is int:
                return int(text)
            if base is float:
                return float(text)
            if base is tuple:
                return tuple(part.strip() for part in text.split(",") if part.strip())
        except ValueError:
            kind = {bool: "true or false", int: "an integer", float: "a number"}[base]
            raise ConfigError(f"{name} must be {kind}; got {value!r}") from None
        return text
    if base is tuple and isinstance(value, list):
        return tuple(value)
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _steps(name: str, value: int | str | None) -> int:
    if not isinstance(value, int):
        raise ConfigError(f"{name} {value!r} is a duration: resolve the config against the data's time step first "
                          "(RunConfig.in_steps)")
    return value


def rule_of(name: str) -> Rule:
    """The declared rule of a config field."""
    return FIELDS[name].metadata["rule"]


def check_setting(name: str, value: Any) -> None:
    """Check one field's value (text as typed, or typed) with its own rule, as the config will when it is built."""
    base, optional = field_type(name)
    check_value(name, coerce(name, value), base, optional, rule_of(name))


def _check_fields(section: Any) -> None:
    """Apply each field's declared rule; the message names the field, the value and what is allowed."""
    for f in dataclasses.fields(section):
        base, optional = field_type(f.name)
        check_value(f.name, getattr(section, f.name), base, optional, f.metadata["rule"])


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
