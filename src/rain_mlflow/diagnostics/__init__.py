"""Run diagnostics: pure rules over a run's per-epoch history (no MLflow), used live by `train` and offline by
`compare`. See docs/diagnostics.md for the rules, their defaults and the evidence behind each threshold."""

from rain_mlflow.diagnostics.history import RunHistory, is_finite, normalise
from rain_mlflow.diagnostics.rules import (
    RULE_METRICS,
    RULES,
    Finding,
    Thresholds,
    diagnose,
    diagnosis_tag,
    validate_flags,
)

__all__ = [
    "RULES", "RULE_METRICS", "Finding", "RunHistory", "Thresholds", "diagnose", "diagnosis_tag", "is_finite",
    "normalise", "validate_flags",
]
