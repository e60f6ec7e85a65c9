"""`rain-mlflow import-log`: OpenLTM `run.py` classification logs become FINISHED MLflow runs that `compare` reads.

Both spellings are read: the one OpenLTM prints (`Epoch: 3 cost time: 860.1`, `Epoch: 3, Steps: 217 | Vali Loss:
0.0372 Test Loss: 0.0421`, optionally with `Train Loss:`) and the one the seed notes quote (`Epoch 3 cost time:
860.1 (14.33 min)`, `Vali Loss: 0.0372419, Test Loss: 0.0420861`), plus the classifier's lines (`Val Accuracy:
75.42% (4544/6025)`, `Test Accuracy: ...`, `[TRAIN] Class distribution: No Rain=9657, Rain=18462`,
`EarlyStopping counter: 2 out of 8`) and VRAM lines (`GPU memory: 6.1 GB`, `VRAM peak: 6144 MB`, ...).

A line belongs to the epoch of the last `Epoch` line before it. Nothing is guessed: a line that looks like a
metric (an epoch, loss, accuracy or memory followed by a number, or a class distribution) but matches no
pattern, a metric line before the first epoch, a second value for a metric an epoch already has, or an accuracy
whose percentage disagrees with its counts is counted as unreadable and reported with its line number. Known progress
lines (`iters:`, `speed:`, `Validation loss decreased`, ...) and lines about nothing above are skipped.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rain_mlflow.diagnostics.history import RunHistory
from rain_mlflow.diagnostics.rules import RULES, diagnose, diagnosis_tag
from rain_mlflow.diagnostics.thresholds import Thresholds
from rain_mlflow.errors import UserError
from rain_mlflow.tracking.experiments import connect
from rain_mlflow.tracking.runs import runs_with_tag
from rain_mlflow.tracking.tracker import Tracker

NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf(?:inity)?)"
DIGEST_TAG = "rain.import.digest"
_I = re.IGNORECASE

EPOCH_TIME = re.compile(rf"^Epoch:?\s+(\d+),?\s+cost time:\s*({NUM})(?:\s*\([^)]*\))?$", _I)
OPENLTM_LOSSES = re.compile(rf"^Epoch:?\s+(\d+),\s*Steps:\s*\d+\s*\|\s*(?:Train Loss:\s*({NUM})\s+)?"
                            rf"Vali Loss:\s*({NUM})\s+Test Loss:?\s*({NUM})$", _I)
SEED_LOSSES = re.compile(rf"^Vali Loss:\s*({NUM}),?\s+Test Loss:\s*({NUM})$", _I)
ACCURACY = re.compile(rf"^(Val|Vali|Validation|Test) Accuracy:\s*({NUM})%(?:\s*\((\d+)\s*/\s*(\d+)\))?$", _I)
CLASSES = re.compile(r"^\[(TRAIN|VAL|TEST)\]\s+Class distribution:\s*No Rain=(\d+),\s*Rain=(\d+)$", _I)
EARLY_STOPPING = re.compile(r"^EarlyStopping counter:\s*(\d+)\s+out of\s+(\d+)$", _I)
VRAM = re.compile(rf"^(?:VRAM|GPU memory|Max memory allocated|Peak (?:GPU )?memory)[^:]*:\s*({NUM})\s*"
                  rf"(GB|GiB|MB|MiB)\b", _I)
PROGRESS = re.compile(r"^(?:iters:|speed:|Validation loss decreased|Updating learning rate|lr = |next learning "
                      r"rate|Early stopping$|Saving model|loading model|>{3,}|.*Skipping batch \d+ due to NaN)", _I)
# A metric name followed by a number (`Accuracy: 76.09%`, `Epoch: 1 | loss`): not `train_epochs=30`.
LOOKS_LIKE_A_METRIC = re.compile(r"class distribution|\b(?:epoch|loss|accuracy|acc|cost time|vram|memory)\b"
                                 r"\s*[:=]?\s*(?:[-+]?\d|nan\b|inf)", _I)


@dataclass
class ParsedLog:
    """What one log says: per-epoch metrics (our names), run params and the lines it could not read."""

    path: Path
    digest: str
    epochs: dict[int, dict[str, float]] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    unreadable: list[tuple[int, str, str]] = field(default_factory=list)  # (line number, why, text)
    read_lines: int = 0
    vram_lines: int = 0

    def summary(self) -> str:
        shown = "; ".join(f"line {n}: {why}: {text[:80]!r}" for n, why, text in self.unreadable[:5])
        more = f" (and {len(self.unreadable) - 5} more)" if len(self.unreadable) > 5 else ""
        return (f"{self.path.name}: {len(self.epochs)} epochs from {self.read_lines} lines; "
                f"{len(self.unreadable)} unreadable" + (f": {shown}{more}" if shown else ""))


def parse_log(path: str | Path) -> ParsedLog:
    """Read one log (module docstring); a missing, unreadable or epoch-less file is a UserError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"log file {str(path)!r} cannot be read: {exc.strerror or exc}") from None
    log = ParsedLog(path=path, digest=hashlib.sha256(data).hexdigest())
    epoch = None
    for number, raw in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        line = raw.rsplit("\r", 1)[-1].strip()  # a progress bar rewrites its line with \r: keep the last state
        if not line or PROGRESS.match(line):
            continue
        kind, value = _read_line(log, line, epoch)
        if kind == "unreadable":
            log.unreadable.append((number, value, line))
        elif kind != "other":
            log.read_lines += 1
            epoch = value if kind == "epoch" else epoch
    if not log.epochs:
        raise UserError(f"log file {str(path)!r} must hold OpenLTM epoch lines (such as 'Epoch: 1 cost time: "
                        f"860.1'); got none ({len(log.unreadable)} lines unreadable)")
    return log


