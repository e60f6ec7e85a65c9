"""`test`: score a trained model on a data file, or on the test split of the data it was trained on.

The model can be named three ways: `models:/NAME@ALIAS` (or `models:/NAME/VERSION`, `models:/m-...`) from the
registry, a training run id (its `checkpoints/best.pt`), or a checkpoint file. Every path ends in the same
`RainModel`, which carries its training config, feature order, window and scaler, so nothing else is needed.
Next to the model's scores stand the baselines on the same windows (`train/baselines.py`): always-rain, the
majority class, persistence (rain in the last horizon) and the gradient-boosting classifier. The gbm is fitted on
the training split of the data the model was trained on: on that same data its test-split scores are exactly the
training run's `test_gbm_*`; on a new file it is fitted on the training data if that file is still readable here
(its path as recorded in the model's config), and is left out with a note otherwise. `skill_f1` / `skill_mcc` are
the model's scores minus the best baseline's.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import click
import numpy as np
import pandas as pd
import torch
from sklearn.metrics import classification_report, roc_auc_score

from rain_mlflow.config import DEFAULT_MODEL_URI, SYNTHETIC, RunConfig
from rain_mlflow.data import load_clean
from rain_mlflow.data.dataset import EvalWindows, evaluation_windows, prepare
from rain_mlflow.data.missing import model_inputs
from rain_mlflow.errors import UserError
from rain_mlflow.model.factory import RainModel, rain_model_from_payload
from rain_mlflow.train import checkpoint
from rain_mlflow.train.baselines import GbmBaseline, baseline_metrics, skill, verdict
from rain_mlflow.train.metrics import confusion, split_metrics

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
BATCH = 256


def load_model(model_uri: str) -> tuple[RainModel, str | None]:
    """The serving model and the id of the training run it came from (None for a bare checkpoint file)."""
    from rain_mlflow.tracking import Tracker, find_run, use_store

    if model_uri.startswith("models:/"):
        import mlflow.pytorch

        use_store()
        try:
            model = mlflow.pytorch.load_model(model_uri, map_location="cpu")
        except Exception as exc:
            raise UserError(f"cannot load model {model_uri!r}: {' '.join(str(exc).split())[:300]}") from None
        return model.eval(), _source_run(model_uri)
    if RUN_ID.match(model_uri) and not Path(model_uri).exists():
        find_run(model_uri)
        try:
            path = Tracker.download_run_artifact(model_uri, "checkpoints/best.pt", tempfile.mkdtemp())
        except Exception:
            raise UserError(f"run {model_uri} has no checkpoints/best.pt (is it a finished training run?)") from None
        return rain_model_from_payload(checkpoint.load(path))[0], model_uri
    if Path(model_uri).exists():
        payload = checkpoint.load(model_uri)
        return rain_model_from_payload(payload)[0], payload.get("run_id")
    raise UserError(f"model {model_uri!r} is neither models:/NAME@ALIAS, a run id (32 hex characters) nor an "
                    "existing checkpoint file")


def _source_run(model_uri: str) -> str | None:
    """The training run behind a models:/ URI (registry alias/version or a logged model id)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    body = model_uri[len("models:/"):]
    if "@" in body:
        name, alias = body.split("@", 1)
        return client.get_model_version_by_alias(name, alias).run_id
    if "/" in body:
        name, version = body.split("/", 1)
        return client.get_model_version(name, version).run_id
    return client.get_logged_model(body).source_run_id


@torch.no_grad()
def rain_probabilities(model: RainModel, windows: Any) -> np.ndarray:
    out = []
    for start in range(0, len(windows.ends), BATCH):
        x = torch.from_numpy(windows.gather(windows.ends[start:start + BATCH], model.window))
        out.append(model.rain_probability(x).numpy())
    return np.concatenate(out)


def gbm_predictions(model: RainModel, trained_cfg: RunConfig, cleaned: Any, windows: EvalWindows,
                    new_data: bool) -> tuple[np.ndarray | None, str]:
    """The gbm baseline's forecasts for `windows` (fitted on the training split of the model's training data)."""
    cfg = trained_cfg.with_overrides(features=",".join(model.features))
    try:
        prepared = prepare(load_clean(cfg.data)[1] if new_data else cleaned, cfg)
    except UserError as exc:
        return None, f"gbm baseline left out: the training data {cfg.data.data!r} cannot be used here ({exc})"
    train = prepared.splits["train"]
    gbm = GbmBaseline(prepared.window, prepared.rain_index).fit(prepared.series, train.ends, train.labels)
    series = prepared.series if not new_data else model_inputs(
        windows.raw.astype(np.float64), prepared.scaler_mean, prepared.scaler_scale, prepared.policy)[0]
    return gbm.predict(series, windows.ends), f"gbm fitted on the training split of {cfg.data.data}"


def score(labels: np.ndarray, probability: np.ndarray, baselines: dict[str, np.ndarray]) -> dict[str, Any]:
    """Model metrics plus every baseline on the same windows, and the skill over the best one."""
    predicted = (probability >= 0.5).astype(np.int64)
    metrics = {k.removeprefix("m_"): v for k, v in split_metrics("m", labels, predicted, float("nan")).items()
               if k not in ("m_loss", "m_windows")}
    metrics["roc_auc"] = float(roc_auc_score(labels, probability)) if len(np.unique(labels)) == 2 else float("nan")
    bars = {k.removeprefix("t_"): v for k, v in baseline_metrics("t", labels, baselines).items()}
    metrics.update(bars)
    metrics.update({k.removeprefix("t_"): v for k, v in skill("t", metrics, {f"t_{k}": v for k, v in bars.items()})
                    .items()})
    metrics["n_windows"] = int(len(labels))
    metrics["rain_share"] = float(labels.mean())
    return metrics


