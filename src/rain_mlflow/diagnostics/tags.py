"""The tags a diagnosis leaves on its run, as plain data (the writers live in `tracking/`).

`diagnosis` is `ok` or the sorted flags, `diagnosis.<flag>` holds one evidence line per fired flag,
`diagnosis.thresholds` the thresholds used (JSON) and `diagnosis.metric_map` the metric names read under ours
(JSON, only when a map applied). Computing them here lets `compare` see that nothing changed without importing
MLflow at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from rain_mlflow.diagnostics.rules import Finding, diagnosis_tag
from rain_mlflow.diagnostics.thresholds import THRESHOLDS_TAG, Thresholds

METRIC_MAP_TAG = "diagnosis.metric_map"
EVIDENCE_LIMIT = 5000  # MLflow accepts 8,000 characters per tag value; evidence lines are ~200


def diagnosis_tags(findings: Iterable[Finding], thresholds: Thresholds | None = None,
                   metric_map: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every `diagnosis*` tag the run should carry after this diagnosis."""
    findings = list(findings)
    tags = {"diagnosis": diagnosis_tag(findings)}
    tags |= {f"diagnosis.{f.flag}": f.evidence[:EVIDENCE_LIMIT] for f in findings}
    if thresholds is not None:
        tags[THRESHOLDS_TAG] = thresholds.to_json()
    if metric_map:
        tags[METRIC_MAP_TAG] = json.dumps(dict(metric_map), sort_keys=True)
    return tags


def tag_changes(current: Mapping[str, str], wanted: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """(tags to set because they differ, `diagnosis*` tags to delete because this diagnosis no longer has them)."""
    ours = {k: v for k, v in current.items() if k == "diagnosis" or k.startswith("diagnosis.")}
    changed = {k: v for k, v in wanted.items() if ours.get(k) != v}
    return changed, sorted(ours.keys() - wanted.keys())
