"""Links into the MLflow UI, always in its "Model training" view. Pure string building: no MLflow calls.

MLflow 3.17 opens an experiment on its GenAI overview; the page parameter `workflowType=machine_learning` selects
the "Model training" view (runs table, charts, registry), so every link printed here carries it. The UI uses a
hash router: `#/experiments/<id>/runs` (`compareRunsMode=CHART`: the chart view, `searchFilter=`: which runs),
`#/experiments/<id>/runs/<run_id>`, `#/compare-runs?runs=[...]&experiments=[...]` (JSON arrays, URL-encoded) and
`#/models/<name>`.

The experiment link also names the training view that `experiments.ensure_training_view` stores on the experiment
(`viewStateShareKey`, MLflow's "shared view"): the runs table then opens with `val_accuracy`, `val_f1`, `val_mcc`,
`preset` and `diagnosis` as columns instead of only the run names.

A tracking server's URI is its UI. A database store (sqlite, PostgreSQL) has no UI until `mlflow ui` serves it,
by default at http://127.0.0.1:5000: links then point there, and `serve_hint` says how to start it.
"""

from __future__ import annotations

import json
from urllib.parse import quote, urlsplit, urlunsplit

MODEL_TRAINING_VIEW = "workflowType=machine_learning"
TRAINING_VIEW_KEY = "rain-training"  # the shared view's key
TRAINING_VIEW_TAG = "mlflow.sharedViewState." + TRAINING_VIEW_KEY  # the experiment tag that stores it
TRAINING_VIEW_COLUMNS = ("attributes.`Models`", "metrics.`val_accuracy`", "metrics.`val_f1`", "metrics.`val_mcc`",
                         "tags.`preset`", "tags.`diagnosis`")
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` / `mlflow server` listen by default
COMPARE_LIMIT = 20  # runs on one compare page: the UI's compare page slows down past ~100 runs


def training_view_state() -> str:
    """The shared view's value: the UI merges it over its defaults (only the columns differ)."""
    return json.dumps({"selectedColumns": list(TRAINING_VIEW_COLUMNS)})


def ui_root(tracking_uri: str) -> str | None:
    """The UI's address for this store: the server itself, `mlflow ui`'s default for a database, None for stores
    whose UI we cannot name (Databricks). Credentials in the URI are never part of the link."""
    parts = urlsplit(tracking_uri)
    if parts.scheme in ("http", "https"):
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    if tracking_uri.startswith("databricks"):  # `databricks` or `databricks://profile`
        return None
    return LOCAL_UI


def redact(uri: str) -> str:
    """The URI with its password replaced by `***` (a PostgreSQL URI carries one), for printing."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def serve_hint(tracking_uri: str) -> str | None:
    """How to start a UI for a database store; None for a server (it is its own UI)."""
    if urlsplit(tracking_uri).scheme in ("http", "https") or ui_root(tracking_uri) is None:
        return None
    return f"mlflow ui --backend-store-uri {redact(tracking_uri)}"


def _page(root: str, route: str) -> str:
    """`root` + `#` + route; an empty root gives a link relative to the current UI page (for run notes)."""
    return f"{root}/#{route}" if root else f"#{route}"


def experiment_url(root: str, experiment_id: str, training_view: bool = True) -> str:
    view = f"&viewStateShareKey={TRAINING_VIEW_KEY}" if training_view else ""
    return _page(root, f"/experiments/{experiment_id}/runs?{MODEL_TRAINING_VIEW}{view}")


def run_url(root: str, experiment_id: str, run_id: str) -> str:
    return _page(root, f"/experiments/{experiment_id}/runs/{run_id}?{MODEL_TRAINING_VIEW}")


def compare_url(root: str, experiment_ids: list[str], run_ids: list[str]) -> str:
    """The compare page of these runs (the first COMPARE_LIMIT of them)."""
    def encoded(values: list[str]) -> str:
        return quote(json.dumps(list(dict.fromkeys(values)), separators=(",", ":")), safe="")

    return _page(root, f"/compare-runs?runs={encoded(run_ids[:COMPARE_LIMIT])}"
                       f"&experiments={encoded(experiment_ids)}&{MODEL_TRAINING_VIEW}")


def charts_url(root: str, experiment_id: str, run_ids: list[str]) -> str:
    """The experiment's chart view (a line chart per metric over the epochs) showing only these runs."""
    ids = ", ".join(f"'{run_id}'" for run_id in dict.fromkeys(run_ids[:COMPARE_LIMIT]))
    search = quote(f"attributes.run_id IN ({ids})", safe="")
    return _page(root, f"/experiments/{experiment_id}/runs?{MODEL_TRAINING_VIEW}&compareRunsMode=CHART"
                       f"&searchFilter={search}")


def model_url(root: str, name: str, version: str | None = None) -> str:
    route = f"/models/{quote(name, safe='')}" + (f"/versions/{version}" if version else "")
    return _page(root, f"{route}?{MODEL_TRAINING_VIEW}")


def links_block(tracking_uri: str, links: list[tuple[str, str]]) -> str:
    """Printed lines: `MLflow UI:` then one `label  url` line per link (`links` hold routes made with an empty
    root; the store's UI root is put in front here), plus how to start the UI for a database store."""
    root = ui_root(tracking_uri)
    if root is None or not links:
        return ""
    width = max(len(label) for label, _ in links)
    lines = ["MLflow UI (Model training view):"]
    lines += [f"  {label:{width}}  {root}/{route}" for label, route in links]
    hint = serve_hint(tracking_uri)
    if hint:
        lines.append(f"  (start the UI first: {hint})")
    return "\n".join(lines) + "\n"
