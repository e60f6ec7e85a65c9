"""`tune`: a hyperparameter search on Optuna whose trials are `train` runs, pruned by the diagnosis rules.

`space.py` says what a trial may change, `study.py` runs the trials (objective, pruning, storage, resume),
`results.py` writes the study's summary onto its parent MLflow run and `run.py` is the command. See
docs/tuning.md.
"""
