"""Sequence classifier: a Timer-XL backbone, a pooling of its token features, and a linear head.

Poolings (features are [B, C, N, D] after the backbone's final LayerNorm):
- ``last`` (default): the last token of every variable, concatenated -> [B, C * D]. Under the multivariate
  causal mask, token (c, N-1) has attended to every variable at every time, so these C tokens summarise the
  whole window; they are also the positions the backbone was pretrained to forecast from (next-token at the
  end of the context), and they sit closest to the moment being classified ("rain soon?"). Concatenating
  rather than averaging keeps which variable said what. It won the synthetic comparison in
  `bench/pooling_experiment.py` (numbers in docs/model.md).
- ``mean``: mean over all C * N tokens -> [B, D]; order-free, but early tokens saw only the start of the window.
- ``attention``: a learned query scores every token, softmax-weighted sum -> [B, D]; can learn which
  variables and times matter, at the price of a few parameters that start untrained.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rain_mlflow.config import POOLINGS
from rain_mlflow.model.timerxl import TimerXL


class AttentionPool(nn.Module):
    """Softmax over tokens of a learned score; returns their weighted mean [B, D]."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.score = nn.Linear(d_model, 1)

    def forward(self, tokens: Tensor) -> Tensor:
        weights = torch.softmax(self.score(tokens).squeeze(-1), dim=-1)  # [B, T]
        return torch.einsum("bt,btd->bd", weights, tokens)


class RainClassifier(nn.Module):
    """Timer-XL backbone + pooling + dropout + linear head; forward(x [B, L, C]) -> logits [B, n_classes].

    The backbone uses output_token_len = input_token_len, so the released checkpoint (96 -> 96) loads into it;
    its forecasting head is kept for that reason but is not used here.
    """

    def __init__(
        self,
        *,
        input_token_len: int,
        d_model: int,
        n_heads: int,
        e_layers: int,
        d_ff: int,
        dropout: float,
        activation: str,
        use_norm: bool,
        n_vars: int,
        pooling: str = "last",
        n_classes: int = 2,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}; got {pooling!r}")
        for name, value in (("n_vars", n_vars), ("n_classes", n_classes)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        self.backbone = TimerXL(
            input_token_len=input_token_len, output_token_len=input_token_len, d_model=d_model, n_heads=n_heads,
            e_layers=e_layers, d_ff=d_ff, dropout=dropout, activation=activation, use_norm=use_norm,
        )
        self.input_token_len = input_token_len
        self.n_vars = n_vars
        self.pooling = pooling
        self.attention_pool = AttentionPool(d_model) if pooling == "attention" else None
        self.dropout = nn.Dropout(dropout)
        pooled_size = n_vars * d_model if pooling == "last" else d_model
        self.classifier = nn.Linear(pooled_size, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        features = self.backbone.encode(x)  # [B, C, N, D]
        return self.classifier(self.dropout(self._pool(features)))

    def _pool(self, features: Tensor) -> Tensor:
        if self.pooling == "last":
            return features[:, :, -1].flatten(1)
        tokens = features.flatten(1, 2)  # [B, C * N, D]
        if self.pooling == "mean":
            return tokens.mean(dim=1)
        assert self.attention_pool is not None  # built for pooling == "attention"
        return self.attention_pool(tokens)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 3:
            raise ValueError(f"x must be [batch, time, variables]; got shape {list(x.shape)}")
        length, n_vars = x.shape[1], x.shape[2]
        if length < self.input_token_len or length % self.input_token_len:
            hint = f" (trim the oldest {length % self.input_token_len})" if length > self.input_token_len else ""
            raise ValueError(
                f"x has {length} time steps; expected a positive multiple of input_token_len="
                f"{self.input_token_len}{hint}"
            )
        if n_vars != self.n_vars:
            raise ValueError(f"x has {n_vars} variables; expected n_vars={self.n_vars}")
