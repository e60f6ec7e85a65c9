"""The diagnosis rules: pure functions of a run's per-epoch history, no MLflow, no I/O.

Each rule is `(history, thresholds, now_ms) -> Finding | None` and is registered in `RULES` (flag name -> rule),
in the order of DESIGN.md's table. The same rules run live (the trainer, after every epoch) and offline
(`rain-mlflow compare`). A rule that lacks the epochs or metrics it needs returns None: missing data is not an
error and never a flag; `skipped` says which rules could not run for want of which metric. Why each threshold
is what it is: docs/diagnostics.md.

Units: accuracies and fractions are 0..1 and are printed as percentages; differences between accuracies are
printed in percentage points ("pts"); losses are printed with 4 significant digits; times are seconds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from statistics import fmean
from typing import Any

from rain_mlflow.diagnostics.history import RunHistory, is_finite, normalise
from rain_mlflow.diagnostics.text import at_epochs, format_duration, format_epochs, num, pct, pts
from rain_mlflow.diagnostics.thresholds import Thresholds
from rain_mlflow.errors import UserError

__all__ = ["RULES", "RULE_METRICS", "RULE_NEEDS", "Finding", "Thresholds", "diagnose", "diagnosis_tag",
           "format_duration", "format_epochs", "noise_floor", "skipped", "validate_flags"]

# Metrics are logged as floats: a gap printed as "5.00 pts" (0.75 - 0.70 = 0.05000000000000004) must not fire a
# "> 5 pts" rule. Every threshold comparison allows this much rounding noise.
_EPS = 1e-9


@dataclass(frozen=True)
class Finding:
    """One fired flag: a one-line `evidence` a person can check, the `epochs` involved and the raw `values`."""

    flag: str
    evidence: str
    epochs: tuple[int, ...]
    values: dict[str, Any]


Rule = Callable[[RunHistory, Thresholds, int], "Finding | None"]


def _finite_series(history: RunHistory, name: str) -> list[tuple[int, float]]:
    return [(epoch, value) for epoch, value in history.series(name) if is_finite(value)]


# ---- the noise floor: what an accuracy difference must exceed to be more than sampling noise -----------------

def noise_floor(z: float, *samples: tuple[float, int | None]) -> float | None:
    """z standard errors of an accuracy (one sample) or of a difference of two (two samples), each sample being
    (accuracy p, windows n): z * sqrt(sum of p (1 - p) / n). None when a window count is unknown: the rule then
    judges by its threshold alone, as it did before counts were logged."""
    counted = [(p, n) for p, n in samples if n is not None and n >= 1]
    if len(counted) < len(samples):
        return None
    return z * math.sqrt(sum(p * (1 - p) / n for p, n in counted))


def _floor_text(floor: float | None, z: float, windows: str, unknown: str) -> str:
    if floor is None:
        return f"no noise floor: {unknown} unknown"
    return f"noise floor {pts(floor)} = {z:g} SE at {windows}"


# ---- the rules --------------------------------------------------------------------------------------------------

def stalled(history: RunHistory, thresholds: Thresholds, now_ms: int) -> Finding | None:
    """`stalled_epochs` consecutive epochs whose val_accuracy all lie within the tolerance (max - min <= tol).

    The tolerance is max(stalled_tolerance, 1 / val_windows): accuracy over n windows moves in steps of 1/n, so a
    change of a single window is indistinguishable from no change at all. No binomial floor here: a model that
    does not change scores the same windows identically, so sampling noise cannot hide a stall, and widening the
    tolerance by the noise would call slow learners stalled.
    """
    points = _finite_series(history, "val_accuracy")
    need = thresholds.stalled_epochs
    n_val = history.eval_windows("val")
    one_window = 1 / n_val if n_val else None
    tolerance = max(thresholds.stalled_tolerance, one_window or 0.0)
    for start in range(len(points) - need + 1):
        end = start + need  # points[start:end] is the candidate stretch; grow it while it stays flat
        if not _flat(points[start:end], tolerance):
            continue
        while end < len(points) and _flat(points[start:end + 1], tolerance):
            end += 1
        stretch = points[start:end]
        values = [v for _, v in stretch]
        low, high = min(values), max(values)
        shown = pct(low) if pct(low) == pct(high) else f"{pct(low)}-{pct(high)}"
        window_note = f"one of {n_val} val windows = {pts(one_window)}" if one_window else "val_windows unknown"
        evidence = (f"val_accuracy {shown} at {at_epochs(e for e, _ in stretch)} "
                    f"(spread {pts(high - low)}; tolerance {pts(tolerance)}, {window_note}; "
                    f"threshold {need} epochs)")
        return Finding("stalled", evidence, tuple(e for e, _ in stretch),
                       {"val_accuracy": values, "spread": high - low, "tolerance": tolerance,
                        "windows_val": n_val, "threshold_epochs": need})
    return None


def _flat(stretch: list[tuple[int, float]], tolerance: float) -> bool:
    """Consecutive epoch numbers (no gap) and a value spread within the tolerance."""
    epochs = [e for e, _ in stretch]
    values = [v for _, v in stretch]
    return epochs[-1] - epochs[0] == len(epochs) - 1 and max(values) - min(values) <= tolerance + _EPS


def oscillating(history: RunHistory, thresholds: Thresholds, now_ms: int) -> Finding | None:
    """val_accuracy falls by more than `oscillation_drop` between consecutive epochs (a rise is healthy), and by
    more than the noise floor: `noise_z` binomial standard errors at the mean of the two accuracies and the
    epoch's val_windows."""
    points = _finite_series(history, "val_accuracy")
    drops = []  # (before, after, floor)
    for (e0, v0), (e1, v1) in zip(points, points[1:]):
        if v0 - v1 <= thresholds.oscillation_drop + _EPS:
            continue
        floor = noise_floor(thresholds.noise_z, ((v0 + v1) / 2, history.eval_windows("val", e1)))
        if floor is None or v0 - v1 > floor + _EPS:
            drops.append(((e0, v0), (e1, v1), floor))
    if not drops:
        return None
    (e0, v0), (e1, v1), floor = max(drops, key=lambda drop: drop[0][1] - drop[1][1])
    count = f"{len(drops)} such drop" + ("s" if len(drops) > 1 else "")
    n_val = history.eval_windows("val", e1)
    evidence = (f"val_accuracy fell {pts(v0 - v1)} from {pct(v0)} at epoch {e0} to {pct(v1)} at epoch {e1} "
                f"(threshold: a fall of more than {pts(thresholds.oscillation_drop)}; "
                f"{_floor_text(floor, thresholds.noise_z, f'{n_val} val windows', 'val_windows')}; {count})")
    epochs = tuple(sorted({e for before, after, _ in drops for e in (before[0], after[0])}))
    return Finding("oscillating", evidence, epochs,
                   {"drop": v0 - v1, "from_epoch": e0, "to_epoch": e1, "drops": len(drops),
                    "threshold": thresholds.oscillation_drop, "noise_floor": floor, "windows_val": n_val})


