"""The diagnosis rules: pure functions of a run's per-epoch history, no MLflow, no I/O.

Each rule is `(history, thresholds, now_ms) -> Finding | None` and is registered in `RULES` (flag name -> rule),
in the order of DESIGN.md's table. The same rules run live (the trainer, after every epoch) and offline
(`rain-mlflow compare`). A rule that lacks the epochs or metrics it needs returns None: missing data is not an
error and never a flag. Why each threshold is what it is: docs/diagnostics.md.

Units: accuracies and fractions are 0..1 and are printed as percentages; differences between accuracies are
printed in percentage points ("pts"); losses are printed with 4 significant digits; times are seconds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from statistics import fmean
from typing import Any

from rain_mlflow.diagnostics.history import RunHistory, is_finite, normalise
from rain_mlflow.errors import ConfigError, UserError

# Metrics are logged as floats: a gap printed as "5.00 pts" (0.75 - 0.70 = 0.05000000000000004) must not fire a
# "> 5 pts" rule. Every threshold comparison allows this much rounding noise.
_EPS = 1e-9


@dataclass(frozen=True)
class Thresholds:
    """Every number the rules use; defaults are DESIGN.md's (the seed's "Señales de problemas")."""

    stalled_epochs: int = 3
    """`stalled`: number of consecutive epochs whose val_accuracy must stay within the tolerance."""
    stalled_tolerance: float = 0.001
    """`stalled`: largest val_accuracy spread (fraction) still called unchanged; raised to 1 / windows_val."""
    oscillation_drop: float = 0.05
    """`oscillating`: a val_accuracy fall (fraction) between consecutive epochs larger than this fires."""
    divergence_gap: float = 0.05
    """`val_test_divergence`: abs(val_accuracy - test_accuracy) (fraction) larger than this fires."""
    not_improving_min_later_epochs: int = 2
    """`val_loss_not_improving`: epochs after the first that must exist before the rule judges."""
    collapse_fraction: float = 0.99
    """`class_collapse`: final val_pred_rain_fraction >= this (all rain) or <= 1 - this (no rain) fires."""
    dead_factor: float = 3.0
    """`dead_run`: silence longer than this many mean epoch times (epoch_time_s) means dead ..."""
    dead_min_seconds: float = 600.0
    """`dead_run`: ... but never less than this many seconds (short epochs, slow tracking servers)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            kind, allowed, rule = _THRESHOLD_RULES[f.name]
            value = getattr(self, f.name)
            if not _is_kind(value, kind) or not rule(value):
                raise ConfigError(f"Thresholds.{f.name} must be {allowed}; got {value!r}")


def _is_kind(value: Any, kind: type) -> bool:
    if isinstance(value, bool):
        return False
    if kind is int:
        return isinstance(value, int)
    return isinstance(value, (int, float)) and math.isfinite(value)


# field -> (type, what is allowed (for the message), check). The ranges exclude values that make a rule fire on
# every run (stalled_epochs 1, collapse_fraction <= 0.5) or never be able to fire (drops or gaps >= 1).
_THRESHOLD_RULES: dict[str, tuple[type, str, Callable[[Any], bool]]] = {
    "stalled_epochs": (int, "an integer >= 2", lambda v: v >= 2),
    "stalled_tolerance": (float, "a number in [0, 1)", lambda v: 0 <= v < 1),
    "oscillation_drop": (float, "a number in (0, 1)", lambda v: 0 < v < 1),
    "divergence_gap": (float, "a number in (0, 1)", lambda v: 0 < v < 1),
    "not_improving_min_later_epochs": (int, "an integer >= 1", lambda v: v >= 1),
    "collapse_fraction": (float, "a number in (0.5, 1]", lambda v: 0.5 < v <= 1),
    "dead_factor": (float, "a number > 0", lambda v: v > 0),
    "dead_min_seconds": (float, "a number >= 0", lambda v: v >= 0),
}


@dataclass(frozen=True)
class Finding:
    """One fired flag: a one-line `evidence` a person can check, the `epochs` involved and the raw `values`."""

    flag: str
    evidence: str
    epochs: tuple[int, ...]
    values: dict[str, Any]


Rule = Callable[[RunHistory, Thresholds, int], "Finding | None"]


# ---- formatting: one style for every evidence line --------------------------------------------------------------

def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def _pts(diff: float) -> str:
    return f"{100 * diff:.2f} pts"


def _num(value: float) -> str:
    """Losses and other raw values: 4 significant digits; nan / inf spelled out."""
    value = normalise(value)
    return str(value) if not math.isfinite(value) else f"{value:.4g}"


def format_duration(seconds: float | None) -> str:
    """Seconds for a person: '0.5 s', '42 s', '14.4 min', '32.5 h' ('' when unknown)."""
    if seconds is None or not math.isfinite(seconds):
        return ""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def format_epochs(epochs: Iterable[int]) -> str:
    """`[1, 2, 3, 5]` -> `1-3, 5`."""
    ordered = sorted(set(epochs))
    parts: list[str] = []
    start = prev = None
    for epoch in ordered + [None]:
        if start is not None and (epoch is None or epoch != prev + 1):
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = None
        if epoch is not None and start is None:
            start = epoch
        prev = epoch
    return ", ".join(parts)


def _at_epochs(epochs: Iterable[int]) -> str:
    """`epoch 3` or `epochs 1-3, 5`."""
    listed = sorted(set(epochs))
    return f"epoch{'s' if len(listed) > 1 else ''} {format_epochs(listed)}"


def _finite_series(history: RunHistory, name: str) -> list[tuple[int, float]]:
    return [(epoch, value) for epoch, value in history.series(name) if is_finite(value)]


# ---- the rules --------------------------------------------------------------------------------------------------

