"""`rain-mlflow compare`: read training runs from MLflow in bulk, diagnose them, print, tag and report.

Reading histories is the expensive part: 1,000 runs x 8 metrics is 8,000 `get_metric_history` requests when done
run by run. The Python client (mlflow 3.17) has no bulk history method, so this module goes one level down, to
the tracking store behind the client, and picks the bulk path that store offers:

- SQL store (sqlite / PostgreSQL / MySQL, `SqlAlchemyStore`): ONE column-only SELECT per batch of 100 runs for
  all wanted keys, on the store's own session and `metrics` table model: every row, no sampling. The store's
  `get_metric_history_bulk(run_ids, key, max_results)` runs the same query one key at a time but builds an ORM
  object per row (6x slower at 1,000 runs); it is the fallback if that model ever moves.
- Tracking server (`http(s)://`, `RestStore`): the public REST endpoint `GET /api/2.0/mlflow/metrics/
  get-history-bulk-interval` (what the MLflow UI's charts use), at most 100 run ids and 2,500 points per run per
  request; above 2,500 rows it DOWN-SAMPLES. We therefore ask for windows of 1,000 epochs (`start_step`,
  `end_step`): a run with a few thousand epochs takes a few requests, and a run that still returns the cap in a
  window (an epoch logged many times) is re-read exactly with `get_metric_history`.
- Any other store: one `get_metric_history` per run and key (exact, slow).

Only the per-epoch keys the rules and the table need are read (never `system/...`: they multiply the rows), and
only for runs whose latest metrics (returned by `search_runs` anyway, with their step) show the key. When an epoch
was logged more than once (a resumed run), the value with the latest timestamp wins. The numbers behind this
choice are in docs/diagnostics.md ("Compare at 1,000 runs").
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from statistics import fmean
from typing import IO, Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.protos.service_pb2 import GetMetricHistoryBulkInterval
from mlflow.store.tracking.rest_store import RestStore
from mlflow.utils.proto_json_utils import message_to_json
from mlflow.utils.rest_utils import call_endpoint

from rain_mlflow.diagnostics import RULE_METRICS, Finding, RunHistory, Thresholds, diagnose, diagnosis_tag, normalise
from rain_mlflow.diagnostics.history import is_finite
from rain_mlflow.diagnostics.rules import format_duration, validate_flags
from rain_mlflow.data.io import atomic_path
from rain_mlflow.errors import UserError
from rain_mlflow.tracking import write_run_diagnosis

FORMATS = ("table", "json", "markdown")
TRAIN_FILTER = "tags.`rain.step` = 'train'"
HISTORY_METRICS = RULE_METRICS + ("val_f1",)  # rules + the table's best val F1
SUMMARY_METRICS = (
    "best_epoch", "best_val_loss", "best_val_accuracy", "best_val_f1",
    "val_always_rain_f1", "test_always_rain_f1", "val_majority_accuracy", "test_majority_accuracy",
)
BULK_RUNS = 100  # run ids per bulk request: the server's limit (MAX_RUNS_GET_METRIC_HISTORY_BULK)
REST_MAX_RESULTS = 2500  # the server's per-run cap (MAX_RESULTS_PER_RUN); more rows than this are down-sampled
REST_STEP_WINDOW = 1000  # epochs per REST request: 2.5 values per epoch fit before the cap could sample
REST_BULK_ENDPOINT = "/api/2.0/mlflow/metrics/get-history-bulk-interval"
SQL_ROW_LIMIT = 50_000_000  # LIMIT of the SQL bulk query; reaching it means rows were cut, which we refuse
SEARCH_PAGE = 1000

# (run_id, key, epoch, timestamp_ms, value) as read from any store.
Row = tuple[str, str, int, int, float]
# One batch of runs to read: run_id -> key -> the highest epoch logged for it.
Wanted = dict[str, dict[str, int]]


# ---- reading ----------------------------------------------------------------------------------------------------

def load_histories(client: MlflowClient, experiment_ids: Sequence[str] | None = None,
                   run_ids: Sequence[str] | None = None, extra_metrics: Sequence[str] = ()) -> list[RunHistory]:
    """The training runs of the experiments (tag rain.step=train), or exactly the given runs, with histories
    of the metrics the rules and the table need plus `extra_metrics` (e.g. the metric `promote` ranks by)."""
    if run_ids is not None:
        runs = _runs_by_id(client, run_ids)
    elif experiment_ids is not None:
        runs = _training_runs(client, experiment_ids)
    else:
        raise UserError("compare needs an experiment or run ids; got neither")
    points = _fetch_histories(client, runs, dict.fromkeys((*HISTORY_METRICS, *extra_metrics)))
    return [_to_history(run, points.get(run.info.run_id, {})) for run in runs]


def _runs_by_id(client: MlflowClient, run_ids: Sequence[str]) -> list[Run]:
    runs = []
    for run_id in dict.fromkeys(run_ids):  # drop repeats, keep the order given
        try:
            run = client.get_run(run_id)
        except MlflowException as exc:
            raise UserError(f"run {run_id!r} not found at tracking URI {mlflow.get_tracking_uri()}") from exc
        if run.info.lifecycle_stage == "deleted":
            raise UserError(f"run {run_id!r} is deleted; restore it (mlflow runs restore) or leave it out")
        runs.append(run)
    return runs


def _training_runs(client: MlflowClient, experiment_ids: Sequence[str]) -> list[Run]:
    for experiment_id in experiment_ids:
        try:
            client.get_experiment(experiment_id)
        except MlflowException as exc:
            raise UserError(f"experiment id {experiment_id!r} not found at tracking URI "
                            f"{mlflow.get_tracking_uri()}") from exc
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(list(experiment_ids), TRAIN_FILTER, ViewType.ACTIVE_ONLY,
                                  max_results=SEARCH_PAGE, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _fetch_histories(client: MlflowClient, runs: Sequence[Run],
                     keys: Iterable[str]) -> dict[str, dict[str, dict[int, tuple[int, float]]]]:
    """run_id -> key -> epoch -> (timestamp_ms, value), read in bulk; the latest timestamp wins per epoch."""
    wanted = _wanted(runs, keys)
    read = _bulk_reader(client)
    run_ids = list(wanted)
    result: dict[str, dict[str, dict[int, tuple[int, float]]]] = {}
    for start in range(0, len(run_ids), BULK_RUNS):
        for run_id, key, step, timestamp, value in read({r: wanted[r] for r in run_ids[start:start + BULK_RUNS]}):
            if step < 1:
                continue  # step 0 holds summaries, not epochs
            epochs = result.setdefault(run_id, {}).setdefault(key, {})
            if step not in epochs or timestamp >= epochs[step][0]:
                epochs[step] = (timestamp, value)
    return result


def _wanted(runs: Sequence[Run], keys: Iterable[str]) -> Wanted:
    """run_id -> the wanted keys the run has -> its highest epoch, from the latest metrics search_runs returned."""
    keys = set(keys)
    wanted: Wanted = {}
    for run in runs:
        # `_metric_objs` keeps each latest metric's step (the public RunData.metrics keeps only the values).
        last = {m.key: m.step for m in run.data._metric_objs if m.key in keys and m.step >= 1}
        if last:
            wanted[run.info.run_id] = last
    return wanted


def _bulk_reader(client: MlflowClient) -> Callable[[Wanted], Iterable[Row]]:
    """The best bulk path the client's store offers (module docstring), as a function of one batch of runs."""
    store = client._tracking_client.store  # private: the public client has no bulk history method
    if hasattr(store, "ManagedSessionMaker") and hasattr(store, "get_metric_history_bulk"):
        return lambda batch: _sql_rows(store, batch)
    if isinstance(store, RestStore):
        return lambda batch: _rest_rows(client, store, batch)
    return lambda batch: _exact_rows(client, batch)


