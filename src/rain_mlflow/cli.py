"""The `rain-mlflow` command line: validate the input, build the frozen config, call one library function, print
its result (`console.py` prints; `cli_tools.py` holds the commands beside the workflow: weights, presets, sync,
bench).

Every config field is an option of `train` (`--seq-len`, also spelled `--seq_len` because `mlflow run` passes an
undeclared `-P seq_len=...` verbatim). Time settings (`--horizon 24h`, `--seq-len 60d`) take steps or a duration.
Options default to "keep the preset's value"; the defaults themselves live in `config/run.py` / `config/presets.py`.
Each option's type (`config/params.py`) carries its rule: a run setting's is the field's own declaration. Every user
error ends with exit code 2 and one `error:` line on stderr.

Each command imports its library inside its body: `--help` and `compare` start without torch, pandas or MLflow.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import click

from rain_mlflow import __version__, cli_tools
from rain_mlflow.config import (
    CHAMPION_ALIAS,
    DEFAULT_MODEL_URI,
    DIAGNOSIS_FLAGS,
    FIELD_SECTION,
    FIELDS,
    MODEL_NAME,
    params,
)
from rain_mlflow.config.choices import (
    COMPARE_FORMATS,
    DRY_RUN_FORMATS,
    PRUNE_ON_DEFAULT,
    PRUNERS,
    SYNTH_GAPS,
    TUNE_METRICS,
)
from rain_mlflow.console import ConsoleProgress, echo_lines, run
from rain_mlflow.diagnostics.thresholds import Thresholds
from rain_mlflow.errors import UserError
from rain_mlflow.tracking.store import tracking_uri

EXPERIMENT = params.Text("experiment")
BOOL = "BOOL"

DATA_FIELDS = ("data", "date_col", "precip_col", "label_col", "features", "na_values", "freq",
               "max_missing_fraction")
# `clean` also takes what its window accounting and its training-period statistics depend on
CLEAN_FIELDS = (*DATA_FIELDS, "max_fill", "missing", "seq_len", "horizon", "rain_threshold", "window_stride",
                "train_fraction", "val_fraction", "test_fraction")
COLUMN_FIELDS = ("date_col", "precip_col", "label_col", "features", "na_values", "freq")


def config_options(names: Iterable[str]) -> Callable:
    """Add one option per config field: `--seq-len` / `--seq_len`, checked with the field's own rule."""
    def decorate(command: Callable) -> Callable:
        for name in reversed(list(names)):
            setting = params.Setting(name)
            help_text = FIELDS[name].metadata["help"]
            extra: dict[str, Any] = {}
            if setting.base is bool:  # usable bare (`--use-norm`) or with a value (`--use_norm false`)
                extra = dict(is_flag=False, flag_value="true")
                help_text += " [true/false]"
            dashed = "--" + name.replace("_", "-")
            spellings = [dashed] if dashed == f"--{name}" else [dashed, f"--{name}"]
            command = click.option(*spellings, name, type=setting, default=None, metavar=setting.metavar(),
                                   help=help_text, **extra)(command)
        return command
    return decorate


def overrides_from(options: dict[str, Any]) -> dict[str, Any]:
    """The config fields the user actually set (click gives None for the rest)."""
    return {k: v for k, v in options.items() if k in FIELD_SECTION and v is not None}


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="rain-mlflow")
def cli() -> None:
    """Train, track, diagnose and promote Timer-XL rain / no-rain classifiers with MLflow.

    Runs go to MLFLOW_TRACKING_URI (default: sqlite:///mlflow.db here); open them with
    `mlflow ui --backend-store-uri sqlite:///mlflow.db`.
    """


for _command in (cli_tools.weights, cli_tools.presets_command, cli_tools.sync, cli_tools.bench_command):
    cli.add_command(_command)


@cli.command()
@click.option("--output", default="data/synthetic.csv", show_default=True, type=params.OutputFile("output"),
              help="CSV file to write")
@click.option("--years", default="11", show_default=True, metavar="NUM", type=params.Number("years", gt=0),
              help="length of the record in years")
@click.option("--freq", default="1h", show_default=True, type=params.Frequency("freq"),
              help="time step (pandas frequency: 1h, 3h, 30min...)")
@click.option("--seed", default="0", show_default=True, metavar="INT", type=params.Integer("seed", min=0),
              help="random seed (same seed, same file)")
