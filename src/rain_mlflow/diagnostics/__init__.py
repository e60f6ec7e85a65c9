"""Run diagnostics: pure rules over a run's per-epoch history (no MLflow), used live by `train` and offline by
`compare`. See docs/diagnostics.md for the rules, their defaults and the evidence behind each threshold."""

from rain_mlflow.diagnostics.history import RunHistory, is_finite, normalise
from rain_mlflow.diagnostics.rules import (
    RULE_METRICS,
    RULE_NEEDS,
    RULES,
    Finding,
    diagnose,
    diagnosis_tag,
    noise_floor,
    skipped,
    validate_flags,
)
from rain_mlflow.diagnostics.tags import METRIC_MAP_TAG, diagnosis_tags, tag_changes
from rain_mlflow.diagnostics.thresholds import THRESHOLDS_TAG, Thresholds

__all__ = [
    "METRIC_MAP_TAG", "RULES", "RULE_METRICS", "RULE_NEEDS", "THRESHOLDS_TAG", "Finding", "RunHistory", "Thresholds",
    "diagnose", "diagnosis_tag", "diagnosis_tags", "is_finite", "noise_floor", "normalise", "skipped", "tag_changes",
    "validate_flags",
]
