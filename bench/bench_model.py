"""Model throughput: our TimerXL (SDPA, one broadcast mask) vs a plain einsum statement of the official maths.

Measures forward + backward (MSE on the next-token forecasts, no optimiser step) in train mode on CPU, for the
`small` preset shape, in fp32 and, if the CPU has native bf16 (avx512_bf16 / amx), under bf16 autocast.
First checks that both paths agree on the same weights.

    python bench/bench_model.py                      # full run (batch 32, 10 timed steps per case)
    python bench/bench_model.py --batch-size 8 --steps 3 --warmup 1   # quick
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved  # noqa: E402
from reference_einsum import reference_forecast  # noqa: E402

from rain_mlflow.model.timerxl import TimerXL  # noqa: E402

SMALL_PRESET = dict(
    input_token_len=96, output_token_len=96, d_model=512, n_heads=8, e_layers=4, d_ff=2048,
    dropout=0.1, activation="relu", use_norm=True,
)
SEQ_LEN = 672  # 720 trimmed to a multiple of 96
N_VARS = 5


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed forward+backward steps per case")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    parser.add_argument("--seq-len", type=int, default=SEQ_LEN, help="multiple of 96")
    parser.add_argument("--n-vars", type=int, default=N_VARS)
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast cases")
    return parser.parse_args()


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def check_agreement(model: TimerXL, x: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        diff = (model.forecast(x) - reference_forecast(model, x)).abs().max().item()
    model.train()
    return diff


def make_step(model: TimerXL, forward: Callable, x: torch.Tensor, target: torch.Tensor, bf16: bool) -> Callable:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            out = forward(x)
        F.mse_loss(out.float(), target).backward()

    return step


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    model = TimerXL(**SMALL_PRESET).train()
    x = torch.randn(args.batch_size, args.seq_len, args.n_vars)
    target = torch.randn(args.batch_size, args.seq_len, args.n_vars)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch_size}, "
          f"seq_len {args.seq_len}, variables {args.n_vars}, tokens/sample {args.n_vars * (args.seq_len // 96)}")
    print(f"parameters: {n_params:,}")
    print(f"max |ours - reference| (eval, fp32, same weights): {check_agreement(model, x[:4]):.2e}")

    dtypes = [False] + ([True] if cpu_has_bf16() and not args.no_bf16 else [])
    ref_forward = lambda inp: reference_forecast(model, inp)  # noqa: E731
    for bf16 in dtypes:
        steps = {
            "ours": make_step(model, model.forecast, x, target, bf16),
            "reference": make_step(model, ref_forward, x, target, bf16),
        }
        # alternating steps and their median: a burst of load from other processes favours neither case
        times = interleaved(steps, args.steps, warmup=args.warmup)
        seconds = {name: statistics.median(values) for name, values in times.items()}
        ours, ref = args.batch_size / seconds["ours"], args.batch_size / seconds["reference"]
        label = "bf16 autocast" if bf16 else "fp32"
        print(f"{label:>13}: ours {ours:7.2f} samples/s | reference {ref:7.2f} samples/s | ratio {ours / ref:.2f}x")

if __name__ == "__main__":
    main()
