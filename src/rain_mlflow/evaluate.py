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

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import classification_report, roc_auc_score

from rain_mlflow import plots
from rain_mlflow.config import presets
from rain_mlflow.config import DEFAULT_MODEL_URI, SYNTHETIC, RunConfig
from rain_mlflow.data.source import load_clean
from rain_mlflow.data.dataset import EvalWindows, evaluation_windows, prepare
from rain_mlflow.data.missing import model_inputs
from rain_mlflow.errors import DataError, UserError
from rain_mlflow.model.factory import RainModel, rain_model_from_payload
from rain_mlflow.model import checkpoint
from rain_mlflow.train.baselines import GbmBaseline, baseline_metrics, skill, verdict
from rain_mlflow.tracking import ui
from rain_mlflow.tracking.datasets import data_digest, same_data
from rain_mlflow.tracking.experiments import connect
from rain_mlflow.tracking.protocol import RunTracker
from rain_mlflow.tracking.runs import download_run_artifact, find_run
from rain_mlflow.tracking.store import tracking_uri
from rain_mlflow.tracking.tracker import Tracker
from rain_mlflow.train.metrics import confusion, split_metrics

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
BATCH = 256


def load_model(model_uri: str) -> tuple[RainModel, str | None]:
    """The serving model and the id of the training run it came from (None for a bare checkpoint file)."""
    if model_uri.startswith("models:/"):
        # imported here: defining the served model's class makes MLflow print a warning (tracking/serving.py)
        from rain_mlflow.registry.loading import load_served_model

        return load_served_model(model_uri)
    if RUN_ID.match(model_uri) and not Path(model_uri).exists():
        find_run(model_uri)
        try:
            path = download_run_artifact(model_uri, "checkpoints/best.pt", tempfile.mkdtemp())
        except Exception:
            raise UserError(f"run {model_uri} has no checkpoints/best.pt (is it a finished training run?)") from None
        return rain_model_from_payload(checkpoint.load(path))[0], model_uri
    if Path(model_uri).exists():
        payload = checkpoint.load(model_uri)
        return rain_model_from_payload(payload)[0], payload.get("run_id")
    raise UserError(f"model {model_uri!r} is neither models:/NAME@ALIAS, a run id (32 hex characters) nor an "
                    "existing checkpoint file")


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
    # new data goes through the training data's fill and scaler in float32, as `prepare` built the training series
    series = prepared.series if not new_data else model_inputs(
        np.asarray(windows.raw, dtype=np.float32), prepared.scaler_mean, prepared.scaler_scale, prepared.policy)[0]
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
    """Evaluate and log a test run linked to the training run; the result, with the `lines` the command prints."""
    model_uri = model_uri or DEFAULT_MODEL_URI
    presets.build(presets.DEFAULT_PRESET, overrides)  # a bad value fails here, before any store is opened
    data = overrides.get("data")
    if data and data != SYNTHETIC and not Path(data).is_file():
        raise DataError(f"data file {data!r} {'is not a file' if Path(data).exists() else 'does not exist'}")
    model, trained_run = load_model(model_uri)
    trained_cfg = RunConfig.from_dict(model.config)
    asked = overrides.get("features")
    if asked and [f.strip() for f in str(asked).split(",") if f.strip()] != list(model.features):
        raise UserError(f"features must be the model's own input columns ({','.join(model.features)}) or left "
                        f"out; got {asked!r}")
    cfg = trained_cfg.with_overrides(**{**overrides, "features": ",".join(model.features)})
    raw, cleaned = load_clean(cfg.data)
    # The data the model was trained on (by content, whatever the path): only its test split is new to the
    # model. Any other data: every window.
    training_data, lines = _is_training_data(raw, trained_run, trained_cfg, cfg)
    new_data = not training_data
    windows = evaluation_windows(cleaned, cfg, model.policy, model.window, test_split_only=training_data)
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
                            "data_digest": data_digest(raw),
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
        run_id, experiment_id = tracker.run_id, tracker.experiment_id
    lines += _lines(model_uri, windows, metrics, matrix, report_text, run_id, gbm_note)
    lines += _links(experiment_id, run_id, trained_run)
    return {"run_id": run_id, "trained_run_id": trained_run, **metrics, "lines": lines}


