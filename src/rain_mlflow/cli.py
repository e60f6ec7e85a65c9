"""The `rain-mlflow` command line: validate the input, build the frozen config, call one library function.

Every config field is an option of `train` (`--seq-len`, also spelled `--seq_len` because `mlflow run` passes an
undeclared `-P seq_len=...` verbatim). Time settings (`--horizon 24h`, `--seq-len 60d`) take steps or a duration.
Options default to "keep the preset's value"; the defaults themselves live in `config/run.py` / `config/presets.py`.
Each option's type (`config/params.py`) carries its rule: a run setting's is the field's own declaration. Every user
error ends with exit code 2 and one `error:` line on stderr.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

import click

from rain_mlflow import __version__, interrupts
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
from rain_mlflow.errors import UserError
from rain_mlflow.weights import DEFAULT_RELEASE

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
    from rain_mlflow import presets
    from rain_mlflow.clean_command import run_clean

    cfg = presets.build(presets.DEFAULT_PRESET, overrides_from(options)).data
    run_clean(cfg, output, report_path, experiment)


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
    from rain_mlflow import presets
    from rain_mlflow.train import distributed, run_training

    if devices > 1 and not dry_run and not distributed.launched():
        sys.exit(distributed.launch(devices, distributed.without_option(_ARGV, "--devices")))
    if fmt == "json" and not dry_run:
        raise UserError(f"format must be text (json is for --dry-run); got {fmt!r}")
    overrides = overrides_from(options)
    if resume:
        if preset:
            raise UserError("--resume continues a run with its own preset; drop --preset")
        run_training(None, overrides=overrides, resume=resume, dry_run=dry_run, experiment=experiment,
                     output_format=fmt, reschedule=reschedule, force=force)
        return
    if reschedule or force:
        raise UserError(f"--{'reschedule' if reschedule else 'force'} only applies with --resume RUN_ID")
    cfg = presets.build(preset or presets.DEFAULT_PRESET, overrides)
    run_training(cfg, overrides=overrides, dry_run=dry_run, experiment=experiment, run_name=run_name,
                 output_format=fmt)


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
    import time

    from rain_mlflow import presets
    from rain_mlflow.store import tracking_uri
    from rain_mlflow.tune import TuneConfig, default_space, default_storage, load, run_tune

    overrides = overrides_from(options)
    base = presets.build(preset or presets.DEFAULT_PRESET, overrides)
    searched = load(space, base) if space else default_space(base)
    both = sorted(searched.fields() & set(overrides))
    if both:
        raise UserError(f"{both[0]} must be either fixed by --{both[0].replace('_', '-')} or searched by the space, "
                        f"not both; got both")
    name = study or f"{base.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_tune(TuneConfig(base=base, space=searched, study=name, storage=storage or default_storage(tracking_uri()),
                        n_trials=n_trials, timeout_s=timeout, metric=metric, prune_on=tuple(prune_on),
                        pruner=pruner, experiment=experiment))


@cli.group()
def weights() -> None:
    """Released pretrained weights: download them into the cache, verify a file, show where they are.

    NAME is a release (timer-xl-260b, the default), an http(s) URL or, for `verify`, a file. The cache is
    $RAIN_MLFLOW_CACHE, else ~/.cache/rain-mlflow; RAIN_MLFLOW_WEIGHTS_MIRROR=URL fetches releases from
    URL/NAME.pth instead; RAIN_MLFLOW_OFFLINE=1 forbids downloading.
    """


@weights.command("download")
@click.argument("name", default=DEFAULT_RELEASE)
def weights_download(name: str) -> None:
    """Download NAME into the cache (once) and verify it; print its path and sha256."""
    from rain_mlflow import weights as released

    source = _remote_weights(name)
    resolved = released.fetch(source)
    verb = "downloaded" if resolved.downloaded else "already cached"
    click.echo(f"{verb}: {resolved.path}  sha256 {resolved.sha256}  from {resolved.origin}")


@weights.command("verify")
@click.argument("name", default=DEFAULT_RELEASE)
def weights_verify(name: str) -> None:
    """Check that NAME (cached) or a file loads with weights_only=True and has the released layout."""
    from rain_mlflow import weights as released

    source = released.parse(name)
    if source is None:
        raise UserError(f"name must be a release ({', '.join(released.RELEASES)}), a URL or a file; got {name!r}")
    if source.kind != "file" and not source.path.is_file():
        raise UserError(f"{source.label} is not in the cache ({source.path}); run `rain-mlflow weights download "
                        f"{name}` first")
    if not source.path.is_file():
        released.fetch(source)  # the missing-file error
    layout = released.expected_layout(source, None)
    counts = released.verify(source.path, layout, source.label)
    click.echo(f"ok: {source.path}: {counts['n_tensors']} tensors, {counts['n_parameters']:,} parameters, the "
               f"layout of {source.spec if source.release else released.DEFAULT_RELEASE}; "
               f"sha256 {released.sha256_of(source.path)}")


@weights.command("path")
@click.argument("name", default=DEFAULT_RELEASE)
def weights_path(name: str) -> None:
    """Print where NAME is (or will be) cached."""
    source = _remote_weights(name)
    click.echo(str(source.path))
    if not source.path.is_file():
        click.echo(f"info: not downloaded yet; `rain-mlflow weights download {name}` fetches it", err=True)


def _remote_weights(name: str) -> Any:
    from rain_mlflow import weights as released

    source = released.parse(name)
    if source is None or source.kind == "file":
        raise UserError(f"name must be a release ({', '.join(released.RELEASES)}) or an http(s) URL; got {name!r}")
    return source


@cli.command()
@click.option("--model-uri", "--model_uri", "model_uri", default=DEFAULT_MODEL_URI, show_default=True,
              type=params.ModelUri("model_uri"), help="models:/NAME@ALIAS, a training run id, or a checkpoint path")
@config_options(DATA_FIELDS)
@click.option("--experiment", default=None, type=EXPERIMENT,
              help="MLflow experiment [default: MLFLOW_EXPERIMENT_NAME or rain-timerxl]")
def test(model_uri: str, experiment: str | None, **options: Any) -> None:
    """Evaluate a model on a data file or on the test split of its training data."""
    from rain_mlflow.evaluate import run_test

    run_test(model_uri, overrides_from(options), experiment)


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
    from pathlib import Path

    from rain_mlflow.compare import run as compare_runs
    from rain_mlflow.compare.reader import experiment_name, tracking_uri
    from rain_mlflow.diagnostics.thresholds import Thresholds

    checked = Thresholds(**thresholds)  # a bad threshold fails before the store is opened
    from rain_mlflow import store

    uri = tracking_uri()
    if uri.startswith("sqlite:"):
        store.check_sqlite_file(uri)
    else:  # a server or database: one clear error if it is down or refuses us
        store.use_store()
    # No `tracking` import for sqlite: it imports MLflow (3 s), which a comparison needs only to write changed tags.
    options = dict(experiment=experiment_name(experiment), run_ids=run_ids, fmt=fmt, write_tags=write_tags,
                   fail_on=fail_on, thresholds=checked, metric_map=metric_map)
    if not os.environ.get("MLFLOW_RUN_ID"):
        code = compare_runs(report_dir=Path(report_dir) if report_dir else None, **options)
    else:  # launched by `mlflow run . -e compare`: keep the comparison in the run MLflow created
        import tempfile

        from rain_mlflow.tracking import Tracker, use_store

        use_store()
        report = Path(report_dir or tempfile.mkdtemp(prefix="rain-mlflow-compare-"))
        with Tracker.start("compare", run_name="compare") as tracker:
            code = compare_runs(report_dir=report, **options)
            for name in ("report.md", "curves.png"):
                tracker.log_artifact(report / name, "report")
    sys.exit(code)


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
    from rain_mlflow.registry import run_promote

    run_promote(experiment=experiment, model_name=model_name, metric=metric, alias=alias,
                allow_flagged=allow_flagged, run_id=run_id, study=study,
                allow_test_metric=allow_test_metric,
                threshold_overrides={k: v for k, v in thresholds.items() if v is not None})


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

    import_logs([*logfiles, *([log] if log else [])], experiment=experiment, preset=preset or None,
                run_name=run_name or None, vram_budget_gb=vram_budget_gb, vram_peak_gb=vram_peak_gb)


@cli.command("sync")
@click.argument("folder", required=False, metavar="RUN_FOLDER")
@click.option("--run-folder", "--run_folder", "run_folder", default="", metavar="RUN_FOLDER",
              type=params.Text("run_folder", optional=True),
              help="the run folder (the spelling `mlflow run -e sync -P run_folder=...` uses)")
def sync(folder: str | None, run_folder: str | None) -> None:
    """Deliver the writes a training run kept locally during a tracking outage (RUN_FOLDER: rain-runs/<run id>)."""
    from pathlib import Path

    from rain_mlflow.tracking import sync_run

    chosen = folder or run_folder
    if not chosen:
        raise UserError("RUN_FOLDER must be given (a folder under rain-runs/ or $RAIN_MLFLOW_HOME/runs/); got none")
    done = sync_run(Path(chosen))
    click.echo(f"run {done['run_id']}: delivered {done['delivered']} writes; status {done['status']}"
               + (f"; {done['rejected']} refused by the store, kept in {chosen}" if done["rejected"] else ""))


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

    run_pipeline(preset=preset, experiment=experiment, workdir=workdir)


@cli.command("bench")
@click.option("--quick", is_flag=False, flag_value="true", default="false", metavar=BOOL,
              type=params.Flag("quick"), help="small shapes and few repetitions (CI); never fails on timing")
@click.option("--gpu", is_flag=False, flag_value="true", default="false", metavar=BOOL,
              type=params.Flag("gpu"), help="also measure the CUDA section (epoch time, peak VRAM, MFU)")
def bench_command(quick: bool, gpu: bool) -> None:
    """Every benchmark side by side: one table, figures in bench/results.json (needs a source checkout)."""
    import subprocess

    checkout = bench_checkout()
    argv = [sys.executable, "-m", "bench", *(["--quick"] if quick else []), *(["--gpu"] if gpu else [])]
    code = subprocess.run(argv, cwd=checkout).returncode
    if code:
        sys.exit(code)


def bench_checkout() -> str:
    """The source checkout holding bench/ (the fp32 reference is not shipped in the package): the one this package
    was installed from in editable mode, else the working directory or one of its parents."""
    from pathlib import Path

    candidates = [Path(__file__).resolve().parents[2], *[p for p in (Path.cwd(), *Path.cwd().parents)]]
    for folder in candidates:
        if (folder / "bench" / "__main__.py").is_file() and (folder / "src" / "rain_mlflow").is_dir():
            return str(folder)
    raise UserError(f"bench must run from a source checkout of rain-mlflow (a folder with bench/ and src/: the "
                    f"benchmarks and their fp32 reference are not shipped in the package); got none at "
                    f"{candidates[0]} or {Path.cwd()} and its parents. Clone the repository, `pip install -e .` "
                    "there and run it from that folder")


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
    click.echo("\nseq_len is in steps, chosen for hourly data (720 = 30 days, 1440 = 60 days); on other data give a "
               "duration (--seq-len 60d). The label horizon is 24h whatever the time step.")
    click.echo("Every field can be overridden: `rain-mlflow train --preset small --seq-len 1440` or "
               "`mlflow run . -e train -P preset=small -P seq_len=1440`. Show all fields of one preset with "
               "`rain-mlflow train --preset NAME --dry-run`.")


_ARGV: list[str] = []  # this command line, for `train --devices N` to hand to torchrun


def main(argv: list[str] | None = None) -> None:
    """Console entry point: what the package promises on failure (README, "When something fails").

    User errors and an unreachable store: exit code 2 and a single `error:` line. Ctrl-C / SIGTERM: exit 130 / 143,
    the run ended KILLED. Under `mlflow run`, a failure before our code attached to the launched run ends that run
    FAILED (KILLED) with the reason, so it is never left RUNNING.
    """
    from rain_mlflow.store import bound_http_retries, store_error

    _setup_logging()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep logs readable
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # we print links to the training view
    bound_http_retries()
    _ARGV[:] = list(argv) if argv is not None else sys.argv[1:]
    try:
        with interrupts.handling():
            code = cli.main(args=argv, prog_name="rain-mlflow", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:  # click wraps KeyboardInterrupt in Abort
        cause = exc.__cause__ if isinstance(exc, click.exceptions.Abort) and exc.__cause__ else exc
        reason = f"interrupted by {interrupts.signal_name(cause)}"
        _end_launched_run("KILLED", reason)
        _fail(reason, interrupts.exit_code(cause))
    except click.ClickException as exc:
        _end_launched_run("FAILED", exc.format_message())
        _fail(exc.format_message(), 2)
    except UserError as exc:
        _end_launched_run("FAILED", str(exc))
        _fail(str(exc), 2)
    except Exception as exc:
        error = store_error(exc)
        if error is None:  # a bug: keep the traceback, but do not leave a launched run RUNNING
            _end_launched_run("FAILED", f"{type(exc).__name__}: {exc}")
            raise
        _fail(str(error), 2)
    sys.exit(code if isinstance(code, int) else 0)


def _end_launched_run(status: str, reason: str) -> None:
    if os.environ.get("MLFLOW_RUN_ID"):
        from rain_mlflow.tracking import end_launched_run

        end_launched_run(status, " ".join(reason.split()))


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
