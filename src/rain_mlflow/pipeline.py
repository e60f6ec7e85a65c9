"""`main`: the whole pipeline on the embedded defaults, as one pipeline run plus one run per step.

synth (the synthetic record) -> clean -> train (`smoke` by default) -> test (the new run's best checkpoint) ->
compare (every training run of the experiment, tags written, report logged) -> promote (best healthy run ->
`rain-timerxl-classifier@champion`). It ends by printing the runs, the champion and the UI links.

How the runs look in the MLflow UI: the training run is a top-level row of the experiment's runs table, next to
the training runs made by `rain-mlflow train`, so its metrics are table columns and charts without expanding
anything. The bookkeeping steps (synth, clean, test, compare, promote) are children of the pipeline run: one
collapsible `pipeline (<preset>)` row. Every run of the pipeline, the training run included, carries the tag
`pipeline=<pipeline run id>` (filter `tags.pipeline = '<id>'` shows them all), and the pipeline run's description
links to each of them.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from rain_mlflow.config import presets
from rain_mlflow.clean_command import run_clean
from rain_mlflow.compare.command import run_tracked
from rain_mlflow.config import CHAMPION_ALIAS as ALIAS
from rain_mlflow.config import MODEL_NAME
from rain_mlflow.diagnostics.thresholds import Thresholds
from rain_mlflow.evaluate import run_test
from rain_mlflow.progress import SILENT, Progress
from rain_mlflow.registry.promote import run_promote
from rain_mlflow.synth import SynthConfig, write_synthetic
from rain_mlflow.tracking import ui
from rain_mlflow.tracking.experiments import connect, experiment_name_of
from rain_mlflow.tracking.pipelines import pipeline_run, pipeline_steps
from rain_mlflow.tracking.runs import find_run
from rain_mlflow.tracking.store import tracking_uri
from rain_mlflow.tracking.tracker import Tracker
from rain_mlflow.train.run import TrainRequest, run_training

STEPS = ("synth", "clean", "train", "test", "compare", "promote")


def run_pipeline(preset: str = "smoke", experiment: str | None = None, workdir: str = "outputs",
                 progress: Progress = SILENT) -> dict[str, Any]:
    """Every step in turn, each step's output to `progress` as it ends; the runs, and the summary `lines` the
    command prints at the end."""
    def step(number: int, name: str) -> None:
        progress.heading(f"\n== {number}/{len(STEPS)} {name} ==")

    cfg = presets.build(preset)  # a bad preset fails before any run exists
    out = Path(workdir)
    exp_id = connect(experiment)
    exp_name = experiment_name_of(exp_id)
    steps: dict[str, dict[str, Any]] = {}
    with pipeline_run(exp_id, f"pipeline ({preset})", {"preset": preset}) as pipeline:
        def grouped():  # the bookkeeping steps: children of the pipeline run
            return pipeline_steps(pipeline.run_id, grouped=True)

        step(1, "synth")
        synth_cfg = SynthConfig()
        with grouped(), Tracker.start("synth", run_name="synth") as tracker:
            frame = write_synthetic(str(out / "synthetic.csv"), synth_cfg)
            tracker.log_params({"years": synth_cfg.years, "freq": synth_cfg.freq, "seed": synth_cfg.seed,
                                "output": str(out / "synthetic.csv")})
            tracker.log_input(frame, source=str(out / "synthetic.csv"), name="synthetic", context="generated")
            steps["synth"] = {"run_id": tracker.run_id}
        progress.line(f"wrote {out / 'synthetic.csv'} ({len(frame)} rows)")

        step(2, "clean")
        with grouped():
            steps["clean"] = run_clean(presets.build(preset, {"data": str(out / "synthetic.csv")}).data,
                                       str(out / "clean.csv"), experiment=exp_name)
        progress.lines(steps["clean"]["lines"])

        step(3, f"train ({preset})")
        with pipeline_steps(pipeline.run_id, grouped=False):  # a row of its own in the runs table
            steps["train"] = run_training(cfg.with_overrides(data=str(out / "clean.csv")),
                                          TrainRequest(experiment=exp_name, progress=progress))
        progress.lines(steps["train"]["lines"])

        step(4, "test")
        with grouped():
            steps["test"] = run_test(steps["train"]["run_id"], {}, exp_name)
        progress.lines(steps["test"]["lines"])

        step(5, "compare")
        table = io.StringIO()
        with grouped():
            _, compare_run_id = run_tracked(out / "report", experiment=exp_name, run_ids=None, fmt="table",
                                            write_tags=True, fail_on=[], thresholds=Thresholds(), out=table)
            steps["compare"] = {"run_id": compare_run_id}
        progress.lines(table.getvalue().splitlines())

        step(6, "promote")
        with grouped():
            steps["promote"] = run_promote(experiment=exp_name, model_name=MODEL_NAME, metric="val_f1",
                                           alias=ALIAS, allow_flagged=False)
        progress.lines(steps["promote"]["lines"])
        pipeline.set_note(_summary_note(steps, preset, exp_id))
        pipeline_id = pipeline.run_id
    progress.heading("\n== summary ==")
    return {"run_id": pipeline_id, "experiment_id": exp_id, "steps": steps,
            "lines": _summary_lines(pipeline_id, exp_id, exp_name, steps)}


def _summary_note(steps: dict[str, dict[str, Any]], preset: str, exp_id: str) -> str:
    """The pipeline run's description (Markdown: the UI renders the links, relative to the page)."""
    train, test, promote = steps["train"], steps["test"], steps["promote"]
    links = ", ".join(f"[{name}]({ui.run_url('', exp_id, steps[name]['run_id'])})" for name in STEPS)
    return (f"Pipeline on the synthetic record: trained {preset} (run {train['run_id']}, best epoch "
            f"{train['best_epoch']}, val F1 {train.get('best_val_f1', float('nan')):.3f}); test accuracy "
            f"{test['accuracy']:.1%} vs majority {test['majority_accuracy']:.1%}; champion = version "
            f"{promote['version']} (run {promote['promoted_run_id']}). Runs: {links}; "
            f"[{MODEL_NAME}@{ALIAS}]({ui.model_url('', MODEL_NAME)}).")


