"""`train --dry-run`: the resolved config, the data, the model size, where the weights are and the memory and time
estimates, without a run and without the weights (`DryRun`: the summary `--format json` prints, and the lines of
the text report)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rain_mlflow import weights
from rain_mlflow.config import RunConfig
from rain_mlflow.data import accounting
from rain_mlflow.data.dataset import PreparedData
from rain_mlflow.diagnostics.text import format_duration
from rain_mlflow.train.estimate import Estimate, estimate
from rain_mlflow.train.precision import Precision


@dataclass(frozen=True)
class DryRun:
    """What a dry run found: everything as JSON-ready data (`--format json`), and as lines for people."""

    summary: dict
    lines: list[str]


def dry_run_report(cfg: RunConfig, data: PreparedData, report: dict, model: torch.nn.Module, precision: Precision,
                   weights_status: dict | None) -> DryRun:
    """Estimate, then describe everything."""
    t = cfg.train
    est = estimate(model, data, t.batch_size, precision, t.accumulate_steps)
    summary = _dry_run_summary(cfg, data, report, est, precision, weights_status)
    lines: list[str] = []
    add = lines.append
    add(f"preset {cfg.preset}: resolved settings")
    times = report.get("time_settings") or {}
    for key, value in cfg.flat().items():
        meaning = times.get(key)
        add(f"  {key:22} {value}" + (f" steps = {meaning['duration']} (given: {meaning['given']})"
                                      if isinstance(meaning, dict) else ""))
    add(f"data: {report['source']}: {report['steps']} steps of {report['freq']} ({report['start']} .. "
         f"{report['end']}), features {', '.join(data.features)}")
    for line in report.get("time_meaning", []):
        add(f"  {line}")
    for name, split in data.splits.items():
        add(f"  {name:5} {split.size:>7} windows  rain {split.rain:>7} ({split.rain / split.size:.1%})  "
             f"no rain {split.no_rain:>7}  majority share {split.majority_share:.1%}")
    for line in accounting.lines(data.accounting):
        add(line)
    if data.policy and data.policy.indicators:
        add(f"  missing inputs: training mean plus indicator variable(s) {', '.join(data.policy.indicators)}")
    for note in data.notes:
        add(f"  note: {note}")
    add(f"model: {est.n_params:,} parameters ({est.n_trainable:,} trainable); window {data.window} steps = "
         f"{data.window // cfg.model.input_token_len} tokens x {data.n_vars} variables = {est.tokens_per_sample} "
         f"tokens per sample")
    add(f"pretrained weights: {weights.describe(weights_status) if weights_status else 'none (random init)'}")
    add(f"device: {precision.device}, precision {precision.name}")
    batch = f"batch {t.batch_size}" + (f" x {t.accumulate_steps} accumulated = effective batch "
                                       f"{t.batch_size * t.accumulate_steps}" if est.accumulating else "")
    add(f"training memory (VRAM on a GPU), {batch}"
         f"{', activation checkpointing' if t.checkpoint_activations else ''}: {est.vram_gb:.2f} GB, "
         f"{est.vram_basis}")
    live = (f"activations {est.activations_gb:.2f} + gradients {est.gradients_gb:.2f}" if est.accumulating else
            f"max(activations {est.activations_gb:.2f}, gradients {est.gradients_gb:.2f})")
    recompute = f" + recompute {est.recompute_gb:.2f}" if t.checkpoint_activations else ""
    add(f"  = weights {est.weights_gb:.2f} + AdamW {est.optimizer_gb:.2f} + {live}{recompute} GB, + 5 % "
         "(GB = 2^30 bytes)")
    budget = t.vram_budget_gb
    if budget:
        verdict = "within" if est.vram_gb <= budget else "OVER"
        add(f"  budget {budget:g} GB: {verdict} budget")
    add(f"epoch time on {precision.device.type} ({precision.name}): {format_duration(est.epoch_time_s)} "
         f"({est.steps_per_epoch} steps of {est.step_time_s:.3f} s + evaluation); "
         f"{t.train_epochs} epochs at most: {format_duration(est.epoch_time_s * t.train_epochs)}")
    return DryRun(summary, lines)


def _dry_run_summary(cfg: RunConfig, data: PreparedData, report: dict, est: Estimate, precision: Precision,
                     weights_status: dict | None) -> dict:
    """Everything the dry run knows, JSON-ready (`train --dry-run --format json`)."""
    t = cfg.train
    return {
        "dry_run": True, "preset": cfg.preset, "config": cfg.to_dict(),
        "data": {k: report.get(k) for k in ("source", "steps", "freq", "start", "end")} | {
            "features": list(data.features), "n_vars": data.n_vars, "window": data.window, "notes": data.notes,
            "indicator_variables": list(data.policy.indicators) if data.policy else []},
        "accounting": data.accounting,
        "time_settings": report.get("time_settings"), "time_meaning": report.get("time_meaning", []),
        "windows": {name: {"windows": s.size, "rain": s.rain, "no_rain": s.no_rain,
                           "majority_share": s.majority_share, "dropped": s.dropped}
                    for name, s in data.splits.items()},
        "model": {"n_params": est.n_params, "n_trainable": est.n_trainable,
                  "tokens_per_sample": est.tokens_per_sample},
        "device": str(precision.device), "precision": precision.name,
        "memory": {"vram_gb": est.vram_gb, "basis": est.vram_basis, "weights_gb": est.weights_gb,
                   "optimizer_gb": est.optimizer_gb, "activations_gb": est.activations_gb,
                   "gradients_gb": est.gradients_gb, "recompute_gb": est.recompute_gb,
                   "batch_size": t.batch_size, "accumulate_steps": t.accumulate_steps,
                   "effective_batch_size": t.batch_size * t.accumulate_steps,
                   "checkpoint_activations": t.checkpoint_activations, "budget_gb": t.vram_budget_gb,
                   "within_budget": None if not t.vram_budget_gb else est.vram_gb <= t.vram_budget_gb},
        "time": {"device": precision.device.type, "step_time_s": est.step_time_s,
                 "steps_per_epoch": est.steps_per_epoch, "epoch_time_s": est.epoch_time_s,
                 "max_total_s": est.epoch_time_s * t.train_epochs},
        "weights": weights_status,
        # the flat keys earlier callers read
        "vram_gb": est.vram_gb, "epoch_time_s": est.epoch_time_s, "n_params": est.n_params,
        "tokens_per_sample": est.tokens_per_sample, **data.class_counts(),
    }
