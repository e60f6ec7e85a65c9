"""The run configuration and the rules of every command-line value.

- `run`: the frozen sections (`DataConfig`, `ModelConfig`, `TrainConfig`) and `RunConfig`; each field declares its
  help text and its `Rule` (`_f(default, help, min=..., choices=...)`), the one source of validation.
- `rules`: `Rule` and the checks it drives.
- `presets`: the named configurations (imported on demand: it needs pandas).
- `durations`: step counts and durations (`24h`, `60d`).
- `choices`: the fixed vocabularies of the commands (formats, pruners, ...).
- `params`: the click parameter types of the command line, derived from the same rules.

A new setting is one field; its `train` / `clean` / `test` option (both spellings), MLproject pass-through, CLI check
and config check all follow from it:

    max_gap_hours: float = _f(6.0, "longest gap bridged, in hours", min=0.0)

A command option that is not a setting takes a type from `params` with its rule as arguments:

    @click.option("--top", default="5", type=params.Integer("top", min=1), help="runs to show")

Importing this package stays light (no pandas, no click): `compare` starts without them.
"""

from rain_mlflow.config.rules import Rule, parse_bool
from rain_mlflow.config.run import (
    ACTIVATIONS,
    AMP_MODES,
    CHAMPION_ALIAS,
    DEFAULT_MAX_FILL_HOURS,
    DEFAULT_MODEL_URI,
    DIAGNOSIS_FLAGS,
    FIELD_SECTION,
    FIELDS,
    LOSSES,
    LR_SCHEDULES,
    MISSING_INDICATORS,
    MISSING_MODES,
    MODEL_NAME,
    POOLINGS,
    SECTIONS,
    STOP_METRICS,
    SYNTHETIC,
    TIME_FIELDS,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    check_setting,
    coerce,
    field_type,
    rule_of,
)

__all__ = [
    "ACTIVATIONS", "AMP_MODES", "CHAMPION_ALIAS", "DEFAULT_MAX_FILL_HOURS", "DEFAULT_MODEL_URI", "DIAGNOSIS_FLAGS",
    "FIELDS", "FIELD_SECTION", "LOSSES", "LR_SCHEDULES", "MISSING_INDICATORS", "MISSING_MODES", "MODEL_NAME",
    "POOLINGS", "SECTIONS", "STOP_METRICS", "SYNTHETIC", "TIME_FIELDS", "DataConfig", "ModelConfig", "Rule",
    "RunConfig", "TrainConfig", "check_setting", "coerce", "field_type", "parse_bool", "rule_of",
]