def run_test(model_uri: str | None, overrides: dict[str, Any], experiment: str | None = None) -> dict[str, Any]:
    """Evaluate, log a test run linked to the training run, print the result."""
    from rain_mlflow.tracking import Tracker, connect

    model_uri = model_uri or DEFAULT_MODEL_URI
    model, trained_run = load_model(model_uri)
    trained_cfg = RunConfig.from_dict(model.config)
    # Another file: score all its windows. The training data (or the embedded record): its test split.
    new_data = overrides.get("data") not in (None, trained_cfg.data.data, SYNTHETIC)
    cfg = trained_cfg.with_overrides(**{**overrides, "features": ",".join(model.features)})
    _, cleaned = load_clean(cfg.data)
    windows = evaluation_windows(cleaned, cfg, model.policy, model.window, test_split_only=not new_data)
    probability = rain_probabilities(model, windows)
    gbm, gbm_note = gbm_predictions(model, trained_cfg, cleaned, windows, new_data)
    forecasts = {"persistence": windows.persistence, **({"gbm": gbm} if gbm is not None else {})}
    metrics = score(windows.labels, probability, forecasts)
    predicted = (probability >= 0.5).astype(np.int64)
    matrix = confusion(windows.labels, predicted)
    report_text = classification_report(windows.labels, predicted, labels=[0, 1], target_names=["no rain", "rain"],
                                        zero_division=0, digits=4)
    connect(experiment)
    with Tracker.start("test", run_name=f"test {model_uri[:40]}",
                       tags={"model_uri": model_uri, "trained_run_id": trained_run or ""}) as tracker:
        tracker.log_params({"model_uri": model_uri, "data": cfg.data.data, "scope": windows.scope,
                            "window": model.window, "features": ",".join(model.features),
                            "trained_run_id": trained_run or ""})
        tracker.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=0)
        tracker.set_tags({"gbm_baseline": gbm_note, **{k: v for k, v in metrics.items() if isinstance(v, str)}})
        tracker.log_dict({"confusion": matrix, "labels": ["no rain", "rain"]}, "confusion_matrix.json")
        tracker.log_text(report_text, "classification_report.txt")
        _log_predictions(tracker, windows, probability, predicted)
        _log_confusion_figure(tracker, matrix, model_uri)
        note = _note(model_uri, trained_run, windows.scope, cfg.data.data, metrics, gbm_note)
        tracker.set_note(note)
        run_id = tracker.run_id
    _print(model_uri, windows, metrics, matrix, report_text, run_id, gbm_note)
    return {"run_id": run_id, "trained_run_id": trained_run, **metrics}


def _log_predictions(tracker: Any, windows: Any, probability: np.ndarray, predicted: np.ndarray) -> None:
    frame = pd.DataFrame({"window_end": windows.end_dates, "rain_probability": probability.round(5),
                          "predicted": predicted, "label": windows.labels})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "predictions.csv"
        frame.to_csv(path, index=False)
        tracker.log_artifact(path)


def _log_confusion_figure(tracker: Any, matrix: list[list[int]], title: str) -> None:
    from rain_mlflow import plots

    fig = plots.confusion_figure({"test": matrix}, title)
    tracker.log_figure(fig, "confusion_matrix.png")
    plots.close(fig)


def _note(model_uri: str, trained_run: str | None, scope: str, data: str, m: dict[str, Any], gbm_note: str) -> str:
    against = verdict("t", m, {f"t_{k}": v for k, v in m.items()}, f"these {m['n_windows']} windows")
    return (f"Test of {model_uri} (training run {trained_run or 'unknown'}) on {scope} of {data}: accuracy "
            f"{m['accuracy']:.1%} (majority {m['majority_accuracy']:.1%}), F1 {m['f1']:.3f}, MCC {m['mcc']:+.3f}, "
            f"ROC-AUC {m['roc_auc']:.3f}; {against}; {gbm_note}.")


def _print(model_uri: str, windows: Any, m: dict[str, Any], matrix: list[list[int]], report: str,
           run_id: str, gbm_note: str) -> None:
    click.echo(f"model {model_uri} on {windows.scope} ({m['n_windows']} of {windows.candidates} windows, "
               f"{m['rain_share']:.1%} rain; {windows.dropped} dropped: unknown label or missing input)")
    click.echo(f"{'':14}{'accuracy':>9}{'F1':>8}{'MCC':>8}")
    click.echo(f"{'model':14}{m['accuracy']:>9.2%}{m['f1']:>8.3f}{m['mcc']:>+8.3f}   precision {m['precision']:.3f}"
               f"  recall {m['recall']:.3f}  ROC-AUC {m['roc_auc']:.3f}")
    click.echo(f"{'majority':14}{m['majority_accuracy']:>9.2%}")
    for name in ("always_rain", "persistence", "gbm"):
        if f"{name}_f1" in m:
            click.echo(f"{name.replace('_', '-'):14}{m[f'{name}_accuracy']:>9.2%}{m[f'{name}_f1']:>8.3f}"
                       f"{m[f'{name}_mcc']:>+8.3f}")
    click.echo(f"skill over the best baseline: F1 {m['skill_f1']:+.3f} ({m['best_baseline_f1']}), "
               f"MCC {m['skill_mcc']:+.3f} ({m['best_baseline_mcc']}); {gbm_note}")
    (tn, fp), (fn, tp) = matrix
    click.echo(f"confusion (rows true, columns predicted): no rain [{tn} {fp}]  rain [{fn} {tp}]")
    click.echo(report.rstrip())
    click.echo(f"MLflow run: {run_id}")
