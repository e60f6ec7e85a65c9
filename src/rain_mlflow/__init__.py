"""rain-mlflow: Timer-XL rain / no-rain classifiers trained, tracked, diagnosed and promoted with MLflow."""

__version__ = "0.1.0"
