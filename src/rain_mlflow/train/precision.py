"""Device and mixed precision, decided once from the hardware (the loop never branches on them).

- CUDA with bf16 support (Ampere and newer): bf16 autocast, no grad scaler.
- CUDA without it (a T4): fp16 autocast with a GradScaler (fp16 gradients underflow without loss scaling).
- CPU with bf16 matrix units (AMX or AVX512-BF16): bf16 autocast; measured 1.5-2.4x faster than fp32 for this
  architecture on such a processor. Any other CPU: fp32.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from rain_mlflow.errors import ConfigError


def cpu_has_bf16_units() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in (" avx512_bf16", " amx_bf16"))


def select_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {requested!r} was requested but no CUDA GPU is available; use device=cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {requested!r} does not exist; this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s)")
    return device


@dataclass(frozen=True)
class Precision:
    device: torch.device
    dtype: torch.dtype | None   # autocast dtype, None = fp32

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    @property
    def needs_scaler(self) -> bool:
        return self.dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device.type, enabled=self.needs_scaler)


def select_precision(mode: str, device: torch.device) -> Precision:
    if mode == "off":
        return Precision(device, None)
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if mode == "bf16" and not bf16_ok:
            raise ConfigError(f"amp=bf16 is not supported by {torch.cuda.get_device_name(device)}; use fp16 or auto")
        if mode == "auto":
            return Precision(device, torch.bfloat16 if bf16_ok else torch.float16)
        return Precision(device, torch.bfloat16 if mode == "bf16" else torch.float16)
    if mode == "fp16":
        raise ConfigError("amp=fp16 needs a CUDA device; on CPU use auto, bf16 or off")
    if mode == "bf16" or (mode == "auto" and cpu_has_bf16_units()):
        return Precision(device, torch.bfloat16)
    return Precision(device, None)
