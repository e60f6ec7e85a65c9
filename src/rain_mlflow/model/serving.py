"""The registered model's format: an MLflow pyfunc that rebuilds the classifier from code and `best.pt`.

Loading a `models:/...` URI never unpickles anything. The model is logged "from code" (MLflow 3's
models-from-code): MLflow stores the small file `served_model.py`, whose only statement builds a `RainPyfunc`,
plus `best.pt` as an artifact and this package (`code_paths`, so no rain-mlflow install is needed). On load,
MLflow runs that file and calls `RainPyfunc.load_context`, which reads `best.pt` with
`torch.load(..., weights_only=True)` (tensors and plain values only) and rebuilds the `RainModel` with
`rain_model_from_payload`. A pickled `PythonModel` or `mlflow.pytorch` model would instead run whatever code the
pickle names, which is why loading those from a shared server is unsafe.

Input (the model signature): float32 windows `[batch, window, n_columns]` in the data's own units, NaN where a
reading is missing, columns in the order of the training data columns (`model.features`). Output: float32
`[batch]`, the probability of rain in the label horizon. The served model applies the run's missing-value
treatment (docs/data.md) and the training-split scaler itself.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch

from rain_mlflow.model.factory import RainModel, rain_model_from_payload

log = logging.getLogger(__name__)
ENTRY_FILE = Path(__file__).with_name("served_model.py")
CHECKPOINT = "checkpoint"   # the artifact name of best.pt inside the logged model
BATCH = 256


class RainPyfunc(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: raw windows -> rain probabilities, built from `best.pt` at load time."""

    def load_context(self, context: Any) -> None:
        payload = torch.load(context.artifacts[CHECKPOINT], map_location="cpu", weights_only=True)
        self.model, _ = rain_model_from_payload(payload)

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would derive a schema from them
        """float32 windows [batch, window, n_vars] in data units -> float32 rain probabilities [batch]."""
        x = np.asarray(model_input, dtype=np.float32)
        out = [self.model.rain_probability(torch.from_numpy(x[i:i + BATCH])).numpy()
               for i in range(0, len(x), BATCH)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, dtype=np.float32)


def signature(window: int, n_vars: int) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, window, n_vars))]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1,))]))


def log_pyfunc(checkpoint_path: Path, window: int, n_vars: int, input_example: np.ndarray, step: int) -> Any:
    """Log the model of the active run from its `best.pt`; returns MLflow's ModelInfo."""
    import rain_mlflow

    # MLflow's "Add type hints to the `predict` method" warning comes from defining RainPyfunc, inside MLflow's own
    # warnings filter, which overrides any filter set here; the signature below is the schema.
    return mlflow.pyfunc.log_model(
        name="model", python_model=str(ENTRY_FILE), artifacts={CHECKPOINT: str(checkpoint_path)},
        code_paths=[str(Path(rain_mlflow.__file__).parent)], signature=signature(window, n_vars),
        input_example=np.asarray(input_example, dtype=np.float32), step=step,
        pip_requirements=[f"torch>={torch.__version__.split('+')[0]}", "numpy"])


def is_ours(flavors: dict[str, Any]) -> bool:
    """A model logged by `log_pyfunc` (models-from-code pyfunc with the checkpoint artifact)."""
    pyfunc = flavors.get("python_function", {})
    return "model_code_path" in pyfunc and "pytorch" not in flavors


def unwrap(loaded: Any) -> RainModel:
    """The RainModel inside a loaded pyfunc (for `test`, which needs the features and the training config)."""
    return loaded.unwrap_python_model().model


def load_served_model(model_uri: str) -> tuple[RainModel, str | None]:
    """The RainModel behind a `models:/...` URI and the id of the run that trained it.

    A model registered by an older version of this package (the `pytorch` flavour, a pickled module) is not
    unpickled: its training run's `checkpoints/best.pt` is loaded instead, with `weights_only=True`.
    """
    from rain_mlflow.errors import UserError
    from rain_mlflow.store import use_store

    use_store()
    try:
        info = mlflow.models.get_model_info(model_uri)
        run_id = source_run(model_uri)
        if is_ours(info.flavors):
            return unwrap(mlflow.pyfunc.load_model(model_uri)), run_id
    except Exception as exc:
        raise UserError(f"cannot load model {model_uri!r}: {' '.join(str(exc).split())[:300]}") from None
    if run_id is None:
        raise UserError(f"model {model_uri!r} is not a rain-mlflow model and names no training run")
    log.info("model %s is in the older pickled format; loading its run's checkpoints/best.pt instead", model_uri)
    from rain_mlflow.tracking import Tracker
    from rain_mlflow.train import checkpoint

    path = Tracker.download_run_artifact(run_id, "checkpoints/best.pt")
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
