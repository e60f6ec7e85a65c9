"""What every benchmark section shares: the machine description, interleaved timing, and the figure record.

These machines are shared and noisy, so contenders are timed in turns (A, B, C, A, B, C, ...) inside one process and
each figure keeps the median and the spread of its repetitions; a burst of load then hits every contender alike.
"""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]  # the source checkout holding bench/ and src/


def machine() -> dict[str, Any]:
    """CPU model, cores, library versions and the GPU if any: what a figure was measured on."""
    import mlflow
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, capability {props.major}.{props.minor}"
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "mlflow": mlflow.__version__, "python": platform.python_version(),
            "gpu": gpu, "load_average_at_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}


def command_line() -> str:
    """The exact command that produced the figures, as typed from the checkout."""
    return " ".join(["python -m bench", *map(shlex.quote, sys.argv[1:])])


def spread(values: list[float]) -> dict[str, float]:
    """Median, min, max and relative half-range of a set of repetitions."""
    med = statistics.median(values)
    return {"median": med, "min": min(values), "max": max(values),
            "spread_pct": 100 * (max(values) - min(values)) / 2 / med if med else 0.0, "n": len(values)}


def interleaved(contenders: dict[str, Callable[[], None]], repetitions: int, warmup: int = 1,
                progress: Callable[[str], None] | None = None) -> dict[str, list[float]]:
    """Seconds per call of each contender, timed in turns so that load from other processes hits all alike."""
    for name, call in contenders.items():
        for _ in range(warmup):
            call()
        if progress:
            progress(f"warmed up {name}")
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for rep in range(repetitions):
        for name, call in contenders.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
        if progress:
            progress(f"repetition {rep + 1}/{repetitions}")
    return times


@dataclass
class Figure:
    """One number of the table: what, how much, against which target, measured how and where."""

    section: str
    name: str
    value: float | None
    unit: str
    target: str = ""
    met: bool | None = None           # None: no target, or not measured here
    detail: dict[str, Any] = field(default_factory=dict)   # repetitions' spread, contenders, notes
    command: str = ""
    machine: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def log(message: str) -> None:
    """Progress on stderr, so that stdout carries only the table."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
