"""`rain-mlflow compare`: diagnose every run of an experiment that has a per-epoch history, whoever logged it.

- `histories.py`: which runs, under which metric names, at which epochs (pure; the reading rules).
- `reader.py`: `read_runs`, the one way runs and histories are read (the store's fast reader in
  `tracking/readers.py`, the public API behind it).
- `report.py`: `diagnose_runs` and the table / JSON / markdown renderers (pure).
- `figure.py`: `--report DIR` (report.md and curves.png).
- `command.py`: `run`, the comparison itself, `compare_command`, the command, and the tag writer.
Nothing here imports MLflow at import time: a comparison on a sqlite store starts without it.
"""
