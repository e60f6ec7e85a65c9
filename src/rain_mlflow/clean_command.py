"""The `clean` command: clean a record, write the cleaned CSV and the JSON report, track both in MLflow.

The rules themselves live in `data/clean.py`; this module only runs them, adds the window accounting (how many
windows of `--seq-len` steps each split keeps, what each feature's gaps cost) and writes / tracks the results.
"""

from __future__ import annotations

from pathlib import Path

from rain_mlflow.config import DataConfig
from rain_mlflow.data import accounting
from rain_mlflow.data.source import load_clean
from rain_mlflow.data.clean import summary_lines
from rain_mlflow.data.dataset import window_accounting
from rain_mlflow.data.io import write_csv_atomic, write_json_atomic
from rain_mlflow.data.timing import time_line, time_params, time_settings
from rain_mlflow.tracking.experiments import connect
from rain_mlflow.tracking.tracker import Tracker

CLEAN_SETTINGS = ("data", "date_col", "precip_col", "label_col", "features", "na_values", "freq", "max_fill",
                  "missing", "max_missing_fraction", "seq_len", "horizon", "rain_threshold", "window_stride",
                  "train_fraction", "val_fraction", "test_fraction")


def default_report_path(output: str) -> str:
    path = Path(output)
    return str(path.with_name(path.stem + ".report.json"))


def run_clean(cfg: DataConfig, output: str, report_path: str | None = None,
              experiment: str | None = None) -> dict:
    """Validate and clean first (nothing is written or tracked for unusable data), then write and track; the
    result, with the `lines` the command prints."""
    raw, result = load_clean(cfg)
    steps = cfg.in_steps(result.step)  # durations -> steps of the data's time step (errors before anything is written)
    report_path = report_path or default_report_path(output)
    report = {**result.report, "windows": window_accounting(result, steps), "output": str(Path(output).resolve()),
              "time_settings": time_settings(cfg, steps, result.step)}
    connect(experiment)
    with Tracker.start("clean", run_name="clean") as tracker:
        write_csv_atomic(result.frame, output)
        write_json_atomic(report, report_path)
        tracker.log_params({**{k: getattr(steps, k) for k in CLEAN_SETTINGS}, "resolved_max_fill": result.max_fill,
                            **time_params(report["time_settings"]), **accounting.flat(report["windows"])})
        digest = tracker.log_input(raw, source=result.report["source"], name="raw", context="raw")
        tracker.log_artifact(output, "cleaned")
        tracker.log_artifact(report_path, "cleaned")
        gaps, columns = report["gaps"], report["columns"].values()
        tracker.log_metrics({
            "rows_in": report["rows_in"], "steps": report["steps"], "duplicates_dropped": report["duplicates_dropped"],
            "gaps": gaps["count"], "gap_steps": gaps["missing_steps"], "features": len(report["features"]),
            "dropped_features": len(report["dropped_features"]),
            "missing_values": sum(c["missing"] for c in columns),
            "filled_values": sum(c["filled"] for c in columns),
            "missing_after_fill": sum(c["missing_after_fill"] for c in columns),
            **{f"windows_{name}": s["kept"] for name, s in report["windows"]["splits"].items()},
        }, step=0)
        lines = summary_lines(report) + [time_line(report["time_settings"])] + accounting.lines(report["windows"])
        tracker.set_note("Cleaned " + "; ".join(lines[:3]))
        tracker.set_tags({"data_digest": digest})
        run_id = tracker.run_id
    lines += [f"cleaned CSV: {output}", f"report:      {report_path}",
              f"MLflow run:  {run_id} (data digest {digest})"]
    return {"run_id": run_id, "output": output, "report": report_path, "digest": digest, "lines": lines}
