"""One validation source: each field's `Rule` drives the config's check and the command line's option type, a
misspelt rule is an error at import time, and each vocabulary is defined once."""

from __future__ import annotations

import click
import pytest

from rain_mlflow.cli import cli
from rain_mlflow.config import FIELDS, choices, params, presets, rule_of
from rain_mlflow.config.rules import Rule, _f
from rain_mlflow.errors import ConfigError
from tests.conftest import assert_user_error

pytestmark = pytest.mark.unit


def test_a_misspelt_rule_keyword_is_an_error_where_the_field_is_declared():
    with pytest.raises(TypeError, match="mni"):
        _f(1, "a count", mni=1)
    declared = _f(1, "a count", min=1)
    assert declared.metadata == {"help": "a count", "rule": Rule(min=1)}


@pytest.mark.parametrize("kwargs, fragment", [
    ({"pattern": "a+"}, "pattern_text"),
    ({"duration": True}, "min"),
    ({"choices": ("a",), "each_choices": ("a",)}, "exclude"),
])
def test_an_inconsistent_rule_is_refused(kwargs, fragment):
    with pytest.raises(TypeError, match=fragment):
        Rule(**kwargs)


@pytest.mark.parametrize("rule, value, broken", [
    (Rule(min=1), 0, ">= 1"), (Rule(min=1), 1, None), (Rule(gt=0.0), 0.0, "> 0.0"), (Rule(gt=0.0), 1e-9, None),
    (Rule(max=1.0), 1.5, "<= 1.0"), (Rule(max=1.0), 1.0, None),
    (Rule(lt=0.5), 0.5, "< 0.5"), (Rule(lt=0.5), 0.49, None),
])
def test_broken_bound_names_the_bound_at_and_beside_it(rule, value, broken):
    assert rule.broken_bound(value) == broken


def test_every_setting_option_carries_the_fields_own_rule():
    train = cli.commands["train"]
    settings = {p.name: p.type for p in train.params if isinstance(p.type, params.Setting)}
    assert set(settings) == set(FIELDS)
    for name, kind in settings.items():
        assert kind.rule is rule_of(name) is FIELDS[name].metadata["rule"], name


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "0"], "batch_size must be >= 1; got 0"),
    (["--lradj", "linear"], "lradj must be one of cosine, type1, none; got 'linear'"),
    (["--stop-on", "stalled,bogus"], "stop_on may only list stalled, oscillating"),
    (["--seq-len", "3M"], "seq_len must be a step count (an integer) or a duration"),
])
def test_the_option_and_the_config_refuse_a_setting_in_the_same_words(cli, argv, message):
    # --devices 2 would launch torchrun: the option's own check stops the command before anything starts
    result = cli("train", "--devices", "2", *argv)
    assert_user_error(result, message)
    with pytest.raises(ConfigError) as err:
        presets.build("small", {argv[0].lstrip("-").replace("-", "_"): argv[1]})
    assert message in str(err.value)


def test_a_setting_passes_on_as_typed_so_the_config_sees_what_the_user_wrote():
    kind = params.Setting("vram_budget_gb")
    assert kind.convert("", None, None) == ""   # '' = "no budget" for the config, not "keep the preset's value"
    assert presets.build("smoke", {"vram_budget_gb": ""}).train.vram_budget_gb is None
    assert kind.metavar() == "NUM" and params.Setting("seq_len").metavar() == "N|DURATION"


def test_option_types_are_clicks_types_with_the_house_wording():
    assert isinstance(params.Integer("n", min=1), click.IntRange)
    assert isinstance(params.Number("x", gt=0), click.FloatRange)
    assert isinstance(params.Choice("c", ("a", "b")), click.Choice)
    assert isinstance(params.OutputFile("o"), click.Path) and isinstance(params.InputFile("i"), click.Path)
    assert isinstance(params.Flag("f"), click.types.BoolParamType)
    with pytest.raises(ConfigError, match=r"^n must be an integer >= 1; got '0'$"):
        params.Integer("n", min=1).convert("0", None, None)
    with pytest.raises(ConfigError, match=r"^x must be a number > 0; got '0'$"):
        params.Number("x", gt=0).convert("0", None, None)
    with pytest.raises(ConfigError, match=r"^c must be one of a, b; got 'z'$"):
        params.Choice("c", ("a", "b")).convert("z", None, None)
    assert params.Number("x", gt=0, optional=True).convert(" ", None, None) is None
    with pytest.raises(TypeError):
        params.Integer("n", mni=1)  # type: ignore[call-arg]


def test_a_threshold_option_is_checked_by_thresholds_itself():
    kind = params.Threshold("stalled_epochs")
    assert kind.convert("4", None, None) == 4
    with pytest.raises(ConfigError, match=r"^stalled_epochs must be an integer; got 'x'$"):
        kind.convert("x", None, None)
    with pytest.raises(ConfigError, match=r"^Thresholds.stalled_epochs must be an integer >= 2; got 1$"):
        kind.convert("1", None, None)
    assert params.Threshold("noise_z").convert("1", None, None) == 1.0


def test_study_names_that_go_into_search_filters_are_checked_on_the_command_line(cli):
    assert_user_error(cli("tune", "--study", "a'b"), "study must be letters, digits, '_', '-' or '.'; got \"a'b\"")


def test_each_vocabulary_is_defined_once():
    from rain_mlflow import synth
    from rain_mlflow.compare import report
    from rain_mlflow.tune import study
    from rain_mlflow.config import DIAGNOSIS_FLAGS, STOP_METRICS
    from rain_mlflow.diagnostics.rules import RULES

    assert synth.GAPS is choices.SYNTH_GAPS
    assert study.PRUNERS is choices.PRUNERS
    assert report.FORMATS is choices.COMPARE_FORMATS
    assert choices.TUNE_METRICS is STOP_METRICS
    assert tuple(RULES) == DIAGNOSIS_FLAGS
    prune_on = next(p for p in cli.commands["tune"].params if p.name == "prune_on")
    assert prune_on.default is choices.PRUNE_ON_DEFAULT  # MLproject's tune default is checked against it
