"""A diagnosis written onto stored runs (`compare`, `promote`); a training run writes its own through its Tracker."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient

from rain_mlflow.diagnostics.rules import Finding
from rain_mlflow.diagnostics.tags import diagnosis_tags, tag_changes
from rain_mlflow.diagnostics.thresholds import Thresholds


def write_run_diagnosis(uri: str, run_id: str, findings: Sequence[Finding],
                        current_tags: Mapping[str, str] | None = None, thresholds: Thresholds | None = None,
                        metric_map: Mapping[str, str] | None = None) -> None:
    """`diagnosis` (ok or the sorted flags), one `diagnosis.<flag>` evidence tag per finding and the thresholds
    (and metric map) used, in one batch of the tags that changed; `diagnosis.*` tags this diagnosis no longer
    has are deleted (`rain_mlflow.diagnostics.tags`)."""
    client = _client(uri)
    if current_tags is None:
        current_tags = client.get_run(run_id).data.tags
    changed, stale = tag_changes(current_tags, diagnosis_tags(findings, thresholds, metric_map))
    if changed:
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in changed.items()])
    for key in stale:
        client.delete_tag(run_id, key)


@lru_cache(maxsize=4)
def _client(uri: str) -> MlflowClient:
    return MlflowClient(uri)
