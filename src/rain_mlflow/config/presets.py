"""Named presets: the only place defaults beyond the field defaults live.

Each preset is a function returning a complete `RunConfig`; variants start from a base and change a few fields,
so the difference between two presets is visible in a few lines. The numbers come from the user's notes
(`seeds/000...md`, `seeds/001...md`): the validated small model, the two runs that failed on 11 years of data
(kept for comparison) and the corrected configurations recommended afterwards. Their windows and tokens are step
counts chosen for hourly data (720 h = 30 days, 1440 h = 60 days, 2880 h = 120 days); the horizon is a duration
(24h). On data of another time step, `time_meaning` says what the steps mean there (dry run and run start).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from rain_mlflow.config.durations import data_kind, describe_span, steps_text
from rain_mlflow.config.run import DataConfig, ModelConfig, RunConfig, TrainConfig
from rain_mlflow.errors import ConfigError
from rain_mlflow.weights import DEFAULT_RELEASE

DEFAULT_PRESET = "small"


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    build: Callable[[], RunConfig]


def _config(name: str, data: dict, model: dict, train: dict) -> RunConfig:
    return RunConfig(preset=name, data=DataConfig(**data), model=ModelConfig(**model), train=TrainConfig(**train))


def smoke() -> RunConfig:
    # Tiny: short tokens, few windows (one every 6 h), 4 epochs. About a minute on 2 CPU cores. The rate is low
    # enough that the model still improves at its last epoch: on the embedded record 2e-3 reaches its ceiling in
    # one epoch and the next ones are (rightly) flagged `stalled`, which would block `main`'s promote.
    return _config(
        "smoke",
        data=dict(seq_len=168, window_stride=6),
        model=dict(input_token_len=24, d_model=32, n_heads=4, e_layers=2, d_ff=64, dropout=0.1),
        train=dict(batch_size=64, learning_rate=1e-3, train_epochs=4, patience=3, lradj="cosine",
                   vram_budget_gb=1.0, seed=2021),
    )


def small() -> RunConfig:
    # The first model that trained (76 % test accuracy, 35 s/epoch, 2 GB). The seed notes that its `type1`
    # decay (1e-4 -> 1e-5 -> 1e-6) stopped learning after epoch 3; kept as it ran, with patience 10.
    return _config(
        "small",
        data=dict(seq_len=720),
        model=dict(d_model=512, n_heads=8, e_layers=4, d_ff=1024, dropout=0.1),
        train=dict(batch_size=32, learning_rate=1e-4, train_epochs=20, patience=10, lradj="type1",
                   vram_budget_gb=5.0),
    )


def small_improved() -> RunConfig:
    # The failed "improved" small model of 13 Oct 2025: 6 GB, 14 min/epoch, val accuracy 75 -> 70 -> 75 %.
    return _config(
        "small_improved",
        data=dict(seq_len=1440),
        model=dict(d_model=768, n_heads=8, e_layers=6, d_ff=1536, dropout=0.1),
        train=dict(batch_size=24, learning_rate=1e-4, train_epochs=25, patience=8, lradj="cosine",
                   vram_budget_gb=5.0),
    )


def small_efficient() -> RunConfig:
    # The seed's corrected small model: 5 layers / 640, meant to stay at 3-4 GB.
    return _config(
        "small_efficient",
        data=dict(seq_len=1440),
        model=dict(d_model=640, n_heads=8, e_layers=5, d_ff=1280, dropout=0.15),
        train=dict(batch_size=32, learning_rate=8e-5, train_epochs=25, patience=8, lradj="cosine",
                   vram_budget_gb=5.0),
    )


def scratch() -> RunConfig:
    # The full 8 x 1024 architecture trained from random weights (the fallback if transfer fails).
    return _config(
        "scratch",
        data=dict(seq_len=1440),
        model=dict(d_model=1024, n_heads=8, e_layers=8, d_ff=2048, dropout=0.1),
        train=dict(batch_size=16, learning_rate=1e-4, train_epochs=30, patience=8, lradj="cosine",
                   vram_budget_gb=7.0),
    )


def transfer() -> RunConfig:
    # The seed's corrected transfer run: released Timer-XL weights, 60-day windows, batch 16. The released
    # checkpoint was pretrained with per-window normalisation, so use_norm stays on. The weights are named by
    # release and downloaded into the cache on first use (`rain_mlflow.weights`).
    return _config(
        "transfer",
        data=dict(seq_len=1440),
        model=dict(d_model=1024, n_heads=8, e_layers=8, d_ff=2048, dropout=0.2, use_norm=True,
                   pretrain_model_path=DEFAULT_RELEASE),
        train=dict(batch_size=16, learning_rate=5e-5, train_epochs=30, patience=8, lradj="cosine",
                   vram_budget_gb=7.0),
    )


def transfer_long() -> RunConfig:
    # The failed transfer run: 120-day windows, batch 12; 10 GB, 65 min/epoch, val accuracy stuck at 69.05 %.
    return dataclasses.replace(transfer(), preset="transfer_long").with_overrides(seq_len=2880, batch_size=12)


PRESETS: dict[str, Preset] = {
    p.name: p for p in (
        Preset("smoke", "tiny model on short windows; about a minute on 2 CPU cores (tests, `main`)", smoke),
        Preset("small", "4 x 512, 30-day windows: the first model that trained (76 % test accuracy)", small),
        Preset("small_improved", "6 x 768, 60-day windows: failed (6 GB, oscillating); kept for comparison",
               small_improved),
        Preset("small_efficient", "5 x 640, 60-day windows: the seed's corrected small model (3-4 GB)",
               small_efficient),
        Preset("scratch", "8 x 1024 from random weights, 60-day windows", scratch),
        Preset("transfer", "8 x 1024 from the released Timer-XL weights, 60-day windows", transfer),
        Preset("transfer_long", "transfer at 120-day windows, batch 12: failed (10 GB, stalled)", transfer_long),
    )
}


def names() -> list[str]:
    return list(PRESETS)


def build(name: str, overrides: dict[str, Any] | None = None) -> RunConfig:
    """The preset's config with `overrides` (field name -> value or string) applied and validated."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name].build().with_overrides(**(overrides or {}))