@click.option("--gaps", default="default", show_default=True, metavar="default|realistic",
              type=params.Choice("gaps", SYNTH_GAPS),
              help="damage: default, or realistic (an airport record: 3 %% of pressure missing in short runs, "
                   "14 lost gaps of 1-5 h a year, an 83 %%-empty wind_gust column; rain within 24 h in ~30 %% of "
                   "hours)")
def synth(output: str, years: float, freq: str, seed: int, gaps: str) -> None:
    """Write a deterministic synthetic station record shaped like the user's data."""
    from rain_mlflow.synth import SynthConfig, write_synthetic

    cfg = SynthConfig.parse(years=years, freq=freq, seed=seed, gaps=gaps)
    frame = write_synthetic(output, cfg)
    rain = float((frame["precipitation"] > 0).mean())
    click.echo(f"wrote {output}: {len(frame)} rows of {cfg.freq} from {frame['date'].iloc[0]} to "
               f"{frame['date'].iloc[-1]} ({rain:.1%} of steps with rain; gaps and NaN runs included)")


@cli.command()
@config_options(CLEAN_FIELDS)
@click.option("--output", default="data/clean.csv", show_default=True, type=params.OutputFile("output"),
              help="cleaned CSV to write")
@click.option("--report", "report_path", default=None, type=params.OutputFile("report"),
              help="JSON report to write [default: <output>.report.json]")
@click.option("--experiment", default=None, type=EXPERIMENT,
              help="MLflow experiment [default: MLFLOW_EXPERIMENT_NAME or rain-timerxl]")
def clean(output: str, report_path: str | None, experiment: str | None, **options: Any) -> None:
    """Clean a station CSV: sort, de-duplicate, regular steps, gap and fill report, window accounting.

    The cleaned CSV keeps observed values only; the causal fill (last reading carried forward over at most
    --max-fill steps) happens when windows are made and is counted in the report.
    """
    from rain_mlflow.config import presets
    from rain_mlflow.clean_command import run_clean

    cfg = presets.build(presets.DEFAULT_PRESET, overrides_from(options)).data
    echo_lines(run_clean(cfg, output, report_path, experiment)["lines"])


@cli.command()
@click.option("--preset", default=None, type=params.PresetName(),
              help="named configuration (see `rain-mlflow presets`) [default: small]")
@config_options(FIELDS)
@click.option("--resume", default=None, metavar="RUN_ID", type=params.RunId("resume"),
              help="continue this killed run from its last epoch")
@click.option("--reschedule", is_flag=False, flag_value="true", default="false", metavar=BOOL,
              type=params.Flag("reschedule"),
              help="with --resume and a new --train-epochs: spread the LR schedule over the new number of epochs "
                   "(default: keep the original horizon)")
@click.option("--force", is_flag=False, flag_value="true", default="false", metavar=BOOL,
              type=params.Flag("force"),
              help="with --resume: continue even if the run's trainer still looks alive (it is known to be gone)")
@click.option("--dry-run", "--dry_run", "dry_run", is_flag=False, flag_value="true", default="false",
              metavar=BOOL, type=params.Flag("dry_run"),
              help="resolve and estimate (sizes, VRAM, epoch time) without training")
@click.option("--format", "--fmt", "fmt", default="text", metavar="text|json",
              type=params.Choice("format", DRY_RUN_FORMATS),
              help="with --dry-run: json prints one JSON object (config, windows, estimates, weights) for scripts")
@click.option("--experiment", default=None, type=EXPERIMENT,
              help="MLflow experiment [default: MLFLOW_EXPERIMENT_NAME or rain-timerxl]")
@click.option("--run-name", "--run_name", "run_name", default=None, type=params.Text("run_name"),
              help="MLflow run name [default: the preset]")
@click.option("--devices", default="1", show_default=True, metavar="INT", type=params.Integer("devices", min=1),
              help="train with N processes (one per GPU; gloo on CPU): launches `torchrun --nproc-per-node N`")
