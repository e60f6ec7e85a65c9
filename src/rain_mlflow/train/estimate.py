"""Dry-run estimates of GPU memory and epoch time, before anything is trained.

Memory. The peak of live tensor memory in a training step (what `torch.cuda.max_memory_allocated` reports) is
  weights (4 B/param) + AdamW moments (8 B/trainable param) + max(activations, gradients) + 5 %
because backward frees the activations it has used while it creates the gradients (4 B/trainable param), and
`zero_grad(set_to_none=True)` frees the gradients before the next forward: the peak is either the end of the
forward (all activations alive) or the optimizer step (all gradients alive). The 5 % covers what the probe cannot
see (the gradient of the activation being processed, kernel workspaces). The terms are printed separately.
The activation term is not guessed: a probe runs forward passes of 1 and 2 windows with the real model under the
run's precision and sums the bytes of every tensor autograd saves for backward (`saved_tensors_hooks`), then
extrapolates linearly to the batch size. The users' guesses were off by 2-3x because they skipped exactly this term.
On a CUDA device the estimate is replaced by a measurement: two real training steps at the full batch size,
reading `torch.cuda.max_memory_allocated` (the same counter `vram_peak_gb` reports per epoch).

Time. A probe times a few training steps (after a warm-up) and scales to the epoch; evaluation of the validation and
test windows is counted at one third of a training step per window (forward only).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from rain_mlflow.data.dataset import PreparedData
from rain_mlflow.train.precision import Precision

MARGIN = 1.05
PROBE_STEPS = 2


@dataclass(frozen=True)
class Estimate:
    n_params: int
    n_trainable: int
    tokens_per_sample: int
    weights_gb: float
    gradients_gb: float
    optimizer_gb: float
    activations_gb: float
    vram_gb: float
    vram_basis: str           # "measured on cuda" or "estimated (activations probed on cpu)"
    step_time_s: float
    epoch_time_s: float
    steps_per_epoch: int


def saved_activation_bytes(model: nn.Module, x: torch.Tensor, precision: Precision) -> int:
    """Bytes of the distinct tensors autograd keeps for backward in one forward pass (parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), precision.autocast():
        model(x).float().sum()
    return sum(seen.values())


def estimate(model: nn.Module, data: PreparedData, batch_size: int, precision: Precision) -> Estimate:
    device = precision.device
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    series = torch.from_numpy(data.series).to(device)
    ends = data.splits["train"].ends
    offsets = torch.arange(-data.window + 1, 1, device=device)

    def windows(n: int) -> torch.Tensor:
        idx = torch.from_numpy(ends[:n]).to(device)
        return series[idx[:, None] + offsets]

    one, two = (saved_activation_bytes(model, windows(k), precision) for k in (1, 2))
    per_sample, fixed = max(two - one, 0), max(2 * one - two, 0)
    activations = fixed + per_sample * batch_size
    weights, grads, moments = 4 * n_params, 4 * n_trainable, 8 * n_trainable
    vram = (weights + moments + max(activations, grads)) * MARGIN / 2**30
    basis = "estimated (activations probed on this device)"

    probe_batch = batch_size if device.type == "cuda" else min(batch_size, 4)
    step_time, peak = _time_steps(model, windows(probe_batch), precision)
    if device.type == "cuda":
        vram, basis = peak, "measured on cuda (two training steps at the full batch size)"
    per_window = step_time / probe_batch
    train_windows = data.splits["train"].size
    eval_windows = data.splits["val"].size + data.splits["test"].size
    epoch_time = per_window * train_windows + per_window / 3 * eval_windows
    return Estimate(
        n_params=n_params, n_trainable=n_trainable,
        tokens_per_sample=data.n_vars * (data.window // _token_len(model)),
        weights_gb=weights / 2**30, gradients_gb=grads / 2**30, optimizer_gb=moments / 2**30,
        activations_gb=activations / 2**30, vram_gb=vram, vram_basis=basis,
        step_time_s=per_window * batch_size, epoch_time_s=epoch_time,
        steps_per_epoch=-(-train_windows // batch_size))


def _token_len(model: nn.Module) -> int:
    return model.input_token_len


def _time_steps(model: nn.Module, x: torch.Tensor, precision: Precision) -> tuple[float, float]:
    """Seconds per training step (after one warm-up step) and, on CUDA, the peak memory in GiB."""
    device = precision.device
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0)
    target = torch.zeros(len(x), dtype=torch.long, device=device)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    timings = []
    for _ in range(PROBE_STEPS + 1):
        started = time.perf_counter()
        with precision.autocast():
            loss = nn.functional.cross_entropy(model(x).float(), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    model.load_state_dict(state)  # lr=0 changes nothing, but AdamW's decay path must not either
    del optimizer
    return min(timings[1:]), peak
