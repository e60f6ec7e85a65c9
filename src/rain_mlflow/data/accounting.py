"""Which windows each split keeps, and what each feature's gaps cost: the numbers a user can act on.

Per split: candidate windows (every end step of the split's range whose label fits before the split ends;
training windows on the `window_stride`, validation and test every one), then the ones dropped because their
label is unknown (the horizon touches missing precipitation) or, with `missing=exclude`, because their input
touches a value still missing after the causal fill. Per feature: how many windows with a known label touch one
of its remaining gaps (with `exclude` each of these is lost; with `mask` it is kept and flagged), with a
suggestion when one feature alone costs more than 20 % of them.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from rain_mlflow.config import DataConfig
from rain_mlflow.data.windows import candidate_ends, split_bounds, touching

SPLITS = ("train", "val", "test")
SUGGEST_ABOVE = 0.20  # a feature whose gaps cost more than this share of the windows gets a suggestion


def _runs_longest(mask: np.ndarray) -> int:
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return int((edges[1::2] - edges[::2]).max()) if len(edges) else 0


def select_windows(missing: np.ndarray, labels: np.ndarray, columns: tuple[str, ...], cfg: DataConfig,
                   window: int, max_fill: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(usable end steps per split, the accounting report) for inputs `missing` [T, C] after the causal fill."""
    n = len(labels)
    train_end, val_end = split_bounds(n, cfg)
    ranges = {"train": (0, train_end), "val": (train_end, val_end), "test": (val_end, n)}
    input_bad = touching(missing.any(axis=1), window) if cfg.missing == "exclude" else np.zeros(n, dtype=bool)
    known = ~np.isnan(labels)
    ends, splits, candidates_all = {}, {}, []
    for name, (first, last) in ranges.items():
        stride = cfg.window_stride_steps if name == "train" else 1
        candidates = candidate_ends(first, last, window, cfg.horizon_steps, stride)
        label_ok = known[candidates]
        input_ok = ~input_bad[candidates]
        ends[name] = candidates[label_ok & input_ok]
        splits[name] = {"candidates": int(len(candidates)), "kept": int(len(ends[name])),
                        "label_unknown": int((~label_ok).sum()), "input_missing": int((label_ok & ~input_ok).sum()),
                        "kept_share": round(len(ends[name]) / len(candidates), 4) if len(candidates) else 0.0}
        candidates_all.append(candidates[label_ok])
    labelled = np.concatenate(candidates_all)
    features, suggestions = {}, []
    for i, column in enumerate(columns):
        cost = int(touching(missing[:, i], window)[labelled].sum()) if missing[:, i].any() else 0
        share = cost / len(labelled) if len(labelled) else 0.0
        longest = _runs_longest(missing[:, i])
        features[column] = {"windows_touching_gaps": cost, "share": round(share, 4),
                            "missing_steps_after_fill": int(missing[:, i].sum()), "longest_gap_after_fill": longest}
        if share > SUGGEST_ABOVE and cfg.missing == "exclude":
            suggestions.append(
                f"{column}: its gaps still missing after the fill touch {cost} of {len(labelled)} windows "
                f"({share:.0%}), all dropped with --missing exclude; use --missing mask (keeps them, flagged), "
                f"raise --max-fill above {max_fill} (its longest remaining gap is {longest} steps), or leave it out "
                "of --features")
    report = {"seq_len": int(window), "horizon": cfg.horizon, "window_stride": cfg.window_stride,
              "missing": cfg.missing, "max_fill": int(max_fill), "splits": splits, "features": features,
              "suggestions": suggestions}
    return ends, report


def flat(report: dict[str, Any]) -> dict[str, int | float]:
    """The accounting as run params: per split candidates / dropped by reason, per feature windows touched."""
    out: dict[str, int | float] = {}
    for name, split in report["splits"].items():
        out.update({f"candidate_windows_{name}": split["candidates"],
                    f"label_unknown_windows_{name}": split["label_unknown"],
                    f"input_missing_windows_{name}": split["input_missing"]})
    for column, info in report["features"].items():
        out[f"gap_windows.{_key(column)}"] = info["windows_touching_gaps"]
    return out


def lines(report: dict[str, Any]) -> list[str]:
    """Human lines: one per split, then the features whose gaps touch windows, then the suggestions."""
    out = [f"windows of {report['seq_len']} steps, horizon {report['horizon']}, --missing {report['missing']}, "
           f"--max-fill {report['max_fill']}:"]
    for name, s in report["splits"].items():
        out.append(f"  {name:5} kept {s['kept']:>7} of {s['candidates']:>7} candidates ({s['kept_share']:.1%}); "
                   f"label unknown {s['label_unknown']}, input missing {s['input_missing']}")
    for column, info in report["features"].items():
        if info["windows_touching_gaps"]:
            out.append(f"  {column}: {info['missing_steps_after_fill']} steps still missing after the fill "
                       f"(longest {info['longest_gap_after_fill']}) touch {info['windows_touching_gaps']} windows "
                       f"({info['share']:.1%})")
    out += [f"  suggestion: {s}" for s in report["suggestions"]]
    return out


def _key(name: str) -> str:
    """A column name as an MLflow param key (letters, digits, _ - . / and space only)."""
    return re.sub(r"[^\w\-./ ]", "_", name)
