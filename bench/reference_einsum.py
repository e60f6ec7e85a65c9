"""A plain re-statement of the official Timer-XL non-flash maths, for benchmarks only (not in the package).

It reads the parameters of a `rain_mlflow.model.timerxl.TimerXL` but none of its forward code: RoPE, the variable bias
and the mask are rebuilt here the way the official model does it, per layer and per batch, with explicit
[B, H, T, T] scores; bias + mask are added to the raw scores and the sum is scaled by 1/sqrt(E) before softmax.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from rain_mlflow.model.timerxl import TimerXL
from rain_mlflow.model.classifier import RainClassifier


def _rope_interleaved(x: Tensor, positions: Tensor) -> Tensor:
    """Rotate pairs (2i, 2i+1) of the first half of the head dim; x is [B, H, T, E]."""
    head_dim = x.shape[-1]
    rot_dim = head_dim // 2
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, rot_dim, 2, dtype=torch.float32) / rot_dim))
    angles = positions.float()[:, None] * inv_freq[None, :]  # [T, E/4]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    a, b = x[..., :rot_dim:2], x[..., 1:rot_dim:2]
    rotated = torch.stack((a * cos - b * sin, b * cos + a * sin), dim=-1).flatten(-2)
    return torch.cat((rotated, x[..., rot_dim:]), dim=-1)


def _bias_and_mask(weight: Tensor, batch: int, n_vars: int, n_tokens: int) -> Tensor:
    """[B, H, T, T]: learned bias (same variable or not), -inf where the key is later in time."""
    index = torch.arange(n_vars * n_tokens)
    var_id = index // n_tokens
    same = (var_id[:, None] == var_id[None, :]).long()
    bias = F.embedding(same, weight).permute(2, 0, 1).unsqueeze(0).expand(batch, -1, -1, -1)
    blocked = torch.kron(torch.ones(n_vars, n_vars), torch.triu(torch.ones(n_tokens, n_tokens), diagonal=1)).bool()
    return bias.masked_fill(blocked, float("-inf"))


def reference_encode(model: TimerXL, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """x [B, L, C] -> (token features after the final LayerNorm [B, C, N, D], mean, std), the official maths."""
    P, D, E = model.input_token_len, model.d_model, model.head_dim
    H = D // E
    mean = std = None
    if model.use_norm:
        mean = x.mean(1, keepdim=True).detach()
        std = torch.sqrt(torch.var(x, dim=1, keepdim=True, unbiased=False) + 1e-5)
        x = (x - mean) / std
    B, L, C = x.shape
    N = L // P
    T = C * N
    h = model.embedding(x.permute(0, 2, 1).unfold(-1, P, P)).reshape(B, T, D)
    positions = torch.arange(T)
    for layer in model.blocks.attn_layers:
        att = layer.attention
        q = att.query_projection(h).view(B, T, H, E).permute(0, 2, 1, 3)
        k = att.key_projection(h).view(B, T, H, E).permute(0, 2, 1, 3)
        v = att.value_projection(h).view(B, T, H, E)
        q, k = _rope_interleaved(q, positions), _rope_interleaved(k, positions)
        scores = torch.einsum("bhle,bhse->bhls", q, k)
        scores = scores + _bias_and_mask(att.inner_attention.attn_bias.emb.weight, B, C, N).to(scores.dtype)
        probs = F.dropout(torch.softmax(scores / math.sqrt(E), dim=-1), att.inner_attention.dropout, model.training)
        out = torch.einsum("bhls,bshe->blhe", probs, v).reshape(B, T, D)
        h = layer.norm1(h + layer.dropout(att.out_projection(out)))
        y = layer.dropout(layer.activation(layer.conv1(h.transpose(-1, 1))))
        y = layer.dropout(layer.conv2(y).transpose(-1, 1))
        h = layer.norm2(h + y)
    return model.blocks.norm(h).reshape(B, C, N, D), mean, std


def reference_forecast(model: TimerXL, x: Tensor) -> Tensor:
    """x [B, L, C] -> [B, N * P_out, C], the official non-flash computation on `model`'s weights."""
    features, mean, std = reference_encode(model, x)
    B, C, N, _ = features.shape
    out = model.head(features).reshape(B, C, N * model.output_token_len).transpose(1, 2)
    return out * std + mean if model.use_norm else out


def reference_classify(model: RainClassifier, x: Tensor) -> Tensor:
    """x [B, L, C] -> logits [B, n_classes] of a `last`-pooling classifier, its backbone run by the official maths."""
    if model.pooling != "last":
        raise ValueError(f"the reference pools the last token only; got pooling={model.pooling!r}")
    features, _, _ = reference_encode(model.backbone, x)
    return model.classifier(model.dropout(features[:, :, -1].flatten(1)))
