"""Our checkpoints: self-describing dicts of tensors and plain values, loadable with `weights_only=True`.

- `best.pt`: the weights of the best epoch plus everything needed to use them without the original command line:
  the config, the feature names, the training-split scaler, the window length and the epoch's metrics.
- `last.pt`: everything needed to continue the run after a disconnect: best.pt's content for the latest epoch plus
  optimizer, grad scaler, early-stopping state, RNG states, the per-epoch history and the MLflow run id.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from rain_mlflow.config import RunConfig
from rain_mlflow.data.io import atomic_path
from rain_mlflow.errors import CheckpointError

BEST_FORMAT = "rain-mlflow/best/1"
LAST_FORMAT = "rain-mlflow/last/1"


def save(payload: dict[str, Any], path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load(path: str | os.PathLike, expected_format: str | None = None) -> dict[str, Any]:
    """Load one of our checkpoints safely; anything else is a CheckpointError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle with code, not a torch file
        first = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be loaded safely (weights_only=True): {first}") from None
    fmt = payload.get("format") if isinstance(payload, dict) else None
    if fmt not in (BEST_FORMAT, LAST_FORMAT) or (expected_format and fmt != expected_format):
        wanted = expected_format or f"{BEST_FORMAT} or {LAST_FORMAT}"
        raise CheckpointError(f"checkpoint {str(path)!r} is not a rain-mlflow checkpoint of format {wanted} "
                              f"(found format {fmt!r})")
    return payload


def model_payload(cfg: RunConfig, model: torch.nn.Module, epoch: int, metrics: dict[str, float],
                  features: tuple[str, ...], scaler_mean: Any, scaler_scale: Any, run_id: str | None) -> dict:
    """The part shared by best.pt and last.pt: weights plus how to feed them."""
    return {
        "format": BEST_FORMAT,
        "config": cfg.to_dict(),
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "epoch": epoch,
        "metrics": dict(metrics),
        "features": list(features),
        "scaler_mean": torch.as_tensor(scaler_mean, dtype=torch.float64),
        "scaler_scale": torch.as_tensor(scaler_scale, dtype=torch.float64),
        "window": cfg.effective_seq_len,
        "run_id": run_id,
    }


def config_of(payload: dict[str, Any]) -> RunConfig:
    return RunConfig.from_dict(payload["config"])
