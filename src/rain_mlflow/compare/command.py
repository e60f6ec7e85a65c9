"""`rain-mlflow compare`: read, diagnose, print; write the verdicts onto the runs and, if asked, a report.

MLflow is imported only when a tag has to change: against a sqlite store whose runs already carry their current
verdict, a comparison reads, diagnoses and prints without importing MLflow at all (docs/diagnostics.md).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO

from rain_mlflow.compare.histories import ReadRun, parse_metric_map
from rain_mlflow.compare.reader import experiment_has_tag, read_runs, tracking_uri
from rain_mlflow.compare.report import FORMATS, RENDERERS, RunReport, diagnose_runs
from rain_mlflow.diagnostics.rules import validate_flags
from rain_mlflow.diagnostics.tags import tag_changes
from rain_mlflow.diagnostics.thresholds import Thresholds
from rain_mlflow.errors import UserError


def run(*, experiment: str | None, run_ids: Sequence[str] | None, fmt: str = "table", write_tags: bool = True,
        fail_on: Sequence[str] = (), report_dir: Path | None = None, thresholds: Thresholds = Thresholds(),
        metric_map: str | Iterable[str] | Mapping[str, str] | None = None, out: IO[str] | None = None,
        now_ms: int | None = None, uri: str | None = None, fast: bool = True) -> int:
    """Compare the runs of `experiment` (a name), or exactly `run_ids` when given; return the exit code.

    Exit code 1 when a flag named in `fail_on` fired on any run, else 0. The tracking URI is `uri`, else
    MLFLOW_TRACKING_URI, else ./mlflow.db (as everywhere in rain-mlflow).
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
    fail_flags = set(validate_flags(fail_on))
    mapping = dict(metric_map) if isinstance(metric_map, Mapping) else parse_metric_map(metric_map)
    uri = uri or tracking_uri()
    if run_ids:
        reads = read_runs(uri, run_ids=run_ids, metric_map=mapping, fast=fast)
        scope = f"{len(reads)} selected runs"
    else:
        reads = read_runs(uri, experiment=experiment, metric_map=mapping, fast=fast)
        scope = f"experiment `{experiment}`"
    reports = diagnose_runs(reads, thresholds, int(time.time() * 1000) if now_ms is None else now_ms)
    if report_dir is not None:
        from rain_mlflow.compare.figure import write_report

        write_report(Path(report_dir), reports, scope, uri, thresholds)
    if write_tags:
        write_diagnosis_tags(uri, reports)
    (out or sys.stdout).write(RENDERERS[fmt](reports))
    if fmt == "table" and reports:
        (out or sys.stdout).write(_ui_links(uri, experiment if not run_ids else None, reads))
    fired = {flag for r in reports for flag in r.flags}
    return 1 if fired & fail_flags else 0


def _ui_links(uri: str, experiment: str | None, reads: Sequence[ReadRun]) -> str:
    """`MLflow UI:` lines: the experiment's runs table, and the charts and compare page of the (first 20) runs."""
    from rain_mlflow.tracking import ui

    run_ids = [read.history.run_id for read in reads][:ui.COMPARE_LIMIT]
    these = "these runs" if len(reads) <= ui.COMPARE_LIMIT else f"the first {len(run_ids)} runs"
    experiment_ids = list(dict.fromkeys(read.experiment_id for read in reads[:ui.COMPARE_LIMIT] if read.experiment_id))
    if not experiment_ids:
        return ""
    links = []
    if experiment and len(experiment_ids) == 1:
        view = experiment_has_tag(uri, experiment_ids[0], ui.TRAINING_VIEW_TAG)
        links.append(("training runs", ui.experiment_url("", experiment_ids[0], view)))
    if len(experiment_ids) == 1:
        links.append((f"charts of {these}", ui.charts_url("", experiment_ids[0], run_ids)))
    links.append((f"compare {these}", ui.compare_url("", experiment_ids, run_ids)))
    return "\n" + ui.links_block(uri, links)


def write_diagnosis_tags(uri: str, reports: Iterable[RunReport]) -> int:
    """Bring every run's `diagnosis*` tags up to date (only the changed ones; stale ones deleted); return how
    many runs were written. MLflow is imported only if one is."""
    pending = [r for r in reports if any(tag_changes(r.history.tags, r.tags()))]
    if pending:
        from mlflow import MlflowClient

        from rain_mlflow.tracking.diagnosis import write_run_diagnosis

        client = MlflowClient(uri)
        for r in pending:
            write_run_diagnosis(client, r.history.run_id, r.findings, current_tags=r.history.tags,
                                thresholds=r.thresholds, metric_map=r.metric_map)
    return len(pending)
