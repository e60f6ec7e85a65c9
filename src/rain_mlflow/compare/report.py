"""Diagnose read runs and render the comparison: a text table, JSON or markdown. Pure: no MLflow, no files."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from statistics import fmean
from typing import Any

from rain_mlflow.compare.histories import ReadRun
from rain_mlflow.config.choices import COMPARE_FORMATS
from rain_mlflow.diagnostics.history import RunHistory, is_finite
from rain_mlflow.diagnostics.rules import RULE_NEEDS, Finding, diagnose, diagnosis_tag, skipped
from rain_mlflow.diagnostics.tags import diagnosis_tags
from rain_mlflow.diagnostics.thresholds import Thresholds
from rain_mlflow.diagnostics.text import format_duration

FORMATS = COMPARE_FORMATS  # the renderers below, one per format

@dataclass(frozen=True)
class RunReport:
    """One run's diagnosis plus the numbers the table shows (None = not logged)."""

    history: RunHistory
    findings: tuple[Finding, ...]
    thresholds: Thresholds
    metric_map: dict[str, str]  # the run's own name -> ours, for the names that were mapped
    epochs_from: str
    skipped: dict[str, str]
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

    def tags(self) -> dict[str, str]:
        """The `diagnosis*` tags this diagnosis leaves on the run."""
        return diagnosis_tags(self.findings, self.thresholds, self.metric_map)

    def to_json(self) -> dict[str, Any]:
        h = self.history
        numbers = {f.name: _json_number(getattr(self, f.name)) for f in fields(self) if f.name in _NUMBERS}
        return {"run_id": h.run_id, "run_name": h.run_name, "preset": h.tags.get("preset"), "status": h.status,
                **numbers, "diagnosis": diagnosis_tag(self.findings), "flags": self.flags,
                "evidence": {finding.flag: finding.evidence for finding in self.findings},
                "skipped": self.skipped, "epochs_from": self.epochs_from, "metric_map": self.metric_map}


_NUMBERS = ("epochs", "best_epoch", "best_val_accuracy", "best_val_f1", "test_accuracy_at_best", "peak_vram_gb",
            "mean_epoch_time_s")
ThresholdsFor = Thresholds | Callable[[RunHistory], Thresholds]


def diagnose_runs(reads: Iterable[ReadRun], thresholds: ThresholdsFor, now_ms: int) -> list[RunReport]:
    """Diagnose every run with the same clock (and the same thresholds, or each run's own), and summarise it."""
    out = []
    for read in reads:
        h = read.history
        used = thresholds(h) if callable(thresholds) else thresholds
        out.append(_report(read, tuple(diagnose(h, used, now_ms)), used))
    return out


def _report(read: ReadRun, findings: tuple[Finding, ...], thresholds: Thresholds) -> RunReport:
    h = read.history
    best = _best_epoch(h)
    vram = [v for _, v in h.series("vram_peak_gb") if is_finite(v)]
    times = [v for _, v in h.series("epoch_time_s") if is_finite(v)]
    return RunReport(
        history=h, findings=findings, thresholds=thresholds, metric_map=read.metric_map,
        epochs_from=read.epochs_from, skipped=_skipped_with_hints(read), epochs=len(h.epochs()), best_epoch=best,
        best_val_accuracy=_summary_or_at(h, "best_val_accuracy", "val_accuracy", best),
        best_val_f1=_summary_or_at(h, "best_val_f1", "val_f1", best),
        test_accuracy_at_best=h.value_at("test_accuracy", best),
        peak_vram_gb=max(vram, default=None),
        mean_epoch_time_s=fmean(times) if times else None,
    )


def _skipped_with_hints(read: ReadRun) -> dict[str, str]:
    """rule -> missing metric; with a hint when a built-in metric map would read a metric the run has."""
    out = {}
    for rule, missing in skipped(read.history).items():
        hints = [read.hints[need] for group in RULE_NEEDS[rule] for need in group if need in read.hints]
        out[rule] = missing + (f" ({'; '.join(dict.fromkeys(hints))})" if hints else "")
    return out


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
EMPTY = "no run with a per-epoch val_accuracy or val_loss history found"


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
        return EMPTY + "\n"
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
        return f"_{EMPTY[0].upper()}{EMPTY[1:]}._\n"

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