def _sql_rows(store: Any, batch: Wanted) -> list[Row]:
    """One column-only SELECT for every wanted key of up to 100 runs, on the store's own session and table model.

    `store.get_metric_history_bulk` runs the same query but turns every row into an ORM object and an MLflow
    entity: 6x slower at 240,000 rows (docs/diagnostics.md). It remains the fallback if the model ever moves.
    """
    try:
        from mlflow.store.tracking.dbmodels.models import SqlMetric
        from sqlalchemy import select
    except ImportError:
        return _sql_rows_store_api(store, batch)
    keys = sorted({key for keys in batch.values() for key in keys})
    query = (select(SqlMetric.run_uuid, SqlMetric.key, SqlMetric.step, SqlMetric.timestamp, SqlMetric.value,
                    SqlMetric.is_nan)
             .where(SqlMetric.key.in_(keys), SqlMetric.run_uuid.in_(list(batch))))
    with store.ManagedSessionMaker() as session:
        rows = session.execute(query).all()
    # MLflow stores NaN as value 0 with is_nan set (and +/-inf as +/-1.8e308, normalised later).
    return [(run_id, key, step, ts, math.nan if is_nan else value) for run_id, key, step, ts, value, is_nan in rows]


def _sql_rows_store_api(store: Any, batch: Wanted) -> Iterator[Row]:
    for key in sorted({key for keys in batch.values() for key in keys}):
        run_ids = [run_id for run_id, keys in batch.items() if key in keys]
        rows = store.get_metric_history_bulk(run_ids=run_ids, metric_key=key, max_results=SQL_ROW_LIMIT)
        if len(rows) >= SQL_ROW_LIMIT:  # a LIMIT, not sampling: reaching it would cut histories silently
            raise UserError(f"the metric {key!r} has {len(rows)} or more points across {len(run_ids)} runs, more "
                            "than one read may return; compare fewer runs at a time with --run-ids")
        yield from ((m.run_id, key, m.step, m.timestamp, m.value) for m in rows)


