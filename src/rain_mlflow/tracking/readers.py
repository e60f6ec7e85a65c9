"""The bulk readers `compare` (and `promote`) read runs with: every path returns the same `RawRun`s.

The public MLflow API reads a history one run and one metric at a time (`get_metric_history`): 8,000 requests for
1,000 runs, and `import mlflow` alone costs about 3 s of CPU here. So each kind of store has a faster reader,
measured where it matters (docs/diagnostics.md), with `PublicReader` as the reference behind them:

- `sqlite:///...` (`SqliteReader`): MLflow's tables read with Python's own `sqlite3`, read-only, without
  importing MLflow: four SELECTs list the runs (runs, tags, params, latest metrics) and one per 500 runs reads
  every wanted history row. Anything unexpected (a missing column, workspaces in use, an unknown run or
  experiment) raises `Defer`: the public API gives the authoritative answer or error.
- other SQL stores (PostgreSQL, MySQL: `SqlStoreReader`): runs listed with the public `search_runs`; histories
  by one column-only SELECT per batch of 100 runs on the store's own session and `metrics` table model.
- a tracking server (`http(s)://`, `ServerReader`): runs listed with the public `search_runs`; histories from the
  server's bulk endpoint `/ajax-api/2.0/mlflow/metrics/get-history-bulk` (the one the MLflow UI's run
  comparison uses): one metric of up to 100 runs per request, every row, no sampling, cut at 25,000 rows in
  run-id order; the read resumes at the run the cut fell in, and a run that alone fills the cap is read exactly
  page by page. (The public `get-history-bulk-interval` endpoint down-samples past 2,500 points per run and
  answers with one sampling query per run: 3x slower here, see docs/diagnostics.md.)
A reader whose private MLflow handle is missing raises `FastPathUnavailable` (`compare.reader` then warns once and
uses the public API). MLflow is imported inside the readers that use it, never by importing this module: a
comparison on a sqlite store starts without it.
"""

from __future__ import annotations

import math
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from rain_mlflow.errors import UserError
from rain_mlflow.tracking import private

# (run_id, key, step, timestamp_ms, value) as read from any store.
Row = tuple[str, str, int, int, float]
# run_id -> the run's own metric name -> [(timestamp_ms, step, value)]: what every reader's `points` returns.
Points = dict[str, dict[str, list[tuple[int, int, float]]]]
BULK_RUNS = 100  # run ids per bulk request: the server's limit (MAX_RUN_IDS_PER_REQUEST)
REST_MAX_ROWS = 25_000  # rows per bulk request: the server's cap (MAX_HISTORY_RESULTS); the rest is cut, not sampled
REST_BULK_ENDPOINT = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"
SQL_BATCH = 500  # run ids per history SELECT (bounded IN lists and memory)
SEARCH_PAGE = 1000


@dataclass
class RawRun:
    """One run as a store returns it. `latest` is metric -> latest value (what search_runs returns);
    `points` is filled by the history read: metric (the run's own name) -> [(timestamp_ms, step, value)], in
    any order."""

    run_id: str
    run_name: str
    status: str
    start_time_ms: int | None
    params: dict[str, str]
    tags: dict[str, str]
    latest: dict[str, float]
    points: dict[str, list[tuple[int, int, float]]] = field(default_factory=dict)  # (timestamp, step, value)
    experiment_id: str = ""


class FastPathUnavailable(Exception):
    """A private handle the fast path relies on is missing: warn once, use the public API."""


class Defer(Exception):
    """The fast path cannot answer this one (unknown id, workspaces...): let the public API decide, silently."""


def experiment_has_tag(uri: str, experiment_id: str, key: str) -> bool:
    """Whether the experiment carries tag `key` (sqlite read without importing MLflow, like the runs)."""
    try:
        reader = SqliteReader(uri) if uri.split(":", 1)[0].lower() == "sqlite" else None
        if reader is not None:
            return bool(reader._query("SELECT 1 FROM experiment_tags WHERE experiment_id = ? AND key = ?",
                                      (experiment_id, key)))
    except (Defer, FastPathUnavailable):
        pass
    from mlflow import MlflowClient

    return key in MlflowClient(uri).get_experiment(experiment_id).tags


