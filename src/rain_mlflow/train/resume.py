"""`train --resume RUN_ID`: what may continue, with which settings, and what the run records about it.

- Only a training run that is not FINISHED, has a `checkpoints/last.pt`, and is not still being trained by
  another process (its heartbeat, `tracking/liveness.py`; `--force` overrides) can be resumed.
- Only settings that leave what already ran valid may change (`RESUMABLE_OVERRIDES`). Each resume is recorded:
  params `resume.<n>.after_epoch` and `resume.<n>.<setting>` (the new value of every setting that changed, the
  runtime device included), the tag `resume_count`, and the artifact `resume_history.json` (old and new values).
- The LR schedule keeps its horizon: extending `train_epochs` from 20 to 30 would otherwise bend the cosine of
  the epochs still to come. The resumed config carries `schedule_epochs` = the original span; `--reschedule`
  spreads the schedule over the new `train_epochs` instead. Either way the run says what happens to the LR.
"""

from __future__ import annotations

import json
import logging
import socket
import tempfile
import time
from typing import Any

from rain_mlflow.config import RunConfig
from rain_mlflow.errors import UserError
from rain_mlflow.model import checkpoint
from rain_mlflow.tracking import liveness
from rain_mlflow.tracking.protocol import RunTracker
from rain_mlflow.tracking.runs import download_run_artifact, find_run
from rain_mlflow.train.schedule import lr_at

log = logging.getLogger(__name__)
# Settings a resumed run may change: they do not alter the model, the data or the optimisation path so far.
RESUMABLE_OVERRIDES = ("train_epochs", "patience", "stop_on", "device", "amp", "data")
HISTORY_FILE = "resume_history.json"


def resume_source(run_id: str, overrides: dict[str, Any], reschedule: bool = False,
                  force: bool = False) -> tuple[RunConfig, dict]:
    """The config and last.pt of a run to continue; refuses what would corrupt it or alter what already ran."""
    run = find_run(run_id)
    if run.data.tags.get("rain.step") != "train":
        raise UserError(f"run {run_id} is not a training run (rain.step={run.data.tags.get('rain.step')!r})")
    if run.info.status == "FINISHED":
        raise UserError(f"run {run_id} already FINISHED; nothing to resume (train a new run instead)")
    if run.info.status == "RUNNING":
        owner = liveness.owner_alive(run.data.tags.get(liveness.HEARTBEAT_TAG))
        if owner and not force:
            raise UserError(f"run {run_id} is still being trained: {owner}; stop that process first, or pass "
                            "--force if it is gone")
        if owner:
            log.warning("--force: resuming run %s although %s", run_id, owner)
    blocked = sorted(set(overrides) - set(RESUMABLE_OVERRIDES))
    if blocked:
        raise UserError(f"cannot change {blocked[0]} when resuming run {run_id}; a resumed run may only change "
                        f"{', '.join(RESUMABLE_OVERRIDES)}")
    tmp = tempfile.mkdtemp(prefix="rain-mlflow-resume-")
    try:
        path = download_run_artifact(run_id, "checkpoints/last.pt", tmp)
    except Exception:
        raise UserError(f"run {run_id} has no checkpoints/last.pt to resume from (it did not finish an epoch)") \
            from None
    payload = checkpoint.load(path, checkpoint.LAST_FORMAT)
    before = checkpoint.config_of(payload)
    cfg = before.with_overrides(**overrides)
    if reschedule or cfg.train.train_epochs != before.train.train_epochs:
        span = cfg.train.train_epochs if reschedule else before.train.schedule_span
        cfg = cfg.with_overrides(schedule_epochs=None if span == cfg.train.train_epochs else span)
    done = payload["train_state"]["epoch"]
    if done >= cfg.train.train_epochs:
        raise UserError(f"run {run_id} already completed {done} of {cfg.train.train_epochs} epochs; pass a larger "
                        "--train-epochs to continue it")
    return cfg, payload


def schedule_note(before: RunConfig, after: RunConfig, done: int) -> str | None:
    """What resuming does to the learning rate, when the number of epochs changed (None when nothing changes)."""
    t0, t1 = before.train, after.train
    if t0.train_epochs == t1.train_epochs and t0.schedule_span == t1.schedule_span:
        return None
    if t1.lradj != "cosine":
        return f"lradj {t1.lradj} does not depend on the number of epochs: the learning rate continues unchanged"
    old = lr_at(t1.learning_rate, "cosine", done, t0.schedule_span, 0, 1, 0)
    new = lr_at(t1.learning_rate, "cosine", done, t1.schedule_span, 0, 1, 0)
    if t1.schedule_span == t0.schedule_span:
        floor = (f"; epochs {t1.schedule_span + 1}-{t1.train_epochs} run at its floor (1e-08) and will barely "
                 "change the weights" if t1.train_epochs > t1.schedule_span else "")
        return (f"the cosine schedule keeps its original horizon of {t1.schedule_span} epochs (epoch {done + 1} at "
                f"lr {old:.3g}){floor}; pass --reschedule to spread it over {t1.train_epochs} epochs instead")
    return (f"--reschedule: the cosine schedule now spans {t1.schedule_span} epochs instead of "
            f"{t0.schedule_span}; the learning rate of epoch {done + 1} moves from {old:.3g} to {new:.3g}")


def record(tracker: RunTracker, before: RunConfig, after: RunConfig, done: int, runtime: dict[str, str],
           note: str | None) -> dict[str, Any]:
    """Log what this resume changed: `resume.<n>.*` params, the `resume_count` tag, `resume_history.json`."""
    params = tracker.params()
    n = int(tracker.tags().get("resume_count", "0")) + 1
    old, new = before.flat(), after.flat()
    changed = {k: [old.get(k), v] for k, v in new.items() if old.get(k) != v}
    changed |= {k: [params.get(k), v] for k, v in runtime.items() if k in params and params[k] != v}
    entry = {"resume": n, "after_epoch": done, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
             "host": socket.gethostname(), "changed": changed, "schedule": note}
    tracker.log_params({f"resume.{n}.after_epoch": done,
                        **{f"resume.{n}.{key}": values[1] for key, values in changed.items()}})
    tracker.set_tags({"resume_count": str(n)})
    tracker.log_dict(_history(tracker) + [entry], HISTORY_FILE)
    return entry


def _history(tracker: RunTracker) -> list[dict]:
    try:
        path = tracker.download_artifact(HISTORY_FILE)
    except Exception:  # first resume: no history yet
        return []
    return json.loads(path.read_text())
