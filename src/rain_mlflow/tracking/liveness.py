"""Is the process that trains a run still alive? The heartbeat a training run carries, and how resume reads it.

A training process writes the tag `rain.heartbeat` when its run starts and then every `HEARTBEAT_S` seconds
(`RAIN_MLFLOW_HEARTBEAT_S`, default 30): host, boot id, process id and start time of the process, and the time of
the beat. `train --resume` refuses a RUNNING run whose owner looks alive, because two processes writing one run
corrupt it (each epoch logged twice, checkpoints overwritten by the slower one):
- same machine (host name and boot id match): alive exactly when that process exists with that start time, so a
  run whose trainer was SIGKILLed or crashed is resumable at once;
- another machine (a new Colab VM): alive while the last beat is younger than `STALE_AFTER` beats; after that
  the owner is presumed gone. `--force` overrides the check (for a machine that is known to be gone).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import psutil

HEARTBEAT_TAG = "rain.heartbeat"
STALE_AFTER = 3  # beats


def heartbeat_s() -> float:
    return float(os.environ.get("RAIN_MLFLOW_HEARTBEAT_S", "30"))


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), or None if there is no such process."""
    try:
        return round(psutil.Process(pid).create_time(), 2)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def beat() -> str:
    """The heartbeat tag value of this process, now."""
    pid = os.getpid()
    return json.dumps({"host": socket.gethostname(), "boot_id": _boot_id(), "pid": pid,
                       "process_start": _start_time(pid), "at_ms": int(time.time() * 1000),
                       "every_s": heartbeat_s()}, sort_keys=True)


def owner_alive(tag: str | None, now_ms: int | None = None) -> str | None:
    """Why the run's owner looks alive (a sentence), or None when it is gone or unknown."""
    try:
        b: dict[str, Any] = json.loads(tag) if tag else {}
    except ValueError:
        return None
    if not b:
        return None
    age_s = ((now_ms or int(time.time() * 1000)) - int(b.get("at_ms", 0))) / 1000
    where = f"process {b.get('pid')} on {b.get('host')!r}"
    if b.get("host") == socket.gethostname() and b.get("boot_id") == _boot_id():
        alive = b.get("pid") is not None and _start_time(int(b["pid"])) == b.get("process_start")
        return f"{where} (this machine) is still running" if alive else None
    stale_s = STALE_AFTER * float(b.get("every_s", heartbeat_s()))
    if age_s < stale_s:
        return (f"{where} sent a heartbeat {age_s:.0f} s ago (it counts as gone after {stale_s:.0f} s without "
                "one)")
    return None