def train(preset: str | None, resume: str | None, reschedule: bool, force: bool, dry_run: bool, fmt: str,
          experiment: str | None, run_name: str | None, devices: int, **options: Any) -> None:
    """Train a classifier and record everything in one MLflow run."""
    from rain_mlflow.config import presets
    from rain_mlflow.train import distributed
    from rain_mlflow.train.run import TrainRequest, dry_run_training, run_training

    if devices > 1 and not dry_run and not distributed.launched():
        sys.exit(distributed.launch(devices, distributed.without_option(_ARGV, "--devices")))
    if fmt == "json" and not dry_run:
        raise UserError(f"format must be text (json is for --dry-run); got {fmt!r}")
    overrides = overrides_from(options)
    if resume and preset:
        raise UserError("--resume continues a run with its own preset; drop --preset")
    if not resume and (reschedule or force):
        raise UserError(f"--{'reschedule' if reschedule else 'force'} only applies with --resume RUN_ID")
    cfg = None if resume else presets.build(preset or presets.DEFAULT_PRESET, overrides)
    request = TrainRequest(experiment=experiment, run_name=None if resume else run_name, resume=resume,
                           overrides=overrides, reschedule=reschedule, force=force, progress=ConsoleProgress())
    if not dry_run:
        echo_lines(run_training(cfg, request)["lines"])
        return
    planned = dry_run_training(cfg, request)
    echo_lines([json.dumps(planned.summary, indent=2, default=str)] if fmt == "json" else planned.lines)


@cli.command()
@click.option("--preset", default=None, type=params.PresetName(),
              help="configuration the trials start from; the space changes some of its fields [default: small]")
@config_options(FIELDS)
@click.option("--space", default=None, metavar="FILE", type=params.InputFile("space"),
              help="YAML or JSON search space (docs/tuning.md) [default: the seeds' knobs around the preset]")
@click.option("--n-trials", "--n_trials", "n_trials", default="20", show_default=True, metavar="INT",
              type=params.Integer("n_trials", min=1), help="trained trials in the study (all workers together)")
@click.option("--timeout", default="", metavar="DURATION", type=params.Duration("timeout", optional=True),
              help="stop starting trials after this long (3600, 90min, 2h) [default: no limit]")
@click.option("--metric", default="val_mcc", show_default=True, type=params.Choice("metric", TUNE_METRICS),
              help="validation metric the study optimises (at each trial's best epoch)")
@click.option("--prune-on", "--prune_on", "prune_on", default=PRUNE_ON_DEFAULT, show_default=True, metavar="FLAGS",
              type=params.DiagnosisFlags("prune_on"), help="diagnosis flags that prune a trial at once")
@click.option("--pruner", default="median", show_default=True, type=params.Choice("pruner", PRUNERS),
              help="Optuna's pruner on the reported metric")
@click.option("--study", default=None, type=params.Text("study", pattern=r"[\w.-]+",
                                                  pattern_text="letters, digits, '_', '-' or '.'"),
              help="study name; the same name on the same storage continues it [default: PRESET-DATE-TIME]")
@click.option("--storage", default=None, type=params.Text("storage"),
              help="Optuna storage URL (postgresql://... shares a study between machines) "
                   "[default: sqlite optuna.db beside the MLflow sqlite store, else in this folder]")
@click.option("--experiment", default=None, type=EXPERIMENT,
              help="MLflow experiment [default: MLFLOW_EXPERIMENT_NAME or rain-timerxl]")
def tune(preset: str | None, space: str | None, n_trials: int, timeout: float | None, metric: str,
         prune_on: list[str], pruner: str, study: str | None, storage: str | None, experiment: str | None,
         **options: Any) -> None:
    """Search hyperparameters with Optuna: one MLflow run per trial, sick trials pruned by the diagnosis."""
    from rain_mlflow.config import presets
    from rain_mlflow.tune.run import run_tune
    from rain_mlflow.tune.space import default_space, load
    from rain_mlflow.tune.study import TuneConfig, default_storage

    overrides = overrides_from(options)
    base = presets.build(preset or presets.DEFAULT_PRESET, overrides)
    searched = load(space, base) if space else default_space(base)
    both = sorted(searched.fields() & set(overrides))
    if both:
        raise UserError(f"{both[0]} must be either fixed by --{both[0].replace('_', '-')} or searched by the space, "
                        f"not both; got both")
    name = study or f"{base.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    tune_cfg = TuneConfig(base=base, space=searched, study=name, storage=storage or default_storage(tracking_uri()),
                          n_trials=n_trials, timeout_s=timeout, metric=metric, prune_on=tuple(prune_on),
                          pruner=pruner, experiment=experiment)
    echo_lines(run_tune(tune_cfg, ConsoleProgress())["lines"])


