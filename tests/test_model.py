"""TimerXL backbone and RainClassifier: official maths, checkpoint layout, masks, and the SDPA fast path."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rain_mlflow.model.classifier import POOLINGS, RainClassifier
from rain_mlflow.model.timerxl import TimerXL

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).parent / "fixtures"  # copies of shared/fixtures, so a clean clone has them

SMALL = dict(
    input_token_len=8, output_token_len=4, d_model=32, n_heads=4, e_layers=2, d_ff=64,
    dropout=0.0, activation="relu", use_norm=False,
)


def small_model(**overrides) -> TimerXL:
    torch.manual_seed(0)
    model = TimerXL(**{**SMALL, **overrides})
    # Make the learned bias large so a wrong scale or a wrong mask would show in every comparison.
    for layer in model.blocks.attn_layers:
        torch.nn.init.normal_(layer.attention.inner_attention.attn_bias.emb.weight, std=3.0)
    return model.eval()


def reference_forecast(model: TimerXL, x: torch.Tensor) -> torch.Tensor:
    """The official non-flash maths written out: explicit [B, H, T, T] scores, bias + mask added, then scaled.

    RoPE here uses complex multiplication on the first half of each head, independent of the model's tables.
    """
    P, D, E = model.input_token_len, model.d_model, model.head_dim
    H = D // E
    if model.use_norm:
        mean = x.mean(1, keepdim=True)
        std = torch.sqrt(x.var(1, keepdim=True, unbiased=False) + 1e-5)
        x = (x - mean) / std
    B, L, C = x.shape
    N = L // P
    T = C * N
    h = model.embedding(x.permute(0, 2, 1).unfold(-1, P, P)).reshape(B, T, D)
    theta = 10000.0 ** (-torch.arange(0, E // 2, 2, dtype=torch.float64) / (E // 2))
    rotation = torch.polar(torch.ones(T, E // 4, dtype=torch.float64), torch.arange(T)[:, None] * theta)
    var, time = torch.arange(T) // N, torch.arange(T) % N

    def rope(t: torch.Tensor) -> torch.Tensor:  # [B, T, H, E]
        first = torch.view_as_complex(t[..., : E // 2].double().reshape(B, T, H, E // 4, 2).contiguous())
        first = torch.view_as_real(first * rotation[None, :, None]).reshape(B, T, H, E // 2).float()
        return torch.cat([first, t[..., E // 2 :]], dim=-1)

    for layer in model.blocks.attn_layers:
        att = layer.attention
        q = rope(att.query_projection(h).view(B, T, H, E))
        k = rope(att.key_projection(h).view(B, T, H, E))
        v = att.value_projection(h).view(B, T, H, E)
        scores = torch.einsum("bthe,bshe->bhts", q, k)
        bias = att.inner_attention.attn_bias.emb.weight[(var[:, None] == var[None, :]).long()].permute(2, 0, 1)
        bias = bias.masked_fill(time[None, :] > time[:, None], float("-inf"))
        probs = torch.softmax((scores + bias) / math.sqrt(E), dim=-1)
        out = torch.einsum("bhts,bshe->bthe", probs, v).reshape(B, T, D)
        h = layer.norm1(h + att.out_projection(out))
        ffn = layer.conv2(torch.relu(layer.conv1(h.transpose(1, 2)))).transpose(1, 2)
        h = layer.norm2(h + ffn)
    out = model.head(model.blocks.norm(h)).reshape(B, C, N * model.output_token_len).transpose(1, 2)
    return out * std + mean if model.use_norm else out


def patch_rows(model: TimerXL, n: int) -> slice:
    return slice(n * model.output_token_len, (n + 1) * model.output_token_len)


# --- the official checkpoint: maths and layout ---------------------------------------------------------------


def test_matches_official_outputs_on_every_fixture_case():
    fixture = torch.load(FIXTURES / "timerxl_reference.pt", weights_only=True)
    model = TimerXL(**fixture["config"])
    model.load_state_dict(fixture["state_dict"])
    model.eval()
    assert fixture["cases"]
    with torch.no_grad():
        for case in fixture["cases"]:
            error = (model.forecast(case["x"]) - case["y"]).abs().max().item()
            assert error <= 1e-4, f"case x{list(case['x'].shape)}: max abs error {error}"


def test_state_dict_layout_equals_released_checkpoint():
    layout = json.loads((FIXTURES / "timerxl_checkpoint_layout.json").read_text())
    with torch.device("meta"):  # same keys and shapes as a real build, without allocating 67M parameters
        model = TimerXL(**layout["config"])
    shapes = {key: list(tensor.shape) for key, tensor in model.state_dict().items()}
    assert list(shapes) == list(layout["keys"])  # same order too: errors name the first mismatching key
    assert shapes == layout["keys"]
    assert sum(p.numel() for p in model.parameters()) == layout["num_parameters"]


# --- masks and position ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_vars", [1, 3])
@pytest.mark.parametrize("method", ["forecast", "encode"])
def test_later_patch_never_changes_earlier_outputs(n_vars, method):
    # use_norm off: the official normalisation uses the whole window, so it is not causal by design.
    model = small_model()
    x = torch.randn(2, 5 * 8, n_vars)
    changed = x.clone()
    changed[:, 4 * 8 :] += torch.randn(2, 8, n_vars) * 5
    with torch.no_grad():
        before, after = getattr(model, method)(x), getattr(model, method)(changed)
    if method == "forecast":
        early = slice(0, 4 * model.output_token_len)
        torch.testing.assert_close(after[:, early], before[:, early])
        assert not torch.allclose(after[:, patch_rows(model, 4)], before[:, patch_rows(model, 4)])
    else:
        torch.testing.assert_close(after[:, :, :4], before[:, :, :4])
        assert not torch.allclose(after[:, :, 4], before[:, :, 4])


@pytest.mark.parametrize("method", ["forecast", "encode"])
def test_variable_sees_other_variables_up_to_the_same_time(method):
    model = small_model()
    x = torch.randn(2, 5 * 8, 3)
    changed = x.clone()
    changed[:, 2 * 8 : 3 * 8, 1] += 5.0  # variable 1, patch 2
    with torch.no_grad():
        before, after = getattr(model, method)(x), getattr(model, method)(changed)
    if method == "forecast":
        before, after = before[..., 0], after[..., 0]
        torch.testing.assert_close(after[:, : 2 * model.output_token_len], before[:, : 2 * model.output_token_len])
        assert not torch.allclose(after[:, patch_rows(model, 2)], before[:, patch_rows(model, 2)])
    else:
        torch.testing.assert_close(after[:, 0, :2], before[:, 0, :2])
        assert not torch.allclose(after[:, 0, 2], before[:, 0, 2])


def test_remainder_points_are_dropped_but_count_in_normalisation():
    x = torch.randn(2, 4 * 8 + 5, 2)
    with torch.no_grad():
        plain = small_model()
        torch.testing.assert_close(plain.forecast(x), plain.forecast(x[:, : 4 * 8]))
        normed = small_model(use_norm=True)
        assert normed.forecast(x).shape == (2, 4 * 4, 2)
        assert not torch.allclose(normed.forecast(x), normed.forecast(x[:, : 4 * 8]))


# --- the SDPA fast path against the explicit maths -------------------------------------------------------------


@pytest.mark.parametrize("n_vars", [1, 4])
@pytest.mark.parametrize("use_norm", [False, True])
@pytest.mark.parametrize("train_mode", [False, True])
def test_sdpa_path_equals_explicit_reference(n_vars, use_norm, train_mode):
    model = small_model(use_norm=use_norm).train(train_mode)  # dropout 0: train mode must be the same maths
    x = torch.randn(3, 6 * 8, n_vars) * 2 + 1
    with torch.no_grad():
        torch.testing.assert_close(model.forecast(x), reference_forecast(model, x), atol=2e-5, rtol=1e-4)


def test_linear_ffn_path_equals_convolution_path():
    # fp32 on CPU runs the FFN as oneDNN convolutions; other dtypes and devices use F.linear on the same weights.
    model = small_model()
    x = torch.randn(2, 4 * 8, 3)
    with torch.no_grad():
        torch.testing.assert_close(model.double().forecast(x.double()).float(), model.float().forecast(x))


def test_one_variable_bias_is_cancelled_by_softmax():
    # The C == 1 path skips the bias; that is exact only because softmax ignores a per-row constant.
    model = small_model()
    x = torch.randn(2, 4 * 8, 1)
    with torch.no_grad():
        before = model.forecast(x)
        for layer in model.blocks.attn_layers:
            layer.attention.inner_attention.attn_bias.emb.weight.add_(7.0)
        torch.testing.assert_close(model.forecast(x), before)
        torch.testing.assert_close(reference_forecast(model, x), before, atol=2e-5, rtol=1e-4)


def test_gradients_reach_the_variable_bias():
    model = small_model(dropout=0.1).train()
    model.forecast(torch.randn(2, 3 * 8, 3)).square().mean().backward()
    for layer in model.blocks.attn_layers:
        grad = layer.attention.inner_attention.attn_bias.emb.weight.grad
        assert grad is not None and grad.abs().sum() > 0


def test_token_layout_is_cached_per_shape():
    model = small_model()
    with torch.no_grad():
        model.forecast(torch.randn(1, 16, 3))
        model.forecast(torch.randn(2, 16, 3))
        assert len(model._layouts) == 1
        model.forecast(torch.randn(1, 24, 3))
    assert len(model._layouts) == 2
    assert not any("cos" in key or "sin" in key for key in model.state_dict())
    clone = pickle.loads(pickle.dumps(model))  # whole-module pickles (MLflow) leave the cache behind
    assert clone._layouts == {} and len(model._layouts) == 2
    with torch.no_grad():
        assert clone.forecast(torch.randn(1, 16, 3)).shape == (1, 8, 3)


def test_bf16_autocast_runs_and_stays_close():
    model = small_model()
    x = torch.randn(2, 4 * 8, 3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = model.forecast(x)
    with torch.no_grad():
        assert (low.float() - model.forecast(x)).abs().max() < 0.2


@pytest.mark.parametrize(
    "field, value, needle",
    [("activation", "swish", "activation must be one of"), ("n_heads", 5, "multiple of n_heads"),
     ("dropout", 1.5, "dropout must be"), ("e_layers", 0, "e_layers must be a positive integer")],
)
def test_bad_config_names_the_field(field, value, needle):
    with pytest.raises(ValueError, match=needle):
        TimerXL(**{**SMALL, field: value})


def test_short_input_is_rejected():
    with pytest.raises(ValueError, match=r"time >= input_token_len=8; got shape \[2, 5, 3\]"):
        small_model().forecast(torch.randn(2, 5, 3))


# --- classifier ----------------------------------------------------------------------------------------------


def classifier(pooling: str = "last", **overrides) -> RainClassifier:
    torch.manual_seed(0)
    config = dict(input_token_len=8, d_model=32, n_heads=4, e_layers=2, d_ff=64, dropout=0.1,
                  activation="relu", use_norm=True, n_vars=3, pooling=pooling)
    return RainClassifier(**{**config, **overrides})


def test_classifier_backbone_fits_the_official_head_shape():
    model = classifier()
    assert model.backbone.output_token_len == model.backbone.input_token_len == 8
    assert classifier(n_classes=3)(torch.randn(4, 24, 3)).shape == (4, 3)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_every_pooling_runs_forward_and_backward(pooling):
    model = classifier(pooling).train()
    logits = model(torch.randn(4, 3 * 8, 3))
    assert logits.shape == (4, 2)
    F.cross_entropy(logits, torch.tensor([0, 1, 1, 0])).backward()
    assert model.classifier.weight.grad is not None
    assert model.backbone.embedding.weight.grad.abs().sum() > 0


def test_classifier_rejects_wrong_length_and_variables():
    model = classifier()
    with pytest.raises(ValueError, match="x has 25 time steps; expected a positive multiple of input_token_len=8"):
        model(torch.randn(2, 25, 3))
    with pytest.raises(ValueError, match="x has 5 time steps"):
        model(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="x has 4 variables; expected n_vars=3"):
        model(torch.randn(2, 24, 4))
    with pytest.raises(ValueError, match="pooling must be one of"):
        classifier("max")