def _is_training_data(raw: pd.DataFrame, trained_run: str | None, trained_cfg: RunConfig,
                      cfg: RunConfig) -> tuple[bool, list[str]]:
    """Whether `raw` is the data of the training run, by the digest the run recorded (and a note to print).

    A checkpoint file whose run is not in this store has no recorded digest: then the paths are compared after
    resolving them (`./data/x.csv` and `data/x.csv` are the same file), and the note says which.
    """
    recorded = None
    if trained_run:
        try:
            recorded = find_run(trained_run).data.tags.get("data_digest")
        except UserError:
            recorded = None
    if recorded:
        return same_data(raw, recorded), []
    same = cfg.data.data == trained_cfg.data.data if SYNTHETIC in (cfg.data.data, trained_cfg.data.data) else \
        Path(cfg.data.data).resolve() == Path(trained_cfg.data.data).resolve()
    return same, [f"note: no recorded data digest for the training run; {cfg.data.data!r} "
                  f"{'is' if same else 'is not'} the training file by path, so "
                  f"{'only its test split' if same else 'every window'} is scored"]


def _log_predictions(tracker: RunTracker, windows: Any, probability: np.ndarray, predicted: np.ndarray) -> None:
    frame = pd.DataFrame({"window_end": windows.end_dates, "rain_probability": probability.round(5),
                          "predicted": predicted, "label": windows.labels})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "predictions.csv"
        frame.to_csv(path, index=False)
        tracker.log_artifact(path)


def _log_confusion_figure(tracker: RunTracker, matrix: list[list[int]], title: str) -> None:
    fig = plots.confusion_figure({"test": matrix}, title)
    tracker.log_figure(fig, "confusion_matrix.png")
    plots.close(fig)


def _note(model_uri: str, trained_run: str | None, scope: str, data: str, m: dict[str, Any], gbm_note: str) -> str:
    against = verdict("t", m, {f"t_{k}": v for k, v in m.items()}, f"these {m['n_windows']} windows")
    return (f"Test of {model_uri} (training run {trained_run or 'unknown'}) on {scope} of {data}: accuracy "
            f"{m['accuracy']:.1%} (majority {m['majority_accuracy']:.1%}), F1 {m['f1']:.3f}, MCC {m['mcc']:+.3f}, "
            f"ROC-AUC {m['roc_auc']:.3f}; {against}; {gbm_note}.")


def _lines(model_uri: str, windows: Any, m: dict[str, Any], matrix: list[list[int]], report: str,
           run_id: str, gbm_note: str) -> list[str]:
    """The scores next to the baselines', the confusion matrix and the classification report."""
    lines = [f"model {model_uri} on {windows.scope} ({m['n_windows']} of {windows.candidates} windows, "
             f"{m['rain_share']:.1%} rain; {windows.dropped} dropped: unknown label or missing input)",
             f"{'':14}{'accuracy':>9}{'F1':>8}{'MCC':>8}",
             f"{'model':14}{m['accuracy']:>9.2%}{m['f1']:>8.3f}{m['mcc']:>+8.3f}   precision {m['precision']:.3f}"
             f"  recall {m['recall']:.3f}  ROC-AUC {m['roc_auc']:.3f}",
             f"{'majority':14}{m['majority_accuracy']:>9.2%}"]
    for name in ("always_rain", "persistence", "gbm"):
        if f"{name}_f1" in m:
            lines.append(f"{name.replace('_', '-'):14}{m[f'{name}_accuracy']:>9.2%}{m[f'{name}_f1']:>8.3f}"
                         f"{m[f'{name}_mcc']:>+8.3f}")
    lines.append(f"skill over the best baseline: F1 {m['skill_f1']:+.3f} ({m['best_baseline_f1']}), "
                 f"MCC {m['skill_mcc']:+.3f} ({m['best_baseline_mcc']}); {gbm_note}")
    (tn, fp), (fn, tp) = matrix
    lines.append(f"confusion (rows true, columns predicted): no rain [{tn} {fp}]  rain [{fn} {tp}]")
    lines.append(report.rstrip())
    lines.append(f"MLflow run: {run_id}")
    return lines


def _links(experiment_id: str, run_id: str, trained_run: str | None) -> list[str]:
    links = [("test run", ui.run_url("", experiment_id, run_id))]
    if trained_run:
        links.append(("trained run", ui.run_url("", find_run(trained_run).info.experiment_id, trained_run)))
    return ui.links_block(tracking_uri(), links).splitlines()
