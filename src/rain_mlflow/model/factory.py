"""Building the classifier from a config, and the self-contained model the registry serves.

`RainModel` takes raw windows in the data's own units, NaN where a reading is missing,
applies the run's missing-value treatment itself (causal fill, training-mean fill, indicator variables:
`data/missing.py`) and the training-split scaler that was fitted for it,
and returns logits `[B, 2]` (index 1 = rain). It is never pickled: checkpoints (`best.pt`) are plain dicts loadable
with `torch.load(..., weights_only=True)`, and the registered model (`serving.py`) rebuilds a RainModel from
`best.pt` with `rain_model_from_payload`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from rain_mlflow.config import RunConfig
from rain_mlflow.data.missing import MissingPolicy, model_inputs
from rain_mlflow.model.classifier import RainClassifier


def build_classifier(cfg: RunConfig, n_vars: int) -> RainClassifier:
    m = cfg.model
    classifier = RainClassifier(input_token_len=m.input_token_len, d_model=m.d_model, n_heads=m.n_heads,
                                e_layers=m.e_layers, d_ff=m.d_ff, dropout=m.dropout, activation=m.activation,
                                use_norm=m.use_norm, n_vars=n_vars, pooling=m.pooling)
    classifier.backbone.use_activation_checkpointing(cfg.train.checkpoint_activations)
    return classifier


class RainModel(nn.Module):
    """Raw windows [B, window, C] in the data's units (column order `features`, NaN = missing) -> logits [B, 2].

    `variables` are what the classifier sees: the data columns, then the indicator variables (`missing:...`).
    """

    def __init__(self, classifier: RainClassifier, mean: Any, scale: Any, features: list[str], window: int,
                 config: dict[str, Any] | None = None):
        super().__init__()
        self.config = config or {}  # the training RunConfig as a dict: label rule, columns, split, missing policy
        self.classifier = classifier
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))
        self.variables = list(features)
        self.policy = MissingPolicy.from_variables(self.variables, self.config.get("data", {}))
        self.features = list(self.policy.columns)
        self.window = int(window)

    def forward(self, x: Tensor) -> Tensor:
        inputs, _ = model_inputs(x.float(), self.mean, self.scale, self.policy)
        return self.classifier(inputs)

    @torch.no_grad()
    def rain_probability(self, x: Tensor) -> Tensor:
        return torch.softmax(self.forward(x).float(), dim=-1)[:, 1]


def rain_model_from_payload(payload: dict[str, Any]) -> tuple[RainModel, RunConfig]:
    """Rebuild a serving model from a best.pt / last.pt payload (no command line needed)."""
    cfg = RunConfig.from_dict(payload["config"])
    classifier = build_classifier(cfg, n_vars=len(payload["features"]))
    classifier.load_state_dict(payload["model"])
    model = RainModel(classifier, payload["scaler_mean"], payload["scaler_scale"], payload["features"],
                      payload["window"], payload["config"])
    return model.eval(), cfg