@cli.command()
@click.option("--model-uri", "--model_uri", "model_uri", default=DEFAULT_MODEL_URI, show_default=True,
              type=params.ModelUri("model_uri"), help="models:/NAME@ALIAS, a training run id, or a checkpoint path")
@config_options(DATA_FIELDS)
@click.option("--experiment", default=None, type=EXPERIMENT,
              help="MLflow experiment [default: MLFLOW_EXPERIMENT_NAME or rain-timerxl]")
def test(model_uri: str, experiment: str | None, **options: Any) -> None:
    """Evaluate a model on a data file or on the test split of its training data."""
    from rain_mlflow.evaluate import run_test

    echo_lines(run_test(model_uri, overrides_from(options), experiment)["lines"])


def threshold_options(command: Callable | None = None, *, stored_default: bool = False) -> Callable:
    """One option per diagnosis threshold (`--stalled-epochs` ...): defaults from `Thresholds`, or, with
    `stored_default`, None = "the thresholds stored on each run" (promote)."""
    import dataclasses

    from rain_mlflow.diagnostics.thresholds import Thresholds

    def decorate(command: Callable) -> Callable:
        for f in reversed(dataclasses.fields(Thresholds)):
            dashed = "--" + f.name.replace("_", "-")
            default = None if stored_default else f.default
            help_text = (f"diagnosis threshold {f.name} [default: the run's stored one, else {f.default}]"
                         if stored_default else f"diagnosis threshold {f.name}")
            command = click.option(dashed, f"--{f.name}", f.name, type=params.Threshold(f.name), default=default,
                                   show_default=not stored_default, help=help_text)(command)
        return command
    return decorate(command) if command is not None else decorate


METRIC_MAP_HELP = ("read other metric names as ours: SOURCE=TARGET items and the built-in maps lightning, "
                   "openltm, comma-separated (e.g. lightning,vali_loss=val_loss)")


@cli.command()
@click.option("--experiment", default=None, type=EXPERIMENT,
              help="experiment to read [default: MLFLOW_EXPERIMENT_NAME or rain-timerxl]")
@click.option("--run-ids", "--run_ids", "run_ids", default=None, metavar="ID,ID", type=params.RunIds("run_ids"),
              help="only these runs")
@click.option("--format", "--fmt", "fmt", type=params.Choice("format", COMPARE_FORMATS), default="table",
              show_default=True)
@click.option("--write-tags/--no-write-tags", default=True, show_default=True,
              help="write the diagnosis tags onto the runs (the MLflow UI shows them)")
@click.option("--fail-on", "--fail_on", "fail_on", default="", metavar="FLAGS", type=params.DiagnosisFlags("fail_on"),
              help=f"exit 1 when one of these flags fires ({', '.join(DIAGNOSIS_FLAGS)})")
@click.option("--report", "report_dir", default=None, metavar="DIR", type=params.OutputDir("report"),
              help="write report.md and curves.png here")
@click.option("--metric-map", "--metric_map", "metric_map", default="", metavar="MAP",
              type=params.MetricMap("metric_map"), help=METRIC_MAP_HELP)
@threshold_options
def compare(experiment: str | None, run_ids: list[str] | None, fmt: str, write_tags: bool, fail_on: list[str],
            report_dir: str | None, metric_map: str, **thresholds: Any) -> None:
    """Diagnose every run of an experiment that has a per-epoch history and compare them side by side."""
    from rain_mlflow.compare.command import compare_command

    checked = Thresholds(**thresholds)  # a bad threshold fails before the store is opened
    sys.exit(compare_command(experiment=experiment, run_ids=run_ids, fmt=fmt, write_tags=write_tags,
                             fail_on=fail_on, report_dir=report_dir, metric_map=metric_map, thresholds=checked,
                             out=sys.stdout))


@cli.command()
@click.option("--experiment", default=None, type=EXPERIMENT,
              help="experiment to choose from [default: MLFLOW_EXPERIMENT_NAME or rain-timerxl]")
@click.option("--model-name", "--model_name", "model_name", default=MODEL_NAME, show_default=True,
              type=params.Text("model_name"))
@click.option("--metric", default="val_f1", show_default=True, type=params.Text("metric"),
              help="validation metric (val_*) compared at each run's best epoch")
@click.option("--alias", default=CHAMPION_ALIAS, show_default=True, type=params.Alias("alias"))
@click.option("--allow-flagged", "--allow_flagged", "allow_flagged", is_flag=False, flag_value="true",
              default="false", metavar=BOOL, type=params.Flag("allow_flagged"),
              help="also consider runs with diagnosis flags")
