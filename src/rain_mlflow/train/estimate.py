"""Dry-run estimates of GPU memory and epoch time, before anything is trained.

Memory. The peak of live tensor memory in a training step (what `torch.cuda.max_memory_allocated` reports) is
  weights (4 B/param) + AdamW moments (8 B/trainable param) + max(activations, gradients) + recompute + 5 %
because backward frees the activations it has used while it creates the gradients (4 B/trainable param), and
`zero_grad(set_to_none=True)` frees the gradients before the next forward: the peak is either the end of the
forward (all activations alive) or the optimizer step (all gradients alive). Two settings change the terms:
- `accumulate_steps` > 1: the gradients of the first batches stay alive through the next batches' forward, so
  activations and gradients add up instead of taking turns; the activations are those of one batch.
- `checkpoint_activations`: each Timer layer keeps only its input; in backward it recomputes its intermediates,
  one layer at a time, so the activation term shrinks and a `recompute` term (one layer's intermediates) appears.
The 5 % covers what the probe cannot see (the gradient of the activation being processed, kernel workspaces).
The activation terms are not guessed: a probe runs forward passes of 1 and 2 windows with the real model under the
run's precision and sums the bytes of every tensor autograd saves for backward (`saved_tensors_hooks`; with
checkpointing that is what the checkpointed model really saves, plus each layer's kept input, and the recompute
term is one layer run on its own), then extrapolates linearly to the batch size. The users' guesses were off by
2-3x because they skipped exactly this term.
On a CUDA device the estimate is replaced by a measurement: two real training steps at the full batch size (with
two accumulated batches each when accumulating), reading `torch.cuda.max_memory_allocated` (the same counter
`vram_peak_gb` reports per epoch).

Time. A probe times a few training steps (after a warm-up) and scales to the epoch; evaluation of the validation and
test windows is counted at one third of a training step per window (forward only). With checkpointing the probe's
steps include the recomputation. `--compile` is not part of the estimate (it is measured in eager mode).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from rain_mlflow.data.batches import Batches
from rain_mlflow.data.dataset import PreparedData
from rain_mlflow.model.timerxl import TimerBlocks, TimerLayer
from rain_mlflow.train.loop import build_optimizer
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
    activations_gb: float     # saved for backward at the end of one batch's forward
    recompute_gb: float       # one layer's intermediates re-created in backward (checkpointing), else 0
    accumulating: bool        # gradients stay alive across batches: activations and gradients add up
    vram_gb: float
    vram_basis: str           # "measured on cuda" or "estimated (activations probed on cpu)"
    step_time_s: float        # one optimiser step (accumulate_steps batches)
    epoch_time_s: float
    steps_per_epoch: int      # optimiser steps


@dataclass(frozen=True)
class SavedBytes:
    forward: int       # what autograd keeps at the end of the forward pass (parameters excluded)
    recompute: int     # with activation checkpointing: what one layer re-creates in backward; else 0


def saved_activation_bytes(model: nn.Module, x: torch.Tensor, precision: Precision) -> SavedBytes:
    """Bytes of the distinct tensors autograd keeps for backward in one forward pass (parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    checkpointing = any(m.checkpoint_layers for m in model.modules() if isinstance(m, TimerBlocks))
    layers = [m for m in model.modules() if isinstance(m, TimerLayer)] if checkpointing else []
    seen: dict[int, int] = {}
    first_input: list = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    def keep_input(layer: nn.Module, args: tuple) -> None:  # a checkpointed layer holds its input until backward
        pack(args[0])
        if not first_input:
            first_input.append(args)

    model.train()
    handles = [layer.register_forward_pre_hook(keep_input) for layer in layers]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), precision.autocast():
            model(x).float().sum()
    finally:
        for handle in handles:
            handle.remove()
    forward = sum(seen.values())
    if not first_input:
        return SavedBytes(forward, 0)
    # What one layer saves when it runs plainly is what its recomputation re-creates during backward.
    layer_input, layout = first_input[0]
    layer_input = layer_input.detach().requires_grad_()
    seen.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), precision.autocast():
        layers[0](layer_input, layout)
    seen.pop(layer_input.untyped_storage().data_ptr(), None)  # already counted as the kept input
    return SavedBytes(forward, sum(seen.values()))


