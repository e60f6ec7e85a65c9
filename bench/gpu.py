"""Section 6 (`--gpu`, CUDA only): epoch time, samples/s, peak VRAM and model FLOP utilisation per option.

For `small`, `transfer` and `transfer_long` on 11 years of the synthetic hourly record (6 variables with the mask
indicator), each variant runs the trainer's step (`step.trainer_step`) on real training batches: bf16, fp16,
`--compile` (default and mode="reduce-overhead": a 67 M-parameter model on 1,440 tokens a step is launch-bound),
and larger micro-batches at the same effective batch (preset batch x 4 split as 4 x 1, 2 x 2, 1 x 4). The epoch time
is the training windows of one epoch over the measured rate (evaluation not included).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from bench.common import Figure, log, spread
from rain_mlflow.config import presets

PEAK_TFLOPS = {  # dense tensor-core peak (bf16/fp16) by device name fragment; MFU is reported against it
    "H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0, "T4": 65.0, "V100": 125.0,
    "RTX 4090": 165.0, "RTX 3090": 71.0,
}


def train_flops_per_sample(d_model: int, e_layers: int, d_ff: int, n_tokens: int, token_len: int) -> float:
    """Matmul FLOPs of forward + backward (3x forward) for one window: projections, FFN, attention, embedding."""
    dense = 4 * d_model * d_model + 2 * d_model * d_ff           # q, k, v, out + conv1, conv2 weights per layer
    forward = 2 * n_tokens * (e_layers * dense + token_len * d_model)
    forward += e_layers * 4 * n_tokens * n_tokens * d_model      # q.k scores and probs.v
    return 3.0 * forward


def peak_tflops(name: str) -> float | None:
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def run(quick: bool, command: str, machine: dict) -> list[Figure]:
    from bench.step import trainer_step
    from rain_mlflow.data.batches import Batches
    from rain_mlflow.data.dataset import prepare, resolve
    from rain_mlflow.data.source import load_clean
    from rain_mlflow.model.factory import build_classifier
    from rain_mlflow.train.precision import Precision

    if not torch.cuda.is_available():
        raise RuntimeError("--gpu needs a CUDA device; none is visible to torch here")
    device = torch.device("cuda")
    gpu = torch.cuda.get_device_name(device)
    peak = peak_tflops(gpu)
    capability = torch.cuda.get_device_capability(device)
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16} if capability >= (8, 0) else {"fp16": torch.float16}
    figures = []
    for preset in ("small",) if quick else ("small", "transfer", "transfer_long"):
        cfg = presets.build(preset, {"pretrain_model_path": None})
        _, cleaned = load_clean(cfg.data)
        cfg = resolve(cfg, cleaned)
        data = prepare(cleaned, cfg)
        batches = Batches(data, device)
        windows = data.splits["train"].size
        m = cfg.model
        flops = train_flops_per_sample(m.d_model, m.e_layers, m.d_ff, data.n_vars * (data.window // m.input_token_len),
                                       m.input_token_len)
        b = cfg.train.batch_size
        variants: list[tuple[str, str, Any, int, int]] = [(n, "", d, b, 1) for n, d in dtypes.items()]
        first = next(iter(dtypes.values()))
        variants += [(f"{next(iter(dtypes))} --compile {mode}", mode, first, b, 1)
                     for mode in ("default", "reduce-overhead")]
        variants += [(f"{next(iter(dtypes))} batch {b * k} x {4 // k} accumulated", "", first, b * k, 4 // k)
                     for k in (1, 2, 4)]
        for label, mode, dtype, batch, accumulate in variants:
            torch.manual_seed(0)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            model = build_classifier(cfg, data.n_vars).to(device).train()
            forward = torch.compile(model, mode=None if mode == "default" else mode) if mode else model
            x, y = batches.get("train", torch.arange(batch, device=device) % windows)
            step = trainer_step(model, forward, cfg, x, y, Precision(device, dtype), accumulate)
            for _ in range(3 if mode else 2):  # compile and autotune outside the timing
                step()
            torch.cuda.synchronize()
            seconds = []
            for _ in range(3 if quick else 10):
                start = time.perf_counter()
                step()
                torch.cuda.synchronize()
                seconds.append(time.perf_counter() - start)
            rate = spread([batch * accumulate / s for s in seconds])
            vram = torch.cuda.max_memory_allocated(device) / 2**30
            mfu = rate["median"] * flops / (peak * 1e12) if peak else None
            log(f"gpu {preset} {label}: {rate['median']:.1f} samples/s, {vram:.2f} GiB peak")
            figures.append(Figure(
                section="6 GPU", name=f"{preset}: {label}", value=windows / rate["median"], unit="s per epoch",
                target="transfer <= 30 s (H200)" if preset == "transfer" else
                ("peak VRAM <= 3 GB at batch 12" if preset == "transfer_long" else ""),
                met=None, detail={"samples_per_s": rate, "peak_vram_gib": vram, "mfu": mfu, "gpu": gpu,
                                  "peak_tflops": peak, "train_flops_per_sample": flops, "batch_size": batch,
                                  "accumulate_steps": accumulate, "training_windows": windows},
                command=command, machine=machine))
            del model, forward, step
    return figures