def _read_line(log: ParsedLog, line: str, epoch: int | None) -> tuple[str, Any]:
    """Record one line: ("epoch", the new current epoch), ("read", None), ("unreadable", why) or ("other", None)."""
    def outcome(why: str | None, new_epoch: int | None = None) -> tuple[str, Any]:
        if why:
            return "unreadable", why
        return ("epoch", new_epoch) if new_epoch is not None else ("read", None)

    if m := EPOCH_TIME.match(line):
        return outcome(_put(log, int(m[1]), {"epoch_time_s": float(m[2])}), int(m[1]))
    if m := OPENLTM_LOSSES.match(line):
        values = {"train_loss": m[2], "val_loss": m[3], "test_loss": m[4]}
        return outcome(_put(log, int(m[1]), {k: float(v) for k, v in values.items() if v is not None}), int(m[1]))
    if m := CLASSES.match(line):
        split = m[1].lower()
        return outcome(_put_params(log, {f"no_rain_{split}": int(m[2]), f"rain_{split}": int(m[3])}))
    if m := SEED_LOSSES.match(line):
        return outcome(_put(log, epoch, {"val_loss": float(m[1]), "test_loss": float(m[2])}))
    if m := ACCURACY.match(line):
        split = "test" if m[1].lower() == "test" else "val"
        if m[3] is None:
            return outcome(_put(log, epoch, {f"{split}_accuracy": float(m[2]) / 100}))
        correct, total = int(m[3]), int(m[4])
        if total == 0 or abs(100 * correct / total - float(m[2])) > 0.006:  # printed with 2 decimals
            return outcome(f"{m[2]}% disagrees with {correct}/{total}")
        return outcome(_put(log, epoch, {f"{split}_accuracy": correct / total, f"{split}_windows": float(total)}))
    if m := EARLY_STOPPING.match(line):
        return outcome(_put(log, epoch, {"early_stopping_counter": float(m[1])})
                       or _put_params(log, {"patience": int(m[2])}))
    if m := VRAM.match(line):
        if epoch is None:
            return outcome("a metric before the first epoch line")
        log.vram_lines += 1
        gb = float(m[1]) / (1024 if m[2].lower().startswith("m") else 1)
        current = log.epochs.setdefault(epoch, {})
        current["vram_peak_gb"] = max(gb, current.get("vram_peak_gb", -math.inf))  # the epoch's peak
        return outcome(None)
    if LOOKS_LIKE_A_METRIC.search(line):
        return outcome("no known pattern")
    return "other", None  # arguments, model summary...: about nothing compare reads


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _put(log: ParsedLog, epoch: int | None, values: dict[str, float]) -> str | None:
    """Store a line's values at `epoch`, all or none; why not, when it cannot."""
    if epoch is None:
        return "a metric before the first epoch line"
    current = log.epochs.get(epoch, {})
    for name, value in values.items():
        if name in current and not _same(current[name], value):
            return f"a second {name} for epoch {epoch}"
    log.epochs.setdefault(epoch, {}).update(values)
    return None


def _put_params(log: ParsedLog, values: dict[str, int]) -> str | None:
    clash = [k for k, v in values.items() if k in log.params and log.params[k] != v]
    if clash:
        return f"a second, different {clash[0]}"
    log.params.update(values)
    return None


def positive_number(option: str, text: str | float | None) -> float | None:
    """An optional option such as --vram-budget-gb: '' or None -> None; otherwise a number > 0."""
    if text is None or not str(text).strip():
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"{option} must be a number > 0 (GB); got {text!r}")
    return value