def _summary_lines(pipeline_id: str, exp_id: str, exp_name: str, steps: dict[str, dict[str, Any]]) -> list[str]:
    """Every step's run and its headline, and the UI links."""
    uri = tracking_uri()
    lines = [f"pipeline run {pipeline_id} in experiment {exp_name!r} (id {exp_id}), store {ui.redact(uri)}"]
    for name, info in steps.items():
        extra = ""
        if name == "clean":
            extra = f"{info['output']} (report {info['report']})"
        elif name == "train":
            diagnosis = find_run(info["run_id"]).data.tags.get("diagnosis", "ok")
            extra = (f"best epoch {info['best_epoch']}, val F1 {info.get('best_val_f1', float('nan')):.3f}, "
                     f"diagnosis {diagnosis}")
        elif name == "test":
            extra = f"accuracy {info['accuracy']:.1%} (majority {info['majority_accuracy']:.1%}), F1 {info['f1']:.3f}"
        elif name == "promote":
            extra = f"{MODEL_NAME}@{ALIAS} = version {info['version']} (run {info['promoted_run_id']})"
        lines.append(f"  {name:8} {info['run_id']}  {extra}")
    lines.append("")
    return lines + ui.links_block(uri, [
        ("training runs", ui.experiment_url("", exp_id)),
        ("this training run", ui.run_url("", exp_id, steps["train"]["run_id"])),
        ("pipeline run", ui.run_url("", exp_id, pipeline_id)),
        ("champion model", ui.model_url("", MODEL_NAME)),
    ]).splitlines()