@click.option("--allow-test-metric", "--allow_test_metric", "allow_test_metric", is_flag=False, flag_value="true",
              default="false", metavar=BOOL, type=params.Flag("allow_test_metric"),
              help="allow a test_* --metric (choosing on the test set makes its score optimistic)")
@click.option("--run-id", "--run_id", "run_id", default=None, type=params.RunId("run_id"),
              help="promote this run instead of choosing one")
@click.option("--study", default=None, type=params.Text("study"),
              help="choose only among the trials of this `tune` study")
@threshold_options(stored_default=True)
def promote(experiment: str | None, model_name: str, metric: str, alias: str, allow_flagged: bool,
            allow_test_metric: bool, run_id: str | None, study: str | None, **thresholds: Any) -> None:
    """Register the best healthy run's checkpoint in the Model Registry under an alias."""
    from rain_mlflow.registry.promote import run_promote

    result = run_promote(experiment=experiment, model_name=model_name, metric=metric, alias=alias,
                         allow_flagged=allow_flagged, run_id=run_id, study=study,
                         allow_test_metric=allow_test_metric,
                         threshold_overrides={k: v for k, v in thresholds.items() if v is not None})
    echo_lines(result["lines"])


@cli.command("import-log")
@click.argument("logfiles", nargs=-1, metavar="LOGFILE...")
@click.option("--log", "log", default=None, metavar="LOGFILE", type=params.InputFile("log"),
              help="one more log file (the spelling `mlflow run -e import-log -P log=...` uses)")
@click.option("--experiment", default=None, type=EXPERIMENT,
              help="MLflow experiment [default: MLFLOW_EXPERIMENT_NAME or rain-timerxl]")
@click.option("--preset", default=None, type=params.Text("preset"),
              help="preset the logged run used (a label: tag `preset`)")
@click.option("--run-name", "--run_name", "run_name", default=None, type=params.Text("run_name"),
              help="run name [default: the log's file name]")
@click.option("--vram-budget-gb", "--vram_budget_gb", "vram_budget_gb", default=None, metavar="NUM",
              type=params.Number("vram_budget_gb", gt=0, optional=True),
              help="the run's VRAM budget (param vram_budget_gb), e.g. 7 for transfer, 5 for small")
@click.option("--vram-peak-gb", "--vram_peak_gb", "vram_peak_gb", default=None, metavar="NUM",
              type=params.Number("vram_peak_gb", gt=0, optional=True),
              help="the peak VRAM you saw, for logs that print none (logged at every epoch)")
def import_log(logfiles: tuple[str, ...], log: str | None, experiment: str | None, preset: str | None,
               run_name: str | None, vram_budget_gb: float | None, vram_peak_gb: float | None) -> None:
    """Turn OpenLTM run.py classification logs into FINISHED MLflow runs (one per log) that compare reads."""
    from rain_mlflow.import_log import import_logs

    imported = import_logs([*logfiles, *([log] if log else [])], experiment=experiment, preset=preset or None,
                           run_name=run_name or None, vram_budget_gb=vram_budget_gb, vram_peak_gb=vram_peak_gb)
    echo_lines(result["line"] for result in imported)


@cli.command("main")
@click.option("--preset", default="smoke", show_default=True, type=params.PresetName(),
              help="preset trained by the pipeline")
@click.option("--experiment", default=None, type=EXPERIMENT,
              help="MLflow experiment [default: MLFLOW_EXPERIMENT_NAME or rain-timerxl]")
@click.option("--workdir", default="outputs", show_default=True, type=params.OutputDir("workdir"),
              help="where the synthetic and cleaned CSVs go")
def main_command(preset: str, experiment: str | None, workdir: str) -> None:
    """The whole pipeline on the embedded defaults: synth, clean, train, test, compare, promote."""
    from rain_mlflow.pipeline import run_pipeline

    echo_lines(run_pipeline(preset=preset, experiment=experiment, workdir=workdir, progress=ConsoleProgress())["lines"])


_ARGV: list[str] = []  # this command line, for `train --devices N` to hand to torchrun


def main(argv: list[str] | None = None) -> None:
    """Console entry point (`rain-mlflow`, `python -m rain_mlflow`); failures as `console.run` promises them."""
    _ARGV[:] = list(argv) if argv is not None else sys.argv[1:]
    run(cli, argv)
