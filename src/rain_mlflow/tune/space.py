"""The search space: what each trial may change in the run config, and how Optuna samples it.

A space maps a config field to a distribution, written as YAML or JSON (`--space FILE`):

    learning_rate: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}
    dropout: {type: float, low: 0.0, high: 0.3}
    e_layers: {type: int, low: 2, high: 6}
    loss: {type: categorical, choices: [focal, weighted_ce]}
    shape:                     # a group: fields that only make sense together, sampled as one choice
      choices:
        - {d_model: 256, n_heads: 8, d_ff: 512}
        - {d_model: 512, n_heads: 8, d_ff: 1024}

Every bound and choice is checked by the config's own validation when the space is loaded, and so is every
combination of the corners (the ends of each range, every choice) up to a few thousand: a space no trial of which
could ever be valid is refused before a study starts. A combination the config refuses while sampling (a sampled
`n_heads` that does not divide a sampled `d_model`) is not trained: the trial is marked failed as `invalid_config`.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rain_mlflow.config import FIELD_SECTION, RunConfig
from rain_mlflow.errors import ConfigError

KINDS = ("float", "int", "categorical")
SPEC_KEYS = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
             "categorical": {"type", "choices"}}
MAX_CORNERS = 4096
# The default space: the knobs the user's notes turned by hand, scaled to the preset it starts from.
DEFAULT_TOKENS = (4, 8, 15)          # seq_len choices in whole tokens of the preset's input_token_len


@dataclass(frozen=True)
class Param:
    """One searched name: a config field with a distribution, or a group of fields chosen together."""

    name: str
    kind: str                          # float | int | categorical | group
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()                # categorical values, or, for a group, dicts of field -> value

    def sample(self, trial: Any) -> dict[str, Any]:
        """field -> value for one trial (a group's label is what Optuna sees and records)."""
        if self.kind == "float":
            return {self.name: trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)}
        if self.kind == "int":
            assert self.low is not None and self.high is not None  # `_param` gives a numeric kind both bounds
            return {self.name: trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log,
                                                 step=int(self.step or 1))}
        if self.kind == "categorical":
            return {self.name: trial.suggest_categorical(self.name, list(self.choices))}
        labels = [group_label(c) for c in self.choices]
        chosen = trial.suggest_categorical(self.name, labels)
        return dict(self.choices[labels.index(chosen)])

    def corners(self) -> list[dict[str, Any]]:
        if self.kind in ("float", "int"):
            return [{self.name: self.low}, {self.name: self.high}]
        if self.kind == "categorical":
            return [{self.name: c} for c in self.choices]
        return [dict(c) for c in self.choices]

    def fields(self) -> set[str]:
        return set().union(*(c.keys() for c in self.choices)) if self.kind == "group" else {self.name}


@dataclass(frozen=True)
class Space:
    params: tuple[Param, ...]
    source: str                        # the file, or "the default space"

    def sample(self, trial: Any) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for param in self.params:
            values.update(param.sample(trial))
        return values

    def fields(self) -> set[str]:
        return set().union(*(p.fields() for p in self.params)) if self.params else set()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for p in self.params:
            if p.kind == "group":
                out[p.name] = {"choices": [dict(c) for c in p.choices]}
            elif p.kind == "categorical":
                out[p.name] = {"type": "categorical", "choices": list(p.choices)}
            else:
                out[p.name] = {"type": p.kind, "low": p.low, "high": p.high, "log": p.log,
                               **({"step": p.step} if p.step else {})}
        return out


def group_label(values: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in values.items())


def load(path: str, base: RunConfig) -> Space:
    """Read and check a YAML / JSON space file against `base` (the preset with the fixed options applied)."""
    import yaml

    source = f"space file {path}"
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source} must be a readable YAML or JSON file; got {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} must be valid YAML or JSON; got {' '.join(str(exc).split())[:200]}") from None
    return parse(raw, base, source)


def parse(raw: Any, base: RunConfig, source: str) -> Space:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{source} must map settings to distributions; got {json.dumps(raw)[:200]}")
    params = tuple(_param(str(name), spec, base, source) for name, spec in raw.items())
    space = Space(params, source)
    seen: dict[str, str] = {}
    for p in params:
        for f in p.fields():
            if f in seen:
                raise ConfigError(f"{source}: {f} must be searched once; got it in {seen[f]} and {p.name}")
            seen[f] = p.name
    check_corners(space, base)
    return space


