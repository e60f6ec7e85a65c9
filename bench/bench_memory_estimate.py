"""How close is the dry-run memory estimate to the memory training really takes?

For each preset: build the real model on the synthetic record, take the estimate `train --dry-run` prints, then run
two real training steps (forward, backward, AdamW step) at the preset's batch size under the run's precision and
measure the peak of live tensor bytes from the profiler's allocation events (every allocation and free the
allocator reports, summed in time order: on CPU the analogue of `torch.cuda.max_memory_allocated`, which is what
`vram_peak_gb` logs on a GPU). On a CUDA device the same script reads `torch.cuda.max_memory_allocated` instead.

    python bench/bench_memory_estimate.py                      # smoke small small_efficient transfer transfer_long
    python bench/bench_memory_estimate.py --presets small --batch-size 8
    python bench/bench_memory_estimate.py --variants            # + checkpointing, + batch/4 x 4 accumulated

`--variants` adds, for each preset, the same run with `--checkpoint-activations` and with a quarter of the batch
accumulated over 4 steps (the same effective batch): the two ways to fit a model into less memory.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from rain_mlflow.config import presets
from rain_mlflow.data.source import load_clean
from rain_mlflow.data.dataset import prepare
from rain_mlflow.model.factory import build_classifier
from rain_mlflow.train.estimate import estimate
from rain_mlflow.train.loop import build_optimizer
from rain_mlflow.train.precision import select_device, select_precision


def measured_peak_gib(cfg, data, precision, batch_size: int) -> float:
    """Peak live tensor memory (GiB) over model creation plus two training steps (of accumulate_steps batches)."""
    device = precision.device
    series = torch.from_numpy(data.series).to(device)
    ends = torch.from_numpy(data.splits["train"].ends[:batch_size]).to(device)
    x = series[ends[:, None] + torch.arange(-data.window + 1, 1, device=device)]
    y = torch.from_numpy(data.splits["train"].labels[:batch_size]).to(device)

    def steps() -> None:
        model = build_classifier(cfg, data.n_vars).to(device)
        optimizer = build_optimizer(model, 1e-4, 0.01, device)
        for _ in range(2):
            for _ in range(cfg.train.accumulate_steps):
                with precision.autocast():
                    loss = torch.nn.functional.cross_entropy(model(x).float(), y)
                (loss / cfg.train.accumulate_steps).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        steps()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**30
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        steps()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["smoke", "small", "small_efficient", "transfer",
                                                         "transfer_long"])
    parser.add_argument("--batch-size", type=int, default=None, help="override every preset's batch size")
    parser.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"])
    parser.add_argument("--accumulate-steps", type=int, default=1)
    parser.add_argument("--checkpoint-activations", action="store_true")
    parser.add_argument("--variants", action="store_true",
                        help="also run each preset with checkpointing, and with batch/4 accumulated over 4 steps")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'preset':16} {'batch':>9} {'ckpt':>4} {'precision':>9} {'estimate GiB':>12} {'measured GiB':>12} "
          f"{'estimate/measured':>17} {'seconds':>8}")
    for name in args.presets:
        base = {"pretrain_model_path": "", "amp": args.amp, "accumulate_steps": str(args.accumulate_steps),
                "checkpoint_activations": str(args.checkpoint_activations).lower()}
        if args.batch_size:
            base["batch_size"] = str(args.batch_size)
        runs = [base]
        if args.variants:
            batch = args.batch_size or presets.build(name).train.batch_size
            runs += [{**base, "checkpoint_activations": "true"},
                     {**base, "batch_size": str(max(batch // 4, 1)), "accumulate_steps": "4"}]
        for overrides in runs:
            run_one(name, overrides)


def run_one(name: str, overrides: dict) -> None:
    cfg = presets.build(name, overrides)
    t = cfg.train
    _, cleaned = load_clean(cfg.data)
    data = prepare(cleaned, cfg)
    precision = select_precision(t.amp, select_device(t.device))
    started = time.perf_counter()
    torch.manual_seed(0)
    model = build_classifier(cfg, data.n_vars).to(precision.device)
    est = estimate(model, data, t.batch_size, precision, t.accumulate_steps)
    del model
    measured = measured_peak_gib(cfg, data, precision, t.batch_size)
    batch = f"{t.batch_size} x {t.accumulate_steps}" if t.accumulate_steps > 1 else str(t.batch_size)
    print(f"{name:16} {batch:>9} {'yes' if t.checkpoint_activations else 'no':>4} {precision.name:>9} "
          f"{est.vram_gb:>12.3f} {measured:>12.3f} {est.vram_gb / measured:>17.2f} "
          f"{time.perf_counter() - started:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
