"""Section 1: one training step (forward, loss, backward, clip, AdamW) of our classifier vs the fp32 reference.

Ours is built and stepped exactly as `train` does it (`build_classifier`, `select_precision("auto")`, `build_loss`,
`build_optimizer`, the preset's gradient clipping), eagerly and under `torch.compile` (what `--compile` does); the
reference is `reference_einsum.reference_classify`, the official non-flash maths in plain fp32, on its own copy of
the weights with its own AdamW. All contenders see the same batch and are timed in turns.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bench.common import Figure, interleaved, log, spread
from bench.reference_einsum import reference_classify
from rain_mlflow.config import presets
from rain_mlflow.model.factory import build_classifier
from rain_mlflow.train.loop import build_optimizer
from rain_mlflow.train.losses import build_loss
from rain_mlflow.train.precision import Precision, select_precision

N_VARS = 6  # five station features plus the missingness indicator of `--missing mask`


@dataclass(frozen=True)
class Shape:
    preset: str
    seq_len: int        # a multiple of input_token_len, as the trainer trims it
    batch_size: int


FULL_SHAPES = (Shape("small", 672, 32), Shape("transfer", 1440, 16))
QUICK_SHAPES = (Shape("small", 672, 4), Shape("transfer", 1440, 2))


def _config(shape: Shape):
    # `small` in the terms is 4 x 512 with d_ff 2048 (the released architecture's ratio); the preset's
    # d_ff is 1024, so the preset is used as it trains. The pretrained weights are not loaded: speed is the same.
    return presets.build(shape.preset, {"seq_len": shape.seq_len, "batch_size": shape.batch_size,
                                        "pretrain_model_path": None})


def trainer_step(model: torch.nn.Module, forward: Callable, cfg, x: torch.Tensor, y: torch.Tensor,
                 precision: Precision, accumulate: int = 1) -> Callable[[], None]:
    """One optimiser step as `train_one_epoch` takes it: zero grads, `accumulate` x (forward under autocast, loss,
    scaled backward), unscale, clip, step, scaler update."""
    t = cfg.train
    criterion = build_loss(t.loss, t.focal_gamma, int((y == 0).sum()), int((y == 1).sum())).to(x.device)
    optimizer = build_optimizer(model, t.learning_rate, t.weight_decay, x.device)
    scaler = precision.grad_scaler()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        for _ in range(accumulate):
            with precision.autocast():
                loss = criterion(forward(x), y)
            scaler.scale(loss / accumulate).backward()
        if t.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        scaler.step(optimizer)
        scaler.update()

    return step


def agreement(model: torch.nn.Module, x: torch.Tensor) -> float:
    """max |ours - reference| of the logits in eval mode, fp32, same weights."""
    model.eval()
    with torch.no_grad():
        diff = (model(x) - reference_classify(model, x)).abs().max().item()
    model.train()
    return diff


def run(quick: bool, compile_modes: tuple[str, ...], command: str, machine: dict) -> list[Figure]:
    shapes = QUICK_SHAPES if quick else FULL_SHAPES
    repetitions = 2 if quick else 5
    figures = []
    for shape in shapes:
        cfg = _config(shape)
        torch.manual_seed(0)
        precision = select_precision(cfg.train.amp, torch.device("cpu"))
        ours = build_classifier(cfg, N_VARS).train()
        reference = copy.deepcopy(ours)
        x = torch.randn(shape.batch_size, shape.seq_len, N_VARS)
        y = torch.arange(shape.batch_size) % 2
        diff = agreement(ours, x[:2])
        log(f"step {shape.preset}: batch {shape.batch_size}, seq {shape.seq_len}, {N_VARS} variables, "
            f"{sum(p.numel() for p in ours.parameters()):,} parameters, |ours - reference| {diff:.1e}")
        contenders = {f"ours ({precision.name})": trainer_step(ours, ours, cfg, x, y, precision)}
        for mode in compile_modes:
            compiled = torch.compile(ours, mode=None if mode == "default" else mode)
            contenders[f"ours ({precision.name}, --compile {mode})"] = trainer_step(
                ours, compiled, cfg, x, y, precision)
        contenders["reference (fp32)"] = trainer_step(
            reference, lambda inp, reference=reference: reference_classify(reference, inp), cfg, x, y,
            Precision(x.device, None))
        times = interleaved(contenders, repetitions, warmup=2 if compile_modes else 1,
                            progress=lambda m, preset=shape.preset: log(f"step {preset}: {m}"))
        ref = spread([shape.batch_size / s for s in times["reference (fp32)"]])
        for name, seconds in times.items():
            rate = spread([shape.batch_size / s for s in seconds])
            is_ours = name.startswith("ours")
            ratio = rate["median"] / ref["median"]
            log(f"step {shape.preset}: {name}: {rate['median']:.2f} samples/s (±{rate['spread_pct']:.0f} %), "
                f"{ratio:.2f}x the reference")
            figures.append(Figure(
                section="1 training step", name=f"{shape.preset}: {name}", value=rate["median"], unit="samples/s",
                target=">= 3x reference" if is_ours else "", met=(ratio >= 3) if is_ours and not quick else None,
                detail={"samples_per_s": rate, "ratio_to_reference": ratio, "batch_size": shape.batch_size,
                        "seq_len": shape.seq_len, "n_vars": N_VARS, "max_abs_diff_vs_reference": diff},
                command=command, machine=machine))
    return figures