# ---- the public API ---------------------------------------------------------------------------------------------

class PublicReader:
    """MlflowClient only: `search_runs` / `get_run`, and one `get_metric_history` per run and metric."""

    def __init__(self, uri: str):
        from mlflow import MlflowClient

        self.uri = uri
        self.client = MlflowClient(uri)

    def experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is None or found.lifecycle_stage == "deleted":
            known = [e.name for e in self.client.search_experiments(max_results=20)]
            raise UserError(f"experiment {name!r} not found at tracking URI {self.uri}; "
                            f"existing: {', '.join(known) or 'none'}")
        return found.experiment_id

    def list_runs(self, experiment_id: str) -> list[RawRun]:
        from mlflow.entities import ViewType

        runs, token = [], None
        while True:
            page = self.client.search_runs([experiment_id], "", ViewType.ACTIVE_ONLY, max_results=SEARCH_PAGE,
                                           page_token=token)
            runs += [self._raw(run) for run in page]
            token = page.token
            if not token:
                return runs

    def get_runs(self, run_ids: Sequence[str]) -> list[RawRun]:
        from mlflow.exceptions import MlflowException

        runs = []
        for run_id in run_ids:
            try:
                run = self.client.get_run(run_id)
            except MlflowException as exc:
                raise UserError(f"run {run_id!r} not found at tracking URI {self.uri}") from exc
            if run.info.lifecycle_stage == "deleted":
                raise UserError(f"run {run_id!r} is deleted; restore it (mlflow runs restore) or leave it out")
            runs.append(self._raw(run))
        return runs

    def points(self, wanted: Mapping[str, Iterable[str]]) -> Points:
        """The wanted histories (run_id -> the run's own metric names), grouped per run and metric."""
        out: Points = {}
        for run_id, key, step, timestamp, value in self.histories(wanted):
            out.setdefault(run_id, {}).setdefault(key, []).append((timestamp, step, value))
        return out

    def histories(self, wanted: Mapping[str, Iterable[str]]) -> Iterator[Row]:
        for run_id, keys in wanted.items():
            for key in sorted(keys):
                for m in self.client.get_metric_history(run_id, key):
                    yield run_id, key, m.step, m.timestamp, m.value

    @staticmethod
    def _raw(run) -> RawRun:
        return RawRun(run_id=run.info.run_id, run_name=run.info.run_name or run.info.run_id,
                      status=run.info.status, start_time_ms=run.info.start_time, params=dict(run.data.params),
                      tags=dict(run.data.tags), latest=dict(run.data.metrics),
                      experiment_id=str(run.info.experiment_id))


# ---- fast paths -------------------------------------------------------------------------------------------------

class SqlStoreReader(PublicReader):
    """PostgreSQL / MySQL: histories by a column-only SELECT on the store's own session and `metrics` model."""

    def __init__(self, uri: str):
        super().__init__(uri)
        try:
            sql_metric = private.sql_metric_model()
            from sqlalchemy import select
        except ImportError as exc:
            raise FastPathUnavailable(f"{exc}") from exc
        self.store = private.tracking_store(self.client)  # no public bulk read
        if not hasattr(self.store, "ManagedSessionMaker"):
            raise FastPathUnavailable(f"the store behind {uri} has no SQL session")
        self.model, self.select = sql_metric, select

    def histories(self, wanted: Mapping[str, Iterable[str]]) -> Iterator[Row]:
        m, run_ids = self.model, list(wanted)
        for start in range(0, len(run_ids), BULK_RUNS):
            batch = {run_id: set(wanted[run_id]) for run_id in run_ids[start:start + BULK_RUNS]}
            keys = sorted(set().union(*batch.values()))
            query = (self.select(m.run_uuid, m.key, m.step, m.timestamp, m.value, m.is_nan)
                     .where(m.key.in_(keys), m.run_uuid.in_(list(batch))))
            with self.store.ManagedSessionMaker() as session:
                rows = session.execute(query).all()
            # MLflow stores NaN as value 0 with is_nan set (and +/-inf as +/-1.8e308, normalised later).
            yield from ((run_id, key, step, ts, math.nan if is_nan else value)
                        for run_id, key, step, ts, value, is_nan in rows if key in batch[run_id])