def val_test_divergence(history: RunHistory, thresholds: Thresholds, now_ms: int) -> Finding | None:
    """abs(val_accuracy - test_accuracy) > `divergence_gap` and > the noise floor (`noise_z` standard errors of
    a difference of two proportions, from val_windows and test_windows) at some epoch; the evidence names the
    worst one."""
    val = dict(_finite_series(history, "val_accuracy"))
    test = dict(_finite_series(history, "test_accuracy"))
    over = []  # (epoch, val, test, floor)
    for epoch in sorted(val.keys() & test.keys()):
        v, t = val[epoch], test[epoch]
        if abs(v - t) <= thresholds.divergence_gap + _EPS:
            continue
        floor = noise_floor(thresholds.noise_z, (v, history.eval_windows("val", epoch)),
                            (t, history.eval_windows("test", epoch)))
        if floor is None or abs(v - t) > floor + _EPS:
            over.append((epoch, v, t, floor))
    if not over:
        return None
    epoch, v, t, floor = max(over, key=lambda row: abs(row[1] - row[2]))
    epochs = tuple(row[0] for row in over)
    n_val, n_test = history.eval_windows("val", epoch), history.eval_windows("test", epoch)
    windows = f"{n_val} val / {n_test} test windows"
    evidence = (f"val_accuracy {pct(v)} vs test_accuracy {pct(t)} at epoch {epoch}: gap {pts(abs(v - t))} "
                f"> {pts(thresholds.divergence_gap)} "
                f"({_floor_text(floor, thresholds.noise_z, windows, 'val_windows or test_windows')}; "
                f"over at {at_epochs(epochs)})")
    return Finding("val_test_divergence", evidence, epochs,
                   {"epoch": epoch, "val_accuracy": v, "test_accuracy": t, "gap": abs(v - t),
                    "threshold": thresholds.divergence_gap, "noise_floor": floor, "windows_val": n_val,
                    "windows_test": n_test})


