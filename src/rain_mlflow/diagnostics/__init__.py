"""Run diagnostics: pure rules over a run's per-epoch history (no MLflow), used live by `train` and offline by
`compare`. See docs/diagnostics.md for the rules, their defaults and the evidence behind each threshold.

- `history.py`: `RunHistory`, a run's metrics per epoch; `thresholds.py`: `Thresholds`, every rule's settings.
- `rules.py`: the rules and `diagnose`; `tags.py`: the tags a diagnosis leaves on its run; `text.py`: wording.
"""
