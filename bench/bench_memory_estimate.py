"""How close is the dry-run memory estimate to the memory training really takes?

For each preset: build the real model on the synthetic record, take the estimate `train --dry-run` prints, then run
two real training steps (forward, backward, AdamW step) at the preset's batch size under the run's precision and
measure the peak of live tensor bytes from the profiler's allocation events (every allocation and free the
allocator reports, summed in time order: on CPU the analogue of `torch.cuda.max_memory_allocated`, which is what
`vram_peak_gb` logs on a GPU). On a CUDA device the same script reads `torch.cuda.max_memory_allocated` instead.

    python bench/bench_memory_estimate.py                      # smoke small small_efficient transfer transfer_long
    python bench/bench_memory_estimate.py --presets small --batch-size 8
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from rain_mlflow import presets
from rain_mlflow.data import load_clean
from rain_mlflow.data.dataset import prepare
from rain_mlflow.model.factory import build_classifier
from rain_mlflow.train.estimate import estimate
from rain_mlflow.train.precision import select_device, select_precision


def measured_peak_gib(cfg, data, precision, batch_size: int) -> float:
    """Peak live tensor memory (GiB) over model creation plus two training steps."""
    device = precision.device
    series = torch.from_numpy(data.series).to(device)
    ends = torch.from_numpy(data.splits["train"].ends[:batch_size]).to(device)
    x = series[ends[:, None] + torch.arange(-data.window + 1, 1, device=device)]
    y = torch.from_numpy(data.splits["train"].labels[:batch_size]).to(device)

    def steps() -> None:
        model = build_classifier(cfg, data.n_vars).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for _ in range(2):
            with precision.autocast():
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            loss.backward()
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
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'preset':16} {'batch':>5} {'precision':>9} {'estimate GiB':>12} {'measured GiB':>12} "
          f"{'estimate/measured':>17} {'seconds':>8}")
    for name in args.presets:
        overrides = {"pretrain_model_path": "", "amp": args.amp}
        if args.batch_size:
            overrides["batch_size"] = str(args.batch_size)
        cfg = presets.build(name, overrides)
        _, cleaned = load_clean(cfg.data)
        data = prepare(cleaned, cfg)
        precision = select_precision(cfg.train.amp, select_device(cfg.train.device))
        started = time.perf_counter()
        torch.manual_seed(0)
        model = build_classifier(cfg, data.n_vars).to(precision.device)
        est = estimate(model, data, cfg.train.batch_size, precision)
        del model
        measured = measured_peak_gib(cfg, data, precision, cfg.train.batch_size)
        print(f"{name:16} {cfg.train.batch_size:>5} {precision.name:>9} {est.vram_gb:>12.3f} {measured:>12.3f} "
              f"{est.vram_gb / measured:>17.2f} {time.perf_counter() - started:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
