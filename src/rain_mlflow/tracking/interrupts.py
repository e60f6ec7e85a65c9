"""Ctrl-C and SIGTERM as one exception, delivered where it cannot cut a write in half.

Colab, `kill`, batch schedulers and `docker stop` send SIGTERM first and SIGKILL a few seconds later. Python turns
only SIGINT into KeyboardInterrupt; without a handler SIGTERM ends the process where it stands and the MLflow run
stays RUNNING. While `handling()` is active both raise `Interrupted`, a KeyboardInterrupt, so the one
`except KeyboardInterrupt` path (the Tracker ends the run KILLED) serves both; the exit code is 128 + the signal
number (130 for Ctrl-C, 143 for SIGTERM).

Inside `shielded()` (a store write, a checkpoint upload, the run's ending) a signal is held and raised when the
block ends, so the store never keeps half an artifact. A second signal while one is held is raised at once: two
Ctrl-C always get out, even from a write that hangs.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop (Ctrl-C or SIGTERM)."""

    def __init__(self, signum: int):
        self.signal_name = signal.Signals(signum).name
        self.exit_code = 128 + int(signum)
        super().__init__(f"interrupted by {self.signal_name}")


_installed = False
_depth = 0
_held: Interrupted | None = None


def _on_signal(signum: int, frame: Any) -> None:
    global _held
    if _depth and _held is None:
        _held = Interrupted(signum)
        return
    raise Interrupted(signum)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into `Interrupted` for the duration (no-op when nested or off the main thread)."""
    global _installed
    if _installed or not _main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, _on_signal)
    _installed = True
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _installed = False


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Hold a signal until the block ends (main thread only; other threads never receive signals)."""
    global _depth, _held
    if not _main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _held is not None:
            held, _held = _held, None
            raise held


def exit_code(exc: BaseException) -> int:
    """130 for Ctrl-C, 143 for SIGTERM: what a shell reports for a process those signals ended."""
    return getattr(exc, "exit_code", 130)


def signal_name(exc: BaseException) -> str:
    return getattr(exc, "signal_name", "SIGINT")
