"""The tracking layer: every conversation with MLflow's tracking store. With `registry/`, the only MLflow importers.

- `tracker.py`: `Tracker`, the writer of one run (params, metrics, tags, artifacts, the model), and how a run
  ends (FINISHED, FAILED or KILLED with the reason), this process's run or one left behind.
- `protocol.py`: `RunTracker`, what the library needs of a tracker, and `NullTracker`, which writes nowhere.
- `experiments.py`: which experiment, created with the UI's kind tag and training view.
- `runs.py`: other runs, found by id or by tags, and their artifacts.
- `datasets.py`: the data digest, a run's data identity whatever its path.
- `diagnosis.py`: diagnosis tags written onto stored runs (`compare`, `promote`).
- `pipelines.py`: the pipeline run of `main` and its steps' runs.
- `store.py`: which store, first contact, one clear error when it is away; waits for sqlite's write lock.
- `outbox.py` (no MLflow) and `delivery.py`: a training run's writes kept on disk and delivered; `sync`.
- `liveness.py`: the heartbeat of a training process; `interrupts.py`: Ctrl-C / SIGTERM held during writes;
  `ui.py`: links into the MLflow UI (these three import no MLflow).
- `serving.py`, `served_model.py`: the registered model's pyfunc (loading a registered model: `registry/`).
- `readers.py`: the bulk readers `compare` uses (no MLflow import for a sqlite store).
- `private.py`: every use of MLflow internals, in one place.
A package `__init__` imports nothing in this code base: import a name from the module that defines it.
"""
