"""Every option of every command, given a bad value: exit code 2, one `error:` line, no traceback, nothing written.

The bad values are generated (hypothesis) from each option's own rule, read from its click type
(`config/params.py`): a run setting's `Setting` type carries the field's declared `Rule` (type, min / gt / max / lt,
choices, pattern, required), the other types carry theirs as constructor arguments (bounds, choices, optional...),
and a diagnosis threshold's `Threshold` type defers to `Thresholds`' own validation. Examples per option are few and
derandomized so CI stays fast and repeatable; the enumeration covers every option.
"""

from __future__ import annotations

import contextlib
import io
import re
import string
from pathlib import Path

import click
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rain_mlflow.cli import cli, main
from rain_mlflow.config import DIAGNOSIS_FLAGS, field_type, presets, rule_of
from rain_mlflow.config import params as types
from rain_mlflow.config.rules import Rule
from rain_mlflow.diagnostics.rules import Thresholds
from rain_mlflow.errors import ConfigError

pytestmark = pytest.mark.unit

VALUELESS = {"help", "version", "write_tags"}          # flags that take no value
FREE_TEXT = {"na_values"}                               # any text is a valid list of NA tokens
NOT_A_COLUMN = "no_such_column_zz"
TRUE_FALSE = {"1", "true", "yes", "on", "0", "false", "no", "off"}
WORDS = st.text(alphabet=string.ascii_letters + "_-", min_size=1, max_size=12)


def options_of(name: str) -> list[click.Option]:
    return [p for p in cli.commands[name].params if isinstance(p, click.Option) and p.name not in VALUELESS]


CASES = [(name, option.name) for name in sorted(cli.commands) for option in options_of(name)
         if option.name not in FREE_TEXT]


def option(command: str, name: str) -> click.Option:
    return next(o for o in options_of(command) if o.name == name)


# ---- bad values from the rules ----------------------------------------------------------------------------------

def not_a_number(kind: type) -> st.SearchStrategy[str]:
    def parses(text: str) -> bool:
        try:
            kind(text)
            return True
        except ValueError:
            return False
    return WORDS.filter(lambda t: not parses(t))


def out_of_range(kind: type, rule: Rule) -> st.SearchStrategy[str]:
    """Numbers the rule excludes: below `min`, at or below `gt`, above `max`, at or above `lt` (and nan, inf)."""
    if kind is int:
        bad = [st.sampled_from(["1.5", "2e0", "0x10"])]
        if rule.min is not None:
            bad.append(st.integers(max_value=int(rule.min) - 1).map(str))
        if rule.gt is not None:
            bad.append(st.integers(max_value=int(rule.gt)).map(str))
        if rule.max is not None:
            bad.append(st.integers(min_value=int(rule.max) + 1).map(str))
        if rule.lt is not None:
            bad.append(st.integers(min_value=int(rule.lt)).map(str))
        return st.one_of(bad)
    real = dict(allow_nan=False, allow_infinity=False)
    bad = [st.sampled_from(["nan", "inf", "-inf"])]
    if rule.min is not None:
        bad.append(st.floats(max_value=rule.min, exclude_max=True, **real).map(repr))
    if rule.gt is not None:
        bad.append(st.floats(max_value=rule.gt, **real).map(repr))
    if rule.max is not None:
        bad.append(st.floats(min_value=rule.max, exclude_min=True, **real).map(repr))
    if rule.lt is not None:
        bad.append(st.floats(min_value=rule.lt, **real).map(repr))
    return st.one_of(bad)


