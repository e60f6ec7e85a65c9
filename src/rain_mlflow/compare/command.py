"""`rain-mlflow compare`: read, diagnose, print; write the verdicts onto the runs and, if asked, a report.

MLflow is imported only when a tag has to change (or a run must hold the comparison): against a sqlite store whose
runs already carry their current verdict, a comparison reads, diagnoses and prints without importing MLflow at
all (docs/diagnostics.md). The modules that import it are therefore imported inside the functions that need them.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from rain_mlflow.compare.figure import write_report
from rain_mlflow.compare.histories import ReadRun, parse_metric_map
from rain_mlflow.compare.reader import experiment_name, read_runs
from rain_mlflow.compare.report import FORMATS, RENDERERS, RunReport, diagnose_runs
from rain_mlflow.diagnostics.rules import validate_flags
from rain_mlflow.diagnostics.tags import tag_changes
from rain_mlflow.diagnostics.thresholds import Thresholds
from rain_mlflow.errors import UserError
from rain_mlflow.tracking import store, ui
from rain_mlflow.tracking.readers import experiment_has_tag
from rain_mlflow.tracking.store import tracking_uri


def compare_command(*, experiment: str | None, run_ids: Sequence[str] | None, fmt: str, write_tags: bool,
                    fail_on: Sequence[str], report_dir: str | None, metric_map: str, thresholds: Thresholds,
                    out: IO[str]) -> int:
    """`rain-mlflow compare`: one clear error when the store is unusable, then the comparison (under `mlflow run`
    kept in the run MLflow created, with its report); the exit code."""
    uri = tracking_uri()
    if uri.startswith("sqlite:"):
        store.check_sqlite_file(uri)
    else:  # a server or database: one clear error if it is down or refuses us
        store.use_store()
    options = dict(experiment=experiment_name(experiment), run_ids=run_ids, fmt=fmt, write_tags=write_tags,
                   fail_on=fail_on, thresholds=thresholds, metric_map=metric_map, out=out)
    if not os.environ.get("MLFLOW_RUN_ID"):
        return run(report_dir=Path(report_dir) if report_dir else None, **options)
    store.use_store()  # launched by `mlflow run . -e compare`: keep the comparison in the run MLflow created
    return run_tracked(Path(report_dir or tempfile.mkdtemp(prefix="rain-mlflow-compare-")), **options)[0]


def run_tracked(report_dir: Path, **options: Any) -> tuple[int, str]:
    """`run` as a run of its own (`mlflow run -e compare`, a step of `main`), with report.md and curves.png
    logged under `report/`; (the exit code, the run id)."""
    from rain_mlflow.tracking.tracker import Tracker  # imports MLflow: see the module docstring

    with Tracker.start("compare", run_name="compare") as tracker:
        code = run(report_dir=report_dir, **options)
        for name in ("report.md", "curves.png"):
            tracker.log_artifact(report_dir / name, "report")
    return code, tracker.run_id


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
        # imported only when a tag must change: it imports MLflow (about 3 s), which an up-to-date comparison of a
        # sqlite store never needs
        from rain_mlflow.tracking.diagnosis import write_run_diagnosis

        for r in pending:
            write_run_diagnosis(uri, r.history.run_id, r.findings, current_tags=r.history.tags,
                                thresholds=r.thresholds, metric_map=r.metric_map)
    return len(pending)
