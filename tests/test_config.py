"""The frozen config: presets, overrides, validation messages that name field, value and rule."""

from __future__ import annotations

import dataclasses

import pytest

from rain_mlflow.config import FIELDS, RunConfig, presets
from rain_mlflow.errors import ConfigError

pytestmark = pytest.mark.unit


def test_every_preset_builds_and_round_trips():
    for name in presets.names():
        cfg = presets.build(name)
        assert cfg.preset == name
        assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_presets_carry_the_seed_settings():
    small, efficient, transfer, long = (presets.build(n) for n in ("small", "small_efficient", "transfer",
                                                                    "transfer_long"))
    assert (small.model.e_layers, small.model.d_model, small.data.seq_len, small.train.batch_size) == (4, 512, 720, 32)
    assert small.train.vram_budget_gb == 5.0 and small.train.learning_rate == 1e-4
    assert (efficient.model.e_layers, efficient.model.d_model, efficient.model.d_ff, efficient.train.learning_rate,
            efficient.model.dropout, efficient.train.train_epochs) == (5, 640, 1280, 8e-5, 0.15, 25)
    assert transfer.model.pretrain_model_path == "timer-xl-260b"  # the release, downloaded on first use
    assert (transfer.train.learning_rate, transfer.model.dropout, transfer.train.vram_budget_gb) == (5e-5, 0.2, 7.0)
    assert (long.data.seq_len, long.train.batch_size, long.preset) == (2880, 12, "transfer_long")


def test_config_is_frozen():
    cfg = presets.build("smoke")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.batch_size = 3  # type: ignore[misc]


def test_overrides_from_strings_are_typed():
    cfg = presets.build("small", {"seq_len": "1440", "learning_rate": "3e-4", "use_norm": "true",
                                  "stop_on": "stalled,oscillating", "label_col": ""})
    assert cfg.data.seq_len == 1440 and cfg.train.learning_rate == 3e-4 and cfg.model.use_norm is True
    assert cfg.train.stop_on == ("stalled", "oscillating") and cfg.data.label_col is None


@pytest.mark.parametrize("overrides, fragments", [
    ({"batch_size": "0"}, ("batch_size", ">= 1", "0")),
    ({"learning_rate": "-1"}, ("learning_rate", "> 0", "-1")),
    ({"d_model": "500"}, ("d_model", "n_heads", "500")),
    ({"lradj": "linear"}, ("lradj", "cosine", "'linear'")),
    ({"dropout": "1.5"}, ("dropout", "< 1", "1.5")),
    ({"seq_len": "abc"}, ("seq_len", "integer", "'abc'")),
    ({"train_fraction": "0.7"}, ("sum to 1", "0.7")),
    ({"stop_on": "bogus"}, ("stop_on", "'bogus'")),
    ({"nonsense": "1"}, ("unknown setting", "'nonsense'")),
    ({"seq_len": "10"}, ("seq_len", "input_token_len")),
])
def test_bad_values_name_field_value_and_rule(overrides, fragments):
    with pytest.raises(ConfigError) as err:
        presets.build("small", overrides)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_unknown_preset_lists_choices():
    with pytest.raises(ConfigError, match="unknown preset 'huge'.*smoke.*transfer_long"):
        presets.build("huge")


def test_every_field_documents_itself():
    for name, f in FIELDS.items():
        assert f.metadata.get("help"), name


def test_effective_seq_len_drops_the_oldest_remainder():
    assert presets.build("small").effective_seq_len == 672  # 720 with tokens of 96
    assert presets.build("small", {"seq_len": "1440"}).effective_seq_len == 1440


def test_config_choices_match_the_model():
    from rain_mlflow import config
    from rain_mlflow.model import classifier, timerxl

    assert config.POOLINGS is classifier.POOLINGS         # defined once, in the config; the model imports it
    assert config.ACTIVATIONS is timerxl.ACTIVATIONS
