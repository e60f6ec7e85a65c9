"""The `rain-mlflow` command line: validate the input, build the frozen config, call one library function.

Every config field is an option of `train` (`--seq-len`, also spelled `--seq_len` because `mlflow run` passes an
undeclared `-P seq_len=...` verbatim). Options default to "keep the preset's value"; the defaults themselves live
in `config.py` / `presets.py`. Every user error ends with exit code 2 and one `error:` line on stderr.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

import click

from rain_mlflow import __version__
from rain_mlflow.config import (CHAMPION_ALIAS, DEFAULT_MODEL_URI, DIAGNOSIS_FLAGS, FIELD_SECTION, FIELDS, MODEL_NAME,
                                field_type)
from rain_mlflow.errors import UserError

DATA_FIELDS = ("data", "date_col", "precip_col", "label_col", "features", "na_values", "freq",
               "max_missing_fraction")
# `clean` also takes what its window accounting and its training-period statistics depend on
CLEAN_FIELDS = (*DATA_FIELDS, "max_fill", "missing", "seq_len", "horizon", "rain_threshold", "window_stride",
                "train_fraction", "val_fraction", "test_fraction")
COLUMN_FIELDS = ("date_col", "precip_col", "label_col", "features", "na_values", "freq")


def config_options(names: Iterable[str]) -> Callable:
    """Add one option per config field: `--seq-len` / `--seq_len`, raw text checked by the config."""
    def decorate(command: Callable) -> Callable:
        for name in reversed(list(names)):
            base, _ = field_type(name)
            help_text = FIELDS[name].metadata["help"]
            extra: dict[str, Any] = {}
            if base is bool:  # usable bare (`--use-norm`) or with a value (`--use_norm false`)
                extra = dict(is_flag=False, flag_value="true")
                help_text += " [true/false]"
            dashed = "--" + name.replace("_", "-")
            spellings = [dashed] if dashed == f"--{name}" else [dashed, f"--{name}"]
            command = click.option(*spellings, name, default=None, metavar=_metavar(base), help=help_text,
                                   **extra)(command)
        return command
    return decorate


def _metavar(base: type) -> str:
    return {int: "INT", float: "NUM", bool: "BOOL", tuple: "A,B"}.get(base, "TEXT")


def overrides_from(options: dict[str, Any]) -> dict[str, Any]:
    """The config fields the user actually set (click gives None for the rest)."""
    return {k: v for k, v in options.items() if k in FIELD_SECTION and v is not None}


def flag_list(text: str | None) -> list[str]:
    return [f.strip() for f in (text or "").split(",") if f.strip()]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="rain-mlflow")
def cli() -> None:
    """Train, track, diagnose and promote Timer-XL rain / no-rain classifiers with MLflow.

    Runs go to MLFLOW_TRACKING_URI (default: sqlite:///mlflow.db here); open them with
    `mlflow ui --backend-store-uri sqlite:///mlflow.db`.
    """


@cli.command()
@click.option("--output", default="data/synthetic.csv", show_default=True, help="CSV file to write")
@click.option("--years", default="11", show_default=True, metavar="NUM", help="length of the record in years")
@click.option("--freq", default="1h", show_default=True, help="time step (pandas frequency: 1h, 3h, 30min...)")
@click.option("--seed", default="0", show_default=True, metavar="INT", help="random seed (same seed, same file)")
@click.option("--gaps", default="default", show_default=True, metavar="default|realistic",
              help="damage: default, or realistic (an airport record: 3 %% of pressure missing in short runs, "
                   "14 lost gaps of 1-5 h a year, an 83 %%-empty wind_gust column; rain within 24 h in ~30 %% of "
                   "hours)")
def synth(output: str, years: str, freq: str, seed: str, gaps: str) -> None:
    """Write a deterministic synthetic station record shaped like the user's data."""
    from rain_mlflow.synth import SynthConfig, write_synthetic

    cfg = SynthConfig.parse(years=years, freq=freq, seed=seed, gaps=gaps)
    frame = write_synthetic(output, cfg)
    rain = float((frame["precipitation"] > 0).mean())
    click.echo(f"wrote {output}: {len(frame)} rows of {cfg.freq} from {frame['date'].iloc[0]} to "
               f"{frame['date'].iloc[-1]} ({rain:.1%} of steps with rain; gaps and NaN runs included)")


@cli.command()
@config_options(CLEAN_FIELDS)
@click.option("--output", default="data/clean.csv", show_default=True, help="cleaned CSV to write")
@click.option("--report", "report_path", default=None, help="JSON report to write [default: <output>.report.json]")
@click.option("--experiment", default=None, help="MLflow experiment [default: MLFLOW_EXPERIMENT_NAME or rain-timerxl]")
def clean(output: str, report_path: str | None, experiment: str | None, **options: Any) -> None:
    """Clean a station CSV: sort, de-duplicate, regular steps, gap and fill report, window accounting.

    The cleaned CSV keeps observed values only; the causal fill (last reading carried forward over at most
    --max-fill steps) happens when windows are made and is counted in the report.
    """
    from rain_mlflow import presets
    from rain_mlflow.clean_command import run_clean

    cfg = presets.build(presets.DEFAULT_PRESET, overrides_from(options)).data
    run_clean(cfg, output, report_path, experiment)


@cli.command()
@click.option("--preset", default=None, help="named configuration (see `rain-mlflow presets`) [default: small]")
@config_options(FIELDS)
@click.option("--resume", default=None, metavar="RUN_ID", help="continue this killed run from its last epoch")
@click.option("--dry-run", "--dry_run", "dry_run", is_flag=False, flag_value="true", default="false",
              metavar="BOOL", help="resolve and estimate (sizes, VRAM, epoch time) without training")
@click.option("--experiment", default=None, help="MLflow experiment [default: MLFLOW_EXPERIMENT_NAME or rain-timerxl]")
@click.option("--run-name", "--run_name", "run_name", default=None, help="MLflow run name [default: the preset]")
def train(preset: str | None, resume: str | None, dry_run: str, experiment: str | None, run_name: str | None,
          **options: Any) -> None:
    """Train a classifier and record everything in one MLflow run."""
    from rain_mlflow import presets
    from rain_mlflow.config import parse_bool
    from rain_mlflow.train import run_training

    dry = parse_bool("dry_run", dry_run)
    overrides = overrides_from(options)
    if resume:
        if preset:
            raise UserError("--resume continues a run with its own preset; drop --preset")
        run_training(None, overrides=overrides, resume=resume, dry_run=dry, experiment=experiment)
        return
    cfg = presets.build(preset or presets.DEFAULT_PRESET, overrides)
    run_training(cfg, overrides=overrides, dry_run=dry, experiment=experiment, run_name=run_name)


@cli.command()
@click.option("--model-uri", "--model_uri", "model_uri", default=DEFAULT_MODEL_URI, show_default=True,
              help="models:/NAME@ALIAS, a training run id, or a checkpoint path")
@config_options(DATA_FIELDS)
@click.option("--experiment", default=None, help="MLflow experiment [default: MLFLOW_EXPERIMENT_NAME or rain-timerxl]")
def test(model_uri: str, experiment: str | None, **options: Any) -> None:
    """Evaluate a model on a data file or on the test split of its training data."""
    from rain_mlflow.evaluate import run_test

    run_test(model_uri, overrides_from(options), experiment)


def threshold_options(command: Callable) -> Callable:
    """One option per diagnosis threshold (`--stalled-epochs` ...), defaults from `Thresholds`."""
    import dataclasses

    from rain_mlflow.diagnostics.rules import Thresholds

    for f in reversed(dataclasses.fields(Thresholds)):
        dashed = "--" + f.name.replace("_", "-")
        command = click.option(dashed, f"--{f.name}", f.name, type=type(f.default), default=f.default,
                               show_default=True, help=f"diagnosis threshold {f.name}")(command)
    return command


@cli.command()
@click.option("--experiment", default=None, help="experiment to read [default: MLFLOW_EXPERIMENT_NAME or rain-timerxl]")
@click.option("--run-ids", "--run_ids", "run_ids", default=None, metavar="ID,ID", help="only these runs")
@click.option("--format", "--fmt", "fmt", type=click.Choice(["table", "json", "markdown"]), default="table",
              show_default=True)
@click.option("--write-tags/--no-write-tags", default=True, show_default=True,
              help="write the diagnosis tags onto the runs (the MLflow UI shows them)")
@click.option("--fail-on", "--fail_on", "fail_on", default="", metavar="FLAGS",
              help=f"exit 1 when one of these flags fires ({', '.join(DIAGNOSIS_FLAGS)})")
@click.option("--report", "report_dir", default=None, metavar="DIR", help="write report.md and curves.png here")
@threshold_options
def compare(experiment: str | None, run_ids: str | None, fmt: str, write_tags: bool, fail_on: str,
            report_dir: str | None, **thresholds: Any) -> None:
    """Diagnose every training run of an experiment and compare them side by side."""
    from pathlib import Path

    from rain_mlflow import compare as compare_module
    from rain_mlflow.diagnostics.rules import Thresholds
    from rain_mlflow.tracking import Tracker, experiment_name, use_store

    use_store()
    options = dict(experiment=experiment_name(experiment), run_ids=flag_list(run_ids) or None, fmt=fmt,
                   write_tags=write_tags, fail_on=flag_list(fail_on), thresholds=Thresholds(**thresholds))
    if not os.environ.get("MLFLOW_RUN_ID"):
        code = compare_module.run(report_dir=Path(report_dir) if report_dir else None, **options)
    else:  # launched by `mlflow run . -e compare`: keep the comparison in the run MLflow created
        import tempfile

        report = Path(report_dir or tempfile.mkdtemp(prefix="rain-mlflow-compare-"))
        with Tracker.start("compare", run_name="compare") as tracker:
            code = compare_module.run(report_dir=report, **options)
            for name in ("report.md", "curves.png"):
                tracker.log_artifact(report / name, "report")
    sys.exit(code)


@cli.command()
@click.option("--experiment", default=None, help="experiment to choose from [default: MLFLOW_EXPERIMENT_NAME or rain-timerxl]")
@click.option("--model-name", "--model_name", "model_name", default=MODEL_NAME, show_default=True)
@click.option("--metric", default="val_f1", show_default=True, help="per-epoch metric compared at each run's best epoch")
@click.option("--alias", default=CHAMPION_ALIAS, show_default=True)
@click.option("--allow-flagged", "--allow_flagged", "allow_flagged", is_flag=False, flag_value="true",
              default="false", metavar="BOOL", help="also consider runs with diagnosis flags")
@click.option("--run-id", "--run_id", "run_id", default=None, help="promote this run instead of choosing one")
def promote(experiment: str | None, model_name: str, metric: str, alias: str, allow_flagged: str,
            run_id: str | None) -> None:
    """Register the best healthy run's checkpoint in the Model Registry under an alias."""
    from rain_mlflow.config import parse_bool
    from rain_mlflow.registry import run_promote

    run_promote(experiment=experiment, model_name=model_name, metric=metric, alias=alias,
                allow_flagged=parse_bool("allow_flagged", allow_flagged), run_id=run_id)


@cli.command("main")
@click.option("--preset", default="smoke", show_default=True, help="preset trained by the pipeline")
@click.option("--experiment", default=None, help="MLflow experiment [default: MLFLOW_EXPERIMENT_NAME or rain-timerxl]")
@click.option("--workdir", default="outputs", show_default=True, help="where the synthetic and cleaned CSVs go")
def main_command(preset: str, experiment: str | None, workdir: str) -> None:
    """The whole pipeline on the embedded defaults: synth, clean, train, test, compare, promote."""
    from rain_mlflow.pipeline import run_pipeline

    run_pipeline(preset=preset, experiment=experiment, workdir=workdir)


@cli.command("presets")
def presets_command() -> None:
    """List the named presets and their main settings."""
    from rain_mlflow import presets

    header = f"{'preset':16} {'layers':>6} {'d_model':>7} {'d_ff':>5} {'heads':>5} {'seq_len':>7} {'batch':>5} " \
             f"{'lr':>7} {'epochs':>6} {'VRAM GB':>7}  pretrained  summary"
    click.echo(header)
    for name, preset in presets.PRESETS.items():
        c = preset.build()
        budget = f"{c.train.vram_budget_gb:g}" if c.train.vram_budget_gb else "-"
        click.echo(f"{name:16} {c.model.e_layers:>6} {c.model.d_model:>7} {c.model.d_ff:>5} {c.model.n_heads:>5} "
                   f"{c.data.seq_len:>7} {c.train.batch_size:>5} {c.train.learning_rate:>7g} "
                   f"{c.train.train_epochs:>6} {budget:>7}  {'yes' if c.model.pretrain_model_path else 'no':10}  "
                   f"{preset.summary}")
    click.echo("\nEvery field can be overridden: `rain-mlflow train --preset small --seq-len 1440` or "
               "`mlflow run . -e train -P preset=small -P seq_len=1440`. Show all fields of one preset with "
               "`rain-mlflow train --preset NAME --dry-run`.")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become exit code 2 and a single `error:` line."""
    _setup_logging()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep logs readable
    try:
        code = cli.main(args=argv, prog_name="rain-mlflow", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        _fail("aborted", 130)
    except click.ClickException as exc:
        _fail(exc.format_message(), 2)
    except UserError as exc:
        _fail(str(exc), 2)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    sys.exit(code if isinstance(code, int) else 0)


def _setup_logging() -> None:
    """Our warnings and notes as `warning: ...` / `info: ...` lines on stderr; MLflow keeps its own format."""
    import warnings

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LowercaseLevel("%(levelname)s: %(message)s"))
    ours = logging.getLogger("rain_mlflow")
    ours.handlers[:] = [handler]
    ours.setLevel(logging.INFO)
    ours.propagate = False
    # MLflow resolves a local path through two equivalent source classes and warns about it on every run.
    warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")


class _LowercaseLevel(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return super().format(logging.makeLogRecord({**record.__dict__, "levelname": record.levelname.lower()}))


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {' '.join(message.split())}", err=True)
    sys.exit(code)
