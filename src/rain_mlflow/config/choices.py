"""The fixed vocabularies of the commands that are not run settings, each defined once: the modules acting on them
and the command line's option types import them from here. (The run settings' vocabularies live beside their fields
in `run.py`.)"""

from __future__ import annotations

from rain_mlflow.config.run import STOP_METRICS

SYNTH_GAPS = ("default", "realistic")                 # `synth --gaps`: how the synthetic record is damaged
DRY_RUN_FORMATS = ("text", "json")                    # `train --dry-run --format`
COMPARE_FORMATS = ("table", "json", "markdown")       # `compare --format`
TUNE_METRICS = STOP_METRICS                           # `tune --metric`: what early stopping can also watch
PRUNERS = ("median", "hyperband", "none")             # `tune --pruner`: Optuna's pruner on the reported metric
PRUNE_ON_DEFAULT = "stalled,oscillating,non_finite_loss,class_collapse"  # `tune --prune-on`; MLproject agrees (tested)
