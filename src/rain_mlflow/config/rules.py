"""What a value must be: one `Rule` object per setting or option, declared once and checked everywhere.

A run config field declares its rule with `_f(default, help, min=..., choices=...)`; the rule keywords are explicit
parameters, so a misspelt one (`mni=1`) is a TypeError when the module is imported, never a rule silently ignored.
The same `Rule` checks the value when a config is built (`check_value`), the text a user types on the command line
(`params.Setting`), and tells the property tests which values to try. Messages follow the house wording
`<field> must be <rule>; got <value>`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from rain_mlflow.config.durations import parse_time
from rain_mlflow.errors import ConfigError


@dataclass(frozen=True)
class Rule:
    """Bounds for numbers, allowed values for names, a pattern for text, or a time setting."""

    min: float | None = None                 # value >= min (a time setting: the fewest steps)
    gt: float | None = None                  # value > gt
    max: float | None = None                 # value <= max
    lt: float | None = None                  # value < lt
    choices: tuple[str, ...] | None = None   # one of these
    each_choices: tuple[str, ...] | None = None  # a list whose every item is one of these
    pattern: str | None = None               # the whole text matches this regular expression...
    pattern_text: str | None = None          # ...which the user reads as this
    duration: bool = False                   # a step count or a duration (24h, 60d)

    def __post_init__(self) -> None:
        if (self.pattern is None) != (self.pattern_text is None):
            raise TypeError("Rule: pattern and pattern_text go together (the text tells the user the pattern)")
        if self.duration and self.min is None:
            raise TypeError("Rule: a duration rule needs min (the fewest steps)")
        if self.choices is not None and self.each_choices is not None:
            raise TypeError("Rule: choices (one value) and each_choices (a list) exclude each other")

    def broken_bound(self, value: float) -> str | None:
        """The bound `value` breaks as the user reads it ('>= 1', '< 0.5'), or None when it keeps them all."""
        if self.min is not None and value < self.min:
            return f">= {self.min}"
        if self.gt is not None and value <= self.gt:
            return f"> {self.gt}"
        if self.max is not None and value > self.max:
            return f"<= {self.max}"
        if self.lt is not None and value >= self.lt:
            return f"< {self.lt}"
        return None


def _f(default: Any, help: str, *, min: float | None = None, gt: float | None = None, max: float | None = None,
       lt: float | None = None, choices: tuple[str, ...] | None = None, each_choices: tuple[str, ...] | None = None,
       pattern: str | None = None, pattern_text: str | None = None, duration: bool = False) -> Any:
    """A config field with its help text and its rule; the dataclass checks the rule, the CLI derives its option."""
    rule = Rule(min=min, gt=gt, max=max, lt=lt, choices=choices, each_choices=each_choices, pattern=pattern,
                pattern_text=pattern_text, duration=duration)
    return field(default=default, metadata={"help": help, "rule": rule})


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(name: str, text: str) -> bool:
    """'true/false/yes/no/1/0/on/off' -> bool, or a ConfigError naming the setting."""
    lowered = str(text).strip().lower()
    if lowered in _TRUE or lowered in _FALSE:
        return lowered in _TRUE
    raise ConfigError(f"{name} must be true or false; got {text!r}")


def check_value(name: str, value: Any, base: type, optional: bool, rule: Rule) -> None:
    """Apply one field's rule to its (typed) value; the message names the field, the value and what is allowed."""
    if value is None:
        if not optional:
            raise ConfigError(f"{name} must be set; got None")
        return
    if rule.duration:
        parse_time(name, value, int(rule.min or 0))
        return
    if base is str and not value.strip():
        raise ConfigError(f"{name} must not be empty; got {value!r}")
    if rule.pattern is not None and not re.fullmatch(rule.pattern, value):
        raise ConfigError(f"{name} must be {rule.pattern_text}; got {value!r}")
    if base is bool and not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false; got {value!r}")
    if base in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                base is int and not isinstance(value, int)):
            raise ConfigError(f"{name} must be {'an integer' if base is int else 'a number'}; got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number; got {value!r}")
        bound = rule.broken_bound(value)
        if bound is not None:
            raise ConfigError(f"{name} must be {bound}; got {value}")
    if rule.choices is not None and value not in rule.choices:
        raise ConfigError(f"{name} must be one of {', '.join(rule.choices)}; got {value!r}")
    if rule.each_choices is not None:
        bad = [v for v in value if v not in rule.each_choices]
        if bad:
            raise ConfigError(f"{name} may only list {', '.join(rule.each_choices)}; got {bad[0]!r}")