def val_loss_not_improving(history: RunHistory, thresholds: Thresholds, now_ms: int) -> Finding | None:
    """The lowest val_loss is at the first epoch and at least `not_improving_min_later_epochs` later ones exist."""
    points = _finite_series(history, "val_loss")
    if len(points) < 1 + thresholds.not_improving_min_later_epochs:
        return None
    first_epoch, first = points[0]
    best_epoch, _ = min(points, key=lambda point: point[1])  # min() keeps the first of equal values
    if best_epoch != first_epoch:
        return None
    later = points[1:]
    best_later_epoch, best_later = min(later, key=lambda point: point[1])
    evidence = (f"val_loss lowest at epoch {first_epoch} ({num(first)}); none of the {len(later)} later epochs "
                f"({format_epochs(e for e, _ in later)}) beat it (best of them {num(best_later)} at epoch "
                f"{best_later_epoch}; threshold: at least {thresholds.not_improving_min_later_epochs} later epochs)")
    return Finding("val_loss_not_improving", evidence, tuple(e for e, _ in points),
                   {"first_val_loss": first, "best_later_val_loss": best_later, "later_epochs": len(later),
                    "threshold_later_epochs": thresholds.not_improving_min_later_epochs})


def vram_over_budget(history: RunHistory, thresholds: Thresholds, now_ms: int) -> Finding | None:
    """The largest per-epoch `vram_peak_gb` exceeds the run's `vram_budget_gb` param (CPU runs log no VRAM)."""
    budget = history.param_float("vram_budget_gb")
    points = _finite_series(history, "vram_peak_gb")
    if budget is None or not is_finite(budget) or not points:
        return None
    peak_epoch, peak = max(points, key=lambda point: point[1])
    if peak <= budget:
        return None
    over = tuple(e for e, v in points if v > budget)
    evidence = (f"vram_peak_gb {peak:.2f} GB at epoch {peak_epoch} > budget {budget:.2f} GB "
                f"(param vram_budget_gb; over at {at_epochs(over)})")
    return Finding("vram_over_budget", evidence, over, {"peak_gb": peak, "epoch": peak_epoch, "budget_gb": budget})


def class_collapse(history: RunHistory, thresholds: Thresholds, now_ms: int) -> Finding | None:
    """At the final epoch the model predicts (almost) only one class: val_pred_rain_fraction >= f or <= 1 - f."""
    points = _finite_series(history, "val_pred_rain_fraction")
    if not points:
        return None
    epoch, fraction = points[-1]
    high, low = thresholds.collapse_fraction, 1 - thresholds.collapse_fraction
    if fraction >= high - _EPS:
        what = "rain for almost every window"
    elif fraction <= low + _EPS:
        what = "no rain for almost every window"
    else:
        return None
    evidence = (f"val_pred_rain_fraction {pct(fraction)} at final epoch {epoch}: predicts {what} "
                f"(threshold >= {pct(high)} or <= {pct(low)})")
    return Finding("class_collapse", evidence, (epoch,), {"val_pred_rain_fraction": fraction, "threshold": high})


def non_finite_loss(history: RunHistory, thresholds: Thresholds, now_ms: int) -> Finding | None:
    """Any NaN or +/-inf (including MLflow's 1.8e308 stand-in) in train_loss or val_loss."""
    bad = [(epoch, order, name, value)
           for order, name in enumerate(("train_loss", "val_loss"))
           for epoch, value in history.series(name) if not is_finite(value)]
    if not bad:
        return None
    epoch, _, name, value = min(bad, key=lambda row: row[:2])  # first epoch; train_loss before val_loss
    epochs = tuple(sorted({row[0] for row in bad}))
    evidence = (f"{name} is {num(value)} at epoch {epoch} (first non-finite loss; {len(bad)} non-finite "
                f"value{'s' if len(bad) > 1 else ''} in train_loss/val_loss at {at_epochs(epochs)})")
    return Finding("non_finite_loss", evidence, epochs,
                   {"metric": name, "epoch": epoch, "value": str(normalise(value)), "count": len(bad)})


