"""Starting a run from an official-format checkpoint: strict loading through the CLI, and frozen epochs."""

from __future__ import annotations

import os

import pytest
import torch
from mlflow.tracking import MlflowClient

from rain_mlflow.config import presets
from rain_mlflow.model.timerxl import TimerXL
from rain_mlflow.model.factory import build_classifier
from rain_mlflow.model import checkpoint
from tests.conftest import assert_user_error

pytestmark = pytest.mark.e2e


def official_checkpoint(path, d_model: int = 32) -> dict:
    """A plain state dict in the released layout, for the smoke shape (random values), as OpenLTM saves it."""
    m = presets.build("smoke").model
    torch.manual_seed(123)
    backbone = TimerXL(input_token_len=m.input_token_len, output_token_len=m.input_token_len, d_model=d_model,
                       n_heads=m.n_heads, e_layers=m.e_layers, d_ff=m.d_ff, dropout=0.0, activation="relu",
                       use_norm=False)
    state = {f"module.{k}": v for k, v in backbone.state_dict().items()}  # a DDP-saved file: prefix stripped
    torch.save(state, path)
    return backbone.state_dict()


def initial_head(payload: dict) -> dict:
    """The non-backbone tensors of a freshly built classifier: the trainer seeds torch, then builds the model."""
    cfg = checkpoint.config_of(payload)
    torch.manual_seed(cfg.train.seed)
    model = build_classifier(cfg, len(payload["features"]))
    return {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")}


def run_of(experiment: str):
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return client, run


def test_a_checkpoint_of_another_shape_is_refused_before_any_run(store, synthetic_csv, cli, tmp_path):
    path = tmp_path / "other.pth"
    official_checkpoint(path, d_model=64)
    result = cli("train", "--preset", "smoke", "--data", synthetic_csv, "--pretrain-model-path", path)
    assert_user_error(result, "embedding.weight", "[64, 24]", "[32, 24]")
    assert not (tmp_path / "mlflow.db").exists()


def test_transfer_starts_from_the_file_and_freezes_the_backbone(store, synthetic_csv, cli, tmp_path):
    path = tmp_path / "checkpoint.pth"
    released = official_checkpoint(path)
    result = cli("train", "--preset", "smoke", "--data", synthetic_csv, "--pretrain-model-path", path,
                 "--train-epochs", "1", "--freeze-epochs", "1", "--experiment", "frozen")
    assert result.code == 0, result.err
    client, run = run_of("frozen")
    assert run.data.params["pretrained_tensors"] == str(len(released))
    last = checkpoint.load(client.download_artifacts(run.info.run_id, "checkpoints/last.pt", str(tmp_path)))
    for key, value in released.items():                       # frozen for epoch 1: exactly the file's weights
        torch.testing.assert_close(last["model"][f"backbone.{key}"], value, rtol=0, atol=0)
    initial = initial_head(last)                              # the head as the trainer drew it, before epoch 1
    assert initial.keys() == {k for k in last["model"] if not k.startswith("backbone.")} and initial
    moved = {k: float((last["model"][k] - value).abs().max()) for k, value in initial.items()}
    assert max(moved.values()) > 0, moved                     # the classifier head trained meanwhile
    scale = max(float(value.abs().max()) for value in initial.values())
    assert max(moved.values()) < 0.5 * scale, (moved, scale)  # by training steps, from that very draw

    result = cli("train", "--preset", "smoke", "--data", synthetic_csv, "--pretrain-model-path", path,
                 "--train-epochs", "1", "--experiment", "unfrozen")
    assert result.code == 0, result.err
    client, run = run_of("unfrozen")
    moved = checkpoint.load(client.download_artifacts(run.info.run_id, "checkpoints/last.pt", str(tmp_path / "u")))
    assert not torch.equal(moved["model"]["backbone.embedding.weight"], released["embedding.weight"])
    os.remove(path)
