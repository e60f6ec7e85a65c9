"""The Model Registry (with `tracking/`, the only MLflow importers).

- `promote.py`: `promote`: the best healthy run's model registered under an alias.
- `loading.py`: a registered model (`models:/NAME@ALIAS`, a version, a logged model id) loaded for `test`.
"""