def _rest_rows(client: MlflowClient, store: RestStore, batch: Wanted) -> Iterator[Row]:
    creds = store.get_host_creds()
    for key in sorted({key for keys in batch.values() for key in keys}):
        run_ids = [run_id for run_id, keys in batch.items() if key in keys]
        last = max(batch[run_id][key] for run_id in run_ids)
        for start in range(1, last + 1, REST_STEP_WINDOW):
            end = start + REST_STEP_WINDOW - 1
            request = GetMetricHistoryBulkInterval(run_ids=run_ids, metric_key=key, max_results=REST_MAX_RESULTS,
                                                   start_step=start, end_step=end)
            response = call_endpoint(creds, REST_BULK_ENDPOINT, "GET", message_to_json(request),
                                     GetMetricHistoryBulkInterval.Response())
            per_run = Counter(m.run_id for m in response.metrics)
            sampled = {run_id for run_id, count in per_run.items() if count >= REST_MAX_RESULTS}
            yield from ((m.run_id, key, m.step, m.timestamp, m.value)
                        for m in response.metrics if m.run_id not in sampled)
            # At the cap the server may have down-sampled this run's window: read it exactly instead.
            exact = _exact_rows(client, {run_id: {key: last} for run_id in sorted(sampled)})
            yield from (row for row in exact if start <= row[2] <= end)


def _exact_rows(client: MlflowClient, batch: Wanted) -> Iterator[Row]:
    for run_id, keys in batch.items():
        for key in keys:
            for m in client.get_metric_history(run_id, key):
                yield run_id, key, m.step, m.timestamp, m.value


def _to_history(run: Run, points: dict[str, dict[int, tuple[int, float]]]) -> RunHistory:
    metrics = {key: {epoch: normalise(value) for epoch, (_, value) in sorted(by_epoch.items())}
               for key, by_epoch in points.items()}
    timestamps = [ts for by_epoch in points.values() for ts, _ in by_epoch.values()]
    return RunHistory(
        run_id=run.info.run_id,
        run_name=run.info.run_name or run.info.run_id,
        status=run.info.status,
        params=dict(run.data.params),
        tags=dict(run.data.tags),
        metrics=metrics,
        summary={k: normalise(v) for k, v in run.data.metrics.items() if k in SUMMARY_METRICS},
        start_time_ms=run.info.start_time,
        last_update_ms=max(timestamps, default=None),
    )


# ---- diagnosis and the per-run summary ---------------------------------------------------------------------------

@dataclass(frozen=True)
class RunReport:
    """One run's diagnosis plus the numbers the table shows (None = not logged)."""

    history: RunHistory
    findings: tuple[Finding, ...]
    epochs: int
    best_epoch: int | None
    best_val_accuracy: float | None
    best_val_f1: float | None
    test_accuracy_at_best: float | None
    peak_vram_gb: float | None
    mean_epoch_time_s: float | None

    @property
    def flags(self) -> list[str]:
        return sorted({finding.flag for finding in self.findings})

    def to_json(self) -> dict[str, Any]:
        h = self.history
        numbers = {f.name: _json_number(getattr(self, f.name))
                   for f in fields(self) if f.name not in ("history", "findings")}
        return {"run_id": h.run_id, "run_name": h.run_name, "preset": h.tags.get("preset"), "status": h.status,
                **numbers, "diagnosis": diagnosis_tag(self.findings), "flags": self.flags,
                "evidence": {finding.flag: finding.evidence for finding in self.findings}}


def diagnose_runs(histories: Iterable[RunHistory], thresholds: Thresholds, now_ms: int) -> list[RunReport]:
    """Diagnose every run with the same clock, and summarise it for the table."""
    return [_report(history, tuple(diagnose(history, thresholds, now_ms))) for history in histories]


