"""`main`: the whole pipeline on the embedded defaults, as one parent run with one child run per step.

synth (the synthetic record) -> clean -> train (`smoke` by default) -> test (the new run's best checkpoint) ->
compare (every training run of the experiment, tags written, report logged) -> promote (best healthy run ->
`rain-timerxl-classifier@champion`). It ends by printing the runs, their flags, the champion and how to open the UI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from rain_mlflow import presets
from rain_mlflow.config import CHAMPION_ALIAS as ALIAS
from rain_mlflow.config import MODEL_NAME
from rain_mlflow.tracking import Tracker, connect, tracking_uri


def _step(number: int, name: str) -> None:
    click.secho(f"\n== {number}/6 {name} ==", bold=True)


def run_pipeline(preset: str = "smoke", experiment: str | None = None, workdir: str = "outputs") -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    from rain_mlflow import compare
    from rain_mlflow.clean_command import run_clean
    from rain_mlflow.diagnostics.rules import Thresholds
    from rain_mlflow.evaluate import run_test
    from rain_mlflow.registry import run_promote
    from rain_mlflow.synth import SynthConfig, write_synthetic
    from rain_mlflow.train import run_training

    cfg = presets.build(preset)  # a bad preset fails before any run exists
    out = Path(workdir)
    exp_id = connect(experiment)
    exp_name = MlflowClient().get_experiment(exp_id).name
    steps: dict[str, dict[str, Any]] = {}
    with Tracker.start("main", run_name=f"pipeline ({preset})", tags={"preset": preset}) as parent:
        _step(1, "synth")
        synth_cfg = SynthConfig()
        with Tracker.start("synth", run_name="synth") as tracker:
            frame = write_synthetic(str(out / "synthetic.csv"), synth_cfg)
            tracker.log_params({"years": synth_cfg.years, "freq": synth_cfg.freq, "seed": synth_cfg.seed,
                                "output": str(out / "synthetic.csv")})
            tracker.log_input(frame, source=str(out / "synthetic.csv"), name="synthetic", context="generated")
            steps["synth"] = {"run_id": tracker.run_id}
        click.echo(f"wrote {out / 'synthetic.csv'} ({len(frame)} rows)")

        _step(2, "clean")
        steps["clean"] = run_clean(presets.build(preset, {"data": str(out / "synthetic.csv")}).data,
                                   str(out / "clean.csv"), experiment=exp_name)

        _step(3, f"train ({preset})")
        steps["train"] = run_training(cfg.with_overrides(data=str(out / "clean.csv")), experiment=exp_name)

        _step(4, "test")
        steps["test"] = run_test(steps["train"]["run_id"], {}, exp_name)

        _step(5, "compare")
        with Tracker.start("compare", run_name="compare") as tracker:
            report_dir = out / "report"
            compare.run(experiment=exp_name, run_ids=None, fmt="table", write_tags=True, fail_on=[],
                        report_dir=report_dir, thresholds=Thresholds())
            for name in ("report.md", "curves.png"):
                tracker.log_artifact(report_dir / name, "report")
            steps["compare"] = {"run_id": tracker.run_id}

        _step(6, "promote")
        steps["promote"] = run_promote(experiment=exp_name, model_name=MODEL_NAME, metric="val_f1", alias=ALIAS,
                                       allow_flagged=False)
        parent.set_note(_summary_note(steps, preset))
        parent_id = parent.run_id
    _print_summary(parent_id, exp_id, exp_name, steps)
    return {"run_id": parent_id, "experiment_id": exp_id, "steps": steps}


def _summary_note(steps: dict[str, dict[str, Any]], preset: str) -> str:
    train, test, promote = steps["train"], steps["test"], steps["promote"]
    return (f"Pipeline on the synthetic record: trained {preset} (run {train['run_id']}, best epoch "
            f"{train['best_epoch']}, val F1 {train.get('best_val_f1', float('nan')):.3f}); test accuracy "
            f"{test['accuracy']:.1%} vs majority {test['majority_accuracy']:.1%}; champion = version "
            f"{promote['version']} (run {promote['promoted_run_id']}).")


def _print_summary(parent_id: str, exp_id: str, exp_name: str, steps: dict[str, dict[str, Any]]) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    uri = tracking_uri()
    click.secho("\n== summary ==", bold=True)
    click.echo(f"pipeline run {parent_id} in experiment {exp_name!r} (id {exp_id}), store {uri}")
    for name, info in steps.items():
        run = client.get_run(info["run_id"])
        extra = ""
        if name == "clean":
            extra = f"{info['output']} (report {info['report']})"
        elif name == "train":
            extra = (f"best epoch {info['best_epoch']}, val F1 {info.get('best_val_f1', float('nan')):.3f}, "
                     f"diagnosis {run.data.tags.get('diagnosis', 'ok')}")
        elif name == "test":
            extra = f"accuracy {info['accuracy']:.1%} (majority {info['majority_accuracy']:.1%}), F1 {info['f1']:.3f}"
        elif name == "promote":
            extra = f"{MODEL_NAME}@{ALIAS} = version {info['version']} (run {info['promoted_run_id']})"
        click.echo(f"  {name:8} {info['run_id']}  {extra}")
    flagged = client.search_runs([exp_id], "tags.`rain.step` = 'train' and tags.diagnosis != 'ok'")
    click.echo(f"flagged training runs in the experiment: {len(flagged)}"
               + "".join(f"\n  {r.info.run_id} ({r.data.tags.get('preset')}): {r.data.tags.get('diagnosis')}"
                         for r in flagged[:10]))
    backend = uri if uri.startswith(("sqlite:", "postgresql", "mysql")) else None
    ui = f"mlflow ui --backend-store-uri {backend}" if backend else f"open {uri}"
    click.echo(f"\nOpen the MLflow UI:  {ui}\n  then http://127.0.0.1:5000/#/experiments/{exp_id}")