def field_values(name: str, workdir: Path) -> st.SearchStrategy[str]:
    """Bad values for the config field `name`, from its declared type and rule."""
    rule = rule_of(name)
    base, optional = field_type(name)
    choices: list[st.SearchStrategy[str]] = []
    if rule.duration:   # a step count or a duration: neither a number nor a fixed duration, or too small
        from rain_mlflow.config.durations import duration_of

        choices += [not_a_number(int).filter(lambda t: duration_of(t) is None), out_of_range(int, rule),
                    st.sampled_from(["-2h", "1M", "3Y", "nan"] + (["0h"] if rule.min else []))]
    elif base in (int, float):
        choices += [not_a_number(base), out_of_range(base, rule)]
    elif base is bool:
        choices.append(WORDS.filter(lambda t: t.lower() not in TRUE_FALSE))
    elif rule.choices is not None:
        choices.append(WORDS.filter(lambda t: t not in rule.choices))
    elif rule.each_choices is not None:
        choices.append(WORDS.filter(lambda t: t not in rule.each_choices).map(lambda t: f"stalled,{t}"))
    elif rule.pattern is not None:
        choices.append(st.text(min_size=1, max_size=12).filter(
            lambda t: bool(t.strip()) and not re.fullmatch(rule.pattern, t.strip())))
    if base is str and not optional:
        choices.append(st.sampled_from(["", "  "]))
    if name == "data":      # a path to read: a folder, a file that is not there
        choices.append(st.sampled_from([str(workdir), str(workdir / "missing.csv")]))
    elif name == "pretrain_model_path":
        choices.append(st.sampled_from([str(workdir), str(workdir / "missing.pth")]))
    elif name in ("date_col", "precip_col", "label_col", "features"):   # a column the data does not have
        choices.append(st.just(NOT_A_COLUMN))
    elif name == "freq" and base is str:
        choices.append(st.sampled_from(["xyz", "every hour"]))
    return st.one_of(choices)


def text_values(text: types.Text) -> st.SearchStrategy[str]:
    """Blank names, and names outside the type's pattern (compared stripped, as the type compares them)."""
    bad = [st.sampled_from(["", "   "])]  # where '' means "not given", the command refuses a missing value
    if text.rule.pattern is not None:
        bad.append(st.text(min_size=1, max_size=12).filter(
            lambda t: bool(t.strip()) and not re.fullmatch(text.rule.pattern, t.strip())))
    return st.one_of(bad)


def typed_values(kind: click.ParamType, workdir: Path) -> st.SearchStrategy[str]:
    """Bad values for a command option that is not a run setting, from the rule its type carries."""
    a_file = str(workdir / "data.csv")
    if isinstance(kind, types.Text):
        return text_values(kind)
    if isinstance(kind, (types.Integer, types.Number)):
        return st.one_of(not_a_number(kind.kind), out_of_range(kind.kind, kind.rule))
    if isinstance(kind, types.Choice):
        return WORDS.filter(lambda t: t not in kind.choices)
    strategies = {
        types.Flag: WORDS.filter(lambda t: t.lower() not in TRUE_FALSE),
        types.PresetName: WORDS.filter(lambda t: t not in presets.names()),
        types.Frequency: st.sampled_from(["xyz", "0h", "2D", "7", ""]),
        types.RunId: st.one_of(WORDS, st.just("0" * 31), st.just("g" * 32)),
        types.RunIds: WORDS.map(lambda t: f"{'a' * 32},{t}"),
        types.DiagnosisFlags: WORDS.filter(lambda t: t not in DIAGNOSIS_FLAGS),
        types.Alias: st.sampled_from(["latest", "v3", "a b", "x/y", ""]),
        types.ModelUri: st.sampled_from(["", "models:/", "models:/a/b/c", str(workdir), str(workdir / "nope.pt")]),
        types.OutputFile: st.sampled_from(["", str(workdir), str(workdir) + "/", a_file + "/out.csv"]),
        types.OutputDir: st.sampled_from(["", a_file, a_file + "/report"]),
        types.InputFile: st.sampled_from(["", str(workdir), str(workdir / "nope.log")]),
        types.MetricMap: st.sampled_from(["nope", "a=b", "=val_loss", "lightning,x=", "val_acc=not_ours"]),
        types.Duration: st.sampled_from(["abc", "-5min", "0", "0s", "nan", "2 parsecs"]),
    }
    return strategies[type(kind)]


def threshold_values(name: str) -> st.SearchStrategy[str]:
    """Bad values for a diagnosis threshold: wrong type, or numbers `Thresholds` itself refuses."""
    def refused(value: float) -> bool:
        try:
            Thresholds(**{name: value})
            return False
        except ConfigError:
            return True
    kind = type(getattr(Thresholds(), name))
    numbers = [kind(v) for v in (-1e9, -1, 0, 1, 1.5, 2, 1e9) if refused(kind(v))]
    return st.one_of(not_a_number(kind), *([st.sampled_from(numbers).map(repr)] if numbers else []))


