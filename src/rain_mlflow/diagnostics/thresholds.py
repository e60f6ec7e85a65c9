"""`Thresholds`: every number the rules use, validated on construction, stored on the runs it judged.

A diagnosis is only as good as the thresholds behind it, so each diagnosed run carries the ones used in its tag
`diagnosis.thresholds` (JSON, every field). `promote` and the live diagnosis read them back with `from_json` and
judge the run again by the same measure, unless told otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from rain_mlflow.errors import ConfigError

THRESHOLDS_TAG = "diagnosis.thresholds"


@dataclass(frozen=True)
class Thresholds:
    """Every number the rules use; defaults are DESIGN.md's (the seed's "Señales de problemas")."""

    stalled_epochs: int = 3
    """`stalled`: number of consecutive epochs whose val_accuracy must stay within the tolerance."""
    stalled_tolerance: float = 0.001
    """`stalled`: largest val_accuracy spread (fraction) still called unchanged; raised to one val window."""
    oscillation_drop: float = 0.05
    """`oscillating`: a val_accuracy fall (fraction) between consecutive epochs larger than this fires."""
    divergence_gap: float = 0.05
    """`val_test_divergence`: abs(val_accuracy - test_accuracy) (fraction) larger than this fires."""
    noise_z: float = 2.0
    """`oscillating`, `val_test_divergence`: the change must also exceed this many binomial standard errors at
    the evaluation set's size (val_windows / test_windows); 0 turns the noise floor off."""
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

    def to_json(self) -> str:
        """Every field, sorted: the value of the `diagnosis.thresholds` tag."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = THRESHOLDS_TAG) -> Thresholds:
        """Thresholds from a stored tag. Fields it lacks keep their defaults; fields this version does not know
        are ignored (a tag written by a newer version); a malformed tag or value is a ConfigError naming `where`."""
        try:
            stored = json.loads(text)
        except ValueError:
            stored = None
        if not isinstance(stored, dict):
            raise ConfigError(f"{where} must be a JSON object of diagnosis thresholds; got {text[:200]!r}")
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in stored.items() if k in known})
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def changed(self) -> dict[str, Any]:
        """The fields that differ from the defaults (for reports)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}


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
    "noise_z": (float, "a number >= 0", lambda v: v >= 0),
    "not_improving_min_later_epochs": (int, "an integer >= 1", lambda v: v >= 1),
    "collapse_fraction": (float, "a number in (0.5, 1]", lambda v: 0.5 < v <= 1),
    "dead_factor": (float, "a number > 0", lambda v: v > 0),
    "dead_min_seconds": (float, "a number >= 0", lambda v: v >= 0),
}
