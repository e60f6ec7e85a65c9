"""The registered model's format: an MLflow pyfunc that rebuilds the classifier from code and `best.pt`.

Loading a `models:/...` URI never unpickles anything. The model is logged "from code" (MLflow 3's
models-from-code): MLflow stores the small file `served_model.py`, whose only statement builds a `RainPyfunc`,
plus `best.pt` as an artifact and this package (`code_paths`, so no rain-mlflow install is needed). On load,
MLflow runs that file and calls `RainPyfunc.load_context`, which reads `best.pt` with
`torch.load(..., weights_only=True)` (tensors and plain values only) and rebuilds the `RainModel` with
`rain_model_from_payload`. A pickled `PythonModel` or `mlflow.pytorch` model would instead run whatever code the
pickle names, which is why loading those from a shared server is unsafe. Resolving a `models:/...` URI to the
model is `registry/loading.py`.

Input (the model signature): float32 windows `[batch, window, n_columns]` in the data's own units, NaN where a
reading is missing, columns in the order of the training data columns (`model.features`). Output: float32
`[batch]`, the probability of rain in the label horizon. The served model applies the run's missing-value
treatment (docs/data.md) and the training-split scaler itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

import rain_mlflow
from rain_mlflow.model.factory import RainModel, rain_model_from_payload

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


def signature(window: int, n_vars: int) -> ModelSignature:
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, window, n_vars))]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1,))]))


def log_pyfunc(checkpoint_path: Path, window: int, n_vars: int, input_example: np.ndarray, step: int) -> Any:
    """Log the model of the active run from its `best.pt`; returns MLflow's ModelInfo."""
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
