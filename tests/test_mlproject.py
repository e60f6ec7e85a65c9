"""MLproject <-> CLI <-> config: every declared parameter is an option of its command with the same default."""

from __future__ import annotations

import re

import click
import pytest
import yaml

from rain_mlflow.cli import cli
from rain_mlflow.config import FIELDS
from rain_mlflow.diagnostics.rules import Thresholds
from tests.conftest import REPO

pytestmark = pytest.mark.unit

COMMAND_OPTIONS = {  # parameters that belong to a command, not to the run config
    "synth": {"output", "years", "freq", "seed", "gaps"},
    "clean": {"output"},
    "test": {"model_uri"},
    "compare": {"format", "fail_on", "metric_map"},
    "promote": {"model_name", "metric", "alias"},
    "import-log": {"log"},
    "tune": {"n_trials", "metric", "pruner", "prune_on"},
    "sync": {"run_folder"},
}


def load_project() -> dict:
    return yaml.safe_load((REPO / "MLproject").read_text())


def option_for(command: click.Command, param: str) -> click.Option:
    dashed, underscored = "--" + param.replace("_", "-"), "--" + param
    for option in command.params:
        if isinstance(option, click.Option) and (dashed in option.opts or underscored in option.opts):
            return option
    raise AssertionError(f"command {command.name!r} has no option for MLproject parameter {param!r}")


def test_entry_points_are_the_commands():
    project = load_project()
    assert set(project["entry_points"]) == {"main", "synth", "clean", "train", "test", "compare", "promote",
                                            "import-log", "tune", "sync"}
    assert project["python_env"] == "mlproject/python_env.yaml"
    assert (REPO / project["python_env"]).is_file()


def test_every_parameter_is_an_option_and_a_config_field_or_command_option():
    from rain_mlflow.config import presets

    for name, entry in load_project()["entry_points"].items():
        command = cli.commands[name]
        assert f"rain-mlflow {name}" in entry["command"]
        for param, spec in entry.get("parameters", {}).items():
            option = option_for(command, param)
            assert "{" + param + "}" in entry["command"], (name, param)
            if param == "preset":
                assert spec["default"] in presets.names()
                continue
            assert param in FIELDS or param in COMMAND_OPTIONS.get(name, set()), (name, param)
            default = str(spec["default"])
            if param in FIELDS and option.default is None:  # CLI keeps the preset value: compare with the config
                assert str(FIELDS[param].default) == default, (name, param, FIELDS[param].default, default)
            else:
                assert float_or_str(option.default) == float_or_str(default), (name, param, option.default)


def test_train_declares_nothing_so_every_setting_passes_through():
    # `mlflow run -P resume=ID` must not also send a default --preset (a resumed run keeps its own)
    assert load_project()["entry_points"]["train"].get("parameters") in (None, {})


def test_every_config_field_is_a_train_option_in_both_spellings():
    train = cli.commands["train"]
    for name in FIELDS:
        option = option_for(train, name)
        spellings = {"--" + name.replace("_", "-"), "--" + name}  # one spelling when the name has no underscore
        assert spellings <= set(option.opts), (name, option.opts)
        assert option.name == name, (name, option.name)          # both spellings set the config field itself


def test_every_threshold_is_a_compare_option():
    compare = cli.commands["compare"]
    for f in Thresholds.__dataclass_fields__:
        assert option_for(compare, f).default == getattr(Thresholds(), f)


def float_or_str(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return "" if value is None else str(value)


def test_commands_only_use_declared_placeholders():
    for name, entry in load_project()["entry_points"].items():
        used = set(re.findall(r"{(\w+)}", entry["command"]))
        assert used == set(entry.get("parameters", {})), name
