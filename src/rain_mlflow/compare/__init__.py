"""`rain-mlflow compare`: diagnose every run of an experiment that has a per-epoch history, whoever logged it.

- `histories`: which runs, under which metric names, at which epochs (pure; the reading rules).
- `reader`: `read_runs`, the one way runs and histories come out of MLflow (fast paths, public API behind them).
- `report`: `diagnose_runs` and the table / JSON / markdown renderers (pure).
- `figure`: `--report DIR` (report.md and curves.png).
- `command`: `run`, the command itself, and the tag writer.
Importing this package does not import MLflow.
"""

from rain_mlflow.compare.command import run, write_diagnosis_tags
from rain_mlflow.compare.histories import HISTORY_METRICS, OTHER_STEPS, ReadRun, parse_metric_map
from rain_mlflow.compare.reader import read_runs, tracking_uri
from rain_mlflow.compare.report import FORMATS, RunReport, diagnose_runs, render_json, render_markdown, render_table

__all__ = [
    "FORMATS", "HISTORY_METRICS", "OTHER_STEPS", "ReadRun", "RunReport", "diagnose_runs", "parse_metric_map",
    "read_runs", "render_json", "render_markdown", "render_table", "run", "tracking_uri", "write_diagnosis_tags",
]