def stalled(history: RunHistory, thresholds: Thresholds, now_ms: int) -> Finding | None:
    """`stalled_epochs` consecutive epochs whose val_accuracy all lie within the tolerance (max - min <= tol).

    The tolerance is max(stalled_tolerance, 1 / windows_val): accuracy over n windows moves in steps of 1/n, so a
    change of a single window is indistinguishable from no change at all.
    """
    points = _finite_series(history, "val_accuracy")
    need = thresholds.stalled_epochs
    n_val = history.param_int("windows_val")
    one_window = 1 / n_val if n_val and n_val > 0 else None
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
        shown = _pct(low) if _pct(low) == _pct(high) else f"{_pct(low)}-{_pct(high)}"
        window_note = (f"one of {n_val} val windows = {_pts(one_window)}" if one_window
                       else "windows_val unknown")
        evidence = (f"val_accuracy {shown} at {_at_epochs(e for e, _ in stretch)} "
                    f"(spread {_pts(high - low)}; tolerance {_pts(tolerance)}, {window_note}; "
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
    """val_accuracy falls by more than `oscillation_drop` between consecutive epochs (a rise is healthy)."""
    points = _finite_series(history, "val_accuracy")
    drops = [(before, after) for before, after in zip(points, points[1:])
             if before[1] - after[1] > thresholds.oscillation_drop + _EPS]
    if not drops:
        return None
    (e0, v0), (e1, v1) = max(drops, key=lambda pair: pair[0][1] - pair[1][1])
    count = f"{len(drops)} such drop" + ("s" if len(drops) > 1 else "")
    evidence = (f"val_accuracy fell {_pts(v0 - v1)} from {_pct(v0)} at epoch {e0} to {_pct(v1)} at epoch {e1} "
                f"(threshold: a fall of more than {_pts(thresholds.oscillation_drop)}; {count})")
    epochs = tuple(sorted({e for pair in drops for e, _ in pair}))
    return Finding("oscillating", evidence, epochs,
                   {"drop": v0 - v1, "from_epoch": e0, "to_epoch": e1, "drops": len(drops),
                    "threshold": thresholds.oscillation_drop})


def val_test_divergence(history: RunHistory, thresholds: Thresholds, now_ms: int) -> Finding | None:
    """abs(val_accuracy - test_accuracy) > `divergence_gap` at some epoch; the evidence names the worst one."""
    val = dict(_finite_series(history, "val_accuracy"))
    test = dict(_finite_series(history, "test_accuracy"))
    over = [(epoch, val[epoch], test[epoch]) for epoch in sorted(val.keys() & test.keys())
            if abs(val[epoch] - test[epoch]) > thresholds.divergence_gap + _EPS]
    if not over:
        return None
    epoch, v, t = max(over, key=lambda row: abs(row[1] - row[2]))
    epochs = tuple(e for e, _, _ in over)
    evidence = (f"val_accuracy {_pct(v)} vs test_accuracy {_pct(t)} at epoch {epoch}: gap {_pts(abs(v - t))} "
                f"> {_pts(thresholds.divergence_gap)} (over at {_at_epochs(epochs)})")
    return Finding("val_test_divergence", evidence, epochs,
                   {"epoch": epoch, "val_accuracy": v, "test_accuracy": t, "gap": abs(v - t),
                    "threshold": thresholds.divergence_gap})


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
    evidence = (f"val_loss lowest at epoch {first_epoch} ({_num(first)}); none of the {len(later)} later epochs "
                f"({format_epochs(e for e, _ in later)}) beat it (best of them {_num(best_later)} at epoch "
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
                f"(param vram_budget_gb; over at {_at_epochs(over)})")
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
    evidence = (f"val_pred_rain_fraction {_pct(fraction)} at final epoch {epoch}: predicts {what} "
                f"(threshold >= {_pct(high)} or <= {_pct(low)})")
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
    evidence = (f"{name} is {_num(value)} at epoch {epoch} (first non-finite loss; {len(bad)} non-finite "
                f"value{'s' if len(bad) > 1 else ''} in train_loss/val_loss at {_at_epochs(epochs)})")
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
    evidence = f"status RUNNING but {last} was logged {format_duration(silent_s)} ago (limit {format_duration(limit_s)} = {basis})"
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

# The per-epoch metrics the rules read; the offline reader fetches histories for these (plus what it displays).
RULE_METRICS: tuple[str, ...] = (
    "val_accuracy", "test_accuracy", "val_loss", "train_loss", "vram_peak_gb", "val_pred_rain_fraction",
    "epoch_time_s",
)


def validate_flags(names: Iterable[str]) -> tuple[str, ...]:
    """Flag names as given (items may be comma-separated), checked against RULES; unknown -> UserError."""
    flags = tuple(part.strip() for name in names for part in name.split(",") if part.strip())
    for flag in flags:
        if flag not in RULES:
            raise UserError(f"unknown diagnosis flag {flag!r}; allowed: {', '.join(RULES)}")
    return flags


def diagnose(history: RunHistory, thresholds: Thresholds = Thresholds(), now_ms: int | None = None,
             only: Iterable[str] | None = None) -> list[Finding]:
    """Run every rule (or only the named ones) in RULES order; `now_ms` defaults to the current time."""
    wanted = set(RULES) if only is None else set(validate_flags(only))
    now = int(time.time() * 1000) if now_ms is None else now_ms
    findings = (RULES[name](history, thresholds, now) for name in RULES if name in wanted)
    return [finding for finding in findings if finding is not None]


def diagnosis_tag(findings: Iterable[Finding]) -> str:
    """The `diagnosis` tag value: `ok`, or the sorted comma-separated flags."""
    flags = sorted({finding.flag for finding in findings})
    return ",".join(flags) if flags else "ok"
