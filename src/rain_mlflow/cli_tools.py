"""The commands beside the workflow: released weights, the presets table, delivering a run folder, benchmarks.

`cli.py` adds them to the `rain-mlflow` group; like its commands, each imports what it needs when it runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from rain_mlflow import weights as released
from rain_mlflow.config import params
from rain_mlflow.errors import UserError
from rain_mlflow.weights import DEFAULT_RELEASE, Source

BOOL = "BOOL"


@click.group()
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
    source = _remote_weights(name)
    resolved = released.fetch(source)
    verb = "downloaded" if resolved.downloaded else "already cached"
    click.echo(f"{verb}: {resolved.path}  sha256 {resolved.sha256}  from {resolved.origin}")


@weights.command("verify")
@click.argument("name", default=DEFAULT_RELEASE)
def weights_verify(name: str) -> None:
    """Check that NAME (cached) or a file loads with weights_only=True and has the released layout."""
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


def _remote_weights(name: str) -> Source:
    source = released.parse(name)
    if source is None or source.kind == "file":
        raise UserError(f"name must be a release ({', '.join(released.RELEASES)}) or an http(s) URL; got {name!r}")
    return source


@click.command("sync")
@click.argument("folder", required=False, metavar="RUN_FOLDER")
@click.option("--run-folder", "--run_folder", "run_folder", default="", metavar="RUN_FOLDER",
              type=params.Text("run_folder", optional=True),
              help="the run folder (the spelling `mlflow run -e sync -P run_folder=...` uses)")
def sync(folder: str | None, run_folder: str | None) -> None:
    """Deliver the writes a training run kept locally during a tracking outage (RUN_FOLDER: rain-runs/<run id>)."""
    from rain_mlflow.tracking.delivery import sync_run  # imports MLflow: not for the other commands' start-up

    chosen = folder or run_folder
    if not chosen:
        raise UserError("RUN_FOLDER must be given (a folder under rain-runs/ or $RAIN_MLFLOW_HOME/runs/); got none")
    done = sync_run(Path(chosen))
    click.echo(f"run {done['run_id']}: delivered {done['delivered']} writes; status {done['status']}"
               + (f"; {done['rejected']} refused by the store, kept in {chosen}" if done["rejected"] else ""))


@click.command("bench")
@click.option("--quick", is_flag=False, flag_value="true", default="false", metavar=BOOL,
              type=params.Flag("quick"), help="small shapes and few repetitions (CI); never fails on timing")
@click.option("--gpu", is_flag=False, flag_value="true", default="false", metavar=BOOL,
              type=params.Flag("gpu"), help="also measure the CUDA section (epoch time, peak VRAM, MFU)")
def bench_command(quick: bool, gpu: bool) -> None:
    """Every benchmark side by side: one table, figures in bench/results.json (needs a source checkout)."""
    checkout = bench_checkout()
    argv = [sys.executable, "-m", "bench", *(["--quick"] if quick else []), *(["--gpu"] if gpu else [])]
    code = subprocess.run(argv, cwd=checkout).returncode
    if code:
        sys.exit(code)


def bench_checkout() -> str:
    """The source checkout holding bench/ (the fp32 reference is not shipped in the package): the one this package
    was installed from in editable mode, else the working directory or one of its parents."""
    candidates = [Path(__file__).resolve().parents[2], *[p for p in (Path.cwd(), *Path.cwd().parents)]]
    for folder in candidates:
        if (folder / "bench" / "__main__.py").is_file() and (folder / "src" / "rain_mlflow").is_dir():
            return str(folder)
    raise UserError(f"bench must run from a source checkout of rain-mlflow (a folder with bench/ and src/: the "
                    f"benchmarks and their fp32 reference are not shipped in the package); got none at "
                    f"{candidates[0]} or {Path.cwd()} and its parents. Clone the repository, `pip install -e .` "
                    "there and run it from that folder")


@click.command("presets")
def presets_command() -> None:
    """List the named presets and their main settings."""
    from rain_mlflow.config import presets  # imports pandas: not for the other commands' start-up

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