def _param(name: str, spec: Any, base: RunConfig, source: str) -> Param:
    where = f"{source}: {name}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a mapping such as {{type: float, low: 0.0, high: 0.3}}; got {spec!r}")
    if name not in FIELD_SECTION:  # a group: fields chosen together
        choices = spec.get("choices")
        if set(spec) != {"choices"} or not isinstance(choices, list) or not choices or not all(
                isinstance(c, dict) and c for c in choices):
            raise ConfigError(f"{where} must be a setting (unknown setting {name!r}) or a group "
                              f"{{choices: [{{field: value, ...}}, ...]}}; got {spec!r}")
        for choice in choices:
            _valid(base, choice, f"{where} choice {group_label(choice)}")
        return Param(name, "group", choices=tuple(choices))
    kind = spec.get("type")
    if kind not in KINDS:
        raise ConfigError(f"{where}.type must be one of {', '.join(KINDS)}; got {kind!r}")
    unknown = set(spec) - SPEC_KEYS[kind]
    if unknown:
        raise ConfigError(f"{where} may only have {', '.join(sorted(SPEC_KEYS[kind]))}; got {sorted(unknown)[0]!r}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}.choices must be a non-empty list; got {choices!r}")
        for choice in choices:
            if not isinstance(choice, (str, int, float, bool)):
                raise ConfigError(f"{where}.choices must hold plain values; got {choice!r}")
            _valid(base, {name: choice}, f"{where} choice {choice!r}")
        return Param(name, kind, choices=tuple(choices))
    low, high, log, step = spec.get("low"), spec.get("high"), spec.get("log", False), spec.get("step")
    number = (int,) if kind == "int" else (int, float)
    for key, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, number):
            words = "an integer" if kind == "int" else "a number"
            raise ConfigError(f"{where}.{key} must be {words}; got {value!r}")
        _valid(base, {name: value}, f"{where}.{key}")
    assert low is not None and high is not None  # checked just above
    if not low < high:
        raise ConfigError(f"{where}.low must be below high; got low={low}, high={high}")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}.log must be true or false; got {log!r}")
    if log and low <= 0:
        raise ConfigError(f"{where}.low must be > 0 with log: true; got {low}")
    if step is not None and (isinstance(step, bool) or not isinstance(step, number) or step <= 0 or log):
        raise ConfigError(f"{where}.step must be a positive {'integer' if kind == 'int' else 'number'} "
                          f"(and log false); got {step!r}")
    return Param(name, kind, low=low, high=high, log=log, step=step)


def _valid(base: RunConfig, values: dict[str, Any], where: str) -> None:
    try:
        base.with_overrides(**values)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def check_corners(space: Space, base: RunConfig) -> None:
    """Refuse a space where no combination of the corners is a valid config (it could never train)."""
    options = [p.corners() for p in space.params]
    first_error = None
    for n, combo in enumerate(itertools.product(*options)):
        if n >= MAX_CORNERS:
            return  # too many to try: the sampler's own checks catch what remains
        values = {k: v for part in combo for k, v in part.items()}
        try:
            base.with_overrides(**values)
            return
        except ConfigError as exc:
            first_error = first_error or exc
    raise ConfigError(f"{space.source} can never give a valid run: no combination of its ranges' ends and "
                      f"choices is accepted ({first_error})")


def default_space(base: RunConfig) -> Space:
    """The seeds' knobs around the preset: learning rate, a consistent model shape, dropout, whole-token windows,
    batch size, loss and focal gamma, LR schedule. Choices the preset cannot take are left out."""
    m, token = base.model, base.model.input_token_len
    shapes = [dict(d_model=m.d_model // 2, n_heads=m.n_heads, e_layers=m.e_layers, d_ff=m.d_ff // 2),
              dict(d_model=m.d_model, n_heads=m.n_heads, e_layers=m.e_layers, d_ff=m.d_ff),
              dict(d_model=m.d_model, n_heads=m.n_heads, e_layers=m.e_layers + 2, d_ff=m.d_ff)]
    lr = base.train.learning_rate
    raw: dict[str, Any] = {
        "learning_rate": {"type": "float", "low": lr / 10, "high": lr * 10, "log": True},
        "shape": {"choices": [s for s in shapes if _accepts(base, s)]},
        "dropout": {"type": "float", "low": 0.0, "high": 0.3},
        "seq_len": {"type": "categorical", "choices": [k * token for k in DEFAULT_TOKENS]},
        "batch_size": {"type": "categorical", "choices": sorted({max(1, base.train.batch_size // 2),
                                                                 base.train.batch_size})},
        "loss": {"type": "categorical", "choices": ["focal", "weighted_ce"]},
        "focal_gamma": {"type": "float", "low": 1.0, "high": 3.0},
        "lradj": {"type": "categorical", "choices": ["cosine", "type1", "none"]},
    }
    return parse(raw, base, "the default space")


def _accepts(base: RunConfig, values: dict[str, Any]) -> bool:
    try:
        base.with_overrides(**values)
        return True
    except ConfigError:
        return False
