"""Device and mixed precision, decided once from the hardware (the loop never branches on them).

- CUDA compute capability 8.0 and up (A100, L4, RTX 30xx, H100): bf16 autocast, no grad scaler, and TF32 for the
  float32 matmuls that remain.
- CUDA below 8.0 (T4 = 7.5, V100 = 7.0): fp16 autocast with a GradScaler (fp16 gradients underflow without loss
  scaling). These GPUs have fp16 tensor cores but none for bf16: `torch.cuda.is_bf16_supported()` still answers
  True on a T4 because bf16 can be emulated, and emulated bf16 runs without tensor cores, several times slower.
  So the choice reads the compute capability, never that function; `amp=bf16` there is refused.
- CPU with bf16 matrix units (AMX or AVX512-BF16): bf16 autocast; measured 1.5-2.4x faster than fp32 for this
  architecture on such a processor. Any other CPU: fp32.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from rain_mlflow.errors import ConfigError

NATIVE_BF16_CAPABILITY = (8, 0)  # Ampere: the first CUDA generation with bf16 (and TF32) tensor cores


def cpu_has_bf16_units() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in (" avx512_bf16", " amx_bf16"))


def cuda_capability(device: torch.device) -> tuple[int, int]:
    """(major, minor) compute capability of a CUDA device; the one hardware query the precision choice makes."""
    return torch.cuda.get_device_capability(device)


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
    tf32: bool = False          # float32 matmuls may use TF32 tensor cores (CUDA >= 8.0)

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

    def configure_backends(self) -> None:
        """Process-wide matmul settings for this precision; call once before training."""
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.tf32
            torch.backends.cudnn.allow_tf32 = self.tf32


def select_precision(mode: str, device: torch.device) -> Precision:
    if device.type == "cuda":
        capability = cuda_capability(device)
        native_bf16 = capability >= NATIVE_BF16_CAPABILITY
        if mode == "bf16" and not native_bf16:
            raise ConfigError(
                f"amp must be auto, fp16 or off on a GPU of compute capability {capability[0]}.{capability[1]} "
                "(bf16 needs 8.0 or newer: A100, L4, RTX 30xx, H100; a T4 is 7.5); got 'bf16'")
        if mode == "off":  # full float32 when asked for: no TF32 either
            return Precision(device, None)
        if mode == "auto":
            mode = "bf16" if native_bf16 else "fp16"
        return Precision(device, torch.bfloat16 if mode == "bf16" else torch.float16, tf32=native_bf16)
    if mode == "off":
        return Precision(device, None)
    if mode == "fp16":
        raise ConfigError("amp=fp16 needs a CUDA device; on CPU use auto, bf16 or off")
    if mode == "bf16" or (mode == "auto" and cpu_has_bf16_units()):
        return Precision(device, torch.bfloat16)
    return Precision(device, None)
