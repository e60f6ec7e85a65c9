"""Loading official Timer-XL checkpoints into the backbone, every bad-file case, and freezing."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from rain_mlflow.errors import CheckpointError, UserError
from rain_mlflow.model.classifier import RainClassifier
from rain_mlflow.model.timerxl import TimerXL
from rain_mlflow.model.transfer import load_pretrained_backbone, set_backbone_frozen

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).parent / "fixtures"  # copies of shared/fixtures, so a clean clone has them

SMALL = dict(
    input_token_len=8, output_token_len=8, d_model=32, n_heads=4, e_layers=2, d_ff=64,
    dropout=0.1, activation="relu", use_norm=True,
)


class NotATensor:
    """A custom class: torch.save stores a reference to it, which weights_only=True must refuse."""


class RunsCode:
    """Unpickling this would call os.system; weights_only=True must refuse before anything runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def random_state(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    return {key: torch.randn(shape) for key, shape in shapes.items()}


def small_state(**overrides) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        shapes = {k: list(v.shape) for k, v in TimerXL(**{**SMALL, **overrides}).state_dict().items()}
    return random_state(shapes)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


def assert_same(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed after a failed load"


@pytest.fixture
def backbone() -> TimerXL:
    torch.manual_seed(0)
    return TimerXL(**SMALL)


# --- good files ---------------------------------------------------------------------------------------------


def test_full_size_released_layout_loads(tmp_path):
    layout = json.loads((FIXTURES / "timerxl_checkpoint_layout.json").read_text())
    state = random_state(layout["keys"])
    path = tmp_path / "checkpoint.pth"
    torch.save(state, path)
    model = TimerXL(**layout["config"])
    summary = load_pretrained_backbone(model, path)
    assert summary == {"path": str(path), "n_tensors": 142, "n_parameters": layout["num_parameters"]}
    for key in ("embedding.weight", "blocks.attn_layers.7.conv2.weight", "head.bias"):
        assert torch.equal(model.state_dict()[key], state[key])


@pytest.mark.parametrize(
    "wrap",
    [lambda s: s, lambda s: {f"module.{k}": v for k, v in s.items()}, lambda s: {"state_dict": s, "epoch": 3},
     lambda s: {"model": {f"module.{k}": v for k, v in s.items()}, "config": {"d_model": 32}}],
    ids=["plain", "module-prefix", "state_dict-wrapper", "model-wrapper-with-prefix"],
)
def test_accepted_forms_load_exactly(tmp_path, backbone, wrap):
    state = small_state()
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(state), path)
    summary = load_pretrained_backbone(backbone, str(path))
    assert summary["n_tensors"] == len(state)
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, state[key])


# --- bad files: one CheckpointError line each, model untouched -------------------------------------------------


def load_fails(backbone: TimerXL, path: Path, *needles: str) -> str:
    before = snapshot(backbone)
    with pytest.raises(CheckpointError) as caught:
        load_pretrained_backbone(backbone, path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    for needle in needles:
        assert needle in message, message
    assert_same(backbone, before)
    return message


def test_checkpoint_error_is_a_user_error():
    assert issubclass(CheckpointError, UserError)


def test_missing_file(tmp_path, backbone):
    load_fails(backbone, tmp_path / "nope.pth", "does not exist")


def test_directory(tmp_path, backbone):
    load_fails(backbone, tmp_path, "is not a file")


def test_other_d_model_names_first_key_and_both_shapes(tmp_path, backbone):
    path = tmp_path / "wide.pth"
    torch.save(small_state(d_model=64), path)
    load_fails(
        backbone, path,
        "does not fit the model: embedding.weight has shape [64, 8] in the file but [32, 8] in the model",
        "(d_model or input_token_len differ?)",
    )


def test_other_d_ff_names_first_conv_key(tmp_path, backbone):
    path = tmp_path / "ff.pth"
    torch.save(small_state(d_ff=128), path)
    load_fails(backbone, path, "blocks.attn_layers.0.conv1.weight has shape [128, 32, 1] in the file but [64, 32, 1]")


def test_missing_keys(tmp_path, backbone):
    path = tmp_path / "fewer_layers.pth"
    torch.save(small_state(e_layers=1), path)
    load_fails(backbone, path, "17 key(s) missing from the file, first blocks.attn_layers.1.attention.inner_attention")


def test_unexpected_keys(tmp_path, backbone):
    state = small_state()
    state["extra.weight"] = torch.zeros(2)
    state["extra.bias"] = torch.zeros(2)
    path = tmp_path / "extra.pth"
    torch.save(state, path)
    load_fails(backbone, path, "2 unexpected key(s) in the file, first extra.weight")


@pytest.mark.parametrize(
    "content, needle",
    [([torch.zeros(2)], "is not a state dict"), ({}, "is not a state dict"),
     ({"embedding.weight": 3, "head.bias": "x"}, "entry 'embedding.weight' holds a int"),
     ({"state_dict": {"a": {"b": torch.zeros(1)}}}, "entry 'a' holds a dict")],
    ids=["list", "empty", "not-tensors", "nested"],
)
def test_not_a_state_dict(tmp_path, backbone, content, needle):
    path = tmp_path / "odd.pth"
    torch.save(content, path)
    load_fails(backbone, path, needle)


@pytest.mark.parametrize("damage", ["truncated", "empty", "text", "random"])
def test_unreadable_file(tmp_path, backbone, damage):
    good = tmp_path / "good.pth"
    torch.save(small_state(), good)
    data = good.read_bytes()
    bad = {"truncated": data[: len(data) // 2], "empty": b"", "text": b"not a checkpoint\n",
           "random": bytes(range(256)) * 8}[damage]
    path = tmp_path / "bad.pth"
    path.write_bytes(bad)
    load_fails(backbone, path, "is truncated or not a PyTorch checkpoint")


def test_custom_object_is_refused(tmp_path, backbone):
    path = tmp_path / "object.pth"
    torch.save({"embedding.weight": NotATensor()}, path)
    load_fails(backbone, path, "contains Python objects other than tensors; refusing to load it (weights_only=True)")


@pytest.mark.parametrize("as_torch_zip", [False, True])
def test_pickle_carrying_code_is_refused_and_not_run(tmp_path, backbone, as_torch_zip):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    if as_torch_zip:
        torch.save({"embedding.weight": RunsCode(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"embedding.weight": RunsCode(marker)}, protocol=2))
    load_fails(backbone, path, "contains Python objects other than tensors")
    assert not marker.exists()


# --- freezing -------------------------------------------------------------------------------------------------


def test_set_backbone_frozen_toggles_only_the_backbone():
    model = RainClassifier(input_token_len=8, d_model=32, n_heads=4, e_layers=1, d_ff=64, dropout=0.0,
                           activation="relu", use_norm=True, n_vars=2)
    set_backbone_frozen(model, True)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.classifier.parameters())
    model(torch.randn(2, 16, 2)).sum().backward()
    assert model.backbone.embedding.weight.grad is None and model.classifier.weight.grad is not None
    set_backbone_frozen(model, False)
    assert all(p.requires_grad for p in model.parameters())