# ---- what a preset means in time ----------------------------------------------------------------------------------

PRESET_STEP = pd.Timedelta(hours=1)  # every preset's step counts were chosen for hourly data (the seeds' record)
RELEASED_TOKEN_LEN = 96              # the released Timer-XL checkpoint was pretrained on tokens of 96 steps


def time_meaning(cfg: RunConfig, step: pd.Timedelta, window: int) -> list[str]:
    """Lines saying what the window, horizon and tokens of a resolved config mean on data of time step `step`."""
    kind = data_kind(step)
    token = cfg.model.input_token_len
    lines = [f"window {window} steps = {describe_span(window * step)} of {kind}; tokens of {token} steps = "
             f"{describe_span(token * step)}, {window // token} per window",
             f"horizon {steps_text(cfg.data.horizon_steps)} = {describe_span(cfg.data.horizon_steps * step)}: the "
             f"label is rain (> {cfg.data.rain_threshold:g}) in the next "
             f"{describe_span(cfg.data.horizon_steps * step)}"]
    if step != PRESET_STEP and cfg.preset in PRESETS:
        preset = PRESETS[cfg.preset].build()
        if isinstance(preset.data.seq_len, int):
            lines.append(f"preset {cfg.preset} is defined for hourly data ({preset.data.seq_len} steps = "
                         f"{describe_span(preset.data.seq_len * PRESET_STEP)} there); on {kind} give "
                         f"--seq-len as a duration (e.g. {describe_span(preset.data.seq_len * PRESET_STEP)}"
                         f" -> --seq-len {_alias(preset.data.seq_len * PRESET_STEP)}) and a smaller "
                         "--input-token-len for coarse data")
    if cfg.model.pretrain_model_path and token != RELEASED_TOKEN_LEN:
        lines.append(f"the released checkpoint needs input_token_len {RELEASED_TOKEN_LEN}; tokens of {token} steps "
                     "cannot start from it")
    return lines


def _alias(span: pd.Timedelta) -> str:
    return f"{int(span / pd.Timedelta(days=1))}d" if span % pd.Timedelta(days=1) == pd.Timedelta(0) else \
        f"{int(span / pd.Timedelta(hours=1))}h"
