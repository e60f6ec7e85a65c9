"""Data: read a station CSV (or the embedded synthetic record), clean it, and turn it into training windows."""

from __future__ import annotations

import pandas as pd

from rain_mlflow.config import SYNTHETIC, DataConfig
from rain_mlflow.data.clean import CleanResult, clean
from rain_mlflow.data.io import read_csv


def load_raw(cfg: DataConfig) -> tuple[pd.DataFrame, str]:
    """The raw record and a description of where it came from (a path, or the synthetic generator)."""
    if cfg.data == SYNTHETIC:
        from rain_mlflow.synth import SynthConfig, synthetic_frame

        embedded = SynthConfig()
        return (synthetic_frame(embedded.years, embedded.freq, embedded.seed),
                f"rain_mlflow.synth(years={embedded.years:g}, freq={embedded.freq}, seed={embedded.seed})")
    return read_csv(cfg.data, cfg.na_values), cfg.data


def load_clean(cfg: DataConfig) -> tuple[pd.DataFrame, CleanResult]:
    """Read and clean the configured data (cleaning is idempotent, so an already cleaned CSV passes unchanged)."""
    raw, source = load_raw(cfg)
    return raw, clean(raw, cfg, source)
