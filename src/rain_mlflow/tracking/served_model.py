"""The file MLflow runs to rebuild a registered rain-mlflow model ("models from code"; see `serving.py`)."""

from mlflow.models import set_model

from rain_mlflow.tracking.serving import RainPyfunc

set_model(RainPyfunc())