def bad_values(command: str, name: str, workdir: Path) -> st.SearchStrategy[str]:
    kind = option(command, name).type
    if isinstance(kind, types.Setting):
        return field_values(kind.setting, workdir)
    if isinstance(kind, types.Threshold):
        return threshold_values(kind.threshold)
    if type(kind).__module__ == types.__name__:
        return typed_values(kind, workdir)
    raise AssertionError(f"{command} --{name}: a {type(kind).__name__}, not one of the product's option types "
                         "(rain_mlflow.config.params): no rule to generate bad values from")


# ---- running the command --------------------------------------------------------------------------------------

BASE = {  # valid arguments that keep everything else cheap; the option under test comes last and wins
    "train": lambda d: ["--preset", "smoke", "--data", str(d / "data.csv")],
    "tune": lambda d: ["--preset", "smoke", "--data", str(d / "data.csv")],
    "clean": lambda d: ["--data", str(d / "data.csv"), "--output", str(d / "out" / "clean.csv")],
    "test": lambda d: ["--data", str(d / "data.csv"), "--model-uri", str(d / "best.pt")],
}


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, err.getvalue()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, synthetic_csv):
    """Three months of data and an untrained smoke checkpoint (so `test` needs no store to load a model)."""
    import numpy as np

    from rain_mlflow.model.factory import build_classifier
    from rain_mlflow.model import checkpoint

    folder = tmp_path_factory.mktemp("cli-properties")
    lines = synthetic_csv.read_text().splitlines()[:2200]
    (folder / "data.csv").write_text("\n".join(lines) + "\n")
    cfg = presets.build("smoke", {"data": str(folder / "data.csv")})
    features = ("temperature", "relative_humidity", "pressure", "wind_speed")
    model = build_classifier(cfg, len(features))
    checkpoint.save(checkpoint.model_payload(cfg, model, 1, {}, features, np.zeros(4), np.ones(4), None),
                    folder / "best.pt")
    return folder


def test_every_option_has_a_rule(workdir):
    for command, name in CASES:
        assert bad_values(command, name, workdir) is not None
    assert {"train", "clean", "test", "synth", "compare", "promote", "main"} <= set(cli.commands)
    assert len(CASES) > 60


@pytest.mark.parametrize("command, name", CASES, ids=[f"{c}--{n}" for c, n in CASES])
@settings(max_examples=4, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_bad_value_is_one_error_line_and_nothing_written(command, name, data, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / 'mlflow.db'}")
    for key in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(key, raising=False)
    value = data.draw(bad_values(command, name, workdir), label=f"--{name}")
    flag = option(command, name).opts[0]
    before = files_under(workdir)
    code, err = run([command, *BASE.get(command, lambda d: [])(workdir), flag, value])
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, (flag, value, code, err[-2000:])
    assert len(lines) == 1 and "Traceback" not in err, (flag, value, err[-2000:])
    assert files_under(workdir) == before, (flag, value, files_under(workdir) - before)


@pytest.mark.parametrize("argv, fragment", [
    (["synth", "--years", "nan"], "years must be a finite number; got 'nan'"),
    (["train", "--device", "cuda:x"], "device must be auto, cpu, cuda or cuda:N"),
    (["synth", "--output", "/proc/rain.csv"], "output must be a writable path"),
    (["clean", "--report", "."], "report must be a file path, not a folder"),
    (["compare", "--report", "data.csv"], "report must be a folder path, not a file"),
    (["train", "--reschedule"], "--reschedule only applies with --resume"),
    (["train", "--resume", "not-a-run"], "resume must be an MLflow run id"),
    (["test", "--data", "."], "is not a file"),          # before the registry is asked for the default model
])
def test_named_bad_inputs(workdir, monkeypatch, argv, fragment):
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / 'mlflow.db'}")
    before = files_under(workdir)
    code, err = run(argv)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and fragment in lines[0], err
    assert files_under(workdir) == before