class ServerReader(PublicReader):
    """A tracking server: histories from its bulk endpoint (exact rows), per-run reads only past its row cap."""

    def __init__(self, uri: str):
        super().__init__(uri)
        try:
            http_request = private.http_request()
        except ImportError as exc:
            raise FastPathUnavailable(f"{exc}") from exc
        store = private.tracking_store(self.client)  # the host credentials
        if not hasattr(store, "get_host_creds"):
            raise FastPathUnavailable(f"the store behind {uri} has no host credentials")
        self.creds, self.http = store.get_host_creds(), http_request

    def histories(self, wanted: Mapping[str, Iterable[str]]) -> Iterator[Row]:
        by_key: dict[str, list[str]] = {}
        for run_id, keys in wanted.items():
            for key in keys:
                by_key.setdefault(key, []).append(run_id)
        for key, run_ids in sorted(by_key.items()):
            pending = sorted(run_ids)  # the server returns rows ordered by run id, cut at its row cap
            while pending:
                batch = pending[:BULK_RUNS]
                rows = self._bulk(batch, key)
                if len(rows) < REST_MAX_ROWS:
                    yield from rows
                    pending = pending[BULK_RUNS:]
                    continue
                last = rows[-1][0]  # the cap cut this run (or one just after it): read on from it
                yield from (row for row in rows if row[0] < last)
                if last == batch[0]:  # one run alone fills the cap: read it exactly, page by page
                    yield from super().histories({last: (key,)})
                    last = pending[1] if len(pending) > 1 else None
                pending = [run_id for run_id in pending if last is not None and run_id >= last]

    def _bulk(self, run_ids: list[str], key: str) -> list[Row]:
        response = self.http(self.creds, REST_BULK_ENDPOINT, "GET", raise_on_status=False,
                             params={"run_id": run_ids, "metric_key": key, "max_results": REST_MAX_ROWS})
        if response.status_code == 404:
            raise FastPathUnavailable(f"{self.uri} has no {REST_BULK_ENDPOINT}")
        response.raise_for_status()
        return [(m["run_id"], key, int(m["step"]), int(m["timestamp"]), float(m["value"]))
                for m in response.json()["metrics"]]


