"""Training: one tracked run around the epoch loop.

- `run.py`: `run_training` (and `dry_run_training`): validate, prepare a `RunContext`, open the run, train,
  finish; `TrainRequest` says how it was asked to run.
- `loop.py`: `fit`, the epochs (steps, evaluation, early stopping, checkpoints); `epochs.py`: `EpochTracker`, its
  per-epoch callback (log, diagnose live, stop); `note.py`: the epoch line and the run's description.
- `metrics.py`, `losses.py`, `schedule.py`, `precision.py`, `baselines.py`: what the loop computes with.
- `resume.py`, `dry_run.py`, `estimate.py`, `oom.py`, `distributed.py`: resuming a run, the dry run and its
  estimates, out-of-memory reports, several processes under torchrun.
"""
