"""A training run's writes, kept on disk in order until the tracking store has them.

The training loop never waits for the store: it appends a write to the outbox (one small JSON file, written under
a temporary name and renamed) and goes on; a background thread delivers the writes in order and deletes each one
only after the store accepted it. When the store stops answering, the thread says so once, keeps everything on
disk and tries again every few seconds; when the store is back it says so once and delivers what waited. What is
still undelivered when the process ends (the store never came back, or the process was killed) stays in the run
folder, and `rain-mlflow sync RUN_DIR` delivers it later.

Exactly once: a write whose request reached the store but whose answer was lost is delivered again. Every write is
therefore idempotent (`delivery.deliver`): metrics carry the timestamp they were taken at, and MLflow keeps one row
per (key, step, timestamp, value); tags, params, artifacts and the end status overwrite themselves with the same
value; the registry model is logged only when the run has none yet.

This module knows nothing of MLflow: `deliver(op)` and `is_outage(exc)` come from `delivery.py`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)
RETRY_S = (1.0, 2.0, 5.0, 10.0)   # waits between attempts while the store is away (the last one repeats)
OPS = "ops"                        # ops/000000012.json: one write each, delivered in name order
BLOBS = "blobs"                    # blobs/000000012/<file>: the content of an artifact write (a dict, a figure)
REJECTED = "rejected"              # writes the store refused for good (not an outage): kept, never retried


class Outbox:
    """The on-disk queue of one run plus the thread that drains it (`start`, `put`, `flush`, `close`)."""

    def __init__(self, folder: Path, deliver: Callable[[dict], None], is_outage: Callable[[BaseException], bool],
                 where: str):
        self.folder = Path(folder)
        (self.folder / OPS).mkdir(parents=True, exist_ok=True)
        self.deliver, self.is_outage, self.where = deliver, is_outage, where
        self.online = True
        self.delivered = 0
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stop = False
        self._busy = False
        self._thread: threading.Thread | None = None
        self._seq = max((int(p.stem) for p in self._ops()), default=0)

    # -- writing (any thread) -------------------------------------------------------------------------------------
    def put(self, op: dict[str, Any]) -> None:
        """Append one write; it is on disk when this returns."""
        with self._lock:
            self._seq += 1
            _write_json(self._op_path(self._seq), op)
            self._wake.notify_all()

    def put_file(self, name: str, write: Callable[[Path], None], op: dict[str, Any]) -> None:
        """Append an artifact write whose content `write(path)` puts in a file of the outbox first."""
        with self._lock:
            self._seq += 1
            blob = self.folder / BLOBS / f"{self._seq:09d}" / name
            blob.parent.mkdir(parents=True, exist_ok=True)
            write(blob)
            _write_json(self._op_path(self._seq), {**op, "path": str(blob), "blob": True})
            self._wake.notify_all()

    def pending(self) -> int:
        return len(self._ops())

    # -- delivering ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name="rain-mlflow-outbox")
        self._thread.start()

    def flush(self, timeout_s: float) -> bool:
        """Wait until every write so far is delivered (True), or the store has been away for `timeout_s` (False).
        While the store answers there is no limit: a large checkpoint upload takes what it takes."""
        away_since = None
        with self._lock:
            self._wake.notify_all()
            while self._ops() or self._busy:
                if self._thread is None or not self._thread.is_alive():
                    return not self._ops()
                now = time.monotonic()
                away_since = None if self.online else (away_since or now)
                if away_since is not None and now - away_since >= timeout_s:
                    return False
                self._wake.wait(0.5)
        return True

    def close(self, timeout_s: float) -> bool:
        """Flush, then stop the thread; True when nothing is left undelivered."""
        done = self.flush(timeout_s)
        with self._lock:
            self._stop = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        return done

    def drain(self) -> int:
        """Deliver everything now, in this thread (the `sync` command); raise at the first failure."""
        count = 0
        for path in self._ops():
            self._deliver_one(path)
            count += 1
        return count

    def _run(self) -> None:
        attempt = 0
        while True:
            with self._lock:
                while not self._stop and not self._ops():
                    self._wake.wait(1.0)
                if self._stop:
                    return
                path = self._ops()[0]
                self._busy = True
            try:
                self._deliver_one(path)
            except Exception as exc:  # noqa: BLE001 - an outage waits, anything else is set aside, never raised
                if not self.is_outage(exc):
                    self._reject(path, exc)
                    continue
                if self.online:
                    self.online = False
                    log.warning("tracking store %s stopped answering; training goes on and its writes wait in %s "
                                "(%d so far)", self.where, self.folder, self.pending())
                with self._lock:
                    self._busy = False
                    self._wake.wait(RETRY_S[min(attempt, len(RETRY_S) - 1)])
                attempt += 1
                continue
            finally:
                with self._lock:
                    self._busy = False
                    self._wake.notify_all()
            if not self.online:
                self.online = True
                log.warning("tracking store %s answers again; delivering the %d waiting writes", self.where,
                            self.pending())
            attempt = 0

    def _deliver_one(self, path: Path) -> None:
        op = json.loads(path.read_text())
        self.deliver(op)
        path.unlink()  # after the store said yes: a crash in between delivers it again (harmlessly, see above)
        if op.get("blob"):
            shutil.rmtree(Path(op["path"]).parent, ignore_errors=True)
        self.delivered += 1

    def _reject(self, path: Path, exc: BaseException) -> None:
        target = self.folder / REJECTED / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps({"op": json.loads(path.read_text()), "error": str(exc)[:2000]}))
        path.unlink()
        log.warning("the tracking store refused a %s write (%s); kept in %s", json.loads(target.read_text())["op"]
                    .get("kind"), " ".join(str(exc).split())[:200], target)

    def _ops(self) -> list[Path]:
        return sorted((self.folder / OPS).glob("*.json"))

    def _op_path(self, seq: int) -> Path:
        return self.folder / OPS / f"{seq:09d}.json"


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        json.dump(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
