"""Benchmarks of rain-mlflow, run from a source checkout: `python -m bench` (see bench/README.md)."""