# ---- the command: one FINISHED run per log -----------------------------------------------------------------------

def import_logs(paths: list[str], *, experiment: str | None = None, preset: str | None = None,
                run_name: str | None = None, vram_budget_gb: str | float | None = None,
                vram_peak_gb: str | float | None = None) -> list[dict[str, Any]]:
    """Import each log as a run of `experiment` (module docstring); a log imported before is left alone. One
    result per log, with the `line` the command prints for it.

    Every file and option is checked before anything is written, so a user error leaves the store unchanged.
    """

    paths = [p for p in paths if str(p).strip()]
    if not paths:
        raise UserError("import-log needs at least one log file; got none")
    if run_name and len(paths) > 1:
        raise UserError(f"--run-name must name a single imported log; got {len(paths)} log files")
    budget = positive_number("--vram-budget-gb", vram_budget_gb)
    peak = positive_number("--vram-peak-gb", vram_peak_gb)
    logs = list({log.digest: log for log in map(parse_log, paths)}.values())  # the same file twice: once
    for log in logs:
        if peak is not None and log.vram_lines:
            raise UserError(f"--vram-peak-gb must be left out for a log that prints its VRAM; got {peak:g} for "
                            f"{log.path.name}, which has {log.vram_lines} VRAM lines")
    experiment_id = connect(experiment)
    launched = os.environ.get("MLFLOW_RUN_ID")  # under `mlflow run`: that run holds the imports as children
    with Tracker.start("import-log", run_name="import-log") if launched else nullcontext():
        return [_import_one(experiment_id, log, preset, run_name, budget, peak) for log in logs]


def _import_one(experiment_id: str, log: ParsedLog, preset: str | None, run_name: str | None,
                budget: float | None, peak: float | None) -> dict[str, Any]:
    existing = runs_with_tag(experiment_id, DIGEST_TAG, log.digest)
    if existing:
        return {"log": str(log.path), "run_id": existing[0], "imported": False,
                "line": f"{log.path.name}: already imported as run {existing[0]}; nothing written (delete that run "
                        "to import the log again with other options)"}
    epochs = {epoch: dict(values) for epoch, values in sorted(log.epochs.items())}
    if peak is not None:
        for values in epochs.values():
            values["vram_peak_gb"] = peak
    params: dict[str, Any] = {**log.params, "source_log": log.path.name}
    for split in ("train", "val", "test"):
        rain, dry = log.params.get(f"rain_{split}"), log.params.get(f"no_rain_{split}")
        if rain is not None and dry is not None and rain + dry:
            params[f"majority_share_{split}"] = round(max(rain, dry) / (rain + dry), 4)
    if budget is not None:
        params["vram_budget_gb"] = budget
    tags = {DIGEST_TAG: log.digest, "rain.imported_from": log.path.name, "rain.import.format": "openltm",
            "rain.import.unreadable_lines": str(len(log.unreadable)), **({"preset": preset} if preset else {})}
    with Tracker.start("import", run_name=run_name or log.path.stem, tags=tags) as tracker:
        tracker.log_params(params)
        for epoch, values in epochs.items():
            tracker.log_metrics(values, step=epoch)
        tracker.log_artifact(log.path, "logs")
        tracker.log_dict({"log": log.path.name, "sha256": log.digest, "epochs": len(epochs),
                          "read_lines": log.read_lines, "vram_lines": log.vram_lines,
                          "unreadable": [{"line": n, "why": why, "text": text} for n, why, text in log.unreadable]},
                         "import_report.json")
        names = sorted({name for values in epochs.values() for name in values})
        history = RunHistory(run_id=tracker.run_id, run_name=run_name or log.path.stem, status="FINISHED",
                             params={k: str(v) for k, v in params.items()},
                             metrics={n: {e: v[n] for e, v in epochs.items() if n in v} for n in names})
        findings = diagnose(history, Thresholds(), only=[rule for rule in RULES if rule != "dead_run"])
        tracker.set_diagnosis(findings, Thresholds())
        tracker.set_note(f"Imported from the OpenLTM log {log.path.name}: {len(epochs)} epochs, "
                         f"{len(log.unreadable)} unreadable lines; diagnosis: {diagnosis_tag(findings)}.")
        run_id = tracker.run_id
    return {"log": str(log.path), "run_id": run_id, "imported": True, "flags": sorted(f.flag for f in findings),
            "unreadable": len(log.unreadable),
            "line": f"imported {log.summary()} as run {run_id}; diagnosis: {diagnosis_tag(findings)}"}
