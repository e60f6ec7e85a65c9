"""How evidence is written: one style for every rule (percentages, points, losses, durations, epoch lists)."""

from __future__ import annotations

import math
from collections.abc import Iterable

from rain_mlflow.diagnostics.history import normalise


def pct(value: float) -> str:
    """An accuracy or fraction (0..1) as a percentage: `69.05%`."""
    return f"{100 * value:.2f}%"


def pts(diff: float) -> str:
    """A difference between two accuracies, in percentage points: `5.31 pts`."""
    return f"{100 * diff:.2f} pts"


def num(value: float) -> str:
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
    start: int | None = None
    prev: int | None = None
    for epoch in [*ordered, None]:
        if start is not None and prev is not None and (epoch is None or epoch != prev + 1):
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = None
        if epoch is not None and start is None:
            start = epoch
        prev = epoch
    return ", ".join(parts)


def at_epochs(epochs: Iterable[int]) -> str:
    """`epoch 3` or `epochs 1-3, 5`."""
    listed = sorted(set(epochs))
    return f"epoch{'s' if len(listed) > 1 else ''} {format_epochs(listed)}"