@dataclass(frozen=True)
class Memory:
    """The terms of the memory model, in bytes (see the module docstring)."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    recompute: int
    accumulating: bool

    @property
    def peak_gb(self) -> float:
        live = self.activations + self.gradients if self.accumulating else max(self.activations, self.gradients)
        return (self.weights + self.optimizer + live + self.recompute) * MARGIN / 2**30


def memory(model: nn.Module, data: PreparedData, batch_size: int, precision: Precision,
           accumulate_steps: int = 1) -> Memory:
    """The memory model's terms for `model` on `data`'s training windows, activations probed on `precision`."""
    device = precision.device
    batches = Batches(data, device)
    one, two = (saved_activation_bytes(model, batches.get("train", torch.arange(k, device=device))[0], precision)
                for k in (1, 2))
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return Memory(weights=4 * n_params, gradients=4 * n_trainable, optimizer=8 * n_trainable,
                  activations=_linear(one.forward, two.forward, batch_size),
                  recompute=_linear(one.recompute, two.recompute, batch_size), accumulating=accumulate_steps > 1)


def estimate(model: nn.Module, data: PreparedData, batch_size: int, precision: Precision,
             accumulate_steps: int = 1) -> Estimate:
    device = precision.device
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    batches = Batches(data, device)

    def windows(n: int) -> torch.Tensor:
        return batches.get("train", torch.arange(n, device=device))[0]

    terms = memory(model, data, batch_size, precision, accumulate_steps)
    activations, recompute, accumulating = terms.activations, terms.recompute, terms.accumulating
    weights, grads, moments = terms.weights, terms.gradients, terms.optimizer
    vram = terms.peak_gb
    basis = "estimated (activations probed on this device)"

    probe_batch = batch_size if device.type == "cuda" else min(batch_size, 4)
    micro = min(accumulate_steps, 2)
    step_time, peak = _time_steps(model, windows(probe_batch), precision, micro)
    if device.type == "cuda":
        vram, basis = peak, "measured on cuda (two training steps at the full batch size)"
    per_window = step_time / (probe_batch * micro)
    train_windows = data.splits["train"].size
    eval_windows = data.splits["val"].size + data.splits["test"].size
    epoch_time = per_window * train_windows + per_window / 3 * eval_windows
    per_step = batch_size * accumulate_steps
    return Estimate(
        n_params=n_params, n_trainable=n_trainable,
        tokens_per_sample=data.n_vars * (data.window // _token_len(model)),
        weights_gb=weights / 2**30, gradients_gb=grads / 2**30, optimizer_gb=moments / 2**30,
        activations_gb=activations / 2**30, recompute_gb=recompute / 2**30, accumulating=accumulating,
        vram_gb=vram, vram_basis=basis, step_time_s=per_window * per_step, epoch_time_s=epoch_time,
        steps_per_epoch=-(-train_windows // per_step))


def _linear(at_one: int, at_two: int, batch_size: int) -> int:
    """Extrapolate a per-batch byte count measured at 1 and 2 windows: fixed part + per-window part x batch."""
    per_window, fixed = max(at_two - at_one, 0), max(2 * at_one - at_two, 0)
    return fixed + per_window * batch_size


def _token_len(model: nn.Module) -> int:
    return model.input_token_len


def _time_steps(model: nn.Module, x: torch.Tensor, precision: Precision, micro: int) -> tuple[float, float]:
    """Seconds per training step of `micro` batches (after one warm-up step) and, on CUDA, the peak memory in GiB."""
    device = precision.device
    optimizer = build_optimizer(model, 0.0, 0.0, device)
    target = torch.zeros(len(x), dtype=torch.long, device=device)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    timings = []
    for _ in range(PROBE_STEPS + 1):
        started = time.perf_counter()
        for _ in range(micro):
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