def _report(h: RunHistory, findings: tuple[Finding, ...]) -> RunReport:
    best = _best_epoch(h)
    vram = [v for _, v in h.series("vram_peak_gb") if is_finite(v)]
    times = [v for _, v in h.series("epoch_time_s") if is_finite(v)]
    return RunReport(
        history=h, findings=findings, epochs=len(h.epochs()), best_epoch=best,
        best_val_accuracy=_summary_or_at(h, "best_val_accuracy", "val_accuracy", best),
        best_val_f1=_summary_or_at(h, "best_val_f1", "val_f1", best),
        test_accuracy_at_best=h.value_at("test_accuracy", best),
        peak_vram_gb=max(vram, default=None),
        mean_epoch_time_s=fmean(times) if times else None,
    )


def _best_epoch(h: RunHistory) -> int | None:
    """The trainer's logged `best_epoch` wins; otherwise the lowest val_loss (its default early-stopping metric)."""
    logged = h.summary.get("best_epoch")
    if logged is not None and is_finite(logged) and logged >= 1:
        return int(round(logged))
    losses = [(value, epoch) for epoch, value in h.series("val_loss") if is_finite(value)]
    return min(losses)[1] if losses else None


def _summary_or_at(h: RunHistory, summary_key: str, metric: str, epoch: int | None) -> float | None:
    logged = h.summary.get(summary_key)
    return logged if logged is not None and is_finite(logged) else h.value_at(metric, epoch)


def _json_number(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


# ---- rendering --------------------------------------------------------------------------------------------------

COLUMNS = ("run", "preset", "status", "epochs", "best epoch", "best val acc", "best val F1", "test acc @best",
           "peak VRAM", "mean epoch time", "flags")
_NUMERIC = {"epochs", "best epoch", "best val acc", "best val F1", "test acc @best", "peak VRAM", "mean epoch time"}


def _cells(r: RunReport) -> list[str]:
    h = r.history
    return [
        f"{h.run_id[:8]} {h.run_name}", h.tags.get("preset", ""), h.status, str(r.epochs),
        _fmt(r.best_epoch, "{:d}"), _fmt(r.best_val_accuracy, "pct"), _fmt(r.best_val_f1, "{:.4f}"),
        _fmt(r.test_accuracy_at_best, "pct"), _fmt(r.peak_vram_gb, "{:.2f} GB"),
        format_duration(r.mean_epoch_time_s), ", ".join(r.flags) or "ok",
    ]


def _fmt(value: float | int | None, pattern: str) -> str:
    if value is None or not is_finite(value):
        return ""
    return f"{100 * value:.2f}%" if pattern == "pct" else pattern.format(value)


def _evidence_lines(reports: Sequence[RunReport]) -> list[tuple[RunReport, Finding]]:
    return [(r, finding) for r in reports for finding in r.findings]


def render_table(reports: Sequence[RunReport]) -> str:
    if not reports:
        return "no training runs found\n"
    rows = [list(COLUMNS)] + [_cells(r) for r in reports]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]

    def line(row: list[str]) -> str:
        padded = (cell.rjust(w) if name in _NUMERIC else cell.ljust(w) for name, cell, w in zip(COLUMNS, row, widths))
        return "  ".join(padded).rstrip()

    out = [line(rows[0]), "  ".join("-" * w for w in widths)] + [line(row) for row in rows[1:]]
    evidence = _evidence_lines(reports)
    if evidence:
        out += ["", "evidence:"]
        out += [f"  {r.history.run_id[:8]} {r.history.run_name}  {f.flag}: {f.evidence}" for r, f in evidence]
    return "\n".join(out) + "\n"


def render_json(reports: Sequence[RunReport]) -> str:
    return json.dumps([r.to_json() for r in reports], indent=2, allow_nan=False) + "\n"


