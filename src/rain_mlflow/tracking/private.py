"""Every use of MLflow internals in the code, in one module: no public API does these things.

pyproject pins MLflow to the minor version tested (`mlflow>=3.17.2,<3.18`) because of them. Before lifting the
pin, check each function here against the new version (the tests named below exercise them); docs/architecture.md
lists these together with the internals used outside the code (MLflow's sqlite schema, the UI's bulk endpoint).

MLflow is imported inside each function: `compare` imports this module and must start without MLflow.
"""

from __future__ import annotations

from typing import Any


def forget_active_run(run_id: str) -> None:
    """Drop the run from MLflow's active-run stack without a write and stop its system-metrics thread (the store
    did not answer, or the outbox ends the run). `mlflow.end_run` would first try the store again.
    Internals: `fluent._active_run_stack`, `fluent.run_id_to_system_metrics_monitor` (test_failures' store-dies
    test, test_outages)."""
    from mlflow.tracking import fluent

    pop_active_run(run_id)
    monitor = getattr(fluent, "run_id_to_system_metrics_monitor", {}).pop(run_id, None)
    if monitor is not None:
        try:
            monitor.finish()
        except Exception:  # noqa: BLE001 - best effort on a failure path
            pass


def pop_active_run(run_id: str) -> None:
    """Remove `run_id` from the top of MLflow's active-run stack, leaving the run as it is in the store.
    Internal: `fluent._active_run_stack`."""
    from mlflow.tracking import fluent

    stack = fluent._active_run_stack.get()
    if stack and stack[-1].info.run_id == run_id:
        stack.pop()


def tracking_store(client: Any) -> Any:
    """The store object behind an `MlflowClient` (its SQL session, its host credentials), or None.
    Internal: `MlflowClient._tracking_client.store` (test_compare's fast-reader tests)."""
    return getattr(getattr(client, "_tracking_client", None), "store", None)


def sql_metric_model() -> Any:
    """MLflow's SQLAlchemy model of the `metrics` table (raises ImportError when it moved).
    Internal: `mlflow.store.tracking.dbmodels.models.SqlMetric`."""
    from mlflow.store.tracking.dbmodels.models import SqlMetric

    return SqlMetric


def http_request() -> Any:
    """MLflow's authenticated HTTP helper, which retries like every MLflow request (raises ImportError when it
    moved). Internal: `mlflow.utils.rest_utils.http_request`."""
    from mlflow.utils.rest_utils import http_request as request

    return request
