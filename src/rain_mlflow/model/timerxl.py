"""Timer-XL backbone, compatible with the released OpenLTM `timer_xl` checkpoint.

Same state-dict keys and shapes as the official model and the same maths as its non-flash attention path
(see reference/timerxl.md), but attention runs through `scaled_dot_product_attention` with one additive mask.

Shape names used below: B batch, L time steps, C variables, P = input_token_len, N = L // P tokens per
variable, T = C * N tokens in the variable-major sequence (token c * N + n), D = d_model, H heads, E = D / H.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from rain_mlflow.config import ACTIVATIONS

ROPE_BASE = 10000.0
NORM_EPS = 1e-5  # added to the variance inside the sqrt, as the official use_norm does
_MAX_CACHED_LAYOUTS = 16  # distinct (C, N, device, dtype) grids kept; callers use one or two shapes


@dataclass(frozen=True)
class TokenLayout:
    """What every layer needs about the token grid; built once per (C, N, device, dtype), shared by all layers."""

    n_vars: int
    dtype: torch.dtype  # what the linear layers compute in: the parameters' dtype, or autocast's
    cos: Tensor  # [T, E]: RoPE cosines (1 on the pass-through half)
    sin: Tensor  # [T, E]: RoPE sines (0 on the pass-through half)
    same_var: Tensor | None  # [T, T] bool, query and key belong to the same variable; None when C == 1
    blocked: Tensor | None  # [T, T] bool, key is later in time than query; None when C == 1


def rope_tables(n_tokens: int, head_dim: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos/sin [T, E] for the partial interleaved RoPE of the official model.

    Pairs (2i, 2i+1) for i < E/4 rotate by pos * 10000^(-2i / (E/2)); dims E/2.. pass through unchanged, which
    the tables express as cos 1 / sin 0 so one fused multiply-add covers the whole head. Built in float64 so
    long sequences keep their angle precision before the cast.
    """
    rot_dim = head_dim // 2
    inv_freq = ROPE_BASE ** (-torch.arange(0, rot_dim, 2, dtype=torch.float64) / rot_dim)
    angles = torch.outer(torch.arange(n_tokens, dtype=torch.float64), inv_freq).repeat_interleave(2, dim=1)
    cos = torch.ones(n_tokens, head_dim, dtype=torch.float64)
    sin = torch.zeros(n_tokens, head_dim, dtype=torch.float64)
    cos[:, :rot_dim] = angles.cos()
    sin[:, :rot_dim] = angles.sin()
    return cos.to(device=device, dtype=dtype), sin.to(device=device, dtype=dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved pairs (GPT-J style): (a, b) -> (a cos - b sin, b cos + a sin). x is [..., T, E]."""
    pairs = x.unflatten(-1, (-1, 2))
    rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return x * cos + rotated * sin


def build_layout(n_vars: int, n_per_var: int, head_dim: int, device: torch.device, dtype: torch.dtype) -> TokenLayout:
    """RoPE tables at the flattened positions c * N + n, plus the multivariate causal structure.

    Token (c, n) may attend to every variable's tokens at times <= n (the official non-covariate mask).
    """
    n_tokens = n_vars * n_per_var
    cos, sin = rope_tables(n_tokens, head_dim, device, dtype)
    if n_vars == 1:
        return TokenLayout(n_vars=1, dtype=dtype, cos=cos, sin=sin, same_var=None, blocked=None)
    index = torch.arange(n_tokens, device=device)
    var_id, time_id = index // n_per_var, index % n_per_var
    same_var = var_id[:, None] == var_id[None, :]
    blocked = time_id[None, :] > time_id[:, None]
    return TokenLayout(n_vars=n_vars, dtype=dtype, cos=cos, sin=sin, same_var=same_var, blocked=blocked)


class VariableBias(nn.Module):
    """Learned per-head logit bias: row 1 for same-variable pairs, row 0 for cross-variable pairs."""

    def __init__(self, n_heads: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(2, n_heads)

    def additive_mask(self, layout: TokenLayout, scale: float, dtype: torch.dtype) -> Tensor:
        """[1, H, T, T] float mask for SDPA: bias * scale, -inf where blocked.

        The official path adds the bias to the raw q.k scores and scales the sum, so the bias is scaled too.
        Rebuilt every call because the bias is learned; broadcast over the batch to keep memory O(H T^2).
        """
        assert layout.same_var is not None and layout.blocked is not None  # a single variable needs no mask
        weight = self.emb.weight * scale  # [2, H]
        bias = torch.where(layout.same_var, weight[1][:, None, None], weight[0][:, None, None])
        return bias.masked_fill(layout.blocked, float("-inf")).unsqueeze(0).to(dtype)


class TimeAttention(nn.Module):
    """RoPE + variable bias + causal mask, computed by SDPA (key prefix `inner_attention`)."""

    def __init__(self, n_heads: int, head_dim: int, dropout: float) -> None:
        super().__init__()
        self.attn_bias = VariableBias(n_heads)
        self.scale = 1.0 / math.sqrt(head_dim)
        self.dropout = dropout

    def forward(self, q: Tensor, k: Tensor, v: Tensor, layout: TokenLayout) -> Tensor:
        """q, k, v [B, H, T, E] -> [B, H, T, E]."""
        q, k = apply_rope(q, layout.cos, layout.sin), apply_rope(k, layout.cos, layout.sin)
        dropout_p = self.dropout if self.training else 0.0
        if layout.n_vars == 1:
            # Every pair is same-variable, so the bias adds one constant per head to a whole row of logits,
            # which softmax cancels: plain causal attention is exact and lets SDPA skip the mask.
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=self.scale)
        mask = self.attn_bias.additive_mask(layout, self.scale, q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=self.scale)


class AttentionLayer(nn.Module):
    """Multi-head projections around TimeAttention; all four projections carry a bias, as in the checkpoint."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        # Registration order fixes the state-dict order, which must follow the checkpoint's.
        self.inner_attention = TimeAttention(n_heads, d_model // n_heads, dropout)
        self.query_projection = nn.Linear(d_model, d_model)
        self.key_projection = nn.Linear(d_model, d_model)
        self.value_projection = nn.Linear(d_model, d_model)
        self.out_projection = nn.Linear(d_model, d_model)

    def _split_heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.n_heads, -1)).transpose(1, 2)  # [B, T, D] -> [B, H, T, E]

    def forward(self, x: Tensor, layout: TokenLayout) -> Tensor:
        q = self._split_heads(self.query_projection(x))
        k = self._split_heads(self.key_projection(x))
        v = self._split_heads(self.value_projection(x))
        out = self.inner_attention(q, k, v, layout)
        return self.out_projection(out.transpose(1, 2).flatten(2))  # heads back to [B, T, H * E]