def render_markdown(reports: Sequence[RunReport]) -> str:
    if not reports:
        return "_No training runs found._\n"

    def md_row(cells: Iterable[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    align = ["---:" if name in _NUMERIC else "---" for name in COLUMNS]
    out = [md_row(COLUMNS), "|" + "|".join(align) + "|"]
    out += [md_row([f"`{r.history.run_id[:8]}` {r.history.run_name}"] + _cells(r)[1:]) for r in reports]
    evidence = _evidence_lines(reports)
    if evidence:
        out += ["", "**Evidence**", ""]
        out += [f"- `{r.history.run_id[:8]}` {r.history.run_name}, `{f.flag}`: {f.evidence}" for r, f in evidence]
    return "\n".join(out) + "\n"


RENDERERS = {"table": render_table, "json": render_json, "markdown": render_markdown}


# ---- writing: tags and the report --------------------------------------------------------------------------------

def write_diagnosis_tags(client: MlflowClient, reports: Iterable[RunReport]) -> None:
    """Set `diagnosis` and `diagnosis.<flag>` on every run (only the changed tags), delete stale ones."""
    for r in reports:
        write_run_diagnosis(client, r.history.run_id, r.findings, current_tags=r.history.tags)


def write_report(report_dir: Path, reports: Sequence[RunReport], scope: str, thresholds: Thresholds) -> None:
    """`report.md` (table, evidence, thresholds, the figure) and `curves.png`, each written whole or not at all."""
    report_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(report_dir / "curves.png", _curves_png(reports))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    changed = [f"{f.name}={getattr(thresholds, f.name)}" for f in fields(thresholds)
               if getattr(thresholds, f.name) != f.default]
    text = "\n".join([
        "# Training runs compared", "",
        f"{scope}, tracking URI `{mlflow.get_tracking_uri()}`, {len(reports)} runs; generated {stamp} by "
        f"`rain-mlflow compare`. Thresholds: {', '.join(changed) if changed else 'defaults'} "
        "(see docs/diagnostics.md).", "",
        render_markdown(reports),
        "![Validation and test accuracy per epoch](curves.png)", "",
    ])
    _atomic_write(report_dir / "report.md", text.encode("utf-8"))


def _atomic_write(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _curves_png(reports: Sequence[RunReport]) -> bytes:
    """One figure: val accuracy (left) and test accuracy (right) per epoch, one colour per run, shared y axis."""
    import io

    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    legend = 0 < len(reports) <= 20  # beyond 20 runs a legend hides the curves
    fig = Figure(figsize=(12, 5 + (0.22 * math.ceil(len(reports) / 2) if legend else 0)), layout="constrained")
    FigureCanvasAgg(fig)  # Agg, without pyplot or a global backend switch
    axes = fig.subplots(1, 2, sharey=True)
    palette = matplotlib.colormaps["tab10" if len(reports) <= 10 else "tab20" if len(reports) <= 20 else "viridis"]
    for i, r in enumerate(reports):
        colour = palette(i % palette.N if palette.N < 256 else i / max(1, len(reports) - 1))
        label = r.history.run_name + (f" [{', '.join(r.flags)}]" if r.flags else "")
        for ax, metric in zip(axes, ("val_accuracy", "test_accuracy")):
            points = [(e, v) for e, v in r.history.series(metric) if is_finite(v)]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, color=colour, linestyle="--" if r.flags else "-",
                        label=label if metric == "val_accuracy" else None)
    for ax, title in zip(axes, ("validation accuracy", "test accuracy")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    if legend:
        fig.legend(loc="outside lower center", ncols=2, fontsize="small", title="run [flags] (dashed: flagged)")
    else:
        fig.suptitle(f"{len(reports)} runs (dashed: flagged; legend shown up to 20 runs)")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


# ---- the command ------------------------------------------------------------------------------------------------

def run(*, experiment: str | None, run_ids: Sequence[str] | None, fmt: str = "table", write_tags: bool = True,
        fail_on: Sequence[str] = (), report_dir: Path | None = None, thresholds: Thresholds = Thresholds(),
        out: IO[str] = sys.stdout, now_ms: int | None = None) -> int:
    """Compare the training runs of `experiment` (a name), or exactly `run_ids` when given; return the exit code.

    Exit code 1 when a flag named in `fail_on` fired on any run, else 0. The tracking URI is MLflow's current one.
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
    fail_flags = set(validate_flags(fail_on))
    client = MlflowClient()
    if run_ids:
        histories = load_histories(client, run_ids=run_ids)
        scope = f"{len(histories)} selected runs"
    else:
        experiment_id = _experiment_id(client, experiment)
        histories = load_histories(client, experiment_ids=[experiment_id])
        scope = f"experiment `{experiment}`"
    reports = diagnose_runs(histories, thresholds, int(time.time() * 1000) if now_ms is None else now_ms)
    if report_dir is not None:
        write_report(Path(report_dir), reports, scope, thresholds)
    if write_tags:
        write_diagnosis_tags(client, reports)
    out.write(RENDERERS[fmt](reports))
    fired = {flag for r in reports for flag in r.flags}
    return 1 if fired & fail_flags else 0


def _experiment_id(client: MlflowClient, name: str | None) -> str:
    if not name:
        raise UserError("compare needs an experiment name (--experiment) or run ids; got neither")
    experiment = client.get_experiment_by_name(name)
    if experiment is None or experiment.lifecycle_stage == "deleted":
        known = [e.name for e in client.search_experiments(max_results=20)]
        raise UserError(f"experiment {name!r} not found at tracking URI {mlflow.get_tracking_uri()}; "
                        f"existing: {', '.join(known) or 'none'}")
    return experiment.experiment_id
