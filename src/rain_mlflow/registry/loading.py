"""Loading a registered model: from a `models:/...` URI to the `RainModel` and the run that trained it.

The model's format (a pyfunc rebuilt from code and `best.pt`, never unpickled) is `tracking/serving.py`.
"""

from __future__ import annotations

import logging
import sys

import mlflow

from rain_mlflow.errors import UserError
from rain_mlflow.model import checkpoint
from rain_mlflow.model.factory import RainModel, rain_model_from_payload
from rain_mlflow.tracking import serving
from rain_mlflow.tracking.runs import download_run_artifact
from rain_mlflow.tracking.store import use_store

log = logging.getLogger(__name__)
# Where the pyfunc class lived before the tracking package: a model logged then names this module in its code
# file, and a process that has already imported this package takes the class from here, not from the model.
FORMER_SERVING_MODULE = "rain_mlflow.model.serving"


def load_served_model(model_uri: str) -> tuple[RainModel, str | None]:
    """The RainModel behind a `models:/...` URI and the id of the run that trained it.

    A model registered by an older version of this package (the `pytorch` flavour, a pickled module) is not
    unpickled: its training run's `checkpoints/best.pt` is loaded instead, with `weights_only=True`.
    """
    use_store()
    sys.modules.setdefault(FORMER_SERVING_MODULE, serving)
    try:
        info = mlflow.models.get_model_info(model_uri)
        run_id = source_run(model_uri)
        if serving.is_ours(info.flavors):
            return serving.unwrap(mlflow.pyfunc.load_model(model_uri)), run_id
    except Exception as exc:
        raise UserError(f"cannot load model {model_uri!r}: {' '.join(str(exc).split())[:300]}") from None
    if run_id is None:
        raise UserError(f"model {model_uri!r} is not a rain-mlflow model and names no training run")
    log.info("model %s is in the older pickled format; loading its run's checkpoints/best.pt instead", model_uri)
    path = download_run_artifact(run_id, "checkpoints/best.pt")
    return rain_model_from_payload(checkpoint.load(path))[0], run_id


def source_run(model_uri: str) -> str | None:
    """The training run behind a models:/ URI (registry alias/version or a logged model id)."""
    client = mlflow.MlflowClient()
    body = model_uri[len("models:/"):]
    if "@" in body:
        name, alias = body.split("@", 1)
        return client.get_model_version_by_alias(name, alias).run_id
    if "/" in body:
        name, version = body.split("/", 1)
        return client.get_model_version(name, version).run_id
    return client.get_logged_model(body).source_run_id