def dead_run(history: RunHistory, thresholds: Thresholds, now_ms: int) -> Finding | None:
    """Status RUNNING but no epoch logged for longer than max(dead_factor x mean epoch time, dead_min_seconds).

    A RUNNING run with no epoch yet is not judged: its first epoch may legitimately take hours.
    """
    if history.status != "RUNNING" or history.last_update_ms is None:
        return None
    times = [v for _, v in _finite_series(history, "epoch_time_s") if v > 0]
    mean_epoch_s = fmean(times) if times else None
    limit_s = thresholds.dead_min_seconds
    if mean_epoch_s is not None:
        limit_s = max(thresholds.dead_factor * mean_epoch_s, thresholds.dead_min_seconds)
    silent_s = (now_ms - history.last_update_ms) / 1000
    if silent_s <= limit_s:
        return None
    epochs = history.epochs()
    last = f"the last epoch ({epochs[-1]})" if epochs else "the last epoch metric"
    basis = (f"max({thresholds.dead_factor:g} x mean epoch_time_s {format_duration(mean_epoch_s)}, "
             f"{format_duration(thresholds.dead_min_seconds)})" if mean_epoch_s is not None
             else "dead_min_seconds; no epoch_time_s logged")
    evidence = (f"status RUNNING but {last} was logged {format_duration(silent_s)} ago "
                f"(limit {format_duration(limit_s)} = {basis})")
    return Finding("dead_run", evidence, tuple(epochs[-1:]),
                   {"silent_s": silent_s, "limit_s": limit_s, "mean_epoch_time_s": mean_epoch_s})


RULES: dict[str, Rule] = {
    "stalled": stalled,
    "oscillating": oscillating,
    "val_test_divergence": val_test_divergence,
    "val_loss_not_improving": val_loss_not_improving,
    "vram_over_budget": vram_over_budget,
    "class_collapse": class_collapse,
    "non_finite_loss": non_finite_loss,
    "dead_run": dead_run,
}

# What each rule needs before it can judge: a list of requirements, each met by any one of its alternatives
# (a per-epoch metric, or `param <name>`). `dead_run` needs only the status and the metric timestamps.
RULE_NEEDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "stalled": (("val_accuracy",),),
    "oscillating": (("val_accuracy",),),
    "val_test_divergence": (("val_accuracy",), ("test_accuracy",)),
    "val_loss_not_improving": (("val_loss",),),
    "vram_over_budget": (("vram_peak_gb",), ("param vram_budget_gb",)),
    "class_collapse": (("val_pred_rain_fraction",),),
    "non_finite_loss": (("train_loss", "val_loss"),),
    "dead_run": (),
}

# The per-epoch metrics the rules read; the offline reader fetches histories for these (plus what it displays).
RULE_METRICS: tuple[str, ...] = (
    "val_accuracy", "test_accuracy", "val_loss", "train_loss", "vram_peak_gb", "val_pred_rain_fraction",
    "epoch_time_s",
)


def _has(history: RunHistory, need: str) -> bool:
    if need.startswith("param "):
        return history.param_float(need.removeprefix("param ")) is not None
    return bool(history.metrics.get(need))


def skipped(history: RunHistory, only: Iterable[str] | None = None) -> dict[str, str]:
    """rule -> what it lacked (e.g. `test_accuracy`, `vram_peak_gb, param vram_budget_gb`), for every rule that
    could not judge this run for want of data."""
    out = {}
    for name in RULES if only is None else validate_flags(only):
        missing = [" or ".join(alternatives) for alternatives in RULE_NEEDS[name]
                   if not any(_has(history, need) for need in alternatives)]
        if missing:
            out[name] = ", ".join(missing)
    return out


def validate_flags(names: Iterable[str]) -> tuple[str, ...]:
    """Flag names as given (items may be comma-separated), checked against RULES; unknown -> UserError."""
    flags = tuple(part.strip() for name in names for part in name.split(",") if part.strip())
    for flag in flags:
        if flag not in RULES:
            raise UserError(f"unknown diagnosis flag {flag!r}; allowed: {', '.join(RULES)}")
    return flags


def diagnose(history: RunHistory, thresholds: Thresholds = Thresholds(), now_ms: int | None = None,
             only: Iterable[str] | None = None) -> list[Finding]:
    """Run every rule (or only the named ones) in RULES order; `now_ms` defaults to the current time.

    A finding whose metrics the reader did not take verbatim (`history.notes`, e.g. percent read as /100) ends
    its evidence with that note, so a person checking the numbers sees how they were read.
    """
    wanted = set(RULES) if only is None else set(validate_flags(only))
    now = int(time.time() * 1000) if now_ms is None else now_ms
    findings = []
    for name in RULES:
        finding = RULES[name](history, thresholds, now) if name in wanted else None
        if finding is not None:
            used = (need for alternatives in RULE_NEEDS[name] for need in alternatives)
            notes = [history.notes[metric] for metric in dict.fromkeys(used) if metric in history.notes]
            if notes:
                finding = replace(finding, evidence=f"{finding.evidence} [{'; '.join(notes)}]")
            findings.append(finding)
    return findings


def diagnosis_tag(findings: Iterable[Finding]) -> str:
    """The `diagnosis` tag value: `ok`, or the sorted comma-separated flags."""
    flags = sorted({finding.flag for finding in findings})
    return ",".join(flags) if flags else "ok"