class TimerLayer(nn.Module):
    """Post-norm block: norm1(x + drop(attn(x))), then norm2(x + drop(conv2(drop(act(conv1(x))))))."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float, activation: str) -> None:
        super().__init__()
        self.attention = AttentionLayer(d_model, n_heads, dropout)
        # Kernel-1 Conv1d, as in the checkpoint ([out, in, 1] weights); see _ffn for how it is applied.
        self.conv1 = nn.Conv1d(d_model, d_ff, kernel_size=1)
        self.conv2 = nn.Conv1d(d_ff, d_model, kernel_size=1)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.activation = F.relu if activation == "relu" else F.gelu

    def forward(self, x: Tensor, layout: TokenLayout) -> Tensor:
        x = self.norm1(x + self.dropout(self.attention(x, layout)))
        return self.norm2(x + self._ffn(x, layout.dtype))

    def _ffn(self, x: Tensor, compute_dtype: torch.dtype) -> Tensor:
        """[B, T, D] -> [B, T, D]: conv2(drop(act(conv1(x)))), then dropout."""
        if x.device.type == "cpu" and compute_dtype == torch.float32:
            # fp32 F.linear on CPU runs on MKL sgemm, measured about 2x slower than oneDNN's convolution for
            # these shapes on an AMD host (docs/model.md); bf16 and GPU matmuls are fast, so they keep F.linear.
            y = self.dropout(self.activation(self.conv1(x.transpose(1, 2))))
            return self.dropout(self.conv2(y).transpose(1, 2))
        y = self.dropout(self.activation(F.linear(x, self.conv1.weight.squeeze(-1), self.conv1.bias)))
        return self.dropout(F.linear(y, self.conv2.weight.squeeze(-1), self.conv2.bias))


class TimerBlocks(nn.Module):
    """The layer stack plus the final LayerNorm (key prefix `blocks`).

    With `checkpoint_layers` each layer keeps only its input for backward and recomputes the rest then
    (non-reentrant `torch.utils.checkpoint`, which replays dropout with the same random state): activation memory
    drops from every layer's intermediates to one [B, T, D] tensor per layer, for about one extra forward pass.
    """

    def __init__(self, layers: list[TimerLayer], d_model: int) -> None:
        super().__init__()
        self.attn_layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(d_model)
        self.checkpoint_layers = False

    def forward(self, x: Tensor, layout: TokenLayout) -> Tensor:
        # Nothing to save when no gradient flows (evaluation, or a frozen backbone).
        recompute = self.checkpoint_layers and torch.is_grad_enabled() and (
            x.requires_grad or any(p.requires_grad for p in self.attn_layers.parameters()))
        for layer in self.attn_layers:
            x = checkpoint(layer, x, layout, use_reentrant=False) if recompute else layer(x, layout)
        return self.norm(x)


def _check_config(activation: str, dropout: float, **sizes: int) -> None:
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    d_model, n_heads = sizes["d_model"], sizes["n_heads"]
    if d_model % n_heads:
        raise ValueError(f"d_model must be a multiple of n_heads; got d_model={d_model}, n_heads={n_heads}")
    if (d_model // n_heads) % 4:
        # RoPE rotates pairs within the first half of each head, so the head size must split into 4.
        raise ValueError(f"d_model / n_heads must be a multiple of 4; got {d_model} / {n_heads}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}; got {activation!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1); got {dropout!r}")


class TimerXL(nn.Module):
    """Decoder-only Transformer over patches of every variable (OpenLTM `timer_xl`, multivariate mask).

    The official model turns any activation string other than "relu" into GELU; here only "relu" and "gelu"
    are accepted so a typo fails loudly.
    """

    def __init__(
        self,
        *,
        input_token_len: int,
        output_token_len: int,
        d_model: int,
        n_heads: int,
        e_layers: int,
        d_ff: int,
        dropout: float,
        activation: str,
        use_norm: bool,
        checkpoint_activations: bool = False,
    ) -> None:
        super().__init__()
        _check_config(
            activation, dropout, input_token_len=input_token_len,
            output_token_len=output_token_len, d_model=d_model, n_heads=n_heads, e_layers=e_layers, d_ff=d_ff,
        )
        self.input_token_len = input_token_len
        self.output_token_len = output_token_len
        self.d_model = d_model
        self.head_dim = d_model // n_heads
        self.use_norm = use_norm
        self.embedding = nn.Linear(input_token_len, d_model)
        layers = [TimerLayer(d_model, n_heads, d_ff, dropout, activation) for _ in range(e_layers)]
        self.blocks = TimerBlocks(layers, d_model)
        self.head = nn.Linear(d_model, output_token_len)
        self.use_activation_checkpointing(checkpoint_activations)
        # Plain dict, not buffers: the checkpoint holds no buffers, and the tables depend on the input shape.
        self._layouts: dict[tuple, TokenLayout] = {}

    def use_activation_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each layer in backward instead of keeping its activations (see TimerBlocks)."""
        self.blocks.checkpoint_layers = bool(enabled)

    def __getstate__(self) -> dict:
        # Pickling the whole module (mlflow.pytorch.log_model does) must not carry cached CUDA tensors to a
        # machine that may have no GPU; the cache refills on the first forward.
        state = super().__getstate__()  # already a copy of __dict__
        state["_layouts"] = {}
        return state

    def forward(self, x: Tensor) -> Tensor:
        return self.forecast(x)

    def forecast(self, x: Tensor) -> Tensor:
        """x [B, L, C] -> next-token forecasts [B, N * output_token_len, C], de-normalised.

        Output rows n * P_out .. (n + 1) * P_out - 1 forecast the points after patch n; the horizon forecast
        is the last P_out rows. If L % P != 0 the most recent L % P points are dropped, as in the official code.
        """
        x, mean, std = self._normalise(x)
        features = self._encode_normalised(x)  # [B, C, N, D]
        batch, n_vars, n_tokens, _ = features.shape
        out = self.head(features).reshape(batch, n_vars, n_tokens * self.output_token_len).transpose(1, 2)
        return out * std + mean if self.use_norm else out

    def encode(self, x: Tensor) -> Tensor:
        """x [B, L, C] -> token features after the final LayerNorm, [B, C, N, D]."""
        return self._encode_normalised(self._normalise(x)[0])

    def _normalise(self, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Per-window, per-variable standardisation over all L points (only the mean is detached)."""
        if x.dim() != 3 or x.shape[1] < self.input_token_len:
            raise ValueError(
                f"x must be [batch, time, variables] with time >= input_token_len={self.input_token_len}; "
                f"got shape {list(x.shape)}"
            )
        if not self.use_norm:
            return x, None, None
        mean = x.mean(dim=1, keepdim=True).detach()
        std = torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + NORM_EPS)
        return (x - mean) / std, mean, std

    def _encode_normalised(self, x: Tensor) -> Tensor:
        batch, length, n_vars = x.shape
        n_tokens = length // self.input_token_len
        patches = x.transpose(1, 2)[..., : n_tokens * self.input_token_len]  # drop the most recent remainder
        patches = patches.reshape(batch, n_vars, n_tokens, self.input_token_len)
        tokens = self.embedding(patches).reshape(batch, n_vars * n_tokens, self.d_model)
        # The embedding output has the dtype q, k, v will have (autocast or not), so tables match them.
        layout = self._layout(n_vars, n_tokens, tokens.device, tokens.dtype)
        return self.blocks(tokens, layout).reshape(batch, n_vars, n_tokens, self.d_model)

    def _layout(self, n_vars: int, n_tokens: int, device: torch.device, dtype: torch.dtype) -> TokenLayout:
        key = (n_vars, n_tokens, device, dtype)
        layout = self._layouts.get(key)
        if layout is None:
            if len(self._layouts) >= _MAX_CACHED_LAYOUTS:
                self._layouts.clear()
            layout = build_layout(n_vars, n_tokens, self.head_dim, device, dtype)
            self._layouts[key] = layout
        return layout