class SqliteReader:
    """MLflow's sqlite tables read with `sqlite3`, read-only, without importing MLflow (module docstring)."""

    def __init__(self, uri: str):
        path = uri.split(":///", 1)[1].split("?", 1)[0] if ":///" in uri else ""
        if not path or path == ":memory:" or not Path(path).is_file():
            raise Defer()  # in memory, or not created yet: the public API creates it
        if os.environ.get("MLFLOW_ENABLE_WORKSPACES", "").lower() in ("1", "true"):
            raise Defer()
        try:
            self.db = sqlite3.connect(f"file:{quote(str(Path(path).resolve()))}?mode=ro", uri=True, timeout=30)
        except sqlite3.Error as exc:
            raise Defer() from exc

    def _query(self, sql: str, args: Sequence = ()) -> list[tuple]:
        try:
            return self.db.execute(sql, args).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such" in str(exc):  # a table or column MLflow renamed: the schema moved on
                raise FastPathUnavailable(f"sqlite schema: {exc}") from exc
            raise Defer() from exc  # locked, busy...: the public API has its own retries

    def experiment_id(self, name: str) -> str:
        columns = {row[1] for row in self._query("PRAGMA table_info(experiments)")}
        if "workspace" in columns and self._query(
                "SELECT 1 FROM experiments WHERE workspace IS NOT NULL AND workspace != 'default' LIMIT 1"):
            raise Defer()  # workspaces in use: only MLflow knows which one is active
        found = self._query("SELECT experiment_id FROM experiments WHERE name = ? AND lifecycle_stage = 'active'",
                            (name,))
        if len(found) != 1:
            raise Defer()  # the public API words the error (and lists the experiments)
        return str(found[0][0])

    _ACTIVE = "SELECT run_uuid FROM runs WHERE experiment_id = ? AND lifecycle_stage = 'active'"

    def list_runs(self, experiment_id: str) -> list[RawRun]:
        rows = self._query("SELECT run_uuid, name, status, start_time, experiment_id FROM runs "
                           "WHERE experiment_id = ? AND lifecycle_stage = 'active'", (experiment_id,))
        self.experiment = experiment_id  # histories then read by key over the experiment (a covering index)
        return self._runs(rows, f"run_uuid IN ({self._ACTIVE})", (experiment_id,))

    def get_runs(self, run_ids: Sequence[str]) -> list[RawRun]:
        marks = ",".join("?" * len(run_ids))
        rows = self._query(f"SELECT run_uuid, name, status, start_time, experiment_id FROM runs "
                           f"WHERE run_uuid IN ({marks}) AND lifecycle_stage = 'active'", run_ids)
        if len(rows) != len(run_ids):
            raise Defer()  # unknown or deleted: the public API words the error
        order = {run_id: i for i, run_id in enumerate(run_ids)}
        runs = self._runs(rows, f"run_uuid IN ({marks})", run_ids)
        return sorted(runs, key=lambda run: order[run.run_id])

    def _runs(self, rows: list[tuple], where: str, args: Sequence) -> list[RawRun]:
        runs = {run_id: RawRun(run_id=run_id, run_name=name or run_id, status=status, start_time_ms=start,
                               params={}, tags={}, latest={}, experiment_id=str(experiment))
                for run_id, name, status, start, experiment in rows}
        for run_id, key, value in self._query(f"SELECT run_uuid, key, value FROM tags WHERE {where}", args):
            runs[run_id].tags[key] = value
        for run_id, key, value in self._query(f"SELECT run_uuid, key, value FROM params WHERE {where}", args):
            runs[run_id].params[key] = value
        for run_id, key, value, is_nan in self._query(
                f"SELECT run_uuid, key, value, is_nan FROM latest_metrics WHERE {where}", args):
            runs[run_id].latest[key] = math.nan if is_nan else value
        return list(runs.values())

    def points(self, wanted: Mapping[str, Iterable[str]]) -> Points:
        """Every row of the wanted keys, grouped: over the whole experiment when one was listed (the primary key
        starts with the metric key, so this reads one index range per key), else per batch of run ids."""
        wanted = {run_id: set(keys) for run_id, keys in wanted.items()}
        keys = sorted(set().union(*wanted.values())) if wanted else []
        if not keys:
            return {}
        marks = ",".join("?" * len(keys))
        columns = "SELECT run_uuid, key, step, timestamp, value, is_nan FROM metrics"
        if getattr(self, "experiment", None) is not None:
            queries = [(f"{columns} WHERE key IN ({marks}) AND run_uuid IN ({self._ACTIVE})",
                        [*keys, self.experiment])]
        else:
            run_ids = list(wanted)
            queries = [(f"{columns} WHERE key IN ({marks}) AND run_uuid IN ({','.join('?' * len(batch))})",
                        [*keys, *batch]) for batch in (run_ids[i:i + SQL_BATCH]
                                                      for i in range(0, len(run_ids), SQL_BATCH))]
        out: Points = {run_id: {} for run_id in wanted}
        nan = math.nan
        for sql, args in queries:
            for run_id, key, step, ts, value, is_nan in self._query(sql, args):
                if key in wanted.get(run_id, ()):
                    # MLflow stores NaN as value 0 with is_nan set (and +/-inf as +/-1.8e308, normalised later).
                    out[run_id].setdefault(key, []).append((ts, step, nan if is_nan else value))
        return out
